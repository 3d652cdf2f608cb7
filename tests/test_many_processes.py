"""Many processes, one gallery: a long-running engine searching, `sightline index` and `sightline forget` at once."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from test_integrity import assert_everything_audited

from conftest import ROOT, dev_identities, index_copies, make_config
from engine import Engine

ERASED = "Vladimir_Putin"

# The bot's part: one engine kept open, searching over and over and saving its index every second, as the
# bot's periodic saver does (here much more often, to give it every chance to write back an erased face).
SEARCHER = """
import asyncio, json, sys, time
from pathlib import Path
from engine import Engine, EngineConfig

async def main(data: str, out: str, stop: str, probes: list[str]) -> None:
    engine = await Engine.open(EngineConfig(data_dir=Path(data), require_case=False))
    photos = [(p, Path(p).read_bytes()) for p in probes]
    last_save = time.monotonic()
    try:
        with open(out, "a") as fh:
            print(json.dumps({"ready": time.time()}), file=fh, flush=True)
            while not Path(stop).exists():
                for name, photo in photos:
                    r = await engine.search(photo, actor="bot", top=10, threshold=0.0)
                    hits = [[h.face_id, h.image_sha256, h.subject] for h in r.hits]
                    print(json.dumps({"t": time.time(), "probe": name, "hits": hits}), file=fh, flush=True)
                if time.monotonic() - last_save > 1.0:
                    await engine.save_index()
                    last_save = time.monotonic()
    finally:
        await engine.close()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]))
"""

CLI = [sys.executable, "-c", "import sys; from bot.cli import main; sys.exit(main())"]


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


def commit_times(db_path: Path, shas: dict[str, str], seen: dict[str, float]) -> None:
    """Record when each target image (by SHA-256) first appears committed in the database."""
    try:
        with sqlite3.connect(db_path, timeout=1) as db:
            for name, sha in shas.items():
                if name not in seen and db.execute("SELECT 1 FROM images WHERE sha256 = ?", (sha,)).fetchone():
                    seen[name] = time.time()
    except sqlite3.OperationalError:
        pass


def test_bot_index_and_forget_at_once_lose_nothing_and_leave_no_erased_vector(gallery_copy: Path, tmp_path: Path) -> None:
    import hashlib

    data = gallery_copy
    erased_ids, secrets = asyncio.run(erased_vectors(data))
    assert erased_ids and all(s in (data / "gallery.usearch").read_bytes() for s in secrets)
    # `sightline index` adds the other photos of 12 people (not the one being erased) from a manifest.
    ids = dev_identities()
    people = [n for n in sorted(ids) if n != ERASED][:12]
    photos = [p for n in people for p in ids[n][1:4]]
    manifest = tmp_path / "more.csv"
    rows = "".join(f"{p},https://more.example/{i},{p.parent.name}\n" for i, p in enumerate(photos))
    manifest.write_text("path,source_url,subject\n" + rows)
    targets = {p.as_posix(): p for p in photos[-3:]}  # committed late in the run, while the searcher runs
    shas = {name: hashlib.sha256(p.read_bytes()).hexdigest() for name, p in targets.items()}
    erased_probe = ids[ERASED][1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log, stop = tmp_path / "searches.jsonl", tmp_path / "stop"
    searcher = subprocess.Popen([sys.executable, "-c", SEARCHER, str(data), str(log), str(stop), str(erased_probe), *targets],
                                cwd=ROOT, env=env, stderr=subprocess.PIPE)
    indexer = forget = None
    try:
        deadline = time.monotonic() + 120
        while not (log.exists() and log.read_text()) and time.monotonic() < deadline:
            assert searcher.poll() is None, searcher.stderr.read().decode() if searcher.stderr else ""
            time.sleep(0.1)
        indexer = subprocess.Popen([*CLI, "--data-dir", str(data), "index", str(manifest), "--no-progress", "--save-every", "0.5"],
                                   cwd=ROOT, env=env, stderr=subprocess.PIPE)
        seen: dict[str, float] = {}
        while time.monotonic() < deadline:  # the erasure starts once the ingest is under way
            with sqlite3.connect(data / "sightline.sqlite3", timeout=5) as db:
                if db.execute("SELECT count(*) FROM images WHERE source_url LIKE 'https://more.example/%'").fetchone()[0] >= 3:
                    break
            time.sleep(0.1)
        forget = subprocess.run([*CLI, "--data-dir", str(data), "forget", "--subject", ERASED, "--yes"],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        forgotten_at = time.time()
        assert forget.returncode == 0, forget.stderr
        # From here on, whatever the others do, no file in the data dir holds an erased vector.
        scans = 0
        while indexer.poll() is None and time.monotonic() < deadline + 120:
            stored = all_bytes(data)
            scans += 1
            assert not [s for s in secrets if s in stored], f"an erased vector is back on disk (scan {scans})"
            commit_times(data / "sightline.sqlite3", shas, seen)
            time.sleep(0.05)
        assert indexer.returncode == 0, indexer.stderr.read().decode() if indexer.stderr else ""
        commit_times(data / "sightline.sqlite3", shas, seen)
        assert set(seen) == set(targets)
        # Give the searcher time to find the last face, still scanning the files.
        until = time.monotonic() + 20
        while time.monotonic() < until:
            stored = all_bytes(data)
            assert not [s for s in secrets if s in stored], "an erased vector is back on disk"
            records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            found = {r["probe"] for r in records if "probe" in r and any(h[1] == shas.get(r["probe"]) for h in r["hits"])}
            if found >= set(targets):
                break
            time.sleep(0.2)
    finally:
        stop.touch()
        searcher.wait(timeout=120)
        for p in (indexer,):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert searcher.returncode == 0, searcher.stderr.read().decode() if searcher.stderr else ""
    assert not [s for s in secrets if s in all_bytes(data)], "an erased vector is on disk after everyone closed"
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip() and "probe" in line]
    # 1. A search never returns an erased face once forget has returned.
    late = [r for r in records if r["t"] > forgotten_at]
    assert late and not [r for r in late if any(h[0] in erased_ids or h[2] == ERASED for h in r["hits"])]
    # 2. A face committed by another process is found by the long-running engine within seconds.
    for name, sha in shas.items():
        first = min((r["t"] for r in records if r["probe"] == name and any(h[1] == sha for h in r["hits"])), default=None)
        assert first is not None, f"the searcher never found {name}, committed by `sightline index`"
        lag = first - seen[name]
        assert lag < 10, f"found {lag:.1f} s after it was committed"
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
