"""The `sightline` command: one sub-command module per feature, each with a `register(subparsers)`."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from engine import EngineError

# Each module adds its sub-commands; a handler is `func(args) -> int` or an async one.
COMMAND_MODULES = ("bot.cli.gallery", "bot.cli.audit", "bot.cli.evaluate", "bot.cli.ops")

DESCRIPTION = """\
Sightline: accountable, self-hosted face search.

Build a gallery from photos you lawfully hold (`sightline index`), search it from the command line
(`sightline search`) or through the Telegram bot (`sightline run`). Every search is tied to a case
reference and written to a tamper-evident audit log (`sightline audit verify`).

Settings come from environment variables SIGHTLINE_* (see README, "Configuration").
"""

logger = logging.getLogger("sightline")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="sightline", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="folder of the database and index (default: SIGHTLINE_DATA_DIR or index_data/)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a feature module not built yet must not break the others
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def load_settings(args: argparse.Namespace) -> Any:
    """Settings from the environment, with command-line overrides applied."""
    from bot.settings import Settings

    overrides: dict[str, Any] = {}
    if getattr(args, "data_dir", None) is not None:
        overrides["data_dir"] = args.data_dir
    settings = Settings()
    return settings.model_copy(update=overrides) if overrides else settings


def configure_logging(level: str, fmt: str = "text") -> None:
    """One line per event; optional JSON; httpx quieted (its URLs contain the bot token)."""
    from bot.logs import setup_logging

    setup_logging(level, fmt)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sightline` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        settings = load_settings(args)
    except ValidationError as exc:
        errors = "; ".join(f"SIGHTLINE_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        print(f"sightline: bad setting: {errors}", file=sys.stderr)
        return 2
    # The bot logs every event; one-shot commands only show warnings unless asked (-v).
    level = "DEBUG" if args.verbose else settings.log_level if args.command == "run" else "WARNING"
    configure_logging(level, settings.log_format)
    args.settings = settings
    func: Callable[[argparse.Namespace], int | Awaitable[int]] = args.func
    try:
        result = func(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return int(result or 0)  # type: ignore[arg-type]
    except EngineError as exc:
        if getattr(args, "json", False):  # a machine reading --json output gets its errors as JSON too
            error = {"type": type(exc).__name__, "reason": getattr(exc, "reason", None), "message": str(exc)}
            print(json.dumps({"error": error}, ensure_ascii=False))
        else:
            print(f"sightline: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sightline: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
