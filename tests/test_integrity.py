"""A change and its audit entry commit together: processes ended at every commit boundary, and by kill -9."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.cli import main as cli_main
from conftest import DEV, ROOT, make_config
from engine import Engine
from engine.faults import FAULT_ENV, FAULT_EXIT_CODE
from engine.index import read_sidecar, stale_temporaries

# One operation on the gallery in a child process, which a fault point (engine/faults.py) may end at once.
CHILD = """
import asyncio, sys
from pathlib import Path
from engine import Engine, EngineConfig

async def main(data: str, op: str) -> None:
    engine = await Engine.open(EngineConfig(data_dir=Path(data), require_case=False))
    try:
        if op == "enroll":
            photo, url = Path(sys.argv[3]).read_bytes(), "https://new.example/" + sys.argv[4]
            await engine.enroll(photo, source_url=url, subject="Newcomer", actor="t")
        elif op == "forget":
            await engine.forget(subject="Vladimir_Putin", actor="t")
        elif op == "purge":
            await engine.purge_expired(actor="t")
        elif op == "allow":
            await engine.allow(777, "officer", actor="t")
        elif op == "revoke":
            await engine.revoke(778, actor="t")
        elif op == "case":
            await engine.set_case(779, "OP-9", actor="t")
    finally:
        await engine.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""

POINTS = ("before-audit", "before-commit", "after-commit")


def run_child(data: Path, op: str, fault: str | None, photo: Path = DEV / "Barack_Obama" / "2.jpg", tag: str = "1") -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    args = [sys.executable, "-c", CHILD, str(data), op, str(photo), tag]
    return subprocess.run(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=180).returncode


def entries(db: sqlite3.Connection, action: str) -> list[dict[str, object]]:
    return [json.loads(r[0]) for r in db.execute("SELECT details FROM audit WHERE action = ? ORDER BY seq", (action,))]


def assert_everything_audited(data: Path) -> None:
    """Every image has its enroll entry, the chain verifies, and the index agrees with the database."""
    with sqlite3.connect(data / "sightline.sqlite3") as db:
        images = {r[0] for r in db.execute("SELECT id FROM images")}
        enrolled = {e["image_id"] for e in entries(db, "enroll")}
        erased = {i for e in entries(db, "forget") + entries(db, "purge") for i in e["image_ids"]}  # type: ignore[attr-defined]
    assert images <= enrolled, f"images without their enroll entry: {sorted(images - enrolled)}"
    assert enrolled - images <= erased, f"images gone without an erasure entry: {sorted(enrolled - images - erased)}"
    assert cli_main(["--data-dir", str(data), "audit", "verify"]) == 0


async def prepare(data: Path) -> None:
    """Users for revoke and case, and one expired image for purge (through the engine, audited)."""
    engine = await Engine.open(make_config(data))
    try:
        await engine.allow(778, actor="t")
        await engine.allow(779, actor="t")
        await engine.enroll((DEV / "Tony_Blair" / "2.jpg").read_bytes(), source_url="https://old.example/1",
                            subject="Tony_Blair", expires_at="2020-01-01", actor="t")
    finally:
        await engine.close()


def state(data: Path, op: str) -> tuple[bool, int]:
    """(whether the change is in the database, how many audit entries of its kind there are)."""
    with sqlite3.connect(data / "sightline.sqlite3") as db:
        q = {
            "enroll": ("SELECT count(*) FROM images WHERE source_url = 'https://new.example/1'", "enroll"),
            "forget": ("SELECT count(*) = 0 FROM images WHERE subject = 'Vladimir_Putin'", "forget"),
            "purge": ("SELECT count(*) = 0 FROM images WHERE source_url = 'https://old.example/1'", "purge"),
            "allow": ("SELECT count(*) FROM users WHERE user_id = 777", "allow"),
            "revoke": ("SELECT count(*) = 0 FROM users WHERE user_id = 778", "revoke"),
            "case": ("SELECT count(*) FROM users WHERE user_id = 779 AND active_case = 'OP-9'", "case"),
        }[op]
        done = bool(db.execute(q[0]).fetchone()[0])
        if op == "enroll":
            n = sum(1 for e in entries(db, "enroll") if e["source_url"] == "https://new.example/1")
        elif op in ("allow", "revoke", "case"):
            uid = {"allow": 777, "revoke": 778, "case": 779}[op]
            n = sum(1 for e in entries(db, q[1]) if e["user_id"] == uid)
        else:
            n = len(entries(db, q[1]))
    return done, n


@pytest.mark.parametrize("op", ["enroll", "forget", "purge", "allow", "revoke", "case"])
async def test_a_process_ended_at_any_commit_boundary_leaves_change_and_entry_together(
    op: str, gallery_dir: Path, tmp_path: Path
) -> None:
    base = tmp_path / "base"
    shutil.copytree(gallery_dir, base)
    await prepare(base)
    _, entries_before = state(base, op)
    for point in POINTS:
        data = tmp_path / point
        shutil.copytree(base, data)
        code = await asyncio.to_thread(run_child, data, op, f"{op}:{point}")
        assert code == FAULT_EXIT_CODE, f"{op}:{point} was never reached (exit {code})"
        done, n = state(data, op)
        # Before the commit neither the change nor its entry is there; after it, both are.
        assert (done, n) == ((True, entries_before + 1) if point == "after-commit" else (False, entries_before)), point
        await asyncio.to_thread(assert_everything_audited, data)
        # The next process repairs the index and sees the same gallery.
        engine = await Engine.open(make_config(data))
        try:
            assert len(engine.index) == (await engine.stats()).faces
        finally:
            await engine.close()


def committed_images(db_path: Path) -> int:
    try:
        with sqlite3.connect(db_path, timeout=1) as db:
            return int(db.execute("SELECT count(*) FROM images").fetchone()[0])
    except sqlite3.OperationalError:
        return -1


def test_random_kill_9_during_index_never_leaves_an_unaudited_image(tmp_path: Path) -> None:
    data = tmp_path / "data"
    db_path = data / "sightline.sqlite3"
    total = len(list(DEV.glob("*/*.jpg")))
    cmd = [sys.executable, "-c", "import sys; from bot.cli import main; sys.exit(main())",
           "--data-dir", str(data), "index", str(DEV), "--subject-from-folder", "--no-progress", "--save-every", "0.3"]
    rng = random.Random(int(time.time()))
    kills = 0
    for _ in range(4):
        start = max(committed_images(db_path), 0)
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = start + rng.randint(1, 25)
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline and proc.poll() is None and committed_images(db_path) < target:
                time.sleep(0.05)
            time.sleep(rng.uniform(0, 0.4))  # anywhere: mid-detection, mid-transaction, mid-save
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
        finally:
            proc.wait(timeout=60)
        assert_everything_audited(data)
        if proc.returncode == 0:
            break
    assert kills >= 1
    # Resuming completes the gallery; every image has exactly one enroll entry.
    assert cli_main(["--data-dir", str(data), "index", str(DEV), "--subject-from-folder", "--no-progress"]) == 0
    assert_everything_audited(data)
    with sqlite3.connect(db_path) as db:
        ids = [e["image_id"] for e in entries(db, "enroll")]
        assert db.execute("SELECT count(*) FROM images").fetchone()[0] == total
    assert len(ids) == len(set(ids)) == total


def test_an_ingest_whose_workers_all_fail_ends_instead_of_hanging(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), FAULT_ENV: "enroll:before-commit:raise"}
    cmd = [sys.executable, "-c", "import sys; from bot.cli import main; sys.exit(main())",
           "--data-dir", str(tmp_path / "data"), "index", str(DEV), "--no-progress", "--concurrency", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "fault injected at enroll:before-commit" in proc.stderr
    assert committed_images(tmp_path / "data" / "sightline.sqlite3") == 0


async def test_a_save_killed_midway_leaves_nothing_stale(gallery_copy: Path) -> None:
    """Killed before the rename: the temporary file (which holds every vector) is deleted by the next save, so
    a later `forget` leaves none of the subject's vectors behind. Killed after it: the old sidecar is left
    (its checksum no longer matches), and the next start still ends with the index agreeing with the database."""
    from test_many_processes import ERASED, all_bytes, erased_vectors

    _, secrets = await erased_vectors(gallery_copy)
    assert await asyncio.to_thread(run_child, gallery_copy, "enroll", "index-save:before-replace") == FAULT_EXIT_CODE
    leftovers = stale_temporaries(gallery_copy / "gallery.usearch")
    assert leftovers and all(s in leftovers[0].read_bytes() for s in secrets)
    args = ["--data-dir", str(gallery_copy), "forget", "--subject", ERASED, "--yes"]
    assert await asyncio.to_thread(cli_main, args) == 0
    assert stale_temporaries(gallery_copy / "gallery.usearch") == []
    assert not [s for s in secrets if s in all_bytes(gallery_copy)]
    # Killed between the index and its sidecar (an enrolment saving the index itself).
    engine = await Engine.open(make_config(gallery_copy))
    try:
        before = engine.index.stored_state()["change_seq"]
    finally:
        await engine.close()
    photo = DEV / "Colin_Powell" / "2.jpg"
    code = await asyncio.to_thread(run_child, gallery_copy, "enroll", "index-save:after-replace", photo, "2")
    assert code == FAULT_EXIT_CODE
    assert read_sidecar(gallery_copy / "gallery.usearch")["change_seq"] == before  # the sidecar is the old one
    engine = await Engine.open(make_config(gallery_copy))
    try:
        assert len(engine.index) == (await engine.stats()).faces
        hit = (await engine.search(photo.read_bytes(), actor="t")).hits[0]
        assert hit.source_url == "https://new.example/2"
    finally:
        await engine.close()
    await asyncio.to_thread(assert_everything_audited, gallery_copy)
