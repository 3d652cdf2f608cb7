"""Owner-only files: everything Sightline writes that holds biometric or case data is 0600, its folders 0700.

Two layers, so a file nobody thought of is covered too:

- `restrict_umask()` at the process entry points (the `sightline` command, `python -m bot`): every file and
  folder the process creates, through any library (usearch, SQLite, matplotlib, PIL), gets no group or other bits.
- explicit modes where the engine creates its own files (`private_dir`, `private_file`, `open_private`,
  `make_private`), so library users (tests, other programs) get the same result whatever their umask.

`exposed()` and `fix()` back `sightline doctor` and `sightline doctor --fix`.
SQLite creates its -wal and -shm files with the database file's mode (os_unix.c, `findCreateFileMode`), so a
0600 database gives 0600 companions whatever the umask.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .errors import StorageError, is_disk_full

logger = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
OTHERS = 0o077  # group and other permission bits: none may be set on our data
PRIVATE_UMASK = 0o077


def restrict_umask() -> int:
    """Add group/other bits to the process umask (keeping any stricter bits); return the previous umask."""
    previous = os.umask(PRIVATE_UMASK)
    os.umask(previous | PRIVATE_UMASK)
    return previous


def private_dir(path: Path, *, tighten: bool = False) -> Path:
    """Create `path` (and missing parents) with the folder itself 0700; with `tighten`, also an existing one.

    An existing folder is tightened only when this user owns it and it is not a shared sticky folder such as
    /tmp (that would be the operator's mistake to fix, and `doctor` reports it); a warning says so. Raises
    OSError if it cannot be created.
    """
    path = Path(path)
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    st = path.stat()
    if tighten and st.st_mode & OTHERS and not st.st_mode & stat.S_ISVTX and st.st_uid == os.geteuid():
        try:
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~OTHERS | stat.S_IRWXU)
        except OSError as exc:
            logger.warning("could not make %s owner-only: %s", path, exc.strerror or exc)
        else:
            logger.warning("%s was readable by other accounts (mode %04o): now owner-only (0700)", path,
                           stat.S_IMODE(st.st_mode))
    return path


def private_data_dir(data_dir: Path) -> Path:
    """The engine's data directory: created 0700, or made owner-only if it exists (see `private_dir`).

    Raises StorageError when it cannot be created (OSError as is for a full disk, which the caller reports).
    """
    try:
        return private_dir(data_dir, tighten=True)
    except OSError as exc:
        if is_disk_full(exc, data_dir):
            raise
        raise StorageError(f"cannot create the data directory {data_dir}: {exc.strerror or exc}") from exc


def private_file(path: Path) -> Path:
    """Create `path` as an empty 0600 file if it does not exist (an existing file is left as it is).

    Used before SQLite opens a new database, so the database and its -wal/-shm are owner-only from the start
    (an empty file is a valid empty database). Raises OSError if it cannot be created.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    except FileExistsError:
        return path
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return path


def open_private(path: Path, mode: str = "w", **kwargs: Any) -> IO[Any]:
    """`open(path, mode)` for writing ("w", "wb", "a", "x"...), the file created 0600 or tightened to 0600.

    Raises OSError as `open` does.
    """
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    if "a" in mode:
        flags |= os.O_APPEND
    elif "x" in mode:
        flags |= os.O_EXCL
    else:
        flags |= os.O_TRUNC
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, mode.replace("x", "w"), **kwargs)
    except BaseException:
        os.close(fd)
        raise


def write_private_text(path: Path, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to a 0600 file (replacing its content)."""
    with open_private(path, "w", encoding=encoding) as fh:
        fh.write(text)


def make_private(*paths: Path) -> None:
    """Remove group/other bits from files or folders another library has just written (missing paths are skipped)."""
    for path in paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode) or not st.st_mode & OTHERS:
            continue
        os.chmod(path, stat.S_IMODE(st.st_mode) & ~OTHERS)


@dataclass(frozen=True, slots=True)
class Exposed:
    """A file or folder that group or other accounts may access: its path and permission bits (e.g. 0o644)."""

    path: Path
    mode: int

    def __str__(self) -> str:
        return f"{self.path} ({self.mode:04o})"


def _walk(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Every entry under `root`, `root` included, without following symbolic links."""
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return
    yield root, st
    if not stat.S_ISDIR(st.st_mode):
        return
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda exc: logger.warning("cannot list %s", exc.filename)):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            try:
                yield path, os.lstat(path)
            except FileNotFoundError:  # removed meanwhile (a -shm, a temporary file)
                continue


def exposed(roots: Iterable[Path]) -> list[Exposed]:
    """Files and folders under `roots` (each a file or folder, walked without following links) with group/other bits."""
    found: dict[Path, Exposed] = {}
    for root in roots:
        for path, st in _walk(Path(root)):
            if stat.S_ISLNK(st.st_mode) or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                continue
            if st.st_mode & OTHERS:
                found.setdefault(path, Exposed(path, stat.S_IMODE(st.st_mode)))
    return sorted(found.values(), key=lambda e: str(e.path))


def fix(items: Iterable[Exposed]) -> list[tuple[Exposed, str | None]]:
    """Remove group/other bits from each item; pairs of (item, None when fixed or why not)."""
    done: list[tuple[Exposed, str | None]] = []
    for item in items:
        try:
            make_private(item.path)
        except OSError as exc:
            done.append((item, exc.strerror or str(exc)))
        else:
            done.append((item, None))
    return done
