"""`sightline index`: folders, manifests, failures, resumability, and a kill -9 in the middle."""

from __future__ import annotations

import asyncio
import os
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


async def cli(argv: list[str]) -> int:
    return await asyncio.to_thread(cli_main, argv)


async def test_manifest_ingest_reports_failures_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.jpg").write_text("not a photo")
    grey = tmp_path / "grey.png"
    from PIL import Image

    Image.new("RGB", (300, 300), (90, 90, 90)).save(grey)
    manifest = tmp_path / "gallery.csv"
    manifest.write_text(
        "path,source_url,subject,expires_at,notes\n"
        f"{DEV / 'Barack_Obama' / '1.jpg'},https://archive.example/ob/1,Barack_Obama,2030-01-01,first\n"
        f"{DEV / 'Elon_Musk' / '1.jpg'},https://archive.example/em/1,,,\n"
        "notes.jpg,https://archive.example/x,,,\n"
        "grey.png,https://archive.example/g,,,\n"
        "missing.jpg,https://archive.example/m,,,\n"
    )
    data = tmp_path / "data"
    report = tmp_path / "report.csv"
    code = await cli(["--data-dir", str(data), "index", str(manifest), "--no-progress", "--report", str(report)])
    out = capsys.readouterr().out
    assert code == 0
    assert "indexed 2 image(s)" in out and "1 with no face" in out and "1 unreadable" in out
    assert "1 skipped (not an image)" in out
    lines = report.read_text().splitlines()
    assert lines[0] == "path,reason,message,line" and len(lines) == 4
    assert any("grey.png,no_face" in line and line.endswith(",5") for line in lines)
    assert any("notes.jpg,not_image" in line and line.endswith(",4") for line in lines)
    assert any("missing.jpg,io" in line and line.endswith(",6") for line in lines)
    with sqlite3.connect(data / "sightline.sqlite3") as db:
        row = db.execute("SELECT subject, expires_at, notes FROM images WHERE source_url = 'https://archive.example/ob/1'").fetchone()
    assert row == ("Barack_Obama", "2030-01-01T00:00:00+00:00", "first")
    # A second run skips what is already there.
    code = await cli(["--data-dir", str(data), "index", str(manifest), "--no-progress", "--report", str(report)])
    assert "indexed 0 image(s)" in capsys.readouterr().out and code == 0
    assert await cli(["--data-dir", str(data), "stats"]) == 0
    out = capsys.readouterr().out
    assert "images          2\n" in out and "hamming, 192-d, 1000 candidates re-ranked" in out


async def test_bad_manifest_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,url\na.jpg,b\n")
    assert await cli(["--data-dir", str(tmp_path / "d"), "index", str(manifest), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("sightline: error: bad manifest") and "\n" not in err


def test_kill_during_ingest_loses_nothing_committed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cmd = [
        sys.executable, "-c", "import sys; from bot.cli import main; sys.exit(main())",
        "--data-dir", str(data), "index", str(DEV), "--subject-from-folder", "--no-progress", "--save-every", "0.5",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db_path = data / "sightline.sqlite3"
    deadline = time.monotonic() + 120
    committed = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            if db_path.exists() and (data / "gallery.usearch").exists():
                try:
                    with sqlite3.connect(db_path, timeout=1) as db:
                        committed = db.execute("SELECT count(*) FROM images").fetchone()[0]
                except sqlite3.OperationalError:
                    continue
                if committed >= 40:
                    break
        assert proc.poll() is None, "the ingest finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    async def reopen() -> tuple[int, int, int, int]:
        engine = await Engine.open(make_config(data))
        try:
            with sqlite3.connect(db_path) as db:
                images = db.execute("SELECT count(*) FROM images").fetchone()[0]
                orphans = db.execute(
                    "SELECT count(*) FROM images i WHERE NOT EXISTS (SELECT 1 FROM faces f WHERE f.image_id = i.id)"
                ).fetchone()[0]
            stats = await engine.stats()
            return images, orphans, stats.faces, len(engine.index)
        finally:
            await engine.close()

    images, orphans, faces, indexed = asyncio.run(reopen())
    assert images >= committed  # nothing that was committed is lost
    assert orphans == 0  # an image is committed with all its faces or not at all
    assert indexed == faces  # the index was repaired to agree with the database
    # Resuming completes the gallery without duplicates.
    assert cli_main(["--data-dir", str(data), "index", str(DEV), "--subject-from-folder", "--no-progress"]) == 0
    images, orphans, faces, indexed = asyncio.run(reopen())
    assert images == len(list(DEV.glob("*/*.jpg"))) and indexed == faces
