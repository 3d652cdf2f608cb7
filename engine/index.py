"""VectorIndex: the small interface the engine searches through, and its usearch implementation.

The index is derived data. SQLite keeps the float32 embeddings; the index keeps a quantised copy
keyed by face row id, and can always be rebuilt from the database.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)

# Keys from here up are never face ids: they hold random "scrub" vectors written into the slots of
# removed faces. usearch only marks a removed vector as free, so its bytes stay in memory and in the
# saved file until the slot is reused; adding one scrub vector per removed face reuses those slots at
# once (measured: none of the removed vectors' bytes remain in the saved file).
SCRUB_BASE = 1 << 62


class VectorIndex(Protocol):
    """What the engine needs from a nearest-neighbour index (a scale-out backend implements the same)."""

    def __len__(self) -> int: ...
    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None: ...
    def remove(self, keys: np.ndarray) -> None: ...
    def search(self, vector: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]: ...
    def keys(self) -> np.ndarray: ...
    def save(self) -> None: ...
    def memory_bytes(self) -> int: ...


class UsearchIndex:
    """A usearch HNSW index on disk at `path`, cosine metric, quantised vectors."""

    def __init__(
        self,
        path: Path,
        ndim: int = 512,
        dtype: str = "i8",
        connectivity: int = 32,
        expansion_add: int = 128,
        expansion_search: int = 128,
    ) -> None:
        self.path = Path(path)
        self.ndim = ndim
        self.dtype = dtype
        self.connectivity = connectivity
        self.expansion_add = expansion_add
        self.expansion_search = expansion_search
        self._lock = threading.RLock()  # usearch is not safe for add/remove concurrent with search
        self._index = self._new()
        self._scrubs = 0

    def _new(self):  # type: ignore[no-untyped-def]
        from usearch.index import Index

        return Index(
            ndim=self.ndim,
            metric="cos",
            dtype=self.dtype,
            connectivity=self.connectivity,
            expansion_add=self.expansion_add,
            expansion_search=self.expansion_search,
        )

    # -- persistence -------------------------------------------------------------------------
    def load(self) -> bool:
        """Load the saved index; False (and an empty index) when it is missing, corrupt or of another shape."""
        from usearch.index import Index

        if not self.path.is_file():
            return False
        try:
            loaded = Index.restore(str(self.path), view=False)
        except Exception as exc:  # usearch raises RuntimeError/ValueError for damaged files
            logger.warning("index file %s is unreadable (%s); it will be rebuilt", self.path, exc)
            return False
        if loaded is None or loaded.ndim != self.ndim or str(loaded.dtype).rsplit(".", 1)[-1].lower() != self.dtype.lower():
            logger.warning("index file %s has another shape; it will be rebuilt", self.path)
            return False
        loaded.expansion_search = self.expansion_search  # type: ignore[misc]  # it has a setter
        with self._lock:
            self._index = loaded
            self._scrubs = int((self._all_keys() >= SCRUB_BASE).sum())
        return True

    def save(self) -> None:
        """Write the index atomically: a temporary file, fsync, then rename over the old one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        # No lock: saving only reads, searches may go on meanwhile, and the engine's write lock keeps
        # adds and removals out.
        self._index.save(str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def reset(self) -> None:
        """Drop every vector (the memory is freed; used before a full rebuild)."""
        with self._lock:
            self._index = self._new()
            self._scrubs = 0

    # -- data --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._index) - self._scrubs

    @property
    def scrubbed(self) -> int:
        """How many scrub vectors fill the slots of removed faces (a rebuild drops them)."""
        return self._scrubs

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under their face ids."""
        if len(keys) == 0:
            return
        with self._lock:
            self._index.add(np.asarray(keys, dtype=np.uint64), np.asarray(vectors, dtype=np.float32))

    def remove(self, keys: np.ndarray) -> None:
        """Remove face ids (absent ones are ignored) and overwrite their vectors' slots with noise."""
        if len(keys) == 0:
            return
        keys = np.asarray(keys, dtype=np.uint64)
        with self._lock:
            present = keys[np.asarray(self._index.contains(keys), dtype=bool).reshape(-1)]
            if len(present) == 0:
                return
            self._index.remove(present)
            all_keys = self._all_keys()
            start = max(int(all_keys.max()) + 1, SCRUB_BASE) if len(all_keys) else SCRUB_BASE
            noise = np.random.default_rng().standard_normal((len(present), self.ndim)).astype(np.float32)
            self._index.add(np.arange(start, start + len(present), dtype=np.uint64), noise)
            self._scrubs += len(present)

    def _all_keys(self) -> np.ndarray:
        return np.asarray(self._index.keys, dtype=np.uint64).astype(np.int64)

    def keys(self) -> np.ndarray:
        """Every face id in the index (scrub keys excluded)."""
        with self._lock:
            k = self._all_keys()
        return k[k < SCRUB_BASE]

    def search(self, vector: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The `count` nearest face ids and their approximate cosine similarities."""
        with self._lock:
            if len(self._index) == 0:
                return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
            m = self._index.search(np.asarray(vector, dtype=np.float32), count)
        return np.asarray(m.keys, dtype=np.int64), 1.0 - np.asarray(m.distances, dtype=np.float32)

    def memory_bytes(self) -> int:
        """Bytes the index holds in memory."""
        return int(self._index.memory_usage)

    def file_bytes(self) -> int:
        """Bytes of the saved file (0 if not saved)."""
        return self.path.stat().st_size if self.path.exists() else 0
