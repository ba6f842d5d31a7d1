"""``python -m dpo_engine.runs RUN_DIR [--resume]``: the detached worker's entry point, started by `launch` and
`resume`, not by hand. It lives here rather than in `worker` so that Python does not run a module the package has
already imported (runpy's "found in sys.modules" warning in every run's log)."""

import argparse
import sys

from dpo_engine.runs.worker import run_worker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dpo_engine.runs",
        description="Margin Lab's detached training worker. `dpo-engine runs launch` starts it; use that instead.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by create_run")
    parser.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    args = parser.parse_args(argv)
    return run_worker(args.run_dir, resume=args.resume)


if __name__ == "__main__":
    sys.exit(main())
