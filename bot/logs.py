"""Logging set-up: one line per event, text or JSON; never the token, never photo bytes."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

_TOKEN = re.compile(r"\d{5,}:[A-Za-z0-9_-]{20,}")
_MAX_BYTES_SHOWN = 64  # a bytes argument longer than this is shown as its length only (photos, thumbnails)
_BYTES = (bytes, bytearray, memoryview)
_secrets: set[str] = set()


def redact_also(*values: str | None) -> None:
    """Also mask these exact strings (the configured token and webhook secret, whatever their shape)."""
    _secrets.update(v for v in values if v and len(v) >= 8)


def redact(text: str) -> str:
    """`text` with bot tokens and registered secrets masked."""
    for value in _secrets:
        if value in text:
            text = text.replace(value, "<secret>")
    return _TOKEN.sub("<token>", text)


class RedactingFilter(logging.Filter):
    """Masks tokens in the message and keeps raw bytes out of it, whichever library logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message with tokens masked and long bytes arguments summarised."""
        if isinstance(record.args, tuple) and any(isinstance(a, _BYTES) for a in record.args):
            record.args = tuple(
                f"<{len(a)} bytes>" if isinstance(a, _BYTES) and len(a) > _MAX_BYTES_SHOWN else a for a in record.args
            )
        msg = record.getMessage()
        masked = redact(msg)
        if masked != msg:
            record.msg = masked
            record.args = ()
        return True


class TextFormatter(logging.Formatter):
    """`time level logger: message`; the traceback, if any, follows with tokens masked too."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The formatted record, redacted as a whole (exception messages can hold URLs with the token)."""
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        data = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        if record.exc_info:
            data["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(data, ensure_ascii=False)


# Libraries kept at WARNING even with -v / DEBUG: aiosqlite's debug records carry every statement's parameters (a face's
# embedding and JPEG thumbnail on an insert: bytes that `forget` could not erase from a log), numba's the compiler's
# internals (~43,000 lines on a first start), the others their own request traces.
NOISY_LOGGERS = ("httpx", "httpcore", "apscheduler", "aiosqlite", "numba", "PIL", "h2", "hpack", "multipart")


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger once."""
    handler = logging.StreamHandler()
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
