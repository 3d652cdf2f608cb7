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
Codes are viewed as uint64 words when their width allows (8 bytes at a time: one popcnt instruction each), else
as bytes.
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


__all__ = ["as_words", "encode_query", "project_query", "query_words", "warm", "rerank_int8", "sample_histogram", "scan_chunks",
           "select_rerank", "threshold_for"]


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


PREFETCH = 16  # rows ahead the second stage asks for (its reads are scattered: the hardware cannot guess them)


def as_words(codes: np.ndarray) -> np.ndarray:
    """(n, nbytes) uint8 codes -> the same memory as (n, nbytes / 8) uint64 when nbytes is a multiple of 8, else as is."""
    if codes.shape[1] % 8 == 0 and codes.flags.c_contiguous:
        return codes.view(np.uint64)
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
    elif w == 3:  # 192-bit scans (bench/search.py --scan-bits 192)
        q0, q1, q2_0 = q[0], q[1], q[2]
        for i in range(np.uint64(a), np.uint64(b)):
            d = _popcount(codes[i, 0] ^ q0) + _popcount(codes[i, 1] ^ q1) + _popcount(codes[i, 2] ^ q2_0)
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
def _finish_chunk(codes2, q2, c, rows, dist, scanned, taken, counts):  # type: ignore[no-untyped-def]
    """The second stage of scanned chunk c, unless another thread has taken it (taken[c]); returns 1 if done here."""
    if _fetch_add(taken, c, 1) != 0:
        return 0
    k = _load(scanned, c)
    if k <= rows.shape[1]:
        _second_stage(codes2, q2, rows[c], dist[c], k)
    _publish(counts, c, k)
    return 1


@_kernel(boundscheck=False)
def scan_chunks(codes, q, codes2, q2, t, n, chunk, claim, rows, dist, scanned, taken, counts, ready, sweep):  # type: ignore[no-untyped-def]
    """Scan the first n codes in chunks of `chunk` rows, claimed one at a time from the shared counter claim[0] (so
    every thread that calls this with the same arguments takes the next unscanned chunk until none is left: the
    threads finish within one chunk of each other whenever each started, and a thread that starts late - the machine
    is busy - finds less or nothing left). Chunk c's kept rows and distances (see _scan_range) go to rows[c] and
    dist[c], then their number to counts[c] (published last: a count >= 0 means the chunk is complete; more than
    rows.shape[1] means its buffers were too small).

    With a second stage (codes2, q2: see _second_stage) the count goes to scanned[c] first; once no chunk is left to
    scan, each thread adds the second stage to the chunks it scanned, if ready[0] is set: the caller encodes the
    query's other bits (q2) while the other threads scan and sets ready[0] once they are written, before it joins
    the scan. A thread that finds it unset leaves its chunks to the caller, which (`sweep`) then takes every scanned
    chunk no thread has taken (taken[c], claimed atomically). No thread ever waits for another: a chunk still being
    scanned is finished by its scanner, which by then sees ready[0] set. Then counts[c] is published as above.
    Returns how many chunks this call scanned or finished."""
    nchunks = counts.shape[0]
    second = codes2.shape[1] > 0
    mine = np.empty(nchunks, np.int64)
    m = 0
    done = 0
    while True:
        c = _fetch_add(claim, 0, 1)
        if c >= nchunks:
            break
        a = c * chunk
        b = min(n, a + chunk)
        k = _scan_range(codes, q, t, a, b, rows[c], dist[c])
        if second:
            _publish(scanned, c, k)
            mine[m] = c
            m += 1
        else:
            _publish(counts, c, k)
            done += 1
    if not second or _load(ready, 0) == 0:
        return done + m
    for j in range(m):
        _finish_chunk(codes2, q2, mine[j], rows, dist, scanned, taken, counts)
    done += m
    if sweep:
        for c in range(nchunks):
            if _load(scanned, c) >= 0 and _load(taken, c) == 0:
                done += _finish_chunk(codes2, q2, c, rows, dist, scanned, taken, counts)
    return done


@_kernel(boundscheck=False, fastmath=True)
def select_rerank(rows, dist, counts, want, maxd, vecs, q, out, sims):  # type: ignore[no-untyped-def]
    """The `want` rows of the chunks' kept rows (rows[c, :counts[c]], see scan_chunks) with the smallest distance (ties
    at the cut by position; all of them when fewer) into out, and each one's int8 cosine vecs[row] . q into sims
    (read in place, as rerank_int8); returns how many. A counting selection: distances are integers <= maxd."""
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
    rerank_int8(vecs, out, o, q, sims)
    return o


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
    for b in range(bits // 8):
        v = 0
        for k in range(8):
            if y[8 * b + k] > 0:
                v |= 1 << (7 - k)
        code[b] = v


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
    return code.view(np.uint64) if len(code) % 8 == 0 else code


def warm() -> None:
    """Compile (or load from numba's cache) every kernel for both code views, so no search pays for it."""
    for width in (8, 3):
        codes = as_words(np.zeros((4, width), dtype=np.uint8))
        q = query_words(np.zeros(width, dtype=np.uint8))
        hist = np.zeros(width * 8 + 1, dtype=np.int64)
        sample_histogram(codes, q, 4, 2, 2, hist)
        threshold_for(hist, 1.5, 2.0)
        rows2 = np.zeros((2, 4), dtype=np.int64)
        dist2 = np.zeros((2, 4), dtype=np.int32)
        scanned, taken, counts = np.full(2, -1, dtype=np.int64), np.zeros(2, dtype=np.int64), np.full(2, -1, dtype=np.int64)
        scan_chunks(codes, q, codes, q, width * 8, 4, 2, np.zeros(1, dtype=np.int64), rows2, dist2, scanned, taken, counts,
                    np.ones(1, dtype=np.int64), 1)
        select_rerank(rows2, dist2, counts, 2, width * 16, np.zeros((4, 3), dtype=np.int8), np.zeros(3, dtype=np.float32),
                      np.zeros(4, dtype=np.int64), np.zeros(4, dtype=np.float32))
    z4 = np.zeros(4, dtype=np.float32)
    rerank_int8(np.zeros((4, 3), dtype=np.int8), np.zeros(4, dtype=np.int64), 4, np.zeros(3, dtype=np.float32), z4)
    z = np.zeros(8, dtype=np.float32)
    encode_query(z, z, np.zeros((8, 8), dtype=np.float32), z.copy(), np.zeros(1, dtype=np.uint8))
    project_query(z, np.zeros((8, 3), dtype=np.float32), np.zeros(3, dtype=np.float32), 127.0, np.zeros(3, dtype=np.float32))
