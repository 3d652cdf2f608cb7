"""Binary sign codes of face embeddings: the first stage of HammingIndex.

A face becomes `bits` sign bits of (embedding - mean) @ W, W a rotation of the centred embedding space; two faces'
Hamming distance then tracks the angle between them (Charikar's SimHash). The shipped model has 128 + 512 bits: a
short *lead* code of the top 128 centred principal directions turned by a random rotation, which HammingIndex scans
for every face (16 bytes: half the memory traffic of a 256-bit scan), then 512 bits of a random rotation of the whole
centred space, which rank only the ~29,000 codes the scan keeps. That rotation is a structured one (random signs and
Walsh-Hadamard transforms, three rounds: structured_weights), so a query's 512 bits cost O(d log d) and no read of a
1 MB matrix that every scan evicts from the caches: 0.2 ms less per search at 1 M, mate recall the same (bench/RESULTS.md,
"Seventh session"). At 1 M face-like vectors that kept 99.7 % of the
true mates in the best 10 (bench/RESULTS.md, issue 15, "A 128-bit lead code"), against 99.5 % for the model before
it (512 random bits, the first 256 scanned): the top directions carry the most of a face's identity per bit, the
random ones rank the rest evenly (with the scan keeping ~44,000 codes; ~29,000 now: 99.3 %). Shorter leads (96 or 64
bits; `lead` may be any multiple of LEAD_STEP) were measured and lose: at the same rows kept the 96-bit scan was 0.12 ms
slower at 1 M (three 32-bit words a row cost as many instructions as two 64-bit ones), and the 64-bit lead needs ~60 %
more rows kept for the same recall (bench/RESULTS.md, "Seventh session"). Without a lead (`lead=0`: the fallback,
models fitted before it) the index scans the first 256 bits. Learned alternatives were measured and lost: the top 256
centred principal directions with an ITQ rotation (Gong & Lazebnik, "Iterative quantization", CVPR 2011;
`rotation="itq"`) kept 98.6 %, the same with a random rotation 99.1 % (300 queries) - fitted on 2,254 calibration
faces, the learned directions describe that set rather than the next million faces.

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

from .calibration import TABLES, save_npz

logger = logging.getLogger(__name__)

SUFFIX = ".codes.npz"
DEFAULT_BITS = 512
LEAD_STEP = 16  # a lead is a whole number of 16-bit words (engine.scan.as_words views rows of 2, 4 or 8-byte words)
STRUCTURED_ROUNDS = 3  # sign-and-Hadamard rounds of a structured rotation (structured_weights)
ROTATION = "hadamard"  # the rotation of the bits after the lead `sightline calibrate` fits (bench/RESULTS.md, "Seventh session")
LEAD = 128  # lead bits `sightline calibrate` fits (bench/RESULTS.md, issue 15: 128 of the top directions)


@dataclass(frozen=True)
class CodeModel:
    """x -> packbits((x - mean) @ weights > 0): `bits` sign bits per face, packed 8 to a byte; the first `lead` bits (a
    multiple of LEAD_STEP, or 0) are a short code of their own for the index's exhaustive scan (see the module docstring)."""

    mean: np.ndarray  # (d,) float32
    weights: np.ndarray  # (d, bits) float32
    source: str
    lead: int = 0
    # (rounds, d) float32 of +-1, or None: the bits after the lead are then the structured rotation of these signs
    # (structured_weights: `weights` holds it as a matrix too), which a query can be encoded with without reading it
    signs: np.ndarray | None = None

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
        if self.lead:  # (models without a lead keep the key they had before leads existed)
            h.update(f"lead {self.lead}".encode())
        return f"{self.bits}:{h.hexdigest()[:16]}"

    def body(self) -> CodeModel:
        """The code without its lead bits (what a Milvus BIN index holds: engine.milvus_index)."""
        if not self.lead:
            return self
        return CodeModel(self.mean, np.ascontiguousarray(self.weights[:, self.lead :]), self.source, signs=self.signs)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """(n, d) or (d,) embeddings -> (n, bits / 8) uint8 codes."""
        x = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        return np.packbits((x - self.mean) @ self.weights > 0, axis=1)

    def save(self, path: Path) -> None:
        """Write the model (numpy's npz: no pickled objects)."""
        extra = {} if self.signs is None else {"signs": self.signs.astype(np.float32)}
        save_npz(path, mean=self.mean.astype(np.float32), weights=self.weights.astype(np.float32),
                 source=np.array(self.source), lead=np.array(self.lead), **extra)

    @classmethod
    def load(cls, path: Path) -> CodeModel:
        """Read a saved model; raises ValueError when it is not one."""
        with np.load(path, allow_pickle=False) as z:
            mean = np.asarray(z["mean"], dtype=np.float32)
            weights = np.asarray(z["weights"], dtype=np.float32)
            source = str(z["source"])
            lead = int(z["lead"]) if "lead" in z.files else 0  # (files written before leads existed: none)
            signs = np.asarray(z["signs"], dtype=np.float32) if "signs" in z.files else None
        if (mean.ndim != 1 or weights.ndim != 2 or weights.shape[0] != len(mean) or weights.shape[1] % 8
                or lead % LEAD_STEP or not 0 <= lead < weights.shape[1]):
            raise ValueError(f"{path}: not a code model")
        if signs is not None and (signs.ndim != 2 or signs.shape[1] != len(mean) or weights.shape[1] - lead != len(mean)
                                  or not np.isin(signs, (-1.0, 1.0)).all()
                                  or not np.allclose(weights[:, lead:], structured_weights(signs), atol=1e-6)):
            raise ValueError(f"{path}: not a code model (its structured rotation does not match its weights)")
        return cls(mean, weights, source, lead, signs)


def structured_signs(d: int, seed: int = 15, rounds: int = STRUCTURED_ROUNDS) -> np.ndarray:
    """(rounds, d) float32 random signs (+-1) of a structured rotation (structured_weights); d a power of two."""
    if d < 2 or d & (d - 1):
        raise ValueError(f"a structured rotation needs a power of two dimensions, not {d}")
    return np.where(np.random.default_rng(seed).random((rounds, d)) < 0.5, -1.0, 1.0).astype(np.float32)


def fwht(rows: np.ndarray) -> np.ndarray:
    """The unnormalised Walsh-Hadamard transform (Sylvester order) of each row of a (n, d) array, d a power of two, in place
    (the butterflies engine.scan.encode_structured computes for one query, in the same order)."""
    n, d = rows.shape
    h = 1
    while h < d:
        v = rows.reshape(n, d // (2 * h), 2, h)
        a, b = v[:, :, 0, :].copy(), v[:, :, 1, :].copy()
        v[:, :, 0, :] = a + b
        v[:, :, 1, :] = a - b
        h *= 2
    return rows


def structured_weights(signs: np.ndarray) -> np.ndarray:
    """The (d, d) orthonormal matrix W with v @ W = T v for T = H D_r ... H D_1 / d^(r/2) (H the Walsh-Hadamard matrix,
    D_i the diagonal of signs[i]): three rounds behave as a random rotation for sign codes (Andoni et al., "Practical and
    optimal LSH for angular distance", NeurIPS 2015) and take O(d log d) per vector, no matrix read."""
    rounds, d = signs.shape
    rows = np.eye(d, dtype=np.float64)  # row i becomes T e_i, i.e. column i of T: row i of W = T^T
    for r in range(rounds):
        rows *= signs[r].astype(np.float64)
        fwht(rows)
    return (rows / d ** (rounds / 2)).astype(np.float32)


def random_rotation(d: int, bits: int, seed: int = 15) -> np.ndarray:
    """A (d, bits) matrix of orthonormal columns drawn at random (QR of a Gaussian matrix)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    q = q * np.sign(np.diag(r))
    return q[:, :bits].astype(np.float32)


def fit(embeddings: np.ndarray, bits: int = DEFAULT_BITS, source: str = "", iterations: int = 50,
        rotation: str = "random", seed: int = 15, lead: int = 0) -> CodeModel:
    """Fit a code model on (n, d) L2-normalised embeddings: the mean, the top `bits` centred principal
    directions, then a random rotation of them (with bits = d: a random rotation of the centred space), or with
    `rotation="itq"` one learned by ITQ, or with `rotation="hadamard"` (bits = d, a power of two) a structured rotation
    of the whole centred space (structured_weights; the model keeps its signs); with `lead`, those bits follow a lead
    code of the top `lead` directions turned by a random rotation of their own (`sightline calibrate` fits lead=LEAD,
    bits=512, rotation=ROTATION).

    Raises ValueError with fewer than `bits` embeddings, `bits` not a multiple of 8 or above d, or `lead` not a
    multiple of LEAD_STEP (16) or above d.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or not 0 < bits <= x.shape[1] or bits % 8:
        raise ValueError(f"bits must be a multiple of 8 up to the embedding's {x.shape[-1]} dimensions, not {bits}")
    if lead % LEAD_STEP or not 0 <= lead <= x.shape[1]:
        raise ValueError(f"lead must be a multiple of {LEAD_STEP} up to the embedding's {x.shape[1]} dimensions, not {lead}")
    if len(x) < max(bits, lead):
        raise ValueError(f"need at least {max(bits, lead)} embeddings to fit {bits}-bit codes")
    mean = x.mean(axis=0)
    centred = x - mean
    w, v = np.linalg.eigh(centred.T @ centred / len(x))
    order = np.argsort(w)[::-1]
    pca = v[:, order[:bits]]
    r = random_rotation(bits, bits, seed).astype(np.float64)
    if rotation == "itq":
        y = centred @ pca
        for _ in range(iterations):  # alternate: the nearest codes for R, then the best rotation for the codes
            b = np.where(y @ r >= 0, 1.0, -1.0)
            u, _, vt = np.linalg.svd(y.T @ b)
            r = u @ vt
    elif rotation == "hadamard":  # the whole centred space turned by a structured rotation (bits = d, a power of two)
        if bits != x.shape[1]:
            raise ValueError(f"a structured rotation gives all {x.shape[1]} bits, not {bits}")
        signs = structured_signs(bits, seed)
    elif rotation != "random":
        raise ValueError(f"rotation must be itq, random or hadamard, not {rotation!r}")
    weights = structured_weights(signs).astype(np.float64) if rotation == "hadamard" else pca @ r
    if lead:
        weights = np.concatenate([v[:, order[:lead]] @ random_rotation(lead, lead, seed).astype(np.float64), weights], axis=1)
    return CodeModel(mean.astype(np.float32), weights.astype(np.float32), source or f"{rotation} on {len(x)} faces", lead,
                     signs if rotation == "hadamard" else None)


def fallback(d: int, bits: int = DEFAULT_BITS) -> CodeModel:
    """No fitted model: a seeded random rotation of the uncentred space (the same on every run)."""
    return CodeModel(np.zeros(d, dtype=np.float32), random_rotation(d, bits), "random rotation (no fitted code model)")


def path_for(model_sha256: str) -> Path:
    return TABLES / f"{model_sha256}{SUFFIX}"


def for_model(model_sha256: str, d: int = 512, bits: int = DEFAULT_BITS) -> CodeModel:
    """The shipped code model for a recognition model (its lead, if it has one, then `bits` bits), or the random
    fallback (with a warning)."""
    path = path_for(model_sha256)
    if path.is_file():
        try:
            model = CodeModel.load(path)
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("code model %s is unreadable (%s): using a random rotation", path, exc)
        else:
            if model.weights.shape[0] == d and model.bits - model.lead >= bits:
                whole = model.bits - model.lead == bits  # (a structured rotation is all of its bits or none)
                return CodeModel(model.mean, np.ascontiguousarray(model.weights[:, : model.lead + bits]), model.source,
                                 model.lead, model.signs if whole else None)
            logger.warning("code model %s is for %d-d embeddings and %d bits, not %d and %d: using a random rotation",
                           path, model.weights.shape[0], model.bits - model.lead, d, bits)
    else:
        logger.warning("no code model for model %s: the index uses a random rotation (fewer mates per candidate); "
                       "`sightline calibrate` fits one", model_sha256[:12])
    return fallback(d, bits)
