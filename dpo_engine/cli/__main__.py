"""``python -m dpo_engine.cli``: the `dpo-engine` command (what ``accelerate launch -m dpo_engine.cli`` runs)."""

import sys

from dpo_engine.cli import main

sys.exit(main())
