"""MilvusIndex: the engine's VectorIndex on a Milvus server (standalone or a cluster), through pymilvus.MilvusClient.

SQLite stays the source of truth. The collection holds face id -> what the default index keeps, by index type:
- BIN_FLAT (the engine's default, measured in bench/RESULTS.md) and BIN_IVF_FLAT: the 512-bit sign code of the
  hamming index's code model (engine.codes), searched by Hamming distance; the engine fetches at least
  `candidates` (200) of them and re-scores them exactly from SQLite;
- HNSW, IVF_FLAT, IVF_SQ8: the projected vector (`engine.index.prepare`: the model's 192-d projection,
  L2-normalised float32), inner product, so a score is the cosine similarity in that space;
the engine re-scores every candidate exactly from SQLite, as with the embedded index.

Guarantees, and how:
- every call has a timeout (`timeout` seconds; flushes and compactions `slow_timeout`), and every failure of
  the server (unreachable, slow, refusing) becomes `IndexUnavailable` with what failed: never a hang;
- `remove()` deletes, flushes and compacts, and waits for the compaction: the erased vectors leave the
  server's segments (their files are garbage-collected after `dataCoord.gc.dropTolerance`, and the message
  log drops them after `rocksmq.retentionTimeInMinutes`; `engine/milvus_server.py` sets both to seconds,
  and the README says what a cluster needs);
- the collection's description records the projection, code model and index type that built it; another one
  means a rebuild, like the embedded index's sidecar;
- several engines (processes) may share one collection: writes are idempotent upserts and deletes, and
  searches use session consistency (a client sees its own writes).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from .errors import IndexUnavailable
from .index import AUTO_EF_MIN, auto_expansion, prepare

if TYPE_CHECKING:
    from .codes import CodeModel
    from .projection import Projection

logger = logging.getLogger(__name__)
T = TypeVar("T")

ID_FIELD = "id"
VECTOR_FIELD = "vector"
BATCH = 5_000  # rows per insert/upsert message (192-d: 3.8 MB, well under gRPC's 64 MB)
QUERY_LIMIT = 16_384  # Milvus' largest offset + limit of one query
_FORMAT = "sightline-faces/1"
FLOAT_INDEXES = ("HNSW", "IVF_FLAT", "IVF_SQ8")  # on the projected vectors, inner product
BINARY_INDEXES = ("BIN_FLAT", "BIN_IVF_FLAT")  # on the code model's sign codes (512 bits), Hamming distance


def _pymilvus() -> Any:
    """The pymilvus module, imported without its warning about pkg_resources (it is not ours to fix)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        import pymilvus
    # pymilvus logs to stderr through handlers of its own (gRPC dumps on every failed call), around the
    # application's logging; every failure is logged once by `MilvusIndex._call` with what was being done.
    for name in ("pymilvus", "pymilvus.milvus_client"):
        lib = logging.getLogger(name)
        lib.handlers.clear()
        lib.propagate = True
        lib.setLevel(logging.CRITICAL)
    return pymilvus


class MilvusIndex:
    """Face id -> vector in one Milvus collection; the same methods as `UsearchIndex`.

    Raises IndexUnavailable from any method when the server cannot be reached within the timeouts.
    """

    backend = "milvus"

    def __init__(
        self,
        uri: str,
        collection: str = "sightline_faces",
        token: str = "",
        ndim: int = 512,
        connectivity: int = 32,
        expansion_add: int = 128,
        expansion_search: int | None = None,
        projection: Projection | None = None,
        timeout: float = 5.0,
        slow_timeout: float = 120.0,
        index_type: str = "HNSW",
        nlist: int = 1024,
        nprobe: int = 64,
        code_model: CodeModel | None = None,
        candidates: int = 200,
    ) -> None:
        self.uri = uri
        self.collection = collection
        self._token = token
        self.projection = projection
        self.ndim = projection.dims if projection is not None else ndim
        self.dtype = "f32"
        self.connectivity = connectivity
        self.expansion_add = expansion_add
        self.expansion_search = expansion_search  # None: auto_expansion(len(self)), as usearch
        self.timeout = timeout
        self.slow_timeout = slow_timeout
        if index_type not in FLOAT_INDEXES + BINARY_INDEXES:
            raise ValueError(f"index_type must be one of {', '.join(FLOAT_INDEXES + BINARY_INDEXES)}, not {index_type!r}")
        self.index_type = index_type  # chosen by measurement: bench/backends.py, bench/RESULTS.md
        self.binary = index_type in BINARY_INDEXES
        if self.binary and code_model is None:
            raise ValueError(f"{index_type} holds sign codes: a code model is needed")
        self.code_model = code_model if self.binary else None
        if self.code_model is not None:
            self.ndim = self.code_model.bits
        # Sign codes rank coarsely: the engine fetches at least this many and re-scores them exactly from SQLite
        # (bench/RESULTS.md: 512-bit codes hold 98.6 % of the true mates in their nearest 40 at 1 M faces, 99.4 % in 100).
        self.candidates = max(1, int(candidates)) if self.binary else 0
        self.nlist = nlist
        self.nprobe = nprobe
        self.gallery_id: str | None = None  # the database's gallery id: recorded in the collection, checked on load
        self.scrubbed = 0  # Milvus compacts deletions away: no scrub slots (the engine reads this)
        self.path = None  # no local file
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._count: tuple[float, int] | None = None  # (monotonic time, count) cached for COUNT_TTL

    COUNT_TTL = 1.0

    # -- plumbing ---------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"MilvusIndex({self.uri!r}, collection={self.collection!r}, ndim={self.ndim})"

    @property
    def projection_key(self) -> str | None:
        return self.projection.key if self.projection is not None else None

    @property
    def where(self) -> str:
        """The server and collection, for messages (the token is never shown)."""
        return f"Milvus at {self.uri}, collection {self.collection}"

    @property
    def metric(self) -> str:
        """HAMMING for sign codes, IP (cosine of unit vectors) for projected vectors."""
        return "HAMMING" if self.binary else "IP"

    def _connect(self) -> Any:
        with self._client_lock:
            if self._client is None:
                MilvusClient = _pymilvus().MilvusClient  # noqa: N806
                self._client = MilvusClient(uri=self.uri, token=self._token, timeout=self.timeout)
            return self._client

    def _call(self, what: str, fn: Callable[[Any], T]) -> T:
        """Run one client call; any failure of the server becomes IndexUnavailable naming `what` and the server."""
        try:
            return fn(self._connect())
        except IndexUnavailable:
            raise
        except Exception as exc:  # pymilvus raises MilvusException, grpc errors, and plain exceptions on connect
            reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            reason = " ".join(str(reason).split())[:300]
        # Raised outside the handler, so it carries no context: pymilvus' own exceptions can be their own
        # cause (`raise ex from ex`), a loop for anything that walks the chain.
        logger.error("vector index: %s failed on %s: %s", what, self.where, reason)
        self.close()  # reconnect next time: the channel may be broken
        raise IndexUnavailable(f"the vector index server ({self.where}) did not answer the {what}: {reason}")

    def close(self) -> None:
        """Close the connection (the next call opens a new one)."""
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:
                pass

    # -- the collection ----------------------------------------------------------------------
    def _meta(self) -> dict[str, object]:
        return {"format": _FORMAT, "projection": self.projection_key, "ndim": self.ndim, "gallery": self.gallery_id,
                "index": self.index_type, "codes": self.code_model.key if self.code_model is not None else None}

    def _create(self, c: Any) -> None:
        pm = _pymilvus()
        DataType, MilvusClient = pm.DataType, pm.MilvusClient  # noqa: N806
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                            description=json.dumps(self._meta()))
        schema.add_field(ID_FIELD, DataType.INT64, is_primary=True)
        schema.add_field(VECTOR_FIELD, DataType.BINARY_VECTOR if self.binary else DataType.FLOAT_VECTOR, dim=self.ndim)
        params = c.prepare_index_params()
        if self.index_type == "HNSW":
            build: dict[str, int] = {"M": self.connectivity, "efConstruction": self.expansion_add}
        else:
            build = {} if self.index_type == "BIN_FLAT" else {"nlist": self.nlist}
        params.add_index(field_name=VECTOR_FIELD, index_type=self.index_type, metric_type=self.metric, params=build)
        c.create_collection(self.collection, schema=schema, index_params=params, timeout=self.slow_timeout,
                            consistency_level="Session")
        c.load_collection(self.collection, timeout=self.slow_timeout)

    def stored_meta(self) -> dict[str, object] | None:
        """What the collection says built it; None when there is no collection."""
        def fn(c: Any) -> dict[str, object] | None:
            if not c.has_collection(self.collection, timeout=self.timeout):
                return None
            desc = c.describe_collection(self.collection, timeout=self.timeout)
            try:
                meta = json.loads(desc.get("description") or "{}")
            except ValueError:
                meta = {}
            return meta if isinstance(meta, dict) else {}
        return self._call("collection check", fn)

    def load(self) -> bool:
        """Use the existing collection: True when it exists and was built with this projection, else False (the
        engine then rebuilds it from the database)."""
        meta = self.stored_meta()
        if meta is None:
            logger.warning("%s does not exist: it will be built from the database", self.where)
            return False
        if meta.get("gallery") and self.gallery_id and meta.get("gallery") != self.gallery_id:
            # Never rebuilt over: it is another gallery's index (two databases configured with one collection).
            raise IndexUnavailable(f"{self.where} belongs to another gallery ({meta.get('gallery')}, this database is "
                                   f"{self.gallery_id}): set SIGHTLINE_MILVUS_COLLECTION to a collection of its own")
        want = self._meta()
        if any(meta.get(k) != want[k] for k in ("format", "projection", "ndim", "index", "codes")):
            logger.warning("%s was built for %s, not %s: it will be rebuilt", self.where, meta or "something else",
                           {k: want[k] for k in ("projection", "ndim", "index", "codes")})
            return False
        self._call("collection load", lambda c: c.load_collection(self.collection, timeout=self.slow_timeout))
        return True

    def reset(self) -> None:
        """Drop the collection and create it empty (before a full rebuild)."""
        def fn(c: Any) -> None:
            if c.has_collection(self.collection, timeout=self.timeout):
                c.drop_collection(self.collection, timeout=self.slow_timeout)
            self._create(c)
        self._call("collection rebuild", fn)
        self._count = None

    def save(self, state: Mapping[str, object] | None = None) -> None:
        """Make the server persist what it buffers (flush: seals the growing segments into its storage).

        `state` (what the engine's change log had reached) is not kept: the collection is shared by every
        engine and changed by each directly, so there is no single file state; engines compare ids at start-up."""
        self._call("flush", lambda c: c.flush(self.collection, timeout=self.slow_timeout))

    def stored_state(self) -> dict[str, object]:
        """What built the collection (projection, dims) as the usearch sidecar says it; {} when there is none."""
        meta = self.stored_meta()
        return dict(meta) if meta else {}

    # -- data --------------------------------------------------------------------------------
    def __len__(self) -> int:
        cached = self._count
        if cached is not None and time.monotonic() - cached[0] < self.COUNT_TTL:
            return cached[1]
        rows = self._call("count", lambda c: c.query(self.collection, filter="", output_fields=["count(*)"],
                                                     timeout=self.timeout, consistency_level="Strong"))
        n = int(rows[0]["count(*)"]) if rows else 0
        self._count = (time.monotonic(), n)
        return n

    def cached_len(self) -> int:
        """The last count read from the server (-1: none yet), without a call (for /metrics)."""
        return self._count[1] if self._count is not None else -1

    @property
    def ef(self) -> int:
        """The search breadth searches use now (HNSW: configured, or grown with the gallery as usearch's; sign codes:
        the candidates the engine re-scores; IVF: the clusters searched)."""
        if self.binary:
            return self.candidates
        if self.index_type != "HNSW":
            return self.nprobe
        return self.expansion_search or auto_expansion(len(self))

    def _vectors(self, vectors: np.ndarray) -> list[Any]:
        """What the collection holds for full embeddings: their sign codes (bytes) or projected vectors (lists)."""
        if self.code_model is not None:
            return [row.tobytes() for row in self.code_model.encode(vectors)]
        return prepare(vectors, self.projection).reshape(-1, self.ndim).tolist()  # type: ignore[no-any-return]

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Add (or replace) full embeddings under their face ids."""
        if len(keys) == 0:
            return
        ids = np.asarray(keys, dtype=np.int64)
        v = self._vectors(vectors)
        for s in range(0, len(ids), BATCH):
            rows = [{ID_FIELD: int(k), VECTOR_FIELD: vec} for k, vec in zip(ids[s:s + BATCH], v[s:s + BATCH], strict=True)]
            self._call("insert", lambda c, rows=rows: c.upsert(self.collection, rows, timeout=self.slow_timeout))
        self._count = None

    def remove(self, keys: np.ndarray) -> None:
        """Delete face ids, then flush and compact so that their vectors leave the server's storage.

        Waits for the compaction up to `slow_timeout` seconds; raises IndexUnavailable when it fails or takes longer."""
        if len(keys) == 0:
            return
        ids = [int(k) for k in np.asarray(keys, dtype=np.int64)]
        ids = self._present(ids)  # another engine on the collection may have deleted them already
        if not ids:
            return
        for s in range(0, len(ids), QUERY_LIMIT):
            chunk = ids[s:s + QUERY_LIMIT]
            self._call("delete", lambda c, chunk=chunk: c.delete(self.collection, ids=chunk, timeout=self.slow_timeout))
        self._count = None
        self.purge()

    def _present(self, ids: list[int]) -> list[int]:
        """Those of `ids` the collection holds (strong consistency)."""
        found: list[int] = []
        for s in range(0, len(ids), QUERY_LIMIT):
            chunk = ids[s:s + QUERY_LIMIT]
            rows = self._call("lookup", lambda c, chunk=chunk: c.query(
                self.collection, filter=f"{ID_FIELD} in {chunk}", output_fields=[ID_FIELD], limit=len(chunk),
                timeout=self.slow_timeout, consistency_level="Strong"))
            found.extend(int(r[ID_FIELD]) for r in rows)
        return sorted(set(found))

    def purge(self) -> None:
        """Flush and compact the collection, and wait until the compaction completed (physical deletion)."""
        started = time.monotonic()
        self.save()
        job = self._call("compaction", lambda c: c.compact(self.collection, timeout=self.timeout))
        while True:
            state = self._call("compaction check", lambda c: c.get_compaction_state(job, timeout=self.timeout))
            if state == "Completed":
                break
            if time.monotonic() - started > self.slow_timeout:
                raise IndexUnavailable(f"the compaction on {self.where} did not complete within {self.slow_timeout:.0f} s")
            time.sleep(0.2)
        logger.info("vector index: deletions compacted on %s in %.1f s", self.where, time.monotonic() - started)

    def keys(self) -> np.ndarray:
        """Every face id in the collection (read with strong consistency), sorted."""
        def ids(c: Any, expr: str, limit: int = QUERY_LIMIT) -> list[int]:
            rows = c.query(self.collection, filter=expr, output_fields=[ID_FIELD], limit=limit,
                           timeout=self.slow_timeout, consistency_level="Strong")
            return sorted(int(r[ID_FIELD]) for r in rows)

        def count(c: Any, expr: str) -> int:
            rows = c.query(self.collection, filter=expr, output_fields=["count(*)"], timeout=self.slow_timeout,
                           consistency_level="Strong")
            return int(rows[0]["count(*)"]) if rows else 0

        def fn(c: Any) -> np.ndarray:
            out: list[int] = []
            last = -1
            while True:  # pages of at most QUERY_LIMIT ids, each a closed id range counted first
                got = ids(c, f"{ID_FIELD} > {last}")
                if len(got) < QUERY_LIMIT:
                    out.extend(got)
                    break
                bound = got[-1]
                while count(c, f"{ID_FIELD} > {last} and {ID_FIELD} <= {bound}") > QUERY_LIMIT:
                    bound = last + max(1, (bound - last) // 2)  # the page was not the smallest ids: narrow it
                out.extend(ids(c, f"{ID_FIELD} > {last} and {ID_FIELD} <= {bound}"))
                last = bound
            return np.unique(np.asarray(out, dtype=np.int64))
        keys = self._call("id listing", fn)
        self._count = (time.monotonic(), len(keys))
        return keys

    def search(self, vector: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The `count` nearest face ids and their approximate cosine similarities (in the projected space; sign codes:
        cos(pi * Hamming distance / bits), the angle the codes estimate), best first."""
        v = self._vectors(np.asarray(vector, dtype=np.float32).reshape(1, -1))[0]
        params: dict[str, int] = ({"ef": max(self.ef, count, AUTO_EF_MIN)} if self.index_type == "HNSW"
                                  else {} if self.index_type == "BIN_FLAT" else {"nprobe": self.nprobe})
        res = self._call("search", lambda c: c.search(
            self.collection, [v], limit=count, output_fields=[], timeout=self.timeout,
            search_params={"metric_type": self.metric, "params": params}, consistency_level="Session"))
        hits = res[0] if res else []
        keys = np.asarray([int(h["id"]) for h in hits], dtype=np.int64)
        sims = np.asarray([float(h["distance"]) for h in hits], dtype=np.float32)
        if self.binary:
            sims = np.cos(np.pi * sims / self.ndim).astype(np.float32)
        return keys, sims

    def index_progress(self) -> tuple[int, int]:
        """(rows indexed, rows in sealed segments) of the vector index: the server builds it after a flush."""
        def fn(c: Any) -> tuple[int, int]:
            info = c.describe_index(self.collection, VECTOR_FIELD, timeout=self.timeout) or {}
            return int(info.get("indexed_rows", 0)), int(info.get("total_rows", 0))
        return self._call("index check", fn)

    def ping(self) -> str:
        """The server's version (raises IndexUnavailable when it does not answer within the timeout)."""
        return str(self._call("version check", lambda c: c.get_server_version(timeout=self.timeout)))

    def memory_bytes(self) -> int:
        """An estimate of what the loaded collection takes in the query nodes' RAM: float32 vectors, the HNSW
        links (2·M per vector at layer 0, 4-byte ids) and the id, or the sign code and the id; measured in
        bench/RESULTS.md."""
        if self.binary:
            return len(self) * (self.ndim // 8 + 8)
        return len(self) * (4 * self.ndim + 8 * self.connectivity + 8)

    def file_bytes(self) -> int:
        """0: the collection lives on the server, not in the data directory."""
        return 0
