"""Durable background runs: run directories, the registry, detached workers, device slots, stop and resume."""
