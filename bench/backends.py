"""Both index backends side by side on the same face-like gallery and queries: embedded (in process: the default
hamming index, and usearch) and Milvus (a real standalone server, engine/milvus_server.py), each through the
engine's own index class.

The data is bench/search.py's generator (identity centres and same-person spread shaped like the real
embeddings of ../shared/faces/calib), projected as the engine's index holds it (192-d, the shipped basis).
Per backend: build time (add in the engine's batches, plus for Milvus the flush and the server's index
build), single-query latency p50/p99 through `search` at k=10 and at the engine's over-fetch k=40, mate
recall (the share of the exact float32 top-10's same-person faces the index returns), RAM (embedded: the
index's memory; Milvus: the server process's RSS growth from an empty server), and disk.
Milvus holds either the projected vectors (HNSW, IVF_FLAT, IVF_SQ8; inner product) or the default code model's
512-bit sign codes (BIN_FLAT, BIN_IVF_FLAT; Hamming), `--milvus-index`; several may be given, comma-separated.

The Milvus server binds every interface, so this script runs inside a private network namespace; as root it
re-runs itself in one (`unshare -n`, loopback up). One command for the 1 M run:

    python bench/backends.py --n 1000000 --backends hamming,usearch,milvus --milvus-index BIN_FLAT

It prints a table and a final key=value line per backend.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402  (bench/ is not a package)
import search as sb  # noqa: E402

from engine.index import UsearchIndex, auto_expansion  # noqa: E402
from engine.milvus_index import BINARY_INDEXES, FLOAT_INDEXES, MilvusIndex  # noqa: E402
from engine.milvus_server import LocalMilvus, in_private_netns  # noqa: E402

logger = logging.getLogger("bench.backends")


def rss_of(pid: int) -> int:
    """Resident bytes of a process (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def du(path: Path) -> int:
    """Bytes of the files under `path`."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def timed_queries(search, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[float]]:  # type: ignore[no-untyped-def]
    """Single queries one after another: gallery rows found and wall seconds per query."""
    for q in queries[:20]:  # warm-up
        search(q, k)
    rows = np.full((len(queries), k), -1, dtype=np.int64)
    wall = []
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        keys, _ = search(q, k)
        wall.append(time.perf_counter() - t0)
        rows[i, : len(keys)] = np.asarray(keys) - 1
    return rows, wall


def run_usearch(data: sb.Dataset, proj, ef: int, workdir: Path) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Build, save and search a UsearchIndex as the engine does."""
    gc.collect()
    return _build_and_measure(UsearchIndex(workdir / "gallery.usearch", projection=proj, expansion_search=ef), data)


def run_hamming(data: sb.Dataset, proj, workdir: Path) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Build, save and search the engine's default HammingIndex (shipped code model, 1,000 candidates re-ranked)."""
    gc.collect()
    return _build_and_measure(sb.hamming_index(workdir / "gallery.hamming", proj, 1000, 2), data)


def _build_and_measure(index, data: sb.Dataset) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Add the gallery in 20,000-face batches as a rebuild does, save, then time the searches."""
    keys = np.arange(1, len(data.gallery) + 1, dtype=np.int64)
    t0 = time.perf_counter()
    for a in range(0, len(keys), 20_000):
        index.add(keys[a:a + 20_000], data.gallery[a:a + 20_000])
    build_s = time.perf_counter() - t0
    index.save()
    out: dict[str, float] = {"build_s": build_s, "ram_bytes": float(index.memory_bytes()),
                             "disk_bytes": float(index.file_bytes())}
    return {**out, **_measure(index.search, data)}


def run_milvus(data: sb.Dataset, proj, ef: int, workdir: Path, index_type: str, keep: bool) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Start a fresh server, build the collection through MilvusIndex.add, flush, wait for the index, search."""
    server = LocalMilvus(workdir / "milvus")
    server.start()
    try:
        time.sleep(5)  # let the fresh server settle before taking its baseline
        rss0 = rss_of(server.pid or 0)
        disk0 = du(server.storage_dir)
        index = MilvusIndex(server.uri, "bench", projection=proj, expansion_search=ef, index_type=index_type,
                            timeout=30, slow_timeout=3600,
                            code_model=sb.code_model("shipped") if index_type in BINARY_INDEXES else None)
        index.reset()
        keys = np.arange(1, len(data.gallery) + 1, dtype=np.int64)
        t0 = time.perf_counter()
        for a in range(0, len(keys), 20_000):
            index.add(keys[a:a + 20_000], data.gallery[a:a + 20_000])
            if a and a % 200_000 == 0:
                logger.info("milvus: %d faces sent (%.0f s)", a, time.perf_counter() - t0)
        insert_s = time.perf_counter() - t0
        index.save()
        flush_s = time.perf_counter() - t0 - insert_s
        while True:  # the server builds the index of each sealed segment in the background
            done, total = index.index_progress()
            if total >= len(keys) and done >= total:
                break
            time.sleep(1)
        build_s = time.perf_counter() - t0
        index.slow_timeout = 3600
        index._call("load", lambda c: c.release_collection("bench", timeout=600))  # reload: segments with their index
        index._call("load", lambda c: c.load_collection("bench", timeout=3600))
        assert len(index) == len(keys), (len(index), len(keys))
        time.sleep(5)
        out: dict[str, float] = {"build_s": build_s, "insert_s": insert_s, "flush_s": flush_s,
                                 "ram_bytes": float(rss_of(server.pid or 0) - rss0),
                                 "disk_bytes": float(du(server.storage_dir) - disk0)}
        out.update(_measure(index.search, data, max(40, index.candidates)))
        index.close()
        return out
    finally:
        server.stop()
        if not keep:
            server.wipe()


def _measure(search, data: sb.Dataset, fetch: int = 40) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """k=10, and k=`fetch`: what the engine asks for and re-scores exactly (40; Milvus sign codes: their candidates)."""
    found, wall = timed_queries(search, data.queries, 10)
    found40, wall40 = timed_queries(search, data.queries, fetch)
    lat, lat40 = common.percentiles_ms(wall), common.percentiles_ms(wall40)
    return {"p50_ms": lat["p50"], "p99_ms": lat["p99"], "p50_k40_ms": lat40["p50"], "p99_k40_ms": lat40["p99"],
            "fetch": float(fetch), "mate_recall": sb.mate_recall(found, TRUTH[0], data.gallery_ident, data.query_ident),
            "mate_recall_k40": sb.mate_recall(found40, TRUTH[0], data.gallery_ident, data.query_ident)}


TRUTH: list[np.ndarray] = []


def main(argv: list[str] | None = None) -> int:
    """Run both backends and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="faces in the gallery")
    ap.add_argument("--queries", type=int, default=1000, help="single queries timed and scored")
    ap.add_argument("--ef", default="auto", help="HNSW search breadth for both (auto: the engine's for --n)")
    ap.add_argument("--backends", default="hamming,usearch,milvus",
                    help="which to run, comma-separated: hamming, usearch (embedded), milvus")
    ap.add_argument("--milvus-index", default="BIN_FLAT",
                    help=f"Milvus index type(s), comma-separated: {', '.join(FLOAT_INDEXES + BINARY_INDEXES)}")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workdir", type=Path, default=None, help="where the index and the server's data go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the server's data directory")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)

    if "milvus" in args.backends and not in_private_netns():
        if os.geteuid() != 0 or not shutil.which("unshare"):
            raise SystemExit("the Milvus server binds every interface: run this as root (it then uses its own network "
                             "namespace) or inside one (unshare -n)")
        cmd = [sys.executable, *sys.argv] if argv is None else [sys.executable, __file__, *argv]
        return subprocess.call(["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd])

    common.setup_logging(args.verbose)
    ef = auto_expansion(args.n) if args.ef == "auto" else int(args.ef)
    m0 = common.machine()
    real = common.real_embeddings()
    dist, _ = sb.fit_distribution(real, "between")
    data = sb.make_dataset(dist, args.n, args.queries, args.seed)
    truth, _ = sb.exact_topk(data.gallery, data.queries, 10)
    TRUTH.append(truth)
    proj = sb.index_projection(real, 192, "shipped")
    logger.info("data: %d faces, %d queries; ef %d", args.n, args.queries, ef)

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            logger.info("running %s", backend)
            if backend == "hamming":
                results["embedded hamming"] = run_hamming(data, proj, work)
            elif backend == "usearch":
                results["embedded usearch"] = run_usearch(data, proj, ef, work)
            elif backend == "milvus":
                for kind in [k.strip() for k in args.milvus_index.split(",") if k.strip()]:
                    results[f"milvus {kind}"] = run_milvus(data, proj, ef, work, kind, args.keep)
                    logger.info("milvus %s: %s", kind, common.kv_line(results[f"milvus {kind}"]))
            else:
                raise SystemExit(f"unknown backend {backend}")
            for name, r in results.items():
                logger.info("%s: %s", name, common.kv_line(r))
    m1 = common.machine()
    common.emit(f"# backends bench  n={args.n} queries={args.queries} ndim=192 (projection) ef={ef} "
                f"milvus_index={args.milvus_index} (ef: usearch and Milvus HNSW)")
    common.emit(f"# machine  start: {common.kv_line(m0)}")
    common.emit(f"# machine  end:   {common.kv_line(m1)}")
    common.emit("| backend | build s | p50 ms k10 | p99 ms k10 | engine fetch k | p50 ms | p99 ms | mate recall k10 "
                "| at fetch k | RAM B/face | disk B/face |")
    common.emit("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        common.emit(f"| {name} | {r['build_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['fetch']:.0f} | "
                    f"{r['p50_k40_ms']:.2f} | {r['p99_k40_ms']:.2f} | {r['mate_recall']:.3f} | {r['mate_recall_k40']:.3f} | "
                    f"{r['ram_bytes'] / args.n:.0f} | {r['disk_bytes'] / args.n:.0f} |")
    for name, r in results.items():
        common.emit(f"{name.replace(' ', '_')}: " + common.kv_line({"n": args.n, "ef": ef, **r}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
