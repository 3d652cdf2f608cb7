"""Engine: open / enroll / search / forget / purge / close, plus users and the audit log."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import numpy as np

from . import audit, projection
from . import calibration as calib
from .config import EngineConfig
from .errors import (
    CaseRequired,
    FaceIndexError,
    IndexUnavailable,
    InvalidArgument,
    LastAdmin,
    NoFaceFound,
    NotFound,
    SeveralFaces,
    StorageError,
    disk_full,
    is_damaged_database,
    is_disk_full,
)
from .faces import EMBEDDING_DIM, FaceModel, RawFace, primary_face, to_original_box
from .images import Decoded, decode, sha256_hex
from .index import VectorIndex, open_index
from .integrity import clamp_similarity
from .store import FaceRow, MetadataStore, now_iso
from .types import (
    AuditEntry,
    ChainCheck,
    DetectedFace,
    Enrollment,
    Erasure,
    Hit,
    SearchResult,
    Stats,
    User,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

ROLES = ("admin", "officer")
MAX_CASE_LEN = 64


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
    """A case reference, stripped, or None; refuses control characters and very long ones."""
    if case is None:
        return None
    case = case.strip()
    if not case:
        return None
    if len(case) > MAX_CASE_LEN or any(ord(ch) < 32 for ch in case):
        raise InvalidArgument(f"a case reference is up to {MAX_CASE_LEN} printable characters")
    return case


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
        self._executor = ThreadPoolExecutor(max_workers=max(1, config.workers), thread_name_prefix="sightline")
        self._write = asyncio.Lock()  # index and database change together, one writer at a time
        self._dirty = 0  # index changes not yet saved
        self._unremoved: set[int] = set()  # erased face ids the index server could not delete yet (retried)
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
            head_log = audit.HeadLog(config.audit_head_path, config.audit_head_syslog)
            store = await MetadataStore.open(config.db_path, create=create, head_log=head_log)
            index = open_index(config, projection.for_model(faces.recognizer_sha256, config.index_dims))
            index.gallery_id = store.gallery_id
            if config.index_backend != "usearch" and config.index_path.exists():
                logger.warning("%s is a usearch index from before the switch to %s: it still holds faces, including "
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

    async def _cpu(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run CPU-bound work on the engine's thread pool, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    # -- index consistency -------------------------------------------------------------------
    async def reconcile_index(self) -> str:
        """Make the index hold exactly the database's faces: load, compare, then repair or rebuild."""
        loaded = await asyncio.to_thread(self.index.load)
        count, total = await self.store.face_fingerprint()
        if loaded:
            keys = await asyncio.to_thread(self.index.keys)
            if len(keys) == count and int(keys.sum()) == total:
                if self.index.scrubbed <= max(10_000, count // 5):
                    logger.info("index loaded: %d faces, consistent with the database", count)
                    return "ok"
                logger.info("index holds %d scrubbed slots of erased faces: compacting", self.index.scrubbed)
            db_ids = await self.store.face_ids()
            extra = np.setdiff1d(keys, db_ids, assume_unique=True)
            missing = np.setdiff1d(db_ids, keys, assume_unique=True)
            if len(extra) == 0 or self.index.backend == "milvus":  # Milvus deletes without leaving slots behind
                if len(extra):
                    logger.warning("index holds %d faces the database does not: removing them", len(extra))
                    await self._cpu(self.index.remove, extra)
                logger.warning("index is missing %d faces the database has: adding them", len(missing))
                async for ids, vecs in self.store.iter_embeddings(only=missing):
                    await self._cpu(self.index.add, ids, vecs)
                await asyncio.to_thread(self.index.save)
                return f"repaired: added {len(missing)}, removed {len(extra)}"
            logger.warning("index holds %d faces the database does not: rebuilding", len(extra))
        else:
            if count:
                logger.warning("index missing or unreadable: rebuilding %d faces from the database", count)
        await self.rebuild_index()
        return "rebuilt"

    async def rebuild_index(self, progress: Callable[[int], None] | None = None) -> int:
        """Build a fresh index from the database's embeddings and save it over the old one."""
        fresh = await asyncio.to_thread(self.index.fresh)  # Milvus: the collection is dropped and created empty
        total, _ = await self.store.face_fingerprint()
        n = 0
        started = last_log = time.monotonic()
        async for ids, vecs in self.store.iter_embeddings():
            await self._cpu(fresh.add, ids, vecs)
            n += len(ids)
            if progress:
                progress(len(ids))
            now = time.monotonic()
            if now - last_log >= 30 and n < total:  # a 1 M-face rebuild takes many minutes: say how far it is
                rate = n / (now - started)
                logger.info("rebuilding the %s index: %d of %d faces (%.0f%%), about %.0f min left",
                            fresh.backend, n, total, 100 * n / total, (total - n) / rate / 60)
                last_log = now
        await asyncio.to_thread(fresh.save)
        logger.info("%s index rebuilt: %d faces in %.0f s", fresh.backend, n, time.monotonic() - started)
        self.index = fresh
        self._dirty = 0
        return n

    async def _remove_unremoved(self) -> None:
        """Delete from the index the erased faces it still holds (called under the write lock)."""
        if not self._unremoved:
            return
        ids = np.asarray(sorted(self._unremoved), dtype=np.int64)
        try:
            await self._cpu(self.index.remove, ids)
            await asyncio.to_thread(self.index.save)
        except IndexUnavailable as exc:
            logger.error("%d erased faces are gone from the database but not yet from the index (retried on the "
                         "next change and at start-up): %s", len(ids), exc)
            return
        self._unremoved.difference_update(ids.tolist())

    async def save_index(self) -> None:
        """Save the index if it has unsaved changes."""
        if self._dirty:
            async with self._write:
                await asyncio.to_thread(self.index.save)
                self._dirty = 0

    # -- images ------------------------------------------------------------------------------
    def _analyse_sync(self, data: bytes, small_faces: bool = False) -> Analysed:
        c = self.config
        decoded = decode(data, max_bytes=c.max_image_bytes, max_pixels=c.max_image_pixels, max_side=c.max_side)
        faces = self.faces.detect_faces(decoded.bgr, small_faces)
        return Analysed(decoded, faces, self._detected(decoded, faces))

    def _detected(self, d: Decoded, faces: list[RawFace]) -> tuple[DetectedFace, ...]:
        if not faces:
            return ()
        boxes = np.stack([f.box for f in faces])
        h, w = d.bgr.shape[:2]
        primary = primary_face(boxes, w, h, self.config.primary_rule)
        return tuple(
            DetectedFace(
                number=i + 1,
                box=to_original_box(f.box, d.scale),
                det_score=round(f.score, 4),
                quality=self.faces.quality(f, d.scale),
                primary=(i == primary),
            )
            for i, f in enumerate(faces)
        )

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
        audit: bool = True,
    ) -> Enrollment:
        """Add an image to the gallery: every face is indexed, the subject goes to its primary face."""
        source_url = (source_url or "").strip()
        if not source_url:
            raise InvalidArgument("every gallery image needs a source link")
        subject = (subject or "").strip() or None
        expiry = self._expiry(expires_at)
        sha = sha256_hex(image)
        existing = await self.store.image_id_by_sha(sha)
        if existing is not None:
            return Enrollment(existing, sha, 0, subject, duplicate=True)
        decoded, rows = await self._cpu(self._prepare_enrollment, image, subject)
        async with self._write:
            await self._remove_unremoved()
            existing = await self.store.image_id_by_sha(sha)  # a concurrent enroll of the same bytes
            if existing is not None:
                return Enrollment(existing, sha, 0, subject, duplicate=True)
            image_id, face_ids = await self.store.add_image(
                sha256=sha, source_url=source_url, subject=subject, added_by=actor, expires_at=expiry,
                notes=notes, size=decoded.original_size, faces=rows,
            )
            vecs = np.stack([r.embedding for r in rows])
            try:
                await self._cpu(self.index.add, np.asarray(face_ids, dtype=np.int64), vecs)
            except IndexUnavailable:
                await self.store.delete_images([image_id])  # nothing half-done: the image is not in the gallery
                raise
            self._dirty += len(rows)
            if save:
                await asyncio.to_thread(self.index.save)
                self._dirty = 0
        if audit:
            await self.store.append_audit(
                actor, "enroll", None,
                {"image_id": image_id, "image_sha256": sha, "faces": len(rows), "face_ids": face_ids,
                 "subject": subject, "source_url": source_url, "expires_at": expiry},
            )
        return Enrollment(image_id, sha, len(rows), subject, duplicate=False)

    # -- search ------------------------------------------------------------------------------
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
    ) -> SearchResult:
        """Search the gallery for one face of a photo; "no match" is an ordinary, empty result.

        With several faces and no `face` given, `several="primary"` searches the primary face and
        `several="ask"` raises SeveralFaces (carrying the detected faces) so the caller can let a person
        choose; nothing is searched then, and the analysis is audited (action "detect").

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
        try:
            detected, chosen, vec, thumb = await self._cpu(self._query_sync, image, face, several)
        except NoFaceFound:
            await self.store.append_audit(actor, "search", case, {"query_sha256": sha, "faces": 0, "hits": []})
            raise
        except SeveralFaces as exc:  # the photo was analysed: on record, though no face was searched yet
            await self.store.append_audit(actor, "detect", case, {"query_sha256": sha, "faces": len(exc.faces)})
            raise
        cut = self.threshold_possible if threshold is None else threshold
        gallery = await asyncio.to_thread(len, self.index)  # Milvus: a call to the server (cached for a second)
        hits = await self._hits(vec, top, cut, gallery)
        result = SearchResult(
            query_sha256=sha, faces=detected, searched=chosen, hits=tuple(hits), gallery_faces=gallery,
            threshold=cut, calibrated=self.calibration is not None, query_thumbnail=thumb,
        )
        entry = await self.store.append_audit(
            actor, "search", case,
            {
                "query_sha256": sha, "faces": len(detected), "face": chosen,
                "hits": [[h.face_id, round(h.similarity, 4)] for h in hits],
                "ms": round((time.perf_counter() - t0) * 1000, 1),
            },
        )
        logger.info("search by %s case=%s: %d face(s), %d hit(s)", actor, case, len(detected), len(hits))
        return _with_audit(result, entry.seq)

    def _query_sync(
        self, image: bytes, face: int | None, several: str
    ) -> tuple[tuple[DetectedFace, ...], int, np.ndarray, bytes]:
        """Decode, detect, choose a face and embed it (one hop to the worker pool): the faces, the
        chosen face's number, its embedding and its thumbnail."""
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
        return detected, chosen, emb, self.faces.thumbnail(analysed.decoded.bgr, raw.box)

    async def query_embedding(self, image: bytes, face: int | None = None) -> np.ndarray:
        """The embedding `search` compares with the gallery for a photo's face (the primary one by
        default), by the very same steps; for evaluation. Raises NoFaceFound, FaceIndexError."""
        _, _, vec, _ = await self._cpu(self._query_sync, image, face, "primary")
        return vec

    async def _hits(self, vec: np.ndarray, top: int, cut: float, gallery: int) -> list[Hit]:
        # Over-fetch from the approximate index, then re-score exactly with the stored float32 embeddings.
        # Ids the database no longer has (erased meanwhile, or unknown to it) are dropped here.
        want = min(max(top * 4, 40), max(gallery, 1))
        keys, _approx = await self._cpu(self.index.search, vec, want)  # bounded: queue, do not thrash
        rows = await self.store.faces_by_ids(keys.tolist())
        # faces_by_ids leaves out damaged rows; the clamp keeps float rounding from showing 100.01 %.
        scored = sorted(
            ((clamp_similarity(float(np.dot(r.embedding, vec))), r) for r in rows.values()),
            key=lambda t: t[0], reverse=True,
        )
        hits: list[Hit] = []
        seen_images: set[int] = set()
        for sim, r in scored:
            if sim < cut or len(hits) >= top:
                break
            if r.image_id in seen_images:  # one hit per gallery image: its best face
                continue
            seen_images.add(r.image_id)
            strong = sim >= self.threshold_strong and r.quality_ok
            fmr = self.calibration.false_match_rate(sim) if self.calibration else None
            hits.append(
                Hit(
                    rank=len(hits) + 1, face_id=r.face_id, image_id=r.image_id, similarity=round(sim, 4),
                    band="strong" if strong else "possible", subject=r.subject, source_url=r.source_url,
                    image_sha256=r.image_sha256, box=r.box, low_quality=not r.quality_ok,
                    false_match_rate=fmr, strangers_expected=None if fmr is None else fmr * gallery,
                )
            )
        return hits

    async def thumbnail(self, face_id: int) -> bytes | None:
        """The stored thumbnail of a gallery face."""
        return await self.store.thumbnail(face_id)

    # -- erasure and retention ---------------------------------------------------------------
    async def forget(
        self, *, subject: str | None = None, source_url: str | None = None, sha256: str | None = None,
        actor: str = "cli",
    ) -> Erasure:
        """Remove images (and all their faces) by subject, source link or content hash, for good."""
        given = [v for v in (subject, source_url, sha256) if v]
        if len(given) != 1:
            raise InvalidArgument("say exactly one of: subject, source link, image SHA-256")
        image_ids = await self.store.find_images(subject=subject or None, source_url=source_url or None,
                                                 sha256=sha256 or None)
        if not image_ids:
            what = "subject" if subject else "source link" if source_url else "image"
            raise NotFound(f"no {what} {given[0]!r} in the gallery")
        erasure = await self._erase(image_ids)
        await self.store.append_audit(
            actor, "forget", None,
            {"by": "subject" if subject else "source_url" if source_url else "sha256",
             "value": given[0], "images": erasure.images, "faces": erasure.faces,
             "image_ids": list(erasure.image_ids)},
        )
        return erasure

    async def _erase(self, image_ids: list[int]) -> Erasure:
        async with self._write:
            face_ids = await self.store.delete_images(image_ids)
            # remove() also overwrites the freed slots (usearch) or compacts them away (Milvus), so nothing of
            # these faces stays in the index's storage. The database no longer has them either way, so no search
            # can return them; an index server that cannot be reached gets the deletion on a later call.
            self._unremoved.update(int(f) for f in face_ids)
            await self._remove_unremoved()
            self._dirty = 0
        return Erasure(images=len(image_ids), faces=len(face_ids), image_ids=tuple(image_ids))

    async def purge_expired(self, actor: str = "system") -> Erasure:
        """Erase every image whose expiry has passed, and audit entries past their retention."""
        image_ids = await self.store.expired_images(now_iso())
        erasure = await self._erase(image_ids) if image_ids else Erasure(0, 0, ())
        purged_audit = 0
        if self.config.audit_retention_days:
            cutoff = (datetime.now(UTC) - timedelta(days=self.config.audit_retention_days)).isoformat(timespec="seconds")
            purged_audit = await self.store.purge_audit_before(cutoff)
        if erasure.images or purged_audit:
            await self.store.append_audit(
                actor, "purge", None,
                {"images": erasure.images, "faces": erasure.faces, "image_ids": list(erasure.image_ids),
                 "audit_entries": purged_audit},
            )
        return erasure

    # -- users -------------------------------------------------------------------------------
    async def user(self, user_id: int) -> User | None:
        """A whitelisted user or None."""
        return await self.store.get_user(user_id)

    async def users(self) -> list[User]:
        """Every whitelisted user."""
        return await self.store.list_users()

    async def allow(self, user_id: int, role: str = "officer", note: str = "", *, actor: str) -> User:
        """Whitelist a user (or change their role)."""
        if role not in ROLES:
            raise InvalidArgument(f"role must be one of {', '.join(ROLES)}")
        if user_id <= 0:
            raise InvalidArgument("a Telegram user id is a positive number")
        if role != "admin":
            await self._keep_an_admin(user_id)
        await self.store.put_user(user_id, role, note, actor)
        await self.store.append_audit(actor, "allow", None, {"user_id": user_id, "role": role, "note": note})
        user = await self.store.get_user(user_id)
        assert user is not None
        return user

    async def revoke(self, user_id: int, *, actor: str) -> None:
        """Remove a user from the whitelist; raises NotFound if they were not on it, LastAdmin if they are the
        only administrator."""
        await self._keep_an_admin(user_id)
        if not await self.store.delete_user(user_id):
            raise NotFound(f"user {user_id} is not on the whitelist")
        await self.store.append_audit(actor, "revoke", None, {"user_id": user_id})

    async def _keep_an_admin(self, user_id: int) -> None:
        """Raise LastAdmin when `user_id` is the only admin (so revoking or demoting them would leave none)."""
        admins = [u.user_id for u in await self.store.list_users() if u.role == "admin"]
        if admins == [user_id]:
            raise LastAdmin(f"user {user_id} is the only administrator; make another account admin first")

    async def set_case(self, user_id: int, case: str | None, *, actor: str) -> str | None:
        """Set (or clear, with None) a user's active case reference."""
        case = check_case(case)
        if await self.store.get_user(user_id) is None:
            raise NotFound(f"user {user_id} is not on the whitelist")
        await self.store.set_active_case(user_id, case)
        await self.store.append_audit(actor, "case", case, {"user_id": user_id})
        return case

    # -- audit -------------------------------------------------------------------------------
    async def record(self, actor: str, action: str, case: str | None = None, **details: Any) -> AuditEntry:
        """Append an audit entry for something the front-end did (a refusal, an admin command)."""
        return await self.store.append_audit(actor, action, case, details)

    async def audit_tail(self, n: int = 10) -> list[AuditEntry]:
        """The last n audit entries."""
        return await self.store.audit_entries(last=n)

    async def audit_verify(self) -> ChainCheck:
        """Verify the whole hash chain, and that it agrees with the head file kept outside the database."""
        return await self.store.verify_audit(self.store.head_log)

    # -- stats -------------------------------------------------------------------------------
    async def stats(self) -> Stats:
        """Counts and sizes."""
        c = await self.store.counts()
        db = self.config.db_path
        db_bytes = sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists())
        index = self.index
        ef, memory = await asyncio.to_thread(lambda: (index.ef, index.memory_bytes()))
        if index.last_latency_ms is None and c["faces"]:  # one lookup, so that the latency is known
            probe = np.zeros(EMBEDDING_DIM, dtype=np.float32)
            probe[0] = 1.0
            await self._cpu(index.search, probe, 10)
        return Stats(
            images=c["images"], faces=c["faces"], subjects=c["subjects"], labelled_faces=c["labelled_faces"],
            flagged_faces=c["flagged_faces"], users=c["users"], audit_entries=c["audit_entries"],
            db_bytes=db_bytes, index_bytes=self.index.file_bytes(), model=self.faces.name,
            index_dims=self.index.ndim, index_ef=ef, index_memory_bytes=memory,
            index_backend=self.index.backend, index_where=getattr(self.index, "where", str(self.config.index_path)),
            index_latency_ms=self.index.last_latency_ms,
        )


def _with_audit(result: SearchResult, seq: int) -> SearchResult:
    from dataclasses import replace

    return replace(result, audit_id=seq)
