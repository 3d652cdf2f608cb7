"""The `sightline` command: one sub-command module per feature, each with a `register(subparsers)`."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from engine import EngineError, fsmodes
from engine.errors import disk_full, is_damaged_database, is_disk_full

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

DATA_DIR_HELP = "folder of the database and index (default: SIGHTLINE_DATA_DIR or index_data/)"


# Whether the command line being parsed asks for JSON (--json): its usage errors are then JSON too.
_json_usage_errors: ContextVar[bool] = ContextVar("json_usage_errors", default=False)


def wants_json(argv: Sequence[str]) -> bool:
    """Whether `argv` holds --json (or an abbreviation argparse would take for it, or --json=VALUE) before any `--`."""
    for token in argv:
        if token == "--":
            return False
        option = token.split("=", 1)[0]
        if len(option) >= 3 and "--json".startswith(option):
            return True
    return False


class Parser(argparse.ArgumentParser):
    """argparse's parser (and, through `add_subparsers`, every sub-command's). A usage error is argparse's text on
    standard error, exit 2; when the command line asks for --json, it is one JSON object on standard output instead,
    shaped as every other --json error: {"error": {"type": "UsageError", "reason": "usage", "message", "usage"}}."""

    def error(self, message: str) -> NoReturn:
        """Report a usage error and exit 2 (SystemExit)."""
        if not _json_usage_errors.get():
            super().error(message)
        error = {"type": "UsageError", "reason": "usage", "message": f"{self.prog}: {message}",
                 "usage": self.format_usage().strip()}
        print(json.dumps({"error": error}, ensure_ascii=False))
        raise SystemExit(2)


class CommandParser(Parser):
    """A sub-command's parser. Arguments it does not know are its own usage error (argparse leaves them to the top-level
    parser, whose usage names no option of the command)."""

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None,
                         ) -> tuple[argparse.Namespace, list[str]]:
        """argparse's, with unknown arguments a usage error (everything after the command's name is the command's)."""
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every sub-command."""
    parser = Parser(
        prog="sightline", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=None, help=DATA_DIR_HELP)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--json", action="store_true", help="print JSON, errors included (commands with --json; also after the command)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a feature module not built yet must not break the others
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def add_command(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    func: Callable[[argparse.Namespace], int | Awaitable[int]],
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """Add sub-command `name` (help, description and the rest as argparse takes them), run by `func(args)`."""
    parser: argparse.ArgumentParser = sub.add_parser(name, **kwargs)
    parser.set_defaults(func=func, command_parser=parser)
    # The global options also after the command (`sightline stats --data-dir D`), as operators type them; left out,
    # they keep what was given before the command.
    parser.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help=DATA_DIR_HELP)
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log debug messages")
    return parser


def add_json(parser: argparse.ArgumentParser, help: str = "print JSON instead of text") -> None:  # noqa: A002 (argparse's name)
    """Give a command --json (JSON output, errors included); left out, it keeps a --json given before the command."""
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=help)


def has_json(parser: argparse.ArgumentParser) -> bool:
    """Whether a command's parser takes --json."""
    return "--json" in parser._option_string_actions  # noqa: SLF001 (argparse keeps no public index of its options)


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high`, else a usage error that names the range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: give {low} to {high}")
        return value

    parse.__name__ = "number"  # argparse names the type in its message: "invalid number value"
    return parse


def given_path(text: str) -> Path:
    """An argparse type: a path that is not empty (an unset shell variable, `"$DIR"`, would otherwise mean the current
    folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path: name a folder, an image or a manifest")
    return Path(text)


def seconds(text: str) -> float:
    """An argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} seconds: give a positive number")
    return value


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


class Terminated(BaseException):
    """SIGTERM (or SIGHUP) arrived: unwinds like Ctrl-C, so every `finally` cleans up."""


def _terminate(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def missing_gallery(args: argparse.Namespace) -> str | None:
    """None when the data directory holds a gallery; else where we looked and how to point us elsewhere."""
    settings = args.settings
    db = settings.engine_config().db_path
    if db.is_file():
        return None
    if getattr(args, "data_dir", None) is not None:
        source = "given by --data-dir"
    elif "data_dir" in settings.model_fields_set:
        source = "from SIGHTLINE_DATA_DIR"
    else:
        source = f"the default index_data/ of the current folder {Path.cwd()}"
    return (
        f"no gallery at {db.parent.absolute()} ({source}; it holds no {db.name}). Nothing was created. "
        "Point the command at your gallery with --data-dir DIR or SIGHTLINE_DATA_DIR=DIR"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sightline` console script (and of `python -m bot`): always ends, with one line on failure."""
    # Everything this process writes holds biometric or case data: owner-only whatever the caller's umask.
    previous_umask = fsmodes.restrict_umask()
    try:
        code = _main(argv)
        if argv is None:  # the console script (a test calling main(args) in-process keeps its own threads)
            _no_stuck_threads(code)
        return code
    finally:
        os.umask(previous_umask)  # for callers that run main() in-process (tests)


def _main(argv: list[str] | None) -> int:
    """Parse, configure logging, run the command; errors a user can cause become one line and exit 1."""
    parser = build_parser()
    asked = _json_usage_errors.set(wants_json(sys.argv[1:] if argv is None else argv))
    try:
        args = parser.parse_args(argv)
        command: argparse.ArgumentParser | None = getattr(args, "command_parser", None)
        if args.json and command is not None and not has_json(command):  # `sightline --json forget ...`
            command.error("argument --json: this command has no JSON output")
        if command is None and args.json:  # `sightline --json` alone
            parser.error("give a command")
    except SystemExit as stop:  # a usage error (already reported) or --help: its exit code, for in-process callers too
        return stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 2
    finally:
        _json_usage_errors.reset(asked)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        settings = load_settings(args)
    except ValidationError as exc:
        errors = "; ".join(f"SIGHTLINE_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        if getattr(args, "json", False):
            print(json.dumps({"error": {"type": "BadSetting", "reason": "settings", "message": f"bad setting: {errors}"}},
                             ensure_ascii=False))
        else:
            print(f"sightline: bad setting: {errors}", file=sys.stderr)
        return 2
    # The bot logs every event; one-shot commands only show warnings unless asked (-v).
    level = "DEBUG" if args.verbose else settings.log_level if args.command == "run" else "WARNING"
    configure_logging(level, settings.log_format)
    args.settings = settings
    func: Callable[[argparse.Namespace], int | Awaitable[int]] = args.func
    previous = {}
    if args.command != "run" and threading.current_thread() is threading.main_thread():  # the bot has its own
        previous = {sig: signal.signal(sig, _terminate) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return _run(func, args, settings)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(func: Callable[[argparse.Namespace], int | Awaitable[int]], args: argparse.Namespace, settings: Any) -> int:
    try:
        result = func(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return int(result or 0)  # type: ignore[arg-type]
    except BaseException as raised:  # noqa: BLE001  (every failure ends in one line and an exit code)
        exc = _first(raised)  # an ingest's TaskGroup wraps its workers' errors
        if isinstance(exc, EngineError):  # says what and where (a backup's disk is not the data directory's)
            if getattr(args, "json", False):  # a machine reading --json output gets its errors as JSON too
                error = {"type": type(exc).__name__, "reason": getattr(exc, "reason", None), "message": str(exc)}
                print(json.dumps({"error": error}, ensure_ascii=False))
            else:
                print(f"sightline: error: {exc}", file=sys.stderr)
            return 1
        if isinstance(exc, BrokenPipeError) and _stdout_closed():  # `sightline audit export | head`: the reader has
            return 128 + signal.SIGPIPE  # all it wanted; end quietly, as `cat` does
        if isinstance(exc, KeyboardInterrupt):
            print("sightline: interrupted", file=sys.stderr)
            return 130
        if isinstance(exc, Terminated):
            print(f"sightline: stopped by {signal.Signals(exc.args[0]).name}", file=sys.stderr)
            return 128 + int(exc.args[0])
        if not isinstance(exc, Exception):
            raise
        if is_disk_full(raised, settings.data_dir):
            print(f"sightline: error: {disk_full(settings.data_dir)}", file=sys.stderr)
            return 1
        if is_damaged_database(exc):
            print(f"sightline: error: the database in {settings.data_dir} is damaged or unreadable ({exc}): "
                  "restore a backup (`sightline restore SRC --force`)", file=sys.stderr)
            return 1
        logger.debug("unexpected error", exc_info=exc)
        print(f"sightline: error: {type(exc).__name__}: {exc} (run with -v for details)", file=sys.stderr)
        return 1


def _stdout_closed() -> bool:
    """Whether whoever reads our standard output has gone (a closed pipe); if so, point it at /dev/null so that the
    interpreter's last flush at exit does not fail again."""
    try:
        fd = sys.stdout.fileno()
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        gone = any(events & select.POLLERR for _, events in poll.poll(0))  # a pipe with no reader left (Linux, macOS)
    except (OSError, ValueError, AttributeError):  # no real file behind stdout (a test's capture), no poll (Windows)
        return False
    if gone:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    return gone


def _first(group: BaseException) -> BaseException:
    """The first leaf exception of a (possibly nested) exception group."""
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    return group


def _no_stuck_threads(code: int, grace_s: float = 10.0) -> None:
    """Interpreter exit waits for every non-daemon thread: one left running (a database connection that was
    never closed) would hang the command forever. Wait a little, then say which and end the process."""
    deadline = time.monotonic() + grace_s
    while stuck := [t for t in threading.enumerate()
                    if t is not threading.main_thread() and not t.daemon and t.is_alive()]:
        if time.monotonic() >= deadline:
            logger.error("threads still running at exit, not waited for: %s", ", ".join(t.name for t in stuck))
            sys.stderr.flush()
            sys.stdout.flush()
            os._exit(code or 1)
        time.sleep(0.05)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
