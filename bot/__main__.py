"""`python -m bot`: the same as `sightline run` (settings from SIGHTLINE_*, logging, then the bot)."""

from __future__ import annotations

import sys

from bot.cli import main

if __name__ == "__main__":
    sys.exit(main([*sys.argv[1:], "run"]))  # global options (-v, --data-dir) go before the command
