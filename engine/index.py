"""VectorIndex: the small interface the engine searches through, and its usearch implementation.

The index is derived data. SQLite keeps the float32 embeddings; the index keeps a quantised copy
keyed by face row id, and can always be rebuilt from the database.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from . import faults, fsmodes, integrity

if TYPE_CHECKING:
    from .projection import Projection

logger = logging.getLogger(__name__)

# Keys from here up are never face ids: they hold random "scrub" vectors written into the slots of
# removed faces. usearch only marks a removed vector as free, so its bytes stay in memory and in the
# saved file until the slot is reused; adding one scrub vector per removed face reuses those slots at
# once (measured: none of the removed vectors' bytes remain in the saved file).
SCRUB_BASE = 1 << 62

# Search breadth when none is configured: HNSW needs a wider search as the gallery grows to keep
# finding the true mates of face-like data. bench/search.py measured mate recall >= 0.99 at
# ef 128 for 100 k faces and at ef 1024 for 1 M (192-d projection, M=32); between and beyond those
# sizes ef follows the power law through both points, up to AUTO_EF_MAX.
AUTO_EF_MIN = 128
AUTO_EF_MAX = 4096
_AUTO_EF_EXPONENT = math.log(1024 / 128) / math.log(1_000_000 / 100_000)


def auto_expansion(faces: int) -> int:
    """The search breadth (ef) used for a gallery of `faces` faces when none is configured."""
    if faces <= 100_000:
        return AUTO_EF_MIN
    ef = AUTO_EF_MIN * (faces / 100_000) ** _AUTO_EF_EXPONENT
    return int(min(AUTO_EF_MAX, math.ceil(ef / 16 - 1e-9) * 16))


def prepare(vectors: np.ndarray, projection: Projection | None) -> np.ndarray:
    """What every index backend stores and searches for full embeddings (rows or one vector): their projection
    (L2-normalised float32) when there is one, else the embeddings as float32. The one place that decides it."""
    v = np.asarray(vectors, dtype=np.float32)
    return projection.apply(v) if projection is not None else v


class SharedLock:
    """Many readers or one writer. usearch searches may run side by side (each releases the GIL), but not
    beside an add or a removal. A waiting writer stops new readers from entering, so it is not starved."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        self.enter_shared()
        try:
            yield
        finally:
            self.exit_shared()

    def enter_shared(self) -> None:
        """Take the lock as one of its readers (what `shared` does on entry; without a context manager's generator, for
        a search's hot path); exit_shared must follow, in a finally."""
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1

    def exit_shared(self) -> None:
        """Leave the lock as a reader (after enter_shared)."""
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class VectorIndex(Protocol):
    """What the engine needs from a nearest-neighbour index: UsearchIndex here, HammingIndex (engine/hamming.py),
    MilvusIndex (engine/milvus_index.py, on a server).

    `add` ignores keys already present and `remove` ignores absent ones (a face's embedding never changes),
    so the engine may replay the database's change log over an index that already reflects part of it.
    `save(state)` persists the index with `state` (the engine records the change-log seq it reflects) and
    `stored_state()` reads back what the last save recorded; the engine calls `save` under its save lock.
    """

    def __len__(self) -> int: ...
    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None: ...
    def remove(self, keys: np.ndarray) -> None: ...
    def search(self, vector: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]: ...
    def keys(self) -> np.ndarray: ...
    def load(self) -> bool: ...
    def save(self, state: Mapping[str, object] | None = None) -> None: ...
    def stored_state(self) -> dict[str, object]: ...
    def memory_bytes(self) -> int: ...
    def file_bytes(self) -> int: ...
    def close(self) -> None: ...


class UsearchIndex:
    """A usearch HNSW index on disk at `path`, cosine metric, quantised vectors.

    With a `projection`, callers still pass full embeddings: the index projects them (to
    `projection.dims` dimensions) on the way in, for both `add` and `search`. A sidecar file
    (`<path>.json`) records which projection built the saved index, so a different one is never mixed in,
    and which gallery it belongs to with a checksum of the file (engine.integrity): a foreign or damaged
    file is never loaded.
    """

    def __init__(
        self,
        path: Path,
        ndim: int = 512,
        dtype: str = "i8",
        connectivity: int = 32,
        expansion_add: int = 128,
        expansion_search: int | None = None,
        projection: Projection | None = None,
    ) -> None:
        self.path = Path(path)
        self.projection = projection
        self.ndim = projection.dims if projection is not None else ndim
        self.dtype = dtype
        self.connectivity = connectivity
        self.expansion_add = expansion_add
        self.expansion_search = expansion_search  # None: auto_expansion(len(self))
        self._lock = SharedLock()  # searches share it; add, remove and swaps take it alone
        self._index = self._new()
        self._scrubs = 0
        self.gallery_id: str | None = None  # the database's meta gallery_id: the sidecar records it

    def _new(self):  # type: ignore[no-untyped-def]
        from usearch.index import Index

        return Index(
            ndim=self.ndim,
            metric="cos",
            dtype=self.dtype,
            connectivity=self.connectivity,
            expansion_add=self.expansion_add,
            expansion_search=self.expansion_search or AUTO_EF_MIN,
        )

    @property
    def ef(self) -> int:
        """The search breadth searches use now (configured, or grown with the gallery)."""
        return self.expansion_search or auto_expansion(len(self))

    # -- persistence -------------------------------------------------------------------------
    @property
    def sidecar_path(self) -> Path:
        """Small JSON beside the index: which projection built it."""
        return sidecar_path(self.path)

    @property
    def projection_key(self) -> str | None:
        return self.projection.key if self.projection is not None else None

    def load(self) -> bool:
        """Load the saved index; False (and an empty index) when it is missing, corrupt or of another shape."""
        from usearch.index import Index

        if not self.path.is_file():
            return False
        sidecar = read_sidecar(self.path)
        problem = integrity.sidecar_problem(self.path, sidecar, self.gallery_id)
        if problem:
            logger.warning("index file %s is not used: %s; it will be rebuilt from the database", self.path, problem)
            return False
        built_with = sidecar.get("projection")
        if built_with != self.projection_key:
            logger.warning("index file %s was built with projection %s, not %s; it will be rebuilt",
                           self.path, built_with or "none", self.projection_key or "none")
            return False
        try:
            loaded = Index.restore(str(self.path), view=False)
        except Exception as exc:  # usearch raises RuntimeError/ValueError for damaged files
            logger.warning("index file %s is unreadable (%s); it will be rebuilt", self.path, exc)
            return False
        if loaded is None or loaded.ndim != self.ndim or str(loaded.dtype).rsplit(".", 1)[-1].lower() != self.dtype.lower():
            logger.warning("index file %s has another shape; it will be rebuilt", self.path)
            return False
        with self._lock.exclusive():
            self._index = loaded
            self._scrubs = int((self._all_keys() >= SCRUB_BASE).sum())
            self._set_ef()
        return True

    def save(self, state: Mapping[str, object] | None = None) -> None:
        """Write the index atomically and record `state` in the sidecar; call it under the save lock.

        The file is written to a fresh temporary file in the same folder (never a fixed name, so two writers
        cannot trip over each other's file), fsynced, then renamed over the old one. Temporary files left by
        a save that was killed are deleted first: they may hold vectors of faces erased since.
        """

        def write(fd: int, tmp: Path) -> dict[str, object]:
            os.close(fd)
            # Saving only reads: searches go on meanwhile (shared lock); adds and removals wait.
            with self._lock.shared():
                self._index.save(str(tmp))
            fsmodes.make_private(tmp)  # usearch creates it with the umask's mode
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            return {"projection": self.projection_key, "ndim": self.ndim, "dtype": self.dtype,
                    **integrity.sidecar_fields(tmp, self.gallery_id), **(state or {})}

        save_atomically(self.path, write)

    def stored_state(self) -> dict[str, object]:
        """What the saved index's sidecar records now ({} when there is none); another process may have saved."""
        return read_sidecar(self.path) if self.path.is_file() else {}

    def close(self) -> None:
        """Nothing to release (the engine saves before closing)."""

    def reset(self) -> None:
        """Drop every vector (the memory is freed; used before a full rebuild)."""
        with self._lock.exclusive():
            self._index = self._new()
            self._scrubs = 0

    # -- data --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._index) - self._scrubs

    @property
    def scrubbed(self) -> int:
        """How many scrub vectors fill the slots of removed faces (a rebuild drops them)."""
        return self._scrubs

    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        return prepare(vectors, self.projection)

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Add full embeddings under their face ids; ids already in the index are left as they are."""
        if len(keys) == 0:
            return
        keys = np.asarray(keys, dtype=np.uint64)
        v = self._prepare(vectors)
        with self._lock.exclusive():
            new = ~np.asarray(self._index.contains(keys), dtype=bool).reshape(-1)
            if not new.all():  # already present: a replayed change (a face's embedding never changes)
                keys, v = keys[new], v[new]
            if len(keys):
                self._index.add(keys, v)
                self._set_ef()

    def remove(self, keys: np.ndarray) -> None:
        """Remove face ids (absent ones are ignored) and overwrite their vectors' slots with noise."""
        if len(keys) == 0:
            return
        keys = np.asarray(keys, dtype=np.uint64)
        with self._lock.exclusive():
            present = keys[np.asarray(self._index.contains(keys), dtype=bool).reshape(-1)]
            if len(present) == 0:
                return
            self._index.remove(present)
            all_keys = self._all_keys()
            start = max(int(all_keys.max()) + 1, SCRUB_BASE) if len(all_keys) else SCRUB_BASE
            noise = np.random.default_rng().standard_normal((len(present), self.ndim)).astype(np.float32)
            self._index.add(np.arange(start, start + len(present), dtype=np.uint64), noise)
            self._scrubs += len(present)
            self._set_ef()

    def _set_ef(self) -> None:
        """Keep usearch's search breadth at `ef` (called under the exclusive lock, after the size changed)."""
        ef = self.ef
        if self._index.expansion_search != ef:
            self._index.expansion_search = ef  # type: ignore[misc]  # it has a setter

    def _all_keys(self) -> np.ndarray:
        return np.asarray(self._index.keys, dtype=np.uint64).astype(np.int64)

    def keys(self) -> np.ndarray:
        """Every face id in the index (scrub keys excluded)."""
        with self._lock.shared():
            k = self._all_keys()
        return k[k < SCRUB_BASE]

    def search(self, vector: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The `count` nearest face ids and their approximate cosine similarities (in the projected space)."""
        v = self._prepare(vector)
        with self._lock.shared():
            if len(self._index) == 0:
                return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
            m = self._index.search(v, count)
        return np.asarray(m.keys, dtype=np.int64), 1.0 - np.asarray(m.distances, dtype=np.float32)

    def memory_bytes(self) -> int:
        """Bytes the index holds in memory."""
        return int(self._index.memory_usage)

    def file_bytes(self) -> int:
        """Bytes of the saved file (0 if not saved)."""
        return self.path.stat().st_size if self.path.exists() else 0


TEMP_SUFFIX = ".tmp"


def save_atomically(path: Path, write: Callable[[int, Path], Mapping[str, object]]) -> None:
    """Save an index file of any kind (call it under the save lock): delete temporary files a killed save left (they
    may hold faces erased since), make a fresh owner-only temporary file in the same folder (tempfile.mkstemp: never a
    fixed name, so two writers cannot trip over each other's file), let `write(fd, tmp)` fill and fsync it and return
    the sidecar's fields, then publish_index it. When `write` raises (a full disk) the temporary file is removed: the
    previous file stays whole and no partial one is left beside it."""
    fsmodes.private_dir(path.parent)
    remove_stale_temporaries(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    tmp = Path(tmp_name)
    try:
        meta = write(fd, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    publish_index(tmp, path, meta)


def publish_index(tmp: Path, path: Path, meta: Mapping[str, object]) -> None:
    """Rename a written, fsynced temporary index file over `path`, then write its sidecar `meta` (any index
    kind; call it under the save lock). On failure the temporary file is removed and the old index stays."""
    try:
        faults.reached("index-save:before-replace")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    faults.reached("index-save:after-replace")
    # After the index: a crash in between leaves the old sidecar, whose checksum fails (a rebuild).
    write_sidecar(path, meta)


def sidecar_path(index_path: Path) -> Path:
    return Path(index_path).with_name(Path(index_path).name + ".json")


def acquire_save_lock(index_path: Path) -> int:
    """Take the exclusive lock that serialises index saves across processes, blocking until it is free;
    returns the descriptor to pass to `release_save_lock`.

    It is an `fcntl.flock` on the index's folder itself, not on a lock file: an operator deleting a "stale"
    lock file while a save holds it would let a second saver in (each would lock its own file). The kernel
    releases it when its holder dies, so a killed process never leaves it held.
    """
    folder = Path(index_path).parent
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


def release_save_lock(fd: int) -> None:
    """Release a lock taken by `acquire_save_lock` (closing the descriptor releases it)."""
    os.close(fd)


@contextmanager
def save_lock(index_path: Path) -> Iterator[None]:
    """`acquire_save_lock` ... `release_save_lock` as a context manager (for synchronous callers)."""
    fd = acquire_save_lock(index_path)
    try:
        yield
    finally:
        release_save_lock(fd)


def stale_temporaries(index_path: Path) -> list[Path]:
    """Temporary files of index or sidecar saves in the index's folder (a killed save leaves one behind)."""
    index_path = Path(index_path)
    folder = index_path.parent
    if not folder.is_dir():
        return []
    names = (index_path.name, sidecar_path(index_path).name)
    found = [p for n in names for p in folder.glob(f".{n}.*{TEMP_SUFFIX}")]
    found += [folder / f"{n}{TEMP_SUFFIX}" for n in names if (folder / f"{n}{TEMP_SUFFIX}").exists()]  # older versions
    return found


def remove_stale_temporaries(index_path: Path) -> None:
    """Delete what `stale_temporaries` finds; call it under the save lock (no other save is then running)."""
    for p in stale_temporaries(index_path):
        p.unlink(missing_ok=True)
        logger.info("removed %s, left by an interrupted index save", p.name)


def write_sidecar(index_path: Path, fields: Mapping[str, object]) -> None:
    """Write the sidecar atomically (a unique temporary file, fsync, rename); the one place it is written."""
    target = sidecar_path(index_path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(dict(fields), sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def read_sidecar(index_path: Path) -> dict[str, object]:
    """The sidecar's contents; {} when missing or unreadable (an index saved before sidecars: no projection)."""
    try:
        data = json.loads(sidecar_path(index_path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
