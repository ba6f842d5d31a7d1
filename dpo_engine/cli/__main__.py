"""``python -m dpo_engine.cli ...``, the same as ``dpo-engine ...`` (what ``accelerate launch -m`` runs)."""

import sys

from dpo_engine.cli import main

sys.exit(main())
