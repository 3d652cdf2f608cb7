"""A heavily blurred photo read as one face covering the whole frame is not searched; real faces that fill the frame are."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from conftest import DEV, make_config
from engine import Engine, NoFaceFound
from engine.faces import FRAME_FILLING, iou

# (dev photo, Gaussian blur radius, degrees turned clockwise): on the code before the rule, each gave one "face" whose
# box covered >= 75 % of the frame both ways, off the person, at 0.35-0.64 (found as given, in a turned copy, or by the
# second look), and it was searched (bench/RESULTS.md, "Whole-frame false faces"). The first is the hostile tester's.
WHOLE_FRAME = (
    ("Colin_Powell/10.jpg", 14, 180),  # as given, 0.52
    ("Colin_Powell/10.jpg", 14, 0),  # in the copy turned 180 degrees
    ("Tony_Blair/2.jpg", 14, 0),  # turned 180, 0.51
    ("George_W_Bush/5.jpg", 14, 90),  # turned 90, 0.64
    ("Jacques_Chirac/9.jpg", 14, 180),  # second look, 0.38
    ("Donald_Rumsfeld/10.jpg", 16, 90),  # second look, 0.52
    ("Gerhard_Schroeder/4.jpg", 14, 270),  # second look, 0.52
)

# Blurred photos whose real face is found, some only by a turn or the second look, at low scores: they stay found.
BLURRED_REAL = (
    ("Matt_Damon/4.jpg", 14, 0),  # a large face (70 % of the width), 0.76
    ("Jack_Dorsey/1.jpg", 14, 90),  # found in a turned copy, 0.62
    ("George_W_Bush/9.jpg", 14, 90),  # turned, 0.56
    ("Tony_Blair/1.jpg", 14, 0),  # second look, 0.37
    ("Hugo_Chavez/3.jpg", 14, 0),  # second look, 0.43
)

# Close-ups: the photo cropped to `margin` x the face's box, blurred by `blur` x the crop's side, turned. The face fills
# the frame, several at detector scores a frame-filling-and-unsure rule alone would drop (0.62-0.65).
CLOSE_UPS = (
    ("Leonardo_DiCaprio/2.jpg", 0.9, 0.0, 0), ("Leonardo_DiCaprio/2.jpg", 0.9, 0.0, 180),
    ("Matt_Damon/3.jpg", 0.9, 0.0, 0), ("Marissa_Mayer/2.jpg", 0.9, 0.0, 180), ("Marissa_Mayer/2.jpg", 0.9, 0.02, 0),
    ("Colin_Powell/6.jpg", 0.9, 0.05, 0), ("Elon_Musk/3.jpg", 0.9, 0.05, 180), ("Ariel_Sharon/2.jpg", 1.0, 0.05, 0),
    ("Angelina_Jolie/3.jpg", 0.9, 0.0, 0), ("George_W_Bush/3.jpg", 1.0, 0.05, 180),
)


def jpeg(img: Image.Image) -> bytes:
    """JPEG bytes of a Pillow image."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def blurred(rel: str, radius: int, degrees: int) -> Image.Image:
    """The dev photo `rel` blurred (Pillow GaussianBlur) and turned `degrees` clockwise."""
    img = Image.open(DEV / rel).convert("RGB").filter(ImageFilter.GaussianBlur(radius))
    return img.rotate(-degrees, expand=True) if degrees else img


def turned_box(box: tuple[float, float, float, float], degrees: int, width: int, height: int) -> np.ndarray:
    """A box of a `width` x `height` photo, in the photo turned `degrees` clockwise."""
    x1, y1, x2, y2 = box
    for _ in range(degrees // 90):
        x1, y1, x2, y2 = height - y2, x1, height - y1, x2
        width, height = height, width
    return np.asarray([x1, y1, x2, y2], np.float32)


def covers_frame(box: tuple[int, int, int, int], size: tuple[int, int]) -> bool:
    """Whether a face box covers FRAME_FILLING of a photo of `size` (width, height) both ways."""
    return box[2] - box[0] >= FRAME_FILLING * size[0] and box[3] - box[1] >= FRAME_FILLING * size[1]


async def person(engine: Engine, rel: str) -> tuple[int, int, int, int]:
    """The primary face's box in the clean dev photo."""
    return next(f.box for f in await engine.detect((DEV / rel).read_bytes()) if f.primary)


async def test_a_blurred_photo_read_as_one_face_is_not_searched(gallery_copy: Path) -> None:
    engine = await Engine.open(make_config(gallery_copy))  # the default second look (0.35) on
    try:
        for rel, radius, degrees in WHOLE_FRAME:
            img = blurred(rel, radius, degrees)
            try:
                faces = await engine.detect(jpeg(img))
            except NoFaceFound:
                faces = ()
            assert not any(covers_frame(f.box, img.size) for f in faces), (rel, radius, degrees, faces)
            with pytest.raises(NoFaceFound):  # nothing else in these photos is a face either
                await engine.search(jpeg(img), actor="t")
    finally:
        await engine.close()


async def test_real_faces_blurred_or_filling_the_frame_are_still_found(tmp_path: Path) -> None:
    engine = await Engine.open(make_config(tmp_path))
    try:
        for rel, radius, degrees in BLURRED_REAL:
            img = Image.open(DEV / rel)
            truth = turned_box(await person(engine, rel), degrees, *img.size)
            faces = await engine.detect(jpeg(blurred(rel, radius, degrees)))
            primary = next(f for f in faces if f.primary)
            assert iou(truth, np.asarray([primary.box], np.float32))[0] >= 0.4, (rel, radius, degrees, primary)
        for rel, margin, blur, degrees in CLOSE_UPS:
            img = Image.open(DEV / rel).convert("RGB")
            x1, y1, x2, y2 = await person(engine, rel)
            cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * margin
            crop_box = (int(max(0, cx - side / 2)), int(max(0, cy - side / 2)), int(min(img.width, cx + side / 2)),
                        int(min(img.height, cy + side / 2)))
            crop = img.crop(crop_box)
            if blur:
                crop = crop.filter(ImageFilter.GaussianBlur(blur * crop.width))
            turned = crop.rotate(-degrees, expand=True) if degrees else crop
            truth = turned_box((x1 - crop_box[0], y1 - crop_box[1], x2 - crop_box[0], y2 - crop_box[1]), degrees, *crop.size)
            faces = await engine.detect(jpeg(turned))
            primary = next(f for f in faces if f.primary)
            assert covers_frame(primary.box, turned.size), (rel, margin, blur, degrees, primary)  # a close-up indeed
            assert iou(truth, np.asarray([primary.box], np.float32))[0] >= 0.5, (rel, margin, blur, degrees, primary)
    finally:
        await engine.close()
