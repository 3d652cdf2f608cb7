"""Many processes on one gallery, shared by tests/test_many_processes.py (embedded index) and tests/test_milvus.py
(Milvus): a searching engine in its own process (the bot's part), the `sightline` CLI, and what to check afterwards."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import ROOT, dev_identities

ERASED = "Vladimir_Putin"  # the subject `sightline forget` erases while the others run

CLI = [sys.executable, "-c", "import sys; from bot.cli import main; sys.exit(main())"]

# The bot's part: one engine kept open, searching over and over, one JSON line per answer. With a data dir it opens
# that gallery's embedded index; without one ("") it reads the settings from the environment (SIGHTLINE_*), as the
# bot does. With `save_every` > 0 it also saves its index that often, as the bot's periodic saver does (much more
# often, to give it every chance to write back an erased face).
SEARCHER = """
import asyncio, json, sys, time
from dataclasses import replace
from pathlib import Path

async def main(data: str, save_every: float, out: str, stop: str, probes: list[str]) -> None:
    from engine import Engine, EngineConfig
    if data:
        config = EngineConfig(data_dir=Path(data), require_case=False)
    else:
        from bot.settings import Settings
        config = replace(Settings().engine_config(), require_case=False)
    engine = await Engine.open(config)
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
                if save_every and time.monotonic() - last_save > save_every:
                    await engine.save_index()
                    last_save = time.monotonic()
    finally:
        await engine.close()

asyncio.run(main(sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5:]))
"""


def start_searcher(log: Path, stop: Path, probes: list[str], env: dict[str, str], *, data: Path | None = None,
                   save_every: float = 0.0) -> subprocess.Popen[bytes]:
    """Start the searching process: it searches every probe photo until the file `stop` exists, logging to `log`."""
    return subprocess.Popen([sys.executable, "-c", SEARCHER, str(data or ""), str(save_every), str(log), str(stop), *probes],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE)


def wait_until_searching(searcher: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    """Wait (until the monotonic `deadline`) for the searcher's first line; fails with its stderr if it died."""
    while not (log.exists() and log.read_text()) and time.monotonic() < deadline:
        assert searcher.poll() is None, searcher.stderr.read().decode() if searcher.stderr else ""
        time.sleep(0.1)


def searches(log: Path) -> list[dict[str, Any]]:
    """The searcher's answers so far: {"t": time, "probe": photo path, "hits": [[face_id, image_sha256, subject]]}."""
    return [r for r in (json.loads(line) for line in log.read_text().splitlines() if line.strip()) if "probe" in r]


def found_all(log: Path, shas: dict[str, str]) -> bool:
    """Whether the searcher has found, for every probe, the image with that probe's SHA-256."""
    return {r["probe"] for r in searches(log) if any(h[1] == shas.get(r["probe"]) for h in r["hits"])} >= set(shas)


def commit_times(db_path: Path, shas: dict[str, str], seen: dict[str, float]) -> None:
    """Record when each target image (by SHA-256) first appears committed in the database."""
    try:
        with sqlite3.connect(db_path, timeout=1) as db:
            for name, sha in shas.items():
                if name not in seen and db.execute("SELECT 1 FROM images WHERE sha256 = ?", (sha,)).fetchone():
                    seen[name] = time.time()
    except sqlite3.OperationalError:
        pass


def assert_searches_kept_up(log: Path, forgotten_at: float, erased_ids: list[int], shas: dict[str, str],
                            seen: dict[str, float]) -> None:
    """1. No answer after `forget` returned shows an erased face; 2. every face another process committed (at
    `seen[probe]`) was found by the searcher within 10 s."""
    records = searches(log)
    late = [r for r in records if r["t"] > forgotten_at]
    assert late and not [r for r in late if any(h[0] in erased_ids or h[2] == ERASED for h in r["hits"])]
    for name, sha in shas.items():
        first = min((r["t"] for r in records if r["probe"] == name and any(h[1] == sha for h in r["hits"])), default=None)
        assert first is not None, f"the searcher never found {name}, committed by `sightline index`"
        lag = first - seen[name]
        assert lag < 10, f"found {lag:.1f} s after it was committed"


def more_photos(folder: Path, people: int, per_person: slice, targets: int) -> tuple[Path, dict[str, str]]:
    """A manifest (in `folder`) of photos `per_person` of the first `people` dev identities but ERASED, with source links
    https://more.example/<n>; and the SHA-256 of its last `targets` photos (committed late in the run) by path."""
    ids = dev_identities()
    photos = [p for n in [n for n in sorted(ids) if n != ERASED][:people] for p in ids[n][per_person]]
    manifest = folder / "more.csv"
    manifest.write_text("path,source_url,subject\n" + "".join(f"{p},https://more.example/{i},{p.parent.name}\n"
                                                               for i, p in enumerate(photos)))
    return manifest, {p.as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in photos[-targets:]}


def index_and_forget_while_searching(cli: list[str], data: Path, env: dict[str, str], manifest: Path, shas: dict[str, str],
                                     folder: Path, *, searcher_data: Path | None = None, save_every: float = 0.0,
                                     index_options: tuple[str, ...] = (), under_way: int = 1,
                                     check: Callable[[], None] = lambda: None) -> tuple[Path, float, dict[str, float]]:
    """Three processes on one gallery: a searcher (`start_searcher`) probing with a photo of ERASED and the target photos
    (`shas`), `sightline index MANIFEST`, and, once `under_way` of its images are committed, `sightline forget --subject
    ERASED`. Calls `check` over and over from when forget returned until the index run ended and the searcher found every
    target (20 s at most). Returns the searcher's log, when forget returned, and when each target was committed."""
    log, stop = folder / "searches.jsonl", folder / "stop"
    probes = [str(dev_identities()[ERASED][1]), *shas]
    searcher = start_searcher(log, stop, probes, env, data=searcher_data, save_every=save_every)
    indexer = None
    try:
        deadline = time.monotonic() + 120
        wait_until_searching(searcher, log, deadline)
        indexer = subprocess.Popen([*cli, "index", str(manifest), "--no-progress", *index_options], cwd=ROOT, env=env,
                                   stderr=subprocess.PIPE)
        while time.monotonic() < deadline:  # the erasure starts once the ingest is under way
            with sqlite3.connect(data / "sightline.sqlite3", timeout=5) as db:
                if db.execute("SELECT count(*) FROM images WHERE source_url LIKE 'https://more.example/%'").fetchone()[0] >= under_way:
                    break
            time.sleep(0.1)
        forget = subprocess.run([*cli, "forget", "--subject", ERASED, "--yes"], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=180)
        forgotten_at = time.time()
        assert forget.returncode == 0, forget.stderr
        seen: dict[str, float] = {}
        while indexer.poll() is None and time.monotonic() < deadline + 120:
            check()
            commit_times(data / "sightline.sqlite3", shas, seen)
            time.sleep(0.05)
        assert indexer.returncode == 0, indexer.stderr.read().decode() if indexer.stderr else ""
        commit_times(data / "sightline.sqlite3", shas, seen)
        assert set(seen) == set(shas)
        until = time.monotonic() + 20
        while time.monotonic() < until:  # until the searcher has found the last faces
            check()
            if found_all(log, shas):
                break
            time.sleep(0.2)
    finally:
        stop.touch()
        searcher.wait(timeout=120)
        if indexer is not None and indexer.poll() is None:
            indexer.kill()
            indexer.wait()
    assert searcher.returncode == 0, searcher.stderr.read().decode() if searcher.stderr else ""
    return log, forgotten_at, seen
