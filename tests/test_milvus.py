"""The Milvus index backend against a real Milvus server (tests/conftest.py `milvus_server`): the same guarantees
as the embedded index — consistency with SQLite at start-up, physical erasure, no erased or unknown face
in any answer, several engines on one collection, and a clear error within seconds when the server is away."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import dev_identities, milvus_collection_for, milvus_config
from engine import Engine, IndexUnavailable, hamming
from engine.index import prepare
from engine.milvus_index import MilvusIndex


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def raw_client(server: Any) -> Any:
    from pymilvus import MilvusClient

    return MilvusClient(uri=server.uri, timeout=10)


def files_holding(root: Path, needles: list[bytes]) -> list[str]:
    """Every file under `root` that contains any of the byte strings."""
    found = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            try:
                data = path.read_bytes()
            except OSError:  # a file removed while we walk
                continue
            if any(n in data for n in needles):
                found.append(str(path.relative_to(root)))
    return found


def raw_row(index: MilvusIndex, face_id: int, embedding: np.ndarray) -> dict[str, Any]:
    """A row as the collection holds it (sign code or projected vector), for writing behind the engine's back."""
    return {"id": face_id, "vector": index._vectors(np.asarray(embedding, dtype=np.float32).reshape(1, -1))[0]}


def mirrored(path: Path) -> bytes:
    """The photo mirrored: a face embedding no other test puts into the server."""
    buf = io.BytesIO()
    ImageOps.mirror(Image.open(path).convert("RGB")).save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A TCP port on 127.0.0.1 that accepts connections and never answers: a hung server."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    t.join()
    for c in held:
        c.close()
    sock.close()


# -- the index on its own ------------------------------------------------------------------------------------
def test_add_search_keys_remove_and_reload(milvus_server: Any) -> None:
    idx = MilvusIndex(milvus_server.uri, "t_unit_basic", ndim=16)
    idx.reset()
    vecs = unit(np.random.default_rng(1).standard_normal((20_000, 16)))  # more than one page of ids (16,384)
    keys = np.arange(5, 20_005, dtype=np.int64)
    idx.add(keys, vecs)
    idx.add(keys[:10], vecs[:10])  # adding again replaces: ids stay unique
    assert len(idx) == 20_000
    assert np.array_equal(idx.keys(), keys)
    found, sims = idx.search(vecs[123], 5)
    assert found[0] == keys[123] and sims[0] == pytest.approx(1.0, abs=1e-4)
    idx.remove(np.array([keys[123], 999_999_999]))  # absent ids are ignored
    found, _ = idx.search(vecs[123], 5)
    assert keys[123] not in found.tolist() and len(idx) == 19_999
    again = MilvusIndex(milvus_server.uri, "t_unit_basic", ndim=16)
    assert again.load() and len(again) == 19_999
    other = MilvusIndex(milvus_server.uri, "t_unit_basic", ndim=8)  # another shape: refused, rebuilt by the engine
    assert not other.load()
    assert not MilvusIndex(milvus_server.uri, "t_unit_missing", ndim=16).load()
    idx.close()


def test_sign_codes_search_by_hamming_distance(milvus_server: Any) -> None:
    from engine import codes

    rng = np.random.default_rng(2)
    vecs = unit(rng.standard_normal((3_000, 64)))
    model = codes.fallback(64, 64)  # 64-bit codes (a random rotation of the 64-d space)
    idx = MilvusIndex(milvus_server.uri, "t_unit_binary", ndim=64, index_type="BIN_FLAT", code_model=model)
    idx.reset()
    keys = np.arange(1, 3_001, dtype=np.int64)
    idx.add(keys, vecs)
    assert idx.ndim == 64 and idx.ef == idx.candidates == 200 and len(idx) == 3_000
    near = unit(vecs[7] + 0.15 * unit(rng.standard_normal((1, 64)))[0][None, :])[0]  # the same face, another photo
    found, sims = idx.search(near, 10)
    assert found[0] == 8 and 0.7 < sims[0] <= 1.0 and np.all(np.diff(sims) <= 0)  # cos(pi * hamming / bits), best first
    idx.remove(np.array([8]))
    assert 8 not in idx.search(near, 50)[0].tolist()
    assert MilvusIndex(milvus_server.uri, "t_unit_binary", ndim=64, index_type="BIN_FLAT", code_model=model).load()
    # another code model or index type: refused, so the engine rebuilds the collection
    other = codes.CodeModel(model.mean, codes.random_rotation(64, 64, seed=3), "another rotation")
    assert not MilvusIndex(milvus_server.uri, "t_unit_binary", ndim=64, index_type="BIN_FLAT", code_model=other).load()
    assert not MilvusIndex(milvus_server.uri, "t_unit_binary", ndim=64, index_type="BIN_IVF_FLAT", code_model=model).load()
    assert not MilvusIndex(milvus_server.uri, "t_unit_binary", ndim=64).load()
    idx.close()


# -- start-up consistency ------------------------------------------------------------------------------------
async def test_startup_builds_repairs_and_rebuilds_the_collection(
    gallery_copy: Path, milvus_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    config = milvus_config(gallery_copy, milvus_server)
    caplog.set_level(logging.INFO)
    engine = await Engine.open(config)  # no collection yet: built from the database
    try:
        db_ids = await engine.store.face_ids()
        assert np.array_equal(engine.index.keys(), np.sort(db_ids))
        assert "does not exist: it will be built from the database" in caplog.text
        assert f"milvus index rebuilt: {len(db_ids)} faces" in caplog.text
    finally:
        await engine.close()

    # Behind the engine's back: two faces lost, one face the database never had.
    c = raw_client(milvus_server)
    lost = [int(db_ids[0]), int(db_ids[5])]
    c.delete(config.milvus_collection, ids=lost)
    c.insert(config.milvus_collection, [raw_row(engine.index, 10_000_000, unit(np.ones((1, 512)))[0])])
    caplog.clear()
    engine = await Engine.open(config)
    try:
        assert np.array_equal(engine.index.keys(), np.sort(db_ids))
        assert "index holds 1 faces the database does not: removing them" in caplog.text
        assert "index is missing 2 faces the database has: adding them" in caplog.text
    finally:
        await engine.close()

    # The collection lost altogether (a wiped server): rebuilt, with the progress in the log.
    c.drop_collection(config.milvus_collection)
    c.close()
    caplog.clear()
    engine = await Engine.open(config)
    try:
        assert np.array_equal(engine.index.keys(), np.sort(db_ids))
        assert f"milvus index rebuilt: {len(db_ids)} faces" in caplog.text
        hit = (await engine.search(dev_identities()["Ariel_Sharon"][1].read_bytes(), actor="t")).hits[0]
        assert hit.subject == "Ariel_Sharon"
    finally:
        await engine.close()


# -- erasure -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("index_type", ["BIN_FLAT", "HNSW"])  # sign codes (the default), projected vectors
async def test_forget_removes_the_vectors_from_the_servers_storage(gallery_copy: Path, milvus_server: Any,
                                                                   index_type: str) -> None:
    engine = await Engine.open(milvus_config(gallery_copy, milvus_server, milvus_index=index_type))
    try:
        photo = dev_identities()["Colin_Powell"][2]
        await engine.enroll(mirrored(photo), source_url="https://gallery.example/erase-me.jpg", subject="Erase Me")
        rows = await engine.store.faces_by_ids((await engine.store.face_ids()).tolist())
        mine = [r for r in rows.values() if r.source_url == "https://gallery.example/erase-me.jpg"]
        assert mine
        index = engine.index
        assert isinstance(index, MilvusIndex) and index.index_type == index_type
        if index.code_model is not None:  # what Milvus holds: the 64-byte sign code (never found by chance) ...
            needles = [index.code_model.encode(r.embedding).tobytes() for r in mine]
        else:  # ... or the projected vector: its first 16 float32s
            needles = [prepare(r.embedding, index.projection).tobytes()[:64] for r in mine]
        assert files_holding(milvus_server.storage_dir, needles), "the enrolled vectors should be in the server's files"

        await engine.forget(subject="Erase Me", actor="t")
        erased = {r.face_id for r in mine}
        keys, _ = await asyncio.to_thread(engine.index.search, mine[0].embedding, 50)
        assert not erased & set(keys.tolist())
        result = await engine.search(mirrored(photo), actor="t", threshold=-1.0, top=50)
        assert not erased & {h.face_id for h in result.hits}

        # Compacted segments' files are collected after gc.dropTolerance, the message log's pages after
        # rocksmq.retentionTimeInMinutes (engine/milvus_server.py: seconds); wait for both, bounded.
        deadline = time.monotonic() + 120
        while (left := files_holding(milvus_server.storage_dir, needles)) and time.monotonic() < deadline:
            await asyncio.sleep(2)
        assert not left, f"erased vectors still in the server's storage: {left}"
    finally:
        await engine.close()


async def test_no_answer_holds_an_unknown_face_id(gallery_copy: Path, milvus_server: Any) -> None:
    config = milvus_config(gallery_copy, milvus_server)
    engine = await Engine.open(config)
    try:
        probe = dev_identities()["Elon_Musk"][1].read_bytes()
        vec = await engine.query_embedding(probe)
        # A vector the database does not know, written straight into the collection: the best candidate there is.
        c = raw_client(milvus_server)
        c.insert(config.milvus_collection, [raw_row(engine.index, 77_777_777, vec)])
        c.flush(config.milvus_collection)
        c.close()
        keys, _ = await asyncio.to_thread(engine.index.search, vec, 5)
        assert keys[0] == 77_777_777
        result = await engine.search(probe, actor="t", threshold=-1.0, top=20)
        assert 77_777_777 not in {h.face_id for h in result.hits}
        assert result.hits[0].subject == "Elon_Musk"
    finally:
        await engine.close()


async def test_two_engines_share_one_collection(gallery_copy: Path, milvus_server: Any) -> None:
    config = milvus_config(gallery_copy, milvus_server)
    first = await Engine.open(config)
    second = await Engine.open(config)
    try:
        photo = dev_identities()["George_W_Bush"][3]
        probe = dev_identities()["George_W_Bush"][4].read_bytes()
        await first.enroll(mirrored(photo), source_url="https://gallery.example/shared.jpg", subject="Shared One")
        assert any(h.subject == "Shared One" for h in (await second.search(probe, actor="t", top=10)).hits)
        await second.forget(subject="Shared One", actor="t")
        assert all(h.subject != "Shared One" for h in (await first.search(probe, actor="t", top=10, threshold=-1)).hits)
        db_ids = np.sort(await first.store.face_ids())
        assert np.array_equal(first.index.keys(), db_ids) and np.array_equal(second.index.keys(), db_ids)
    finally:
        await first.close()
        await second.close()


# -- the server away -----------------------------------------------------------------------------------------
async def test_unreachable_or_hung_server_is_a_clear_error_within_seconds(
    gallery_copy: Path, milvus_server: Any, black_hole: str
) -> None:
    for uri in (black_hole, "http://127.0.0.1:9"):  # hung, then refused (nothing listens on port 9)
        started = time.monotonic()
        with pytest.raises(IndexUnavailable, match="did not answer"):
            await Engine.open(milvus_config(gallery_copy, milvus_server, milvus_uri=uri, milvus_timeout=2.0))
        assert time.monotonic() - started < 15

    engine = await Engine.open(milvus_config(gallery_copy, milvus_server, milvus_timeout=2.0))
    try:
        before = (await engine.store.counts())["images"]
        engine.index.uri = black_hole  # the server hangs from now on
        engine.index.close()
        probe = dev_identities()["Ariel_Sharon"][1].read_bytes()
        started = time.monotonic()
        with pytest.raises(IndexUnavailable):
            await engine.search(probe, actor="t")
        # An enrolment looks for near-copies in the index first: it is refused whole, nothing is enrolled.
        with pytest.raises(IndexUnavailable):
            await engine.enroll(mirrored(dev_identities()["Ariel_Sharon"][2]), source_url="https://gallery.example/x.jpg")
        # The database is the truth: an erasure still happens there, with its audit entry, and reaches the index
        # through the change log once the server answers again.
        await engine.forget(subject="Ariel_Sharon", actor="t")
        assert time.monotonic() - started < 45
        assert (await engine.store.counts())["images"] == before - 1
        engine.index.uri = milvus_server.uri
        engine.index.close()
        result = await engine.search(probe, actor="t", threshold=-1.0, top=50)  # catches up first
        assert all(h.subject != "Ariel_Sharon" for h in result.hits)
        assert np.array_equal(engine.index.keys(), np.sort(await engine.store.face_ids()))
    finally:
        engine.index.uri = milvus_server.uri
        await engine.close()


def test_collection_names_are_per_data_dir(tmp_path: Path) -> None:
    assert milvus_collection_for(tmp_path / "a") != milvus_collection_for(tmp_path / "b")


def test_backend_setting_also_names_the_embedded_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from bot.settings import Settings

    monkeypatch.setenv("SIGHTLINE_BOT_TOKEN", "1:x")
    for spelled, kind in (("usearch", "usearch"), ("hamming", "hamming")):
        monkeypatch.setenv("SIGHTLINE_INDEX_BACKEND", spelled)
        config = Settings().engine_config()
        assert (config.index_backend, config.index_kind) == ("embedded", kind)
    monkeypatch.setenv("SIGHTLINE_INDEX_BACKEND", "usearch")
    monkeypatch.setenv("SIGHTLINE_INDEX_KIND", "hamming")
    with pytest.raises(ValidationError, match="contradicts"):
        Settings()
    monkeypatch.setenv("SIGHTLINE_INDEX_BACKEND", "faiss")
    monkeypatch.delenv("SIGHTLINE_INDEX_KIND")
    with pytest.raises(ValidationError):
        Settings()


# -- operations: migration, doctor, stats, metrics, backup and restore ----------------------------------------
def milvus_env(monkeypatch: pytest.MonkeyPatch, server: Any, data: Path, uri: str | None = None) -> str:
    collection = milvus_collection_for(data)
    monkeypatch.setenv("SIGHTLINE_MILVUS_URI", uri or server.uri)
    monkeypatch.setenv("SIGHTLINE_MILVUS_COLLECTION", collection)
    monkeypatch.setenv("SIGHTLINE_MILVUS_TIMEOUT", "3")
    return collection


def test_index_migrate_there_and_back_erases_the_old_copy(
    tmp_path: Path, milvus_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_ops_support import QUERY, cli, gallery_copy

    data = gallery_copy(tmp_path / "data")
    collection = milvus_env(monkeypatch, milvus_server, data)
    env = tmp_path / ".env"
    env.write_text("SIGHTLINE_DATA_DIR=x\n# SIGHTLINE_INDEX_BACKEND=embedded\n")
    monkeypatch.setenv("SIGHTLINE_INDEX_BACKEND", "embedded")
    assert hamming.saved_keys(data / "gallery.usearch") is not None  # the default: the embedded hamming index
    code, out, err = cli("--data-dir", str(data), "index-migrate", "--to", "milvus", "--env-file", str(env))
    assert code == 0, err
    assert "the gallery's 3 faces are in Milvus at" in out and "the embedded copy was erased" in out
    assert not (data / "gallery.usearch").exists() and not (data / "gallery.usearch.json").exists()
    assert env.read_text() == "SIGHTLINE_DATA_DIR=x\nSIGHTLINE_INDEX_BACKEND=milvus\n"

    monkeypatch.setenv("SIGHTLINE_INDEX_BACKEND", "milvus")
    code, out, err = cli("--data-dir", str(data), "search", "--case", "T-1", "--json", str(QUERY))
    assert code == 0, err
    assert json.loads(out)["hits"][0]["subject"] == "Colin_Powell"
    code, out, err = cli("--data-dir", str(data), "stats")
    assert code == 0, err
    assert f"index           milvus: Milvus at {milvus_server.uri}, collection {collection}" in out
    assert "ms per lookup" in out

    code, out, err = cli("--data-dir", str(data), "index-migrate", "--to", "usearch")
    assert code == 0, err
    assert "the milvus copy was erased" in out and "set SIGHTLINE_INDEX_BACKEND=embedded SIGHTLINE_INDEX_KIND=usearch" in out
    assert (data / "gallery.usearch").exists() and hamming.saved_keys(data / "gallery.usearch") is None  # a usearch file
    assert not MilvusIndex(milvus_server.uri, collection).stored_meta()  # the collection is gone

    code, out, err = cli("--data-dir", str(data), "index-migrate", "--to", "milvus")  # and to the default kind again
    assert code == 0, err
    code, out, err = cli("--data-dir", str(data), "index-migrate", "--to", "embedded")
    assert code == 0, err
    assert "the gallery's 3 faces are in the hamming index" in out and "set SIGHTLINE_INDEX_BACKEND=embedded" in out
    assert list(hamming.saved_keys(data / "gallery.usearch")) == [1, 2, 3]  # type: ignore[arg-type]


def test_doctor_reports_the_milvus_index(tmp_path: Path, milvus_server: Any, monkeypatch: pytest.MonkeyPatch,
                                         black_hole: str) -> None:
    from test_ops_support import cli, gallery_copy

    data = gallery_copy(tmp_path / "data")
    monkeypatch.setenv("SIGHTLINE_INDEX_BACKEND", "milvus")
    collection = milvus_env(monkeypatch, milvus_server, data)
    code, out, _ = cli("--data-dir", str(data), "doctor", "--skip-telegram")
    assert code == 0 and "the collection is missing; the engine builds it from the 3 faces at start" in out, out
    code, _, err = cli("--data-dir", str(data), "stats")  # opening the engine builds the collection
    assert code == 0, err
    code, out, _ = cli("--data-dir", str(data), "doctor", "--skip-telegram")
    assert code == 0 and f"collection {collection} (Milvus v2.3" in out and "3 faces (BIN_FLAT: 512-bit sign codes), consistent" in out, out

    milvus_env(monkeypatch, milvus_server, data, uri=black_hole)
    started = time.monotonic()
    code, out, _ = cli("--data-dir", str(data), "doctor", "--skip-telegram")
    assert code == 1 and time.monotonic() - started < 30, out
    assert f"the vector index server (Milvus at {black_hole}" in out and "Is the server running and SIGHTLINE_MILVUS_URI right?" in out
    code, out, err = cli("--data-dir", str(data), "stats")
    assert code != 0 and "did not answer" in err and "Traceback" not in err, err


def test_backup_and_restore_rebuild_the_collection(tmp_path: Path, milvus_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_ops_support import QUERY, cli, gallery_copy

    data = gallery_copy(tmp_path / "data")
    monkeypatch.setenv("SIGHTLINE_INDEX_BACKEND", "milvus")
    collection = milvus_env(monkeypatch, milvus_server, data)
    code, out, err = cli("--data-dir", str(data), "backup", str(tmp_path / "bk"))
    assert code == 0, err
    manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
    assert "sightline.sqlite3" in manifest["files"]
    MilvusIndex(milvus_server.uri, collection).reset()  # the server lost the gallery meanwhile
    code, out, err = cli("--data-dir", str(tmp_path / "restored"), "restore", str(tmp_path / "bk"))
    assert code == 0, err
    assert "3 images, 3 faces (index consistent)" in out
    code, out, err = cli("--data-dir", str(tmp_path / "restored"), "search", "--case", "T-1", "--json", str(QUERY))
    assert code == 0 and json.loads(out)["hits"][0]["subject"] == "Colin_Powell", err


async def test_metrics_show_the_backend_and_its_latency(gallery_copy: Path, milvus_server: Any) -> None:
    from bot.metrics import Metrics

    engine = await Engine.open(milvus_config(gallery_copy, milvus_server))
    try:
        metrics = Metrics()
        metrics.bind_engine(engine)
        await engine.search(dev_identities()["Ariel_Sharon"][1].read_bytes(), actor="t")
        text = metrics.exposition().decode()
        assert 'sightline_index_backend{backend="milvus"} 1.0' in text
        assert 'sightline_index_lookups_total{backend="milvus"} 1.0' in text
        seconds = float(next(line for line in text.splitlines()
                             if line.startswith('sightline_index_lookup_seconds_total{backend="milvus"}')).split()[-1])
        assert 0 < seconds < 5
        faces = (await engine.stats()).faces
        assert f"sightline_faces_indexed {float(faces)}" in text
    finally:
        await engine.close()


async def test_the_officer_is_told_when_the_index_server_hangs(
    gallery_copy: Path, milvus_server: Any, black_hole: str, start_bot: Any
) -> None:
    from bot import texts
    from conftest import new_user_id
    from engine.errors import IndexUnavailable as Unavailable

    engine = await Engine.open(milvus_config(gallery_copy, milvus_server, require_case=True, milvus_timeout=2.0))
    try:
        bot = await start_bot(engine=engine)
        officer = new_user_id()
        await bot.allow(officer, case="HANG-1")
        engine.index.uri = black_hole  # the index server stops answering
        engine.index.close()
        started = time.monotonic()
        bot.fake.send_photo(officer, dev_identities()["Ariel_Sharon"][1].read_bytes())
        reply = await bot.fake.wait_for("sendMessage", chat_id=officer, timeout=30)
        assert reply.text == texts.OFFICER_ERRORS[Unavailable]
        assert time.monotonic() - started < 20
    finally:
        engine.index.uri = milvus_server.uri
        engine.index.close()
        await engine.close()


# -- many processes on one collection --------------------------------------------------------------------------
def test_bot_index_and_forget_in_three_processes_on_one_collection(gallery_copy: Path, tmp_path: Path,
                                                                   milvus_server: Any) -> None:
    """A searching engine (the bot's part), `sightline index` and `sightline forget` at once, each its own process on
    one Milvus collection: no answer shows an erased face after forget returned, another process's new faces are
    found within seconds, and afterwards the collection holds exactly the database's faces and no erased code."""
    import sqlite3

    from procs import CLI, ERASED, assert_searches_kept_up, index_and_forget_while_searching, more_photos

    from conftest import ROOT

    data = gallery_copy
    collection = milvus_collection_for(data)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SIGHTLINE_DATA_DIR": str(data), "SIGHTLINE_INDEX_BACKEND": "milvus",
           "SIGHTLINE_MILVUS_URI": milvus_server.uri, "SIGHTLINE_MILVUS_COLLECTION": collection}

    async def codes_of_erased() -> tuple[list[int], list[bytes]]:
        engine = await Engine.open(milvus_config(data, milvus_server))  # builds the collection
        try:
            rows = (await engine.store.faces_by_ids((await engine.store.face_ids()).tolist())).values()
            mine = [r for r in rows if r.subject == ERASED]
            model = engine.index.code_model
            assert model is not None
            return [r.face_id for r in mine], [model.encode(r.embedding).tobytes() for r in mine]
        finally:
            await engine.close()

    # Every test's gallery holds these faces (other galleries' copies): drop the other tests' collections (single-use,
    # one per data dir; a later engine rebuilds its own), and leave their segment files out of the check below.
    c = raw_client(milvus_server)
    for name in c.list_collections():
        if name != collection:
            c.drop_collection(name)
    erased_ids, secrets = asyncio.run(codes_of_erased())
    cid = str(c.describe_collection(collection)["collection_id"])
    c.close()

    def ours(paths: list[str]) -> list[str]:
        """Leave out other collections' segment files: every test's gallery holds these faces (other galleries' copies)."""
        return [p for p in paths if not (p.split("/")[0].endswith("_log") and p.split("/")[1] != cid)]

    assert erased_ids and ours(files_holding(milvus_server.storage_dir, secrets))
    manifest, shas = more_photos(tmp_path, 8, slice(1, 3), targets=2)
    log, forgotten_at, seen = index_and_forget_while_searching(CLI, data, env, manifest, shas, tmp_path)  # settings from env
    assert_searches_kept_up(log, forgotten_at, erased_ids, shas, seen)
    with sqlite3.connect(data / "sightline.sqlite3") as db:
        db_ids = sorted(r[0] for r in db.execute("SELECT id FROM faces"))
    index = MilvusIndex(milvus_server.uri, collection)
    assert index.keys().tolist() == db_ids
    index.close()
    deadline = time.monotonic() + 120  # compacted files and the message log's pages go within seconds (bounded wait)
    while (left := ours(files_holding(milvus_server.storage_dir, secrets))) and time.monotonic() < deadline:
        time.sleep(2)
    assert not left, f"erased codes still in the server's storage: {left}"


async def test_index_run_blames_the_server_not_the_files_when_milvus_stops_answering(
    gallery_copy: Path, milvus_server: Any, black_hole: str
) -> None:
    from bot.cli.gallery import Item, Summary, ingest_one

    engine = await Engine.open(milvus_config(gallery_copy, milvus_server, milvus_timeout=2.0))
    try:
        engine.index.uri = black_hole  # the server hangs from now on, in the middle of a `sightline index` run
        engine.index.close()
        summary = Summary()
        photo = dev_identities()["Ariel_Sharon"][2]
        await ingest_one(engine, Item(photo, "https://gallery.example/a.jpg"), "t", summary)
        assert (summary.unreadable, summary.index_unavailable, summary.indexed) == (0, 1, 0)
        assert summary.failures[0][1] == "index_unavailable"
        assert "0 unreadable" in summary.line() and "1 not indexed because the index server did not answer" in summary.line()
    finally:
        engine.index.uri = milvus_server.uri
        await engine.close()


def test_a_failed_call_is_logged_once_in_our_format_not_by_pymilvus(black_hole: str, capfd: pytest.CaptureFixture[str],
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    index = MilvusIndex(black_hole, "t_quiet", timeout=1.0)
    try:
        with pytest.raises(IndexUnavailable, match="did not answer"):
            index.stored_meta()
    finally:
        index.close()
    err = capfd.readouterr().err
    assert "[ERROR][" not in err and "RpcError" not in err, err  # pymilvus' own stderr handler, around our logging
    assert "vector index: collection check failed" in caplog.text
