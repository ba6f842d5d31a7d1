"""The dm_small study (issue #8): reproduce the dual-margin selection finding at small scale with the engine.

Run it with ``python -m experiments.dm_small run --profile cpu``; see README.md beside this file.
"""
