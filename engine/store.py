"""MetadataStore: SQLite through aiosqlite. The source of truth for images, faces, users and the audit log."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
import numpy as np

from . import audit
from .errors import StorageError
from .types import AuditEntry, ChainCheck, User

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
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
    thumbnail   BLOB
);
CREATE INDEX IF NOT EXISTS faces_image ON faces(image_id);
CREATE INDEX IF NOT EXISTS faces_subject ON faces(subject);
CREATE TABLE IF NOT EXISTS users (
    user_id     INTEGER PRIMARY KEY,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'officer')),
    note        TEXT NOT NULL DEFAULT '',
    added_by    TEXT NOT NULL,
    added_at    TEXT NOT NULL,
    active_case TEXT
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
"""


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


class MetadataStore:
    """All SQL lives here. One connection; writes are serialised by a lock."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self._write = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> MetadataStore:
        """Open (creating if needed) the database with WAL, foreign keys and secure_delete on."""
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = None
        try:
            conn = await aiosqlite.connect(str(path), isolation_level=None)
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process kill
            await conn.execute("PRAGMA foreign_keys=ON")
            await conn.execute("PRAGMA secure_delete=ON")  # erased rows are overwritten with zeros
            await conn.execute("PRAGMA busy_timeout=10000")
            await conn.executescript(SCHEMA)
            await conn.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        except (aiosqlite.Error, OSError) as exc:
            if conn is not None:  # its thread would otherwise keep the process alive
                await conn.close()
            raise StorageError(f"cannot open the database {path}: {exc}") from None
        return cls(conn, path)

    async def close(self) -> None:
        """Checkpoint the WAL and close."""
        try:
            await self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            await self.conn.close()

    async def _one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        async with self.conn.execute(sql, args) as cur:
            row = await cur.fetchone()
        return row

    async def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        async with self.conn.execute(sql, args) as cur:
            return list(await cur.fetchall())

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
    ) -> tuple[int, list[int]]:
        """Insert an image and its faces in one transaction; returns the image id and the face ids."""
        async with self._write:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
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
                        " quality_ok, is_primary, subject, embedding, thumbnail)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            image_id, f.number, *f.box, f.det_score, f.width_px, f.blur, f.yaw, f.pitch,
                            int(f.quality_ok), int(f.is_primary), f.subject,
                            np.asarray(f.embedding, dtype=np.float32).tobytes(), f.thumbnail,
                        ),
                    )
                    face_ids.append(int(cur.lastrowid or 0))
                await self.conn.execute("COMMIT")
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
        return image_id, face_ids

    async def faces_by_ids(self, ids: Iterable[int]) -> dict[int, StoredFace]:
        """Faces with their images' metadata and float32 embeddings."""
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = await self._all(
            "SELECT f.id, f.image_id, f.x1, f.y1, f.x2, f.y2, f.quality_ok, f.subject, i.source_url, i.sha256, f.embedding"
            f" FROM faces f JOIN images i ON i.id = f.image_id WHERE f.id IN ({marks})",
            ids,
        )
        return {
            r[0]: StoredFace(
                face_id=r[0], image_id=r[1], box=(r[2], r[3], r[4], r[5]), quality_ok=bool(r[6]), subject=r[7],
                source_url=r[8], image_sha256=r[9], embedding=np.frombuffer(r[10], dtype=np.float32),
            )
            for r in rows
        }

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
                rows = await self._all(f"SELECT id, embedding FROM faces WHERE id IN ({marks})", chunk)
                if rows:
                    yield _ids_vectors(rows)
            return
        last = 0
        while True:
            rows = await self._all("SELECT id, embedding FROM faces WHERE id > ? ORDER BY id LIMIT ?", (last, batch))
            if not rows:
                return
            last = rows[-1][0]
            yield _ids_vectors(rows)

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

    async def expired_images(self, now: str) -> list[int]:
        """Ids of images whose expiry has passed."""
        rows = await self._all("SELECT id FROM images WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))
        return [int(r[0]) for r in rows]

    async def delete_images(self, image_ids: Sequence[int]) -> list[int]:
        """Delete images and their faces (secure_delete zeroes the pages); returns the removed face ids."""
        if not image_ids:
            return []
        async with self._write:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                face_ids: list[int] = []
                for start in range(0, len(image_ids), 500):
                    chunk = list(image_ids[start : start + 500])
                    marks = ",".join("?" * len(chunk))
                    rows = await self._all(f"SELECT id FROM faces WHERE image_id IN ({marks})", chunk)
                    face_ids.extend(int(r[0]) for r in rows)
                    await self.conn.execute(f"DELETE FROM faces WHERE image_id IN ({marks})", chunk)
                    await self.conn.execute(f"DELETE FROM images WHERE id IN ({marks})", chunk)
                await self.conn.execute("COMMIT")
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
        # Deleted pages may linger in the WAL file: checkpoint so they are overwritten in place.
        await self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return sorted(face_ids)

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

    async def put_user(self, user_id: int, role: str, note: str, added_by: str) -> None:
        """Add or update a whitelisted user (keeps the active case)."""
        async with self._write:
            await self.conn.execute(
                "INSERT INTO users(user_id, role, note, added_by, added_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(user_id) DO UPDATE SET role = excluded.role, note = excluded.note,"
                " added_by = excluded.added_by",
                (user_id, role, note, added_by, now_iso()),
            )

    async def delete_user(self, user_id: int) -> bool:
        """Remove a user; False if they were not there."""
        async with self._write:
            cur = await self.conn.execute("DELETE FROM users WHERE user_id = ?", (user_id,))
        return cur.rowcount > 0

    async def set_active_case(self, user_id: int, case_ref: str | None) -> None:
        """Remember a user's active case reference."""
        async with self._write:
            await self.conn.execute("UPDATE users SET active_case = ? WHERE user_id = ?", (case_ref, user_id))

    # -- audit -------------------------------------------------------------------------------
    async def append_audit(self, actor: str, action: str, case_ref: str | None, details: dict[str, Any]) -> AuditEntry:
        """Append one hash-chained entry (atomically with reading the previous hash)."""
        async with self._write:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
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
                await self.conn.execute("COMMIT")
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
        return AuditEntry(seq, ts, actor, action, case_ref, details, prev_hash, digest)

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

    async def verify_audit(self) -> ChainCheck:
        """Walk the whole chain from its anchor; also compare the end with the recorded head."""
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
        return check

    async def purge_audit_before(self, ts: str) -> int:
        """Delete entries older than `ts`, keeping the chain verifiable through the anchor."""
        async with self._write:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                row = await self._one("SELECT seq, hash FROM audit WHERE ts < ? ORDER BY seq DESC LIMIT 1", (ts,))
                if not row:
                    await self.conn.execute("COMMIT")
                    return 0
                last_seq, last_hash = int(row[0]), str(row[1])
                cur = await self.conn.execute("DELETE FROM audit WHERE seq <= ?", (last_seq,))
                await self.conn.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('audit_anchor', ?), ('audit_anchor_seq', ?)",
                    (last_hash, str(last_seq)),
                )
                await self.conn.execute("COMMIT")
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
        return int(cur.rowcount)

    # -- label migration ---------------------------------------------------------------------
    async def label_values(self) -> list[tuple[str, str, int, str]]:
        """Every stored label as (table, column, row key, value), for the label migration."""
        out: list[tuple[str, str, int, str]] = []
        for table, column in LABEL_COLUMNS:
            key = "user_id" if table == "users" else "id"
            rows = await self._all(f"SELECT {key}, {column} FROM {table} WHERE {column} IS NOT NULL AND {column} != ''")
            out += [(table, column, int(r[0]), str(r[1])) for r in rows]
        return out

    async def update_labels(self, changes: Sequence[tuple[str, str, int, str | None]]) -> None:
        """Write repaired labels (table, column, key, value) in one transaction; columns from LABEL_COLUMNS only."""
        async with self._write:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                for table, column, key, value in changes:
                    if (table, column) not in LABEL_COLUMNS:
                        raise ValueError(f"{table}.{column} is not a label column")
                    key_col = "user_id" if table == "users" else "id"
                    if column in ("source_url", "note") and value is None:
                        value = ""  # NOT NULL columns
                    await self.conn.execute(f"UPDATE {table} SET {column} = ? WHERE {key_col} = ?", (value, key))
                await self.conn.execute("COMMIT")
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise


def _ids_vectors(rows: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
    return ids, vecs
