"""Index search benchmark on face-like embeddings, through the engine's own index (HammingIndex by default,
`--index usearch` for the HNSW graph).

Isotropic random vectors are far harder for HNSW than real faces (real ones have an effective
dimension of ~190 of 512), so this bench shapes its data on the real thing:

1. Every photo in ../shared/faces/calib is embedded once with the engine's FaceModel (cached as .npy
   in ~/.cache/sightline-bench, never in the repository).
2. From those embeddings it takes the mean, the between-identity covariance (total minus
   within-identity) and the within-identity covariance. Identity centres are drawn from
   N(mean, between); each face of an identity is its centre plus N(0, s^2 * within), L2-normalised,
   with s tuned so the mean same-person cosine equals the real one (~0.61). Faces per identity
   follow the calib set's own distribution (many with one photo, some with up to ten). The bench
   prints real-versus-synthetic same-person and stranger similarities so the match can be checked.
   `--centres total` draws centres from the total covariance instead (stranger similarities then
   come out narrower than real, so the data is easier).
3. Queries are fresh faces (not in the index) of identities that are in it. Ground truth is an
   exact float32 scan. "Mate recall" is the share of the same-identity faces in the exact top-10
   that the index's top-k returns; recall@10 is the overlap with the exact top-10.

Built indexes are cached in ~/.cache/sightline-bench keyed by data and index parameters, so a
rerun only searches. Everything the product does goes through engine.index.UsearchIndex:
`add` to build, `save`, `load` (Index.restore) at start-up and `search` for single queries.
Like the engine (EngineConfig.index_dims), the index holds the faces projected to 192 dimensions with
the model's shipped basis by default (`--pca 0`: the full 512-d vectors); ground truth stays float32 512-d.

The default index (engine.hamming.HammingIndex, issue 15) is built in a few seconds per 100 k faces, so it is
not cached: per code model (`--codes`) the bench adds the gallery in batches, saves it, loads it in a fresh
process (start-up time, RSS), then times single queries per `--candidates` value.

Examples: python bench/search.py --n 1000000                      (the engine's default index and settings)
          python bench/search.py --n 1000000 --candidates 1000,2000 --codes shipped,random512
          python bench/search.py --n 1000000 --index usearch --ef auto,128,512
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (bench/ is not a package)

from engine import calibration, codes, projection, scan  # noqa: E402
from engine.config import DEFAULT_RECOGNIZER, EngineConfig  # noqa: E402
from engine.hamming import HammingIndex  # noqa: E402
from engine.images import file_sha256  # noqa: E402
from engine.index import UsearchIndex, auto_expansion, sidecar_path  # noqa: E402
from engine.projection import Projection  # noqa: E402

logger = logging.getLogger("bench.search")

MAP_GALLERY_FROM = 2_000_000  # galleries this large are drawn into, and read from, a memory-mapped file
DATA_VERSION = 2  # bump when the generator changes, so cached indexes are not reused
NDIM = 512
TARGET_P50_MS = 2.0
TARGET_MATE_RECALL = 0.99
TARGET_BYTES_PER_FACE = 1200
TARGET_LOAD_S = 5.0


# -- face-like data ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FaceDistribution:
    """Identity centres and same-person spread shaped like real embeddings."""

    mean: np.ndarray  # (512,)
    centre_root: np.ndarray  # (512, 512): centre = mean + z @ centre_root
    spread_root: np.ndarray  # (512, 512): face = centre + spread * z @ spread_root
    spread: float
    spread_sigma: float  # per-face log-normal variation of the spread (some photos are much worse)
    photos_per_identity: np.ndarray  # empirical distribution to sample from

    def centres(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n identity centres (not normalised)."""
        z = rng.standard_normal((n, NDIM), dtype=np.float32)
        return self.mean + z @ self.centre_root

    def faces(self, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
        """One L2-normalised face per centre row."""
        z = rng.standard_normal(centres.shape, dtype=np.float32)
        g = rng.standard_normal((len(centres), 1), dtype=np.float32)
        return place_faces(centres, z @ self.spread_root, g, self.spread, self.spread_sigma)


def place_faces(centres: np.ndarray, noise: np.ndarray, g: np.ndarray, spread: float, sigma: float) -> np.ndarray:
    """centre + spread * exp(sigma * g - sigma^2 / 2) * noise, L2-normalised (g: one N(0, 1) per face)."""
    scale = spread * np.exp(sigma * g - sigma * sigma / 2)
    x = centres + scale.astype(np.float32) * noise
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _psd_root(cov: np.ndarray) -> np.ndarray:
    """A matrix R with R.T @ R == cov (negative eigenvalues from estimation noise clipped to 0)."""
    w, v = np.linalg.eigh(cov)
    w = np.clip(w, 0.0, None)
    return (v * np.sqrt(w)).T.astype(np.float32)


def effective_dim(x: np.ndarray) -> float:
    """Participation ratio of the covariance spectrum: (sum l)^2 / sum l^2."""
    ev = np.linalg.eigvalsh(np.cov(np.asarray(x, dtype=np.float64).T))
    return float(ev.sum() ** 2 / (ev**2).sum())


def similarity_stats(x: np.ndarray, ident: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
    """Same-person cosine (all pairs) and stranger cosine (random pairs) of labelled unit vectors."""
    order = np.argsort(ident, kind="stable")
    ids_sorted = ident[order]
    starts = np.flatnonzero(np.r_[True, ids_sorted[1:] != ids_sorted[:-1]])
    ends = np.r_[starts[1:], len(ids_sorted)]
    same: list[np.ndarray] = []
    for a, b in zip(starts, ends, strict=True):
        if b - a >= 2:
            g = x[order[a:b]].astype(np.float64)
            s = g @ g.T
            same.append(s[np.triu_indices(b - a, 1)])
    same_all = np.concatenate(same) if same else np.zeros(1)
    i = rng.integers(0, len(x), 200_000)
    j = rng.integers(0, len(x), 200_000)
    keep = ident[i] != ident[j]
    imp = np.einsum("ij,ij->i", x[i[keep]].astype(np.float64), x[j[keep]].astype(np.float64))
    return {
        "same_mean": float(same_all.mean()),
        "same_std": float(same_all.std()),
        "same_p5": float(np.percentile(same_all, 5)),
        "stranger_mean": float(imp.mean()),
        "stranger_std": float(imp.std()),
        "stranger_p999": float(np.percentile(imp, 99.9)),
    }


def fit_distribution(real: common.RealEmbeddings, centres_from: str) -> tuple[FaceDistribution, dict[str, float]]:
    """Fit the generator to the real embeddings and tune the spread to the real same-person cosine."""
    x = real.vectors.astype(np.float64)
    ident = real.identities
    mean = x.mean(axis=0)
    total = np.cov(x.T)
    residuals = []
    groups = 0
    for k in np.unique(ident):
        g = x[ident == k]
        if len(g) >= 2:
            residuals.append(g - g.mean(axis=0))
            groups += 1
    r = np.concatenate(residuals)
    within = r.T @ r / (len(r) - groups)
    centre_cov = total if centres_from == "total" else total - within
    _, counts = np.unique(ident, return_counts=True)
    rng = np.random.default_rng(12345)
    real_stats = similarity_stats(real.vectors, ident, rng)
    dist = FaceDistribution(
        mean=mean.astype(np.float32),
        centre_root=_psd_root(centre_cov),
        spread_root=_psd_root(within),
        spread=1.0,
        spread_sigma=0.0,
        photos_per_identity=counts,
    )
    # Tune the spread (scale, and its per-face variation) so that two faces of one identity have the
    # real same-person cosine: its mean by bisection on the scale, its spread by a search on sigma.
    fit_rng = np.random.default_rng(1)
    c = dist.centres(fit_rng, 4000)
    noise = [fit_rng.standard_normal(c.shape, dtype=np.float32) @ dist.spread_root for _ in range(2)]
    gs = [fit_rng.standard_normal((len(c), 1), dtype=np.float32) for _ in range(2)]

    def same_cos(spread: float, sigma: float) -> np.ndarray:
        """Cosines of the fitting pairs at this spread."""
        a, b = (place_faces(c, noise[i], gs[i], spread, sigma) for i in range(2))
        return np.einsum("ij,ij->i", a, b)

    def spread_for(sigma: float) -> float:
        """The spread that gives the real same-person mean at this sigma."""
        lo, hi = 0.05, 5.0
        for _ in range(25):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if float(same_cos(mid, sigma).mean()) > real_stats["same_mean"] else (lo, mid)
        return (lo + hi) / 2

    best = min(
        ((abs(float(same_cos(spread_for(sg), sg).std()) - real_stats["same_std"]), sg) for sg in np.arange(0.0, 1.21, 0.05)),
    )[1]
    dist = FaceDistribution(dist.mean, dist.centre_root, dist.spread_root, spread_for(best), float(best), counts)
    info = {f"real_{k}": v for k, v in real_stats.items()}
    info["real_effdim"] = effective_dim(real.vectors)
    info["spread"] = dist.spread
    info["spread_sigma"] = dist.spread_sigma
    return dist, info


@dataclass(frozen=True, slots=True)
class Dataset:
    """A gallery of face-like vectors with identity labels, and held-out queries of gallery identities."""

    gallery: np.ndarray  # (n, 512) float32, unit rows, in insertion order
    gallery_ident: np.ndarray  # (n,) int64
    queries: np.ndarray  # (q, 512) float32
    query_ident: np.ndarray  # (q,) int64


def make_dataset(dist: FaceDistribution, n: int, n_queries: int, seed: int, gallery_file: Path | None = None) -> Dataset:
    """Draw identities with the calib set's photos-per-identity distribution until there are n faces.

    With `gallery_file`, the shuffled gallery is written there (a .npy) and returned memory-mapped, so the gallery is
    never held twice (3 M faces: 6 GB instead of 12); the data are the same either way.
    """
    rng = np.random.default_rng(seed)
    mean_per = float(dist.photos_per_identity.mean())
    counts = rng.choice(dist.photos_per_identity, size=int(n / mean_per * 1.1) + 16)
    cum = np.cumsum(counts)
    k = int(np.searchsorted(cum, n)) + 1
    counts = counts[:k].copy()
    counts[-1] -= int(cum[k - 1] - n)
    ident = np.repeat(np.arange(k, dtype=np.int64), counts)
    gallery = np.empty((n, NDIM), dtype=np.float32)
    centres = np.empty((k, NDIM), dtype=np.float32)
    chunk = 100_000
    for a in range(0, k, chunk):
        centres[a : a + chunk] = dist.centres(rng, min(chunk, k - a))
    for a in range(0, n, chunk):
        gallery[a : a + chunk] = dist.faces(rng, centres[ident[a : a + chunk]])
    perm = rng.permutation(n)  # faces arrive in no particular order
    if gallery_file is None:
        gallery = gallery[perm]
    else:
        shuffled = np.lib.format.open_memmap(gallery_file, mode="w+", dtype=np.float32, shape=(n, NDIM))
        for a in range(0, n, chunk):
            shuffled[a : a + chunk] = gallery[perm[a : a + chunk]]
        shuffled.flush()
        del gallery, shuffled
        gallery = np.load(gallery_file, mmap_mode="r")
    ident = ident[perm]
    q_ident = rng.choice(k, size=n_queries, replace=n_queries > k)
    queries = dist.faces(rng, centres[q_ident])
    return Dataset(gallery, ident, queries, q_ident.astype(np.int64))


def cached_dataset(dist: FaceDistribution, n: int, n_queries: int, seed: int, key: str) -> Dataset:
    """make_dataset, kept as .npy files in the bench cache (a 1 M gallery takes minutes to draw on a busy machine)."""
    base = common.cache_dir() / f"data-{key}"
    parts = ("gallery", "gallery_ident", "queries", "query_ident")
    big = n >= MAP_GALLERY_FROM  # memory-mapped: read from the page cache, never held twice
    if all(base.with_suffix(f".{p}.npy").exists() for p in parts):
        return Dataset(*(np.load(base.with_suffix(f".{p}.npy"), mmap_mode="r" if big and p == "gallery" else None)
                         for p in parts))
    gallery_file = base.with_suffix(".gallery.npy")
    data = make_dataset(dist, n, n_queries, seed, gallery_file.with_suffix(".tmp.npy") if big else None)
    for p in parts:
        if big and p == "gallery":
            gallery_file.with_suffix(".tmp.npy").replace(gallery_file)
        else:
            np.save(base.with_suffix(f".{p}.npy"), getattr(data, p))
    return data


def exact_topk(gallery: np.ndarray, queries: np.ndarray, k: int, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Exact float32 top-k row numbers and cosines (rows are unit), best first, for every query."""
    q = len(queries)
    best_s = np.full((q, k), -np.inf, dtype=np.float32)
    best_i = np.zeros((q, k), dtype=np.int64)
    for a in range(0, len(gallery), chunk):
        s = queries @ gallery[a : a + chunk].T
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], axis=1)
        cand_i = np.concatenate([best_i, part + a], axis=1)
        top = np.argsort(-cand_s, axis=1)[:, :k]
        best_s = np.take_along_axis(cand_s, top, 1)
        best_i = np.take_along_axis(cand_i, top, 1)
    return best_i, best_s


def index_projection(real: common.RealEmbeddings, dims: int, basis: str) -> Projection:
    """The projection the index holds: the engine's shipped basis for the model, or one fitted here.

    "fit" fits engine.projection.fit on the bench's cached calib embeddings (how the first measurements
    were made); "shipped" loads engine/calibration/<model sha256>.projection.npz, as Engine.open does.
    """
    if basis == "fit":
        return projection.fit(real.vectors, "bench", "bench: calib primary faces").projection(dims)
    cfg = EngineConfig()
    rec = cfg.resolved_model_dir() / (cfg.recognizer_file or DEFAULT_RECOGNIZER)
    shipped = projection.for_model(file_sha256(rec), dims)
    if shipped is None:
        raise SystemExit(f"no shipped projection for {rec.name} at {dims} dims: run `sightline calibrate`, "
                         "or pass --basis fit")
    return shipped


# -- index build / load -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class IndexParams:
    """What a built index depends on."""

    dtype: str
    connectivity: int
    expansion_add: int
    ndim: int = NDIM  # < 512: the index holds a projection (--pca, as EngineConfig.index_dims)


def build_index(path: Path, data: Dataset, p: IndexParams, ef: int, checkpoint: int) -> dict[str, float]:
    """Build through UsearchIndex.add in batches (as Engine.rebuild_index does) and save it.

    Every `checkpoint` faces the partial index is saved next to the final one, and a later run
    resumes from it: a 1 M build on a shared 2-core machine can outlast a working session.
    """
    gc.collect()
    rss0 = common.rss_bytes()
    partial = path.with_name(path.name + ".partial")
    state_path = path.with_name(path.name + ".partial.json")
    index = UsearchIndex(partial, ndim=p.ndim, dtype=p.dtype, connectivity=p.connectivity, expansion_add=p.expansion_add,
                         expansion_search=ef)
    state: dict[str, Any] = {"done": 0, "build_s": 0.0, "cpu_s": 0.0, "load1": []}
    if state_path.exists() and index.load():
        state = json.loads(state_path.read_text())
        state["done"] = len(index)  # keys go in in order; the file, not the note beside it, says how far it got
        logger.info("resuming the build at %d faces (%.0f s spent so far)", state["done"], state["build_s"])
    resumed = state["done"] > 0
    keys = np.arange(1, len(data.gallery) + 1, dtype=np.int64)  # face row ids start at 1
    batch = 20_000  # MetadataStore.iter_embeddings' batch
    t0 = time.perf_counter()
    c0 = time.process_time()
    for a in range(int(state["done"]), len(keys), batch):
        index.add(keys[a : a + batch], data.gallery[a : a + batch])
        done = min(a + batch, len(keys))
        if done % checkpoint == 0 and done < len(keys):
            index.save()
            el = time.perf_counter() - t0
            state = {"done": done, "build_s": state["build_s"] + el, "cpu_s": state["cpu_s"] + time.process_time() - c0,
                     "load1": [*state["load1"], common.load_avg()[0]]}
            state_path.write_text(json.dumps(state))
            t0 = time.perf_counter()
            c0 = time.process_time()
            logger.info("  built %d/%d (%.0f s so far, load %.1f); checkpoint saved", done, len(keys),
                        state["build_s"], common.load_avg()[0])
    build_s = state["build_s"] + time.perf_counter() - t0
    cpu_s = state["cpu_s"] + time.process_time() - c0
    loads = [*state["load1"], common.load_avg()[0]]
    rss_delta = float("nan") if resumed else common.rss_bytes() - rss0
    index.path = path
    with common.Stopwatch() as t_save:
        index.save()
    info = {
        "build_s": build_s,
        "build_cpu_s": cpu_s,
        "build_load1": float(np.mean(loads)),
        "build_rss_delta": rss_delta,
        "save_s": t_save.s,
        "memory_bytes": index.memory_bytes(),
    }
    del index
    gc.collect()
    for f in (partial, state_path):
        f.unlink(missing_ok=True)
    return info


def probe_load(path: str, p: IndexParams, ef: int) -> dict[str, float]:
    """Start-up cost in a fresh process: UsearchIndex.load() (Index.restore), RSS delta, keys(); and a view."""
    from usearch.index import Index

    rss0 = common.rss_bytes()
    index = UsearchIndex(Path(path), ndim=p.ndim, dtype=p.dtype, connectivity=p.connectivity, expansion_add=p.expansion_add,
                         expansion_search=ef)
    with common.Stopwatch() as t:
        ok = index.load()
    if not ok:
        raise RuntimeError(f"could not load {path}")
    rss_delta = common.rss_bytes() - rss0
    with common.Stopwatch() as t_keys:  # Engine.reconcile_index compares keys with the database
        keys = index.keys()
        _ = int(keys.sum())
    mem = index.memory_bytes()
    del index, keys
    gc.collect()
    with common.Stopwatch() as t_view:
        view = Index.restore(path, view=True)
    assert view is not None
    return {"load_s": t.s, "load_rss_delta": rss_delta, "keys_s": t_keys.s, "view_s": t_view.s,
            "loaded_memory_bytes": mem}


# -- measurements -----------------------------------------------------------------------------
def mate_recall(
    found: np.ndarray, truth10: np.ndarray, g_ident: np.ndarray, q_ident: np.ndarray,
    truth_sim: np.ndarray | None = None, min_sim: float = -1.0,
) -> float:
    """Share of the same-identity faces in the exact top-10 (optionally only those with cosine >= min_sim)
    that `found` (gallery rows, any k) contains."""
    hit = total = 0
    for n, (f, t, qi) in enumerate(zip(found, truth10, q_ident, strict=True)):
        mates = {int(r) for j, r in enumerate(t) if g_ident[r] == qi and (truth_sim is None or truth_sim[n, j] >= min_sim)}
        total += len(mates)
        hit += len(mates & {int(r) for r in f})
    return hit / total if total else float("nan")


def recall_at(found: np.ndarray, truth10: np.ndarray) -> float:
    """Overlap of the index's top-10 with the exact top-10."""
    return float(np.mean([len(set(f[:10].tolist()) & set(t.tolist())) / 10 for f, t in zip(found, truth10, strict=True)]))


def single_queries(index: UsearchIndex | HammingIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[float], list[float]]:
    """Search one query at a time through UsearchIndex.search: gallery rows found, wall and CPU seconds per query.

    usearch answers a single query on the calling thread, so its thread CPU time is what the query
    would take on an idle core, whatever else the machine is doing.
    """
    for q in queries[: min(50, len(queries))]:  # warm-up: page in the graph
        index.search(q, k)
    rows = np.full((len(queries), k), -1, dtype=np.int64)
    wall: list[float] = []
    cpu: list[float] = []
    for i, q in enumerate(queries):
        c0 = time.thread_time()
        t0 = time.perf_counter()
        keys, _ = index.search(q, k)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
        rows[i, : len(keys)] = keys - 1
    return rows, wall, cpu


def query_row(index: UsearchIndex | HammingIndex, data: Dataset, truth: np.ndarray, truth_sim: np.ndarray,
              args: argparse.Namespace, timed: int | None = None, threads: int = 1) -> dict[str, object]:
    """Mate recall (k=10 and k=--fetch, and of the mates shown at --threshold) and recall@10 over every query, with the
    wall and CPU latency of those single queries; with `timed`, a HammingIndex's recall is measured on one thread (the
    same results: the split only changes who scans what; on a busy machine a split query waits for its second thread to be
    scheduled) and the latency of the first `timed` queries again, with its scan split over `threads`."""
    if timed is not None and isinstance(index, HammingIndex):
        index.threads = 1
    found, times, cpu_times = single_queries(index, data.queries, 10)
    found_f, times_f, _ = single_queries(index, data.queries, args.fetch)
    if timed is not None and isinstance(index, HammingIndex):
        index.threads = threads
        _, times, cpu_times = single_queries(index, data.queries[:timed], 10)
        _, times_f, _ = single_queries(index, data.queries[:timed], args.fetch)
    lat, lat_cpu, lat_f = (common.percentiles_ms(t) for t in (times, cpu_times, times_f))
    return {
        "p50_ms": lat["p50"], "p99_ms": lat["p99"], "cpu_p50_ms": lat_cpu["p50"], "cpu_p99_ms": lat_cpu["p99"],
        "mate_recall": mate_recall(found, truth, data.gallery_ident, data.query_ident), "recall10": recall_at(found, truth),
        f"p50_k{args.fetch}_ms": lat_f["p50"], f"p99_k{args.fetch}_ms": lat_f["p99"],
        f"mate_recall_k{args.fetch}": mate_recall(found_f, truth, data.gallery_ident, data.query_ident),
        "mate_recall_shown": mate_recall(found_f, truth, data.gallery_ident, data.query_ident, truth_sim, args.threshold),
    }


def shown_threshold() -> float:
    """The engine's "possible" threshold for the installed recognizer (its calibration table, else the fallback)."""
    from engine.images import file_sha256

    rec = EngineConfig().resolved_model_dir() / DEFAULT_RECOGNIZER
    table = calibration.for_model(file_sha256(rec)) if rec.is_file() else None
    return table.threshold_possible if table else calibration.FALLBACK_POSSIBLE


def code_model(name: str) -> codes.CodeModel:
    """The shipped code model of the default recognizer (as Engine.open loads it), or an alternative (see --codes)."""
    if name == "shipped":
        cfg = EngineConfig()
        return codes.for_model(file_sha256(cfg.resolved_model_dir() / (cfg.recognizer_file or DEFAULT_RECOGNIZER)))
    x = common.real_embeddings().vectors
    if name == "pca-random":
        return codes.fit(x, 256, rotation="random", source="centred PCA 256 + random rotation")
    if name.startswith("lead") and name[4:].isdigit():  # leadL: an L-bit lead of the top L directions (L a multiple of 16),
        # then the shipped model's 512 bits (what bench/refit_codes.py --lead L would ship; lead192: run with --prefilter 10000)
        bits = int(name[4:])
        shipped = code_model("shipped")
        lead = codes.fit(x, 512, lead=bits).weights[:, :bits]
        return codes.CodeModel(shipped.mean, np.ascontiguousarray(np.hstack([lead, shipped.body().weights])),
                               f"{bits}-bit lead of the top {bits} centred directions + the shipped 512 bits", bits)
    if name in ("random256", "random512"):
        bits = int(name[6:])
        return codes.CodeModel(x.mean(0), codes.random_rotation(512, bits), f"centred random rotation, {bits} bits")
    raise SystemExit(f"unknown code model {name!r}")


def hamming_index(path: Path, proj: Projection | None, candidates: int, threads: int, codes_name: str = "shipped",
                  scan_bytes: int = 0, prefilter: int = 0) -> HammingIndex:
    """The engine's HammingIndex for the default recognizer, as Engine.open makes it (other scan widths: --scan-bits)."""
    return HammingIndex(path, code_model=code_model(codes_name), projection=proj, candidates=candidates, threads=threads,
                        scan_bytes=scan_bytes or None, prefilter=prefilter or None)


def probe_hamming_load(path: str, dims: int, basis: str, threads: int, codes_name: str, scan_bytes: int = 0,
                       prefilter: int = 0) -> dict[str, float]:
    """Start-up cost in a fresh process: HammingIndex.load(), RSS delta, keys()."""
    proj = index_projection(common.real_embeddings(), dims, basis) if dims else None
    with common.Stopwatch() as t_warm:
        index = hamming_index(Path(path), proj, 1000, threads, codes_name, scan_bytes, prefilter)
        scan.warm()  # the search kernels (numba), compiled or read from numba's cache: apart from the index's RSS
    gc.collect()
    rss0 = common.rss_bytes()
    with common.Stopwatch() as t:
        ok = index.load()
    if not ok:
        raise RuntimeError(f"could not load {path}")
    rss_delta = common.rss_bytes() - rss0
    with common.Stopwatch() as t_keys:
        _ = int(index.keys().sum())
    return {"load_s": t.s, "load_rss_delta": rss_delta, "keys_s": t_keys.s, "loaded_memory_bytes": index.memory_bytes(),
            "kernels_s": t_warm.s}


def hamming_bench(
    args: argparse.Namespace, data: Dataset, truth: np.ndarray, truth_sim: np.ndarray, real: common.RealEmbeddings,
    m0: dict[str, Any], fit: dict[str, float], synth: dict[str, float], mates_in_top10: float, visible_mates: float,
) -> int:
    """The engine's HammingIndex: per code model, build (add in batches), save, load in a fresh process, then single
    queries per candidates value (k=10 and k=--fetch); the final key=value line is the first model's first value."""
    n = args.n
    cands = [int(v) for v in str(args.candidates).split(",") if v.strip()]
    proj = index_projection(real, args.pca, args.basis) if args.pca else None
    common.emit(f"# search bench  index=hamming n={n} rerank={args.pca or NDIM}-d int8 scan_threads={args.scan_threads} "
                f"scan_bits={args.scan_bits} prefilter={args.prefilter} "
                f"queries={args.queries}")
    common.emit(f"# machine  start: {common.kv_line(m0)}")
    common.emit(f"# data  same-person cos mean real {fit['real_same_mean']:.3f} vs synthetic {synth['same_mean']:.3f}; "
                f"stranger cos p99.9 {fit['real_stranger_p999']:.3f} vs {synth['stranger_p999']:.3f}; "
                f"mates in exact top-10 per query {mates_in_top10:.2f} ({visible_mates:.1%} at cosine >= {args.threshold:g})")
    finals: list[dict[str, object]] = []
    for codes_name in str(args.codes).split(","):
        spec = [n, args.seed, args.pca, args.basis, codes_name] + ([args.scan_bits] if args.scan_bits else [])
        path = common.cache_dir() / f"hamming-n{n}-{common.stable_hash(spec)}.idx"
        index = hamming_index(path, proj, cands[0], args.scan_threads, codes_name, args.scan_bits // 8, args.prefilter)
        gc.collect()
        rss0 = common.rss_bytes()
        keys = np.arange(1, n + 1, dtype=np.int64)
        with common.Stopwatch() as t_build:
            c0 = time.process_time()
            for a in range(0, n, 20_000):  # MetadataStore.iter_embeddings' batch, as Engine.rebuild_index adds
                index.add(keys[a : a + 20_000], data.gallery[a : a + 20_000])
            build_cpu = time.process_time() - c0
        build_rss = common.rss_bytes() - rss0
        with common.Stopwatch() as t_save:
            index.save()
        file_bytes = path.stat().st_size
        with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
            startup = pool.submit(probe_hamming_load, str(path), args.pca, args.basis, args.scan_threads, codes_name,
                                  args.scan_bits // 8, args.prefilter).result()
        logger.info("%s: built in %.1f s, saved in %.1f s; start-up: load %.2f s, +%.0f MB RSS", codes_name, t_build.s,
                    t_save.s, startup["load_s"], startup["load_rss_delta"] / 1e6)
        bpf = startup["loaded_memory_bytes"] / n
        common.emit(f"# codes={codes_name} ({index.code_model.bits} bits: {index.code_model.source}): build {t_build.s:.1f} s "
                    f"({build_cpu:.0f} CPU-s), RSS +{build_rss / 1e6:.0f} MB, save {t_save.s:.1f} s; memory_bytes after load "
                    f"{bpf:.0f} B/face, RSS after load +{startup['load_rss_delta'] / n:.0f} B/face, file {file_bytes / n:.0f} "
                    f"B/face; HammingIndex.load {startup['load_s']:.2f} s + keys {startup['keys_s']:.3f} s; scan kernels ready "
                    f"{startup['kernels_s']:.2f} s after the index is made (numba; on a thread of their own in the engine)")
        for c in cands:
            index.candidates = c
            row: dict[str, object] = {"codes": codes_name, "candidates": c,
                                      **query_row(index, data, truth, truth_sim, args, args.timed_queries, args.scan_threads),
                                      "load1": common.load_avg()[0]}
            common.emit("  " + common.kv_line(row))
            logger.info("%s", common.kv_line(row))
            finals.append({
                "index": "hamming", "n": n, "codes": codes_name, "bits": index.code_model.bits, "ndim": index.ndim,
                "candidates": c, "scan_threads": args.scan_threads, "scan_bits": index._scan_bytes * 8,
                "prefilter": index.prefilter,
                "p50_ms": row["p50_ms"], "p99_ms": row["p99_ms"],
                "cpu_p50_ms": row["cpu_p50_ms"], "mate_recall": row["mate_recall"], "recall10": row["recall10"],
                f"p50_k{args.fetch}_ms": row[f"p50_k{args.fetch}_ms"], f"mate_recall_k{args.fetch}": row[f"mate_recall_k{args.fetch}"],
                "mate_recall_shown": row["mate_recall_shown"], "bytes_per_face": bpf,
                "rss_per_face": startup["load_rss_delta"] / n, "file_per_face": file_bytes / n, "build_s": t_build.s,
                "save_s": t_save.s, "load_s": startup["load_s"], "kernels_s": startup["kernels_s"],
            })
        index.reset()
        index.close()
        path.unlink(missing_ok=True)
        sidecar_path(path).unlink(missing_ok=True)
    m1 = common.machine()
    common.emit(f"# machine  end:   {common.kv_line(m1)}")
    first = finals[0]
    verdict = {"p50": first["p50_ms"] <= TARGET_P50_MS, "mate_recall": first["mate_recall"] >= TARGET_MATE_RECALL,  # type: ignore[operator]
               "bytes": first["bytes_per_face"] <= TARGET_BYTES_PER_FACE, "load": first["load_s"] <= TARGET_LOAD_S}  # type: ignore[operator]
    common.emit("# targets (for n=1M): " + ", ".join(f"{k} {'ok' if v else 'MISSED'}" for k, v in verdict.items()))
    common.emit(common.kv_line({**first, "nproc": m1["nproc"], "load1_start": m0["load1"], "load1_end": m1["load1"]}))
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and every option's default."""


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table and a final key=value line."""
    defaults = EngineConfig()
    ap = argparse.ArgumentParser(
        description=__doc__ + "\nTargets at 1 M: p50 <= 2 ms with mate recall >= 0.99, <= 1.2 KB per face in RAM, "
        "start-up <= 5 s.",
        epilog="The final stdout line is key=value pairs for the first --ef value; a row per --ef is printed "
        "above it. Progress goes to stderr. Caches live in $SIGHTLINE_BENCH_CACHE or ~/.cache/sightline-bench.",
        formatter_class=_HelpFormatter,
    )
    ap.add_argument("--n", type=int, default=100_000, help="faces in the gallery (index size)")
    ap.add_argument("--index", choices=["hamming", "usearch"], default=defaults.index_kind,
                    help="which index (EngineConfig.index_kind; the engine's default unless given)")
    ap.add_argument("--candidates", default=str(defaults.index_candidates),
                    help="hamming: candidates re-ranked per search (EngineConfig.index_candidates); a comma list sweeps it")
    ap.add_argument("--codes", default="shipped",
                    help="hamming: code model(s), a comma list measured in turn (the final line is for the first): shipped "
                    "(engine/calibration: a 128-bit lead of the top 128 centred directions, then 512 random-rotation bits), "
                    "leadL, e.g. lead96 or lead192 (an L-bit lead, L a multiple of 16, then the same 512 bits), "
                    "pca-random (centred PCA 256 + a random rotation), "
                    "random256 / random512 (centred random rotation of all 512 dims: random512 is the layout before the lead "
                    "code); all fitted on the calib embeddings")
    ap.add_argument("--timed-queries", type=int, default=300,
                    help="hamming: single queries timed per candidates value (recall is scored on all --queries)")
    ap.add_argument("--scan-bits", type=int, default=0,
                    help="hamming: bits of each code the exhaustive scan reads (a multiple of 8; the rest rank what it keeps); "
                    "0: the code model's lead (128 for the shipped model), else 256")
    ap.add_argument("--prefilter", type=int, default=0,
                    help="hamming: about how many codes the scan keeps for the second stage (HammingIndex.prefilter); 0: the "
                    "index's default for its scan (20,000 or 2 %% after a lead, else 10,000)")
    ap.add_argument("--scan-threads", type=int, default=defaults.index_scan_threads,
                    help="hamming: threads one search's scan is split over (EngineConfig.index_scan_threads)")
    ap.add_argument("--queries", type=int, default=1000, help="single queries timed (and scored for recall)")
    ap.add_argument("--dtype", default=defaults.index_dtype, choices=["i8", "f16", "bf16", "f32"],
                    help="index scalar type (EngineConfig.index_dtype)")
    ap.add_argument("--connectivity", type=int, default=defaults.index_connectivity,
                    help="HNSW links per node, M (EngineConfig.index_connectivity)")
    ap.add_argument("--expansion-add", type=int, default=defaults.index_expansion_add,
                    help="ef at build time (EngineConfig.index_expansion_add)")
    ap.add_argument("--ef", default="auto",
                    help="ef at search time; a comma list sweeps it on one build. 'auto' (default) is what the engine "
                    "uses for a gallery of --n faces (engine.index.auto_expansion)")
    ap.add_argument("--fetch", type=int, default=40,
                    help="how many the engine asks the index for (Engine._hits over-fetches max(4*top, 40) and re-ranks)")
    ap.add_argument("--threshold", type=float, default=shown_threshold(),
                    help="similarity below which the engine shows no hit: mate_recall_shown counts only mates at or "
                    "above it, searched with --fetch as Engine._hits does")
    ap.add_argument("--exact-queries", type=int, default=30, help="queries timed for exact search (slow at 1 M)")
    ap.add_argument("--pca", type=int, default=defaults.index_dims, metavar="D",
                    help="the index holds a D-dim projection (EngineConfig.index_dims, default %(default)s; 0: the "
                    "512-d vectors); truth stays exact float32 512-d, and the engine re-ranks its --fetch hits in 512-d")
    ap.add_argument("--basis", choices=["shipped", "fit"], default="shipped",
                    help="projection basis: the model's shipped one (as the engine uses; default) or fitted here on "
                    "the cached calib embeddings")
    ap.add_argument("--centres", choices=["between", "total"], default="between",
                    help="covariance identity centres are drawn with (see the module docstring)")
    ap.add_argument("--seed", type=int, default=7, help="data seed")
    ap.add_argument("--rebuild", action="store_true", help="ignore a cached index and build again")
    ap.add_argument("--checkpoint", type=int, default=100_000,
                    help="save the partial index every this many faces; an interrupted build resumes from it")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    common.setup_logging(args.verbose)
    efs = [auto_expansion(args.n) if v.strip() == "auto" else int(v) for v in str(args.ef).split(",") if v.strip()]
    p = IndexParams(args.dtype, args.connectivity, args.expansion_add, args.pca or NDIM)
    m0 = common.machine()
    logger.info("machine at start: %s", m0)

    real = common.real_embeddings()
    dist, fit = fit_distribution(real, args.centres)
    data_key = common.stable_hash({"v": DATA_VERSION, "n": args.n, "q": args.queries, "seed": args.seed,
                                   "centres": args.centres, "real": real.vectors[:4].tolist(), "nreal": len(real.vectors)})
    with common.Stopwatch() as t_gen:
        data = cached_dataset(dist, args.n, args.queries, args.seed, data_key)
    logger.info("generated %d faces of %d identities + %d queries in %.1f s", len(data.gallery),
                int(data.gallery_ident.max()) + 1, len(data.queries), t_gen.s)
    sample = np.random.default_rng(5).choice(len(data.gallery), size=min(len(data.gallery), 50_000), replace=False)
    synth = similarity_stats(data.gallery[sample], data.gallery_ident[sample], np.random.default_rng(6))
    # same-person similarity among sampled gallery faces is sparse at large n; measure on fresh pairs too
    c = dist.centres(np.random.default_rng(8), 5000)
    fresh = np.concatenate([dist.faces(np.random.default_rng(9), c), dist.faces(np.random.default_rng(10), c)])
    fresh_stats = similarity_stats(fresh, np.r_[np.arange(5000), np.arange(5000)], np.random.default_rng(11))
    for key in ("same_mean", "same_std", "same_p5"):
        synth[key] = fresh_stats[key]
    synth["effdim"] = effective_dim(data.gallery[sample[:20_000]])

    cache = common.cache_dir()
    truth_path = cache / f"truth-{data_key}.npz"
    if truth_path.exists():
        with np.load(truth_path) as z:
            truth, truth_sim = z["rows"], z["sims"]
    else:
        with common.Stopwatch() as t_truth:
            truth, truth_sim = exact_topk(data.gallery, data.queries, 10)
        np.savez(truth_path, rows=truth, sims=truth_sim)
        logger.info("exact float32 ground truth for %d queries in %.1f s", len(truth), t_truth.s)
    is_mate = data.gallery_ident[truth] == data.query_ident[:, None]
    visible_mates = float((is_mate & (truth_sim >= args.threshold)).sum() / max(1, is_mate.sum()))
    mates_in_top10 = float(np.mean([(data.gallery_ident[t] == qi).sum() for t, qi in zip(truth, data.query_ident, strict=True)]))

    if args.index == "hamming":
        return hamming_bench(args, data, truth, truth_sim, real, m0, fit, synth, mates_in_top10, visible_mates)
    full = data  # the 512-d float32 data (numpy exact timing uses it even with --pca)
    spec = {"data": data_key, "dtype": p.dtype, "M": p.connectivity, "efa": p.expansion_add}
    pca = ""
    if p.ndim != NDIM:  # the index holds a projection (as the engine's does); truth and re-ranking stay float32 512-d
        proj = index_projection(real, p.ndim, args.basis)
        kept = float(np.mean(np.linalg.norm(data.gallery[:10_000] @ proj.basis, axis=1) ** 2))
        logger.info("projection %s (%s basis): keeps %.1f%% of the gallery's energy", proj.key, args.basis, kept * 100)
        data = Dataset(proj.apply(data.gallery), data.gallery_ident, proj.apply(data.queries), data.query_ident)
        spec["pca"] = p.ndim if args.basis == "fit" else proj.key  # "fit": the key the first runs cached under
        pca = f"-pca{p.ndim}" + ("" if args.basis == "fit" else "s")
    index_key = common.stable_hash(spec)
    path = cache / f"index-n{args.n}-{p.dtype}-M{p.connectivity}-efa{p.expansion_add}{pca}-{index_key}.usearch"
    meta_path = path.with_suffix(".json")
    if args.rebuild or not path.exists() or not meta_path.exists():
        logger.info("building %s (%d faces, %s, M=%d, ef_add=%d)", path.name, args.n, p.dtype, p.connectivity,
                    p.expansion_add)
        build = build_index(path, data, p, efs[0], args.checkpoint)
        build["build_nproc"] = float(os.cpu_count() or 1)
        meta_path.write_text(json.dumps(build))
        build["cached"] = 0
    else:
        build = json.loads(meta_path.read_text())
        build["cached"] = 1
        logger.info("using the cached index %s (built in %.0f s)", path.name, build["build_s"])
    file_bytes = path.stat().st_size

    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        startup = pool.submit(probe_load, str(path), p, efs[0]).result()
    logger.info("start-up: load %.2f s, +%.0f MB RSS, keys %.3f s; view %.3f s", startup["load_s"],
                startup["load_rss_delta"] / 1e6, startup["keys_s"], startup["view_s"])

    index = UsearchIndex(path, ndim=p.ndim, dtype=p.dtype, connectivity=p.connectivity, expansion_add=p.expansion_add,
                         expansion_search=efs[0])
    assert index.load()
    raw = index._index  # the usearch object, for batch and exact searches that the engine does not make

    # Exact search latency: usearch exact=True on the same index (single thread) and numpy float32.
    eq = data.queries[: args.exact_queries]
    t_exact: list[float] = []
    t_exact_cpu: list[float] = []
    for q in eq:
        c0 = time.thread_time()
        t0 = time.perf_counter()
        raw.search(q, 10, exact=True, threads=1)
        t_exact.append(time.perf_counter() - t0)
        t_exact_cpu.append(time.thread_time() - c0)
    t_np: list[float] = []
    for q in full.queries[: args.exact_queries]:
        t0 = time.perf_counter()
        s = full.gallery @ q
        top = np.argpartition(-s, 9)[:10]
        top[np.argsort(-s[top])]
        t_np.append(time.perf_counter() - t0)
    exact_ms = common.percentiles_ms(t_exact)
    exact_cpu_ms = common.percentiles_ms(t_exact_cpu)
    np_ms = common.percentiles_ms(t_np)

    rows_out: list[dict[str, object]] = []
    for ef in efs:
        index.expansion_search = ef
        raw.expansion_search = ef
        row = query_row(index, data, truth, truth_sim, args)
        with common.Stopwatch() as t_batch:
            raw.search(data.queries, 10, threads=0)
        rows_out.append({"ef": ef, **row, "batch_qps": len(data.queries) / t_batch.s, "load1": common.load_avg()[0]})
        logger.info("ef=%d: %s", ef, common.kv_line(rows_out[-1]))

    n = args.n
    m1 = common.machine()
    common.emit(f"# search bench  n={n} ndim={p.ndim} dtype={p.dtype} M={p.connectivity} ef_add={p.expansion_add} "
                f"centres={args.centres} queries={args.queries}")
    common.emit(f"# machine  start: {common.kv_line(m0)}")
    common.emit(f"# machine  end:   {common.kv_line(m1)}")
    common.emit("# data  real vs synthetic: same-person cos mean/std/p5 "
                f"{fit['real_same_mean']:.3f}/{fit['real_same_std']:.3f}/{fit['real_same_p5']:.3f} vs "
                f"{synth['same_mean']:.3f}/{synth['same_std']:.3f}/{synth['same_p5']:.3f}; "
                f"stranger cos mean/std/p99.9 {fit['real_stranger_mean']:.3f}/{fit['real_stranger_std']:.3f}/"
                f"{fit['real_stranger_p999']:.3f} vs {synth['stranger_mean']:.3f}/{synth['stranger_std']:.3f}/"
                f"{synth['stranger_p999']:.3f}; effective dim {fit['real_effdim']:.0f} vs {synth['effdim']:.0f}; "
                f"spread {fit['spread']:.3f} sigma {fit['spread_sigma']:.2f}; identities {int(data.gallery_ident.max()) + 1}; "
                f"mates in exact top-10 per query {mates_in_top10:.2f}, of which {visible_mates:.1%} at cosine >= "
                f"{args.threshold:g} (shown by the engine)")
    common.emit(f"# build  {build['build_s']:.1f} s{' (cached)' if build['cached'] else ''} at mean load1 "
                f"{build.get('build_load1', float('nan')):.1f}, CPU {build.get('build_cpu_s', float('nan')):.0f} s "
                f"(= {build.get('build_cpu_s', float('nan')) / (os.cpu_count() or 1):.0f} s on idle cores); "
                f"save {build['save_s']:.1f} s; "
                f"RSS +{build['build_rss_delta'] / 1e6:.0f} MB during build")
    common.emit(f"# memory  index.memory_bytes {startup['loaded_memory_bytes'] / n:.0f} B/face; "
                f"RSS after load +{startup['load_rss_delta'] / n:.0f} B/face; file {file_bytes / n:.0f} B/face")
    common.emit(f"# start-up  UsearchIndex.load (Index.restore) {startup['load_s']:.2f} s + keys check "
                f"{startup['keys_s']:.3f} s; Index.restore(view=True) {startup['view_s']:.3f} s")
    common.emit(f"# exact  usearch exact=True ({p.dtype}, 1 thread) p50 {exact_ms['p50']:.2f} ms "
                f"(CPU {exact_cpu_ms['p50']:.2f} ms); "
                f"numpy float32 p50 {np_ms['p50']:.2f} ms  ({len(eq)} queries)")
    common.emit("# per ef (single queries through UsearchIndex.search, 1 thread: wall and thread-CPU ms; batch through "
                "usearch, all cores):")
    for r in rows_out:
        common.emit("  " + common.kv_line(r))
    first = rows_out[0]
    bpf = startup["loaded_memory_bytes"] / n
    verdict = {
        "p50 (CPU)": first["cpu_p50_ms"] <= TARGET_P50_MS,  # type: ignore[operator]
        "mate_recall": first["mate_recall"] >= TARGET_MATE_RECALL,  # type: ignore[operator]
        "bytes": bpf <= TARGET_BYTES_PER_FACE,
        "load": startup["load_s"] <= TARGET_LOAD_S,
    }
    common.emit("# targets (for n=1M): " + ", ".join(f"{k} {'ok' if v else 'MISSED'}" for k, v in verdict.items()))
    final = {
        "n": n, "ndim": p.ndim, "dtype": p.dtype, "M": p.connectivity, "ef_add": p.expansion_add, "ef": first["ef"],
        "p50_ms": first["p50_ms"], "p99_ms": first["p99_ms"], "cpu_p50_ms": first["cpu_p50_ms"],
        "cpu_p99_ms": first["cpu_p99_ms"], "mate_recall": first["mate_recall"],
        "recall10": first["recall10"], f"p50_k{args.fetch}_ms": first[f"p50_k{args.fetch}_ms"],
        f"mate_recall_k{args.fetch}": first[f"mate_recall_k{args.fetch}"],
        "mate_recall_shown": first["mate_recall_shown"], "batch_qps": first["batch_qps"],
        "bytes_per_face": bpf, "rss_per_face": startup["load_rss_delta"] / n, "file_per_face": file_bytes / n,
        "exact_p50_ms": exact_ms["p50"], "exact_cpu_p50_ms": exact_cpu_ms["p50"], "exact_np_p50_ms": np_ms["p50"],
        "speedup_vs_exact": exact_cpu_ms["p50"] / first["cpu_p50_ms"],  # type: ignore[operator]
        "build_s": build["build_s"], "build_cpu_s": build.get("build_cpu_s", float("nan")),
        "load_s": startup["load_s"], "view_s": startup["view_s"],
        "nproc": m1["nproc"], "load1_start": m0["load1"], "load1_end": m1["load1"],
    }
    common.emit(common.kv_line(final))
    return 0


if __name__ == "__main__":
    sys.exit(main())
