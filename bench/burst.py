"""A burst of searches submitted at once, through Engine.search: answered in arrival order, or all together?

Opens the engine on a data dir (by default bench/e2e.py's cached gallery of --n faces, built by it), then
submits --burst searches of the dev set's photos at the same moment, twice: with the engine's own pool
(engine.scheduling.PriorityExecutor: the oldest search's jobs first) and with a plain FIFO
ThreadPoolExecutor of the same size (how the engine scheduled before issue 15). Prints fastest / p50 /
max answer time of each; in arrival order p50 is about half the max, FIFO makes them all finish together.

    python bench/burst.py --n 20000 --burst 50
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import common  # noqa: E402
from e2e import as_telegram_photo, dev_sets  # noqa: E402

from engine import Engine, EngineConfig, NoFaceFound  # noqa: E402

logger = logging.getLogger("bench.burst")


async def burst(engine: Engine, photos: list[bytes]) -> list[float]:
    """Seconds from submission to answer of each search, all submitted at once."""
    t0 = time.perf_counter()

    async def one(photo: bytes) -> float:
        try:
            await engine.search(photo, actor="bench:burst", case="BURST")
        except NoFaceFound:
            pass
        return time.perf_counter() - t0

    return sorted(await asyncio.gather(*(one(p) for p in photos)))


async def run(args: argparse.Namespace) -> int:
    """Open the engine, warm it up, then one burst per scheduler."""
    data_dir = args.data_dir or common.cache_dir() / f"e2e-{args.n}"
    if not (data_dir / "sightline.sqlite3").exists():
        raise SystemExit(f"{data_dir} holds no gallery: run `python bench/e2e.py --n {args.n}` first, or pass --data-dir")
    engine = await Engine.open(EngineConfig(data_dir=data_dir, require_case=False))
    _, probes = dev_sets()
    photos = [as_telegram_photo(p) for _, p in probes]
    photos = [photos[i % len(photos)] for i in range(args.burst)]
    out: dict[str, object] = {"n": len(engine.index), "burst": args.burst, "workers": engine.config.workers}
    try:
        await engine.search(photos[0], actor="bench:warm-up")
        for name in args.order.split(","):
            if name == "fifo":  # the engine as it was: one FIFO pool for every stage of every search
                own = engine._executor
                engine._executor = ThreadPoolExecutor(max_workers=engine.config.workers)  # type: ignore[assignment]
            cpu0 = time.process_time()
            times = await burst(engine, photos)
            cpu = (time.process_time() - cpu0) / len(times)
            if name == "fifo":
                engine._executor.shutdown(wait=True)
                engine._executor = own
            p50 = float(np.percentile(times, 50))
            common.emit(f"{name}: burst of {len(times)}: fastest {times[0]:.2f} s, p50 {p50:.2f} s, max {times[-1]:.2f} s "
                        f"(p50/max {p50 / times[-1]:.2f}); CPU {cpu * 1e3:.0f} ms per search; load1 {common.load_avg()[0]:.1f}")
            out.update({f"{name}_min_s": round(times[0], 2), f"{name}_p50_s": round(p50, 2), f"{name}_max_s": round(times[-1], 2)})
    finally:
        await engine.close()
    out["load1"] = round(common.load_avg()[0], 2)
    common.emit(common.kv_line(out))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20_000, help="use bench/e2e.py's cached gallery of this many synthetic faces")
    p.add_argument("--data-dir", type=Path, help="or this data dir")
    p.add_argument("--burst", type=int, default=50, help="searches submitted at once")
    p.add_argument("--order", default="priority,fifo", help="schedulers to measure, in this order: priority, fifo")
    args = p.parse_args(argv)
    common.setup_logging()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
