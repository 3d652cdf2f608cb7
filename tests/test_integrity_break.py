"""Breaking the integrity guarantees as an operator would: real `sightline` processes on real files at once."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_integrity import assert_everything_audited

from conftest import ROOT, dev_identities

CLI = [sys.executable, "-c", "import sys; from bot.cli import main; sys.exit(main())"]


def linked_folder(tmp_path: Path, people: int, photos: int) -> tuple[Path, int]:
    """A folder of symlinks to dev photos (`people` identities x up to `photos` each); returns it and its photo count."""
    folder = tmp_path / "photos"
    n = 0
    for name, paths in sorted(dev_identities().items())[:people]:
        (folder / name).mkdir(parents=True)
        for p in paths[:photos]:
            (folder / name / p.name).symlink_to(p)
            n += 1
    return folder, n


def test_two_index_runs_on_one_folder_at_once_both_finish_and_each_image_is_enrolled_once(tmp_path: Path) -> None:
    # Both runs pass the duplicate check for the same image before either commits it; the loser's insert then
    # meets the UNIQUE sha256: it must count the image as already in the gallery, not end the run.
    folder, n = linked_folder(tmp_path, people=4, photos=4)
    data = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [*CLI, "--data-dir", str(data), "index", str(folder), "--subject-from-folder", "--no-progress"]
    runs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [r.communicate(timeout=600) for r in runs]
    for r, (_, err) in zip(runs, outs, strict=True):
        assert r.returncode == 0, err
        assert "Traceback" not in err and "IntegrityError" not in err, err
    with sqlite3.connect(data / "sightline.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM images").fetchone()[0] == n
        assert db.execute("SELECT count(*) FROM audit WHERE action = 'enroll'").fetchone()[0] == n
    assert_everything_audited(data)


def sightline(data: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real CLI on `data` in its own process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([*CLI, "--data-dir", str(data), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("seq", [10**30, -5, True])
def test_a_hand_edited_change_seq_in_the_sidecar_is_caught_up_from_the_database(gallery_copy: Path, seq: object) -> None:
    # The sidecar's checksum covers the index file, not the sidecar: an edited change_seq must never make the
    # gallery unusable (it once raised OverflowError from every command) nor skip changes.
    side = gallery_copy / "gallery.usearch.json"
    fields = json.loads(side.read_text())
    fields["change_seq"] = seq
    side.write_text(json.dumps(fields))
    for args in (("stats",), ("doctor", "--skip-telegram")):
        r = sightline(gallery_copy, *args)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "Traceback" not in r.stderr and "Error:" not in r.stderr, r.stderr
    assert_everything_audited(gallery_copy)


def test_an_unreadable_audit_head_file_fails_verify_naming_it_without_a_traceback(gallery_copy: Path) -> None:
    head = gallery_copy / "audit-head.log"
    head.unlink()
    head.mkdir()  # unreadable as a file (chmod does not stop root, a folder does)
    r = sightline(gallery_copy, "audit", "verify")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "AUDIT CHAIN" in r.stdout and f"audit head file {head} cannot be read" in r.stdout, r.stdout + r.stderr
    assert "Error" not in r.stderr, r.stderr


def test_embeddings_cut_short_or_turned_into_text_by_hand_are_reported_never_a_traceback(gallery_copy: Path) -> None:
    # `embedding || x'00'` in the sqlite3 shell stores TEXT (not valid UTF-8): reading it as a str once raised
    # "Could not decode to UTF-8 column 'embedding'" from every command that rebuilt or searched.
    with sqlite3.connect(gallery_copy / "sightline.sqlite3") as db:
        short, text = (r[0] for r in db.execute("SELECT id FROM faces ORDER BY id LIMIT 2"))
        db.execute("UPDATE faces SET embedding = substr(embedding, 1, 1000) WHERE id = ?", (short,))
        db.execute("UPDATE faces SET embedding = embedding || x'00000000' WHERE id = ?", (text,))
        assert db.execute("SELECT typeof(embedding) FROM faces WHERE id = ?", (text,)).fetchone()[0] == "text"
    for p in gallery_copy.glob("gallery.usearch*"):
        p.unlink()  # so the next command rebuilds from every row
    r = sightline(gallery_copy, "stats")
    assert r.returncode == 0 and "Error" not in r.stderr, r.stdout + r.stderr
    r = sightline(gallery_copy, "doctor", "--deep", "--skip-telegram")
    assert r.returncode == 1 and "Error" not in r.stderr, r.stdout + r.stderr
    rows_line = next(line for line in r.stdout.splitlines() if " rows " in line)
    assert "2 damaged" in rows_line and f"face {short} " in rows_line and f"face {text} " in rows_line, rows_line
    r = sightline(gallery_copy, "search", str(dev_identities()["Angelina_Jolie"][0]), "--case", "C-1")
    assert r.returncode == 0 and "Error" not in r.stderr, r.stdout + r.stderr


HOLDER = """
import sys, time
from pathlib import Path
from engine.index import acquire_save_lock
fd = acquire_save_lock(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(600)
"""


def test_the_save_lock_still_excludes_after_an_operator_deletes_the_lock_file(gallery_copy: Path) -> None:
    # An operator "cleaning up a stale lock file" while a save holds it must not let a second saver in: two
    # savers at once can rename an index older than a just-committed erasure over the newer one.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(gallery_copy / "gallery.usearch")], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, text=True)
    forget = None
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        for p in gallery_copy.glob("*.lock"):
            p.unlink()
        forget = subprocess.Popen([*CLI, "--data-dir", str(gallery_copy), "forget", "--subject", "Tony_Blair", "--yes"],
                                  cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the erasure commits, then forget saves the index under the lock
            with sqlite3.connect(gallery_copy / "sightline.sqlite3", timeout=5) as db:
                if not db.execute("SELECT count(*) FROM images WHERE subject = 'Tony_Blair'").fetchone()[0]:
                    break
            time.sleep(0.1)
        time.sleep(3)
        assert forget.poll() is None, "forget saved the index while another process held the save lock"
        holder.kill()
        holder.wait()
        out, err = forget.communicate(timeout=60)
        assert forget.returncode == 0, out + err
    finally:
        for p in (holder, forget):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert_everything_audited(gallery_copy)


def test_a_restore_killed_after_staging_leaves_no_database_copy_once_restore_is_run_again(gallery_copy: Path, tmp_path: Path) -> None:
    backup = tmp_path / "backup"
    assert sightline(gallery_copy, "backup", str(backup)).returncode == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SIGHTLINE_FAULT_AT": "restore:staged"}  # dies there as kill -9 would
    killed = subprocess.run([*CLI, "--data-dir", str(gallery_copy), "restore", str(backup), "--force"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == 86, killed.stdout + killed.stderr
    assert list(gallery_copy.glob(".restore-*")), "the fault point was not reached after staging"
    r = sightline(gallery_copy, "restore", str(backup), "--force")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not list(gallery_copy.glob(".restore-*")), "a killed restore's staged database copy was left behind"
    assert_everything_audited(gallery_copy)
