"""Shared helpers for Sightline's benchmarks: machine facts, caches, timing, and real face embeddings.

Benchmarks run from the repository root (`python bench/search.py ...`); this module puts the root on
`sys.path` so `engine` imports without installing the package.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHARED_FACES = REPO.parent / "shared" / "faces"
CALIB_DIR = SHARED_FACES / "calib"
DEV_DIR = SHARED_FACES / "dev"

logger = logging.getLogger(__name__)


def setup_logging(verbose: bool = False) -> None:
    """Progress goes to stderr, so stdout keeps only the results."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def cache_dir() -> Path:
    """Where embeddings and built indexes are kept between runs: outside the repository, never committed."""
    root = Path(os.environ.get("SIGHTLINE_BENCH_CACHE", Path.home() / ".cache" / "sightline-bench"))
    root.mkdir(parents=True, exist_ok=True)
    return root


# -- the machine ------------------------------------------------------------------------------
def load_avg() -> tuple[float, float, float]:
    """The 1/5/15-minute load averages (other people's work on this machine shows up here)."""
    return os.getloadavg()


def machine() -> dict[str, str | int | float]:
    """What a result must be read against: cores, load, CPU, date."""
    l1, l5, l15 = load_avg()
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ"),
        "nproc": os.cpu_count() or 1,
        "load1": round(l1, 2),
        "load5": round(l5, 2),
        "load15": round(l15, 2),
        "cpu": cpu.replace(" ", "_"),
    }


def rss_bytes() -> int:
    """Resident set size of this process, from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# -- timing -----------------------------------------------------------------------------------
class Stopwatch:
    """`with Stopwatch() as t: ...; t.s` - elapsed seconds of a block."""

    def __enter__(self) -> Stopwatch:
        self.t0 = time.perf_counter()
        self.s = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.s = time.perf_counter() - self.t0


def percentiles_ms(seconds: Iterable[float]) -> dict[str, float]:
    """p50, p90, p99 and mean of a list of durations, in milliseconds."""
    a = np.asarray(list(seconds), dtype=np.float64) * 1000.0
    if a.size == 0:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan"), "mean": float("nan")}
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(a.mean())}


# -- output -----------------------------------------------------------------------------------
def fmt(value: object) -> str:
    """A value for a key=value line: floats to 4 significant digits, no spaces."""
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        return f"{value:.4g}"
    return str(value).replace(" ", "_")


def kv_line(values: Mapping[str, object]) -> str:
    """The single final `key=value key=value` line every bench prints."""
    return " ".join(f"{k}={fmt(v)}" for k, v in values.items())


def emit(text: str = "") -> None:
    """A line of results on stdout (progress and diagnostics go to the log on stderr)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def stable_hash(obj: object, n: int = 12) -> str:
    """A short, stable hash of a JSON-able object (cache keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


# -- real embeddings --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RealEmbeddings:
    """One L2-normalised embedding per calibration photo (its primary face), with its identity."""

    vectors: np.ndarray  # (n, 512) float32
    identities: np.ndarray  # (n,) int32, 0..k-1
    names: list[str]  # identity names, indexed by identities

    def same_identity_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Index pairs (i, j), i < j, of photos of the same person."""
        left: list[int] = []
        right: list[int] = []
        for ident in np.unique(self.identities):
            idx = np.flatnonzero(self.identities == ident)
            for a in range(len(idx)):
                for b in range(a + 1, len(idx)):
                    left.append(int(idx[a]))
                    right.append(int(idx[b]))
        return np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64)


def calib_photos(folder: Path = CALIB_DIR) -> list[tuple[Path, str]]:
    """(path, identity) of every photo in a labelled set laid out as `<identity>/<n>.jpg`."""
    return [(p, p.parent.name) for p in sorted(folder.glob("*/*.jpg"))]


def real_embeddings(folder: Path = CALIB_DIR, *, refresh: bool = False) -> RealEmbeddings:
    """Embed every calibration photo once with the engine's FaceModel, cached as .npy outside the repo.

    The cache is keyed by the recognizer's SHA-256, the detector file and the photo list, so a model
    change recomputes it. Photos where no face is found are skipped.
    """
    from engine.config import DEFAULT_RECOGNIZER, EngineConfig
    from engine.faces import FaceModel, primary_face
    from engine.images import decode, file_sha256

    config = EngineConfig()
    photos = calib_photos(folder)
    rec = config.resolved_model_dir() / (config.recognizer_file or DEFAULT_RECOGNIZER)
    key = stable_hash(
        {
            "photos": [str(p.relative_to(folder)) for p, _ in photos],
            "rec": file_sha256(rec) if rec.is_file() else "absent",
            "det_size": config.det_size,
            "rule": config.primary_rule,
        }
    )
    base = cache_dir() / f"real-{folder.name}-{key}"
    vec_path, id_path, names_path = (base.with_suffix(s) for s in (".vectors.npy", ".ids.npy", ".names.json"))
    if not refresh and vec_path.exists() and id_path.exists() and names_path.exists():
        return RealEmbeddings(np.load(vec_path), np.load(id_path), json.loads(names_path.read_text()))

    logger.info("embedding %d calibration photos with the engine's FaceModel (cached afterwards)", len(photos))
    model = FaceModel(config)
    names = sorted({name for _, name in photos})
    number = {name: i for i, name in enumerate(names)}
    vecs: list[np.ndarray] = []
    ids: list[int] = []
    t0 = time.perf_counter()
    for k, (path, name) in enumerate(photos):
        d = decode(path.read_bytes(), max_bytes=config.max_image_bytes, max_pixels=config.max_image_pixels,
                   max_side=config.max_side)
        faces = model.detect_faces(d.bgr)
        if not faces:
            logger.warning("no face in %s; skipped", path)
            continue
        boxes = np.stack([f.box for f in faces])
        h, w = d.bgr.shape[:2]
        chosen = faces[primary_face(boxes, w, h, config.primary_rule)]
        emb = model.embed([chosen])[0].embedding
        assert emb is not None
        vecs.append(emb)
        ids.append(number[name])
        if (k + 1) % 500 == 0:
            logger.info("  %d/%d photos (%.1f/s)", k + 1, len(photos), (k + 1) / (time.perf_counter() - t0))
    real = RealEmbeddings(np.stack(vecs).astype(np.float32), np.asarray(ids, dtype=np.int32), names)
    np.save(vec_path, real.vectors)
    np.save(id_path, real.identities)
    names_path.write_text(json.dumps(names))
    logger.info("cached %d real embeddings in %s", len(vecs), vec_path)
    return real
