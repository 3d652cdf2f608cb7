"""Backups of the data directory: a consistent copy taken while the bot runs, verified, and restored.

The database is copied with SQLite's online backup API from a connection of our own: under WAL the copy
is a snapshot of the last commit, and the running bot keeps writing meanwhile. The index is derived data:
its file is copied as it is (saves are atomic renames, so we copy one whole version) and the engine
reconciles it with the database when it opens after a restore. Synchronous: call it in a thread.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from . import faults, fsmodes
from .config import EngineConfig
from .errors import StorageError, disk_full, is_disk_full
from .images import file_sha256
from .index import SCRUB_BASE, save_lock, sidecar_path, stale_temporaries

logger = logging.getLogger(__name__)

FORMAT = "sightline-backup"
VERSION = 1
MANIFEST = "manifest.json"
HEAD_FILE = "audit-head.log"  # the audit head file's name inside a backup
IGNORED_IN_EMPTY_DIR = {".gitkeep"}  # a data dir holding only these counts as empty
PARTIAL_PREFIX = ".sightline-backup-"  # DEST's sibling ".sightline-backup-<name>.partial-<pid>" while it is written


class BackupError(StorageError):
    """A backup cannot be taken, verified or restored."""


@dataclass(frozen=True, slots=True)
class IndexFingerprint:
    """What the saved index file holds: (count, sum of keys) like MetadataStore.face_fingerprint()."""

    faces: int
    key_sum: int


def index_fingerprint(path: Path) -> IndexFingerprint | None:
    """Count and key sum of a saved index (either kind; usearch's memory-mapped); None when missing or unreadable."""
    from usearch.index import Index

    from .hamming import MAGIC, saved_keys

    if not path.is_file():
        return None
    with open(path, "rb") as fh:
        is_hamming = fh.read(len(MAGIC)) == MAGIC
    if is_hamming:
        hkeys = saved_keys(path)
        if hkeys is None:
            logger.warning("index file %s is unreadable", path)
            return None
        return IndexFingerprint(len(hkeys), int(hkeys.sum()))
    try:
        index = Index.restore(str(path), view=True)
    except Exception as exc:  # noqa: BLE001 (usearch raises several types for a damaged file)
        logger.warning("index file %s is unreadable: %s", path, exc)
        return None
    if index is None:
        return None
    keys = np.asarray(index.keys, dtype=np.uint64).astype(np.int64)
    keys = keys[keys < SCRUB_BASE]  # the noise vectors that fill erased faces' slots
    return IndexFingerprint(len(keys), int(keys.sum()))


def is_empty_dir(path: Path) -> bool:
    """True when `path` is missing or holds nothing but placeholder files."""
    return not path.exists() or (path.is_dir() and all(p.name in IGNORED_IN_EMPTY_DIR for p in path.iterdir()))


def _connect_ro(path: Path) -> sqlite3.Connection:
    # immutable=1: no locks, no -shm: right for a backup copy nobody else writes.
    return sqlite3.connect(f"file:{path.resolve()}?mode=ro&immutable=1", uri=True)


def _integrity(conn: sqlite3.Connection) -> str:
    rows = conn.execute("PRAGMA integrity_check").fetchall()
    return "ok" if rows == [("ok",)] else "; ".join(str(r[0]) for r in rows[:5])


def _describe(conn: sqlite3.Connection) -> dict[str, Any]:
    """Counts and markers of a database, for the manifest and for checking a restore against it."""

    def one(sql: str) -> Any:
        return conn.execute(sql).fetchone()[0]

    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    count, total = conn.execute("SELECT count(*), coalesce(sum(id), 0) FROM faces").fetchone()
    return {
        "schema_version": meta.get("schema_version"),
        "counts": {
            "images": one("SELECT count(*) FROM images"),
            "faces": count,
            "users": one("SELECT count(*) FROM users"),
            "audit_entries": one("SELECT count(*) FROM audit"),
        },
        "face_fingerprint": [int(count), int(total)],
        "audit_head": meta.get("audit_head"),
        "audit_head_seq": int(meta["audit_head_seq"]) if meta.get("audit_head_seq") else None,
    }


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _version() -> str | None:
    try:
        return metadata.version("sightline")
    except metadata.PackageNotFoundError:
        return None


def create_backup(config: EngineConfig, dest: Path) -> dict[str, Any]:
    """Copy the database (online, consistent) and the index into the new folder `dest`; returns the manifest.

    The folder is built under a temporary name and renamed when complete, so a `dest` that exists is a
    whole backup. Files are readable by the owner only: they hold biometric data.
    """
    db = config.db_path
    if not db.is_file():
        raise BackupError(f"there is no database at {db}: nothing to back up (check SIGHTLINE_DATA_DIR)")
    dest = Path(dest)
    if dest.exists() and not (dest.is_dir() and not any(dest.iterdir())):
        raise BackupError(f"{dest} already exists and is not an empty folder: choose a new destination")
    if dest.resolve().is_relative_to(Path(config.data_dir).resolve()):
        raise BackupError(f"{dest} is inside the data directory {config.data_dir}: put backups elsewhere")
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(dest.parent)
    partial = dest.with_name(f"{PARTIAL_PREFIX}{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(mode=0o700)
    try:
        manifest = _write_backup(config, partial)
        if dest.exists():
            dest.rmdir()  # empty, checked above
        os.rename(partial, dest)
    except BaseException as exc:  # an error, Ctrl-C or SIGTERM (the CLI turns it into SystemExit)
        shutil.rmtree(partial, ignore_errors=True)
        if is_disk_full(exc):
            raise BackupError(f"{disk_full(dest.parent)}: nothing was backed up") from exc
        raise
    return manifest


def remove_stale_partials(folder: Path) -> list[Path]:
    """Delete the partial folders of backups into `folder` whose process is gone (killed with SIGKILL or a
    power cut: nothing can clean up then). They hold biometric data, so none is left behind. Returns them."""
    removed = []
    for path in folder.glob(f"{PARTIAL_PREFIX}*.partial-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or _alive(int(pid)) or not path.is_dir():
            continue
        shutil.rmtree(path, ignore_errors=True)
        logger.warning("removed %s, left by an interrupted backup (process %s is gone)", path, pid)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own earlier attempt
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_backup(config: EngineConfig, out: Path) -> dict[str, Any]:
    db_copy = out / config.db_path.name
    # The audit head file first: the database snapshot taken next holds every head it records.
    head_copy = None
    if config.audit_head_path.is_file():
        head_copy = out / HEAD_FILE
        shutil.copyfile(config.audit_head_path, head_copy)
    try:
        src = sqlite3.connect(str(config.db_path), timeout=30)
        try:
            dst = sqlite3.connect(str(db_copy))
            try:
                src.backup(dst)  # one step: a snapshot of the last commit; WAL writers are not blocked
                dst.execute("PRAGMA journal_mode=DELETE")  # a single self-contained file
                integrity = _integrity(dst)
                described = _describe(dst)
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot back up the database {config.db_path}: {exc}") from None
    if integrity != "ok":
        raise BackupError(f"the database fails its integrity check ({integrity}): not backed up")
    files = {db_copy.name: db_copy}
    if head_copy is not None:
        files[head_copy.name] = head_copy
    index_info: dict[str, Any] | None = None
    if config.index_path.is_file():
        index_copy = out / config.index_path.name
        # Under the save lock, so the index and its sidecar (with the change seq it reflects) are one pair.
        with save_lock(config.index_path):
            shutil.copyfile(config.index_path, index_copy)
            files[index_copy.name] = index_copy
            if sidecar_path(config.index_path).is_file():
                side_copy = sidecar_path(index_copy)
                shutil.copyfile(sidecar_path(config.index_path), side_copy)
                files[side_copy.name] = side_copy
        fp = index_fingerprint(index_copy)
        index_info = {
            "file": index_copy.name,
            "faces": fp.faces if fp else None,
            "consistent": fp is not None and [fp.faces, fp.key_sum] == described["face_fingerprint"],
        }
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "sightline_version": _version(),
        "database": {"file": db_copy.name, "integrity_check": integrity},
        "index": index_info,
        **described,
        "files": {},
    }
    for name, path in files.items():
        os.chmod(path, 0o600)
        _fsync(path)
        manifest["files"][name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    manifest_path = out / MANIFEST
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.chmod(manifest_path, 0o600)
    _fsync(manifest_path)
    return manifest


def verify_backup(src: Path) -> dict[str, Any]:
    """Check a backup folder: manifest, sizes and SHA-256 of its files, the database's integrity and counts."""
    src = Path(src)
    if not src.exists():
        raise BackupError(f"{src} does not exist: give the folder `sightline backup` wrote")
    if not src.is_dir():
        raise BackupError(f"{src} is a file: a backup is the folder `sightline backup` wrote")
    try:
        manifest = json.loads((src / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackupError(f"{src} has no {MANIFEST}: it is not a Sightline backup") from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"cannot read {src / MANIFEST}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{src / MANIFEST} is not a Sightline backup manifest")
    if manifest.get("version") != VERSION:
        raise BackupError(f"backup format version {manifest.get('version')} is not supported (expected {VERSION})")
    files = manifest.get("files") or {}
    db_name = (manifest.get("database") or {}).get("file")
    if not db_name or db_name not in files:
        raise BackupError("the manifest names no database file")
    for name, info in files.items():
        path = src / name
        if Path(name).name != name:
            raise BackupError(f"the manifest names a file outside the backup folder: {name!r}")
        if not path.is_file():
            raise BackupError(f"{name} is listed in the manifest but missing from {src}")
        if path.stat().st_size != info.get("bytes") or file_sha256(path) != info.get("sha256"):
            raise BackupError(f"{name} does not match its SHA-256 in the manifest: the backup is damaged")
    try:
        conn = _connect_ro(src / db_name)
        try:
            integrity = _integrity(conn)
            described = _describe(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise BackupError(f"the backed-up database cannot be read: {exc}") from None
    if integrity != "ok":
        raise BackupError(f"the backed-up database fails its integrity check: {integrity}")
    if described["counts"] != manifest.get("counts") or described["face_fingerprint"] != manifest.get(
        "face_fingerprint"
    ):
        raise BackupError("the backed-up database does not hold what its manifest counts")
    return manifest


def database_in_use(db: Path) -> bool:
    """True when another connection has the database open (leaving WAL mode needs it to be the only one).

    As a side effect an idle WAL database is checkpointed into its main file. A file SQLite cannot read at
    all is reported as not in use: it is probably why we are restoring.
    """
    if not db.is_file():
        return False
    try:
        conn = sqlite3.connect(str(db), timeout=0, isolation_level=None)
    except sqlite3.Error:
        return False
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
    except sqlite3.OperationalError as exc:
        return "locked" in str(exc) or "busy" in str(exc)
    except sqlite3.DatabaseError:
        return False
    finally:
        conn.close()
    return False


def restore_backup(config: EngineConfig, src: Path, *, force: bool = False) -> dict[str, Any]:
    """Verify the backup in `src` and put its database and index in the data directory; returns its manifest.

    Refuses a data directory that holds anything unless `force`, and always refuses while another process
    has the database open. Open the engine afterwards: it reconciles the index with the restored database.
    """
    manifest = verify_backup(src)
    data_dir = Path(config.data_dir)
    if not is_empty_dir(data_dir) and not force:
        raise BackupError(
            f"the data directory {data_dir} is not empty: pass --force to replace its database and index "
            "(what they hold now is lost)"
        )
    if database_in_use(config.db_path):
        raise BackupError(f"{config.db_path} is open in another process: stop the bot before restoring")
    fsmodes.private_dir(data_dir)
    for left in data_dir.glob(".restore-*"):  # a killed restore's copy of a database: biometric data, removed
        pid = left.name.rsplit("-", 1)[-1]
        if pid.isdigit() and left.is_dir() and (int(pid) == os.getpid() or not _alive(int(pid))):
            shutil.rmtree(left, ignore_errors=True)
            logger.warning("removed %s, left by an interrupted restore (process %s is gone)", left, pid)
    staging = data_dir / f".restore-{os.getpid()}"
    staging.mkdir(mode=0o700)
    try:
        staged_db = staging / config.db_path.name
        shutil.copyfile(Path(src) / manifest["database"]["file"], staged_db)
        os.chmod(staged_db, 0o600)
        _fsync(staged_db)
        staged_index = None
        if manifest.get("index"):
            staged_index = staging / config.index_path.name
            shutil.copyfile(Path(src) / manifest["index"]["file"], staged_index)
            os.chmod(staged_index, 0o600)
            _fsync(staged_index)
            side = sidecar_path(Path(src) / manifest["index"]["file"])
            if side.is_file():  # which projection built the index (older backups have none: a rebuild)
                shutil.copyfile(side, sidecar_path(staged_index))
                fsmodes.make_private(sidecar_path(staged_index))
        faults.reached("restore:staged")
        # An old -wal next to the new file would be replayed into it: remove the old set first.
        for stale in (
            config.db_path.with_name(config.db_path.name + "-wal"),
            config.db_path.with_name(config.db_path.name + "-shm"),
            config.index_path,
            *stale_temporaries(config.index_path),
            sidecar_path(config.index_path),
        ):
            stale.unlink(missing_ok=True)
        os.replace(staged_db, config.db_path)
        head = Path(src) / HEAD_FILE
        if head.is_file() and not config.audit_head_path.exists():  # an existing head file is evidence: kept
            config.audit_head_path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(head, config.audit_head_path)
            os.chmod(config.audit_head_path, 0o600)
        if staged_index is not None:
            os.replace(staged_index, config.index_path)
            if sidecar_path(staged_index).is_file():
                os.replace(sidecar_path(staged_index), sidecar_path(config.index_path))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("restored %s into %s", src, data_dir)
    return manifest
