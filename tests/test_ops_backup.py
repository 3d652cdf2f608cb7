"""Backups: taken while the engine runs, verified, restored, and searched with the real engine."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest
from test_ops_support import EXTRA, QUERY, cli, engine_config, gallery_copy

from engine import Engine
from engine.backup import BackupError, create_backup, database_in_use, restore_backup, verify_backup


def test_backup_then_restore_then_search_through_the_cli(tmp_path: Path) -> None:
    data = gallery_copy(tmp_path / "data")
    code, out, err = cli("--data-dir", str(data), "backup", str(tmp_path / "bk"))
    assert code == 0, err
    assert "backed up 3 images, 3 faces" in out and "consistent with the database" in out
    manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
    assert manifest["format"] == "sightline-backup" and manifest["counts"]["faces"] == 3
    # The index travels with its sidecar (which projection built it), so a restore needs no rebuild.
    assert set(manifest["files"]) == {"sightline.sqlite3", "gallery.usearch", "gallery.usearch.json", "audit-head.log"}
    assert manifest["index"]["consistent"] is True
    assert (tmp_path / "bk" / "sightline.sqlite3").stat().st_mode & 0o077 == 0  # biometric data: owner only

    restored = tmp_path / "restored"
    code, out, err = cli("--data-dir", str(restored), "restore", str(tmp_path / "bk"))
    assert code == 0, err
    assert "3 images, 3 faces (index consistent)" in out and "audit chain verified" in out
    assert (restored / "gallery.usearch.json").read_bytes() == (data / "gallery.usearch.json").read_bytes()

    code, out, err = cli("--data-dir", str(restored), "search", "--case", "T-1", "--json", str(QUERY))
    assert code == 0, err
    hits = json.loads(out)["hits"]
    assert hits and hits[0]["subject"] == "Colin_Powell"


async def test_backup_while_the_engine_writes_is_consistent(tmp_path: Path) -> None:
    data = gallery_copy(tmp_path / "data")
    config = engine_config(data)
    engine = await Engine.open(config)  # the "running bot": its own connection, WAL mode
    try:
        added = await engine.enroll(EXTRA.read_bytes(), source_url="file://extra", subject="Tony_Blair")
        # Another writer holds an open write transaction while the backup runs: it must neither block the
        # backup nor leak into it.
        writer = sqlite3.connect(str(config.db_path), isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT INTO meta(key, value) VALUES ('uncommitted', 'yes')")
        manifest = await asyncio.wait_for(asyncio.to_thread(create_backup, config, tmp_path / "bk"), 20)
        writer.execute("COMMIT")
        writer.close()
        faces = len(engine.index)
    finally:
        await engine.close()
    assert faces == 3 + added.faces
    assert manifest["counts"]["images"] == 4 and manifest["counts"]["faces"] == faces
    assert manifest["index"]["faces"] == faces and manifest["index"]["consistent"]
    copy = sqlite3.connect(str(tmp_path / "bk" / "sightline.sqlite3"))
    try:
        assert copy.execute("SELECT value FROM meta WHERE key = 'uncommitted'").fetchone() is None
        assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one self-contained file
    finally:
        copy.close()
    verify_backup(tmp_path / "bk")


async def test_restore_without_index_rebuilds_it_from_the_database(tmp_path: Path) -> None:
    data = gallery_copy(tmp_path / "data")
    (data / "gallery.usearch").unlink()  # the index is derived: a backup without it is still whole
    manifest = create_backup(engine_config(data), tmp_path / "bk")
    assert manifest["index"] is None and list(manifest["files"]) == ["sightline.sqlite3", "audit-head.log"]
    config = engine_config(tmp_path / "restored")
    restore_backup(config, tmp_path / "bk")
    engine = await Engine.open(config)
    try:
        assert len(engine.index) == 3
        result = await engine.search(QUERY.read_bytes(), actor="test", case="T-1")
        assert result.hits[0].subject == "Colin_Powell"
    finally:
        await engine.close()


def test_restore_refuses_a_non_empty_data_dir_unless_forced(tmp_path: Path) -> None:
    data = gallery_copy(tmp_path / "data")
    create_backup(engine_config(data), tmp_path / "bk")
    with pytest.raises(BackupError, match="not empty: pass --force"):
        restore_backup(engine_config(data), tmp_path / "bk")
    code, _, err = cli("--data-dir", str(data), "restore", str(tmp_path / "bk"))
    assert code == 1 and "--force" in err
    # The old database gets a user after the backup, and keeps the write in a WAL file left next to it:
    # those WAL frames must not be replayed into the restored database.
    db, wal = data / "sightline.sqlite3", data / "sightline.sqlite3-wal"
    conn = sqlite3.connect(str(db), isolation_level=None)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("INSERT INTO users(user_id, role, added_by, added_at) VALUES (777, 'admin', 't', 'now')")
    frames = wal.read_bytes()
    conn.close()
    wal.write_bytes(frames)
    code, out, err = cli("--data-dir", str(data), "restore", "--force", str(tmp_path / "bk"))
    assert code == 0, err
    assert "0 users" in out
    conn = sqlite3.connect(str(db))
    try:
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 0
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def test_restore_refuses_while_the_database_is_open_elsewhere(tmp_path: Path) -> None:
    data = gallery_copy(tmp_path / "data")
    config = engine_config(data)
    create_backup(config, tmp_path / "bk")
    bot = sqlite3.connect(str(config.db_path))
    bot.execute("PRAGMA journal_mode=WAL").fetchall()
    bot.execute("SELECT count(*) FROM faces").fetchall()
    try:
        assert database_in_use(config.db_path)
        with pytest.raises(BackupError, match="stop the bot"):
            restore_backup(config, tmp_path / "bk", force=True)
    finally:
        bot.close()
    assert not database_in_use(config.db_path)


def test_damaged_or_foreign_backups_are_refused(tmp_path: Path) -> None:
    data = gallery_copy(tmp_path / "data")
    bk = tmp_path / "bk"
    create_backup(engine_config(data), bk)
    target = engine_config(tmp_path / "target")

    db = bk / "sightline.sqlite3"
    original = db.read_bytes()
    db.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(BackupError, match="SHA-256"):
        restore_backup(target, bk)
    db.write_bytes(original)

    manifest = json.loads((bk / "manifest.json").read_text())
    manifest["counts"]["faces"] = 99
    (bk / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackupError, match="does not hold what its manifest counts"):
        restore_backup(target, bk)

    (bk / "manifest.json").unlink()
    with pytest.raises(BackupError, match="not a Sightline backup"):
        restore_backup(target, bk)
    assert not (tmp_path / "target" / "sightline.sqlite3").exists()  # nothing was written


def test_backup_refuses_bad_destinations_and_missing_database(tmp_path: Path) -> None:
    data = gallery_copy(tmp_path / "data")
    config = engine_config(data)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(BackupError, match="not an empty folder"):
        create_backup(config, tmp_path / "full")
    with pytest.raises(BackupError, match="inside the data directory"):
        create_backup(config, data / "bk")
    with pytest.raises(BackupError, match="no database"):
        create_backup(engine_config(tmp_path / "nothing"), tmp_path / "bk")
    assert not (tmp_path / "bk").exists() and not list(tmp_path.glob(".*partial-*"))
    (tmp_path / "empty").mkdir()
    create_backup(config, tmp_path / "empty")  # an existing empty folder is a fine destination
    verify_backup(tmp_path / "empty")
