"""Verified data (issue 11, item 3): foreign or damaged index files, damaged stored embeddings, doctor --deep."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sqlite3
import zlib
from pathlib import Path

import numpy as np
import pytest
from test_ops_support import EXTRA, QUERY, cli, engine_config, gallery_copy

from engine import Engine
from engine.store import MetadataStore


async def doctor_lines(data: Path, *extra: str) -> tuple[int, dict[str, str]]:
    """`sightline doctor` (in a thread: it runs its own event loop): exit code and the check lines by name."""
    code, out, err = await asyncio.to_thread(cli, "--data-dir", str(data), "doctor", "--skip-telegram", *extra)
    return code, {line.split()[1]: line for line in out.splitlines() if line[:1] in "✓!✗-" and len(line.split()) > 1}


async def colin_found(data: Path) -> tuple[bool, list[float]]:
    """Search the second photo of Colin Powell: is his gallery photo the top hit? And every similarity shown."""
    engine = await Engine.open(engine_config(data))
    try:
        result = await engine.search(QUERY.read_bytes(), actor="test", top=5, threshold=-1.0)
    finally:
        await engine.close()
    return bool(result.hits) and result.hits[0].subject == "Colin_Powell", [h.similarity for h in result.hits]


async def test_index_copied_from_another_gallery_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = gallery_copy(tmp_path / "data")
    other = tmp_path / "other"  # another gallery whose face id 1 is someone else
    engine = await Engine.open(engine_config(other))
    await engine.enroll(EXTRA.read_bytes(), source_url="file://other", subject="Tony_Blair")
    await engine.close()
    for name in ("gallery.usearch", "gallery.usearch.json"):
        shutil.copyfile(other / name, data / name)

    code, checks = await doctor_lines(data)
    assert checks["index"].startswith("!") and "belongs to another gallery" in checks["index"], checks
    caplog.set_level(logging.WARNING)
    found, _ = await colin_found(data)
    assert found  # kept, the foreign file would hold Tony Blair's vector under Colin Powell's face id
    assert any("belongs to another gallery" in r.getMessage() and "rebuilt" in r.getMessage() for r in caplog.records)
    side = json.loads((data / "gallery.usearch.json").read_text())
    async_store = await MetadataStore.open(data / "sightline.sqlite3", create=False)
    try:
        assert side["gallery_id"] == async_store.gallery_id != json.loads((other / "gallery.usearch.json").read_text())["gallery_id"]
    finally:
        await async_store.close()


async def test_overwritten_index_bytes_are_detected_and_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = gallery_copy(tmp_path / "data")
    index = data / "gallery.usearch"
    raw = bytearray(index.read_bytes())
    size = len(raw)
    raw[size // 2 : size - 64] = np.random.default_rng(1).integers(0, 256, size - 64 - size // 2, dtype=np.uint8).tobytes()
    index.write_bytes(bytes(raw))

    code, checks = await doctor_lines(data)
    assert code == 0 and checks["index"].startswith("!") and "do not match the checksum" in checks["index"], checks
    caplog.set_level(logging.WARNING)
    found, _ = await colin_found(data)
    assert found
    assert any("do not match the checksum" in r.getMessage() for r in caplog.records)
    code, checks = await doctor_lines(data, "--deep")
    assert code == 0 and checks["index"].startswith("✓") and checks["vectors"].startswith("✓"), checks


def _damage(db: Path) -> None:
    """Face 1 (Colin Powell): bytes scaled by 1e20, checksum left as it was. Face 2: scaled and re-checksummed."""
    conn = sqlite3.connect(db)
    for face_id, fix_crc in ((1, False), (2, True)):
        blob = conn.execute("SELECT embedding FROM faces WHERE id = ?", (face_id,)).fetchone()[0]
        bad = (np.frombuffer(blob, dtype=np.float32) * np.float32(1e20)).astype(np.float32).tobytes()
        conn.execute("UPDATE faces SET embedding = ? WHERE id = ?", (bad, face_id))
        if fix_crc:
            conn.execute("UPDATE faces SET emb_crc = ? WHERE id = ?", (zlib.crc32(bad), face_id))
    conn.commit()
    conn.close()


async def test_damaged_embeddings_are_reported_and_never_ranked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = gallery_copy(tmp_path / "data")
    _damage(data / "sightline.sqlite3")
    caplog.set_level(logging.WARNING)
    found, sims = await colin_found(data)
    assert not found  # his only gallery face is damaged: it is not ranked (it was shown at 1e22 % before)
    assert sims and all(-1.0 <= s <= 1.0 for s in sims)
    damaged = [r.getMessage() for r in caplog.records if "is damaged in the database" in r.getMessage()]
    assert any(m.startswith("face 1 ") and "checksum" in m for m in damaged), damaged

    code, checks = await doctor_lines(data, "--deep")
    assert code == 1 and checks["rows"].startswith("✗"), checks
    assert "2 damaged stored embedding(s)" in checks["rows"]
    assert "face 1 (image 1): its embedding does not match its checksum" in checks["rows"]
    assert "face 2 (image 2): its embedding has length" in checks["rows"]
    code, checks = await doctor_lines(data)  # without --deep: the rows are not read
    assert code == 0 and "rows" not in checks


async def test_deep_doctor_finds_index_vectors_that_are_not_their_faces(tmp_path: Path) -> None:
    data = gallery_copy(tmp_path / "data")
    conn = sqlite3.connect(data / "sightline.sqlite3")
    blob, crc = conn.execute("SELECT embedding, emb_crc FROM faces WHERE id = 2").fetchone()
    conn.execute("UPDATE faces SET embedding = ?, emb_crc = ? WHERE id = 1", (blob, crc))  # intact, but not face 1's
    conn.commit()
    conn.close()
    code, checks = await doctor_lines(data)
    assert code == 0 and checks["index"].startswith("✓")  # checksum and key set are fine: only --deep sees it
    code, checks = await doctor_lines(data, "--deep")
    assert code == 1 and checks["rows"].startswith("✓")
    assert checks["vectors"].startswith("✗") and "1 index vector(s) do not match their stored faces (1)" in checks["vectors"]


async def test_migration_adds_checksums_and_a_gallery_id_to_an_old_database(tmp_path: Path) -> None:
    data = gallery_copy(tmp_path / "data")
    db = data / "sightline.sqlite3"
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE faces DROP COLUMN emb_crc")
    conn.execute("DELETE FROM meta WHERE key = 'gallery_id'")
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    blob = conn.execute("SELECT embedding FROM faces WHERE id = 3").fetchone()[0]
    conn.execute("UPDATE faces SET embedding = ? WHERE id = 3", (bytes(len(blob)),))  # damaged before the upgrade
    conn.commit()
    conn.close()
    store = await MetadataStore.open(db, create=False)
    try:
        assert store.gallery_id and len(store.gallery_id) == 32
        rows = await store._all("SELECT id, emb_crc, embedding FROM faces ORDER BY id")
        assert [r[1] == zlib.crc32(r[2]) for r in rows] == [True, True, False] and rows[2][1] is None
        damaged = [d async for _, d in store.damaged_faces() if d is not None]
        assert [(d.face_id, d.problem) for d in damaged] == [(3, "its embedding has length 0, not 1")]
        assert await store.get_meta("schema_version") == "2"
    finally:
        await store.close()


def test_checking_rows_together_finds_what_checking_each_finds() -> None:
    """A search checks its ~40 candidates at once (integrity.embedding_problems): the same verdicts, the same words."""
    from engine.integrity import embedding_problem, embedding_problems

    rng = np.random.default_rng(3)
    unit = [v / np.linalg.norm(v) for v in rng.normal(size=(12, 512)).astype(np.float32)]
    blobs: list[bytes | None] = [v.tobytes() for v in unit]
    crcs: list[int | None] = [zlib.crc32(b) for b in blobs if b is not None]
    nan, inf = unit[1].copy(), unit[2].copy()
    nan[7], inf[0] = np.nan, np.inf
    blobs[1], crcs[1] = nan.tobytes(), None  # non-finite, no checksum to catch it
    blobs[2], crcs[2] = inf.tobytes(), zlib.crc32(inf.tobytes())  # non-finite with a matching checksum
    blobs[3], crcs[3] = (unit[3] * 1.01).tobytes(), None  # not unit length
    crcs[4] = (crcs[4] or 0) ^ 1  # checksum mismatch
    blobs[5] = (blobs[5] or b"")[:-4]  # short
    blobs[6], crcs[6] = None, None  # missing
    blobs[7], crcs[7] = bytes(2048), None  # zeros
    one_by_one = [embedding_problem(b, c) for b, c in zip(blobs, crcs, strict=True)]
    assert embedding_problems(blobs, crcs) == one_by_one
    assert [p is None for p in one_by_one] == [True] + [False] * 7 + [True] * 4
    assert embedding_problems([], []) == []
