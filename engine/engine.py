"""Engine: open / enroll / search / forget / purge / close, plus users and the audit log."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import numpy as np

from . import audit, codes, fsmodes, labels, projection, scheduling
from . import calibration as calib
from . import index as index_files
from .config import EngineConfig
from .duplicates import group_near_duplicates
from .errors import (
    CaseRequired,
    FaceIndexError,
    IndexUnavailable,
    InvalidArgument,
    NoFaceFound,
    NotFound,
    SeveralFaces,
    StorageError,
    disk_full,
    is_damaged_database,
    is_disk_full,
)
from .faces import EMBEDDING_DIM, FaceModel, RawFace, primary_face, to_original_box
from .hamming import HammingIndex
from .images import Decoded, decode_frames, sha256_hex
from .index import UsearchIndex, VectorIndex
from .integrity import clamp_similarity
from .milvus_index import BINARY_INDEXES, FLOAT_INDEXES, MilvusIndex
from .store import CHANGES_KEPT, FaceRow, MetadataStore, StoredFace, now_iso
from .types import (
    AuditEntry,
    ChainCheck,
    DetectedFace,
    Enrollment,
    Erasure,
    Hit,
    LabelChange,
    Quality,
    SearchResult,
    Stats,
    User,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

ROLES = ("admin", "officer")
MAX_CASE_LEN = labels.MAX_CASE
MAX_USER_ID = 2**63 - 1  # Telegram ids fit in a signed 64-bit integer, as SQLite's INTEGER does


@dataclass(frozen=True, slots=True)
class Analysed:
    """A decoded photo and its detected (aligned, not yet embedded) faces."""

    decoded: Decoded
    faces: list[RawFace]
    detected: tuple[DetectedFace, ...]


def normalize_expiry(value: str | None) -> str | None:
    """An ISO date or datetime as a UTC ISO string; raises InvalidArgument for anything else."""
    if value is None or str(value).strip() == "":
        return None
    try:
        dt = datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise InvalidArgument(f"expires_at {value!r} is not an ISO date such as 2027-01-31") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat(timespec="seconds")


def check_case(case: str | None) -> str | None:
    """A case reference, normalised (NFC, stripped), or None; refuses invisible characters and long ones."""
    return labels.case_ref(case)


class Engine:
    """The face-search service. Build it with `await Engine.open(config)`."""

    def __init__(
        self,
        faces: FaceModel,
        index: VectorIndex,
        store: MetadataStore,
        config: EngineConfig,
        calibration: calib.Calibration | None,
    ) -> None:
        self.faces = faces
        self.index = index
        self.store = store
        self.config = config
        self.calibration = calibration
        # Jobs run oldest request first: a burst of searches is answered in arrival order (engine.scheduling).
        self._executor = scheduling.PriorityExecutor(max(1, config.workers), "sightline")
        self._write = asyncio.Lock()  # index and database change together, one writer at a time
        self._dirty = 0  # index changes not yet saved
        self._seq = 0  # the database change-log seq the in-memory index reflects (see catch_up)
        self.lookups = 0  # index searches this engine made, their total seconds and the last one's ms (stats, /metrics)
        self.lookup_seconds = 0.0
        self.lookup_last_ms: float | None = None
        self.probe_last_ms: float | None = None  # stats' own timed lookup, when no search has given one (not counted)
        if config.threshold_possible is not None:
            self.threshold_possible = config.threshold_possible
        elif calibration is not None:
            self.threshold_possible = calibration.threshold_possible
        else:
            self.threshold_possible = calib.FALLBACK_POSSIBLE
        if config.threshold_strong is not None:
            self.threshold_strong = config.threshold_strong
        elif calibration is not None:
            self.threshold_strong = calibration.threshold_strong
        else:
            self.threshold_strong = calib.FALLBACK_STRONG
        if calibration is None:
            logger.warning(
                "no calibration table for model %s: using thresholds possible=%.3f strong=%.3f, "
                "and no false-match estimates",
                faces.name, self.threshold_possible, self.threshold_strong,
            )

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    async def open(cls, config: EngineConfig, *, create: bool = True) -> Engine:
        """Load the models, open the database, restore (or repair) the index.

        Without `create`, a missing database raises StorageError instead of starting an empty gallery.
        Whatever fails, everything opened so far is closed again (the database connection's thread would
        otherwise keep the process alive at exit); a full disk raises DiskFull naming the data directory.
        """
        store: MetadataStore | None = None
        engine: Engine | None = None
        index: VectorIndex | None = None
        try:
            faces = await asyncio.to_thread(FaceModel, config)
            if create or config.db_path.parent.is_dir():  # biometric data: owner-only, even if made 0755 by hand
                fsmodes.private_data_dir(config.data_dir)
            head_log = audit.HeadLog(config.audit_head_path, config.audit_head_syslog)
            store = await MetadataStore.open(config.db_path, create=create, head_log=head_log)
            index = make_index(config, faces.recognizer_sha256)
            index.gallery_id = store.gallery_id
            if config.index_backend != "embedded" and config.index_path.exists():
                logger.warning("%s is an embedded index from before the switch to %s: it still holds faces, including "
                               "any erased since; `sightline index-migrate --to %s` erases it", config.index_path,
                               config.index_backend, config.index_backend)
            engine = cls(faces, index, store, config, calib.for_model(faces.recognizer_sha256))
            await engine.reconcile_index()
        except BaseException as exc:
            if index is not None:
                index.close()
            if engine is not None:
                engine._executor.shutdown(wait=True, cancel_futures=True)
            if store is not None:
                with contextlib.suppress(Exception):
                    await store.conn.close()
            if is_disk_full(exc, config.data_dir):
                raise disk_full(config.data_dir) from exc
            if is_damaged_database(exc):
                raise StorageError(f"the database {config.db_path} is damaged or unreadable ({exc}): restore a "
                                   "backup (`sightline restore SRC --force`)") from exc
            raise
        return engine

    async def close(self) -> None:
        """Save the index if it changed and close the database; both are closed even when saving fails."""
        try:
            await self.save_index()
        except BaseException as exc:
            if is_disk_full(exc, self.config.data_dir):
                raise disk_full(self.config.data_dir) from exc
            raise
        finally:
            try:
                self.index.close()
                await self.store.close()
            finally:
                self._executor.shutdown(wait=True, cancel_futures=True)

    def _lookup(self, vector: np.ndarray, count: int, *, probe: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """`self.index.search`, timed for stats and /metrics (a worker thread; any backend). A `probe` (stats timing a
        lookup when nothing has searched yet) is timed apart: /metrics counts searches only."""
        started = time.perf_counter()
        try:
            return self.index.search(vector, count)
        finally:
            seconds = time.perf_counter() - started
            if probe:
                self.probe_last_ms = seconds * 1000
            else:
                self.lookups += 1
                self.lookup_seconds += seconds
                self.lookup_last_ms = seconds * 1000

    async def _cpu(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run CPU-bound work on the engine's thread pool, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    # -- index consistency -------------------------------------------------------------------
    # Several processes may change one gallery (the bot, `sightline index`, `sightline forget`). The database
    # is the truth and logs every face added or removed (store.changes) in the change's own transaction. Each
    # engine remembers the log seq its in-memory index reflects and replays what came after it: before every
    # search, before every save, after its own changes. Saves happen under one file lock, after catching up,
    # and record the seq, so a saved file is never older than the database was when it was written. The
    # index's add and remove are idempotent, so replaying a change the index already reflects is harmless.
    # Only add/remove/keys/load/save/stored_state are used: any VectorIndex backend gets the same behaviour.

    async def reconcile_index(self) -> str:
        """Make the index hold exactly the database's faces: load, catch up from the saved seq, else compare
        with the database and repair or rebuild."""
        async with self._write:
            return await self._reconcile_locked()

    async def _reconcile_locked(self) -> str:
        loaded = await asyncio.to_thread(self.index.load)
        saved = self.index.stored_state().get("change_seq") if loaded else None
        # The sidecar's checksum covers the index file, not the sidecar: a seq edited by hand (a bool, a
        # negative or a huge number, one ahead of the database) is not followed; the keys are compared instead.
        if isinstance(saved, int) and not isinstance(saved, bool) and 0 <= saved <= await self.store.change_head():
            self._seq = saved
            if await self._catch_up_locked() and await self._agrees_with_database():
                if self.index.scrubbed <= max(10_000, len(self.index) // 5):
                    logger.info("index loaded at change %d: %d faces, consistent with the database",
                                self._seq, len(self.index))
                    return "ok"
                logger.info("index holds %d scrubbed slots of erased faces: compacting", self.index.scrubbed)
                await self._rebuild_locked()
                return "rebuilt"
            logger.warning("index saved at change %d does not follow the database: comparing keys", saved)
        head = await self.store.change_head()  # whatever is built below reflects at least this change
        count, total = await self.store.face_fingerprint()
        if loaded:
            keys = await asyncio.to_thread(self.index.keys)
            if len(keys) == count and int(keys.sum()) == total:
                self._seq = head
                await self._follow_locked()
                if self.index.scrubbed <= max(10_000, count // 5):
                    logger.info("index loaded: %d faces, consistent with the database", count)
                    await self._save_locked(force=True)  # records the change seq it reflects
                    return "ok"
                logger.info("index holds %d scrubbed slots of erased faces: compacting", self.index.scrubbed)
            else:
                db_ids = await self.store.face_ids()
                extra = np.setdiff1d(keys, db_ids, assume_unique=True)
                missing = np.setdiff1d(db_ids, keys, assume_unique=True)
                if len(extra) == 0 or isinstance(self.index, MilvusIndex):  # Milvus deletes leave no slots behind
                    if len(extra):
                        logger.warning("index holds %d faces the database does not: removing them", len(extra))
                        await self._cpu(self.index.remove, extra)
                    logger.warning("index is missing %d faces the database has: adding them", len(missing))
                    async for ids, vecs in self.store.iter_embeddings(only=missing):
                        await self._cpu(self.index.add, ids, vecs)
                    self._seq = head
                    await self._follow_locked()
                    await self._save_locked(force=True)
                    return f"repaired: added {len(missing)}, removed {len(extra)}"
                logger.warning("index holds %d faces the database does not: rebuilding", len(extra))
        else:
            if count:
                logger.warning("index missing or unreadable: rebuilding %d faces from the database", count)
        await self._rebuild_locked()
        return "rebuilt"

    async def _agrees_with_database(self) -> bool:
        """Whether the index's keys have the database's face count and id sum (compared at one change seq)."""
        for _ in range(5):
            head = await self.store.change_head()
            if head < self._seq:  # saved from a later state of the database than this one (a restore?)
                return False
            if head != self._seq:
                await self._follow_locked()
                continue
            count, total = await self.store.face_fingerprint()
            if await self.store.change_head() != head:  # another process changed the gallery meanwhile
                continue
            keys = await asyncio.to_thread(self.index.keys)
            return len(keys) == count and int(keys.sum()) == total
        return True  # a busy gallery: the log was followed change by change

    async def catch_up(self) -> int:
        """Apply the gallery changes other processes committed since this index was current; returns how many
        log entries were applied. When there are none this is one indexed SQLite query (bench/catchup.py)."""
        if not await self.store.changes_since(self._seq):
            return 0
        async with self._write:
            before = self._seq
            await self._follow_locked()
            return self._seq - before

    async def _follow_locked(self, known: dict[int, np.ndarray] | None = None) -> None:
        """Catch up from the change log, or re-synchronise by keys when the log no longer reaches back."""
        if not await self._catch_up_locked(known):
            await self._resync_locked()

    async def _catch_up_locked(self, known: dict[int, np.ndarray] | None = None) -> bool:
        """Replay the change log after `_seq` onto the index (embeddings from `known` or the database).
        False, with nothing applied, when the entries right after `_seq` were pruned."""
        changes = await self.store.changes_since(self._seq)
        if not changes:
            return True
        if changes[0].seq != self._seq + 1:
            logger.warning("the change log no longer reaches back to change %d", self._seq)
            return False
        last: dict[int, str] = {}
        for c in changes:  # face ids are never reused: the last entry of an id says where it stands
            last[c.face_id] = c.op
        removed = np.asarray(sorted(f for f, op in last.items() if op == "remove"), dtype=np.int64)
        added = sorted(f for f, op in last.items() if op == "add")
        if len(removed):
            await self._cpu(self.index.remove, removed)
        mine = [f for f in added if known is not None and f in known]
        if mine:
            await self._cpu(self.index.add, np.asarray(mine, dtype=np.int64), np.stack([known[f] for f in mine]))  # type: ignore[index]
        theirs = np.asarray([f for f in added if known is None or f not in known], dtype=np.int64)
        # A face erased after this log was read has no embedding any more: its removal comes next time.
        async for ids, vecs in self.store.iter_embeddings(only=theirs):
            await self._cpu(self.index.add, ids, vecs)
        if len(theirs) or len(removed):
            logger.debug("caught up to change %d: %d face(s) added, %d removed by other processes",
                         changes[-1].seq, len(theirs), len(removed))
        self._seq = changes[-1].seq
        self._dirty += len(added) + len(removed)
        return True

    async def _resync_locked(self) -> None:
        """Make the index's keys equal the database's face ids by comparing them (when the log was pruned)."""
        head = await self.store.change_head()
        keys = await asyncio.to_thread(self.index.keys)
        db_ids = await self.store.face_ids()
        extra = np.setdiff1d(keys, db_ids, assume_unique=True)
        missing = np.setdiff1d(db_ids, keys, assume_unique=True)
        logger.warning("re-synchronising the index with the database: %d face(s) to add, %d to remove",
                       len(missing), len(extra))
        if len(extra):
            await self._cpu(self.index.remove, extra)
        async for ids, vecs in self.store.iter_embeddings(only=missing):
            await self._cpu(self.index.add, ids, vecs)
        self._seq = head  # changes after `head` are replayed next time; add/remove are idempotent
        self._dirty += len(extra) + len(missing)

    async def rebuild_index(self, progress: Callable[[int], None] | None = None) -> int:
        """Build a fresh index from the database's embeddings and save it over the old one."""
        async with self._write:
            return await self._rebuild_locked(progress)

    async def _rebuild_locked(self, progress: Callable[[int], None] | None = None) -> int:
        fresh = make_index(self.config, self.faces.recognizer_sha256)
        fresh.gallery_id = self.store.gallery_id
        if isinstance(fresh, MilvusIndex):  # the collection is dropped and created empty
            await asyncio.to_thread(fresh.reset)
        head = await self.store.change_head()  # the rebuild reflects at least every change up to here
        total, _ = await self.store.face_fingerprint()
        logger.info("building the %s index from the database's %d faces", type(fresh).__name__, total)
        n = 0
        started = last_log = time.monotonic()
        async for ids, vecs in self.store.iter_embeddings():
            await self._cpu(fresh.add, ids, vecs)
            n += len(ids)
            if progress:
                progress(len(ids))
            now = time.monotonic()
            if now - last_log >= 10 and n < total:  # a 1 M-face rebuild takes a minute (hamming) or many (usearch)
                rate = n / (now - started)
                logger.info("rebuilding the %s index: %d of %d faces (%.0f%%), about %.0f s left",
                            backend_of(fresh), n, total, 100 * n / total, (total - n) / rate)
                last_log = now
        old, self.index = self.index, fresh
        if isinstance(old, HammingIndex):  # zero its arrays: freed memory keeps its bytes otherwise
            old.reset()
            old.close()
        elif isinstance(old, MilvusIndex):  # its connection (the collection is the new one's)
            old.close()
        self._seq = head
        await self._save_locked(force=True)
        logger.info("%s index rebuilt: %d faces in %.0f s", backend_of(fresh), n, time.monotonic() - started)
        return n

    async def save_index(self) -> bool:
        """Catch up with the database and save the index, unless the saved file already reflects as much;
        returns whether it wrote the file."""
        async with self._write:
            return await self._save_locked()

    async def _save_locked(self, force: bool = False) -> bool:
        """Save under the cross-process save lock, after catching up: the file on disk then never goes back
        to an older state of the gallery (and never regains an erased face's vector)."""
        fd = await asyncio.to_thread(index_files.acquire_save_lock, self.config.index_path)
        try:
            await self._follow_locked()
            stored = self.index.stored_state()
            same_shape = stored.get("projection") == self.index.projection_key and stored.get("ndim") == self.index.ndim
            if isinstance(self.index, HammingIndex):  # and the same kind of file, made with the same code model
                same_shape = same_shape and stored.get("codes") == self.index.code_model.key
            if not force and same_shape and stored.get("change_seq") == self._seq:
                # Another process saved this very state (or nothing changed): leave the file alone.
                await asyncio.to_thread(index_files.remove_stale_temporaries, self.config.index_path)
                self._dirty = 0
                return False
            await asyncio.to_thread(self.index.save, {"change_seq": self._seq})
            self._dirty = 0
        finally:
            index_files.release_save_lock(fd)
        if self._seq > CHANGES_KEPT:
            await self.store.prune_changes(self._seq)
        return True

    # -- images ------------------------------------------------------------------------------
    def _analyse_sync(self, data: bytes, small_faces: bool = False) -> Analysed:
        c = self.config
        frames = decode_frames(data, max_bytes=c.max_image_bytes, max_pixels=c.max_image_pixels, max_side=c.max_side)
        # Queries (small_faces) also get the low-confidence retry when nothing is found; enrolment does not.
        found = self.faces.find_faces([f.bgr for f in frames], small_faces, retry=small_faces)  # first frame with a face, upright
        decoded = replace(frames[found.index], bgr=found.bgr, rotation=found.rotation)
        return Analysed(decoded, found.faces, self._detected(decoded, found.faces))

    def _detected(self, d: Decoded, faces: list[RawFace]) -> tuple[DetectedFace, ...]:
        if not faces:
            return ()
        boxes = np.stack([f.box for f in faces])
        h, w = d.bgr.shape[:2]
        primary = primary_face(boxes, w, h, self.config.primary_rule)
        return tuple(
            DetectedFace(
                number=i + 1,
                box=to_original_box(f.box, d.scale, d.rotation, (w, h)),
                det_score=round(f.score, 4),
                quality=self.faces.quality(f, d.scale),
                primary=(i == primary),
            )
            for i, f in enumerate(faces)
        )

    @scheduling.as_request
    async def detect(self, image: bytes) -> tuple[DetectedFace, ...]:
        """Every face in a photo (numbered left to right), without searching. Raises NoFaceFound."""
        analysed = await self._cpu(self._analyse_sync, image, True)
        faces = analysed.detected
        if not faces:
            raise NoFaceFound("no face was found in the photo")
        return faces

    def _expiry(self, expires_at: str | None) -> str | None:
        if expires_at is not None:
            return normalize_expiry(expires_at)
        if self.config.default_retention_days:
            when = datetime.now(UTC) + timedelta(days=self.config.default_retention_days)
            return when.isoformat(timespec="seconds")
        return None

    def _prepare_enrollment(self, data: bytes, subject: str | None) -> tuple[Decoded, list[FaceRow]]:
        analysed = self._analyse_sync(data)
        if not analysed.faces:
            raise NoFaceFound("no face was found in the image")
        detected = analysed.detected
        embedded = self.faces.embed(analysed.faces)
        rows = []
        for raw, det in zip(embedded, detected, strict=True):
            assert raw.embedding is not None
            rows.append(
                FaceRow(
                    number=det.number, box=det.box, det_score=det.det_score, width_px=det.quality.width_px,
                    blur=det.quality.blur, yaw=det.quality.yaw, pitch=det.quality.pitch,
                    quality_ok=det.quality.ok, is_primary=det.primary,
                    subject=subject if det.primary else None,
                    embedding=raw.embedding, thumbnail=self.faces.thumbnail(analysed.decoded.bgr, raw.box),
                )
            )
        return analysed.decoded, rows

    @scheduling.as_request
    async def enroll(
        self,
        image: bytes,
        *,
        source_url: str,
        subject: str | None = None,
        expires_at: str | None = None,
        notes: str | None = None,
        actor: str = "cli",
        save: bool = True,
    ) -> Enrollment:
        """Add an image to the gallery: every face is indexed, the subject goes to its primary face.

        Labels are checked first (engine.labels): raises InvalidArgument for a bad subject, link or note.
        The image, its faces and its "enroll" audit entry commit in one transaction. With save=False the
        index file is written later (save_index; the database keeps every committed face meanwhile).
        """
        source_url, subject, notes = labels.source_link(source_url), labels.subject(subject), labels.notes(notes)
        expiry = self._expiry(expires_at)
        sha = sha256_hex(image)
        existing = await self.store.image_id_by_sha(sha)
        if existing is not None:
            return Enrollment(existing, sha, 0, subject, duplicate=True)
        decoded, rows = await self._cpu(self._prepare_enrollment, image, subject)
        copy_of = await self._near_duplicate_of(rows)
        async with self._write:
            existing = await self.store.image_id_by_sha(sha)  # a concurrent enroll of the same bytes
            if existing is not None:
                return Enrollment(existing, sha, 0, subject, duplicate=True)
            try:
                image_id, face_ids = await self.store.add_image(
                    sha256=sha, source_url=source_url, subject=subject, added_by=actor, expires_at=expiry,
                    notes=notes, size=decoded.original_size, faces=rows,
                    audit_extra={**({"frame": decoded.frame} if decoded.frames > 1 else {}),
                                 **({"rotation": decoded.rotation} if decoded.rotation else {}),
                                 **({"near_duplicate_of": copy_of} if copy_of is not None else {})},
                )
            except sqlite3.IntegrityError:  # another process committed the same bytes since the check above
                existing = await self.store.image_id_by_sha(sha)
                if existing is None:
                    raise
                return Enrollment(existing, sha, 0, subject, duplicate=True)
            # The log has our faces (and whatever other processes committed before): replay it.
            try:
                await self._follow_locked(known={f: r.embedding for f, r in zip(face_ids, rows, strict=True)})
                if save:
                    await self._save_locked()
            except IndexUnavailable as exc:  # the image is in the gallery; the log hands it to the index later
                logger.error("image %d is in the gallery but not yet in the index (added on the next catch-up): %s",
                             image_id, exc)
        return Enrollment(image_id, sha, len(rows), subject, duplicate=False, frame=decoded.frame, frames=decoded.frames,
                          rotation=decoded.rotation, near_duplicate_of=copy_of)

    async def _near_duplicate_of(self, rows: list[FaceRow]) -> int | None:
        """The gallery image whose face is a near-identical copy of this image's primary face, if any."""
        primary = next((r for r in rows if r.is_primary), None)
        size = await asyncio.to_thread(len, self.index)  # Milvus: a call to the server
        if primary is None or size == 0:
            return None
        keys, _ = await self._cpu(self._lookup, primary.embedding, min(5, size))
        found = (await self.store.faces_by_ids(keys.tolist())).values()
        sims = [(float(np.dot(f.embedding, primary.embedding)), f.image_id) for f in found]
        best = max(sims, default=None)
        return best[1] if best is not None and best[0] >= self.config.near_duplicate_similarity else None

    # -- search ------------------------------------------------------------------------------
    @scheduling.as_request
    async def search(
        self,
        image: bytes,
        *,
        actor: str,
        case: str | None = None,
        top: int = 5,
        face: int | None = None,
        threshold: float | None = None,
        several: str = "primary",
        language: str | None = None,
    ) -> SearchResult:
        """Search the gallery for one face of a photo; "no match" is an ordinary, empty result.

        With several faces and no `face` given, `several="primary"` searches the primary face and
        `several="ask"` raises SeveralFaces (carrying the detected faces) so the caller can let a person
        choose; nothing is searched then, and the analysis is audited (action "detect"). `language` (the
        front-end's, e.g. "fr") is recorded in those entries as "lang", so an auditor knows in which
        language the answer was given.

        The photo is processed in memory only: it is never written to disk, the log or the audit
        (which records its SHA-256).
        """
        case = check_case(case)
        if case is None and self.config.require_case:
            raise CaseRequired("a case reference is required for every search")
        if top < 1 or top > 100:
            raise InvalidArgument("top must be between 1 and 100")
        t0 = time.perf_counter()
        sha = sha256_hex(image)
        lang = {"lang": language} if language else {}
        try:
            detected, chosen, vec, thumb, where = await self._cpu(self._query_sync, image, face, several)
        except NoFaceFound:
            await self.store.append_audit(actor, "search", case, {"query_sha256": sha, "faces": 0, "hits": [], **lang})
            raise
        except SeveralFaces as exc:  # the photo was analysed: on record, though no face was searched yet
            await self.store.append_audit(actor, "detect", case, {"query_sha256": sha, "faces": len(exc.faces), **lang})
            raise
        cut = self.threshold_possible if threshold is None else threshold
        await self.catch_up()  # faces other processes added or erased since the last search
        probe_ok, second_look = detected[chosen - 1].quality.ok, detected[chosen - 1].quality.second_look
        gallery = await asyncio.to_thread(len, self.index)  # Milvus: a call to the server (cached for a second)
        hits = await self._hits(vec, top, cut, gallery, probe_ok, quality_aware=threshold is None, second_look=second_look)
        result = SearchResult(
            query_sha256=sha, faces=detected, searched=chosen, hits=tuple(hits), gallery_faces=gallery,
            threshold=cut, calibrated=self.calibration is not None, query_thumbnail=thumb,
            frame=where.frame, frames=where.frames, rotation=where.rotation,
            strong_threshold_set=self.config.threshold_strong is not None,
        )
        entry = await self.store.append_audit(
            actor, "search", case,
            {
                "query_sha256": sha, "faces": len(detected), "face": chosen,
                **({"frame": where.frame} if where.frames > 1 else {}), **({"rotation": where.rotation} if where.rotation else {}),
                "hits": [[h.face_id, round(h.similarity, 4)] for h in hits],
                "ms": round((time.perf_counter() - t0) * 1000, 1),
                **lang,
            },
        )
        logger.info("search by %s case=%s: %d face(s), %d hit(s)", actor, case, len(detected), len(hits))
        return _with_audit(result, entry.seq)

    def _query_sync(
        self, image: bytes, face: int | None, several: str
    ) -> tuple[tuple[DetectedFace, ...], int, np.ndarray, bytes, Decoded]:
        """Decode, detect, choose a face and embed it (one hop to the worker pool): the faces, the
        chosen face's number, its embedding, its thumbnail and the analysed frame (which one, how turned)."""
        analysed = self._analyse_sync(image, small_faces=True)
        detected = analysed.detected
        if not detected:
            raise NoFaceFound("no face was found in the photo")
        if face is None and several == "ask" and len(detected) > 1:
            raise SeveralFaces(detected)
        if face is None:
            chosen = next(d.number for d in detected if d.primary)
        elif 1 <= face <= len(detected):
            chosen = face
        else:
            raise FaceIndexError(f"the photo has {len(detected)} face(s); there is no face {face}")
        raw = analysed.faces[chosen - 1]
        emb = self.faces.embed([raw])[0].embedding
        assert emb is not None
        return detected, chosen, emb, self.faces.thumbnail(analysed.decoded.bgr, raw.box), analysed.decoded

    @scheduling.as_request
    async def query_embedding(self, image: bytes, face: int | None = None) -> np.ndarray:
        """The embedding `search` compares with the gallery for a photo's face (the primary one by
        default), by the very same steps; for evaluation. Raises NoFaceFound, FaceIndexError."""
        _, _, vec, _, _ = await self._cpu(self._query_sync, image, face, "primary")
        return vec

    async def query_face(self, image: bytes, face: int | None = None) -> tuple[np.ndarray, Quality]:
        """`query_embedding` and the searched face's quality (for calibration by quality class)."""
        detected, chosen, vec, _, _ = await self._cpu(self._query_sync, image, face, "primary")
        return vec, detected[chosen - 1].quality

    def band_thresholds(self, probe_ok: bool | None, gallery_ok: bool | None, second_look: bool = False) -> tuple[float, float]:
        """(possible, strong) for a comparison of a probe face and a gallery face of these qualities.

        With a calibration that has quality-class tables (`sightline calibrate`), a poor comparison must
        score higher to reach the same false-match rate (engine/calibration.py, QUALITY_PAIRS), and a probe
        found only by the detector's second look (`second_look`) has a class of its own (SECOND_LOOK);
        configured thresholds (SIGHTLINE_THRESHOLD_*) apply to every class as they are.
        """
        possible, strong = self.threshold_possible, self.threshold_strong
        if self.calibration is not None:
            p_cls, s_cls = self.calibration.thresholds(probe_ok, gallery_ok, second_look)
            if self.config.threshold_possible is None:
                possible = p_cls
            if self.config.threshold_strong is None:
                strong = s_cls
        return possible, strong

    async def _hits(
        self, vec: np.ndarray, top: int, cut: float, gallery: int, probe_ok: bool | None = None, *,
        quality_aware: bool = False, second_look: bool = False,
    ) -> list[Hit]:
        """Hits at or above `cut` (or, `quality_aware`, at or above each comparison's own "possible"
        threshold, which is never below `cut`), best first, one per gallery image."""
        # Over-fetch from the approximate index, then re-score exactly with the stored float32 embeddings.
        # Ids the database no longer has (erased meanwhile, or unknown to it) are dropped here.
        # A Milvus collection of sign codes ranks coarsely: at least its `candidates` are re-scored (engine.milvus_index).
        floor = self.index.candidates if isinstance(self.index, MilvusIndex) else 0
        want = min(max(top * 4, 40, floor), max(gallery, 1))
        keys, _approx = await self._cpu(self._lookup, vec, want)  # bounded: queue, do not thrash
        rows = await self.store.faces_by_ids(keys.tolist())
        # faces_by_ids leaves out damaged rows; the clamp keeps float rounding from showing 100.01 %.
        scored = sorted(
            ((clamp_similarity(float(np.dot(r.embedding, vec))), r) for r in rows.values()),
            key=lambda t: t[0], reverse=True,
        )
        hits: list[Hit] = []
        seen_images: set[int] = set()
        best: list[tuple[float, StoredFace]] = []
        for sim, r in scored:
            if sim < cut:
                break
            possible, strong_at = self.band_thresholds(probe_ok, r.quality_ok, second_look)
            if quality_aware and sim < possible:  # a poor comparison below its own class's threshold
                continue
            if r.image_id in seen_images:  # one hit per gallery image: its best face
                continue
            seen_images.add(r.image_id)
            best.append((sim, r))
        # Crops and re-encodes of one photo are one hit, so the answer shows distinct photos.
        near = self.config.near_duplicate_similarity
        groups = group_near_duplicates(np.stack([r.embedding for _, r in best]), near) if best else []
        for group in groups[:top]:
            sim, r = best[group[0]]
            _possible, strong_at = self.band_thresholds(probe_ok, r.quality_ok, second_look)
            strong = sim >= strong_at and r.quality_ok
            fmr = self.calibration.false_match_rate(sim, probe_ok, r.quality_ok, second_look) if self.calibration else None
            hits.append(
                Hit(
                    rank=len(hits) + 1, face_id=r.face_id, image_id=r.image_id, similarity=round(sim, 4),
                    band="strong" if strong else "possible", subject=r.subject, source_url=r.source_url,
                    image_sha256=r.image_sha256, box=r.box, low_quality=not r.quality_ok,
                    false_match_rate=fmr, strangers_expected=None if fmr is None else fmr * gallery,
                    near_duplicates=tuple(best[i][1].face_id for i in group[1:]),
                    false_match_rate_below=(self.calibration.rate_below(sim, probe_ok, r.quality_ok, second_look)
                                            if self.calibration else None),
                )
            )
        return hits

    async def thumbnail(self, face_id: int) -> bytes | None:
        """The stored thumbnail of a gallery face."""
        return await self.store.thumbnail(face_id)

    # -- erasure and retention ---------------------------------------------------------------
    async def images_to_forget(
        self, *, subject: str | None = None, source_url: str | None = None, sha256: str | None = None
    ) -> tuple[int, ...]:
        """Ids of the images `forget` with these arguments would erase (nothing changes): what to confirm first.

        Raises InvalidArgument unless exactly one is given, NotFound (with the stored subject it was perhaps meant
        to be) when nothing matches."""
        # However the name was typed (NFD from macOS, spaces around it), it is looked up as it is stored.
        subject, source_url, sha256 = (labels.normalize(v) if isinstance(v, str) else v for v in (subject, source_url, sha256))
        given = [v for v in (subject, source_url, sha256) if v]
        if len(given) != 1:
            raise InvalidArgument("say exactly one of: subject, source link, image SHA-256")
        image_ids = await self.store.find_images(subject=subject or None, source_url=source_url or None,
                                                 sha256=sha256 or None)
        if not image_ids:
            what = "subject" if subject else "source link" if source_url else "image"
            near = await self.store.subjects_like(subject) if subject else []
            hint = f"; did you mean {' or '.join(map(repr, near))}? (a subject is matched exactly)" if near else ""
            raise NotFound(f"no {what} {given[0]!r} in the gallery{hint}")
        return tuple(image_ids)

    async def forget(
        self, *, subject: str | None = None, source_url: str | None = None, sha256: str | None = None,
        actor: str = "cli",
    ) -> Erasure:
        """Remove images (and all their faces) by subject, source link or content hash, for good."""
        image_ids = await self.images_to_forget(subject=subject, source_url=source_url, sha256=sha256)
        subject, source_url, sha256 = (labels.normalize(v) if isinstance(v, str) else v for v in (subject, source_url, sha256))
        given = [v for v in (subject, source_url, sha256) if v]
        by = "subject" if subject else "source_url" if source_url else "sha256"
        async with self._write:
            removal = await self.store.delete_images(
                image_ids, actor=actor, action="forget", details={"by": by, "value": given[0]}
            )
            await self._after_erasure_locked()
        return Erasure(images=len(removal.image_ids), faces=len(removal.face_ids), image_ids=tuple(removal.image_ids))

    async def _after_erasure_locked(self) -> None:
        """Remove the erased faces from the index (overwriting their slots) and save it under the lock: when
        this returns, the index file holds none of their vectors, whatever other processes do next."""
        try:
            await self._follow_locked()
            await self._save_locked()
        except IndexUnavailable as exc:
            # Gone from the database (so from every answer); the change log keeps the removal for the next
            # catch-up of this or any other process, and start-up reconciliation removes what is left.
            logger.error("erased faces are gone from the database but not yet from the index: %s", exc)

    async def purge_expired(self, actor: str = "system") -> Erasure:
        """Erase every image whose expiry has passed, and audit entries past their retention (one transaction,
        with its "purge" audit entry)."""
        image_ids = await self.store.expired_images(now_iso())
        cutoff = None
        if self.config.audit_retention_days:
            cutoff = (datetime.now(UTC) - timedelta(days=self.config.audit_retention_days)).isoformat(timespec="seconds")
        if not image_ids and cutoff is None:
            return Erasure(0, 0, ())
        async with self._write:
            removal = await self.store.purge(image_ids, cutoff, actor=actor)
            if removal.face_ids:
                await self._after_erasure_locked()
        return Erasure(images=len(removal.image_ids), faces=len(removal.face_ids), image_ids=tuple(removal.image_ids))

    async def normalize_labels(self, *, apply: bool = True, actor: str = "cli") -> list[LabelChange]:
        """Bring stored labels to what enrolment accepts today (NFC, one line, no invisible characters).

        Returns every value that differs or is still invalid (`problem`: too long, a bad link: a person must
        fix it); with `apply`, writes the repairs in one transaction and audits them.
        """
        changes: list[LabelChange] = []
        checks = {"subject": labels.subject, "source_url": labels.source_link, "notes": labels.notes,
                  "note": labels.user_note, "active_case": labels.case_ref}
        for table, column, key, value in await self.store.label_values():
            new = labels.repair(value)
            try:
                checks[column](new)
                problem = None
            except InvalidArgument as exc:
                problem = str(exc)
            if new != value or problem:
                changes.append(LabelChange(table, column, key, value, new, problem))
        todo = [c for c in changes if c.new != c.old]
        if apply and todo:
            async with self._write:
                await self.store.update_labels([(c.table, c.column, c.key, c.new or None) for c in todo], actor=actor)
        return changes

    # -- users -------------------------------------------------------------------------------
    async def user(self, user_id: int) -> User | None:
        """A whitelisted user or None."""
        return await self.store.get_user(user_id)

    async def users(self) -> list[User]:
        """Every whitelisted user."""
        return await self.store.list_users()

    async def allow(self, user_id: int, role: str = "officer", note: str = "", *, actor: str) -> User:
        """Whitelist a user (or change their role); raises InvalidArgument for a bad role or id, LastAdmin when
        that would demote the only administrator (checked in the transaction of the change)."""
        note = labels.user_note(note)
        if role not in ROLES:
            raise InvalidArgument(f"role must be one of {', '.join(ROLES)}")
        if not 0 < user_id <= MAX_USER_ID:
            raise InvalidArgument("a Telegram user id is a positive number below 2^63")
        return await self.store.put_user(user_id, role, note, actor)  # checked and audited in the same transaction

    async def revoke(self, user_id: int, *, actor: str) -> None:
        """Remove a user from the whitelist; raises NotFound if they were not on it, LastAdmin if they are the
        only administrator (checked in the transaction of the change, so two admins revoking each other at once
        leave one)."""
        if not 0 < user_id <= MAX_USER_ID:  # SQLite cannot even look it up (OverflowError)
            raise NotFound(f"user {user_id} is not on the whitelist")
        await self.store.delete_user(user_id, actor=actor)  # checked and audited in the same transaction

    async def set_case(self, user_id: int, case: str | None, *, actor: str) -> str | None:
        """Set (or clear, with None) a user's active case reference."""
        case = check_case(case)
        await self.store.set_active_case(user_id, case, actor=actor)  # audited in the same transaction
        return case

    async def language(self, user_id: int) -> str | None:
        """The language a user chose for the front-end ("fr"), or None."""
        return await self.store.get_language(user_id)

    async def set_language(self, user_id: int, language: str | None, *, actor: str) -> None:
        """Remember a user's language (None forgets it); audited. Raises NotFound for a user not whitelisted."""
        if language is not None and not (language.isascii() and language.isalpha() and 2 <= len(language) <= 8):
            raise InvalidArgument("a language is a code such as fr, nl or de")
        await self.store.set_language(user_id, language, actor=actor)  # audited in the same transaction

    # -- audit -------------------------------------------------------------------------------
    async def record(self, actor: str, action: str, case: str | None = None, **details: Any) -> AuditEntry:
        """Append an audit entry for something the front-end did (a refusal, an admin command)."""
        return await self.store.append_audit(labels.scrub(actor), action, labels.scrub(case), labels.scrub(details))

    async def audit_tail(self, n: int = 10) -> list[AuditEntry]:
        """The last n audit entries."""
        return await self.store.audit_entries(last=n)

    async def audit_verify(self) -> ChainCheck:
        """Verify the whole hash chain, and that it agrees with the head file kept outside the database."""
        return await self.store.verify_audit(self.store.head_log)

    # -- stats -------------------------------------------------------------------------------
    async def stats(self) -> Stats:
        """Counts and sizes."""
        await self.catch_up()  # the index's size as of the database's latest change
        c = await self.store.counts()
        db = self.config.db_path
        db_bytes = sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists())
        index = self.index
        ef, memory = await asyncio.to_thread(lambda: (index.ef, index.memory_bytes()))
        if self.lookup_last_ms is None and self.probe_last_ms is None and c["faces"]:  # probes, so that the latency is
            probe = np.zeros(EMBEDDING_DIM, dtype=np.float32)  # known: the second one's, as a process's first also loads
            probe[0] = 1.0  # the scan kernels (numba) and pages: `sightline stats` showed 700 ms for a 1.4 ms lookup
            for _ in range(2):
                await self._cpu(self._lookup, probe, 10, probe=True)
        return Stats(
            images=c["images"], faces=c["faces"], subjects=c["subjects"], labelled_faces=c["labelled_faces"],
            flagged_faces=c["flagged_faces"], users=c["users"], audit_entries=c["audit_entries"],
            db_bytes=db_bytes, index_bytes=self.index.file_bytes(), model=self.faces.name,
            index_dims=self.index.ndim, index_ef=ef, index_memory_bytes=memory,
            index_backend=backend_of(index), index_kind=kind_of(index),
            index_where=index.where if isinstance(index, MilvusIndex) else str(self.config.index_path),
            index_latency_ms=self.lookup_last_ms if self.lookup_last_ms is not None else self.probe_last_ms,
        )


def make_index(config: EngineConfig, model_sha256: str) -> UsearchIndex | HammingIndex | MilvusIndex:
    """An empty, unloaded index of the configured backend (embedded: of the configured kind) for a recognition
    model (its shipped projection and code model). Raises InvalidArgument for an unknown backend or kind."""
    proj = projection.for_model(model_sha256, config.index_dims)
    if config.index_backend == "milvus":
        if config.milvus_index not in FLOAT_INDEXES + BINARY_INDEXES:
            raise InvalidArgument(f"milvus_index must be one of {', '.join(FLOAT_INDEXES + BINARY_INDEXES)}, "
                                  f"not {config.milvus_index!r}")
        return MilvusIndex(config.milvus_uri, config.milvus_collection, config.milvus_token,
                           connectivity=config.index_connectivity, expansion_add=config.index_expansion_add,
                           expansion_search=config.index_expansion_search, projection=proj,
                           timeout=config.milvus_timeout, index_type=config.milvus_index,
                           code_model=codes.for_model(model_sha256).body() if config.milvus_index.startswith("BIN") else None)
    if config.index_backend != "embedded":
        raise InvalidArgument(f"index_backend must be embedded or milvus, not {config.index_backend!r}")
    if config.index_kind == "usearch":
        return UsearchIndex(
            config.index_path,
            dtype=config.index_dtype,
            connectivity=config.index_connectivity,
            expansion_add=config.index_expansion_add,
            expansion_search=config.index_expansion_search,
            projection=proj,
        )
    if config.index_kind != "hamming":
        raise InvalidArgument(f"index_kind must be hamming or usearch, not {config.index_kind!r}")
    return HammingIndex(config.index_path, code_model=codes.for_model(model_sha256), projection=proj,
                        candidates=config.index_candidates, threads=config.index_scan_threads)


def backend_of(index: VectorIndex) -> str:
    """Where an index lives: "milvus" (a collection on a server) or "embedded" (in this process, a file in data_dir)."""
    return "milvus" if isinstance(index, MilvusIndex) else "embedded"


def kind_of(index: VectorIndex) -> str:
    """What an index is: hamming, usearch, or the Milvus collection's index type (e.g. milvus HNSW)."""
    if isinstance(index, MilvusIndex):
        return f"milvus {index.index_type}"
    return "hamming" if isinstance(index, HammingIndex) else "usearch"


def _with_audit(result: SearchResult, seq: int) -> SearchResult:
    from dataclasses import replace

    return replace(result, audit_id=seq)
