"""How many candidates sign codes alone need: mate recall of the exact Hamming nearest k by the default code model.

A Milvus collection of sign codes (BIN_FLAT) returns the nearest codes and the engine re-scores them exactly from
SQLite, so the share of true mates among the nearest k codes is the recall the engine gets when it re-scores k
(engine.milvus_index.MilvusIndex.candidates). Same generator, queries and ground truth as bench/backends.py:

    python bench/code_recall.py --n 1000000

It prints a table row and a key=value line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402  (bench/ is not a package)
import search as sb  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Encode the gallery and queries, scan exactly by Hamming distance, score mate recall per k."""
    import faiss

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="faces in the gallery")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", default="10,40,100,200,1000", help="candidate counts, comma-separated")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    common.setup_logging()
    real = common.real_embeddings()
    dist, _ = sb.fit_distribution(real, "between")
    data = sb.make_dataset(dist, args.n, args.queries, args.seed)
    truth, _ = sb.exact_topk(data.gallery, data.queries, 10)
    model = sb.code_model("shipped").body()  # what a Milvus BIN collection holds (the lead is the embedded index's)
    gallery = np.concatenate([model.encode(data.gallery[a:a + 100_000]) for a in range(0, args.n, 100_000)])
    queries = model.encode(data.queries)
    ks = [int(k) for k in args.k.split(",")]
    recall = {}
    for k in ks:
        _, rows = faiss.knn_hamming(queries, gallery, k)
        recall[k] = sb.mate_recall(rows, truth, data.gallery_ident, data.query_ident)
    common.emit(f"# sign codes ({model.bits} bits, {model.source}) n={args.n} queries={args.queries}")
    common.emit("| n | " + " | ".join(f"k {k}" for k in ks) + " |")
    common.emit(f"| {args.n} | " + " | ".join(f"{recall[k]:.4f}" for k in ks) + " |")
    common.emit(common.kv_line({"n": args.n, **{f"recall_k{k}": r for k, r in recall.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
