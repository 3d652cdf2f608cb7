"""Pictures the bot sends, drawn with Pillow in memory: a results sheet and a photo with its faces boxed.

Synchronous and CPU-bound: call through `asyncio.to_thread`. Nothing is written to disk.
"""

from __future__ import annotations

import importlib.util
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from bot.telegram_io import single_line
from engine import DetectedFace
from engine.images import to_rgb8

logger = logging.getLogger(__name__)

TILE = 160  # face thumbnails are scaled to this square
LABEL_H = 44  # room under each tile for two lines of text
GAP = 8
BACKGROUND = (245, 245, 245)
QUERY_FRAME = (40, 110, 220)
TEXT = (20, 20, 20)
BOX_COLOURS = ((230, 40, 40), (40, 160, 60), (40, 90, 230), (230, 150, 20), (160, 40, 200), (20, 170, 190))
MAX_SIDE = 1280  # long side of the boxed photo we send back
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@dataclass(frozen=True, slots=True)
class Tile:
    """One face in the results sheet: its JPEG (None when missing) and two lines of label."""

    jpeg: bytes | None
    label: str
    caption: str = ""


def font_file() -> Path | None:
    """DejaVu Sans as matplotlib (a dependency) ships it, or None: found without importing matplotlib."""
    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=8)
def font(size: int) -> Font:
    """DejaVu Sans at `size` px: it has the accented letters of French, Dutch and German labels and names
    ("visage recherché", "Müller"), which Pillow's bundled font draws as boxes; that one is the fallback."""
    path = font_file()
    try:
        if path is not None:
            return ImageFont.truetype(str(path), size)
        logger.warning("DejaVu Sans not found: labels with accented letters will show boxes")
        return ImageFont.load_default(size=size)
    except (OSError, ImportError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def _face(jpeg: bytes | None) -> Image.Image:
    if jpeg:
        try:
            with Image.open(io.BytesIO(jpeg)) as img:
                return ImageOps.fit(img.convert("RGB"), (TILE, TILE), Image.Resampling.BICUBIC)
        except OSError:
            logger.warning("a face thumbnail could not be decoded; drawing a blank tile")
    return Image.new("RGB", (TILE, TILE), (200, 200, 200))


def _fit_text(draw: ImageDraw.ImageDraw, text: str, f: Font, width: int) -> str:
    """The longest prefix of `text` (with "..." when cut) that fits in `width` px.

    A binary search over the prefix length: O(log n) measurements, each of at most `width` px worth of text
    (a glyph is at least 1 px wide), so a 5,000-character label costs what a 40-character one does. Any label
    is drawn as one line (Pillow cannot measure a line break; a control character would draw as a box).
    """
    text = single_line(text[: width + 1])  # nothing longer can fit
    if draw.textlength(text, font=f) <= width:
        return text
    lo, hi = 0, len(text)  # text[:lo] + "..." fits; text[:hi] + "..." does not (or hi is the whole text)
    if draw.textlength("...", font=f) > width:
        return ""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if draw.textlength(text[:mid] + "...", font=f) <= width:
            lo = mid
        else:
            hi = mid
    return text[:lo] + "..."


def result_sheet(query: Tile | None, tiles: Sequence[Tile]) -> bytes:
    """One picture: the query face (framed, when given) beside the matches' faces, each labelled below."""
    cells: list[tuple[Image.Image, str, str, bool]] = []
    if query is not None:
        cells.append((_face(query.jpeg), query.label, query.caption, True))
    cells += [(_face(t.jpeg), t.label, t.caption, False) for t in tiles]
    width = GAP + len(cells) * (TILE + GAP)
    height = GAP + TILE + LABEL_H + GAP
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    big, small = font(18), font(14)
    for i, (face, label, caption, is_query) in enumerate(cells):
        x = GAP + i * (TILE + GAP)
        sheet.paste(face, (x, GAP))
        if is_query:
            draw.rectangle((x - 3, GAP - 3, x + TILE + 2, GAP + TILE + 2), outline=QUERY_FRAME, width=4)
        draw.text((x + 2, GAP + TILE + 4), _fit_text(draw, label, big, TILE - 4), fill=TEXT, font=big)
        if caption:
            draw.text((x + 2, GAP + TILE + 25), _fit_text(draw, caption, small, TILE - 4), fill=TEXT, font=small)
    return _jpeg(sheet)


def _open_rotated(data: bytes, max_side: int) -> tuple[Image.Image, float]:
    """The image upright (EXIF applied) and reduced for display, and display pixels per original pixel."""
    with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
        orientation = img.getexif().get(0x0112, 1)
        if img.format == "JPEG":
            img.draft("RGB", (max_side, max_side))  # decode reduced straight from the DCT
        img.load()
        upright = to_rgb8(ImageOps.exif_transpose(img))  # 16-bit and transparent photos as the engine saw them
    original_width = height if orientation in (5, 6, 7, 8) else width
    if max(upright.size) > max_side:
        upright.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return upright, upright.width / original_width


def boxed_faces(image: bytes, faces: Sequence[DetectedFace], max_side: int = MAX_SIDE) -> bytes:
    """The photo with every face boxed and numbered as the engine numbers them (left to right)."""
    picture, scale = _open_rotated(image, max_side)
    draw = ImageDraw.Draw(picture)
    line = max(2, round(max(picture.size) / 300))
    f = font(max(14, round(max(picture.size) / 28)))
    for face in faces:
        colour = BOX_COLOURS[(face.number - 1) % len(BOX_COLOURS)]
        x1, y1, x2, y2 = (round(v * scale) for v in face.box)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        label = str(face.number)
        left, top, right, bottom = draw.textbbox((0, 0), label, font=f)
        w, h = right - left + 8, bottom - top + 8
        ly = y1 - h if y1 - h >= 0 else y2  # above the box, or below it at the top edge
        draw.rectangle((x1, ly, x1 + w, ly + h), fill=colour)
        draw.text((x1 + 4 - left, ly + 4 - top), label, fill=(255, 255, 255), font=f)
    return _jpeg(picture)


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=88)
    return buf.getvalue()
