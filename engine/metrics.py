"""Biometric accuracy measures as small pure functions over score arrays (numpy in, plain floats out).

Vocabulary (ISO/IEC 19795-1, NIST FRVT 1:N):
- verification: a *genuine* pair shows one person twice, an *impostor* pair two people. At a threshold t,
  FMR/FAR(t) is the share of impostor pairs scoring >= t and TAR(t) the share of genuine pairs scoring >= t.
- open-set identification: a *mated* search has its person in the gallery, a *non-mated* search does not.
  FPIR(t) is the share of non-mated searches whose best candidate scores >= t; FNIR(t) is the share of mated
  searches whose true mate is not returned at rank 1 with a score >= t (no face found counts as a miss).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def threshold_at_rate(impostor: np.ndarray, rate: float) -> float:
    """The lowest threshold t with share(impostor >= t) <= rate (ties counted against t).

    With n scores, at most floor(rate * n) of them may reach t: t is the next score above the
    (floor(rate * n) + 1)-th highest one; when rate * n < 1, t lies just above the highest score.
    """
    s = np.sort(np.asarray(impostor, dtype=np.float64))[::-1]
    if len(s) == 0:
        return math.inf
    k = int(math.floor(rate * len(s) + 1e-9))  # how many impostors may reach t
    if k >= len(s):
        return float(s[-1])
    return float(np.nextafter(s[k], math.inf))


def share_at_or_above(scores: np.ndarray, t: float) -> float:
    """Share of scores >= t (0.0 for an empty array)."""
    scores = np.asarray(scores, dtype=np.float64)  # float32 against a float64 threshold would round it
    return float(np.mean(scores >= t)) if len(scores) else 0.0


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """A threshold chosen for a target false rate, and what it achieves."""

    target: float  # the false-match (FAR) or false-positive (FPIR) rate asked for
    threshold: float
    achieved: float  # the false rate actually observed at the threshold (<= target)
    errors: int  # impostor pairs / non-mated searches at or above the threshold
    hit_rate: float  # TAR (verification) or 1 - FNIR (identification)
    resolvable: bool  # False when target * trials < 1: the set is too small to measure that rate


def operating_points(positives: np.ndarray, negatives: np.ndarray, rates: Sequence[float]) -> list[OperatingPoint]:
    """At each target false rate over `negatives`: the threshold, the errors, and the share of `positives` kept."""
    out = []
    negatives = np.asarray(negatives, dtype=np.float64)
    for rate in rates:
        t = threshold_at_rate(negatives, rate)
        errors = int(np.sum(negatives >= t))
        out.append(
            OperatingPoint(
                target=rate, threshold=t, achieved=errors / max(len(negatives), 1), errors=errors,
                hit_rate=share_at_or_above(positives, t), resolvable=rate * len(negatives) >= 1,
            )
        )
    return out


def verification_points(genuine: np.ndarray, impostor: np.ndarray, fars: Sequence[float]) -> list[OperatingPoint]:
    """TAR at each FAR over genuine and impostor pair scores."""
    return operating_points(genuine, impostor, fars)


def identification_points(
    mated_rank1_scores: np.ndarray, nonmated_top: np.ndarray, fpirs: Sequence[float]
) -> list[OperatingPoint]:
    """FNIR at each FPIR. `mated_rank1_scores`: the mate's score when it is ranked first, else -inf."""
    return operating_points(mated_rank1_scores, nonmated_top, fpirs)


def rank_k(ranks: np.ndarray, k: int) -> float:
    """Share of mated searches whose mate is at rank <= k (rank 0 = not found)."""
    ranks = np.asarray(ranks)
    return float(np.mean((ranks >= 1) & (ranks <= k))) if len(ranks) else 0.0


def det_curve(genuine: np.ndarray, impostor: np.ndarray, points: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, FMR, FNMR) over the whole score range, for plotting."""
    imp = np.sort(np.asarray(impostor, dtype=np.float64))
    gen = np.sort(np.asarray(genuine, dtype=np.float64))
    lo = min(imp[0] if len(imp) else 0.0, gen[0] if len(gen) else 0.0)
    hi = max(imp[-1] if len(imp) else 1.0, gen[-1] if len(gen) else 1.0)
    t = np.linspace(lo, hi, points)
    fmr = 1.0 - np.searchsorted(imp, t, side="left") / max(len(imp), 1)
    fnmr = np.searchsorted(gen, t, side="left") / max(len(gen), 1)
    return t, fmr, fnmr


def pair_scores(embeddings: np.ndarray, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor cosine scores over all unordered pairs of L2-normalised embeddings."""
    e = np.asarray(embeddings, dtype=np.float32)
    lab = np.asarray(labels)
    n = len(e)
    gen: list[np.ndarray] = []
    imp: list[np.ndarray] = []
    block = 1024  # rows at a time: 1024 x n floats, not n x n
    for start in range(0, n, block):
        stop = min(n, start + block)
        sims = e[start:stop] @ e.T
        for r in range(start, stop):
            row = sims[r - start, r + 1 :]
            same = lab[r + 1 :] == lab[r]
            gen.append(row[same])
            imp.append(row[~same])
    empty = np.empty(0, dtype=np.float32)
    return (np.concatenate(gen) if gen else empty), (np.concatenate(imp) if imp else empty)


def impostor_scores_by_class(
    embeddings: np.ndarray, labels: Sequence[str], ok: Sequence[bool], skip_pairs: Sequence[str] | None = None
) -> dict[int, np.ndarray]:
    """Impostor cosine scores over all unordered pairs, split by how many of the two faces are poor
    (0, 1 or 2 with ok[i] False). `skip_pairs`: an origin key per row; rows of equal key are never paired
    (a degraded copy and the photo it came from)."""
    e = np.asarray(embeddings, dtype=np.float32)
    lab = np.asarray(labels)
    poor = ~np.asarray(ok, dtype=bool)
    origin = np.asarray(skip_pairs) if skip_pairs is not None else None
    out: dict[int, list[np.ndarray]] = {0: [], 1: [], 2: []}
    block = 512
    for start in range(0, len(e), block):
        stop = min(len(e), start + block)
        sims = e[start:stop] @ e.T
        for r in range(start, stop):
            row = sims[r - start, r + 1 :]
            keep = lab[r + 1 :] != lab[r]
            if origin is not None:
                keep &= origin[r + 1 :] != origin[r]
            cls = poor[r + 1 :].astype(np.int8) + np.int8(poor[r])
            for c in (0, 1, 2):
                out[c].append(row[keep & (cls == c)])
    empty = np.empty(0, dtype=np.float32)
    return {c: (np.concatenate(v) if v else empty) for c, v in out.items()}


def impostor_scores_across(
    a: np.ndarray, a_labels: Sequence[str], a_origin: Sequence[str], b: np.ndarray, b_labels: Sequence[str],
    b_origin: Sequence[str],
) -> np.ndarray:
    """Impostor cosine scores of every row of `a` against every row of `b` (different labels; rows of equal
    origin key, a degraded copy and the photo it came from, never paired)."""
    if not len(a) or not len(b):
        return np.empty(0, dtype=np.float32)
    al, bl = np.asarray(a_labels), np.asarray(b_labels)
    ao, bo = np.asarray(a_origin), np.asarray(b_origin)
    sims = np.asarray(a, dtype=np.float32) @ np.asarray(b, dtype=np.float32).T
    keep = (al[:, None] != bl[None, :]) & (ao[:, None] != bo[None, :])
    return sims[keep]


def high_impostor_pairs(
    embeddings: np.ndarray, labels: Sequence[str], floor: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, score) of impostor pairs scoring >= floor, i < j: the tail that sets low false-match rates."""
    e = np.asarray(embeddings, dtype=np.float32)
    lab = np.asarray(labels)
    ii: list[np.ndarray] = []
    jj: list[np.ndarray] = []
    ss: list[np.ndarray] = []
    for start in range(0, len(e), 1024):
        sims = e[start : start + 1024] @ e.T
        r, c = np.nonzero(sims >= floor)
        r = r + start
        keep = (c > r) & (lab[r] != lab[c])
        ii.append(r[keep])
        jj.append(c[keep])
        ss.append(sims[r[keep] - start, c[keep]])
    if not ii:
        return np.empty(0, int), np.empty(0, int), np.empty(0, np.float32)
    return np.concatenate(ii), np.concatenate(jj), np.concatenate(ss)


def bootstrap_fmr_interval(
    labels: Sequence[str],
    tail: tuple[np.ndarray, np.ndarray, np.ndarray],
    threshold: float,
    rounds: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """(FMR, low, high) at a threshold, with an interval from resampling *identities* with replacement.

    Impostor pairs that share a person are not independent (one odd-looking photo makes many high pairs),
    so a Poisson interval on the pair count is too narrow. Resampling identities keeps that structure:
    a pair (i, j) counts w_i * w_j times and the number of pairs is recomputed from the weights.
    `tail` is `high_impostor_pairs(...)` with a floor at or below `threshold`.
    """
    lab = np.asarray(labels)
    names, inv = np.unique(lab, return_inverse=True)
    sizes = np.bincount(inv).astype(np.float64)
    i, j, s = tail
    sel = s >= threshold
    pi, pj = inv[i[sel]], inv[j[sel]]

    def rate(w: np.ndarray) -> float:
        per = w * sizes
        pairs = (per.sum() ** 2 - np.sum(per**2)) / 2
        hits = float(np.sum(w[pi] * w[pj]))
        return hits / pairs if pairs > 0 else 0.0

    point = rate(np.ones(len(names)))
    rng = np.random.default_rng(seed)
    draws = np.empty(rounds)
    for b in range(rounds):
        w = np.bincount(rng.integers(0, len(names), len(names)), minlength=len(names)).astype(np.float64)
        draws[b] = rate(w)
    lo, hi = np.quantile(draws, [(1 - level) / 2, 1 - (1 - level) / 2])
    return point, float(lo), float(hi)
