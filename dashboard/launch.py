"""``python -m dashboard.launch [--host H] [--port P]``: start the dashboard, on loopback unless a login is set.

``make demo`` calls it with ``HOST=127.0.0.1`` by default; ``make demo HOST=0.0.0.0`` shares it on the network,
which `dashboard.access.check_bind` refuses unless a login is configured (docs/security.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dashboard.access import BindRefused, check_bind

APP = Path(__file__).resolve().parent / "app.py"


def streamlit_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", host, "--server.port", str(port)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboard.launch", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8501)
    args = parser.parse_args(argv)
    try:
        check_bind(args.host)
    except BindRefused as refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    command = streamlit_command(args.host, args.port)
    os.execv(command[0], command)
    return 0  # not reached: execv replaces this process


if __name__ == "__main__":
    sys.exit(main())
