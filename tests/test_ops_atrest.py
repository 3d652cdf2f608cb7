"""Data at rest: every file Sightline writes is owner-only whatever the umask, and `doctor` catches and fixes one that isn't.

The full-flow test runs the real `sightline` command (index, search, eval, audit export and report, backup, restore,
the bot against the fake Bot API) as separate processes started with umask 022, the usual default that makes new
files world-readable, then walks every file and folder they left behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from fakebotapi import FakeBotAPI
from test_ops_support import REPO, gallery_copy

from conftest import BOT_ADMIN, DEV
from engine import Engine, StorageError, fsmodes

SIGHTLINE = [sys.executable, "-c", "import sys; from bot.cli import main; sys.exit(main())"]  # the console script
IDENTITIES = ("Colin_Powell", "George_W_Bush", "Hugo_Chavez", "Tony_Blair")


def env(data: Path, tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of a `sightline` process: our worktree first, small thread counts, its own matplotlib cache."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith("SIGHTLINE_")}
    return {
        **keep, "PYTHONPATH": str(REPO), "SIGHTLINE_DATA_DIR": str(data), "SIGHTLINE_INFERENCE_THREADS": "1",
        "SIGHTLINE_WORKERS": "1", "SIGHTLINE_HTTP_PORT": "0", "MPLCONFIGDIR": str(tmp / "mplconfig"), **extra,
    }


def run(args: list[str], environ: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """One `sightline` command under umask 022; fails the test with its output if it fails."""
    result = subprocess.run([*SIGHTLINE, *args], env=environ, cwd=REPO, capture_output=True, text=True,
                            timeout=timeout, umask=0o022)
    assert result.returncode == 0, f"sightline {' '.join(args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def open_to_others(root: Path) -> list[str]:
    """Every file and folder under `root` (itself included) with a group or other permission bit."""
    found = []
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
            found.append(f"{path.relative_to(root.parent)} {stat.S_IMODE(st.st_mode):04o}")
    return found


def photo_folder(dest: Path) -> Path:
    """Two photos of each of four people (links to the shared set), and one file that is not an image."""
    for name in IDENTITIES:
        (dest / name).mkdir(parents=True)
        for n in ("1", "2"):
            (dest / name / f"{n}.jpg").symlink_to(DEV / name / f"{n}.jpg")
    (dest / "Tony_Blair" / "3.jpg").write_bytes(b"not a jpeg")  # lands in the ingest failure report
    return dest


async def bot_session(environ: dict[str, str], fake: FakeBotAPI) -> str:
    """Run `sightline run` as its own process: the admin enrolls a photo, searches one, then the bot is stopped."""
    proc = await asyncio.create_subprocess_exec(
        *SIGHTLINE, "run", env=environ, cwd=REPO, umask=0o022,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        fake.send_photo(BOT_ADMIN, (DEV / "Jeff_Bezos" / "1.jpg").read_bytes(),
                        caption="/enroll https://records.example/bezos/1 Jeff_Bezos")
        enrolled = await fake.wait_for("sendMessage", chat_id=BOT_ADMIN, timeout=120)
        assert "Jeff_Bezos" in enrolled.text or "nrolled" in enrolled.text, enrolled.text
        fake.send_text(BOT_ADMIN, "/case ATREST-1")
        assert "ATREST-1" in (await fake.wait_for("sendMessage", chat_id=BOT_ADMIN)).text
        fake.send_photo(BOT_ADMIN, (DEV / "Jeff_Bezos" / "2.jpg").read_bytes())
        results = await fake.wait_for("sendPhoto", chat_id=BOT_ADMIN, timeout=60)
        assert "Jeff_Bezos" in results.text, results.text
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)  # the bot saves its index and closes the database on the way out
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode(errors="replace")
    return out.decode(errors="replace")


async def test_a_full_run_under_umask_022_leaves_nothing_readable_by_others(tmp_path: Path) -> None:
    photos = photo_folder(tmp_path / "photos")
    work = tmp_path / "work"  # everything Sightline writes goes in here
    work.mkdir(mode=0o700)
    data = work / "index_data"
    environ = env(data, tmp_path)

    run(["index", str(photos), "--subject-from-folder", "--no-progress"], environ)
    assert list(data.glob("ingest-report-*.csv")), "the bad file should have produced a failure report"
    out = run(["search", "--case", "T-1", "--json", str(DEV / "Colin_Powell" / "3.jpg")], environ).stdout
    assert '"Colin_Powell"' in out
    run(["eval", str(photos), "--out", str(work / "reports" / "eval"), "--max-identities", "3", "--no-progress"], environ)
    assert (work / "reports" / "eval" / "worst_misses.png").is_file()
    run(["audit", "export", "--out", str(work / "audit.jsonl")], environ)
    run(["audit", "export", "--format", "csv", "--out", str(work / "audit.csv")], environ)
    run(["report", "--out", str(work / "oversight.md")], environ)
    run(["backup", str(work / "backups" / "first")], environ)
    run(["--data-dir", str(work / "restored"), "restore", str(work / "backups" / "first")], environ)

    fake = await FakeBotAPI().start()
    try:
        await bot_session(env(data, tmp_path, SIGHTLINE_TELEGRAM_TOKEN=fake.token,
                              SIGHTLINE_TELEGRAM_API_URL=fake.base_url, SIGHTLINE_TELEGRAM_FILE_URL=fake.base_file_url,
                              SIGHTLINE_ADMINS=str(BOT_ADMIN)), fake)
    finally:
        await fake.stop()

    written = sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file())
    for expected in ("index_data/sightline.sqlite3", "index_data/gallery.usearch", "index_data/gallery.usearch.json",
                     "reports/eval/report.md", "reports/eval/det.png", "audit.jsonl", "audit.csv", "oversight.md",
                     "backups/first/manifest.json", "restored/sightline.sqlite3", "restored/gallery.usearch"):
        assert expected in written, f"{expected} missing from {written}"
    assert open_to_others(work) == []
    # and the checker agrees
    result = run(["doctor", "--skip-telegram", "--also", str(work)], environ)
    assert "✓ file modes" in result.stdout


async def test_the_engine_writes_owner_only_files_whatever_the_umask_of_its_caller(tmp_path: Path) -> None:
    """A program using the engine as a library (no `sightline` entry point) gets the same modes, -wal and -shm too."""
    from test_ops_support import engine_config

    data = tmp_path / "lib" / "data"
    previous = os.umask(0o022)
    try:
        engine = await Engine.open(engine_config(data))
        try:
            await engine.enroll((DEV / "Tony_Blair" / "1.jpg").read_bytes(), source_url="file://t", subject="Tony_Blair")
            live = sorted(p.name for p in data.iterdir())
            assert "sightline.sqlite3-wal" in live and "sightline.sqlite3-shm" in live, live
            assert open_to_others(data) == []  # checked while open: the -wal and -shm exist now
        finally:
            await engine.close()
    finally:
        os.umask(previous)
    assert open_to_others(data) == []
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "sightline.sqlite3").stat().st_mode) == 0o600


async def test_an_existing_data_dir_open_to_others_is_tightened_when_the_engine_opens_it(tmp_path: Path) -> None:
    """A data dir made by hand (`mkdir` under umask 022) or by an older version: the first start makes it 0700."""
    from test_ops_support import engine_config

    data = gallery_copy(tmp_path / "data")
    os.chmod(data, 0o755)
    engine = await Engine.open(engine_config(data))
    await engine.close()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700


def test_a_shared_sticky_folder_is_never_tightened(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp: SIGHTLINE_DATA_DIR=/tmp must not lock every other user out of it
    fsmodes.private_dir(shared, tighten=True)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777


def test_doctor_names_a_file_made_world_readable_by_hand_and_fix_repairs_it(tmp_path: Path) -> None:
    data = gallery_copy(tmp_path / "data")
    os.chmod(data, 0o700)
    environ = env(data, tmp_path)
    report = tmp_path / "exports"
    report.mkdir(mode=0o700)
    (report / "audit.jsonl").write_text("{}\n")
    os.chmod(report / "audit.jsonl", 0o600)
    assert "✓ file modes" in run(["doctor", "--skip-telegram", "--also", str(report)], environ).stdout

    os.chmod(data / "gallery.usearch", 0o644)  # an operator's `chmod a+r`, or a copy with cp
    os.chmod(report / "audit.jsonl", 0o640)
    os.chmod(data, 0o755)
    failed = subprocess.run([*SIGHTLINE, "doctor", "--skip-telegram", "--also", str(report)], env=environ, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    line = next(x for x in failed.stdout.splitlines() if "file modes" in x)
    assert line.startswith("✗") and "3 file(s)/folder(s) readable by other accounts" in line
    assert f"{data / 'gallery.usearch'} (0644)" in line and f"{report / 'audit.jsonl'} (0640)" in line
    assert f"{data} (0755)" in line and "sightline doctor --fix" in line

    fixed = run(["doctor", "--skip-telegram", "--fix", "--also", str(report)], environ)
    assert f"made owner-only: {data / 'gallery.usearch'} (0644 -> 0600)" in fixed.stdout
    assert f"made owner-only: {data} (0755 -> 0700)" in fixed.stdout
    assert "✓ file modes" in fixed.stdout and fixed.stdout.rstrip().endswith("all checks passed")
    assert stat.S_IMODE((data / "gallery.usearch").stat().st_mode) == 0o600
    assert stat.S_IMODE((report / "audit.jsonl").stat().st_mode) == 0o600
    assert "✓ file modes" in run(["doctor", "--skip-telegram", "--also", str(report)], environ).stdout


def test_the_entry_point_sets_an_owner_only_umask_and_gives_the_callers_back() -> None:
    """Files nobody listed (a new feature's, a library's cache of case data) are covered by the process umask."""
    code = (
        "import os, bot.cli as c; seen = []; "
        "c._main = lambda argv: seen.append(os.umask(0o022) | 0) or 0; "
        "os.umask(0o002); c.main([]); print(oct(seen[0]), oct(os.umask(0)))"
    )
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0o77", "0o2"]


async def test_a_data_dir_that_cannot_be_created_is_one_clear_error(tmp_path: Path) -> None:
    from test_ops_support import engine_config

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError, match=f"cannot create the data directory {blocker / 'data'}"):
        await Engine.open(engine_config(blocker / "data"))
