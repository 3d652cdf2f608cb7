"""Compiled kernels of HammingIndex's search: the query's code and projection, a fused Hamming scan with a threshold
and the second-stage bits in chunks that several threads claim in turn, the selection and the int8 re-rank.

Why not faiss.knn_hamming (what the index used first): a k-NN with k = 10,000 keeps a 10,000-slot structure per
query and returns copies to merge, and the candidates' bits and vectors then had to be gathered into new arrays
(numpy) before they could be compared. Here the scan compares each code's distance with a threshold chosen from
a strided sample of the gallery and writes only the rows at or under it (~1.3 % at 1 M), and the later stages
read the kept rows straight from the index's arrays: no large-k heap, no gathered copies of gallery data (which
also leaves nothing of a face outside the index's own arrays). Measured at 1 M faces in one process, the two
alternating (bench/RESULTS.md, issue 15, "Speed at scale"): ~30 % less CPU per search than faiss.

The kernels are compiled by numba (LLVM; `cache=True` keeps the machine code in `__pycache__`, so only the first
start-up on a machine compiles, ~1-2 s) and release the GIL, so one query's scan runs on several threads.
Codes are viewed as uint64 words when their width allows (8 bytes at a time: one popcnt instruction each), else as
uint32 or uint16 words (a 96- or 112-bit lead), else as bytes; rows stay contiguous. (A 96-bit lead, three uint32 words,
scanned no faster than the 128-bit one, two uint64 words: the scan costs instructions per row as much as bytes;
bench/RESULTS.md, "Seventh session".)
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.core import types
from numba.extending import intrinsic


def _kernel(**options: object):  # type: ignore[no-untyped-def]
    """njit(nogil=True, cache=True, **options); without a writable cache location (a read-only install and no writable
    home: numba refuses cache=True then) the kernel is compiled afresh in each process instead (~6 s, on the warm-up thread)."""

    def decorate(fn):  # type: ignore[no-untyped-def]
        try:
            return njit(nogil=True, cache=True, **options)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return njit(nogil=True, **options)(fn)

    return decorate


__all__ = ["as_words", "close_gate", "encode_query", "encode_structured", "finish_fast", "finish_search", "helper_scan",
           "lead_threshold", "project_query", "query_words", "rerank_blocks", "rerank_int8", "sample_histogram", "sample_threshold",
           "scan_chunks", "select_rerank", "select_rows", "select_top", "start_search", "threshold_for", "top_answers", "wait_chunks",
           "warm", "word_type"]


@intrinsic
def _popcount(typingctx, x):  # type: ignore[no-untyped-def]
    """LLVM's ctpop on an unsigned integer (the CPU's popcnt where it has one)."""
    if not isinstance(x, types.Integer):
        return None
    sig = types.int64(x)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        count = builder.ctpop(args[0])
        return builder.zext(count, context.get_value_type(types.int64)) if x.bitwidth < 64 else count

    return sig, codegen


@intrinsic
def _prefetch(typingctx, arr, i):  # type: ignore[no-untyped-def]
    """Ask the CPU to start loading row i of a 2-D array into cache (llvm.prefetch: read, high locality)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 2 and isinstance(i, types.Integer)):
        return None
    sig = types.void(arr, i)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        from llvmlite import ir

        ary = context.make_array(signature.args[0])(context, builder, args[0])
        row = builder.mul(builder.zext(args[1], ir.IntType(64)) if i.bitwidth < 64 else args[1], builder.extract_value(ary.strides, 0))
        base = builder.ptrtoint(ary.data, ir.IntType(64))
        ptr = builder.inttoptr(builder.add(base, row), ir.IntType(8).as_pointer())
        fn = builder.module.declare_intrinsic("llvm.prefetch", fnty=ir.FunctionType(
            ir.VoidType(), [ir.IntType(8).as_pointer(), ir.IntType(32), ir.IntType(32), ir.IntType(32)]))
        builder.call(fn, [ptr, ir.Constant(ir.IntType(32), 0), ir.Constant(ir.IntType(32), 3), ir.Constant(ir.IntType(32), 1)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _fetch_add(typingctx, arr, i, v):  # type: ignore[no-untyped-def]
    """Atomically add v to arr[i] (1-D int64) and return the value before (LLVM atomicrmw add, seq_cst): how the
    threads of one scan claim its chunks without a lock."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype == types.int64
            and isinstance(i, types.Integer) and isinstance(v, types.Integer)):
        return None
    sig = types.int64(arr, i, v)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        idx = context.cast(builder, args[1], signature.args[1], types.int64)
        val = context.cast(builder, args[2], signature.args[2], types.int64)
        return builder.atomic_rmw("add", builder.gep(ary.data, [idx]), val, "seq_cst")

    return sig, codegen


@intrinsic
def _load(typingctx, arr, i):  # type: ignore[no-untyped-def]
    """arr[i] (1-D int64) as an atomic load (seq_cst): read afresh each time, and every store its writer made before
    publishing it (_publish) is visible."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype == types.int64 and isinstance(i, types.Integer)):
        return None
    sig = types.int64(arr, i)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        idx = context.cast(builder, args[1], signature.args[1], types.int64)
        return builder.load_atomic(builder.gep(ary.data, [idx]), "seq_cst", 8)

    return sig, codegen


@intrinsic
def _publish(typingctx, arr, i, v):  # type: ignore[no-untyped-def]
    """arr[i] = v (1-D int64) as an atomic exchange: every store before it is visible once arr[i] is (a chunk's rows,
    then its count)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype == types.int64
            and isinstance(i, types.Integer) and isinstance(v, types.Integer)):
        return None
    sig = types.void(arr, i, v)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        idx = context.cast(builder, args[1], signature.args[1], types.int64)
        val = context.cast(builder, args[2], signature.args[2], types.int64)
        builder.atomic_rmw("xchg", builder.gep(ary.data, [idx]), val, "seq_cst")
        return context.get_dummy_value()

    return sig, codegen


CLAIM, READY, ACTIVE, BOUND, QUOTA, RANKED, RCLAIM, RDONE, T, GATE, EXITED = range(11)  # a scan job's shared counters (scan_chunks,
# _finish_chunk, rerank_blocks, helper_scan); HammingIndex makes them fresh per scan: [0, 0, 0, -1, quota, -1, 0, 0, t or -1, 0, 0]
CLOSED = 1 << 40  # added to job[GATE] by close_gate: helpers that come later return at once
PREFETCH = 16  # rows ahead the second stage asks for (its reads are scattered: the hardware cannot guess them)


def word_type(nbytes: int) -> type[np.unsignedinteger]:
    """The widest unsigned word a row of `nbytes` bytes is a whole number of: uint64, uint32 (a 96-bit lead: 3 words),
    uint16 (112 bits: 7), else uint8. Rows stay contiguous, unpadded (padding a 12-byte row to 16 would read 16 bytes)."""
    for size, dtype in ((8, np.uint64), (4, np.uint32), (2, np.uint16)):
        if nbytes % size == 0:
            return dtype
    return np.uint8


def as_words(codes: np.ndarray) -> np.ndarray:
    """(n, nbytes) uint8 codes -> the same memory as (n, nbytes / size) words of word_type(nbytes) when C-contiguous, else
    as is. (HammingIndex's arrays start on a cache line, so every row starts on a word: the kernels read aligned words.)"""
    dtype = word_type(codes.shape[1])
    if dtype is not np.uint8 and codes.flags.c_contiguous:
        return codes.view(dtype)
    return codes


@_kernel(boundscheck=False)
def sample_histogram(codes, q, n, blocks, block, hist):  # type: ignore[no-untyped-def]
    """hist[d] += 1 for the Hamming distance d to q of each code in `blocks` runs of `block` consecutive codes spread
    evenly over the first n (runs, not single rows: read sequentially, ~4x faster than a strided sample)."""
    w = codes.shape[1]
    for r in range(blocks):
        start = (n - block) * r // max(1, blocks - 1)
        for i in range(start, start + block):
            d = 0
            for j in range(w):
                d += _popcount(codes[i, j] ^ q[j])
            hist[d] += 1


@_kernel(boundscheck=False)
def _scan_range(codes, q, t, a, b, rows, dist):  # type: ignore[no-untyped-def]
    """Rows i in [a, b) whose scanned code (codes[i]) is within Hamming distance t of q, written to rows with that distance
    to dist, up to the buffers' length; returns how many rows there are (more than the buffers hold means: call again,
    larger)."""
    w = codes.shape[1]
    cap = rows.shape[0]
    k = 0
    t = np.int64(t)
    if w == 4:  # 256-bit scans (the default): unrolled, unsigned row numbers (no negative-index wraparound code)
        q0, q1, q2_0, q3 = q[0], q[1], q[2], q[3]
        for i in range(np.uint64(a), np.uint64(b)):
            d = (_popcount(codes[i, 0] ^ q0) + _popcount(codes[i, 1] ^ q1)
                 + _popcount(codes[i, 2] ^ q2_0) + _popcount(codes[i, 3] ^ q3))
            if d <= t:
                if k < cap:
                    rows[k] = i
                    dist[k] = d
                k += 1
    elif w == 2:  # 128-bit lead codes (the shipped code model's: engine.codes)
        q0, q1 = q[0], q[1]
        for i in range(np.uint64(a), np.uint64(b)):
            d = _popcount(codes[i, 0] ^ q0) + _popcount(codes[i, 1] ^ q1)
            if d <= t:
                if k < cap:
                    rows[k] = i
                    dist[k] = d
                k += 1
    elif w == 3:  # 96-bit lead codes (three uint32 words: the shipped code model's) or 192-bit scans (--scan-bits 192)
        q0, q1, q2_0 = q[0], q[1], q[2]
        for i in range(np.uint64(a), np.uint64(b)):
            d = _popcount(codes[i, 0] ^ q0) + _popcount(codes[i, 1] ^ q1) + _popcount(codes[i, 2] ^ q2_0)
            if d <= t:
                if k < cap:
                    rows[k] = i
                    dist[k] = d
                k += 1
    elif w == 1:  # 64-bit leads
        q0 = q[0]
        for i in range(np.uint64(a), np.uint64(b)):
            d = _popcount(codes[i, 0] ^ q0)
            if d <= t:
                if k < cap:
                    rows[k] = i
                    dist[k] = d
                k += 1
    else:
        for i in range(np.uint64(a), np.uint64(b)):
            d = 0
            for j in range(w):
                d += _popcount(codes[i, j] ^ q[j])
            if d <= t:
                if k < cap:
                    rows[k] = i
                    dist[k] = d
                k += 1
    return k


@_kernel(boundscheck=False)
def _second_stage(codes2, q2, rows, dist, k):  # type: ignore[no-untyped-def]
    """dist[m] += the Hamming distance of codes2[rows[m]] to q2 for m < k: the rest of the bits, read only for the rows a
    scan kept, after it (inside the scan loop the scattered reads stalled the stream: 5.2 against 3.5 + 0.55 ms at 1 M)."""
    w2 = codes2.shape[1]
    if w2 == 8:  # the 512 bits after a lead code (one cache line per row): unrolled
        r0, r1, r2, r3, r4, r5, r6, r7 = q2[0], q2[1], q2[2], q2[3], q2[4], q2[5], q2[6], q2[7]
        for m in range(k):
            if m + PREFETCH < k:
                _prefetch(codes2, rows[m + PREFETCH])
            i = np.uint64(rows[m])
            dist[m] += (_popcount(codes2[i, 0] ^ r0) + _popcount(codes2[i, 1] ^ r1) + _popcount(codes2[i, 2] ^ r2)
                        + _popcount(codes2[i, 3] ^ r3) + _popcount(codes2[i, 4] ^ r4) + _popcount(codes2[i, 5] ^ r5)
                        + _popcount(codes2[i, 6] ^ r6) + _popcount(codes2[i, 7] ^ r7))
    elif w2 == 4:  # the second 256 bits of a code without a lead: unrolled
        r0, r1, r2, r3 = q2[0], q2[1], q2[2], q2[3]
        for m in range(k):
            if m + PREFETCH < k:
                _prefetch(codes2, rows[m + PREFETCH])
            i = np.uint64(rows[m])
            dist[m] += (_popcount(codes2[i, 0] ^ r0) + _popcount(codes2[i, 1] ^ r1)
                        + _popcount(codes2[i, 2] ^ r2) + _popcount(codes2[i, 3] ^ r3))
    elif w2:
        for m in range(k):
            if m + PREFETCH < k:
                _prefetch(codes2, rows[m + PREFETCH])
            i = np.uint64(rows[m])
            d = 0
            for j in range(w2):
                d += _popcount(codes2[i, j] ^ q2[j])
            dist[m] += d


@_kernel(boundscheck=False)
def _finish_chunk(codes2, q2, c, rows, dist, scanned, taken, counts, job, short):  # type: ignore[no-untyped-def]
    """The second stage of scanned chunk c, unless another thread has taken it (taken[c]); returns 1 if done here.

    Then the chunk's short list (short = (srows, sdist, scounts), as rows, dist, counts): its rows whose distance over
    all the bits is at most job[BOUND] (all of them while it is < 0), so that the selection reads ~3 x `candidates` rows,
    not the ~50,000 the scan kept (0.25 ms at 1 M). job[BOUND] is set once, by the thread that finishes chunk 0, from
    that chunk's distances: the smallest distance under which job[QUOTA] of its rows lie (QUOTA ~ 3 x candidates /
    chunks). Any bound gives the same answer: chunks finished before it was set keep every row on their short lists, and
    when the selection's cut over the short lists exceeds the bound it reads the full lists instead (finish_search)."""
    if _fetch_add(taken, c, 1) != 0:
        return 0
    k = _load(scanned, c)
    srows, sdist, scounts = short
    s = 0
    if k <= rows.shape[1]:
        rc, dc = rows[c], dist[c]
        _second_stage(codes2, q2, rc, dc, k)
        if c == 0:
            quota = _load(job, QUOTA)
            bound = -1
            if quota < k:  # else the chunk has too few rows to judge by: every row stays on the short lists
                hist = np.zeros(4097, np.int64)  # (distances over all the bits: the larger ones are never counted)
                for m in range(k):
                    if dc[m] < 4097:
                        hist[dc[m]] += 1
                total = 0
                bound = 0
                while bound < 4096 and total + hist[bound] < quota:
                    total += hist[bound]
                    bound += 1
            _publish(job, BOUND, bound)
        bound = _load(job, BOUND)
        if bound < 0:
            bound = 1 << 30
        sr, sd = srows[c], sdist[c]
        for m in range(k):
            d = dc[m]
            if d <= bound:
                sr[s] = rc[m]
                sd[s] = d
                s += 1
    scounts[c] = s
    _publish(counts, c, k)
    return 1


@_kernel(boundscheck=False)
def scan_chunks(codes, q, codes2, q2, t, n, chunk, job, rows, dist, scanned, taken, counts, short, rank, spins, sweep):  # type: ignore[no-untyped-def]
    """Scan the first n codes in chunks of `chunk` rows, claimed one at a time from the shared counter job[CLAIM] (so
    every thread that calls this with the same arguments takes the next unscanned chunk until none is left: the
    threads finish within one chunk of each other whenever each started, and a thread that starts late - the machine
    is busy - finds less or nothing left). Chunk c's kept rows and distances (see _scan_range) go to rows[c] and
    dist[c], then their number to counts[c] (published last: a count >= 0 means the chunk is complete; more than
    rows.shape[1] means its buffers were too small).

    With a second stage (codes2, q2: see _second_stage) the count goes to scanned[c] first; the caller encodes the
    query's other bits (q2) while the other threads scan and sets job[READY] once they are written, before it joins
    the scan. From then on each thread adds the second stage to the chunks it scanned as soon as it has scanned them
    (so the threads share the second stage as they share the scan); a thread that finds no chunk left while it is
    unset leaves its chunks to the caller, which (`sweep`) then takes every scanned chunk no thread has taken
    (taken[c], claimed atomically). No thread ever waits for another: a chunk still being scanned is finished by its
    scanner, which by then sees job[READY] set. Then counts[c] is published as above.

    job[ACTIVE] counts the calls inside the loop (up on entry, down as the last step): once every count is published and
    it is 0, no thread touches the buffers again (a call that enters later finds nothing to claim), so the caller may
    reuse them (wait_chunks). job (8,) int64 is fresh per scan (see also _finish_chunk for BOUND and QUOTA, and `short`);
    the buffers are reused. A helper (not `sweep`) with candidates to re-rank (rank = (vecs, q, best, sims), best
    non-empty) then joins the re-rank (_join_rerank, up to `spins` rounds of waiting). Returns how many chunks this call
    scanned or finished."""
    _fetch_add(job, ACTIVE, 1)
    nchunks = counts.shape[0]
    second = codes2.shape[1] > 0
    mine = np.empty(nchunks, np.int64)
    m = 0  # chunks this call scanned
    f = 0  # ... of which it has finished (the second stage added)
    done = 0
    while True:
        c = _fetch_add(job, CLAIM, 1)
        if c >= nchunks:
            break
        a = c * chunk
        b = min(n, a + chunk)
        k = _scan_range(codes, q, t, a, b, rows[c], dist[c])
        if second:
            _publish(scanned, c, k)
            mine[m] = c
            m += 1
            if _load(job, READY) != 0:
                while f < m:
                    _finish_chunk(codes2, q2, mine[f], rows, dist, scanned, taken, counts, job, short)
                    f += 1
        else:
            _publish(counts, c, k)
            done += 1
    if second and _load(job, READY) != 0:
        while f < m:
            _finish_chunk(codes2, q2, mine[f], rows, dist, scanned, taken, counts, job, short)
            f += 1
        if sweep:
            for c in range(nchunks):
                if _load(scanned, c) >= 0 and _load(taken, c) == 0:
                    done += _finish_chunk(codes2, q2, c, rows, dist, scanned, taken, counts, job, short)
    _fetch_add(job, ACTIVE, -1)
    if not sweep and rank[2].shape[0] > 0:  # a helper: its share of the re-rank (fresh arrays per search, not these buffers)
        _join_rerank(job, rank, spins)
    return done + m


@_kernel(boundscheck=False)
def helper_scan(codes, q, codes2, q2, t, n, chunk, job, rows, dist, scanned, taken, counts, short, rank, spins, sweep):  # type: ignore[no-untyped-def]
    """scan_chunks on another thread, started before the threshold is chosen: with t < 0 it first spins (up to 4 x `spins`
    rounds) until the caller writes it to job[T], else returns 0 without touching anything (the caller scans it all).
    (4 x: `spins` rounds took ~0.1 ms here, while the caller's encoding and sample (start_search) take 0.1-0.3 ms on
    caches the previous scan evicted, and a helper woken without Python in between starts spinning ~0.03 ms after the
    put: with `spins` it often gave up just before the threshold came, and the caller scanned alone, 3.3 ms at 1 M.)
    It passes job[GATE] first (returns at once if the caller has closed it: close_gate) and counts itself out in
    job[EXITED] as its last step."""
    if _fetch_add(job, GATE, 1) >= CLOSED:
        return 0
    done = 0
    if t < 0:
        for _ in range(4 * spins):
            t = _load(job, T)
            if t >= 0:
                break
    if t >= 0:
        done = scan_chunks(codes, q, codes2, q2, t, n, chunk, job, rows, dist, scanned, taken, counts, short, rank, spins, sweep)
    _fetch_add(job, EXITED, 1)
    return done


@_kernel(boundscheck=False)
def close_gate(job):  # type: ignore[no-untyped-def]
    """Close job[GATE] (helper_scan calls that come later return at once); returns how many passed it before, for the
    caller to wait until job[EXITED] reaches that."""
    return _fetch_add(job, GATE, CLOSED)


@_kernel(boundscheck=False)
def wait_chunks(counts, job, spins):  # type: ignore[no-untyped-def]
    """Spin until every chunk's count is published and no thread is inside scan_chunks (job[ACTIVE] == 0), at most `spins`
    rounds (~1 ns each: bounded, so a thread the machine has descheduled is then waited for by blocking instead);
    returns 1 when both hold. The calling thread's wait for another's last chunk: no lock, no wake-up of a sleeping
    thread (a Future's result costs ~0.1 ms of hand-offs and the GIL)."""
    nchunks = counts.shape[0]
    c = 0
    for _ in range(spins):
        while c < nchunks and _load(counts, c) >= 0:
            c += 1
        if c == nchunks and _load(job, ACTIVE) == 0:
            return 1
    return 0


@_kernel(boundscheck=False, fastmath=True)
def select_rows(rows, dist, counts, want, maxd, out, limit):  # type: ignore[no-untyped-def]
    """The `want` rows of the chunks' kept rows (rows[c, :counts[c]], see scan_chunks) with the smallest distance (ties
    at the cut by position; all of them when fewer) into out; returns how many, or -1 (nothing written) when the cut
    distance would exceed `limit` (the short lists: _finish_chunk). A counting selection: distances are integers <= maxd."""
    hist = np.zeros(maxd + 2, np.int64)
    total_k = 0
    for c in range(counts.shape[0]):
        for m in range(counts[c]):
            hist[dist[c, m]] += 1
        total_k += counts[c]
    t = maxd + 1
    room = total_k
    if want < total_k:
        total = 0
        t = 0
        while total + hist[t] < want:
            total += hist[t]
            t += 1
        room = want - total  # how many of the rows at distance exactly t are taken
        if t > limit:
            return -1
    o = 0
    for c in range(counts.shape[0]):
        for m in range(counts[c]):
            d = dist[c, m]
            if d < t:
                out[o] = rows[c, m]
                o += 1
            elif d == t and room > 0:
                out[o] = rows[c, m]
                o += 1
                room -= 1
    return o


@_kernel(boundscheck=False, fastmath=True)
def select_rerank(rows, dist, counts, want, maxd, vecs, q, out, sims):  # type: ignore[no-untyped-def]
    """select_rows, then each selected row's int8 cosine vecs[row] . q into sims (read in place, as rerank_int8)."""
    o = select_rows(rows, dist, counts, want, maxd, out, maxd + 1)
    rerank_int8(vecs, out, o, q, sims)
    return o


RANK_BLOCK = 64  # candidates per block of the shared re-rank (rerank_blocks)


@_kernel(boundscheck=False, fastmath=True)
def rerank_blocks(job, rank):  # type: ignore[no-untyped-def]
    """The re-rank of a search's candidates shared by its threads: once the caller has published how many candidates
    there are (job[RANKED] >= 0; rank = (vecs, q, best, sims)), claim blocks of RANK_BLOCK of them (job[RCLAIM]) and
    re-rank each (rerank_int8 on its slice), then count it done (job[RDONE]). Each row read is a DRAM access in a page
    of its own (~0.18 us at 1 M: 1,000 candidates cost 0.18 ms on one thread), so two threads halve it. Returns the
    number of blocks done here."""
    vecs, q, best, sims = rank
    o = _load(job, RANKED)
    done = 0
    while True:
        b = _fetch_add(job, RCLAIM, 1)
        a = b * RANK_BLOCK
        if a >= o:
            break
        e = min(o, a + RANK_BLOCK)
        rerank_int8(vecs, best[a:], e - a, q, sims[a:])
        _fetch_add(job, RDONE, 1)
        done += 1
    return done


@_kernel(boundscheck=False)
def _join_rerank(job, rank, spins):  # type: ignore[no-untyped-def]
    """A helper thread's share of the re-rank (rerank_blocks) once its scan is done: it spins up to `spins` rounds for
    the caller to publish the candidates (the caller is then finishing its own last chunk and the selection: ~0.02 ms),
    else leaves them all to the caller."""
    for _ in range(spins):
        if _load(job, RANKED) >= 0:
            return rerank_blocks(job, rank)
    return 0


@_kernel(boundscheck=False)
def top_answers(sims, best, k, keys, count, offset, out_keys, out_sims):  # type: ignore[no-untyped-def]
    """The `count` best of k re-ranked candidates (best[:k], sims[:k]) by similarity (ties by candidate order) into
    out_keys (keys[row]) and out_sims (similarity + offset), best first; returns how many (min(count, k))."""
    c = min(count, k)
    if c * 8 >= k:
        order = np.argsort(-sims[:k], kind="mergesort")[:c]
    else:  # few of many: insertion into the best c so far
        order = np.empty(c, np.int64)
        filled = 0
        for m in range(k):
            s = sims[m]
            if filled == c:
                if s <= sims[order[c - 1]]:
                    continue
                j = c - 1
            else:
                j = filled
                filled += 1
            while j > 0 and sims[order[j - 1]] < s:
                order[j] = order[j - 1]
                j -= 1
            order[j] = m
    for j in range(c):
        out_keys[j] = keys[best[order[j]]]
        out_sims[j] = sims[order[j]] + offset
    return c


@_kernel(boundscheck=False, fastmath=True)
def select_top(rows, dist, counts, want, maxd, vecs, q, best, sims, keys, count, offset, out_keys, out_sims):  # type: ignore[no-untyped-def]
    """select_rerank, then top_answers: one call for what numpy did in five (argpartition, argsort, two gathers, an add):
    ~0.1 ms of Python on caches the scan left cold."""
    k = select_rerank(rows, dist, counts, want, maxd, vecs, q, best, sims)
    return top_answers(sims, best, k, keys, count, offset, out_keys, out_sims)


@_kernel(boundscheck=False)
def sample_threshold(codes, q, n, blocks, block, want, hist):  # type: ignore[no-untyped-def]
    """sample_histogram into a zeroed hist, then threshold_for with scale n / (blocks * block): returns the threshold and
    the number of sampled codes at or under it."""
    hist[:] = 0
    sample_histogram(codes, q, n, blocks, block, hist)
    scale = n / (blocks * block)
    t = threshold_for(hist, scale, want)
    return t, hist[: t + 1].sum()


@_kernel(boundscheck=False)
def lead_threshold(x, mean, w, y, code, codes, q, n, blocks, block, want, hist):  # type: ignore[no-untyped-def]
    """encode_query(x, mean, w, y, code), then sample_threshold with the query's scanned words q (the same memory as
    code, as query_words views it): one call before the scan starts."""
    encode_query(x, mean, w, y, code)
    _publish(hist, 0, 0)  # (an atomic store: the code's bytes are written before q is read through the other view)
    return sample_threshold(codes, q, n, blocks, block, want, hist)


@_kernel(boundscheck=False)
def finish_search(x, mean, w2, y2, code2, basis, centre, scale, offset, scan_args, enough, scan_bits, bits, want, keys, count,
                  out_keys, out_sims):  # type: ignore[no-untyped-def]
    """The calling thread's part of a search after the other threads were started on scan_args (scan_chunks' arguments
    but `sweep`: codes, q, codes2, q2, t, n, chunk, job, rows, dist, scanned, taken, counts, short, rank, spins), in one
    call, so that it needs neither Python nor the GIL until the answer (the other threads' returns then do not delay
    it): the query's other bits (encode_query into code2, the second stage's q2), its projection (project_query into
    rank's q, when basis has columns; else `offset` and q as given), then job READY; its share of the scan (scan_chunks
    with the sweep), the wait for the other threads (wait_chunks), the selection of `want` candidates by all the bits
    (select_rows, maxd = `bits`) from the chunks' short lists when its cut is within their bound (_finish_chunk), else
    from every row kept; the re-rank shared with the other threads (rerank_blocks) and the best `count` (top_answers).

    Returns (answers, offset, candidates); answers < 0 when the caller must finish in Python (HammingIndex._finish_scan):
    -1 a chunk's buffers were too small or fewer than `enough` rows were kept while t < scan_bits (the threshold can be
    raised), -2 another thread is still inside a chunk after `spins` rounds, -3 in a block of the re-rank (the
    `candidates` are selected; wait for the threads, then top_answers)."""
    codes, q, codes2, q2, t, n, chunk, job, rows, dist, scanned, taken, counts, short, rank, spins = scan_args
    vecs, qs, best, sims = rank
    if t < 0:  # (start_search published it)
        t = _load(job, T)
    if code2.shape[0] > 0:
        if w2.shape[0] == x.shape[0]:
            encode_query(x, mean, w2, y2, code2)
        else:  # w2: the signs of a structured rotation (engine.codes.structured_weights), no matrix to read
            encode_structured(x, mean, w2, y2, code2)
    if basis.shape[1] > 0:
        offset = np.float32(project_query(x, basis, centre, scale, qs))
    _publish(job, READY, 1)
    scan_chunks(codes, q, codes2, q2, t, n, chunk, job, rows, dist, scanned, taken, counts, short, rank, spins, 1)
    if wait_chunks(counts, job, spins) == 0:
        _publish(job, RANKED, 0)  # (a helper waiting to re-rank: nothing to do)
        return -2, offset, 0
    total = 0
    for c in range(counts.shape[0]):
        total += counts[c]
        if counts[c] > rows.shape[1]:
            total = -1
            break
    if total < 0 or (total < enough and t < scan_bits):
        _publish(job, RANKED, 0)
        return -1, offset, 0
    srows, sdist, scounts = short
    o = -1
    if codes2.shape[1] > 0 and scounts.sum() >= want:
        # Every row within job[BOUND] is on the short lists (and, from chunks finished before it was set, others): the
        # selection from them is the selection from all the rows when its cut is within the bound.
        bound = _load(job, BOUND)
        o = select_rows(srows, sdist, scounts, want, bits, best, bound if bound >= 0 else bits + 1)
    if o < 0:
        o = select_rows(rows, dist, counts, want, bits, best, bits + 1)
    _publish(job, RANKED, o)
    rerank_blocks(job, rank)
    blocks = (o + RANK_BLOCK - 1) // RANK_BLOCK
    for _ in range(spins + 1):
        if _load(job, RDONE) == blocks:
            return top_answers(sims, best, o, keys, count, offset, out_keys, out_sims), offset, o
    return -3, offset, o


@_kernel(boundscheck=False)
def start_search(x, mean, w, y, code, codes, q, n, blocks, block, want, hist, job):  # type: ignore[no-untyped-def]
    """lead_threshold, then the threshold published to job[T] (the other threads, spinning in helper_scan, start scanning);
    returns it. HammingIndex.search's first compiled call."""
    t, _ = lead_threshold(x, mean, w, y, code, codes, q, n, blocks, block, want, hist)
    _publish(job, T, t)
    return t


@_kernel(boundscheck=False)
def finish_fast(x, mean, w2, y2, code2, basis, centre, scale, offset, scan_args, enough, scan_bits, bits, want, keys, count,
                out_keys, out_sims, scratch):  # type: ignore[no-untyped-def]
    """finish_search (scan_args' t may be < 0: then job[T], as start_search published it), then, when it answered (>= 0),
    the buffers reset for the next search that reuses them (scanned and counts -1, taken 0) and the query's scratch
    (`scratch`, uint8: the memory of its code, encoding and projection) zeroed: nothing derived from the query stays. No
    other thread reads either by then (every chunk and re-rank block is done; a helper that comes later finds nothing to
    claim). Returns what finish_search returns."""
    r, offset, o = finish_search(x, mean, w2, y2, code2, basis, centre, scale, offset, scan_args, enough, scan_bits, bits, want,
                                 keys, count, out_keys, out_sims)
    if r >= 0:
        scanned, taken, counts = scan_args[10], scan_args[11], scan_args[12]
        for c in range(counts.shape[0]):
            scanned[c] = -1
            taken[c] = 0
            counts[c] = -1
        scratch[:] = 0
    return r, offset, o


@_kernel(boundscheck=False, fastmath=True)
def rerank_int8(vecs, rows, k, q, out):  # type: ignore[no-untyped-def]
    """out[m] = vecs[rows[m]] . q for m < k (vecs (n, d) int8, q (d,) float32), read in place: no gathered copy."""
    d = vecs.shape[1]
    for m in range(k):
        if m + PREFETCH < k:
            _prefetch(vecs, rows[m + PREFETCH])
        i = rows[m]
        s = np.float32(0.0)
        for j in range(d):
            s += np.float32(vecs[i, j]) * q[j]
        out[m] = s


@_kernel()
def threshold_for(hist, scale, want):  # type: ignore[no-untyped-def]
    """The smallest distance t whose sampled count at or under it, times `scale`, reaches `want` (else the largest)."""
    total = 0
    for t in range(len(hist)):
        total += hist[t]
        if total * scale >= want:
            return t
    return len(hist) - 1


@_kernel(boundscheck=False)
def _pack_signs(y, code, nbytes):  # type: ignore[no-untyped-def]
    """code[b] for b < nbytes = the signs of y[8b:8b+8] > 0, first bit highest (numpy's packbits order)."""
    for b in range(nbytes):
        v = 0
        for k in range(8):
            if y[8 * b + k] > 0:
                v |= 1 << (7 - k)
        code[b] = v


@_kernel(boundscheck=False, fastmath=True)
def encode_query(x, mean, w, y, code):  # type: ignore[no-untyped-def]
    """One query's sign code: code = packbits((x - mean) @ w > 0) (numpy's bit order), y (bits,) float32 scratch.
    What CodeModel.encode computes, in one pass over w that the compiler vectorises: 0.13 against 0.25 ms when w
    (1 MB) has been evicted from the caches by the previous scan (numpy: a BLAS call, then 3 temporaries)."""
    d, bits = w.shape
    for j in range(bits):
        y[j] = 0.0
    for i in range(d):
        xi = x[i] - mean[i]
        for j in range(bits):
            y[j] += xi * w[i, j]
    _pack_signs(y, code, bits // 8)


@_kernel(boundscheck=False)
def encode_structured(x, mean, signs, y, code):  # type: ignore[no-untyped-def]
    """One query's sign code under a structured rotation: code = packbits(T (x - mean) > 0) for T = H D_r ... H D_1 (signs
    (rounds, d) of +-1, d a power of two; engine.codes.structured_weights: the index's codes are (x - mean) @ W for the
    same T, normalised, which changes no sign), y (d,) float32 scratch. O(d log d) and 3 x 2 KB of signs read, for the
    1 MB matrix encode_query would read, cold after every scan. (No fastmath: the butterflies are as engine.codes.fwht.)"""
    rounds, d = signs.shape
    for i in range(d):
        y[i] = x[i] - mean[i]
    for r in range(rounds):
        for i in range(d):
            y[i] *= signs[r, i]
        h = 1
        while h < d:
            for a in range(0, d, 2 * h):
                for i in range(a, a + h):
                    u = y[i]
                    v = y[i + h]
                    y[i] = u + v
                    y[i + h] = u - v
            h *= 2
    _pack_signs(y, code, d // 8)


@_kernel(boundscheck=False, fastmath=True)
def project_query(x, basis, centre, scale, qs):  # type: ignore[no-untyped-def]
    """qs = p / scale for p = x @ basis, L2-normalised (Projection.apply); returns p . centre."""
    d, m = basis.shape
    for j in range(m):
        qs[j] = 0.0
    for i in range(d):
        xi = x[i]
        for j in range(m):
            qs[j] += xi * basis[i, j]
    norm = 0.0
    for j in range(m):
        norm += qs[j] * qs[j]
    inv = 1.0 / max(np.sqrt(norm), 1e-12)
    dot = 0.0
    for j in range(m):
        dot += qs[j] * inv * centre[j]
        qs[j] = qs[j] * (inv / scale)
    return dot


def query_words(code: np.ndarray) -> np.ndarray:
    """A query's code bytes (1-D) viewed as as_words views the index's codes of that width."""
    code = np.ascontiguousarray(code, dtype=np.uint8)
    return code.view(word_type(len(code)))  # (always the index's view: unaligned memory gives another compiled variant)


def warm() -> None:
    """Compile (or load from numba's cache) every kernel for both code views, so no search pays for it."""
    for width, width2 in ((8, 8), (3, 3)):  # uint64 words (the shipped 128-bit lead, then 512 bits; 256 + 256 bits), bytes
        # (leads of other widths, uint32 or uint16 words: bench/search.py --codes leadL, compiled when first used)
        codes = as_words(np.zeros((4, width), dtype=np.uint8))
        q = query_words(np.zeros(width, dtype=np.uint8))
        codes2 = as_words(np.zeros((4, width2), dtype=np.uint8))
        q2 = query_words(np.zeros(width2, dtype=np.uint8))
        hist = np.zeros(width * 8 + 1, dtype=np.int64)
        sample_histogram(codes, q, 4, 2, 2, hist)
        threshold_for(hist, 1.5, 2.0)
        sample_threshold(codes, q, 4, 2, 2, 2.0, hist)
        rows2 = np.zeros((2, 4), dtype=np.int64)
        dist2 = np.zeros((2, 4), dtype=np.int32)
        scanned, taken, counts = np.full(2, -1, dtype=np.int64), np.zeros(2, dtype=np.int64), np.full(2, -1, dtype=np.int64)
        job = np.array([0, 1, 0, -1, 1, -1, 0, 0, width * 8, 0, 0], dtype=np.int64)
        short = (rows2.copy(), dist2.copy(), counts.copy())
        vecs, qs = np.zeros((4, 3), dtype=np.int8), np.zeros(3, dtype=np.float32)
        rank = (vecs, qs, np.zeros(4, dtype=np.int64), np.zeros(4, dtype=np.float32))
        helper_scan(codes, q, codes2, q2, -1, 4, 2, job, rows2, dist2, scanned, taken, counts, short, rank, 10, 0)
        scan_chunks(codes, q, codes2, q2, width * 8, 4, 2, job, rows2, dist2, scanned, taken, counts, short, rank, 10, 1)
        wait_chunks(counts, job, 10)
        close_gate(job)
        select_rerank(rows2, dist2, counts, 2, (width + width2) * 8, vecs, qs, np.zeros(4, dtype=np.int64), np.zeros(4, dtype=np.float32))
        select_top(rows2, dist2, counts, 2, (width + width2) * 8, vecs, qs, np.zeros(4, dtype=np.int64), np.zeros(4, dtype=np.float32),
                   np.zeros(4, dtype=np.int64), 1, np.float32(0), np.zeros(4, dtype=np.int64), np.zeros(4, dtype=np.float32))
        x, mean = np.zeros(8, dtype=np.float32), np.zeros(8, dtype=np.float32)
        code = np.zeros(-width % 8 + width + width2, dtype=np.uint8)[-width % 8 :]  # (code[width:] on a word)
        lead_threshold(x, mean, np.zeros((8, width * 8), dtype=np.float32), np.zeros(width * 8, dtype=np.float32), code[:width],
                       codes, query_words(code[:width]), 4, 2, 2, 2.0, hist)
        start_search(x, mean, np.zeros((8, width * 8), dtype=np.float32), np.zeros(width * 8, dtype=np.float32), code[:width],
                     codes, query_words(code[:width]), 4, 2, 2, 2.0, hist, np.zeros(11, dtype=np.int64))
        for basis in (np.zeros((8, 3), dtype=np.float32), np.zeros((8, 0), dtype=np.float32)):
            job = np.array([0, 0, 0, -1, 1, -1, 0, 0, width * 8, 0, 0], dtype=np.int64)
            scanned.fill(-1), taken.fill(0), counts.fill(-1)
            args = (codes, q, codes2, q2, width * 8, 4, 2, job, rows2, dist2, scanned, taken, counts, short, rank, 10)
            finish_search(x, mean, np.zeros((8, width2 * 8), dtype=np.float32), np.zeros(width2 * 8, dtype=np.float32), code[width:],
                          basis, np.zeros(3, dtype=np.float32), 127.0, np.float32(0), args, 1, width * 8, (width + width2) * 8, 2,
                          np.zeros(4, dtype=np.int64), 1, np.zeros(4, dtype=np.int64), np.zeros(4, dtype=np.float32))
        job = np.array([0, 0, 0, -1, 1, -1, 0, 0, width * 8, 0, 0], dtype=np.int64)
        scanned.fill(-1), taken.fill(0), counts.fill(-1)
        args = (codes, q, codes2, q2, -1, 4, 2, job, rows2, dist2, scanned, taken, counts, short, rank, 10)
        finish_fast(x, mean, np.zeros((8, width2 * 8), dtype=np.float32), np.zeros(width2 * 8, dtype=np.float32), code[width:],
                    np.zeros((8, 3), dtype=np.float32), np.zeros(3, dtype=np.float32), 127.0, np.float32(0), args, 1, width * 8,
                    (width + width2) * 8, 2, np.zeros(4, dtype=np.int64), 1, np.zeros(4, dtype=np.int64), np.zeros(4, dtype=np.float32),
                    np.zeros(8, dtype=np.uint8))
        top_answers(rank[3], rank[2], 2, np.zeros(4, dtype=np.int64), 1, np.float32(0), np.zeros(4, dtype=np.int64),
                    np.zeros(4, dtype=np.float32))
    z4 = np.zeros(4, dtype=np.float32)
    rerank_int8(np.zeros((4, 3), dtype=np.int8), np.zeros(4, dtype=np.int64), 4, np.zeros(3, dtype=np.float32), z4)
    z = np.zeros(8, dtype=np.float32)
    encode_query(z, z, np.zeros((8, 8), dtype=np.float32), z.copy(), np.zeros(1, dtype=np.uint8))
    encode_structured(z, z, np.ones((3, 8), dtype=np.float32), z.copy(), np.zeros(1, dtype=np.uint8))
    project_query(z, np.zeros((8, 3), dtype=np.float32), np.zeros(3, dtype=np.float32), 127.0, np.zeros(3, dtype=np.float32))
