"""First-stage options at scale (issue 15): binary sign codes + exhaustive Hamming scan + in-memory re-rank.

On bench/search.py's face-like data (same generator, seed and queries) this compares, for each code model
(how the sign bits are made) and each number of candidates taken from the Hamming scan:

- mate recall after re-ranking the candidates with the vectors the index keeps in memory (192-d projection
  as float16 or int8, or the full 512-d as int8), keeping the best 10 and 40 (the engine re-scores its 40
  exactly from SQLite, so the top-40 number is what reaches the officer);
- the time of one query's Hamming scan on one thread and split over two (faiss `knn_hamming`).

Example: python bench/firststage.py --n 1000000 --queries 300  (needs faiss-cpu: pip install -e '.[bench]')
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import search  # noqa: E402

from engine import codes  # noqa: E402

logger = logging.getLogger("bench.firststage")


def dataset(n: int, queries: int, seed: int) -> tuple[search.Dataset, np.ndarray, np.ndarray, common.RealEmbeddings]:
    """bench/search.py's data and exact top-10 (cached), and the real embeddings it is shaped on."""
    real = common.real_embeddings()
    dist, _ = search.fit_distribution(real, "between")
    data = search.make_dataset(dist, n, queries, seed)
    key = common.stable_hash({"v": search.DATA_VERSION, "n": n, "q": queries, "seed": seed, "centres": "between",
                              "real": real.vectors[:4].tolist(), "nreal": len(real.vectors)})
    path = common.cache_dir() / f"truth-{key}.npz"
    if path.exists():
        with np.load(path) as z:
            return data, z["rows"], z["sims"], real
    rows, sims = search.exact_topk(data.gallery, data.queries, 10)
    np.savez(path, rows=rows, sims=sims)
    return data, rows, sims, real


def models(real: common.RealEmbeddings) -> dict[str, codes.CodeModel]:
    """The code models compared, all fitted on the calib embeddings (never on the benchmark's gallery)."""
    x = real.vectors
    return {
        "itq256": codes.fit(x, 256, rotation="itq"),
        "pca256+random": codes.fit(x, 256, rotation="random"),
        "pca256": codes.CodeModel(x.mean(0), codes.fit(x, 256, iterations=0).weights @ codes.random_rotation(256, 256).T,
                                  "pca, no rotation"),
        "random512": codes.CodeModel(x.mean(0), codes.random_rotation(512, 512), "random 512x512 rotation"),
        "itq192": codes.fit(x, 192, rotation="itq"),
        "itq128": codes.fit(x, 128, rotation="itq"),
        "uncentred-random256": codes.fallback(512, 256),
    }


def rerank(cands: np.ndarray, qv: np.ndarray, store: np.ndarray, keep: int) -> np.ndarray:
    """The `keep` candidates (gallery rows) with the highest dot product with the query, per query."""
    out = np.empty((len(cands), keep), dtype=np.int64)
    for i, c in enumerate(cands):
        s = store[c].astype(np.float32) @ qv[i]
        top = np.argpartition(-s, keep - 1)[:keep]
        out[i] = c[top[np.argsort(-s[top])]]
    return out


def main(argv: list[str] | None = None) -> int:
    """Print one row per code model x candidates x re-rank store, then the scan timings."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--candidates", default="250,500,1000,2000,4000")
    ap.add_argument("--models", default="")
    ap.add_argument("--timing-queries", type=int, default=100)
    args = ap.parse_args(argv)
    common.setup_logging()
    import faiss

    m0 = common.machine()
    data, truth, truth_sim, real = dataset(args.n, args.queries, args.seed)
    logger.info("data ready (%d faces)", len(data.gallery))
    cands = [int(c) for c in args.candidates.split(",")]
    proj = search.index_projection(real, 192, "shipped")
    g192 = proj.apply(data.gallery)
    q192 = proj.apply(data.queries)
    scale = 127.0 / float(np.abs(g192[:100_000]).max())
    stores = {
        "f16-192": (g192.astype(np.float16), q192),
        "i8-192": (np.clip(np.rint(g192 * scale), -127, 127).astype(np.int8), q192),
    }
    del g192
    chosen = models(real)
    if args.models:
        chosen = {k: v for k, v in chosen.items() if k in args.models.split(",")}
    common.emit(f"# first-stage options  n={args.n} queries={args.queries} machine: {common.kv_line(m0)}")
    gi, qi = data.gallery_ident, data.query_ident
    faiss.omp_set_num_threads(2)
    for name, model in chosen.items():
        with common.Stopwatch() as t_enc:
            gcodes = np.concatenate([model.encode(data.gallery[a : a + 100_000]) for a in range(0, args.n, 100_000)])
        qcodes = model.encode(data.queries)
        _, found = faiss.knn_hamming(qcodes, gcodes, max(cands))
        for c in cands:
            head = found[:, :c]
            row = {"model": name, "bits": model.bits, "candidates": c,
                   "scan_mate_recall": search.mate_recall(head, truth, gi, qi)}
            for sname, (store, qv) in stores.items():
                top40 = rerank(head, qv, store, 40)
                row[f"{sname}_top10"] = search.mate_recall(top40[:, :10], truth, gi, qi)
                row[f"{sname}_top40"] = search.mate_recall(top40, truth, gi, qi)
            common.emit(common.kv_line(row))
        # one query at a time, one thread, then split in two halves on two threads
        faiss.omp_set_num_threads(1)
        pool = ThreadPoolExecutor(1)
        half = args.n // 2
        t1: list[float] = []
        t2: list[float] = []
        c = 1000
        for q in qcodes[: args.timing_queries]:
            q = q[None]
            t0 = time.perf_counter()
            faiss.knn_hamming(q, gcodes, c)
            t1.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            f = pool.submit(faiss.knn_hamming, q, gcodes[half:], c)
            faiss.knn_hamming(q, gcodes[:half], c)
            f.result()
            t2.append(time.perf_counter() - t0)
        pool.shutdown()
        faiss.omp_set_num_threads(2)
        common.emit(f"# {name}: encode {args.n} faces {t_enc.s:.1f} s; scan for 1000 candidates p50 "
                    f"{common.percentiles_ms(t1)['p50']:.2f} ms (1 thread), {common.percentiles_ms(t2)['p50']:.2f} ms "
                    f"(2 threads); load1 {common.load_avg()[0]:.2f}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
