"""Domain exceptions raised by the engine; the edges (CLI, bot) translate them into replies."""

from __future__ import annotations

import contextlib
from typing import Any


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class ModelError(EngineError):
    """A face model is missing, unreadable or of the wrong kind."""


class ImageRejected(EngineError):
    """The bytes are not an image we accept (not an image, corrupt, too big, a decompression bomb)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # one of: not_image, corrupt, too_large, too_many_pixels, empty


class NoFaceFound(EngineError):
    """The image decoded fine but no face was detected in it."""


class SeveralFaces(EngineError):
    """The photo shows several faces and the caller asked to choose one (search(..., several="ask"))."""

    def __init__(self, faces: tuple[Any, ...]) -> None:
        super().__init__(f"the photo shows {len(faces)} faces; choose one")
        self.faces = faces  # tuple[DetectedFace, ...], numbered left to right


class FaceIndexError(EngineError):
    """The caller asked for a face number the photo does not have."""


class NotFound(EngineError):
    """The subject, source link, image or user asked for does not exist."""


class InvalidArgument(EngineError):
    """An argument a user typed is malformed (bad date, bad role, empty case reference)."""


class LastAdmin(EngineError):
    """Revoking or demoting this account would leave no administrator."""


class CaseRequired(EngineError):
    """A search was attempted without a case reference while one is required."""


class StorageError(EngineError):
    """The data directory cannot be used (permissions, corrupt database)."""


class IndexUnavailable(EngineError):
    """The vector index server (Milvus) is unreachable, too slow or refused the request; nothing was changed
    in the gallery by the failed call. The message says what failed, for the log and `sightline doctor`."""


class DiskFull(StorageError):
    """A write failed because the disk (or quota) is full; nothing was left half-written."""


def is_disk_full(exc: BaseException, where: Any = None) -> bool:
    """True for the errors a full disk or quota raises: ENOSPC/EDQUOT, SQLite's SQLITE_FULL, and (when
    `where`, the data directory, has under 1 MB free) SQLite's "disk I/O error", which is what it raises
    when it cannot even create its -wal or -shm file."""
    import errno
    import shutil
    import sqlite3
    from pathlib import Path

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:  # a cause chain may loop (pymilvus raises `ex from ex`)
        seen.add(id(exc))
        if isinstance(exc, BaseExceptionGroup) and any(is_disk_full(e, where) for e in exc.exceptions):
            return True
        if where is not None and isinstance(exc, sqlite3.Error) and "disk I/O error" in str(exc):
            folder = Path(where)
            while not folder.exists() and folder != folder.parent:
                folder = folder.parent
            with contextlib.suppress(OSError):
                if shutil.disk_usage(folder).free < 1 << 20:
                    return True
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(exc, sqlite3.Error) and (
            getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
        ):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def is_damaged_database(exc: BaseException) -> bool:
    """True for SQLite's "the file is damaged" errors (malformed image, not a database); not for locks or I/O."""
    import sqlite3

    text = str(exc)
    return isinstance(exc, sqlite3.DatabaseError) and ("malformed" in text or "not a database" in text)


def disk_full(where: Any) -> DiskFull:
    """The DiskFull error for a folder: "disk full at DIR (N MB free)"."""
    import shutil
    from pathlib import Path

    folder = Path(where)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = f"{shutil.disk_usage(folder).free / 1e6:.0f} MB free"
    except OSError:
        free = "free space unknown"
    return DiskFull(f"disk full at {Path(where)} ({free})")
