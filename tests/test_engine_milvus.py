"""The engine tests of tests/test_engine.py again, with SIGHTLINE_INDEX_BACKEND=milvus (its default index type,
BIN_FLAT on sign codes) against the real Milvus server of this session: the backend must give the same answers.
Only the test reading the embedded index file's sidecar is left out (test_milvus.py checks that a collection
built for another projection, code model or index type is rebuilt)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import test_engine

import conftest

USEARCH_ONLY = {"test_index_projection_is_a_setting_and_answers_stay_exact"}

for _name in dir(test_engine):
    if _name.startswith("test_") and _name not in USEARCH_ONLY:
        globals()[_name] = getattr(test_engine, _name)


@pytest.fixture(autouse=True)
def _on_milvus(milvus_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every engine these tests open keeps its index in Milvus (a collection per data directory)."""
    monkeypatch.setattr(conftest, "BACKEND", {"index_backend": "milvus", "milvus_uri": milvus_server.uri})
    yield
