"""Breaking the integrity guarantees as an operator would: real `sightline` processes on real files at once."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

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
