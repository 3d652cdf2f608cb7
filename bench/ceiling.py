"""Why the index misses mates at 1 M faces: the projection's ceiling, and what partitioning would give.

On bench/search.py's face-like data (same generator and seed), with the exact float32 512-d top-10 as
truth, this measures without any graph:

1. the **projection ceiling**: an exact search on the D-dim projected vectors (the shipped basis's top D
   directions), and the share of the true mates it finds in its top-10 / top-40 / top-100. If that is
   ~1, the projection loses nothing and any miss is the HNSW graph's;
2. **inverted-file partitioning** (IVF): k-means on a sample of the projected gallery (numpy Lloyd), and
   the share of mates whose partition is among the query's nprobe nearest centroids, with the share of
   the gallery those partitions hold (what an IVF index would have to scan).

    python bench/ceiling.py --n 1000000
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (bench/ is not a package)
import search  # noqa: E402

logger = logging.getLogger("bench.ceiling")


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 12) -> np.ndarray:
    """Spherical k-means (unit centroids), Lloyd iterations."""
    centres = x[rng.choice(len(x), k, replace=False)].copy()
    for _ in range(iters):
        nearest = np.argmax(x @ centres.T, axis=1)
        for c in range(k):
            members = x[nearest == c]
            if len(members):
                v = members.sum(0)
                centres[c] = v / np.linalg.norm(v)
    return centres


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="gallery faces (default 1,000,000)")
    ap.add_argument("--queries", type=int, default=300, help="queries (default 300)")
    ap.add_argument("--dims", default="48,64,96,128,192", help="projection sizes for the ceiling")
    ap.add_argument("--partitions", default="16,64,256,1024", help="k-means partition counts for the IVF part")
    ap.add_argument("--ivf-dims", type=int, default=192, help="projection the IVF part runs on")
    ap.add_argument("--seed", type=int, default=7, help="data seed (bench/search.py's default)")
    args = ap.parse_args(argv)
    common.setup_logging()
    m0 = common.machine()
    real = common.real_embeddings()
    dist, _ = search.fit_distribution(real, "between")
    data = search.make_dataset(dist, args.n, 1000, args.seed)  # 1000 queries: the same faces search.py draws
    queries, query_ident = data.queries[: args.queries], data.query_ident[: args.queries]
    truth, _ = search.exact_topk(data.gallery, queries, 10)
    is_mate = data.gallery_ident[truth] == query_ident[:, None]
    mates = int(is_mate.sum())
    logger.info("%d queries, %d true mates in the exact 512-d top-10", len(queries), mates)

    common.emit(f"# projection ceiling  n={args.n} queries={len(queries)} mates={mates}: exact search on the projected "
                "vectors, share of the mates found in its top-10 / top-40 / top-100")
    final: dict[str, object] = {"n": args.n, "queries": len(queries)}
    for dims in (int(d) for d in args.dims.split(",")):
        proj = search.index_projection(real, dims, "shipped")
        top, _ = search.exact_topk(proj.apply(data.gallery), proj.apply(queries), 100)
        found = [sum(len(set(truth[i][is_mate[i]]) & set(top[i][:k])) for i in range(len(queries))) / mates
                 for k in (10, 40, 100)]
        common.emit(f"  dims={dims} top10={found[0]:.4f} top40={found[1]:.4f} top100={found[2]:.4f}")
        final[f"ceiling{dims}_top40"] = round(found[1], 4)

    proj = search.index_projection(real, args.ivf_dims, "shipped")
    gallery, q = proj.apply(data.gallery), proj.apply(queries)
    rng = np.random.default_rng(0)
    sample = gallery[rng.choice(len(gallery), min(len(gallery), 100_000), replace=False)]
    common.emit(f"# partitions (IVF) on the {args.ivf_dims}-d projection: share of mates in the nprobe nearest "
                "partitions (share of the gallery they hold)")
    for k in (int(p) for p in args.partitions.split(",")):
        centres = kmeans(sample, k, rng)
        part = np.concatenate([np.argmax(gallery[i : i + 100_000] @ centres.T, axis=1)
                               for i in range(0, len(gallery), 100_000)])
        sizes = np.bincount(part, minlength=k)
        order = np.argsort(-(q @ centres.T), axis=1)
        cells = []
        for nprobe in (1, 2, 4, 8, 16, 32, 64, 128):
            if nprobe > k:
                break
            probed = order[:, :nprobe]
            found = sum(int(np.isin(part[truth[i][is_mate[i]]], probed[i]).sum()) for i in range(len(queries)))
            scanned = sizes[probed].sum() / len(queries) / len(gallery)
            cells.append(f"nprobe={nprobe}: {found / mates:.3f} ({scanned:.1%})")
        common.emit(f"  partitions={k}  " + "  ".join(cells))
    m1 = common.machine()
    final.update({"load1_start": m0["load1"], "load1_end": m1["load1"]})
    common.emit(common.kv_line(final))
    return 0


if __name__ == "__main__":
    sys.exit(main())
