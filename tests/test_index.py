"""UsearchIndex with a real usearch index on tiny data."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from engine import projection
from engine.index import SCRUB_BASE, SharedLock, UsearchIndex, auto_expansion, read_sidecar


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_add_search_save_load(tmp_path: Path) -> None:
    idx = UsearchIndex(tmp_path / "g.usearch", ndim=8)
    vecs = unit(np.random.default_rng(1).standard_normal((50, 8)))
    idx.add(np.arange(1, 51), vecs)
    keys, sims = idx.search(vecs[9], 3)
    assert keys[0] == 10 and abs(sims[0] - 1.0) < 0.02
    idx.save()
    again = UsearchIndex(tmp_path / "g.usearch", ndim=8)
    assert again.load() and len(again) == 50
    assert sorted(again.keys().tolist()) == list(range(1, 51))


def test_load_refuses_missing_corrupt_or_other_shapes(tmp_path: Path) -> None:
    path = tmp_path / "g.usearch"
    assert not UsearchIndex(path, ndim=8).load()
    path.write_bytes(b"\x00garbage" * 100)
    assert not UsearchIndex(path, ndim=8).load()
    idx = UsearchIndex(path, ndim=8)
    idx.add(np.array([1]), unit(np.ones((1, 8))))
    idx.save()
    assert not UsearchIndex(path, ndim=16).load()
    assert not UsearchIndex(path, ndim=8, dtype="f16").load()


def test_removed_vectors_leave_nothing_in_the_saved_file(tmp_path: Path) -> None:
    path = tmp_path / "g.usearch"
    idx = UsearchIndex(path, ndim=64)
    vecs = unit(np.random.default_rng(2).standard_normal((300, 64)))
    idx.add(np.arange(1, 301), vecs)
    gone = np.array([5, 17, 200])
    quantised = [idx._index.get(int(k), dtype="i8").tobytes() for k in gone]
    idx.save()
    before = path.read_bytes()
    assert all(q in before for q in quantised)
    idx.remove(gone)
    idx.remove(np.array([99999]))  # absent keys are ignored
    idx.save()
    after = path.read_bytes()
    assert not any(q in after for q in quantised)
    assert len(idx) == 297 and idx.scrubbed == 3
    assert 5 not in idx.keys().tolist() and idx.keys().max() < SCRUB_BASE
    keys, _ = idx.search(vecs[4], 5)  # scrub keys may be returned: they match no database row
    reloaded = UsearchIndex(path, ndim=64)
    assert reloaded.load() and len(reloaded) == 297 and reloaded.scrubbed == 3


def low_rank_faces(n: int, d: int = 64, rank: int = 12, seed: int = 3) -> np.ndarray:
    """Unit vectors whose energy sits in a few directions, as face embeddings' does."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((rank, d))
    return unit(rng.standard_normal((n, rank)) @ mix + 0.05 * rng.standard_normal((n, d)))


def test_projected_index_takes_full_vectors_and_records_its_basis(tmp_path: Path) -> None:
    vecs = low_rank_faces(400)
    basis = projection.fit(vecs, "model-x", "test")
    assert basis.energy[:12].sum() > 0.95  # the fit found the structure
    proj = basis.projection(16)
    path = tmp_path / "g.usearch"
    idx = UsearchIndex(path, ndim=64, projection=proj)
    assert idx.ndim == 16
    idx.add(np.arange(1, 401), vecs)
    hits = [idx.search(vecs[i], 1)[0][0] for i in range(0, 400, 7)]
    assert hits == list(range(1, 401, 7))  # full 64-d queries find themselves through the 16-d graph
    idx.save()
    assert read_sidecar(path)["projection"] == proj.key
    assert UsearchIndex(path, ndim=64, projection=proj).load()
    # Another basis with the same dims, fewer dims, or none at all: never mixed with this graph.
    other = projection.fit(low_rank_faces(400, seed=9), "model-x", "test").projection(16)
    assert other.key != proj.key
    assert not UsearchIndex(path, ndim=64, projection=other).load()
    assert not UsearchIndex(path, ndim=64, projection=basis.projection(8)).load()
    assert not UsearchIndex(path, ndim=64).load()


def test_basis_file_round_trip_and_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    basis = projection.fit(low_rank_faces(300), "abc", "test set")
    path = tmp_path / f"abc{projection.SUFFIX}"
    basis.save(path)
    again = projection.Basis.load(path)
    assert np.array_equal(again.directions, basis.directions) and again.samples == 300
    assert again.projection(16).key == basis.projection(16).key
    monkeypatch.setattr(projection, "TABLES", tmp_path)
    assert projection.for_model("abc", 16).key == basis.projection(16).key
    assert projection.for_model("abc", 0) is None  # 0: full vectors
    assert projection.for_model("abc", 64) is None and projection.for_model("abc", 500) is None  # >= 64-d: full
    assert projection.for_model("another-model", 16) is None  # never another model's basis
    with pytest.raises(ValueError):
        projection.fit(low_rank_faces(10), "abc", "too few")


def test_search_breadth_grows_with_the_gallery_unless_configured(tmp_path: Path) -> None:
    # The two sizes bench/search.py measured (mate recall >= 0.99 at 1 M needed ef 1024), and a cap.
    assert auto_expansion(0) == auto_expansion(100_000) == 128
    assert auto_expansion(1_000_000) == 1024
    sizes = [10**5, 2 * 10**5, 5 * 10**5, 10**6, 3 * 10**6, 10**8]
    efs = [auto_expansion(n) for n in sizes]
    assert efs == sorted(efs)
    assert auto_expansion(10**8) == 4096
    idx = UsearchIndex(tmp_path / "g.usearch", ndim=8)
    idx.add(np.arange(1, 11), unit(np.random.default_rng(4).standard_normal((10, 8))))
    assert idx.ef == 128
    fixed = UsearchIndex(tmp_path / "h.usearch", ndim=8, expansion_search=40)
    fixed.add(np.arange(1, 11), unit(np.random.default_rng(4).standard_normal((10, 8))))
    fixed.search(unit(np.ones((1, 8)))[0], 3)
    assert fixed.ef == 40 and fixed._index.expansion_search == 40


def test_searches_share_the_lock_and_writers_wait_for_them() -> None:
    lock = SharedLock()
    inside = threading.Barrier(2, timeout=5)
    order: list[str] = []

    def reader() -> None:
        with lock.shared():
            inside.wait()  # both readers are in at once, or this times out
            time.sleep(0.05)
            order.append("read")

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    time.sleep(0.01)
    with lock.exclusive():
        order.append("write")
    for t in readers:
        t.join()
    assert order == ["read", "read", "write"]
