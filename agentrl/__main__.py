"""``python -m agentrl``: the same command line as ``agentrl`` (``accelerate launch -m agentrl`` uses it)."""

import sys

from agentrl.cli import main

sys.exit(main())
