"""Score calibration: similarity -> false-match rate per comparison, from impostor scores of a labelled set.

A table is a JSON file in `engine/calibration/`, named by the SHA-256 of the recognition model it was
measured with, so an operator's own model never borrows another model's numbers.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

TABLES = Path(__file__).with_name("calibration")

# Used when a model has no calibration table and the operator configured nothing: deliberately strict.
FALLBACK_POSSIBLE = 0.30
FALLBACK_STRONG = 0.40


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

    def false_match_rate(self, similarity: float) -> float:
        """Share of impostor comparisons scoring at least `similarity` (interpolated in log space)."""
        s = np.asarray(self.scores)
        logf = np.log10(np.maximum(np.asarray(self.fmr), 1e-12))
        floor = 0.5 / max(self.impostor_pairs, 1)  # beyond the last observed impostor: below 1/pairs
        value = float(10 ** np.interp(similarity, s, logf, left=0.0, right=np.log10(floor)))
        return max(min(value, 1.0), 0.0)

    @classmethod
    def load(cls, path: Path) -> Calibration:
        """Read a table written by `save`."""
        data = json.loads(path.read_text())
        return cls(
            model_sha256=data["model_sha256"], source=data["source"], impostor_pairs=int(data["impostor_pairs"]),
            scores=tuple(data["scores"]), fmr=tuple(data["fmr"]),
            threshold_possible=float(data["threshold_possible"]), threshold_strong=float(data["threshold_strong"]),
            fmr_possible=float(data["fmr_possible"]), fmr_strong=float(data["fmr_strong"]),
        )

    def save(self, path: Path) -> None:
        """Write the table as JSON."""
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["scores"], data["fmr"] = list(self.scores), list(self.fmr)
        path.write_text(json.dumps(data, indent=1) + "\n")


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
