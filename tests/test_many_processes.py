"""Many processes, one gallery: a long-running engine searching, `sightline index` and `sightline forget` at once."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

from procs import CLI, ERASED, assert_searches_kept_up, index_and_forget_while_searching, more_photos
from test_integrity import assert_everything_audited

from conftest import ROOT, index_copies, make_config
from engine import Engine


def all_bytes(folder: Path) -> bytes:
    """Every byte of every file in the data dir (index, sidecar, temporary files, database, WAL)."""
    out = []
    for p in sorted(folder.iterdir()):
        try:
            out.append(p.read_bytes())
        except (FileNotFoundError, IsADirectoryError):  # a temporary file renamed away meanwhile
            continue
    return b"".join(out)


async def erased_vectors(data: Path) -> tuple[list[int], list[bytes]]:
    """The face ids of the subject to erase and their vectors as the index stores them (int8, projected)."""
    engine = await Engine.open(make_config(data))
    try:
        with sqlite3.connect(data / "sightline.sqlite3") as db:
            ids = [r[0] for r in db.execute("SELECT id FROM faces WHERE image_id IN (SELECT id FROM images WHERE subject = ?)", (ERASED,))]
        vectors = index_copies(engine.index, ids)  # codes and int8 vectors (hamming) or int8 vectors (usearch)
    finally:
        await engine.close()
    return ids, vectors


def test_bot_index_and_forget_at_once_lose_nothing_and_leave_no_erased_vector(gallery_copy: Path, tmp_path: Path) -> None:
    data = gallery_copy
    erased_ids, secrets = asyncio.run(erased_vectors(data))
    assert erased_ids and all(s in (data / "gallery.usearch").read_bytes() for s in secrets)
    # `sightline index` adds the other photos of 12 people (not the one being erased) from a manifest.
    manifest, shas = more_photos(tmp_path, 12, slice(1, 4), targets=3)
    scans = 0

    def no_erased_vector() -> None:
        """From when forget returned, whatever the others do, no file in the data dir holds an erased vector."""
        nonlocal scans
        stored = all_bytes(data)
        scans += 1
        assert not [s for s in secrets if s in stored], f"an erased vector is back on disk (scan {scans})"

    # The bot's part saves its index every second (the bot's saver, much more often) to give it every chance to write
    # back an erased face.
    log, forgotten_at, seen = index_and_forget_while_searching(
        [*CLI, "--data-dir", str(data)], data, {**os.environ, "PYTHONPATH": str(ROOT)}, manifest, shas, tmp_path,
        searcher_data=data, save_every=1.0, index_options=("--save-every", "0.5"), under_way=3, check=no_erased_vector)
    assert not [s for s in secrets if s in all_bytes(data)], "an erased vector is on disk after everyone closed"
    # 1. A search never returns an erased face once forget has returned; 2. a face committed by another process is
    # found by the long-running engine within seconds.
    assert_searches_kept_up(log, forgotten_at, erased_ids, shas, seen)
    # 3. Afterwards the index file agrees with the database and everything is audited.
    assert_everything_audited(data)

    async def reopen() -> tuple[int, int]:
        engine = await Engine.open(make_config(data))
        try:
            return len(engine.index), (await engine.stats()).faces
        finally:
            await engine.close()

    indexed, faces = asyncio.run(reopen())
    assert indexed == faces
