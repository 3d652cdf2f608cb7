"""What the saved data is verified against: the gallery id, the index file's checksum, each embedding's checksum.

- The database holds a random gallery id (meta `gallery_id`, made once when the database is created). The
  index sidecar records it, so an index file copied from another gallery is never used, even when its face
  ids overlap this gallery's.
- The sidecar also records a checksum of the saved index file (xxHash XXH3-128: at 1 M faces the file is
  ~600 MB, which XXH3 reads in ~0.4 s where SHA-256 takes ~1.3 s; bench/checksum.py, bench/RESULTS.md).
  It guards against damage, not against an attacker who can rewrite both files (the audit log does that).
- Each stored embedding carries a CRC-32 of its bytes (column `faces.emb_crc`, zlib's CRC-32 as used by
  zip and PNG); a row whose bytes no longer match, or that is not a finite unit vector, is never ranked.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CHECKSUM_ALGO = "xxh3_128"
EMBEDDING_BYTES = 512 * 4  # float32 x 512
NORM_TOLERANCE = 1e-3  # stored embeddings are L2-normalised float32: |‖x‖ - 1| is ~1e-7 when intact
# An index vector is int8-quantised (and projected): measured cosine to its exact source >= 0.998; a vector
# below this bound is not the stored face's (bytes overwritten, or the index built from other data).
INDEX_VECTOR_MIN_COSINE = 0.99
_BUFFER = 8 << 20


def file_checksum(path: Path) -> str:
    """`xxh3_128:<hex>` of a file's bytes, read in 8 MB chunks. Raises OSError."""
    import xxhash

    h = xxhash.xxh3_128()
    buf = bytearray(_BUFFER)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return f"{CHECKSUM_ALGO}:{h.hexdigest()}"


def sidecar_fields(index_file: Path, gallery_id: str | None) -> dict[str, Any]:
    """The verification fields a saved index's sidecar records: its gallery and its file checksum."""
    return {"gallery_id": gallery_id, "checksum": file_checksum(index_file)}


def sidecar_problem(index_file: Path, sidecar: dict[str, Any], gallery_id: str | None) -> str | None:
    """Why the saved index at `index_file` must not be used with the gallery `gallery_id`, or None if it may."""
    recorded = sidecar.get("gallery_id")
    if not sidecar.get("checksum") or (gallery_id is not None and not recorded):
        return "it has no gallery id or checksum (saved by an older version, or its sidecar is missing)"
    if recorded != gallery_id:
        return f"it belongs to another gallery ({recorded}; this database is {gallery_id})"
    try:
        actual = file_checksum(index_file)
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    if actual != sidecar["checksum"]:
        return "its bytes do not match the checksum recorded when it was saved (damaged or overwritten)"
    return None


def embedding_crc(blob: bytes) -> int:
    """CRC-32 of an embedding's stored bytes."""
    return zlib.crc32(blob)


def embedding_problem(blob: bytes | None, crc: int | None) -> str | None:
    """Why a stored embedding must not be used, or None when it is intact.

    With a checksum the bytes must match it; with or without one (the migration leaves a row it found already
    damaged without one) the vector must be 512 finite float32 values of unit length.
    """
    if blob is None or len(blob) != EMBEDDING_BYTES:
        return f"its embedding has {0 if blob is None else len(blob)} bytes, not {EMBEDDING_BYTES}"
    if crc is not None and zlib.crc32(blob) != crc:
        return "its embedding does not match its checksum"
    v = np.frombuffer(blob, dtype=np.float32)
    if not np.isfinite(v).all():
        return "its embedding holds non-finite values"
    norm = math.sqrt(float(np.dot(v.astype(np.float64), v.astype(np.float64))))
    if abs(norm - 1.0) > NORM_TOLERANCE:
        return f"its embedding has length {norm:.4g}, not 1"
    return None


def embedding_problems(blobs: Sequence[bytes | None], crcs: Sequence[int | None]) -> list[str | None]:
    """`embedding_problem` of each (blob, crc), the vector checks done for all rows at once (a search re-scores
    ~40 rows on the event loop: 0.5 ms of CPU one by one, 0.2 ms together)."""
    out: list[str | None] = [None] * len(blobs)
    whole = []
    for i, (blob, crc) in enumerate(zip(blobs, crcs, strict=True)):
        if blob is None or len(blob) != EMBEDDING_BYTES or (crc is not None and zlib.crc32(blob) != crc):
            out[i] = embedding_problem(blob, crc)
        else:
            whole.append(i)
    if whole:
        vectors = np.frombuffer(b"".join(blobs[i] for i in whole), dtype=np.float32).reshape(len(whole), -1)  # type: ignore[misc]
        finite = np.isfinite(vectors).all(axis=1)
        wide = vectors.astype(np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", wide, wide))
        for k in np.flatnonzero(~finite | (np.abs(norms - 1.0) > NORM_TOLERANCE)):
            out[whole[k]] = embedding_problem(blobs[whole[k]], crcs[whole[k]])
    return out


def clamp_similarity(sim: float) -> float:
    """A cosine similarity kept inside [-1, 1] (float rounding can step just outside)."""
    if not math.isfinite(sim):
        raise ValueError(f"similarity {sim} is not finite")
    return min(1.0, max(-1.0, sim))
