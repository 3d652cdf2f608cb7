"""Compiled kernels of HammingIndex's search: a fused Hamming scan with a threshold, the second-stage bits, the int8 re-rank.

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


__all__ = ["as_words", "query_words", "warm", "rerank_int8", "sample_histogram", "scan_under", "threshold_for", "top_by_distance"]


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
def scan_under(codes, q, codes2, q2, t, a, b, rows, dist):  # type: ignore[no-untyped-def]
    """Rows i in [a, b) whose scanned code (codes[i]) is within Hamming distance t of q, written to rows, with their
    distance over all the bits (codes[i] to q plus codes2[i] to q2: the second stage, read only for the rows kept, after
    the scan: inside it, the scattered reads stalled the stream, 5.2 against 3.5 + 0.55 ms at 1 M) written to dist, up to
    the buffers' length; returns how many rows there are (more than the buffers hold means: call again, larger)."""
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
    w2 = codes2.shape[1]
    if w2 == 4 and k <= cap:  # the default's second 256 bits: unrolled, inline
        r0, r1, r2, r3 = q2[0], q2[1], q2[2], q2[3]
        for m in range(k):
            if m + PREFETCH < k:
                _prefetch(codes2, rows[m + PREFETCH])
            i = np.uint64(rows[m])
            dist[m] += (_popcount(codes2[i, 0] ^ r0) + _popcount(codes2[i, 1] ^ r1)
                        + _popcount(codes2[i, 2] ^ r2) + _popcount(codes2[i, 3] ^ r3))
    elif w2 and k <= cap:
        for m in range(k):
            if m + PREFETCH < k:
                _prefetch(codes2, rows[m + PREFETCH])
            i = np.uint64(rows[m])
            d = 0
            for j in range(w2):
                d += _popcount(codes2[i, j] ^ q2[j])
            dist[m] += d
    return k


@_kernel(boundscheck=False)
def top_by_distance(rows, dist, k, want, maxd, out):  # type: ignore[no-untyped-def]
    """The `want` rows of rows[:k] with the smallest dist (ties at the cut broken by position), into out;
    returns how many were written (min(want, k)). A counting selection: distances are small integers <= maxd."""
    hist = np.zeros(maxd + 2, np.int64)
    for m in range(k):
        hist[dist[m]] += 1
    if want >= k:
        for m in range(k):
            out[m] = rows[m]
        return k
    total = 0
    t = 0
    while total + hist[t] < want:
        total += hist[t]
        t += 1
    room = want - total  # how many of the rows at distance exactly t are taken
    o = 0
    for m in range(k):
        d = dist[m]
        if d < t:
            out[o] = rows[m]
            o += 1
        elif d == t and room > 0:
            out[o] = rows[m]
            o += 1
            room -= 1
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
        rows = np.zeros(4, dtype=np.int64)
        dist = np.zeros(4, dtype=np.int32)
        k = scan_under(codes, q, codes, q, width * 8, 0, 4, rows, dist)
        top_by_distance(rows, dist, k, 2, width * 16, np.zeros(2, dtype=np.int64))
        threshold_for(hist, 1.5, 2.0)
    rerank_int8(np.zeros((4, 3), dtype=np.int8), rows, 4, np.zeros(3, dtype=np.float32), np.zeros(4, dtype=np.float32))
