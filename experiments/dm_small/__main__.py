"""``python -m experiments.dm_small ...``: see cli.py and README.md."""

import sys

from .cli import main

sys.exit(main())
