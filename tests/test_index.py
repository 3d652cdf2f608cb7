"""UsearchIndex with a real usearch index on tiny data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.index import SCRUB_BASE, UsearchIndex


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
    assert 5 not in idx.keys() and idx.keys().max() < SCRUB_BASE
    keys, _ = idx.search(vecs[4], 5)  # scrub keys may be returned: they match no database row
    reloaded = UsearchIndex(path, ndim=64)
    assert reloaded.load() and len(reloaded) == 297 and reloaded.scrubbed == 3
