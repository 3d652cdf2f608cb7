"""HammingIndex: binary sign codes scanned exhaustively, candidates re-ranked from vectors held in memory.

Why not a graph: at 1 M face-like vectors HNSW needs ef 1024 (14 ms) to find 99 % of the true mates,
because every identity is an isolated pair of points the graph reaches only by a wide search
(bench/RESULTS.md). An exhaustive scan has no such blind spots. Each face is kept as

- its sign code of (embedding - mean) @ W (engine.codes), split into the bits the scan reads and the rest: with the
  shipped code model a 128-bit lead code of the top principal directions (16 bytes, `_codes`) and 512 bits of a
  structured random rotation of the centred space (64 bytes, `_codes2`; a query's are computed from the rotation's signs,
  engine.scan.encode_structured, not from a 1 MB matrix read cold after every scan); without a lead (the fallback
  model) the first 256 bits of 512 and the other 256 (32 + 32 bytes),
- its projection (engine.projection, 192-d by default), centred and quantised to int8, for re-ranking
  (192 bytes; float16 was measured 5x slower to re-rank, numpy converting it without SIMD),
- its face id (8 bytes),

in four numpy arrays whose rows start on 64-byte cache lines: 280 bytes per face (264 without a lead). A search
starts the other scan thread(s) first (they spin, bounded, for the threshold: their wake-up overlaps what follows),
encodes the query's scanned bits, estimates from a sample of 16,384 codes the Hamming distance under which ~1.2 x
`prefilter` codes lie (after a lead 20,000 or 2 % of the gallery if more, else 10,000), and scans those bits of every
code against it (engine.scan's compiled kernels, in ~64 chunks that the threads claim in turn: they finish within one
chunk of each other, and a thread the machine starts late finds less or nothing to do). Meanwhile the calling thread
encodes the query's other bits and projects it; from then on each thread adds the other bits' distance to the codes it
kept (the second stage: scattered reads, one cache line each) chunk by chunk, and lists the rows within a bound set
from the first chunk (~3 x `candidates` in all) for the selection. The calling thread then selects the best
`candidates` (1,000) by all the bits, the threads share their re-rank by projected int8 cosine (each row a DRAM
access of its own), and the best `count` are returned: after the threads are started, the calling thread's part is
one compiled call (engine.scan.finish_search), free of Python and the GIL. Every stage reads the index's own arrays
in place: no copy of a face's bits or vector is made. The engine then re-scores the answers exactly from SQLite. What a
search would build again (views, buffers, the query's scratch, the kernels' arguments and compiled entry points) is
prepared once per gallery size and settings and reused (`_plan`); the query's scratch is zeroed as each search ends.
(At 1 M face-like vectors: 99.3 % of the true mates in the best 10, 99.4 % in the best 40, p50 1.70-1.81 ms on the idle
machine; bench/RESULTS.md, issue 15, "Seventh session": a shorter lead was measured and is no faster.)

Erasure: `remove` moves the last rows into the removed ones' places and zeroes the vacated tail, so no
byte of a removed face stays in these arrays; a grown array's old buffer is zeroed before it is freed, and
`save` writes only the live rows.

File format (`<path>`, little-endian): the 8-byte magic, a uint32 header length, a JSON header (format
version, count, code model and projection keys, row sizes), then the keys, scanned codes, second-stage codes
and vectors arrays.
The sidecar `<path>.json` repeats the header and adds the gallery id and the file's XXH3 checksum
(engine.integrity): a file of another gallery, damaged or of another format is never loaded, but rebuilt.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from queue import SimpleQueue
from typing import TYPE_CHECKING

import numba
import numpy as np

from . import integrity, scan
from .codes import CodeModel, fallback
from .index import SharedLock, read_sidecar, save_atomically, sidecar_path

if TYPE_CHECKING:
    from .projection import Projection

logger = logging.getLogger(__name__)

MAGIC = b"SLHAMM01"
FORMAT = 2  # 2: codes with a lead (engine.codes), rows 64-byte aligned in memory; files of format 1 are rebuilt
DEFAULT_CANDIDATES = 1000
_GROW = 1.25  # capacity grows by a quarter: at most 25 % headroom counts against the memory budget
_MIN_CAPACITY = 1024
# int8 re-rank vectors: (v - centre) * 127, so components up to +-1 are kept at steps of 1/127. The centred
# components of projected unit face vectors stay within +-0.54 (calib set: per-dimension spread 0.045-0.12);
# the rounding moves a similarity by ~0.002, far below the gap between a mate (~0.6) and the best strangers
# (~0.3). (A finer scale, 254, clipped the largest components and cost up to 0.02.)
QUANT_SCALE = 127.0
SPLIT_MIN = 50_000  # a scan is split over threads only when each part has at least this many codes
SCAN_BYTES = 32  # without a lead code the scan reads the first 256 bits per face (4 words: engine.scan unrolls that case)
DEFAULT_PREFILTER = 10_000  # ... and keeps about this many nearest (~1.2x, ties included) for all the bits
# A 128-bit lead scan keeps about this many (~1.5 x: 29,000 rows at 1 M), or LEAD_PREFILTER_SHARE of a larger gallery. Every
# row kept costs its second-stage read and selection: 30,000 (44,000 rows) took 0.05-0.12 ms longer at 1 M for mate recall
# 0.9957 / 0.9973 against 0.9931 / 0.9947 (bench/RESULTS.md, "Seventh session"); at 3 M, 2 % kept 0.9933 / 0.9955, 1 %
# 0.9911 / 0.9927 ("Sixth session").
LEAD_PREFILTER = 20_000
LEAD_PREFILTER_SHARE = 0.02
ALIGN = 64  # bytes: every array's rows start on a cache line (a 64-byte code: one line, not two)
CHUNKS = 64  # a scan is cut into about this many chunks that its threads claim in turn (engine.scan.scan_chunks)
CHUNK_MIN = 16_384  # codes per chunk at least
SAMPLE = 16_384  # codes sampled (in SAMPLE_RUNS runs) to choose the scan's threshold distance
SAMPLE_RUNS = 16
SPINS = 200_000  # rounds (~1-2 ns each) the calling thread spins for another's last chunk before it blocks (scan.wait_chunks)
MARGIN = 1.2  # the threshold aims at this many times the codes to keep: one scan, rarely a second


class HammingIndex:
    """Face ids with their sign codes and projected int8 vectors; see the module docstring.

    Callers pass full L2-normalised embeddings to `add` and `search`; the index encodes and projects them.
    """

    def __init__(
        self,
        path: Path,
        ndim: int = 512,
        code_model: CodeModel | None = None,
        projection: Projection | None = None,
        candidates: int = DEFAULT_CANDIDATES,
        threads: int = 2,
        prefilter: int | None = None,
        scan_bytes: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.projection = projection
        self.code_model = code_model if code_model is not None else fallback(ndim)
        if self.code_model.weights.shape[0] != ndim and projection is None:
            raise ValueError(f"the code model is for {self.code_model.weights.shape[0]}-d embeddings, not {ndim}")
        self.input_dim = ndim
        self.ndim = projection.dims if projection is not None else ndim  # dimensions of the re-rank vectors
        # The faces' mean in re-rank space: subtracted before quantising (it adds the same to every candidate's score).
        m = self.code_model.mean if self.code_model.weights.shape[0] == ndim else np.zeros(ndim, dtype=np.float32)
        self._centre = (m @ projection.basis if projection is not None else m).astype(np.float32)
        # what a query is encoded and projected with (engine.scan.encode_query, project_query: contiguous float32)
        self._mean = np.ascontiguousarray(self.code_model.mean, dtype=np.float32)
        self._basis = np.ascontiguousarray(projection.basis, dtype=np.float32) if projection is not None else None
        self.candidates = max(1, int(candidates))
        self.threads = max(1, int(threads))
        self.split_min = SPLIT_MIN
        self.chunk_min = CHUNK_MIN
        self._spare: list[tuple[np.ndarray, ...]] = []  # scan buffers for reuse (_buffers)
        self._word_views: tuple[int, np.ndarray, np.ndarray] | None = None  # (n, codes, codes2) as the scan reads them (_words)
        self._plans: list[_Plan] = []  # prepared searches for reuse (_plan), one taken per concurrent search
        self._generation = 0  # counts replacements of the arrays (_changed): a plan of another generation is dropped
        self._lock = SharedLock()  # searches share it; add, remove, load and reset take it alone
        self.gallery_id: str | None = None  # the database's meta gallery_id: the sidecar records it
        self._pool: _ScanThreads | None = None
        self._pool_lock = threading.Lock()
        self._n = 0
        # The scan reads the first `scan_bytes` of each code (`_codes`: the code model's lead, else SCAN_BYTES); longer codes
        # keep the rest in `_codes2`, which only re-ranks the scan's `prefilter` nearest (two-stage: the cost of a short
        # scan, the recall of more bits).
        lead = self.code_model.lead // 8
        self._scan_bytes = min(scan_bytes or lead or SCAN_BYTES, self.code_model.nbytes)
        default = LEAD_PREFILTER if lead and self._scan_bytes == lead else DEFAULT_PREFILTER
        self.prefilter = max(int(prefilter or default), self.candidates)
        # the default lead scan keeps a share of larger galleries (the prefilter is then a floor); a prefilter given is kept
        self.prefilter_share = LEAD_PREFILTER_SHARE if default == LEAD_PREFILTER and not prefilter else 0.0
        # the query's scanned bits are encoded before the scan, the others while it runs (engine.scan.encode_query)
        self._weights = tuple(np.ascontiguousarray(w, dtype=np.float32) for w in np.hsplit(self.code_model.weights, [self._scan_bytes * 8]))
        if self.code_model.signs is not None and self._scan_bytes * 8 == self.code_model.lead:
            # the other bits are a structured rotation: the query is encoded from its signs (engine.scan.encode_structured)
            self._weights = (self._weights[0], np.ascontiguousarray(self.code_model.signs, dtype=np.float32))
        self._keys, self._codes, self._codes2, self._vecs = self._arrays(0)
        _warm_kernels()

    # -- storage -----------------------------------------------------------------------------
    def _arrays(self, capacity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return (_zeros((capacity,), np.int64), _zeros((capacity, self._scan_bytes), np.uint8),
                _zeros((capacity, self.code_model.nbytes - self._scan_bytes), np.uint8), _zeros((capacity, self.ndim), np.int8))

    @property
    def _all(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self._keys, self._codes, self._codes2, self._vecs

    def _reserve(self, needed: int) -> None:
        """Grow the arrays to hold `needed` rows (under the exclusive lock); the old buffers are zeroed."""
        capacity = len(self._keys)
        if needed <= capacity:
            return
        new = self._arrays(max(needed, int(capacity * _GROW), _MIN_CAPACITY))
        for old, fresh in zip(self._all, new, strict=True):
            fresh[: self._n] = old[: self._n]
            old.fill(0)  # freed memory keeps its bytes: leave none of a face that is erased later
        self._keys, self._codes, self._codes2, self._vecs = new
        self._changed()

    def _changed(self) -> None:
        """The arrays were replaced (exclusive lock held): the scan's word views and the prepared searches are dropped."""
        self._word_views = None
        self._generation += 1
        self._plans = []

    def _quantise(self, projected: np.ndarray) -> np.ndarray:
        """Projected unit vectors -> int8 of (v - centre) * QUANT_SCALE, clipped to +-127."""
        return np.clip(np.rint((projected - self._centre) * QUANT_SCALE), -127, 127).astype(np.int8)

    def _project(self, vectors: np.ndarray) -> np.ndarray:
        v = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        return self.projection.apply(v) if self.projection is not None else v

    # -- the VectorIndex interface -----------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    @property
    def scrubbed(self) -> int:
        """Always 0: removed rows are overwritten at once (the engine compacts usearch indexes by this count)."""
        return 0

    @property
    def ef(self) -> int:
        """How many candidates each search re-ranks (shown where usearch's search breadth is)."""
        return self.candidates

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Add full embeddings under their face ids; ids already in the index are left as they are (a face's
        embedding never changes, so a replayed change is a no-op); an id given twice is added once."""
        keys = np.asarray(keys, dtype=np.int64).reshape(-1)
        if len(keys) == 0:
            return
        x = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if len(x) != len(keys):
            raise ValueError(f"{len(keys)} keys but {len(x)} vectors")
        keys, first = np.unique(keys, return_index=True)
        x = x[first]
        codes = self.code_model.encode(x)
        vecs = self._quantise(self._project(x))
        with self._lock.exclusive():
            live = self._keys[: self._n]
            if self._n and keys[0] <= live.max():  # (a rebuild adds ascending ids: no search needed)
                new = ~np.isin(keys, live)
                keys, codes, vecs = keys[new], codes[new], vecs[new]
            a = self._n
            self._reserve(a + len(keys))
            self._keys[a : a + len(keys)] = keys
            self._codes[a : a + len(keys)] = codes[:, : self._scan_bytes]
            self._codes2[a : a + len(keys)] = codes[:, self._scan_bytes :]
            self._vecs[a : a + len(keys)] = vecs
            self._n = a + len(keys)

    def remove(self, keys: np.ndarray) -> None:
        """Remove face ids (absent ones are ignored); their rows are overwritten, nothing of them stays."""
        keys = np.asarray(keys, dtype=np.int64).reshape(-1)
        if len(keys) == 0:
            return
        with self._lock.exclusive():
            rows = np.flatnonzero(np.isin(self._keys[: self._n], keys))
            if len(rows):
                self._delete_rows(rows)

    def _delete_rows(self, rows: np.ndarray) -> None:
        """Fill the given rows with the last live rows, then zero the vacated tail (exclusive lock held)."""
        n = self._n
        m = n - len(rows)
        holes = rows[rows < m]  # rows to refill, all below the new end
        movers = np.setdiff1d(np.arange(m, n), rows, assume_unique=True)  # live rows beyond the new end
        for arr in self._all:
            arr[holes] = arr[movers]
            arr[m:n] = 0
        self._n = m

    def keys(self) -> np.ndarray:
        """Every face id in the index."""
        with self._lock.shared():
            return self._keys[: self._n].copy()

    def search(self, vector: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The `count` nearest face ids and their approximate cosine similarities (projected, int8), best first."""
        x = vector
        if type(x) is not np.ndarray or x.dtype != np.float32 or x.ndim != 1 or not (x.flags.c_contiguous and x.flags.aligned):
            x = np.asarray(vector, dtype=np.float32)
            if x.size != self.input_dim:
                raise ValueError(f"a {self.input_dim}-d embedding, not shape {x.shape}")
            x = np.array(x.reshape(-1), dtype=np.float32, order="C")  # (a fresh array: contiguous and aligned)
        elif x.shape[0] != self.input_dim:
            raise ValueError(f"a {self.input_dim}-d embedding, not shape {x.shape}")
        lock = self._lock
        lock.enter_shared()
        try:
            n = self._n
            if n == 0 or count < 1:
                return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
            want = min(max(self.candidates, count), n)
            plan = self._plan(n, want)
            if plan is not None:
                return self._search_planned(plan, x, count)
            return self._search(x, count, n, want)
        finally:
            lock.exit_shared()

    def _search_planned(self, plan: _Plan, x: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """search with a prepared plan (shared lock held): a fresh counters array, the other threads started, two compiled
        calls (engine.scan.start_search, finish_fast), the answer; the plan is kept for the next search when it answered."""
        job = plan.counters.copy()
        if plan.helpers:
            put = (self._pool or self._executor()).put
            args = (*plan.head, -1, *plan.mid, job, *plan.tail, 0)  # t < 0: the helpers spin for job[T]
            for _ in range(plan.helpers):
                put(plan.helper, args)
        t = plan.start(x, *plan.lead, job)  # the query's scanned bits, the sample, the threshold (published to job[T])
        args = (*plan.head, t, *plan.mid, job, *plan.tail)
        c = min(count, plan.want)
        keys, sims = np.empty(c, dtype=np.int64), np.empty(c, dtype=np.float32)
        r, offset, o = plan.finish(x, *plan.fin, args, *plan.rest, count, keys, sims, plan.scratch)
        if r < 0:  # (rare) another thread still inside a chunk or a block of the re-rank, or the scan must be widened
            r = self._finish_slow(plan, job, args, t, r, offset, o, count, keys, sims)
        else:
            self._plans.append(plan)
        return (keys, sims) if r == c else (keys[:r], sims[:r])

    def _finish_slow(self, plan: _Plan, counters: np.ndarray, args: tuple[object, ...], t: int, r: int, offset: float, o: int,
                     count: int, keys: np.ndarray, sims: np.ndarray) -> int:
        """What finish_fast left to Python (r < 0: see engine.scan.finish_search), as search did before plans; the plan is
        then dropped (its query scratch zeroed, its buffers spare). Returns how many answers are in keys and sims."""
        codes, q, codes2, q2 = args[:4]
        job = _ScanJob((codes, q, codes2, q2), plan.n, plan.chunk, plan.chunks, t, plan.bits, plan.enough, plan.cap, counters,
                       plan.rank, args, plan.buffers, plan.helpers)
        _, qs, best, cand = plan.rank
        if r == -3:
            self._join(job)
            r = scan.top_answers(cand, best, o, self._keys, count, np.float32(offset), keys, sims)
        else:
            rows, dist, counts = self._finish_scan(job)
            r = scan.select_top(rows, dist, counts, plan.want, self.code_model.bits, self._vecs, qs, best, cand, self._keys, count,
                                np.float32(offset), keys, sims)
        plan.scratch.fill(0)
        self._spare.append(job.buffers)
        return int(r)

    def _plan(self, n: int, want: int) -> _Plan | None:
        """A prepared search over the first n faces selecting `want` candidates: a spare one, else a new one (shared lock
        held); None when search takes the general path (no projection, no second stage, or a gallery the scan keeps whole).

        What a plan holds is built once per gallery size and reused by the searches that follow (measured: the dozen numpy
        calls it saves cost ~5 us each on the caches the previous scan evicted): the scan's word views, its buffers
        (reset by finish_fast), the query's scratch (its code, encoding and projection: zeroed by finish_fast when a search
        ends), the candidates' rows and cosines, the kernels' arguments in tuples and the compiled kernels' entry points
        (numba's dispatcher types every argument of every call: ~2-5 us for finish_search's ~30 arrays)."""
        # (and the settings a plan was built with: the bench and the tests change them between searches)
        key = (self._generation, n, want, self.threads, self.split_min, self.chunk_min, self.prefilter, self.prefilter_share)
        plans = self._plans
        while plans:
            try:
                plan = plans.pop()
            except IndexError:  # another search took the last one
                break
            if plan.key == key:
                return plan
        keep = min(max(self.prefilter, int(self.prefilter_share * n), want), n)
        if self._basis is None or not self._codes2.shape[1] or keep >= n:
            return None
        sb, nbytes, allbits = self._scan_bytes, self.code_model.nbytes, self.code_model.bits
        bits = sb * 8
        codes, codes2 = self._words(n)
        # the query's scratch, one zeroed buffer: code (nbytes, its second-stage bytes on an 8-byte word: _code_at), y (allbits
        # float32), qs (ndim float32), each on a cache line
        at = _code_at(sb)
        at_y = -(-(at + nbytes) // ALIGN) * ALIGN
        at_qs = at_y + -(-allbits * 4 // ALIGN) * ALIGN
        scratch = _zeros((at_qs + self.ndim * 4,), np.uint8)
        code, y, qs = scratch[at : at + nbytes], scratch[at_y : at_y + allbits * 4].view(np.float32), scratch[at_qs:].view(np.float32)
        q, q2 = scan.query_words(code[:sb]), scan.query_words(code[sb:])
        chunk = max(self.chunk_min, -(-n // CHUNKS))
        chunks = -(-n // chunk)
        cap = min(chunk, int(chunk * (3 * MARGIN * keep) / n) + 256)  # (as _start_scan sizes them)
        buffers = self._buffers(chunks, cap)
        rows, dist, scanned, taken, counts, *short = buffers
        scanned.fill(-1)
        taken.fill(0)
        counts.fill(-1)
        rank = (self._vecs, qs, np.zeros(want, dtype=np.int64), np.zeros(want, dtype=np.float32))
        exact = n <= SAMPLE  # the sample is the gallery
        runs, block = (1, n) if exact else (SAMPLE_RUNS, SAMPLE // SAMPLE_RUNS)
        enough = keep if exact else max(want, (3 * keep) // 4)
        counters = np.array([0, 0, 0, -1, 3 * want // chunks + 1, -1, 0, 0, -1, 0, 0], dtype=np.int64)  # (as _start_scan)
        plan = _Plan(key=key, n=n, want=want, chunk=chunk, chunks=chunks, cap=cap, bits=bits, enough=enough,
                     helpers=self.threads - 1 if n >= self.split_min * self.threads and chunks > 1 else 0,
                     scratch=scratch, rank=rank, buffers=buffers, counters=counters,
                     head=(codes, q, codes2, q2), mid=(n, chunk), tail=(rows, dist, scanned, taken, counts, tuple(short), rank, SPINS),
                     lead=(self._mean, self._weights[0], y[:bits], code[:sb], codes, q, n, runs, block,
                           float(keep) if exact else keep * MARGIN, np.empty(bits + 1, dtype=np.int64)),
                     fin=(self._mean, self._weights[1], y[bits:], code[sb:], self._basis, self._centre, QUANT_SCALE, np.float32(0)),
                     rest=(enough, bits, allbits, want, self._keys))
        x = np.zeros(self.input_dim, dtype=np.float32)
        args = (*plan.head, 0, *plan.mid, counters, *plan.tail)
        plan.helper = _entry(scan.helper_scan, (*args, 0))
        plan.start = _entry(scan.start_search, (x, *plan.lead, counters))
        plan.finish = _entry(scan.finish_fast, (x, *plan.fin, args, *plan.rest, 1, rank[2], rank[3], scratch))
        return plan

    def _search(self, x: np.ndarray, count: int, n: int, want: int) -> tuple[np.ndarray, np.ndarray]:
        """search without a plan (shared lock held): small galleries, no projection or no second stage."""
        # (the query's code, projection and scratch are fresh arrays per search: nothing derived from a query photo is kept)
        sb = self._scan_bytes
        code = _zeros((_code_at(sb) + self.code_model.nbytes,), np.uint8)[_code_at(sb) :]
        y = np.empty(self.code_model.bits, dtype=np.float32)
        # two stages: the scan keeps ~the nearest `prefilter` by the first bits, ranked by all of them
        keep = min(max(self.prefilter, int(self.prefilter_share * n), want), n) if self._codes2.shape[1] else want
        if self._basis is not None:
            basis, qs, offset = self._basis, np.empty(self.ndim, dtype=np.float32), np.float32(0)
        else:
            basis, qs, offset = _NO_BASIS, x / np.float32(QUANT_SCALE), np.float32(x @ self._centre)
        best, cand = np.empty(want, dtype=np.int64), np.empty(want, dtype=np.float32)  # the candidates, their int8 cosines
        job = self._start_scan(code, keep, want, n, x, y, (self._vecs, qs, best, cand))  # encodes the query's scanned bits
        # The rest on this thread in one compiled call (engine.scan.finish_search): the query's other bits (the second
        # stage waits for them), its projection, its share of the scan and the second stage, the selection, its share of
        # the re-rank, the best `count`.
        c = min(count, want)
        keys, sims = np.empty(c, dtype=np.int64), np.empty(c, dtype=np.float32)
        c, offset, o = scan.finish_search(x, self._mean, self._weights[1], y[sb * 8 :], code[sb:], basis, self._centre,
                                          QUANT_SCALE, offset, job.args, job.enough, job.bits, self.code_model.bits, want,
                                          self._keys, count, keys, sims)
        if c == -3:  # another thread is inside a block of the re-rank: wait for it
            self._join(job)
            c = scan.top_answers(cand, best, o, self._keys, count, np.float32(offset), keys, sims)
        elif c < 0:  # another thread is still in a chunk (blocks for it), or the scan must be widened (rare)
            rows, dist, counts = self._finish_scan(job)
            c = scan.select_top(rows, dist, counts, want, self.code_model.bits, self._vecs, qs, best, cand, self._keys, count,
                                np.float32(offset), keys, sims)
        self._spare.append(job.buffers)
        return keys[:c], sims[:c]

    def _scan(self, code: np.ndarray, keep: int, least: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """_start_scan then _finish_scan: the chunks' kept rows (chunks, cap) int64, their distances over all the
        bits (chunks, cap) int32 and how many each chunk kept (chunks,) int64; shared lock held."""
        return self._finish_scan(self._start_scan(code, keep, least, n))

    def _words(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The first n rows of the scanned and the second-stage codes as engine.scan reads them (as_words), kept until
        the arrays change (_reserve, load, reset drop them; n changes with add and remove)."""
        cached = self._word_views
        if cached is not None and cached[0] == n:
            return cached[1], cached[2]
        codes, codes2 = scan.as_words(self._codes[:n]), scan.as_words(self._codes2[:n])
        self._word_views = (n, codes, codes2)
        return codes, codes2

    def _start_scan(self, code: np.ndarray, keep: int, least: int, n: int, x: np.ndarray | None = None,
                    y: np.ndarray | None = None, rank: tuple[np.ndarray, ...] | None = None) -> _ScanJob:
        """Choose the threshold and set the other threads scanning (shared lock held): the rows among the first n
        whose first `scan_bytes` of code are within it of the query's `code` (all its bytes, 1-D; the bytes after the
        scanned ones may be written later, until the job's READY counter is set or _finish_scan is called) will be kept.

        The threshold is the smallest that keeps ~MARGIN x `keep` codes in a sample (SAMPLE codes in 16 runs spread
        over the gallery; exact when the gallery is no larger), all the codes at it included; if the scan kept fewer
        than 3/4 of `keep` or than `least`, _finish_scan raises it and scans again (rare).

        With the query's embedding x (and y, (bits,) float32 scratch) its scanned bits are first encoded into `code` here
        (engine.scan.lead_threshold: the encoding and the sample in one call). With `rank` (the index's vectors, the
        query's projection and the candidates' rows and cosines: engine.scan.rerank_blocks) the other threads join the
        re-rank once their scan is done.
        """
        bits = self._scan_bytes * 8
        codes, codes2 = self._words(n)
        q = scan.query_words(code[: self._scan_bytes])
        q2 = scan.query_words(code[self._scan_bytes :])
        chunk = max(self.chunk_min, -(-n // CHUNKS))
        chunks = -(-n // chunk)
        sampled = keep < n
        # The other threads are started first, to wait (spinning, engine.scan.helper_scan) for the threshold: their wake-up
        # overlaps the encoding and the sample. So the buffers are sized before the sample: room for 3 x MARGIN x keep in
        # all (the scan keeps ~1.2-1.8 x keep at 1 M: the 128-bit distances are coarse); a chunk that keeps more is
        # scanned again with room for all (_finish_scan).
        # (the other threads start with t < 0 whenever the query's scanned bits are still to be encoded here: they wait for
        # job[T], published once the bits are written - a helper that scanned before saw a query code half written)
        job = _ScanJob((codes, q, codes2, q2), n, chunk, chunks, -1 if sampled or x is not None else bits, bits, n,
                       min(chunk, int(chunk * (3 * MARGIN * keep if sampled else n) / n) + 256),
                       np.array([0, 0, 0, -1, 3 * least // chunks + 1, -1, 0, 0, -1, 0, 0], dtype=np.int64),  # (scan.CLAIM...)
                       rank or _NO_RANK)
        self._launch(job)
        if not sampled:
            if x is not None:
                scan.encode_query(x, self._mean, self._weights[0], y[:bits], code[: self._scan_bytes])
                job.t = bits
                job.args = (*job.args[:4], job.t, *job.args[5:])
                job.counters[scan.T] = job.t  # the other threads start scanning
            return job
        runs, block = (1, n) if n <= SAMPLE else (SAMPLE_RUNS, SAMPLE // SAMPLE_RUNS)
        exact = runs == 1  # the sample is the gallery
        want = float(keep) if exact else keep * MARGIN
        hist = np.empty(bits + 1, dtype=np.int64)
        if x is not None:
            t, _ = scan.lead_threshold(x, self._mean, self._weights[0], y[:bits], code[: self._scan_bytes], codes, q, n, runs,
                                       block, want, hist)
        else:
            t, _ = scan.sample_threshold(codes, q, n, runs, block, want, hist)
        job.t = int(t)
        job.enough = keep if exact else max(least, (3 * keep) // 4)
        job.args = (*job.args[:4], job.t, *job.args[5:])
        job.counters[scan.T] = job.t  # the other threads start scanning
        return job

    def _launch(self, job: _ScanJob) -> None:
        """Buffers for the job's chunks and its other threads started on them (the calling thread joins in _finish_scan);
        they wait for the threshold when job.t < 0 (until it is written to job.counters[T])."""
        codes, q, codes2, q2 = job.arrays
        rows, dist, scanned, taken, counts, *short = job.buffers = self._buffers(job.chunks, job.cap)
        scanned.fill(-1)
        taken.fill(0)
        counts.fill(-1)
        job.args = (codes, q, codes2, q2, job.t, job.n, job.chunk, job.counters, rows, dist, scanned, taken, counts, tuple(short),
                    job.rank, SPINS)
        helpers = self.threads - 1 if job.n >= self.split_min * self.threads and job.chunks > 1 else 0
        if helpers:
            pool = self._executor()
            for _ in range(helpers):
                pool.put(scan.helper_scan, (*job.args, 0))
        job.helpers = helpers

    def _finish_scan(self, job: _ScanJob) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scan on this thread until no chunk is left, wait for a chunk another thread is still scanning (if any),
        widen the threshold or the buffers and scan again when needed (rare); shared lock held. The query's code must be
        complete (its second-stage bits written)."""
        job.counters[scan.READY] = 1
        while True:
            rows, dist, _, _, counts, *_ = job.buffers
            scan.scan_chunks(*job.args, 1)
            # another thread inside a chunk: spin for it (briefly), else block until its call returns; then no thread
            # touches these buffers again and they may be reused
            if job.helpers and not scan.wait_chunks(counts, job.counters, SPINS):
                self._join(job)
            job.counters[scan.RANKED] = 0  # (a helper waiting to join the re-rank: there is none in this path)
            most = int(counts.max())
            if most > job.cap:  # a chunk kept more than its buffers hold: again, with room for all
                self._spare.append(job.buffers)
                job.cap = most
            elif int(counts.sum()) < job.enough and job.t < job.bits:
                self._spare.append(job.buffers)
                job.t += 1  # the sample misjudged the tail (rare): widen and scan again
                job.cap = min(job.chunk, job.cap * 2)
            else:
                return rows, dist, counts
            job.counters = np.array([0, 1, 0, -1, job.counters[scan.QUOTA], -1, 0, 0, job.t, 0, 0], dtype=np.int64)  # fresh
            self._launch(job)

    @staticmethod
    def _join(job: _ScanJob) -> None:
        """Block until the job's other threads have returned; those that have not started yet will return at once (rare:
        a thread descheduled inside a chunk or a block of the re-rank)."""
        job.counters[scan.RANKED] = max(0, int(job.counters[scan.RANKED]))
        entered = int(scan.close_gate(job.counters))
        while job.counters[scan.EXITED] < entered:
            time.sleep(0.0001)

    def _buffers(self, chunks: int, cap: int) -> tuple[np.ndarray, ...]:
        """Reused (chunks, >= cap) buffers for a scan's kept rows and distances, three (chunks,) counters (scanned, taken
        for the second stage, complete: engine.scan.scan_chunks), and the short lists' rows, distances and counts
        (engine.scan._finish_chunk): they hold row numbers and distances, nothing of a face; one set per concurrent search."""
        while self._spare:
            try:
                found = self._spare.pop()
            except IndexError:  # another search took the last one
                break
            if found[0].shape[0] == chunks and found[0].shape[1] >= cap:
                return found
        cap = max(cap, 1)
        return (np.empty((chunks, cap), dtype=np.int64), np.empty((chunks, cap), dtype=np.int32),
                *(np.empty(chunks, dtype=np.int64) for _ in range(3)),
                np.empty((chunks, cap), dtype=np.int64), np.empty((chunks, cap), dtype=np.int32), np.empty(chunks, dtype=np.int64))

    def _executor(self) -> _ScanThreads:
        with self._pool_lock:
            if self._pool is None:
                self._pool = _ScanThreads(self.threads - 1)
                weakref.finalize(self, self._pool.shutdown)  # (an index dropped without close: its threads end too)
            return self._pool

    def vectors(self, keys: np.ndarray) -> np.ndarray:
        """(len(keys), ndim) float32: the re-rank vectors held for face ids, de-quantised (rows of NaN for absent
        ids); for checking the index against the database (`sightline doctor --deep`)."""
        keys = np.asarray(keys, dtype=np.int64).reshape(-1)
        out = np.full((len(keys), self.ndim), np.nan, dtype=np.float32)
        with self._lock.shared():
            if not self._n:
                return out
            order = np.argsort(self._keys[: self._n], kind="stable")
            ordered = self._keys[order]
            pos = np.minimum(np.searchsorted(ordered, keys), self._n - 1)
            found = ordered[pos] == keys
            rows = order[pos[found]]
            out[found] = self._vecs[rows].astype(np.float32) / QUANT_SCALE + self._centre
        return out

    def memory_bytes(self) -> int:
        """Bytes the index's arrays hold (including spare capacity)."""
        return int(sum(arr.nbytes for arr in self._all))

    def file_bytes(self) -> int:
        """Bytes of the saved file (0 if not saved)."""
        return self.path.stat().st_size if self.path.exists() else 0

    def reset(self) -> None:
        """Drop every face (the arrays are zeroed, then freed)."""
        with self._lock.exclusive():
            for arr in self._all:
                arr.fill(0)
            self._n = 0
            self._keys, self._codes, self._codes2, self._vecs = self._arrays(0)
            self._changed()

    # -- persistence -------------------------------------------------------------------------
    @property
    def sidecar_path(self) -> Path:
        """Small JSON beside the index: format, code model, projection, count and the file's SHA-256."""
        return sidecar_path(self.path)

    @property
    def projection_key(self) -> str | None:
        return self.projection.key if self.projection is not None else None

    def _header(self, n: int) -> dict[str, object]:
        return {"kind": "hamming", "format": FORMAT, "count": n, "codes": self.code_model.key,
                "projection": self.projection_key, "input_dim": self.input_dim, "ndim": self.ndim,
                "code_bytes": self.code_model.nbytes, "scan_bytes": self._scan_bytes, "vector_dtype": "i8"}

    def save(self, state: Mapping[str, object] | None = None) -> None:
        """Write the live rows atomically and record `state` in the sidecar; call it under the save lock
        (engine.index.acquire_save_lock), as UsearchIndex.save.

        The rows go to a fresh temporary file in the same folder (tempfile.mkstemp: never a fixed name, so two
        writers cannot trip over each other's file), are fsynced, then renamed over the old file. Temporary files
        left by a killed save are deleted first: they may hold rows of faces erased since. The sidecar records the
        gallery id and the file's checksum (engine.integrity), both computed as the bytes are written. A full disk
        leaves the previous file whole and no partial one beside it.
        """
        import xxhash

        def write(fd: int, tmp: Path) -> dict[str, object]:  # (mkstemp: owner-only, 0600, from the start)
            digest = xxhash.xxh3_128()
            with self._lock.shared():  # searches go on; adds and removals wait
                n = self._n
                header = json.dumps(self._header(n), sort_keys=True).encode()
                with os.fdopen(fd, "wb") as fh:
                    for chunk in (MAGIC, len(header).to_bytes(4, "little"), header,
                                  self._keys[:n].astype("<i8", copy=False), self._codes[:n], self._codes2[:n],
                                  self._vecs[:n]):
                        if not (chunk.nbytes if isinstance(chunk, np.ndarray) else len(chunk)):
                            continue
                        data = memoryview(chunk).cast("B") if isinstance(chunk, np.ndarray) else chunk
                        digest.update(data)
                        fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
            return {**self._header(n), "gallery_id": self.gallery_id,
                    "checksum": f"{integrity.CHECKSUM_ALGO}:{digest.hexdigest()}", **(state or {})}

        save_atomically(self.path, write)

    def stored_state(self) -> dict[str, object]:
        """What the saved index's sidecar records now ({} when there is none); another process may have saved."""
        return read_sidecar(self.path) if self.path.is_file() else {}

    def load(self) -> bool:
        """Load the saved index; False (and the index unchanged) when it is missing, of another gallery, damaged
        (checksum), of another format, or built with another code model or projection."""
        if not self.path.is_file():
            return False
        problem = integrity.sidecar_problem(self.path, read_sidecar(self.path), self.gallery_id)
        if problem:
            logger.warning("index file %s is not used: %s; it will be rebuilt from the database", self.path, problem)
            return False
        try:
            loaded = self._read()
        except (OSError, ValueError) as exc:
            logger.warning("index file %s cannot be used (%s); it will be rebuilt", self.path, exc)
            return False
        with self._lock.exclusive():
            for arr in self._all:
                arr.fill(0)
            self._keys, self._codes, self._codes2, self._vecs = loaded
            self._n = len(loaded[0])
            self._changed()
        return True

    def _read(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Parse and check the file; raises ValueError saying what is wrong."""
        want = self._header(0)
        with open(self.path, "rb") as fh:
            if fh.read(8) != MAGIC:
                raise ValueError("not a HammingIndex file (another index format)")
            size = int.from_bytes(fh.read(4), "little")
            if not 0 < size < 1 << 20:
                raise ValueError("damaged header")
            try:
                header = json.loads(fh.read(size))
            except ValueError:
                raise ValueError("damaged header") from None
            if not isinstance(header, dict):
                raise ValueError("damaged header")
            header.setdefault("scan_bytes", min(SCAN_BYTES, int(header.get("code_bytes", 0))))  # (files before it was recorded)
            for field in ("format", "codes", "projection", "input_dim", "ndim", "code_bytes", "scan_bytes", "vector_dtype"):
                if header.get(field) != want[field]:
                    raise ValueError(f"built with {field} {header.get(field)!r}, not {want[field]!r}")
            n = int(header.get("count", -1))
            expected = 12 + size + n * (8 + self.code_model.nbytes + self.ndim)
            if n < 0 or os.fstat(fh.fileno()).st_size != expected:
                raise ValueError("truncated or padded file")
            arrays = self._arrays(n)
            for arr in arrays:
                if arr.nbytes and fh.readinto(memoryview(arr).cast("B")) != arr.nbytes:
                    raise ValueError("truncated file")
        keys = arrays[0]
        if n and keys.min() < 0:  # (duplicates are not searched for: a 1 M-face sort would cost start-up time)
            raise ValueError("negative face ids")
        return arrays

    def close(self) -> None:
        """Stop the scan threads."""
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None


_NO_BASIS = np.zeros((0, 0), dtype=np.float32)  # (engine.scan.finish_search: no projection to apply)
_NO_RANK = (np.zeros((0, 0), dtype=np.int8), np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))


def _code_at(scan_bytes: int) -> int:
    """Where a query's code starts in an ALIGN-aligned buffer so that both its parts start on a word of their own width
    (engine.scan.query_words; numba compiles other, slower variants for unaligned arrays): its second-stage bytes on an
    8-byte word, its `scan_bytes` (e.g. 12, three uint32) then on theirs."""
    return -scan_bytes % 8


def _zeros(shape: tuple[int, ...], dtype: type[np.generic]) -> np.ndarray:
    """np.zeros(shape, dtype) starting on an ALIGN-byte boundary (numpy's large buffers start 16 bytes into a page): a
    view into a buffer ALIGN bytes longer, whose extra bytes never hold data."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = np.zeros(size + ALIGN, dtype=np.uint8)
    skip = -buf.ctypes.data % ALIGN
    return buf[skip : skip + size].view(dtype).reshape(shape)


@dataclass(slots=True)
class _ScanJob:
    """One search's scan in progress: what HammingIndex._start_scan chose and launched, for _finish_scan."""

    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # codes, q, codes2, q2 (as engine.scan views them)
    n: int
    chunk: int
    chunks: int
    t: int  # the threshold distance over the scanned bits
    bits: int  # scanned bits: t never exceeds it
    enough: int  # rows the scan must keep, else t is raised
    cap: int  # rows each chunk's buffers hold
    counters: np.ndarray  # (11,) int64, fresh per scan: CLAIM, READY (set once the query's second-stage bits are written),
    # ACTIVE (threads inside the scan), ...: engine.scan.scan_chunks, _finish_chunk, rerank_blocks
    rank: tuple[np.ndarray, ...]  # (vecs, q, best, sims) for the shared re-rank (engine.scan.rerank_blocks); best empty: none
    args: tuple[object, ...] = ()  # engine.scan.scan_chunks's arguments (but `sweep`)
    buffers: tuple[np.ndarray, ...] = ()  # its rows, dist, scanned, taken and counts (HammingIndex._buffers)
    helpers: int = 0  # other threads started on it


@dataclass(slots=True)
class _Plan:
    """A prepared search (HammingIndex._plan): what every search over the same n faces and `want` candidates would build
    again. Taken by one search at a time; its buffers and scratch are clean (reset, zeroed) between searches."""

    key: tuple[object, ...]  # (the index's generation, n, want, threads, split_min, chunk_min, prefilter, prefilter_share)
    n: int
    want: int
    chunk: int
    chunks: int
    cap: int
    bits: int  # scanned bits
    enough: int
    helpers: int  # other threads to start
    scratch: np.ndarray  # uint8: the query's code, encoding (y) and projection (qs), zeroed after each search
    rank: tuple[np.ndarray, ...]  # (vecs, qs, best, sims): engine.scan.rerank_blocks
    buffers: tuple[np.ndarray, ...]  # HammingIndex._buffers
    counters: np.ndarray  # the scan job's counters as a search starts (copied per search: engine.scan.CLAIM ...)
    head: tuple[object, ...]  # scan_chunks' arguments: codes, q, codes2, q2, (t), then `mid`: n, chunk, (job), then `tail`
    mid: tuple[object, ...]
    tail: tuple[object, ...]  # rows, dist, scanned, taken, counts, short, rank, spins
    lead: tuple[object, ...]  # start_search's arguments between x and job
    fin: tuple[object, ...]  # finish_fast's arguments between x and scan_args
    rest: tuple[object, ...]  # ... after scan_args, before count
    helper: Callable[..., object] = scan.helper_scan  # the kernels (compiled entry points: _entry)
    start: Callable[..., object] = scan.start_search
    finish: Callable[..., object] = scan.finish_fast


def _entry(kernel: Callable[..., object], args: tuple[object, ...]) -> Callable[..., object]:
    """The kernel's compiled entry point for these arguments' types (numba: `Dispatcher.overloads[sig].entry_point`), which
    skips the dispatcher's typing of every argument on every call (numba.typeof of each array, recursively into tuples:
    ~2 us for finish_search's warm, more with cold caches; bench/RESULTS.md, "Sixth session"); the dispatcher itself when
    that overload is not compiled yet (the kernels are still being compiled or loaded: scan.warm). The entry point does
    not check types: call it only with arguments of exactly these types (a plan's own arrays, and x float32 1-D C-contiguous
    and aligned)."""
    overloads = getattr(kernel, "overloads", None)
    if overloads is None:
        return kernel
    try:
        return overloads[tuple(numba.typeof(a) for a in args)].entry_point
    except (KeyError, AttributeError, ValueError):
        return kernel


class _ScanThreads:
    """The scan's other threads, fed through one queue.SimpleQueue: a put costs ~22 us when the previous scan has evicted
    the caches, a ThreadPoolExecutor.submit 74 us (its Future, locks and thread-count check), on the search's critical
    path (bench/RESULTS.md, "Sixth session: the 2 ms target"). Items carry no Future (the search tracks its threads
    through its job's counters: engine.scan.helper_scan); `submit` makes one, for callers that want the result."""

    def __init__(self, count: int) -> None:
        self._queue: SimpleQueue[tuple[object, tuple[object, ...], Future[object] | None] | None] = SimpleQueue()
        self._threads = [threading.Thread(target=self._run, name=f"sightline-scan-{i}", daemon=True) for i in range(count)]
        for th in self._threads:
            th.start()

    def put(self, fn: object, args: tuple[object, ...]) -> None:
        """Run fn(*args) on the next free thread; its result is dropped."""
        self._queue.put((fn, args, None))

    def submit(self, fn: object, *args: object) -> Future[object]:
        """Run fn(*args) on the next free thread; a Future of its result."""
        future: Future[object] = Future()
        self._queue.put((fn, args, future))
        return future

    def shutdown(self) -> None:
        """Let the threads end once the items queued before are done (again: nothing more)."""
        if self._threads:
            for _ in self._threads:
                self._queue.put(None)
            self._threads = []

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            fn, args, future = item
            if future is not None and not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)  # type: ignore[operator]
            except BaseException as exc:  # (a kernel does not raise; a caller's submitted function may)
                if future is None:
                    logger.exception("scan thread: %r failed", fn)
                else:
                    future.set_exception(exc)
            else:
                if future is not None:
                    future.set_result(result)


@functools.cache
def _warm_kernels() -> None:
    """Compile the scan kernels (or load them from numba's cache: ~1 s) once per process, on a thread of their own,
    so that neither start-up nor the first search waits for it (a search that comes first waits for the compiler)."""
    threading.Thread(target=scan.warm, name="sightline-scan-warm", daemon=True).start()


def saved_keys(path: Path) -> np.ndarray | None:
    """The face ids of a saved HammingIndex file (header and keys only); None when it is not one or is damaged."""
    try:
        with open(path, "rb") as fh:
            if fh.read(8) != MAGIC:
                return None
            size = int.from_bytes(fh.read(4), "little")
            header = json.loads(fh.read(size)) if 0 < size < 1 << 20 else None
            if not isinstance(header, dict):
                return None
            n = int(header.get("count", -1))
            row = 8 + int(header.get("code_bytes", 0)) + int(header.get("ndim", 0))
            if n < 0 or os.fstat(fh.fileno()).st_size != 12 + size + n * row:
                return None
            return np.fromfile(fh, dtype="<i8", count=n).astype(np.int64)
    except (OSError, ValueError):
        return None
