"""What following other processes' changes costs a search: the catch-up check of Engine.catch_up().

Before every search the engine asks the database's change log for entries after the seq its index reflects
(one indexed SQLite query through aiosqlite). This script builds a gallery of --faces synthetic faces (random
unit embeddings written straight through MetadataStore, no photos), opens the real Engine on it, and times:

  idle      catch_up() when no other process changed anything (the cost every search pays)
  one_add   catch_up() after another connection committed one new image with one face
  one_del   catch_up() after another connection erased one image

Usage: python bench/catchup.py [--faces 20000] [--repeat 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit, kv_line, machine, percentiles_ms  # noqa: E402  (bench/ is not a package)

from engine import Engine, EngineConfig  # noqa: E402
from engine.store import FaceRow, MetadataStore  # noqa: E402


def face_row(rng: np.random.Generator) -> FaceRow:
    v = rng.standard_normal(512).astype(np.float32)
    return FaceRow(number=1, box=(0, 0, 100, 100), det_score=0.9, width_px=100, blur=50.0, yaw=0.0, pitch=0.0,
                   quality_ok=True, is_primary=True, subject=None, embedding=v / np.linalg.norm(v), thumbnail=b"")


async def add_image(store: MetadataStore, rng: np.random.Generator, n: int) -> int:
    image_id, _ = await store.add_image(
        sha256=hashlib.sha256(f"img-{n}".encode()).hexdigest(), source_url=f"https://bench.example/{n}", subject=None,
        added_by="bench", expires_at=None, notes=None, size=(100, 100), faces=[face_row(rng)],
    )
    return image_id


async def run(faces: int, repeat: int) -> None:
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        other = await MetadataStore.open(data / "sightline.sqlite3")  # "another process": its own connection
        t0 = time.perf_counter()
        for n in range(faces):
            await add_image(other, rng, n)
        emit(f"gallery: {faces} synthetic faces written in {time.perf_counter() - t0:.0f} s")
        engine = await Engine.open(EngineConfig(data_dir=data, require_case=False))
        try:
            await engine.catch_up()
            idle = []
            for _ in range(repeat):
                t = time.perf_counter()
                await engine.catch_up()
                idle.append(time.perf_counter() - t)
            one_add, one_del, n = [], [], faces
            for _ in range(min(200, repeat)):
                image_id = await add_image(other, rng, n)
                n += 1
                t = time.perf_counter()
                assert await engine.catch_up() == 1
                one_add.append(time.perf_counter() - t)
                await other.delete_images([image_id], actor="bench")
                t = time.perf_counter()
                assert await engine.catch_up() == 1
                one_del.append(time.perf_counter() - t)
            emit(kv_line({"case": "idle", **percentiles_ms(idle)}))
            emit(kv_line({"case": "one_add", **percentiles_ms(one_add)}))
            emit(kv_line({"case": "one_del", **percentiles_ms(one_del)}))
        finally:
            await engine.close()
            await other.close()


def main() -> None:
    """Parse the arguments, print the machine, run."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faces", type=int, default=20000)
    p.add_argument("--repeat", type=int, default=2000)
    args = p.parse_args()
    emit(kv_line(machine()))
    asyncio.run(run(args.faces, args.repeat))


if __name__ == "__main__":
    main()
