"""Accuracy of the whole product on a labelled folder, measured through Engine.enroll and Engine.search.

`collect()` builds a throw-away gallery in a temporary data directory with the real ingestion path and
searches it with the real search path; `summarise()` turns what it saw into numbers; `write_report()`
writes report.md, metrics.json and the figures. `build_calibration()` turns impostor scores into the
score -> false-match-rate table shipped in engine/calibration/.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import math
import platform
import re
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from . import calibration as calib
from . import degrade as degradation
from . import fsmodes, metrics
from .calibration import Calibration
from .config import EngineConfig
from .engine import Engine
from .errors import EngineError, NoFaceFound
from .types import Quality

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif"}
FARS = (1e-3, 1e-4, 1e-5)
FPIRS = (1e-2, 1e-3)
TOP = 100  # the most Engine.search returns: enough for rank-5 and for the best non-mated candidate
ACTOR = "eval"
SOURCE_PREFIX = "eval:"  # gallery source links are "eval:<relative path>"
CASE = "eval"

PROTOCOL = """\
Protocol (everything runs through the product: Engine.enroll and Engine.search, in a temporary data
directory that is deleted afterwards; your gallery is not touched):
  * Photos are read from DIR/<identity>/<n>.<ext> (or the path,identity columns of DIR/LABELS.csv) and
    ordered by n. The first photo of every identity is enrolled, labelled with the identity; every face
    in it is indexed, as in production. Identities with one photo are enrolled as distractors.
  * Every other photo is a probe: a mated search (threshold -1, top 100, the primary face).
    Rank-k: the share of probes whose true identity is a labelled hit at rank <= k. A hit on an unlabelled
    face (someone in the background of a gallery photo) counts against it, as it does for an officer;
    "named rank-k" skips unlabelled hits (an unlabelled hit may be the same person, seen in another photo).
  * Non-mated searches (open set): every photo, probes and gallery photos alike, is searched and the
    gallery images of its own identity are removed from the answer: that is the answer a gallery without
    that identity gives (scores are exact, so leaving an identity out changes nothing else). Each search
    thus acts as a held-out identity against the rest of the gallery.
    FPIR(t): share of non-mated searches whose best candidate scores >= t. FNIR(t): share of probes whose
    mate is not at rank 1 with a score >= t. A photo with no face found is a miss (FNIR) and raises no
    alarm (FPIR). Both are also given for named hits only (unlabelled faces are then no candidates).
  * Verification (1:1), all pairs: the primary-face embeddings of all photos (gallery embeddings read back
    from the engine's database, probe embeddings computed by the code Engine.search uses), compared pairwise:
    same identity = genuine pair, different = impostor pair. TAR at FAR 1e-3/1e-4/1e-5 and the thresholds.
    A rate below 1/(number of pairs or searches) cannot be measured and is marked as such.
"""


# -- the labelled folder -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LabelledPhoto:
    """One photo of a labelled set."""

    identity: str
    path: Path
    rel: str  # path relative to the set's folder, for reports


def _natural(name: str) -> tuple[Any, ...]:
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name))


def load_labelled(root: Path) -> list[LabelledPhoto]:
    """Photos grouped by identity (sorted), each identity's photos in natural order (1, 2, ..., 10)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    photos: list[LabelledPhoto] = []
    labels = root / "LABELS.csv"
    if labels.is_file():
        with labels.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"path", "identity"} <= set(reader.fieldnames):
                raise ValueError(f"{labels}: the header must name at least: path, identity")
            for n, row in enumerate(reader, 2):
                rel, ident = (row.get("path") or "").strip(), (row.get("identity") or "").strip()
                if not rel or not ident:
                    raise ValueError(f"{labels}:{n}: empty path or identity")
                if not (root / rel).is_file():
                    raise ValueError(f"{labels}:{n}: {rel} does not exist")
                photos.append(LabelledPhoto(ident, root / rel, rel))
    else:
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            for f in folder.iterdir():
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    photos.append(LabelledPhoto(folder.name, f, f.relative_to(root).as_posix()))
    photos.sort(key=lambda p: (p.identity, _natural(Path(p.rel).name)))
    return photos


@dataclass(frozen=True, slots=True)
class Plan:
    """Which photo is enrolled and which searched."""

    gallery: tuple[LabelledPhoto, ...]  # first photo of every identity
    probes: tuple[LabelledPhoto, ...]  # the other photos of identities with 2+ photos

    @property
    def photos(self) -> int:
        """Photos in the set."""
        return len(self.gallery) + len(self.probes)

    @property
    def identities(self) -> int:
        """Identities in the set."""
        return len(self.gallery)

    @property
    def mated_identities(self) -> int:
        """Identities with at least one probe."""
        return len({p.identity for p in self.probes})


def make_plan(
    photos: list[LabelledPhoto], *, max_identities: int | None = None, max_per_identity: int | None = None
) -> Plan:
    """First photo of each identity to the gallery, the rest to probes; optionally a smaller subset."""
    by_id: dict[str, list[LabelledPhoto]] = defaultdict(list)
    for p in photos:
        by_id[p.identity].append(p)
    names = sorted(by_id)
    if max_identities is not None:
        names = names[:max_identities]
    gallery, probes = [], []
    for name in names:
        group = by_id[name][: max_per_identity] if max_per_identity else by_id[name]
        gallery.append(group[0])
        probes.extend(group[1:])
    return Plan(tuple(gallery), tuple(probes))


# -- running the product -----------------------------------------------------------------------
@dataclass(slots=True)
class SearchSeen:
    """What one search returned, reduced to what the metrics need."""

    photo: LabelledPhoto
    probe: bool  # True: a mated search (a probe); False: a gallery photo, searched only as non-mated
    face_found: bool = False
    faces: int = 0
    mate_rank: int = 0  # 1-based rank of the first hit labelled with the identity; 0 = not returned
    named_rank: int = 0  # the same, counting only labelled hits (unlabelled background faces skipped)
    mate_score: float | None = None
    mate_face_id: int | None = None
    top_subject: str | None = None
    top_score: float | None = None
    top_face_id: int | None = None
    top_source: str = ""  # the photo the first hit comes from (relative path)
    nonmated_score: float | None = None  # best candidate from another identity's image (None: no face)
    nonmated_subject: str | None = None
    nonmated_source: str = ""
    nonmated_named_score: float | None = None  # the same among labelled hits only
    quality: Quality | None = None
    thumbnail: bytes = b""  # the query face, kept only for misses (the contact sheet)
    error: str | None = None  # the engine's refusal, e.g. NoFaceFound
    # What an officer is handed first, per display rule (SHOWN_RULES): "mate", "stranger", "unlabelled" or
    # "none" (no hit reaches the rule's threshold)
    shown: dict[str, str] = field(default_factory=dict)


# Display rules compared by the false-lead report: "overall" shows hits at or above the overall "possible"
# threshold; "quality" (what the engine does) at or above each comparison's quality-class threshold.
SHOWN_RULES = ("overall", "quality")


def first_shown(engine: Engine, hits: Sequence[Any], probe_ok: bool, identity: str, second_look: bool = False) -> dict[str, str]:
    """Per display rule, what the first hit an officer would see is (hits: best first, threshold -1)."""
    out = {}
    for rule in SHOWN_RULES:
        first = next((h for h in hits if h.similarity >= (
            engine.threshold_possible if rule == "overall" else engine.band_thresholds(probe_ok, not h.low_quality, second_look)[0])),
            None)
        out[rule] = ("none" if first is None else "mate" if first.subject == identity
                     else "stranger" if first.subject is not None else "unlabelled")
    return out


@dataclass(slots=True)
class Observations:
    """Everything `collect` saw: per-search records and the verification embeddings."""

    root: Path
    plan: Plan
    model: str
    recognizer_sha256: str
    config: dict[str, Any]
    calibration: Calibration | None
    threshold_possible: float
    threshold_strong: float
    gallery_faces: int = 0
    gallery_flagged: int = 0
    gallery_failed: dict[str, str] = field(default_factory=dict)  # rel path -> reason
    gallery_duplicates: list[str] = field(default_factory=list)
    searches: list[SearchSeen] = field(default_factory=list)
    embeddings: np.ndarray = field(default_factory=lambda: np.empty((0, 512), np.float32))
    labels: list[str] = field(default_factory=list)
    embedded: list[str] = field(default_factory=list)  # rel path of each embedding row
    embed_failed: dict[str, str] = field(default_factory=dict)
    consistency_max_diff: float | None = None  # |probe embedding . top hit - search score|, worst case
    thumbnails: dict[int, bytes] = field(default_factory=dict)  # gallery face id -> JPEG, for the sheet
    seconds: float = 0.0
    degrade: str | None = None  # probes degraded at this level (engine/degrade.py); None: as they are
    degrade_seed: int = 0
    embedded_ok: list[bool] = field(default_factory=list)  # quality check passed, per embedding row
    embedded_second: list[bool] = field(default_factory=list)  # found only by the detector's second look, per row
    # `sightline calibrate`: degraded copies of every photo (FIELD_SEED), for the quality-class tables
    field_embeddings: np.ndarray = field(default_factory=lambda: np.empty((0, 512), np.float32))
    field_labels: list[str] = field(default_factory=list)
    field_ok: list[bool] = field(default_factory=list)
    field_second: list[bool] = field(default_factory=list)  # found only by the detector's second look
    field_origin: list[str] = field(default_factory=list)  # rel path of the photo each copy came from
    field_seed: list[int] = field(default_factory=list)  # the degradation seed of each copy (FIELD_SEEDS)
    # Every face indexed from the gallery photos (labelled primaries and unlabelled background faces alike): what
    # a search compares a probe with, for the second-look classes
    gallery_embeddings: np.ndarray = field(default_factory=lambda: np.empty((0, 512), np.float32))
    gallery_ok: list[bool] = field(default_factory=list)
    gallery_identity: list[str] = field(default_factory=list)  # the identity of the photo the face is in
    gallery_origin: list[str] = field(default_factory=list)  # rel path of that photo


async def read_probe(obs: Observations, p: LabelledPhoto) -> bytes:
    """A probe's bytes as the protocol searches them: degraded when the run asks for it."""
    data = await asyncio.to_thread(p.path.read_bytes)
    if obs.degrade is None:
        return data
    return await asyncio.to_thread(degradation.degrade, data, obs.degrade, p.rel, obs.degrade_seed)


# Calibration's degraded copies: one per photo and seed. The quality classes use the first seed's copies; the
# second-look class pools all of them (the retry fires on ~1 photo in 15, too few for one seed's sample).
# eval's probes default to seed 0, so the two never share recipes.
FIELD_SEEDS = (1, 2, 3)
FIELD_SEED = FIELD_SEEDS[0]


async def primary_face(engine: Engine, image: bytes) -> tuple[np.ndarray, Quality] | None:
    """The primary face's embedding (as Engine.search computes it) and its quality; None when no face."""
    try:
        vec, quality = await engine.query_face(image)
    except NoFaceFound:
        return None
    return np.asarray(vec, dtype=np.float32), quality


async def primary_embedding(engine: Engine, image: bytes) -> np.ndarray | None:
    """The embedding Engine.search computes for a photo's primary face (Engine.query_embedding runs the
    very same steps); `collect` checks that it reproduces the scores the searches returned. None when no
    face is found."""
    try:
        vec = await engine.query_embedding(image)
    except NoFaceFound:
        return None
    return np.asarray(vec, dtype=np.float32)


def steps(plan: Plan, searches: bool = True, field_copies: bool = False, field_seeds: Sequence[int] = FIELD_SEEDS) -> int:
    """How many engine calls `collect` makes (for a progress bar)."""
    copies = plan.photos + sum(degradation.draw_level(p.rel, seed) == "severe"
                               for seed in field_seeds[1:] for p in (*plan.gallery, *plan.probes))
    return len(plan.gallery) + len(plan.probes) + (plan.photos if searches else 0) + (copies if field_copies else 0)


def config_summary(config: EngineConfig) -> dict[str, Any]:
    """The settings that change accuracy, for reports and calibration tables."""
    keys = ("primary_rule", "flip_fusion", "pad_retry", "det_size", "det_threshold", "det_retry_threshold", "det_retry_size", "max_side",
            "quality_min_width", "quality_min_det_score", "quality_min_blur", "quality_max_yaw")
    return {k: getattr(config, k) for k in keys}


async def collect(
    root: Path,
    config: EngineConfig,
    plan: Plan,
    *,
    searches: bool = True,
    progress: Callable[[int], None] | None = None,
    worst: int = 24,
    concurrency: int = 2,
    degrade: str | None = None,
    degrade_seed: int = 0,
    field_copies: bool = False,
    field_seeds: Sequence[int] = FIELD_SEEDS,
) -> Observations:
    """Enroll the plan's gallery and run its searches in a temporary engine; return what was seen.

    With `degrade` ("moderate" or "severe", see engine/degrade.py) every probe is degraded reproducibly
    (by its relative path and `degrade_seed`) before it is embedded or searched; gallery photos stay clean.
    With `field_copies` (calibration), every photo is also embedded degraded once per seed of `field_seeds`
    (moderate or severe, drawn per photo and seed), for the quality-class false-match tables.
    """
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    tick = progress or (lambda n: None)
    with tempfile.TemporaryDirectory(prefix="sightline-eval-") as tmp:
        cfg = replace(config, data_dir=Path(tmp), require_case=False)
        engine = await Engine.open(cfg)
        try:
            obs = Observations(
                root=Path(root), plan=plan, model=engine.faces.name, recognizer_sha256=engine.faces.recognizer_sha256,
                config=config_summary(cfg), calibration=engine.calibration,
                threshold_possible=engine.threshold_possible, threshold_strong=engine.threshold_strong,
                degrade=degrade, degrade_seed=degrade_seed,
            )
            image_identity = await _enroll_gallery(engine, plan, obs, tick, concurrency)
            await engine.save_index()
            stats = await engine.stats()
            obs.gallery_faces, obs.gallery_flagged = stats.faces, stats.flagged_faces
            probe_vecs, probe_ok = await _embed_probes(engine, plan, obs, tick, concurrency)
            await _read_gallery_embeddings(engine, plan, obs, image_identity, probe_vecs, probe_ok)
            await _read_gallery_faces(engine, obs, image_identity)
            if field_copies:
                await _embed_field_copies(engine, plan, obs, tick, concurrency, field_seeds)
            if searches:
                await _search_all(engine, plan, obs, image_identity, tick, concurrency)
                await _check_consistency(engine, obs, probe_vecs)
                await _keep_thumbnails(engine, obs, worst)
        finally:
            await engine.close()
    obs.seconds = loop.time() - t0
    return obs


async def _each(items: list[Any], concurrency: int, fn: Callable[[Any], Any]) -> None:
    """Await fn(item) for every item, `concurrency` at a time."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for it in items:
        queue.put_nowait(it)

    async def worker() -> None:
        while not queue.empty():
            await fn(queue.get_nowait())

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))


async def _enroll_gallery(
    engine: Engine, plan: Plan, obs: Observations, tick: Callable[[int], None], concurrency: int
) -> dict[int, str]:
    image_identity: dict[int, str] = {}

    async def one(p: LabelledPhoto) -> None:
        try:
            data = await asyncio.to_thread(p.path.read_bytes)
            e = await engine.enroll(data, source_url=f"{SOURCE_PREFIX}{p.rel}", subject=p.identity, actor=ACTOR, save=False)
        except NoFaceFound:
            obs.gallery_failed[p.rel] = "no face"
        except (EngineError, OSError) as exc:
            obs.gallery_failed[p.rel] = f"{type(exc).__name__}: {exc}"
        else:
            if e.duplicate:
                obs.gallery_duplicates.append(p.rel)
            else:
                image_identity[e.image_id] = p.identity
        tick(1)

    await _each(list(plan.gallery), concurrency, one)
    return image_identity


async def _embed_probes(
    engine: Engine, plan: Plan, obs: Observations, tick: Callable[[int], None], concurrency: int
) -> tuple[dict[str, np.ndarray], dict[str, tuple[bool, bool]]]:
    vecs: dict[str, np.ndarray] = {}
    oks: dict[str, tuple[bool, bool]] = {}  # (quality ok, second look)

    async def one(p: LabelledPhoto) -> None:
        try:
            data = await read_probe(obs, p)
            got = await primary_face(engine, data)
        except (EngineError, OSError) as exc:
            obs.embed_failed[p.rel] = f"{type(exc).__name__}: {exc}"
        else:
            if got is None:
                obs.embed_failed[p.rel] = "no face"
            else:
                vecs[p.rel], oks[p.rel] = got[0], (got[1].ok, got[1].second_look)
        tick(1)

    await _each(list(plan.probes), concurrency, one)
    return vecs, oks


async def _embed_field_copies(
    engine: Engine, plan: Plan, obs: Observations, tick: Callable[[int], None], concurrency: int, seeds: Sequence[int]
) -> None:
    """Embed a degraded copy of every photo per seed (level drawn per photo and seed; past the first seed, only the
    severe ones), in seed then plan order."""
    got: dict[tuple[int, str], tuple[np.ndarray, bool, bool]] = {}

    async def one(item: tuple[int, LabelledPhoto]) -> None:
        seed, p = item
        level = degradation.draw_level(p.rel, seed)
        try:
            data = await asyncio.to_thread(p.path.read_bytes)
            data = await asyncio.to_thread(degradation.degrade, data, level, p.rel, seed)
            face = await primary_face(engine, data)
        except (EngineError, OSError):
            face = None
        if face is not None:
            got[seed, p.rel] = (face[0], face[1].ok, face[1].second_look)
        tick(1)

    # Past the first seed only the second-look classes use the copies, and the retry never fires on moderate ones.
    items = [(seed, p) for k, seed in enumerate(seeds) for p in (*plan.gallery, *plan.probes)
             if k == 0 or degradation.draw_level(p.rel, seed) == "severe"]
    await _each(items, concurrency, one)
    rows = [(seed, p, got[seed, p.rel]) for seed, p in items if (seed, p.rel) in got]
    obs.field_embeddings = np.stack([v for _, _, (v, _, _) in rows]).astype(np.float32) if rows else obs.field_embeddings
    obs.field_labels = [p.identity for _, p, _ in rows]
    obs.field_ok = [ok for _, _, (_, ok, _) in rows]
    obs.field_second = [second for _, _, (_, _, second) in rows]
    obs.field_origin = [p.rel for _, p, _ in rows]
    obs.field_seed = [seed for seed, _, _ in rows]


async def _read_gallery_embeddings(
    engine: Engine, plan: Plan, obs: Observations, image_identity: dict[int, str], probe_vecs: dict[str, np.ndarray],
    probe_ok: dict[str, tuple[bool, bool]],
) -> None:
    """The labelled (primary) faces' float32 embeddings as stored, then the probes', in plan order."""
    by_rel: dict[str, tuple[np.ndarray, bool]] = {}
    async for ids, _vecs in engine.store.iter_embeddings():
        rows = await engine.store.faces_by_ids(ids.tolist())
        for r in rows.values():
            if r.subject is not None and r.image_id in image_identity:
                by_rel[r.source_url.removeprefix(SOURCE_PREFIX)] = (r.embedding, r.quality_ok)
    vecs, labels, rels, oks, seconds = [], [], [], [], []
    gallery_rels = {p.rel for p in plan.gallery}
    for p in (*plan.gallery, *plan.probes):
        second = False  # enrolment never takes a second look
        if p.rel in gallery_rels:
            v, ok = by_rel.get(p.rel, (None, True))
        else:
            v, (ok, second) = probe_vecs.get(p.rel), probe_ok.get(p.rel, (True, False))
        if v is not None:
            vecs.append(v)
            labels.append(p.identity)
            rels.append(p.rel)
            oks.append(bool(ok))
            seconds.append(bool(second))
    obs.embeddings = np.stack(vecs).astype(np.float32) if vecs else np.empty((0, 512), np.float32)
    obs.labels, obs.embedded, obs.embedded_ok, obs.embedded_second = labels, rels, oks, seconds


async def _read_gallery_faces(engine: Engine, obs: Observations, image_identity: dict[int, str]) -> None:
    """Every face indexed from the gallery photos, with its quality and its photo's identity, in face id order."""
    vecs, oks, idents, origins = [], [], [], []
    async for ids, _vecs in engine.store.iter_embeddings():
        rows = await engine.store.faces_by_ids(ids.tolist())
        for fid in sorted(rows):
            r = rows[fid]
            if r.image_id in image_identity:
                vecs.append(r.embedding)
                oks.append(bool(r.quality_ok))
                idents.append(image_identity[r.image_id])
                origins.append(r.source_url.removeprefix(SOURCE_PREFIX))
    obs.gallery_embeddings = np.stack(vecs).astype(np.float32) if vecs else np.empty((0, 512), np.float32)
    obs.gallery_ok, obs.gallery_identity, obs.gallery_origin = oks, idents, origins


async def _search_all(
    engine: Engine,
    plan: Plan,
    obs: Observations,
    image_identity: dict[int, str],
    tick: Callable[[int], None],
    concurrency: int,
) -> None:
    seen: dict[str, SearchSeen] = {}
    probe_rels = {p.rel for p in plan.probes}

    async def one(p: LabelledPhoto) -> None:
        rec = SearchSeen(photo=p, probe=p.rel in probe_rels)
        seen[p.rel] = rec
        try:
            data = await read_probe(obs, p) if rec.probe else await asyncio.to_thread(p.path.read_bytes)
            r = await engine.search(data, actor=ACTOR, case=CASE, top=TOP, threshold=-1.0)
        except NoFaceFound:
            rec.error = "no face"
            tick(1)
            return
        except (EngineError, OSError) as exc:
            rec.error = f"{type(exc).__name__}: {exc}"
            tick(1)
            return
        rec.face_found, rec.faces = True, len(r.faces)
        rec.quality = r.faces[r.searched - 1].quality
        rec.shown = first_shown(engine, r.hits, rec.quality.ok, p.identity, rec.quality.second_look)
        if r.hits:
            top = r.hits[0]
            rec.top_subject, rec.top_score, rec.top_face_id = top.subject, top.similarity, top.face_id
            rec.top_source = top.source_url.removeprefix(SOURCE_PREFIX)
        for h in r.hits:
            if h.subject == p.identity:
                rec.mate_rank, rec.mate_score, rec.mate_face_id = h.rank, h.similarity, h.face_id
                break
        named = [h for h in r.hits if h.subject is not None]
        rec.named_rank = next((k for k, h in enumerate(named, 1) if h.subject == p.identity), 0)
        others = [h for h in r.hits if image_identity.get(h.image_id) != p.identity]
        if others:
            rec.nonmated_score, rec.nonmated_subject = others[0].similarity, others[0].subject
            rec.nonmated_source = others[0].source_url.removeprefix(SOURCE_PREFIX)
        else:
            rec.nonmated_score = -1.0  # nobody else in the gallery: no alarm possible
        named_others = [h for h in others if h.subject is not None]
        rec.nonmated_named_score = named_others[0].similarity if named_others else -1.0
        if rec.probe and rec.mate_rank != 1:
            rec.thumbnail = r.query_thumbnail
        tick(1)

    await _each([*plan.probes, *plan.gallery], concurrency, one)
    obs.searches = [seen[p.rel] for p in (*plan.probes, *plan.gallery)]


async def _check_consistency(engine: Engine, obs: Observations, probe_vecs: dict[str, np.ndarray]) -> None:
    """Each probe embedding, dotted with the stored top hit, must give the score the search returned."""
    pairs = [(s, probe_vecs[s.photo.rel]) for s in obs.searches
             if s.probe and s.top_face_id is not None and s.photo.rel in probe_vecs]
    if not pairs:
        return
    rows = await engine.store.faces_by_ids({s.top_face_id for s, _ in pairs if s.top_face_id is not None})
    diffs = [abs(float(np.dot(v, rows[s.top_face_id].embedding)) - float(s.top_score or 0.0))
             for s, v in pairs if s.top_face_id in rows]
    obs.consistency_max_diff = max(diffs) if diffs else None


async def _keep_thumbnails(engine: Engine, obs: Observations, worst: int) -> None:
    for s in worst_misses(obs, worst):
        for fid in (s.top_face_id, s.mate_face_id):
            if fid is not None and fid not in obs.thumbnails:
                thumb = await engine.thumbnail(fid)
                if thumb:
                    obs.thumbnails[fid] = thumb


def worst_misses(obs: Observations, n: int) -> list[SearchSeen]:
    """Probes whose mate was not first, the widest margins first (a stranger far ahead of the mate)."""
    misses = [s for s in obs.searches if s.probe and s.face_found and s.mate_rank != 1]
    misses.sort(key=lambda s: (s.top_score or 0.0) - (s.mate_score if s.mate_score is not None else -1.0),
                reverse=True)
    return misses[:n]


# -- numbers ---------------------------------------------------------------------------------------
def summarise(obs: Observations) -> dict[str, Any]:
    """Every number of the report, as plain JSON values."""
    probes = [s for s in obs.searches if s.probe]
    ranks = np.array([s.mate_rank for s in probes])
    mated = np.array([s.mate_score if s.mate_rank == 1 and s.mate_score is not None else -math.inf for s in probes])
    nonmated = np.array([s.nonmated_score if s.nonmated_score is not None else -math.inf for s in obs.searches])
    genuine, impostor = metrics.pair_scores(obs.embeddings, obs.labels)
    no_face = sorted({*(k for k, v in obs.gallery_failed.items() if v == "no face"),
                      *(s.photo.rel for s in obs.searches if s.error == "no face"),
                      *(k for k, v in obs.embed_failed.items() if v == "no face")})
    out: dict[str, Any] = {
        "dataset": str(obs.root),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": obs.model,
        "recognizer_sha256": obs.recognizer_sha256,
        "config": obs.config,
        "calibrated": obs.calibration is not None,
        "thresholds_in_use": {"possible": obs.threshold_possible, "strong": obs.threshold_strong},
        "counts": {
            "identities": obs.plan.identities,
            "mated_identities": obs.plan.mated_identities,
            "distractor_identities": obs.plan.identities - obs.plan.mated_identities,
            "photos": obs.plan.photos,
            "gallery_photos": len(obs.plan.gallery),
            "gallery_faces_indexed": obs.gallery_faces,
            "gallery_faces_flagged": obs.gallery_flagged,
            "probes": len(probes),
            "nonmated_searches": len(obs.searches),
            "genuine_pairs": int(len(genuine)),
            "impostor_pairs": int(len(impostor)),
            "no_face": len(no_face),
            "gallery_failed": len(obs.gallery_failed),
            "gallery_duplicates": len(obs.gallery_duplicates),
        },
        "no_face_photos": no_face,
        "seconds": round(obs.seconds, 1),
        "consistency_max_diff": obs.consistency_max_diff,
        "degrade": None if obs.degrade is None else {"level": obs.degrade, "seed": obs.degrade_seed},
    }
    if len(probes):
        named = np.array([s.named_rank for s in probes])
        out["identification"] = {
            "rank1": metrics.rank_k(ranks, 1),
            "rank5": metrics.rank_k(ranks, 5),
            "rank1_errors": int(np.sum(ranks != 1)),
            "rank1_named": metrics.rank_k(named, 1),
            "rank5_named": metrics.rank_k(named, 5),
            "rank1_errors_unlabelled_first": sum(1 for s in probes if s.mate_rank != 1 and s.face_found
                                                 and s.top_subject is None),
            "open_set": [_point(p, "fnir") for p in metrics.identification_points(mated, nonmated, FPIRS)]
            if len(obs.searches) else [],
            # Only labelled candidates count, on both sides: unlabelled background faces, which may well
            # be the searched person in someone else's photo, neither raise an alarm nor hide the mate.
            "open_set_named": [_point(p, "fnir") for p in metrics.identification_points(
                np.array([s.mate_score if s.named_rank == 1 and s.mate_score is not None else -math.inf
                          for s in probes]),
                np.array([s.nonmated_named_score if s.nonmated_named_score is not None else -math.inf
                          for s in obs.searches]),
                FPIRS)] if len(obs.searches) else [],
        }
        out["quality"] = _quality_split(probes)
        out["false_leads"] = false_leads(probes, obs.threshold_possible)
        alarms = sorted((s for s in obs.searches if s.nonmated_score is not None and s.nonmated_score > -1.0),
                        key=lambda s: s.nonmated_score or 0.0, reverse=True)[:10]
        out["highest_nonmated"] = [
            {"photo": s.photo.rel, "score": s.nonmated_score, "hit": s.nonmated_subject or "unlabelled",
             "hit_photo": s.nonmated_source} for s in alarms
        ]
    if len(genuine) and len(impostor):
        out["verification"] = [_point(p, "tar") for p in metrics.verification_points(genuine, impostor, FARS)]
        out["scores"] = {
            "genuine_mean": float(np.mean(genuine)), "genuine_p01": float(np.quantile(genuine, 0.01)),
            "impostor_mean": float(np.mean(impostor)), "impostor_sd": float(np.std(impostor)),
            "impostor_max": float(np.max(impostor)),
        }
        if obs.calibration is not None and obs.calibration.pairs and obs.embedded_ok:
            out["odds_check"] = odds_check(obs)
        if obs.calibration is not None:
            cal = obs.calibration
            out["calibration_check"] = [
                {"threshold": t, "table_fmr": cal.false_match_rate(t),
                 "observed_fmr": metrics.share_at_or_above(impostor, t)}
                for t in (obs.threshold_possible, obs.threshold_strong)
            ]
    return out


def _point(p: metrics.OperatingPoint, kind: str) -> dict[str, Any]:
    d = asdict(p)
    d["threshold"] = None if math.isinf(p.threshold) else p.threshold
    if kind == "fnir":
        d["fnir"] = 1.0 - d.pop("hit_rate")
    else:
        d["tar"] = d.pop("hit_rate")
    return d


WIDTH_BINS = ((0, 24), (24, 40), (40, 80), (80, 1_000_000))  # probe face width, pixels as analysed


def false_leads(probes: list[SearchSeen], threshold: float) -> dict[str, Any]:
    """What an officer would be handed, by probe quality and display rule (SHOWN_RULES: the overall
    "possible" `threshold`, or each comparison's quality-class threshold, as the engine does): how many
    probes show a first hit, and whether it is the person (a lead), a labelled stranger or an unlabelled
    gallery face (both false leads). Rows: all probes, quality ok / flagged, and face-width bins."""
    def row(xs: list[SearchSeen]) -> dict[str, Any]:
        out: dict[str, Any] = {"probes": len(xs), "no_face": sum(1 for s in xs if not s.face_found)}
        for rule in SHOWN_RULES:
            seen = Counter(s.shown.get(rule, "none") for s in xs if s.face_found)
            false = seen["stranger"] + seen["unlabelled"]
            out[rule] = {"shown": seen["mate"] + false, "mate_first": seen["mate"], "false_stranger": seen["stranger"],
                         "false_unlabelled": seen["unlabelled"], "false_lead_rate": false / len(xs) if xs else None}
        return out

    out: dict[str, Any] = {"threshold": threshold, "rules": list(SHOWN_RULES), "all": row(probes)}
    out["quality_ok"] = row([s for s in probes if s.quality is not None and s.quality.ok])
    out["quality_flagged"] = row([s for s in probes if s.quality is not None and not s.quality.ok])
    out["by_width"] = {f"{lo}-{hi}" if hi < 1_000_000 else f">={lo}": row(
        [s for s in probes if s.quality is not None and lo <= s.quality.width_px < hi]) for lo, hi in WIDTH_BINS}
    return out


def _quality_split(probes: list[SearchSeen]) -> dict[str, Any]:
    """Rank-1 for probes whose face passed the quality checks and for those that did not, with reasons."""
    ok = [s for s in probes if s.quality is not None and s.quality.ok]
    bad = [s for s in probes if s.quality is not None and not s.quality.ok]
    reasons: Counter[str] = Counter()
    for s in bad:
        assert s.quality is not None
        for w in s.quality.warnings:
            reasons[re.sub(r"[\d~°()%]+", "", w).strip().replace("  ", " ")] += 1
    def r1(xs: list[SearchSeen]) -> float | None:
        return sum(s.mate_rank == 1 for s in xs) / len(xs) if xs else None
    return {"ok": len(ok), "ok_rank1": r1(ok), "flagged": len(bad), "flagged_rank1": r1(bad),
            "reasons": dict(reasons.most_common())}


# -- the report ------------------------------------------------------------------------------------
def write_report(obs: Observations, summary: dict[str, Any], out: Path, worst: int = 24) -> list[Path]:
    """report.md, metrics.json, det.png, scores.png and worst_misses.png in `out` (owner-only: face crops, scores)."""
    out.mkdir(mode=fsmodes.DIR_MODE, parents=True, exist_ok=True)
    genuine, impostor = metrics.pair_scores(obs.embeddings, obs.labels)
    files = [out / "metrics.json", out / "det.png", out / "scores.png", out / "worst_misses.png", out / "report.md"]
    (out / "metrics.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot_det(obs, genuine, impostor, out / "det.png")
    plot_scores(obs, genuine, impostor, out / "scores.png")
    contact_sheet(obs, worst_misses(obs, worst), out / "worst_misses.png")
    (out / "report.md").write_text(report_markdown(obs, summary, worst))
    fsmodes.make_private(*files)  # matplotlib and PIL create files with the umask's mode
    return files


def _fmt_rate(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-")


def report_markdown(obs: Observations, s: dict[str, Any], worst: int) -> str:
    """The human-readable report."""
    c = s["counts"]
    lines = [
        f"# Sightline accuracy report: {obs.root.name}", "",
        f"- data: `{obs.root}` — {c['photos']} photos, {c['identities']} identities "
        f"({c['mated_identities']} with 2+ photos, {c['distractor_identities']} single-photo distractors)",
        f"- model: {s['model']} (recognizer sha256 `{s['recognizer_sha256'][:16]}…`), "
        f"{'calibrated' if s['calibrated'] else 'no calibration table'}",
        f"- settings: {', '.join(f'{k}={v}' for k, v in s['config'].items())}",
        f"- run: {s['date']}, {s['seconds']:.0f} s on {platform.machine()}",
        f"- probes: {'degraded, level ' + obs.degrade + f' (seed {obs.degrade_seed})' if obs.degrade else 'as they are'}",
        "", "## Protocol", "", "```", PROTOCOL.rstrip(), "```", "",
        "## Counts", "",
        f"- gallery: {c['gallery_photos']} photos -> {c['gallery_faces_indexed']} faces indexed "
        f"({c['gallery_faces_flagged']} below the quality floor); {c['gallery_failed']} gallery photos failed",
        f"- mated searches (probes): {c['probes']}; non-mated searches: {c['nonmated_searches']}",
        f"- verification pairs: {c['genuine_pairs']:,} genuine, {c['impostor_pairs']:,} impostor",
        f"- photos with no face found: {c['no_face']}" + (f" ({', '.join(s['no_face_photos'][:20])})" if c["no_face"] else ""),
        "",
    ]
    if "identification" in s:
        ident = s["identification"]
        lines += [
            "## Identification (1:N)", "",
            f"- rank-1: **{ident['rank1']:.4f}** ({c['probes'] - ident['rank1_errors']}/{c['probes']}), "
            f"rank-5: **{ident['rank5']:.4f}**",
            f"- named rank-1 (unlabelled hits skipped): {ident['rank1_named']:.4f}, named rank-5: "
            f"{ident['rank5_named']:.4f}; {ident['rank1_errors_unlabelled_first']} of the "
            f"{ident['rank1_errors']} rank-1 misses have an unlabelled face first (check `worst_misses.png`: "
            "it may be the same person in another gallery photo)", "",
            "| candidates | FPIR | threshold | FNIR | non-mated searches at or above |", "|---|---|---|---|---|",
        ]
        for kind, key in (("all hits", "open_set"), ("named hits only", "open_set_named")):
            for p in ident[key]:
                note = "" if p["resolvable"] else " (below 1/searches: not measurable)"
                thr = "—" if p["threshold"] is None else f"{p['threshold']:.3f}"
                lines.append(f"| {kind} | {_fmt_rate(p['target'])} | {thr} | {p['fnir']:.4f} | {p['errors']}{note} |")
        lines += ["", "Highest non-mated scores (a few label errors or look-alikes set the FPIR 0.1 % threshold):", "",
                  "| searched photo | best other-identity hit | in photo | score |", "|---|---|---|---|"]
        for a in s.get("highest_nonmated", []):
            lines.append(f"| {a['photo']} | {a['hit']} | {a['hit_photo']} | {a['score']:.3f} |")
        lines.append("")
    if "verification" in s:
        lines += ["## Verification (1:1, all pairs)", "", "| FAR | threshold (cosine) | TAR | impostor pairs at or above |",
                  "|---|---|---|---|"]
        for p in s["verification"]:
            note = "" if p["resolvable"] else " (below 1/pairs: not measurable)"
            lines.append(f"| {_fmt_rate(p['target'])} | {p['threshold']:.3f} | {p['tar']:.4f} | {p['errors']}{note} |")
        sc = s["scores"]
        lines += ["", f"Genuine mean {sc['genuine_mean']:.3f} (1st percentile {sc['genuine_p01']:.3f}); impostor mean "
                  f"{sc['impostor_mean']:.3f}, sd {sc['impostor_sd']:.3f}, max {sc['impostor_max']:.3f}. "
                  "At FAR 1e-5 only about N/100,000 impostor pairs decide the threshold: read it as approximate.", ""]
    if "odds_check" in s:
        lines += ["## Odds by quality class", "",
                  "Each hit shows the false-match rate of its comparison's quality class (probe face good/poor x gallery "
                  "face good/poor, from `sightline calibrate`; second-look/good and /poor: a probe face found only by the detector's "
                  "second, less strict look, against a good or poor face of a gallery photo). Measured here on this run's impostor "
                  "pairs:", "",
                  "| class | score | FMR shown | FMR measured | ratio | within 2x |", "|---|---|---|---|---|---|"]
        for c in s["odds_check"]:
            verdict = "not measurable (too few pairs)" if c["within_2x"] is None else ("yes" if c["within_2x"] else "**no**")
            table = "" if c.get("table", c["class"]) == c["class"] else f", {c['table']}'s table"
            lines.append(f"| {c['class']} ({c['pairs']:,} pairs{table}) | {c['score']:.3f} | {c['shown_fmr']:.1e} | "
                         f"{c['observed_fmr']:.1e} | {c['ratio']:.2f} | {verdict} |")
        lines.append("")
    if "calibration_check" in s:
        lines += ["## Calibration check", "", "The shipped table's false-match rate against this set's impostor pairs:", "",
                  "| threshold | table FMR | observed FMR |", "|---|---|---|"]
        for p in s["calibration_check"]:
            lines.append(f"| {p['threshold']:.3f} | {p['table_fmr']:.2e} | {p['observed_fmr']:.2e} |")
        lines.append("")
    lines += ["## Thresholds in use", "",
              f"possible >= {obs.threshold_possible:.3f}, strong >= {obs.threshold_strong:.3f} "
              f"({'from the calibration table' if obs.calibration else 'configured'}).", ""]
    if "quality" in s:
        q = s["quality"]
        fr = "—" if q["flagged_rank1"] is None else f"{q['flagged_rank1']:.3f}"
        okr = "—" if q["ok_rank1"] is None else f"{q['ok_rank1']:.3f}"
        lines += ["## Query quality", "",
                  f"- probes passing the quality checks: {q['ok']} (rank-1 {okr}); flagged: {q['flagged']} (rank-1 {fr})",
                  f"- reasons: {', '.join(f'{k} ×{v}' for k, v in q['reasons'].items()) or 'none'}", ""]
    if "false_leads" in s:
        fl = s["false_leads"]
        lines += ["## False leads (what an officer is handed)", "",
                  "The first hit an officer sees is a false lead when it is not the person: a labelled stranger, or an "
                  "unlabelled face in some gallery photo. Two display rules: **overall** shows hits at or above the overall "
                  f"'possible' threshold ({fl['threshold']:.3f}); **quality** (what Sightline does) at or above each "
                  "comparison's quality-class threshold (probe good/poor x gallery face good/poor)."
                  + (f" Probes degraded: **{obs.degrade}** (seed {obs.degrade_seed}, engine/degrade.py)." if obs.degrade else ""),
                  "", "| probes | n | no face | rule | shown | person first | stranger first | unlabelled first | false-lead rate |",
                  "|---|---|---|---|---|---|---|---|---|"]
        rows = [("all", fl["all"]), ("quality ok", fl["quality_ok"]), ("quality flagged", fl["quality_flagged"])]
        rows += [(f"face {k} px", v) for k, v in fl["by_width"].items()]
        for name, r in rows:
            for rule in fl["rules"]:
                x = r[rule]
                rate = "—" if x["false_lead_rate"] is None else f"{x['false_lead_rate']:.3f}"
                lines.append(f"| {name} | {r['probes']} | {r['no_face']} | {rule} | {x['shown']} | {x['mate_first']} | "
                             f"{x['false_stranger']} | {x['false_unlabelled']} | {rate} |")
        lines.append("")
    misses = worst_misses(obs, worst)
    if misses:
        lines += ["## Worst misses", "", "`worst_misses.png`: each row is the probe, the wrong first hit and the true mate.", "",
                  "| probe | first hit | score | mate rank | mate score |", "|---|---|---|---|---|"]
        for m in misses:
            lines.append(f"| {m.photo.rel} | {m.top_subject or 'unlabelled face in ' + m.top_source} | {m.top_score:.3f} | "
                         f"{m.mate_rank or '>' + str(TOP)} | {'—' if m.mate_score is None else f'{m.mate_score:.3f}'} |")
        lines.append("")
    if obs.consistency_max_diff is not None:
        lines += [f"Probe embeddings reproduce the search scores within {obs.consistency_max_diff:.1e}.", ""]
    lines += ["Figures: `det.png` (DET curves), `scores.png` (genuine/impostor score histograms), "
              "`worst_misses.png`; all numbers: `metrics.json`.", ""]
    return "\n".join(lines)


def _det_panel(ax: Any, x: np.ndarray, y: np.ndarray, xmin: float, marks: Sequence[float], color: str) -> None:
    """One log-log DET curve (points where both error rates are > 0), with grey lines at the operating points."""
    keep = (x > 0) & (y > 0)
    if keep.any():
        ax.loglog(x[keep], y[keep], lw=1.6, color=color)
    else:  # perfect separation: no error of either kind to draw
        ax.text(0.5, 0.5, "no errors at any threshold", ha="center", transform=ax.transAxes)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(xmin, 1)
    for mark in marks:
        ax.axvline(mark, color="grey", lw=0.6, ls=":")


def plot_det(obs: Observations, genuine: np.ndarray, impostor: np.ndarray, path: Path) -> None:
    """DET curves: verification (FNMR vs FMR) and open-set identification (FNIR vs FPIR), log axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    ax = axes[0]
    if len(genuine) and len(impostor):
        _t, fmr, fnmr = metrics.det_curve(genuine, impostor, 2000)
        _det_panel(ax, fmr, fnmr, min(1e-6, 0.5 / len(impostor)), FARS, "C0")
        ax.axvline(1 / len(impostor), color="red", lw=0.8, ls="--", label="1 / impostor pairs")
        ax.legend(loc="upper right", fontsize=8)
    ax.set(xlabel="false match rate (FMR)", ylabel="false non-match rate (FNMR)", title="Verification, all pairs")
    ax.grid(True, which="both", alpha=0.3)
    ax = axes[1]
    probes = [x for x in obs.searches if x.probe]
    if probes and obs.searches:
        mated = np.array([x.mate_score if x.mate_rank == 1 and x.mate_score is not None else -np.inf for x in probes])
        nonmated = np.array([x.nonmated_score if x.nonmated_score is not None else -np.inf for x in obs.searches])
        ts = np.unique(nonmated[np.isfinite(nonmated)])
        fpir = np.array([np.mean(nonmated >= t) for t in ts])
        fnir = np.array([np.mean(mated < t) for t in ts])
        _det_panel(ax, fpir, fnir, min(1e-4, 0.5 / len(nonmated)), FPIRS, "C1")
    ax.set(xlabel="false positive identification rate (FPIR)", ylabel="false negative identification rate (FNIR)",
           title=f"Open-set identification, gallery {len(obs.plan.gallery)}")
    ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"{obs.root.name}: {obs.model}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scores(obs: Observations, genuine: np.ndarray, impostor: np.ndarray, path: Path) -> None:
    """Genuine and impostor score histograms (log counts) with the band thresholds marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    bins = [float(b) for b in np.linspace(-0.3, 1.0, 131)]
    if len(impostor):
        ax.hist(impostor, bins=bins, alpha=0.6, label=f"impostor pairs ({len(impostor):,})", color="C3")
    if len(genuine):
        ax.hist(genuine, bins=bins, alpha=0.6, label=f"genuine pairs ({len(genuine):,})", color="C2")
    ax.set_yscale("log")
    for t, name in ((obs.threshold_possible, "possible"), (obs.threshold_strong, "strong")):
        ax.axvline(t, color="black", lw=0.8, ls="--")
        ax.text(t, ax.get_ylim()[1] * 0.5, f" {name} {t:.3f}", fontsize=8, rotation=90, va="top")
    ax.set(xlabel="cosine similarity", ylabel="pairs (log scale)", title=f"{obs.root.name}: score distributions")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def contact_sheet(obs: Observations, misses: list[SearchSeen], path: Path, cell: int = 128) -> None:
    """Rows of probe | wrong first hit | true mate, labelled with names and scores."""
    import io

    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=11)
    label_h, pad = 44, 6
    width = 3 * (cell + pad) + pad
    rows = max(1, len(misses))
    sheet = Image.new("RGB", (width, rows * (cell + label_h + pad) + pad + 20), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 4), "probe | wrong first hit | true mate" if misses else "no misses", fill="black", font=font)

    def tile(data: bytes | None) -> Image.Image:
        if not data:
            img = Image.new("RGB", (cell, cell), (200, 200, 200))
            ImageDraw.Draw(img).text((10, cell // 2 - 6), "not returned", fill="black", font=font)
            return img
        return Image.open(io.BytesIO(data)).convert("RGB").resize((cell, cell))

    for i, m in enumerate(misses):
        y = 20 + pad + i * (cell + label_h + pad)
        cells = [
            (m.thumbnail, f"{m.photo.rel}"[:22], "probe"),
            (obs.thumbnails.get(m.top_face_id or -1), (m.top_subject or f"unlabelled: {m.top_source}")[:22],
             f"{m.top_score:.3f} rank 1"),
            (obs.thumbnails.get(m.mate_face_id or -1), m.photo.identity[:22],
             f"{m.mate_score:.3f} rank {m.mate_rank}" if m.mate_score is not None else f"rank > {TOP}"),
        ]
        for k, (data, l1, l2) in enumerate(cells):
            x = pad + k * (cell + pad)
            sheet.paste(tile(data), (x, y))
            draw.text((x, y + cell + 3), l1, fill="black", font=font)
            draw.text((x, y + cell + 18), l2, fill="darkred" if k == 1 else "black", font=font)
    sheet.save(path)


# -- calibration -----------------------------------------------------------------------------------
def build_calibration(
    obs: Observations,
    *,
    possible_fmr: float,
    strong_fmr: float,
    source: str,
    rounds: int = 1000,
) -> Calibration:
    """A score -> false-match-rate table from all impostor pairs, with band thresholds at the given FMRs.

    Faces found only by the detector's second look are left out: they have a class of their own
    (calibration.SECOND_LOOK, in `pairs`)."""
    keep = [i for i in range(len(obs.labels)) if not (obs.embedded_second and obs.embedded_second[i])]
    emb, labels = obs.embeddings[keep], [obs.labels[i] for i in keep]
    genuine, impostor = metrics.pair_scores(emb, labels)
    n = len(impostor)
    if n == 0:
        raise ValueError("no impostor pairs: the set needs at least two identities with a face")
    grid, fmr = fmr_table(impostor)
    t_possible = _round_up(metrics.threshold_at_rate(impostor, possible_fmr))
    t_strong = _round_up(metrics.threshold_at_rate(impostor, strong_fmr))
    tail_pairs = metrics.high_impostor_pairs(emb, labels, min(t_possible, t_strong) - 0.05)
    boot = {name: metrics.bootstrap_fmr_interval(labels, tail_pairs, t, rounds=rounds)
            for name, t in (("possible", t_possible), ("strong", t_strong))}
    return Calibration(
        model_sha256=obs.recognizer_sha256,
        source=source,
        impostor_pairs=n,
        scores=tuple(float(x) for x in grid),
        fmr=tuple(float(x) for x in fmr),
        threshold_possible=t_possible,
        threshold_strong=t_strong,
        fmr_possible=boot["possible"][0],
        fmr_strong=boot["strong"][0],
        genuine_pairs=len(genuine),
        tar_possible=metrics.share_at_or_above(genuine, t_possible),
        tar_strong=metrics.share_at_or_above(genuine, t_strong),
        fmr_possible_interval=(boot["possible"][1], boot["possible"][2]),
        fmr_strong_interval=(boot["strong"][1], boot["strong"][2]),
        settings=dict(obs.config),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        pairs=pair_tables(obs, possible_fmr, strong_fmr),
    )


ODDS_CHECK_FMRS = (1e-2, 1e-3, 1e-4, 1e-5)
MIN_EXPECTED_PAIRS = 10  # below this many expected impostor pairs a rate is noise, not a measurement


def odds_check(obs: Observations) -> list[dict[str, Any]]:
    """Per quality class: at the scores where the table its hits show says FMR 1e-2 ... 1e-5,
    the false-match rate measured on this run's impostor pairs, their ratio, and whether it is within a
    factor of 2 (None when fewer than MIN_EXPECTED_PAIRS pairs are expected: not measurable here)."""
    assert obs.calibration is not None
    cal = obs.calibration
    out = []
    for name, imp in class_scores(obs).items():
        # A second-look class without a table of its own is shown poor-poor's odds (Calibration.table_for): check those.
        table = cal.table_for(False, name == calib.SECOND_LOOK_GOOD, True) if name in calib.SECOND_LOOK_CLASSES else cal.pairs.get(name)
        if table is None or len(imp) == 0:
            continue
        shown_as = name if cal.pairs.get(name) is table else next((k for k, v in cal.pairs.items() if v is table), name)
        for target in ODDS_CHECK_FMRS:
            grid_fmr = np.asarray(table.fmr)
            at = np.flatnonzero(grid_fmr <= target)
            if len(at) == 0:
                continue
            score = float(table.scores[at[0]])
            shown = table.false_match_rate(score)
            seen = metrics.share_at_or_above(imp, score)
            measurable = shown * len(imp) >= MIN_EXPECTED_PAIRS
            ratio = seen / shown if shown > 0 else math.inf
            out.append({"class": name, "table": shown_as, "score": score, "shown_fmr": shown, "observed_fmr": seen,
                        "pairs": int(len(imp)), "ratio": ratio, "within_2x": (0.5 <= ratio <= 2.0) if measurable else None})
    return out


def fmr_table(impostor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scores, false-match rates) of a monotone table from impostor scores: every 0.01 of score over the body,
    and 20 points per decade of FMR in the tail, down to 1/n."""
    n = len(impostor)
    imp = np.sort(impostor.astype(np.float64))
    body = np.arange(math.floor(imp[0] * 100) / 100, imp[-1], 0.01)
    tail_rates = 10 ** -np.arange(0, math.log10(n), 0.05)
    tail = np.array([imp[min(n - 1, max(0, n - int(round(r * n))))] for r in tail_rates])
    grid = np.unique(np.round(np.concatenate([body, tail, [imp[-1]]]), 5))
    counts = n - np.searchsorted(imp, grid, side="left")
    fmr = np.maximum(counts / n, 1.0 / n)
    return grid, np.minimum.accumulate(fmr)  # non-increasing despite rounding


# A quality class gets a table when its "possible" threshold rests on at least this many impostor pairs
# (100,000 pairs at the default FMR 1e-4); rarer classes show the overall odds.
MIN_PAIRS_AT_POSSIBLE = 10


def min_class_pairs(possible_fmr: float) -> int:
    """Impostor pairs a quality class needs for a table of its own."""
    return math.ceil(MIN_PAIRS_AT_POSSIBLE / possible_fmr)


def class_scores(obs: Observations) -> dict[str, np.ndarray]:
    """Impostor scores per comparison class (calibration.CLASSES).

    Quality pairs: all pairs of the clean embeddings and, when collected, the degraded copies of the first seed
    (FIELD_SEED; a copy is never paired with the photo it came from). Second-look classes: each face found only
    by the detector's second look (eval's probes; calibrate's copies of every seed) against every face indexed
    from the gallery photos of other identities, by that gallery face's quality: the comparisons a search makes
    (calibration.SECOND_LOOK). The quality pairs leave the second-look faces out."""
    n = len(obs.labels)
    emb = obs.embeddings
    labels, ok, origin = list(obs.labels), list(obs.embedded_ok or [True] * n), list(obs.embedded)
    second = list(obs.embedded_second or [False] * n)
    pooled = [True] * n  # rows the quality pairs use
    if len(obs.field_embeddings):
        m = len(obs.field_labels)
        emb = np.concatenate([emb, obs.field_embeddings])
        labels += obs.field_labels
        ok += obs.field_ok
        origin += obs.field_origin
        second += obs.field_second or [False] * m
        pooled += [s == FIELD_SEED for s in obs.field_seed] if obs.field_seed else [True] * m
    look = np.asarray(second, dtype=bool)
    rest = np.flatnonzero(~look & np.asarray(pooled, dtype=bool))
    by = metrics.impostor_scores_by_class(emb[rest], [labels[i] for i in rest], [ok[i] for i in rest], [origin[i] for i in rest])
    out = {name: by[i] for i, name in enumerate(calib.QUALITY_PAIRS)}
    probes = np.flatnonzero(look)
    g_ok = np.asarray(obs.gallery_ok, dtype=bool)
    for name, side in ((calib.SECOND_LOOK_GOOD, np.flatnonzero(g_ok)), (calib.SECOND_LOOK_POOR, np.flatnonzero(~g_ok))):
        out[name] = metrics.impostor_scores_across(
            emb[probes], [labels[i] for i in probes], [origin[i] for i in probes],
            obs.gallery_embeddings[side], [obs.gallery_identity[i] for i in side], [obs.gallery_origin[i] for i in side])
    return out


def pair_tables(obs: Observations, possible_fmr: float, strong_fmr: float) -> dict[str, calib.PairTable]:
    """A score -> FMR table and band thresholds per quality class with enough impostor pairs; none without
    degraded copies (clean photos alone hold too few poor faces to say how poor ones behave)."""
    out: dict[str, calib.PairTable] = {}
    if not len(obs.field_embeddings):
        return out
    for name, imp in class_scores(obs).items():
        if len(imp) < min_class_pairs(possible_fmr):
            logger.info("quality class %s: %d impostor pairs, too few for a table", name, len(imp))
            continue
        grid, fmr = fmr_table(imp)
        out[name] = calib.PairTable(
            impostor_pairs=len(imp), scores=tuple(float(x) for x in grid), fmr=tuple(float(x) for x in fmr),
            threshold_possible=_round_up(metrics.threshold_at_rate(imp, possible_fmr)),
            threshold_strong=_round_up(metrics.threshold_at_rate(imp, strong_fmr)),
        )
    return out


def _round_up(x: float, digits: int = 3) -> float:
    """Round a threshold up (a little stricter), so the stated false-match rate still holds."""
    f = 10**digits
    return math.ceil(x * f - 1e-9) / f
