"""Turning untrusted bytes into BGR arrays (every frame we search), and small pictures back into JPEG bytes."""

from __future__ import annotations

import hashlib
import io
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from .errors import ImageRejected

logger = logging.getLogger(__name__)

try:  # phones send HEIC/HEIF; pillow-heif teaches Pillow to read them
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF = True
except ImportError:  # pragma: no cover - it is a declared dependency
    HEIF = False

# Recognised by content (Pillow's own sniffing), never by file name: .jfif/.jpe are JPEG, .avif is AVIF.
ACCEPTED_FORMATS = {"JPEG", "PNG", "WEBP", "HEIF", "HEIC", "MPO", "AVIF", "GIF", "TIFF", "BMP"}
MAX_FRAMES = 8  # frames of an animation (or pages of a TIFF) we analyse, spread evenly over...
SCAN_FRAMES = 120  # ...its first this many frames (a GIF frame can only be reached by decoding those before it)
MIN_SIDE = 20  # px; SCRFD's smallest anchor is 16 px, so a thinner image cannot hold a face we could use
MAX_ASPECT = 50.0  # longer than this many times its width: a strip or a banner, not a photo
ELONGATED = 2.0  # beyond this aspect ratio the short side is kept for the detector and the image is tiled
DETECTOR_SIDE = 640  # the short side an elongated image keeps (when it has it): the detector's input
WORKING_PIXELS_FACTOR = 4  # an elongated image may use up to 4 x max_side^2 working pixels
NEUTRAL = (128, 128, 128)  # transparent pixels are shown on mid-grey: what a viewer sees is what is searched
WIDE_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}  # more than 8 bits per sample


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded image (one frame of it): BGR uint8 pixels at working size, and how it relates to the original."""

    bgr: np.ndarray
    scale: float  # working pixels per original pixel
    original_size: tuple[int, int]  # width, height after EXIF rotation
    sha256: str
    frame: int = 1  # 1-based frame (or page) of the file these pixels come from
    frames: int = 1  # frames (or pages) the file has
    rotation: int = 0  # degrees clockwise the pixels were turned before analysis (0, 90, 180, 270)


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


# File name endings of the formats above (and their usual variants): a file named so is meant as an image, and one
# that is not is reported as such; a file with another name is an image only if its content says so.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".heic", ".heif", ".hif", ".avif",
                            ".gif", ".tif", ".tiff", ".bmp", ".dib", ".mpo"})


def named_as_image(path: Path) -> bool:
    """Whether the file's name ends as an image's does (IMAGE_SUFFIXES, any case)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def looks_like_image(path: Path) -> bool:
    """Whether the file holds an image Pillow recognises, by its content whatever its name (a manifest does not); reads
    only the header. A format we do not accept still counts, so that it is refused as an image, with its format named."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path):
                return True
    except Image.DecompressionBombError:  # an image, and far too big: refused as one
        return True
    except OSError:  # UnidentifiedImageError (not an image) is an OSError too
        return False


def working_scale(width: int, height: int, max_side: int) -> float:
    """Working pixels per original pixel (<= 1) for an image of this size.

    An ordinary photo's long side is brought down to `max_side`. A panorama or a long screenshot (aspect
    beyond ELONGATED) instead keeps its short side at DETECTOR_SIDE px when it has them, within
    WORKING_PIXELS_FACTOR x max_side^2 pixels: shrinking its long side to max_side would shrink its faces
    below what the detector finds (a 6000x250 strip of faces would be analysed 80 px high).
    """
    long_side, short_side = max(width, height), min(width, height)
    f = min(1.0, max_side / long_side)
    if long_side > ELONGATED * short_side:
        f = max(f, min(1.0, DETECTOR_SIDE / short_side))
        f = min(f, math.sqrt(WORKING_PIXELS_FACTOR * max_side * max_side / (width * height)))
    return min(1.0, f)


def frame_numbers(n_frames: int, limit: int = MAX_FRAMES) -> list[int]:
    """0-based frames to analyse: all of a short animation, else `limit` spread evenly over its first SCAN_FRAMES."""
    n = min(n_frames, SCAN_FRAMES)
    if limit <= 1:
        return [0]
    if n <= limit:
        return list(range(n))
    return sorted({round(i * (n - 1) / (limit - 1)) for i in range(limit)})


def to_rgb8(img: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of any Pillow image: wide samples scaled (not clamped), transparency composited."""
    if img.mode in WIDE_MODES:
        arr = np.asarray(img).astype(np.float64)
        if img.mode == "F":
            top = 1.0 if float(arr.max(initial=0.0)) <= 1.0 else float(arr.max())
        elif img.mode.startswith("I;16"):
            top = 65535.0
        else:  # "I": 32-bit integers; PNG and TIFF put 16-bit greyscale here too
            peak = float(arr.max(initial=0.0))
            top = 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else peak
        grey = np.clip(arr / max(top, 1e-12) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*NEUTRAL, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return img.convert("RGB")


def decode_frames(
    data: bytes, *, max_bytes: int, max_pixels: int, max_side: int, max_frames: int = MAX_FRAMES
) -> list[Decoded]:
    """Decode an image into the frames we analyse (one for a still photo), EXIF-rotated and at working size.

    Animated WebP, GIF and PNG, and multi-page TIFF, follow one policy: up to `max_frames` frames spread
    evenly over the animation, in order (the caller searches the first that holds a face). Raises
    ImageRejected (empty, too_large, not_image, too_many_pixels, corrupt, degenerate).
    """
    if not data:
        raise ImageRejected("empty", "the file is empty")
    if len(data) > max_bytes:
        raise ImageRejected(
            "too_large",
            f"the file is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB",
        )
    digest = sha256_hex(data)
    out: list[Decoded] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            fmt = (img.format or "").upper()
            if fmt not in ACCEPTED_FORMATS:
                raise ImageRejected(
                    "not_image", f"{fmt or 'this'} files are not accepted; send a JPEG, PNG, WebP, GIF, HEIC or AVIF photo"
                )
            width, height = img.size
            if width * height > max_pixels:
                raise ImageRejected(
                    "too_many_pixels",
                    f"the image is {width}x{height} pixels; the limit is {max_pixels / 1e6:.0f} megapixels",
                )
            if min(width, height) < MIN_SIDE or max(width, height) > MAX_ASPECT * min(width, height):
                raise ImageRejected(
                    "degenerate",
                    f"the image is {width}x{height} pixels: too thin to hold a face (at least {MIN_SIDE} px on each "
                    f"side and at most {MAX_ASPECT:.0f} times longer than wide)",
                )
            n_frames = int(getattr(img, "n_frames", 1) or 1)
            wanted = set(frame_numbers(n_frames, max_frames))
            f = working_scale(width, height, max_side)
            if fmt == "JPEG" and f < 1:
                # Decode at a reduced size straight from the DCT: much faster for 12 MP photos. draft() only
                # reduces while both sides stay >= the request, so ask for the photo's own aspect ratio.
                img.draft("RGB", (max(1, round(width * f)), max(1, round(height * f))))
            orientation = img.getexif().get(0x0112, 1)
            ow, oh = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
            for i, frame in enumerate(ImageSequence.Iterator(img) if n_frames > 1 else [img]):
                if i > max(wanted):
                    break
                if i not in wanted:
                    continue
                frame.load()
                rgb = to_rgb8(ImageOps.exif_transpose(frame) if orientation != 1 else frame)
                rw, rh = rgb.size  # draft() may have reduced the decode already
                target = (max(1, round(ow * f)), max(1, round(oh * f)))
                if target[0] < rw:
                    rgb = rgb.resize(target, Image.Resampling.BILINEAR)
                # BGR, the OpenCV convention the models expect, straight from Pillow's raw encoder: the same pixels as
                # np.asarray(rgb)[:, :, ::-1], but ~8 ms less CPU for a 1280-px photo (np.asarray of a Pillow image
                # is slow, and the channel swap was one more copy).
                arr = np.frombuffer(bytearray(rgb.tobytes("raw", "BGR")), dtype=np.uint8).reshape(rgb.size[1], rgb.size[0], 3)
                out.append(
                    Decoded(bgr=arr, scale=rgb.size[0] / ow if ow else 1.0, original_size=(ow, oh),
                            sha256=digest, frame=i + 1, frames=n_frames)
                )
    except ImageRejected:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        if isinstance(exc, UnidentifiedImageError):
            raise ImageRejected("not_image", "this file is not an image we can read") from None
        raise ImageRejected("too_many_pixels", "the image has too many pixels to be safe to open") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        logger.info("corrupt image %s: %s", digest[:12], exc)
        raise ImageRejected("corrupt", "the image is damaged or truncated and cannot be read") from None
    if not out:  # pragma: no cover - frame 0 is always wanted
        raise ImageRejected("corrupt", "the image has no frame that can be read")
    return out


def decode(data: bytes, *, max_bytes: int, max_pixels: int, max_side: int) -> Decoded:
    """The first frame of an image, decoded, EXIF-rotated and at working size (see decode_frames)."""
    return decode_frames(data, max_bytes=max_bytes, max_pixels=max_pixels, max_side=max_side, max_frames=1)[0]


def encode_jpeg(bgr: np.ndarray, quality: int = 85) -> bytes:
    """JPEG bytes of a BGR array."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1])).save(buf, "JPEG", quality=quality)
    return buf.getvalue()
