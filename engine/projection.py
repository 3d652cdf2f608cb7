"""The index's projection: face embeddings mapped to fewer dimensions before they enter the HNSW graph.

Face embeddings are 512-d, but their energy is concentrated: on the calibration set the top 192
principal directions hold ~86 % of it. The graph only has to bring the right candidates in, because
`Engine._hits` re-scores every candidate with the float32 512-d embedding from SQLite. So the index can
hold a projection, which makes each distance 2.7x cheaper and each vector 2.7x smaller
(bench/RESULTS.md: at 1 M faces, the same mate recall at about half the query time).

A basis is fitted on a labelled face set (`sightline calibrate` writes one beside the calibration table)
and named by the SHA-256 of the recognition model, like the calibration tables: another model never
borrows it. The file keeps every direction, in order, so `index_dims` can be changed without refitting.
Changing the basis or `index_dims` means rebuilding the index; the index's sidecar file records which
projection built it and the engine rebuilds on a mismatch.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .calibration import TABLES, save_npz

logger = logging.getLogger(__name__)

SUFFIX = ".projection.npz"


@dataclass(frozen=True)
class Projection:
    """x -> normalise(x @ basis): the top `dims` directions of a fitted basis."""

    basis: np.ndarray  # (embedding dim, dims) float32, orthonormal columns
    energy: float  # share of the fitting set's energy the kept directions hold
    source: str  # where the basis came from

    @property
    def dims(self) -> int:
        return int(self.basis.shape[1])

    @property
    def key(self) -> str:
        """Identifies the basis and dims: the index records it, a different key means a rebuild."""
        return f"{self.dims}:{hashlib.sha256(np.ascontiguousarray(self.basis).tobytes()).hexdigest()[:16]}"

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Project rows (or one vector) and L2-normalise them again, as float32."""
        y = np.asarray(vectors, dtype=np.float32) @ self.basis
        norm = np.linalg.norm(y, axis=-1, keepdims=True)
        return (y / np.maximum(norm, 1e-12)).astype(np.float32, copy=False)


@dataclass(frozen=True)
class Basis:
    """Every principal direction of a face set, strongest first, with its share of the energy."""

    model_sha256: str
    directions: np.ndarray  # (d, d) float32, columns ordered by decreasing eigenvalue
    energy: np.ndarray  # (d,) share of the second moment per direction; sums to 1
    source: str
    samples: int

    def projection(self, dims: int) -> Projection:
        """The top `dims` directions."""
        d = self.directions.shape[0]
        if not 0 < dims <= d:
            raise ValueError(f"index_dims must be between 1 and {d}, not {dims}")
        return Projection(np.ascontiguousarray(self.directions[:, :dims]), float(self.energy[:dims].sum()),
                          self.source)

    def save(self, path: Path) -> None:
        """Write the basis (numpy's npz: no pickled objects)."""
        save_npz(path, directions=self.directions.astype(np.float32), energy=self.energy.astype(np.float64),
                 model_sha256=np.array(self.model_sha256), source=np.array(self.source), samples=np.array(self.samples))

    @classmethod
    def load(cls, path: Path) -> Basis:
        with np.load(path, allow_pickle=False) as z:
            directions = np.asarray(z["directions"], dtype=np.float32)
            energy = np.asarray(z["energy"], dtype=np.float64)
            if directions.ndim != 2 or directions.shape[0] != directions.shape[1] or energy.shape != (len(directions),):
                raise ValueError(f"{path}: not a square basis")
            return cls(str(z["model_sha256"]), directions, energy, str(z["source"]), int(z["samples"]))


def fit(embeddings: np.ndarray, model_sha256: str, source: str) -> Basis:
    """Principal directions of L2-normalised embeddings, from their uncentred second moment.

    Uncentred, because the index compares vectors by their dot product with each other, not with the
    mean: the directions that keep most of x·y are the eigenvectors of E[x xᵀ].
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or len(x) < x.shape[1] // 2:
        raise ValueError(f"need at least {x.shape[1] // 2 if x.ndim == 2 else 256} embeddings to fit a basis")
    w, v = np.linalg.eigh(x.T @ x / len(x))
    order = np.argsort(w)[::-1]
    w = np.maximum(w[order], 0.0)
    return Basis(model_sha256, v[:, order].astype(np.float32), w / w.sum(), source, len(x))


def path_for(model_sha256: str) -> Path:
    return TABLES / f"{model_sha256}{SUFFIX}"


def for_model(model_sha256: str, dims: int) -> Projection | None:
    """The shipped projection for a recognition model at `dims`, or None (no basis, or dims 0: full vectors)."""
    if dims <= 0:
        return None
    path = path_for(model_sha256)
    if not path.is_file():
        logger.warning("no index projection for model %s: the index holds full-length vectors (slower search); "
                       "`sightline calibrate` fits one", model_sha256[:12])
        return None
    try:
        basis = Basis.load(path)
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("index projection %s is unreadable (%s): the index holds full vectors", path, exc)
        return None
    if dims >= basis.directions.shape[0]:  # all the directions would be a rotation: no gain
        if dims > basis.directions.shape[0]:
            logger.warning("index_dims %d is more than the embedding's %d dimensions: the index holds full vectors",
                           dims, basis.directions.shape[0])
        return None
    return basis.projection(dims)
