"""MetadataStore: SQLite through aiosqlite. The source of truth for images, faces, users and the audit log."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
import numpy as np

from . import audit, faults, fsmodes, integrity
from .errors import LastAdmin, NotFound, StorageError
from .types import AuditEntry, ChainCheck, User

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: faces.emb_crc and meta gallery_id
# The free-text columns the label migration (Engine.normalize_labels) may rewrite.
LABEL_COLUMNS = (("images", "subject"), ("images", "source_url"), ("images", "notes"), ("faces", "subject"),
                 ("users", "note"), ("users", "active_case"))

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256      TEXT NOT NULL UNIQUE,
    source_url  TEXT NOT NULL,
    subject     TEXT,
    added_at    TEXT NOT NULL,
    added_by    TEXT NOT NULL,
    expires_at  TEXT,
    notes       TEXT,
    width       INTEGER,
    height      INTEGER
);
CREATE INDEX IF NOT EXISTS images_subject ON images(subject);
CREATE INDEX IF NOT EXISTS images_source ON images(source_url);
CREATE INDEX IF NOT EXISTS images_expires ON images(expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS faces (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id    INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    number      INTEGER NOT NULL,
    x1 INTEGER NOT NULL, y1 INTEGER NOT NULL, x2 INTEGER NOT NULL, y2 INTEGER NOT NULL,
    det_score   REAL NOT NULL,
    width_px    INTEGER NOT NULL,
    blur        REAL NOT NULL,
    yaw         REAL NOT NULL,
    pitch       REAL NOT NULL,
    quality_ok  INTEGER NOT NULL,
    is_primary  INTEGER NOT NULL,
    subject     TEXT,
    embedding   BLOB NOT NULL,
    thumbnail   BLOB,
    emb_crc     INTEGER  -- CRC-32 of embedding (engine.integrity); NULL only for a row found damaged
);
CREATE INDEX IF NOT EXISTS faces_image ON faces(image_id);
CREATE INDEX IF NOT EXISTS faces_subject ON faces(subject);
CREATE TABLE IF NOT EXISTS users (
    user_id     INTEGER PRIMARY KEY,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'officer')),
    note        TEXT NOT NULL DEFAULT '',
    added_by    TEXT NOT NULL,
    added_at    TEXT NOT NULL,
    active_case TEXT,
    language    TEXT
);
CREATE TABLE IF NOT EXISTS audit (
    seq         INTEGER PRIMARY KEY,
    ts          TEXT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    case_ref    TEXT,
    details     TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_ts ON audit(ts);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- Every face added to or removed from the gallery, in commit order, written in the same transaction as the
-- change: long-running engines follow it to keep their in-memory index current. Ids only, never vectors.
CREATE TABLE IF NOT EXISTS changes (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    op      TEXT NOT NULL CHECK (op IN ('add', 'remove')),
    face_id INTEGER NOT NULL
);
"""

# The change log keeps at least this many newest entries; older ones are pruned once a saved index reflects
# them. An engine that falls further behind re-synchronises by comparing keys (Engine.resync_index).
CHANGES_KEPT = 100_000


# Columns added after a table was first created: (table, column, declaration). CREATE TABLE IF NOT EXISTS leaves an
# older table as it is, so these are added to it at open (SQLite's ADD COLUMN is instant: no table rewrite).
ADDED_COLUMNS = (("users", "language", "TEXT"),)


async def _add_missing_columns(conn: aiosqlite.Connection) -> None:
    """Bring a database made by an earlier version up to SCHEMA (idempotent)."""
    for table, column, declaration in ADDED_COLUMNS:
        async with conn.execute(f"PRAGMA table_info({table})") as cur:
            have = {row[1] for row in await cur.fetchall()}
        if column not in have:
            await conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
            logger.info("database migrated: added %s.%s", table, column)


def now_iso() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class FaceRow:
    """A face ready to be written."""

    number: int
    box: tuple[int, int, int, int]
    det_score: float
    width_px: int
    blur: float
    yaw: float
    pitch: float
    quality_ok: bool
    is_primary: bool
    subject: str | None
    embedding: np.ndarray
    thumbnail: bytes


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the change log: a face id added to or removed from the gallery."""

    seq: int
    op: str  # "add" | "remove"
    face_id: int


@dataclass(frozen=True, slots=True)
class Removal:
    """What a deletion removed (committed together with its audit entry)."""

    image_ids: list[int]
    face_ids: list[int]
    audit_entries: int = 0


@dataclass(frozen=True, slots=True)
class StoredFace:
    """A face read back with its image's metadata."""

    face_id: int
    image_id: int
    box: tuple[int, int, int, int]
    quality_ok: bool
    subject: str | None
    source_url: str
    image_sha256: str
    embedding: np.ndarray


@dataclass(frozen=True, slots=True)
class DamagedFace:
    """A stored face whose embedding fails its checks: never ranked, reported by doctor."""

    face_id: int
    image_id: int
    problem: str


class MetadataStore:
    """All SQL lives here. One connection; writes are serialised by a lock."""

    def __init__(self, conn: aiosqlite.Connection, path: Path, head_log: audit.HeadLog | None = None) -> None:
        self.conn = conn
        self.path = path
        self.head_log = head_log
        self.gallery_id: str | None = None
        self._write = asyncio.Lock()
        self._txn: str | None = None  # the operation of the open write transaction (fault points are named by it)
        self._txn_entries: list[AuditEntry] = []  # audit entries written in it, published after COMMIT
        self._reported: set[int] = set()  # damaged faces already logged by this process

    @classmethod
    async def open(cls, path: Path, *, create: bool = True, head_log: audit.HeadLog | None = None) -> MetadataStore:
        """Open the database with WAL, foreign keys and secure_delete on; creates it only when `create`.

        Raises StorageError when it cannot be opened (or, without `create`, does not exist). Adds what an
        older schema lacks (the embedding checksums, the gallery id). `head_log` receives every new audit head.
        """
        if not create and not path.is_file():
            raise StorageError(f"no database at {path}")
        conn = None
        try:
            fsmodes.private_file(fsmodes.private_dir(path.parent) / path.name)  # 0600: -wal/-shm follow its mode
            conn = await aiosqlite.connect(str(path), isolation_level=None)
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process kill
            await conn.execute("PRAGMA foreign_keys=ON")
            await conn.execute("PRAGMA secure_delete=ON")  # erased rows are overwritten with zeros
            await conn.execute("PRAGMA busy_timeout=10000")
            await conn.executescript(SCHEMA)
            await _migrate(conn)
            await _add_missing_columns(conn)
            await conn.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('gallery_id', ?)", (uuid.uuid4().hex,)
            )
            async with conn.execute("SELECT value FROM meta WHERE key = 'gallery_id'") as cur:
                gallery_id = str((await cur.fetchone())[0])
        except BaseException as exc:
            if conn is not None:  # its (non-daemon) thread would otherwise keep the process alive at exit
                await conn.close()
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise StorageError(f"cannot open the database {path}: {exc}") from exc
            raise
        store = cls(conn, path, head_log)
        store.gallery_id = gallery_id
        try:
            await store._start_head_log()
        except BaseException:
            await conn.close()
            raise
        return store

    async def _start_head_log(self) -> None:
        """The first time a head file is in use, record the current head in it and remember from which entry."""
        if self.head_log is None or await self.get_meta("audit_head_log_from") is not None:
            return
        seq = int(await self.get_meta("audit_head_seq") or await self.get_meta("audit_anchor_seq") or 0)
        digest = await self.get_meta("audit_head") or await self.get_meta("audit_anchor") or audit.GENESIS
        self.head_log.path.parent.mkdir(parents=True, exist_ok=True)
        self.head_log.append(seq, digest)
        await self.set_meta("audit_head_log_from", str(seq))
        logger.info("audit heads are now also appended to %s (from entry %d)", self.head_log.path, seq)

    def _published(self, entry: AuditEntry) -> AuditEntry:
        """Call after an audit entry COMMITS (never inside the transaction): append it to the head file."""
        if self.head_log is not None:
            self.head_log.append(entry.seq, entry.hash)
        return entry

    async def close(self) -> None:
        """Checkpoint the WAL and close."""
        try:
            await self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            await self.conn.close()

    # One hop to aiosqlite's thread per query: `async with conn.execute() as cur: await cur.fetchone()` took three
    # (execute, fetch, close), ~80 us of CPU each; a search makes ~10 such queries (bench/RESULTS.md, issue 15).
    async def _one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        """The first row of a query that returns at most one (by key, an aggregate, LIMIT 1), or None."""
        rows = await self.conn.execute_fetchall(sql, args)
        return next(iter(rows), None)

    async def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """Every row of a query."""
        return list(await self.conn.execute_fetchall(sql, args))

    @asynccontextmanager
    async def _transaction(self, operation: str) -> AsyncIterator[None]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT), rolled back on any error.

        Every gallery change writes its audit entry (`_audit_in_transaction`) and its change-log rows inside
        one of these, so a crash, a kill or a full disk leaves both or neither. `operation` names the fault
        points (engine/faults.py): `<operation>:before-audit`, `:before-commit`, `:after-commit`.
        """
        async with self._write:
            await self.conn.execute("BEGIN IMMEDIATE")
            self._txn, self._txn_entries = operation, []
            try:
                yield
                faults.reached(f"{operation}:before-commit")
                await self.conn.execute("COMMIT")
            except BaseException:
                try:
                    await self.conn.execute("ROLLBACK")
                except aiosqlite.Error:  # a failed COMMIT may already have ended the transaction
                    pass
                raise
            finally:
                self._txn = None
            for entry in self._txn_entries:  # committed: now (never before) onto the external head file
                self._published(entry)
        faults.reached(f"{operation}:after-commit")

    async def _audit_in_transaction(
        self, actor: str, action: str, case_ref: str | None, details: dict[str, Any]
    ) -> AuditEntry:
        """Append one hash-chained entry inside the open write transaction (the only place entries are written)."""
        assert self._txn is not None, "an audit entry is written only inside a transaction"
        faults.reached(f"{self._txn}:before-audit")
        row = await self._one("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        if row:
            prev_seq, prev_hash = int(row[0]), str(row[1])
        else:
            prev_seq = int(await self.get_meta("audit_anchor_seq") or 0)
            prev_hash = await self.get_meta("audit_anchor") or audit.GENESIS
        seq, ts = prev_seq + 1, now_iso()
        details = json.loads(json.dumps(details, default=str))  # plain JSON types only
        text = audit.canonical(seq, ts, actor, action, case_ref, details)
        digest = audit.entry_hash(prev_hash, text)
        await self.conn.execute(
            "INSERT INTO audit(seq, ts, actor, action, case_ref, details, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, ts, actor, action, case_ref, json.dumps(details, sort_keys=True, ensure_ascii=False),
             prev_hash, digest),
        )
        await self.conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('audit_head', ?), ('audit_head_seq', ?)",
            (digest, str(seq)),
        )
        entry = AuditEntry(seq, ts, actor, action, case_ref, details, prev_hash, digest)
        self._txn_entries.append(entry)
        return entry

    # -- meta --------------------------------------------------------------------------------
    async def get_meta(self, key: str) -> str | None:
        """A value from the meta table."""
        row = await self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return row[0] if row else None

    async def set_meta(self, key: str, value: str) -> None:
        """Set a value in the meta table."""
        async with self._write:
            await self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- images and faces --------------------------------------------------------------------
    async def image_id_by_sha(self, sha256: str) -> int | None:
        """The id of an image already in the gallery, by content hash."""
        row = await self._one("SELECT id FROM images WHERE sha256 = ?", (sha256,))
        return int(row[0]) if row else None

    async def add_image(
        self,
        *,
        sha256: str,
        source_url: str,
        subject: str | None,
        added_by: str,
        expires_at: str | None,
        notes: str | None,
        size: tuple[int, int],
        faces: Sequence[FaceRow],
        audit_extra: dict[str, Any] | None = None,
    ) -> tuple[int, list[int]]:
        """Insert an image, its faces, their change-log rows and the "enroll" audit entry (actor `added_by`,
        plus `audit_extra` details) in one transaction; returns the image id and the face ids."""
        async with self._transaction("enroll"):
            cur = await self.conn.execute(
                "INSERT INTO images(sha256, source_url, subject, added_at, added_by, expires_at, notes, width, height)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sha256, source_url, subject, now_iso(), added_by, expires_at, notes, size[0], size[1]),
            )
            image_id = int(cur.lastrowid or 0)
            face_ids = []
            for f in faces:
                cur = await self.conn.execute(
                    "INSERT INTO faces(image_id, number, x1, y1, x2, y2, det_score, width_px, blur, yaw, pitch,"
                    " quality_ok, is_primary, subject, embedding, thumbnail, emb_crc)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        image_id, f.number, *f.box, f.det_score, f.width_px, f.blur, f.yaw, f.pitch,
                        int(f.quality_ok), int(f.is_primary), f.subject, (blob := _embedding_blob(f.embedding)),
                        f.thumbnail, integrity.embedding_crc(blob),
                    ),
                )
                face_ids.append(int(cur.lastrowid or 0))
            await self.conn.executemany(
                "INSERT INTO changes(op, face_id) VALUES ('add', ?)", [(i,) for i in face_ids]
            )
            await self._audit_in_transaction(
                added_by, "enroll", None,
                {"image_id": image_id, "image_sha256": sha256, "faces": len(face_ids), "face_ids": face_ids,
                 "subject": subject, "source_url": source_url, "expires_at": expires_at, **(audit_extra or {})},
            )
        return image_id, face_ids

    async def faces_by_ids(self, ids: Iterable[int]) -> dict[int, StoredFace]:
        """Faces with their images' metadata and float32 embeddings; damaged rows are left out and logged."""
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = await self._all(
            "SELECT f.id, f.image_id, f.x1, f.y1, f.x2, f.y2, f.quality_ok, f.subject, i.source_url, i.sha256,"
            f" CAST(f.embedding AS BLOB), f.emb_crc FROM faces f JOIN images i ON i.id = f.image_id WHERE f.id IN ({marks})",
            ids,
        )
        out = {}
        problems = integrity.embedding_problems([r[10] for r in rows], [r[11] for r in rows])
        for r, problem in zip(rows, problems, strict=True):
            if problem:
                self._report(DamagedFace(r[0], r[1], problem))
                continue
            out[r[0]] = StoredFace(
                face_id=r[0], image_id=r[1], box=(r[2], r[3], r[4], r[5]), quality_ok=bool(r[6]), subject=r[7],
                source_url=r[8], image_sha256=r[9], embedding=np.frombuffer(r[10], dtype=np.float32),
            )
        return out

    def _report(self, damaged: DamagedFace) -> None:
        if damaged.face_id not in self._reported:
            self._reported.add(damaged.face_id)
            logger.error("face %d (image %d) is damaged in the database: %s; it is left out of every search "
                         "(`sightline doctor --deep` lists all such faces; restore a backup or re-enrol the image)",
                         damaged.face_id, damaged.image_id, damaged.problem)

    async def damaged_faces(self, batch: int = 20000) -> AsyncIterator[tuple[int, DamagedFace | None]]:
        """Walk every face: (rows read so far, the face when its embedding fails its checks, else None)."""
        last, seen = 0, 0
        while True:
            rows = await self._all(
                "SELECT id, image_id, CAST(embedding AS BLOB), emb_crc FROM faces WHERE id > ? ORDER BY id LIMIT ?", (last, batch)
            )
            if not rows:
                return
            last = rows[-1][0]
            for r in rows:
                seen += 1
                problem = integrity.embedding_problem(r[2], r[3])
                yield seen, (DamagedFace(r[0], r[1], problem) if problem else None)

    async def thumbnail(self, face_id: int) -> bytes | None:
        """The stored JPEG thumbnail of a gallery face."""
        row = await self._one("SELECT thumbnail FROM faces WHERE id = ?", (face_id,))
        return bytes(row[0]) if row and row[0] is not None else None

    async def face_fingerprint(self) -> tuple[int, int]:
        """(count, sum of ids) of the faces: cheap to compare against the index's keys."""
        row = await self._one("SELECT count(*), coalesce(sum(id), 0) FROM faces")
        return int(row[0]), int(row[1])

    async def face_ids(self) -> np.ndarray:
        """Every face id."""
        # The small (image_id, id) index holds every id: reading it beats scanning the blob-heavy table.
        rows = await self._all("SELECT id FROM faces INDEXED BY faces_image")
        return np.sort(np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)))

    async def iter_embeddings(
        self, batch: int = 20000, only: np.ndarray | None = None
    ) -> AsyncIterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, embeddings) in batches, for rebuilding the index."""
        if only is not None:
            for start in range(0, len(only), batch):
                chunk = [int(i) for i in only[start : start + batch]]
                marks = ",".join("?" * len(chunk))
                rows = await self._all(
                    f"SELECT id, CAST(embedding AS BLOB), emb_crc, image_id FROM faces WHERE id IN ({marks})", chunk
                )
                if rows:
                    yield self._ids_vectors(rows)
            return
        last = 0
        while True:
            rows = await self._all(
                "SELECT id, CAST(embedding AS BLOB), emb_crc, image_id FROM faces WHERE id > ? ORDER BY id LIMIT ?", (last, batch)
            )
            if not rows:
                return
            last = rows[-1][0]
            yield self._ids_vectors(rows)

    def _ids_vectors(self, rows: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Ids and embeddings of (id, embedding, emb_crc, image_id) rows. A damaged row keeps its id with a
        random unit vector: the index stays key-for-key with the database, and search never ranks the row."""
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vecs = np.empty((len(rows), integrity.EMBEDDING_BYTES // 4), dtype=np.float32)
        rng = None
        for n, r in enumerate(rows):
            problem = integrity.embedding_problem(r[1], r[2])
            if problem is None:
                vecs[n] = np.frombuffer(r[1], dtype=np.float32)
                continue
            self._report(DamagedFace(r[0], r[3], problem))
            rng = rng or np.random.default_rng()
            noise = rng.standard_normal(vecs.shape[1]).astype(np.float32)
            vecs[n] = noise / np.linalg.norm(noise)
        return ids, vecs

    async def find_images(
        self, *, subject: str | None = None, source_url: str | None = None, sha256: str | None = None
    ) -> list[int]:
        """Ids of images matching a subject, a source link or a content hash."""
        if subject is not None:
            rows = await self._all(
                "SELECT id FROM images WHERE subject = ? UNION SELECT image_id FROM faces WHERE subject = ?",
                (subject, subject),
            )
        elif source_url is not None:
            rows = await self._all("SELECT id FROM images WHERE source_url = ?", (source_url,))
        elif sha256 is not None:
            rows = await self._all("SELECT id FROM images WHERE sha256 = ?", (sha256.lower(),))
        else:
            raise ValueError("nothing to find")
        return sorted(int(r[0]) for r in rows)

    async def subjects_like(self, subject: str, limit: int = 5) -> list[str]:
        """Stored subjects that differ from `subject` only in case (ASCII letters) or in a space, `_` or `-` between
        words: what an operator probably meant when `subject` is not found. Scans the images (an error path only)."""
        pattern = re.sub(r"[\s_\-]", "_", subject.replace("\\", "\\\\").replace("%", "\\%"))
        rows = await self._all(
            "SELECT DISTINCT subject FROM images WHERE subject LIKE ? ESCAPE '\\' LIMIT ?", (pattern, limit)
        )
        return [str(r[0]) for r in rows if r[0] != subject]

    async def expired_images(self, now: str) -> list[int]:
        """Ids of images whose expiry has passed."""
        rows = await self._all("SELECT id FROM images WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))
        return [int(r[0]) for r in rows]

    async def _delete_in_transaction(self, image_ids: Sequence[int]) -> Removal:
        """Delete images and their faces and log the removed face ids (inside the open transaction)."""
        removed_images: list[int] = []
        face_ids: list[int] = []
        for start in range(0, len(image_ids), 500):
            chunk = [int(i) for i in image_ids[start : start + 500]]
            marks = ",".join("?" * len(chunk))
            # Only what is still there: another process may have erased some of them meanwhile.
            removed_images.extend(int(r[0]) for r in await self._all(f"SELECT id FROM images WHERE id IN ({marks})", chunk))
            rows = await self._all(f"SELECT id FROM faces WHERE image_id IN ({marks})", chunk)
            face_ids.extend(int(r[0]) for r in rows)
            await self.conn.execute(f"DELETE FROM faces WHERE image_id IN ({marks})", chunk)
            await self.conn.execute(f"DELETE FROM images WHERE id IN ({marks})", chunk)
        face_ids.sort()
        await self.conn.executemany("INSERT INTO changes(op, face_id) VALUES ('remove', ?)", [(i,) for i in face_ids])
        return Removal(sorted(removed_images), face_ids)

    async def delete_images(
        self, image_ids: Sequence[int], *, actor: str, action: str = "forget", details: dict[str, Any] | None = None
    ) -> Removal:
        """Delete images and their faces (secure_delete zeroes the pages) and append the `action` audit entry,
        in one transaction; the entry's details get "images", "faces" and "image_ids" of what was removed."""
        async with self._transaction(action):
            removal = await self._delete_in_transaction(image_ids)
            await self._audit_in_transaction(
                actor, action, None,
                {**(details or {}), "images": len(removal.image_ids), "faces": len(removal.face_ids),
                 "image_ids": removal.image_ids},
            )
        await self._checkpoint()
        return removal

    async def purge(self, image_ids: Sequence[int], audit_before: str | None, *, actor: str) -> Removal:
        """Erase expired images and the audit entries older than `audit_before` (None: keep them), and append
        the "purge" entry, in one transaction; nothing is written when there was nothing to purge."""
        async with self._transaction("purge"):
            removal = await self._delete_in_transaction(image_ids)
            purged = await self._purge_audit_in_transaction(audit_before) if audit_before else 0
            if removal.image_ids or purged:
                await self._audit_in_transaction(
                    actor, "purge", None,
                    {"images": len(removal.image_ids), "faces": len(removal.face_ids),
                     "image_ids": removal.image_ids, "audit_entries": purged},
                )
        if removal.image_ids:
            await self._checkpoint()
        return Removal(removal.image_ids, removal.face_ids, purged)

    async def _checkpoint(self) -> None:
        # Deleted pages may linger in the WAL file: checkpoint so they are overwritten in place.
        await self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- change log --------------------------------------------------------------------------
    async def changes_since(self, seq: int) -> list[Change]:
        """Change-log entries after `seq`, oldest first (one indexed query: the per-search catch-up check).

        If the first entry returned is not `seq + 1`, the entries in between were pruned.
        """
        rows = await self._all("SELECT seq, op, face_id FROM changes WHERE seq > ? ORDER BY seq", (seq,))
        return [Change(int(r[0]), str(r[1]), int(r[2])) for r in rows]

    async def change_head(self) -> int:
        """The seq of the newest change ever committed (0 for none)."""
        row = await self._one("SELECT seq FROM sqlite_sequence WHERE name = 'changes'")
        return int(row[0]) if row else 0

    async def prune_changes(self, upto: int) -> int:
        """Drop change-log entries up to `upto` (a saved index reflects them), keeping the newest CHANGES_KEPT."""
        async with self._write:
            cur = await self.conn.execute(
                "DELETE FROM changes WHERE seq <= ? AND seq <= (SELECT max(seq) FROM changes) - ?",
                (upto, CHANGES_KEPT),
            )
        return int(cur.rowcount)

    async def vacuum(self) -> None:
        """Rewrite the database file so no free page keeps old data."""
        async with self._write:
            await self.conn.execute("VACUUM")
            await self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def counts(self) -> dict[str, int]:
        """Row counts for stats."""
        q = {
            "images": "SELECT count(*) FROM images",
            "faces": "SELECT count(*) FROM faces",
            "subjects": "SELECT count(DISTINCT subject) FROM faces WHERE subject IS NOT NULL",
            "labelled_faces": "SELECT count(*) FROM faces WHERE subject IS NOT NULL",
            "flagged_faces": "SELECT count(*) FROM faces WHERE quality_ok = 0",
            "users": "SELECT count(*) FROM users",
            "audit_entries": "SELECT count(*) FROM audit",
        }
        out = {}
        for k, sql in q.items():
            out[k] = int((await self._one(sql))[0])
        return out

    # -- users -------------------------------------------------------------------------------
    async def get_user(self, user_id: int) -> User | None:
        """A whitelisted user, or None."""
        row = await self._one(
            "SELECT user_id, role, note, added_by, added_at, active_case FROM users WHERE user_id = ?", (user_id,)
        )
        return User(*row) if row else None

    async def list_users(self) -> list[User]:
        """Every whitelisted user, admins first."""
        rows = await self._all(
            "SELECT user_id, role, note, added_by, added_at, active_case FROM users ORDER BY role, user_id"
        )
        return [User(*r) for r in rows]

    async def put_user(self, user_id: int, role: str, note: str, added_by: str) -> User:
        """Add or update a whitelisted user (keeps the active case), audited as "allow" in the same transaction;
        raises LastAdmin (and changes nothing) when that would demote the only administrator."""
        async with self._transaction("allow"):
            if role != "admin":
                await self._keep_an_admin(user_id)
            await self.conn.execute(
                "INSERT INTO users(user_id, role, note, added_by, added_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(user_id) DO UPDATE SET role = excluded.role, note = excluded.note,"
                " added_by = excluded.added_by",
                (user_id, role, note, added_by, now_iso()),
            )
            await self._audit_in_transaction(added_by, "allow", None, {"user_id": user_id, "role": role, "note": note})
            row = await self._one(
                "SELECT user_id, role, note, added_by, added_at, active_case FROM users WHERE user_id = ?", (user_id,)
            )
        return User(*row)

    async def delete_user(self, user_id: int, *, actor: str) -> None:
        """Remove a user, audited as "revoke" in the same transaction; raises NotFound if they were not there,
        LastAdmin (and changes nothing) if they are the only administrator."""
        async with self._transaction("revoke"):
            await self._keep_an_admin(user_id)
            cur = await self.conn.execute("DELETE FROM users WHERE user_id = ?", (user_id,))
            if cur.rowcount == 0:
                raise NotFound(f"user {user_id} is not on the whitelist")
            await self._audit_in_transaction(actor, "revoke", None, {"user_id": user_id})

    async def _keep_an_admin(self, user_id: int) -> None:
        """Raise LastAdmin when `user_id` is the only admin, inside the open write transaction.

        The check and the change it guards are one BEGIN IMMEDIATE transaction, which holds SQLite's write lock
        from the first read: two admins revoking or demoting each other (or themselves) at the same moment, in
        one process or several, are serialised, and the second sees the first's change. Read, then write in
        separate steps, both would see "another admin is left" and leave none.
        """
        assert self._txn is not None, "the last-admin check runs inside the transaction of the change"
        row = await self._one(
            "SELECT EXISTS(SELECT 1 FROM users WHERE user_id = ? AND role = 'admin')"
            " AND NOT EXISTS(SELECT 1 FROM users WHERE role = 'admin' AND user_id != ?)",
            (user_id, user_id),
        )
        if row is not None and row[0]:
            raise LastAdmin(f"user {user_id} is the only administrator; make another account admin first")

    async def get_language(self, user_id: int) -> str | None:
        """The language a user chose for the bot ("fr"), or None when they never chose one."""
        row = await self._one("SELECT language FROM users WHERE user_id = ?", (user_id,))
        return row[0] if row else None

    async def set_language(self, user_id: int, language: str | None, *, actor: str) -> None:
        """Remember (or forget, with None) a user's language, audited as "language" in the same transaction;
        raises NotFound if they are not whitelisted."""
        async with self._transaction("language"):
            cur = await self.conn.execute("UPDATE users SET language = ? WHERE user_id = ?", (language, user_id))
            if cur.rowcount == 0:
                raise NotFound(f"user {user_id} is not on the whitelist")
            await self._audit_in_transaction(actor, "language", None, {"user_id": user_id, "language": language})

    async def set_active_case(self, user_id: int, case_ref: str | None, *, actor: str) -> None:
        """Set a user's active case reference, audited as "case" in the same transaction; raises NotFound."""
        async with self._transaction("case"):
            cur = await self.conn.execute("UPDATE users SET active_case = ? WHERE user_id = ?", (case_ref, user_id))
            if cur.rowcount == 0:
                raise NotFound(f"user {user_id} is not on the whitelist")
            await self._audit_in_transaction(actor, "case", case_ref, {"user_id": user_id})

    # -- audit -------------------------------------------------------------------------------
    async def append_audit(self, actor: str, action: str, case_ref: str | None, details: dict[str, Any]) -> AuditEntry:
        """Append one hash-chained entry for an event that changes nothing else (a search, a refusal)."""
        async with self._transaction(action):
            entry = await self._audit_in_transaction(actor, action, case_ref, details)
        return entry

    async def audit_entries(
        self,
        *,
        since: str | None = None,
        until: str | None = None,
        actor: str | None = None,
        case_ref: str | None = None,
        action: str | None = None,
        last: int | None = None,
    ) -> list[AuditEntry]:
        """Audit entries matching the filters, oldest first (or the `last` n)."""
        where, args = [], []
        for col, op, val in (("ts", ">=", since), ("ts", "<", until), ("actor", "=", actor),
                             ("case_ref", "=", case_ref), ("action", "=", action)):
            if val is not None:
                where.append(f"{col} {op} ?")
                args.append(val)
        sql = "SELECT seq, ts, actor, action, case_ref, details, prev_hash, hash FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if last is not None:
            rows = await self._all(sql + " ORDER BY seq DESC LIMIT ?", (*args, last))
            rows.reverse()
        else:
            rows = await self._all(sql + " ORDER BY seq", args)
        return [AuditEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7]) for r in rows]

    async def verify_audit(self, head_log: audit.HeadLog | None = None) -> ChainCheck:
        """Walk the whole chain from its anchor; compare its end with the recorded head, and with every
        record of the head file kept outside the database (`head_log`, when given)."""
        anchor = await self.get_meta("audit_anchor") or audit.GENESIS
        anchor_seq = int(await self.get_meta("audit_anchor_seq") or 0)
        rows = await self._all(
            "SELECT seq, ts, actor, action, case_ref, details, prev_hash, hash FROM audit ORDER BY seq"
        )
        check = audit.verify_rows(rows, anchor, anchor_seq)
        if not check.ok:
            return check
        head = await self.get_meta("audit_head")
        head_seq = int(await self.get_meta("audit_head_seq") or anchor_seq)
        last_seq = rows[-1][0] if rows else anchor_seq
        if head is not None and (head != check.head or head_seq != last_seq):
            return ChainCheck(
                False, check.entries, check.head, first_bad_seq=last_seq + 1 if head_seq > last_seq else head_seq,
                problem=f"the log ends at entry {last_seq} but entry {head_seq} was written: entries were removed",
            )
        if head_log is None:
            return check
        since = await self.get_meta("audit_head_log_from")
        try:
            read = head_log.read()
        except OSError as exc:
            return ChainCheck(False, check.entries, check.head, first_bad_seq=int(since or 0),
                              problem=f"the audit head file {head_log.path} cannot be read ({exc.strerror or exc})")
        if read is None or not read[0]:
            if since is None and read is None:
                return check  # never used with this gallery
            return ChainCheck(
                False, check.entries, check.head, first_bad_seq=int(since or 0),
                problem=f"the audit head file {head_log.path} is missing or empty, though heads were recorded "
                f"there from entry {since}: restore it (or point SIGHTLINE_AUDIT_HEAD_FILE at where it was moved)",
            )
        found = audit.check_head_log(read[0], {int(r[0]): str(r[7]) for r in rows}, anchor_seq, last_seq)
        if found:
            return ChainCheck(False, check.entries, check.head, first_bad_seq=found[0],
                              problem=f"{found[1]} ({head_log.path})")
        return check

    async def _purge_audit_in_transaction(self, ts: str) -> int:
        """Delete entries older than `ts` (inside the open transaction), moving the anchor so the chain verifies."""
        row = await self._one("SELECT seq, hash FROM audit WHERE ts < ? ORDER BY seq DESC LIMIT 1", (ts,))
        if not row:
            return 0
        last_seq, last_hash = int(row[0]), str(row[1])
        cur = await self.conn.execute("DELETE FROM audit WHERE seq <= ?", (last_seq,))
        await self.conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('audit_anchor', ?), ('audit_anchor_seq', ?)",
            (last_hash, str(last_seq)),
        )
        return int(cur.rowcount)

    async def purge_audit_before(self, ts: str, *, actor: str = "system") -> int:
        """Delete entries older than `ts`, keeping the chain verifiable, with a "purge" entry in the same transaction."""
        return (await self.purge([], ts, actor=actor)).audit_entries

    # -- label migration ---------------------------------------------------------------------
    async def label_values(self) -> list[tuple[str, str, int, str]]:
        """Every stored label as (table, column, row key, value), for the label migration."""
        out: list[tuple[str, str, int, str]] = []
        for table, column in LABEL_COLUMNS:
            key = "user_id" if table == "users" else "id"
            rows = await self._all(f"SELECT {key}, {column} FROM {table} WHERE {column} IS NOT NULL AND {column} != ''")
            out += [(table, column, int(r[0]), str(r[1])) for r in rows]
        return out

    async def update_labels(self, changes: Sequence[tuple[str, str, int, str | None]], *, actor: str) -> None:
        """Write repaired labels (table, column, key, value) and their "migrate_labels" audit entry in one
        transaction; columns from LABEL_COLUMNS only."""
        async with self._transaction("migrate_labels"):
            for table, column, key, value in changes:
                if (table, column) not in LABEL_COLUMNS:
                    raise ValueError(f"{table}.{column} is not a label column")
                key_col = "user_id" if table == "users" else "id"
                if column in ("source_url", "note") and value is None:
                    value = ""  # NOT NULL columns
                await self.conn.execute(f"UPDATE {table} SET {column} = ? WHERE {key_col} = ?", (value, key))
            await self._audit_in_transaction(
                actor, "migrate_labels", None,
                {"changed": len(changes), "rows": [[table, column, key] for table, column, key, _ in changes]},
            )


def _embedding_blob(embedding: np.ndarray) -> bytes:
    return np.asarray(embedding, dtype=np.float32).tobytes()


async def _migrate(conn: aiosqlite.Connection) -> None:
    """Bring an older database up to SCHEMA_VERSION (idempotent; each step commits on its own)."""
    async with conn.execute("SELECT value FROM meta WHERE key = 'schema_version'") as cur:
        row = await cur.fetchone()
    if row is not None and int(row[0]) >= SCHEMA_VERSION:
        return
    async with conn.execute("PRAGMA table_info(faces)") as cur:
        columns = {str(r[1]) for r in await cur.fetchall()}
    if "emb_crc" not in columns:
        await conn.execute("ALTER TABLE faces ADD COLUMN emb_crc INTEGER")
    # Rows without a checksum get one now, if they still pass the norm check: a row damaged before this
    # migration keeps none and stays reported (engine.integrity.embedding_problem).
    filled = damaged = 0
    last = 0
    while True:
        async with conn.execute(
            "SELECT id, CAST(embedding AS BLOB) FROM faces WHERE emb_crc IS NULL AND id > ? ORDER BY id LIMIT 5000", (last,)
        ) as cur:
            rows = list(await cur.fetchall())
        if not rows:
            break
        last = int(rows[-1][0])
        good = [(integrity.embedding_crc(bytes(r[1])), r[0]) for r in rows
                if integrity.embedding_problem(r[1], None) is None]
        damaged += len(rows) - len(good)
        if good:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                await conn.executemany("UPDATE faces SET emb_crc = ? WHERE id = ?", good)
                await conn.execute("COMMIT")
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            filled += len(good)
    if filled:
        logger.info("database migrated: checksums added to %d stored embeddings", filled)
    if damaged:
        logger.error("%d stored embeddings fail the norm check and got no checksum: `sightline doctor --deep` "
                     "lists them", damaged)
    await conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
