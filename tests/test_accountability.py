"""Issue 4: the audit chain detects tampering, erasure leaves nothing behind, photos are never kept."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from bot.cli import main as cli_main
from conftest import dev_identities, index_copies, make_config
from engine import Engine
from engine.hamming import HammingIndex


async def cli(argv: list[str]) -> int:
    """Run the `sightline` command in a thread (it runs its own event loop)."""
    return await asyncio.to_thread(cli_main, argv)


def all_bytes(folder: Path) -> bytes:
    """Every byte of every file under a folder."""
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def index_memory(index: object) -> bytes:
    """Every byte of the index's arrays (hamming), spare capacity too; usearch's memory is not reachable."""
    if isinstance(index, HammingIndex):
        return b"".join(a.tobytes() for a in index._all)
    return b""


async def make_log(data_dir: Path, n: int = 8) -> None:
    engine = await Engine.open(make_config(data_dir))
    try:
        for i in range(n):
            await engine.record(f"tg:{100 + i}", "refused", None, reason="not whitelisted")
    finally:
        await engine.close()


async def verify(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = await cli(["--data-dir", str(data_dir), "audit", "verify"])
    return code, capsys.readouterr().out


async def test_untouched_chain_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await make_log(tmp_path)
    code, out = await verify(tmp_path, capsys)
    assert code == 0 and "8 entries" in out


@pytest.mark.parametrize(
    "tamper,bad",
    [
        ("UPDATE audit SET actor = 'tg:999' WHERE seq = 5", 5),  # edit one field
        ("UPDATE audit SET details = '{\"reason\":\"x\"}' WHERE seq = 3", 3),  # edit details
        ("DELETE FROM audit WHERE seq = 4", 4),  # delete one in the middle
        ("UPDATE audit SET ts = '2020-01-01T00:00:00+00:00' WHERE seq = 6", 6),
        ("DELETE FROM audit WHERE seq = 8", 8),  # truncate the end: caught by the recorded head
    ],
)
async def test_tampering_is_detected_at_the_right_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tamper: str, bad: int
) -> None:
    await make_log(tmp_path)
    with sqlite3.connect(tmp_path / "sightline.sqlite3") as db:
        db.execute(tamper)
    code, out = await verify(tmp_path, capsys)
    assert code == 1
    assert f"BROKEN at entry {bad}" in out


async def test_reordering_entries_is_detected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await make_log(tmp_path)
    with sqlite3.connect(tmp_path / "sightline.sqlite3") as db:
        db.execute("UPDATE audit SET seq = -3 WHERE seq = 3")
        db.execute("UPDATE audit SET seq = 3 WHERE seq = 4")
        db.execute("UPDATE audit SET seq = 4 WHERE seq = -3")
    code, out = await verify(tmp_path, capsys)
    assert code == 1 and "BROKEN at entry 3" in out


async def test_purging_old_entries_keeps_the_chain_verifiable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await make_log(tmp_path)
    engine = await Engine.open(make_config(tmp_path))
    try:
        cutoff = [e for e in await engine.audit_tail(8)][4].ts  # everything strictly older goes
        purged = await engine.store.purge_audit_before(cutoff + "Z")  # 'Z' sorts after '+': includes that second
        assert purged >= 1
        assert (await engine.audit_verify()).ok
        await engine.record("tg:1", "refused", None)
    finally:
        await engine.close()
    code, out = await verify(tmp_path, capsys)
    assert code == 0, out


async def test_head_can_be_checked_against_a_recorded_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await make_log(tmp_path)
    assert await cli(["--data-dir", str(tmp_path), "audit", "head"]) == 0
    seq, head = capsys.readouterr().out.split()
    assert seq == "8" and len(head) == 64
    assert await cli(["--data-dir", str(tmp_path), "audit", "verify", "--expect-head", head]) == 0
    await make_log(tmp_path, 1)
    assert await cli(["--data-dir", str(tmp_path), "audit", "verify", "--expect-head", head]) == 1


async def test_query_photo_is_never_retained(gallery_copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    photo = dev_identities()["Barack_Obama"][2].read_bytes()
    engine = await Engine.open(make_config(gallery_copy))
    try:
        result = await engine.search(photo, actor="tg:7", case="C-1")
        assert result.hits
    finally:
        await engine.close()
    stored = all_bytes(gallery_copy)
    middle = len(photo) // 2
    for chunk in (photo[:64], photo[middle : middle + 64], photo[-64:]):
        assert chunk not in stored
        assert chunk.hex() not in stored.decode("latin-1")
    assert result.query_thumbnail[-200:-136] not in stored  # nor the face crop shown to the officer
    logs = caplog.text
    assert photo[middle : middle + 32].hex() not in logs and repr(photo[middle : middle + 32]) not in logs
    # The audit keeps the hash, so the photo can be matched later by whoever holds it.
    with sqlite3.connect(gallery_copy / "sightline.sqlite3") as db:
        details = db.execute("SELECT details FROM audit WHERE action = 'search' ORDER BY seq DESC").fetchone()[0]
    assert result.query_sha256 in details


@pytest.mark.parametrize("kind", ["hamming", "usearch"])
async def test_erasure_leaves_no_embedding_or_thumbnail_in_the_files(gallery_copy: Path, kind: str) -> None:
    db_path = gallery_copy / "sightline.sqlite3"
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT embedding, thumbnail FROM faces WHERE subject = 'Vladimir_Putin'").fetchall()
        others = b"".join(b for r in db.execute("SELECT embedding, thumbnail FROM faces WHERE subject IS NOT 'Vladimir_Putin'") for b in r)
        sha = db.execute("SELECT sha256 FROM images WHERE subject = 'Vladimir_Putin'").fetchone()[0]
    assert rows
    # Blobs may span overflow pages, so look for 48-byte fragments rather than whole blobs.
    # (JPEG headers are shared by every thumbnail: only fragments unique to this face count.)
    secrets = [blob[i : i + 48] for r in rows for blob in r for i in range(0, len(blob) - 48, 256)]
    secrets = [s for s in secrets if s not in others]
    assert len(secrets) > 10
    assert all(s in all_bytes(gallery_copy) for s in secrets)
    engine = await Engine.open(make_config(gallery_copy, index_kind=kind))  # usearch: rebuilt from the database
    try:
        with sqlite3.connect(db_path) as db:
            face_ids = [r[0] for r in db.execute(
                "SELECT f.id FROM faces f JOIN images i ON i.id = f.image_id WHERE i.subject = 'Vladimir_Putin'")]
        # The index's own copies of those faces (sign codes and int8 re-rank vectors) are biometric data too.
        copies = index_copies(engine.index, face_ids)
        secrets += copies
        assert all(s in all_bytes(gallery_copy) for s in copies)
        erased = await engine.forget(subject="Vladimir_Putin", actor="cli:test")
        assert erased.images == 1
        # Nor in the index's memory, spare capacity included, once forget returns.
        assert [s for s in copies if s in index_memory(engine.index)] == []
    finally:
        await engine.close()
    stored = all_bytes(gallery_copy)
    assert [s for s in secrets if s in stored] == []
    with sqlite3.connect(db_path) as db:
        entry = db.execute("SELECT details FROM audit WHERE action = 'forget'").fetchone()[0]
        assert db.execute("SELECT count(*) FROM images WHERE sha256 = ?", (sha,)).fetchone()[0] == 0
    assert '"images": 1' in entry and '"image_ids": [' in entry and 'embedding' not in entry


async def test_expired_images_are_purged_and_retention_applies(tmp_path: Path) -> None:
    ids = dev_identities()
    engine = await Engine.open(make_config(tmp_path, default_retention_days=30))
    try:
        old = await engine.enroll(ids["Tony_Blair"][0].read_bytes(), source_url="u1", subject="Tony_Blair",
                                  expires_at="2020-01-01")
        keep = await engine.enroll(ids["Jacques_Chirac"][0].read_bytes(), source_url="u2", subject="Jacques_Chirac")
        with sqlite3.connect(tmp_path / "sightline.sqlite3") as db:
            expiry = db.execute("SELECT expires_at FROM images WHERE id = ?", (keep.image_id,)).fetchone()[0]
        assert expiry and expiry > "2026"  # the default retention was applied
        erased = await engine.purge_expired(actor="system")
        assert erased.image_ids == (old.image_id,)
        stats = await engine.stats()
        assert stats.images == 1 and len(engine.index) == stats.faces
        assert (await engine.audit_tail(1))[0].action == "purge"
        assert (await engine.purge_expired()).images == 0
    finally:
        await engine.close()


async def test_report_summarises_searches_per_user_and_case(gallery_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = dev_identities()
    engine = await Engine.open(make_config(gallery_copy))
    try:
        await engine.search(ids["Barack_Obama"][1].read_bytes(), actor="tg:1", case="CASE-A")
        await engine.search(ids["Barack_Obama"][2].read_bytes(), actor="tg:1", case="CASE-A")
        await engine.search(ids["Elon_Musk"][1].read_bytes(), actor="tg:2", case="CASE-B", threshold=0.99)
        await engine.forget(subject="Elon_Musk", actor="tg:2")
    finally:
        await engine.close()
    assert await cli(["--data-dir", str(gallery_copy), "report"]) == 0
    out = capsys.readouterr().out
    assert "| tg:1 | 2 | 2 | 100% | 0 |" in out
    assert "| CASE-B | 1 | 0 | 0% |" in out
    assert "forget: 1 image, 1 face" in out and "verified" in out
    assert await cli(["--data-dir", str(gallery_copy), "audit", "export", "--case", "CASE-A", "--format", "jsonl"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all('"case": "CASE-A"' in line for line in lines)
