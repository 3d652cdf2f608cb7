"""Score calibration: similarity -> false-match rate per comparison, from impostor scores of a labelled set.

A table is a JSON file in `engine/calibration/`, named by the SHA-256 of the recognition model it was
measured with, so an operator's own model never borrows another model's numbers.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

TABLES = Path(__file__).with_name("calibration")


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write arrays to an npz file (numpy's format: no pickled objects) atomically: a temporary name, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    tmp.replace(path)

# `sightline calibrate` chooses the band thresholds at these false-match rates per comparison.
DEFAULT_POSSIBLE_FMR = 1e-4
DEFAULT_STRONG_FMR = 1e-5

# Used when a model has no calibration table and the operator configured nothing: deliberately strict.
FALLBACK_POSSIBLE = 0.30
FALLBACK_STRONG = 0.40


# Quality classes of a comparison: each face is "good" (it passed the engine's quality checks: size, detector
# confidence, sharpness, pose — FaceModel.quality) or "poor". Poor faces look like other poor faces, so
# strangers reach a given false-match rate at a higher score when both faces are poor (issue 17 measured
# 0.284 -> 0.425 at FMR 1e-4 on severely degraded LFW probes).
QUALITY_PAIRS = ("good-good", "good-poor", "poor-poor")

# A probe face found only by the detector's second, less strict look (FaceModel.retry_faces) against a gallery face
# has classes of their own, by the gallery face's quality: such probe faces are the poorest of all, and how often
# strangers reach a score against them depends on the gallery face far more than for other probes (measured on
# severe probes, bench/RESULTS.md: against the good faces of clean gallery photos ~20x less often than against
# other degraded faces). Both sides of the pair are what a search compares: `sightline calibrate` pairs the
# second-look faces of its degraded copies with every face indexed from its gallery photos (labelled primaries
# and unlabelled background faces), and `eval`'s odds check measures the same pairs. The gallery never holds
# such faces: enrolment never retries. A table without these classes uses poor-poor's for them.
SECOND_LOOK = "second-look"  # the prefix of both classes; tables of 2026-11-30 had one class of this name
SECOND_LOOK_GOOD = "second-look/good"  # ... against a gallery face that passed the quality checks
SECOND_LOOK_POOR = "second-look/poor"  # ... against a poor gallery face (most unlabelled background faces)
SECOND_LOOK_CLASSES = (SECOND_LOOK_GOOD, SECOND_LOOK_POOR)
CLASSES = (*QUALITY_PAIRS, *SECOND_LOOK_CLASSES)


def pair_key(a_ok: bool, b_ok: bool, second_look: bool = False) -> str:
    """The quality class of a comparison of two faces (order does not matter for the quality pairs);
    `second_look`: face a, the probe's, was found only by the detector's second look, and b is the gallery's."""
    if second_look:
        return SECOND_LOOK_GOOD if b_ok else SECOND_LOOK_POOR
    return QUALITY_PAIRS[(not a_ok) + (not b_ok)]


def interpolate_fmr(scores: tuple[float, ...], fmr: tuple[float, ...], impostor_pairs: int, similarity: float) -> float:
    """Share of impostor comparisons scoring at least `similarity`, interpolated in log space on a
    monotone (score, rate) table; above the highest impostor score seen, half of 1/impostor_pairs."""
    s = np.asarray(scores)
    logf = np.log10(np.maximum(np.asarray(fmr), 1e-12))
    floor = 0.5 / max(impostor_pairs, 1)
    if len(s) and similarity > s[-1]:
        return floor
    value = float(10 ** np.interp(similarity, s, logf, left=0.0, right=np.log10(floor)))
    return max(min(value, 1.0), 0.0)


@dataclass(frozen=True)
class PairTable:
    """The score -> false-match-rate table of one quality class of comparisons (see QUALITY_PAIRS)."""

    impostor_pairs: int
    scores: tuple[float, ...]
    fmr: tuple[float, ...]
    threshold_possible: float
    threshold_strong: float

    def false_match_rate(self, similarity: float) -> float:
        """Share of this class's impostor comparisons scoring at least `similarity`."""
        return interpolate_fmr(self.scores, self.fmr, self.impostor_pairs, similarity)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values."""
        return {"impostor_pairs": self.impostor_pairs, "scores": list(self.scores), "fmr": list(self.fmr),
                "threshold_possible": self.threshold_possible, "threshold_strong": self.threshold_strong}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PairTable:
        """Read what `to_json` wrote."""
        return cls(int(d["impostor_pairs"]), tuple(float(x) for x in d["scores"]), tuple(float(x) for x in d["fmr"]),
                   float(d["threshold_possible"]), float(d["threshold_strong"]))


@dataclass(frozen=True)
class Calibration:
    """A monotone table of (similarity, false-match rate) points and the band thresholds chosen from it."""

    model_sha256: str
    source: str  # which data set and command produced it
    impostor_pairs: int
    scores: tuple[float, ...]  # increasing similarities
    fmr: tuple[float, ...]  # false-match rate at each score (non-increasing)
    threshold_possible: float
    threshold_strong: float
    fmr_possible: float
    fmr_strong: float
    # Written by `sightline calibrate` (optional, so older tables still load):
    genuine_pairs: int = 0
    tar_possible: float | None = None  # share of genuine pairs at or above each threshold
    tar_strong: float | None = None
    fmr_possible_interval: tuple[float, float] | None = None  # 95 % bootstrap over identities
    fmr_strong_interval: tuple[float, float] | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # engine settings the scores were made with
    created: str = ""
    # Per quality class of the comparison (QUALITY_PAIRS), when `sightline calibrate` had degraded copies:
    pairs: dict[str, PairTable] = field(default_factory=dict)
    pairs_source: str = ""  # how the quality-class tables were made, when not in the same run as the rest

    def table_for(self, probe_ok: bool | None, gallery_ok: bool | None, second_look: bool = False) -> PairTable | None:
        """The quality-class table for a comparison, or None (unknown qualities, or an older table).

        A `second_look` probe (found only by the detector's retry) uses its second-look class by the gallery
        face's quality (poor when unknown), or poor-poor's when the table has none (see SECOND_LOOK)."""
        if second_look:
            return self.pairs.get(pair_key(False, bool(gallery_ok), True)) or self.pairs.get("poor-poor")
        if probe_ok is None or gallery_ok is None:
            return None
        return self.pairs.get(pair_key(probe_ok, gallery_ok))

    def thresholds(self, probe_ok: bool | None, gallery_ok: bool | None, second_look: bool = False) -> tuple[float, float]:
        """(possible, strong) band thresholds for a comparison: the class's own thresholds (same target FMRs),
        never below the overall ones, so quality-aware matching only ever asks more of poor comparisons.

        A `second_look` probe's hit is shown only at its class's *strong* threshold, and is never strong (the
        second value is infinite): no such probe's mate reached even the class's "possible" score on severe
        probes, while strangers' background faces did (bench/RESULTS.md), so below it a hit is a false lead."""
        t = self.table_for(probe_ok, gallery_ok, second_look)
        possible, strong = self.threshold_possible, self.threshold_strong
        if t is not None:
            possible, strong = max(possible, t.threshold_possible), max(strong, t.threshold_strong)
        return (strong, math.inf) if second_look else (possible, strong)

    @property
    def min_fmr(self) -> float:
        """The smallest false-match rate the table can vouch for: one impostor pair in all of them."""
        return 1.0 / max(self.impostor_pairs, 1)

    def false_match_rate(self, similarity: float, probe_ok: bool | None = None, gallery_ok: bool | None = None,
                         second_look: bool = False) -> float:
        """Share of impostor comparisons scoring at least `similarity` (interpolated in log space), from the
        table of the comparison's quality class when both qualities are given and the class was calibrated.

        Above the highest impostor score seen, no stranger was observed: the rate is then reported as
        half of `min_fmr` (the table cannot tell how much lower it really is; `describe` says so).
        """
        t = self.table_for(probe_ok, gallery_ok, second_look)
        if t is not None:
            return t.false_match_rate(similarity)
        return interpolate_fmr(self.scores, self.fmr, self.impostor_pairs, similarity)

    def rate_below(self, similarity: float, probe_ok: bool | None = None, gallery_ok: bool | None = None,
                   second_look: bool = False) -> float | None:
        """1 / impostor pairs of the comparison's table when no impostor pair in it scored `similarity` or higher, else None.

        `false_match_rate` then reports half of that, a stand-in: the table only says the rate is below this bound, and
        how far below depends on how many pairs were compared (poor-poor: 240,093, so 4.2e-6; good-good: 5.7 M). So an
        identical poor gallery photo can get a higher rate than a good photo's 0.61 hit, which its table did measure."""
        t = self.table_for(probe_ok, gallery_ok, second_look)
        scores, pairs = (t.scores, t.impostor_pairs) if t is not None else (self.scores, self.impostor_pairs)
        return 1.0 / max(pairs, 1) if len(scores) and similarity > scores[-1] else None

    def describe(self, similarity: float, gallery_faces: int) -> str:
        """Plain words for an officer: how often a stranger scores this high, and how many would here."""
        fmr = self.false_match_rate(similarity)
        if fmr >= 0.01:
            return (f"{fmr:.0%} of strangers score this high: in a gallery of {gallery_faces:,} faces, "
                    f"about {fmr * gallery_faces:,.0f} strangers would. Not evidence of identity.")
        if similarity > self.scores[-1]:
            one_in = _round_sig(1 / self.min_fmr)
            return (f"no stranger scored this high in {self.impostor_pairs:,} comparisons (fewer than 1 in "
                    f"{one_in:,}); in a gallery of {gallery_faces:,} faces, expect fewer than "
                    f"{_fmt_count(self.min_fmr * gallery_faces)} strangers this close. A lead, not an identification.")
        one_in = _round_sig(1 / fmr)
        seen = fmr * self.impostor_pairs
        if seen < 10:  # a handful of pairs: say how few, not a precise-looking rate
            return (f"only about {seen:.0f} of {self.impostor_pairs:,} stranger comparisons scored this high "
                    f"(roughly 1 in {one_in:,}; too few to be precise); in a gallery of {gallery_faces:,} faces, "
                    f"expect about {_fmt_count(fmr * gallery_faces)} strangers this close. "
                    "A lead, not an identification.")
        return (f"about 1 stranger in {one_in:,} scores this high; in a gallery of {gallery_faces:,} faces, "
                f"expect {_fmt_count(fmr * gallery_faces)} strangers this close. A lead, not an identification.")

    @classmethod
    def load(cls, path: Path) -> Calibration:
        """Read a table written by `save`."""
        data = json.loads(path.read_text())
        return cls(
            model_sha256=data["model_sha256"], source=data["source"], impostor_pairs=int(data["impostor_pairs"]),
            scores=tuple(data["scores"]), fmr=tuple(data["fmr"]),
            threshold_possible=float(data["threshold_possible"]), threshold_strong=float(data["threshold_strong"]),
            fmr_possible=float(data["fmr_possible"]), fmr_strong=float(data["fmr_strong"]),
            genuine_pairs=int(data.get("genuine_pairs", 0)),
            tar_possible=_opt_float(data.get("tar_possible")), tar_strong=_opt_float(data.get("tar_strong")),
            fmr_possible_interval=_opt_pair(data.get("fmr_possible_interval")),
            fmr_strong_interval=_opt_pair(data.get("fmr_strong_interval")),
            settings=dict(data.get("settings") or {}), created=str(data.get("created", "")),
            pairs={k: PairTable.from_json(v) for k, v in (data.get("pairs") or {}).items() if k in CLASSES},
            pairs_source=str(data.get("pairs_source", "")),
        )

    def save(self, path: Path) -> None:
        """Write the table as JSON."""
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["scores"], data["fmr"] = list(self.scores), list(self.fmr)
        data["pairs"] = {k: v.to_json() for k, v in self.pairs.items()}
        path.write_text(json.dumps(data, indent=1) + "\n")


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _opt_pair(v: Any) -> tuple[float, float] | None:
    return None if v is None else (float(v[0]), float(v[1]))


def _round_sig(x: float, digits: int = 2) -> int:
    """A count rounded to two significant digits: 41,237 -> 41,000."""
    if x <= 0 or not math.isfinite(x):
        return 0
    p = max(0, int(math.floor(math.log10(x))) - digits + 1)
    return int(round(x / 10**p) * 10**p)


def _fmt_count(x: float) -> str:
    """An expected count in words-friendly form: 0.003 -> '0.003', 2.4 -> '2.4', 130 -> '130'."""
    if x >= 10:
        return f"{x:,.0f}"
    if x >= 0.1:
        return f"{x:.1f}"
    return f"{x:.1g}"


def for_model(model_sha256: str) -> Calibration | None:
    """The shipped table for a recognition model, or None."""
    path = TABLES / f"{model_sha256}.json"
    if not path.is_file():
        return None
    try:
        return Calibration.load(path)
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("calibration table %s is unreadable: %s", path, exc)
        return None
