"""Binary sign codes of face embeddings: the first stage of HammingIndex.

A face becomes `bits` sign bits of (embedding - mean) @ W, W a rotation of the centred embedding space; two faces'
Hamming distance then tracks the angle between them (Charikar's SimHash). The default model has 512 bits from a
random rotation: HammingIndex scans the first 256 of every face and re-ranks the nearest 10,000 by all 512, which
at 1 M face-like vectors kept 99.6 % of the true mates in the 1,000 candidates it re-ranks (bench/RESULTS.md,
issue 15). Learned alternatives were measured and lost: the top 256 centred principal directions with an ITQ
rotation (Gong & Lazebnik, "Iterative quantization", CVPR 2011; `rotation="itq"`) kept 98.6 %, the same with a
random rotation 99.1 % (300 queries) - fitted on 2,254 calibration faces, the learned directions describe that set
rather than the next million faces.

Like the projection basis, a code model is fitted on the calibration set (`sightline calibrate` writes
`<model sha256>.codes.npz` beside the calibration table: the set's mean and the rotation) and named by the
recognition model's SHA-256. Without one, the index uses a seeded random rotation of the uncentred space.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .calibration import TABLES

logger = logging.getLogger(__name__)

SUFFIX = ".codes.npz"
DEFAULT_BITS = 512


@dataclass(frozen=True)
class CodeModel:
    """x -> packbits((x - mean) @ weights > 0): `bits` sign bits per face, packed 8 to a byte."""

    mean: np.ndarray  # (d,) float32
    weights: np.ndarray  # (d, bits) float32
    source: str

    @property
    def bits(self) -> int:
        return int(self.weights.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes per code."""
        return self.bits // 8

    @property
    def key(self) -> str:
        """Identifies the model: a saved index built with another key is rebuilt."""
        h = hashlib.sha256(np.ascontiguousarray(self.mean).tobytes() + np.ascontiguousarray(self.weights).tobytes())
        return f"{self.bits}:{h.hexdigest()[:16]}"

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """(n, d) or (d,) embeddings -> (n, bits / 8) uint8 codes."""
        x = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        return np.packbits((x - self.mean) @ self.weights > 0, axis=1)

    def save(self, path: Path) -> None:
        """Write the model (numpy's npz: no pickled objects)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, mean=self.mean.astype(np.float32), weights=self.weights.astype(np.float32),
                     source=np.array(self.source))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> CodeModel:
        """Read a saved model; raises ValueError when it is not one."""
        with np.load(path, allow_pickle=False) as z:
            mean = np.asarray(z["mean"], dtype=np.float32)
            weights = np.asarray(z["weights"], dtype=np.float32)
            source = str(z["source"])
        if mean.ndim != 1 or weights.ndim != 2 or weights.shape[0] != len(mean) or weights.shape[1] % 8:
            raise ValueError(f"{path}: not a code model")
        return cls(mean, weights, source)


def random_rotation(d: int, bits: int, seed: int = 15) -> np.ndarray:
    """A (d, bits) matrix of orthonormal columns drawn at random (QR of a Gaussian matrix)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    q = q * np.sign(np.diag(r))
    return q[:, :bits].astype(np.float32)


def fit(embeddings: np.ndarray, bits: int = DEFAULT_BITS, source: str = "", iterations: int = 50,
        rotation: str = "random", seed: int = 15) -> CodeModel:
    """Fit a code model on (n, d) L2-normalised embeddings: the mean, the top `bits` centred principal
    directions, then a random rotation of them (with bits = d: a random rotation of the centred space), or with
    `rotation="itq"` one learned by ITQ.

    Raises ValueError with fewer than `bits` embeddings or `bits` not a multiple of 8 or above d.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or not 0 < bits <= x.shape[1] or bits % 8:
        raise ValueError(f"bits must be a multiple of 8 up to the embedding's {x.shape[-1]} dimensions, not {bits}")
    if len(x) < bits:
        raise ValueError(f"need at least {bits} embeddings to fit {bits}-bit codes")
    mean = x.mean(axis=0)
    centred = x - mean
    w, v = np.linalg.eigh(centred.T @ centred / len(x))
    pca = v[:, np.argsort(w)[::-1][:bits]]
    r = random_rotation(bits, bits, seed).astype(np.float64)
    if rotation == "itq":
        y = centred @ pca
        for _ in range(iterations):  # alternate: the nearest codes for R, then the best rotation for the codes
            b = np.where(y @ r >= 0, 1.0, -1.0)
            u, _, vt = np.linalg.svd(y.T @ b)
            r = u @ vt
    elif rotation != "random":
        raise ValueError(f"rotation must be itq or random, not {rotation!r}")
    return CodeModel(mean.astype(np.float32), (pca @ r).astype(np.float32), source or f"{rotation} on {len(x)} faces")


def fallback(d: int, bits: int = DEFAULT_BITS) -> CodeModel:
    """No fitted model: a seeded random rotation of the uncentred space (the same on every run)."""
    return CodeModel(np.zeros(d, dtype=np.float32), random_rotation(d, bits), "random rotation (no fitted code model)")


def path_for(model_sha256: str) -> Path:
    return TABLES / f"{model_sha256}{SUFFIX}"


def for_model(model_sha256: str, d: int = 512, bits: int = DEFAULT_BITS) -> CodeModel:
    """The shipped code model for a recognition model, or the random fallback (with a warning)."""
    path = path_for(model_sha256)
    if path.is_file():
        try:
            model = CodeModel.load(path)
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("code model %s is unreadable (%s): using a random rotation", path, exc)
        else:
            if model.weights.shape[0] == d and model.bits >= bits:
                return CodeModel(model.mean, np.ascontiguousarray(model.weights[:, :bits]), model.source)
            logger.warning("code model %s is for %d-d embeddings and %d bits, not %d and %d: using a random rotation",
                           path, model.weights.shape[0], model.bits, d, bits)
    else:
        logger.warning("no code model for model %s: the index uses a random rotation (fewer mates per candidate); "
                       "`sightline calibrate` fits one", model_sha256[:12])
    return fallback(d, bits)
