"""Turning untrusted bytes into a BGR array, and small pictures back into JPEG bytes."""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageRejected

logger = logging.getLogger(__name__)

try:  # phones send HEIC/HEIF; pillow-heif teaches Pillow to read them
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF = True
except ImportError:  # pragma: no cover - it is a declared dependency
    HEIF = False

ACCEPTED_FORMATS = {"JPEG", "PNG", "WEBP", "HEIF", "HEIC", "MPO", "AVIF"}


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded image: BGR uint8 pixels at working size, and how it relates to the original."""

    bgr: np.ndarray
    scale: float  # working pixels per original pixel (<= 1)
    original_size: tuple[int, int]  # width, height after EXIF rotation
    sha256: str


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of some bytes, hex encoded."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, streamed, hex encoded."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def decode(data: bytes, *, max_bytes: int, max_pixels: int, max_side: int) -> Decoded:
    """Decode, EXIF-rotate and downscale an image, refusing anything unsafe or not an image."""
    if not data:
        raise ImageRejected("empty", "the file is empty")
    if len(data) > max_bytes:
        raise ImageRejected(
            "too_large",
            f"the file is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB",
        )
    digest = sha256_hex(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            fmt = (img.format or "").upper()
            if fmt not in ACCEPTED_FORMATS:
                raise ImageRejected("not_image", f"{fmt or 'this'} files are not accepted; send a JPEG, PNG, WebP or HEIC photo")
            width, height = img.size
            if width * height > max_pixels:
                raise ImageRejected(
                    "too_many_pixels",
                    f"the image is {width}x{height} pixels; the limit is {max_pixels / 1e6:.0f} megapixels",
                )
            if fmt == "JPEG":
                # Decode at a reduced size straight from the DCT: much faster for 12 MP photos. draft() only
                # reduces while both sides stay >= the request, so ask for the photo's own aspect ratio.
                f = max_side / max(width, height)
                if f < 1:
                    img.draft("RGB", (max(1, round(width * f)), max(1, round(height * f))))
            orientation = img.getexif().get(0x0112, 1)
            img.load()
            img = ImageOps.exif_transpose(img)
            rgb = img.convert("RGB")
    except ImageRejected:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        if isinstance(exc, UnidentifiedImageError):
            raise ImageRejected("not_image", "this file is not an image we can read") from None
        raise ImageRejected("too_many_pixels", "the image has too many pixels to be safe to open") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        logger.info("corrupt image %s: %s", digest[:12], exc)
        raise ImageRejected("corrupt", "the image is damaged or truncated and cannot be read") from None
    # Sizes after EXIF rotation, in the original's pixels (draft() may have reduced the decode).
    rw, rh = rgb.size
    ow, oh = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    long_side = max(rw, rh)
    if long_side > max_side:
        f = max_side / long_side
        rgb = rgb.resize((max(1, round(rw * f)), max(1, round(rh * f))), Image.Resampling.BILINEAR)
    scale = rgb.size[0] / ow if ow else 1.0
    arr = np.asarray(rgb)[:, :, ::-1]  # RGB -> BGR, the OpenCV convention the models expect
    return Decoded(bgr=np.ascontiguousarray(arr), scale=scale, original_size=(ow, oh), sha256=digest)


def encode_jpeg(bgr: np.ndarray, quality: int = 85) -> bytes:
    """JPEG bytes of a BGR array."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1])).save(buf, "JPEG", quality=quality)
    return buf.getvalue()
