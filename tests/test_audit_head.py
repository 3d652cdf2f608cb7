"""The audit head file kept outside the database (issue 11, item 5): truncation and a lost -wal are detected."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_ops_support import REPO, cli, gallery_copy


def verify(data: Path) -> tuple[int, str]:
    code, out, err = cli("--data-dir", str(data), "audit", "verify")
    return code, out + err


def test_every_entry_is_appended_and_verify_passes(tmp_path: Path) -> None:
    data = gallery_copy(tmp_path / "data")
    conn = sqlite3.connect(data / "sightline.sqlite3")
    chain = conn.execute("SELECT seq, hash FROM audit ORDER BY seq").fetchall()
    conn.close()
    lines = (data / "audit-head.log").read_text().split("\n")
    assert lines[-1] == ""  # every record ends with a newline
    assert [tuple(line.split()) for line in lines[:-1]] == [("0", "0" * 64)] + [(str(s), h) for s, h in chain]
    code, out = verify(data)
    assert code == 0 and "audit chain OK: 3 entries" in out, out


def test_truncated_log_is_detected_even_when_its_own_head_was_rewritten(tmp_path: Path) -> None:
    data = gallery_copy(tmp_path / "data")
    conn = sqlite3.connect(data / "sightline.sqlite3")
    conn.execute("DELETE FROM audit WHERE seq > 1")
    seq, digest = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    conn.execute("UPDATE meta SET value = ? WHERE key = 'audit_head'", (digest,))
    conn.execute("UPDATE meta SET value = ? WHERE key = 'audit_head_seq'", (str(seq),))
    conn.commit()
    conn.close()
    code, out = verify(data)
    assert code == 1, out
    assert "AUDIT CHAIN BROKEN at entry 2" in out
    assert "the head file records entry 3 but the log ends at entry 1: entries 2..3 were lost" in out
    assert str(data / "audit-head.log") in out


def test_lost_wal_after_a_crash_is_detected(tmp_path: Path) -> None:
    data = gallery_copy(tmp_path / "data")  # closed cleanly: everything so far is in the main file
    # A process appends two entries (committed to the -wal) and is killed before any checkpoint.
    script = textwrap.dedent(f"""
        import asyncio, os, signal
        from pathlib import Path
        from engine.audit import HeadLog
        from engine.store import MetadataStore

        async def main():
            data = Path({str(data)!r})
            store = await MetadataStore.open(data / "sightline.sqlite3", head_log=HeadLog(data / "audit-head.log"))
            await store.append_audit("cli:test", "allow", None, {{"user_id": 7}})
            await store.append_audit("cli:test", "revoke", None, {{"user_id": 7}})
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    wal = data / "sightline.sqlite3-wal"
    assert wal.stat().st_size > 0
    wal.unlink()
    (data / "sightline.sqlite3-shm").unlink(missing_ok=True)
    code, out = verify(data)
    assert code == 1, out
    assert "entries 4..5 were lost (a truncated log, a lost -wal file" in out


def test_missing_head_file_fails_and_says_where_it_was(tmp_path: Path) -> None:
    data = gallery_copy(tmp_path / "data")
    (data / "audit-head.log").unlink()
    code, out = verify(data)
    assert code == 1 and f"the audit head file {data / 'audit-head.log'} is missing or empty" in out, out
    assert not (data / "audit-head.log").exists()  # verify only reads


def test_head_file_on_another_disk_via_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mp = monkeypatch
    data = gallery_copy(tmp_path / "data")
    elsewhere = tmp_path / "other-disk" / "heads.log"
    mp.setenv("SIGHTLINE_AUDIT_HEAD_FILE", str(elsewhere))
    (data / "audit-head.log").rename(elsewhere.parent.mkdir() or elsewhere)  # the operator moves it
    code, out = verify(data)
    assert code == 0, out
    mp.setenv("SIGHTLINE_AUDIT_HEAD_FILE", str(tmp_path / "nowhere.log"))
    code, out = verify(data)
    assert code == 1 and "SIGHTLINE_AUDIT_HEAD_FILE" in out
