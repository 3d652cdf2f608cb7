"""Reproducible field-quality degradation of probe photos, for `sightline eval --degrade`.

Officers search with CCTV stills, screenshots and phone photos of screens. To measure the product on such
probes from a clean labelled set, each probe is degraded by a recipe drawn at random *per photo* from a
family (so no single recipe can be tuned to): downscaling (the face ends up small), optical or motion
blur, sensor noise, greyscale, low contrast or a dark exposure, and heavy JPEG compression, optionally
scaled back up as a screenshot would be. The draw is seeded by the photo's relative path and a seed, so
a run is reproducible and two runs with different seeds see different recipes.

Levels (face widths assume an LFW-like crop where the face is ~40 % of the photo's width):
  moderate  faces ~40-80 px, mild blur and noise, JPEG quality 35-70
  severe    faces ~15-35 px, strong blur or motion blur, heavy noise, JPEG quality 8-30
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

LEVELS = ("moderate", "severe")


@dataclass(frozen=True, slots=True)
class Recipe:
    """One drawn degradation (all of it is recorded in the eval report)."""

    scale: float  # factor applied to both sides
    blur: float  # Gaussian blur radius in pixels of the downscaled image (0: none)
    motion: int  # motion-blur kernel length in pixels, 3 or 5 (0: none)
    noise: float  # standard deviation of additive Gaussian noise, in 8-bit grey levels
    grey: bool
    contrast: float  # 1.0: unchanged
    brightness: float  # 1.0: unchanged
    jpeg_quality: int
    upscale_back: bool  # scaled back to the original size after degrading (a screenshot / zoomed still)

    def describe(self) -> str:
        """A short human-readable summary, e.g. for a report row."""
        parts = [f"x{self.scale:.2f}"]
        if self.blur:
            parts.append(f"blur {self.blur:.1f}")
        if self.motion:
            parts.append(f"motion {self.motion}")
        if self.noise:
            parts.append(f"noise {self.noise:.0f}")
        if self.grey:
            parts.append("grey")
        if self.contrast != 1.0:
            parts.append(f"contrast {self.contrast:.2f}")
        if self.brightness != 1.0:
            parts.append(f"brightness {self.brightness:.2f}")
        parts.append(f"q{self.jpeg_quality}")
        if self.upscale_back:
            parts.append("upscaled back")
        return ", ".join(parts)


def _rng(key: str, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}\0{key}".encode("utf-8", "surrogateescape")).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def draw_recipe(level: str, key: str, seed: int = 0) -> Recipe:
    """The recipe for the photo `key` (its relative path) at `level`; raises ValueError for an unknown level."""
    if level not in LEVELS:
        raise ValueError(f"degradation level must be one of {', '.join(LEVELS)}, not {level!r}")
    r = _rng(key, seed)
    severe = level == "severe"
    scale = float(r.uniform(0.15, 0.35) if severe else r.uniform(0.4, 0.8))
    kind = r.choice(["gauss", "motion", "none"], p=[0.5, 0.3, 0.2] if severe else [0.5, 0.15, 0.35])
    blur = float(r.uniform(0.6, 1.6) if severe else r.uniform(0.3, 0.9)) if kind == "gauss" else 0.0
    motion = int(r.choice([3, 5]) if severe else 3) if kind == "motion" else 0
    noise = float(r.uniform(5, 14) if severe else r.uniform(0, 6))
    grey = bool(r.random() < (0.5 if severe else 0.3))
    low_light = r.random() < (0.4 if severe else 0.2)
    contrast = float(r.uniform(0.45, 0.8) if severe else r.uniform(0.7, 0.95)) if low_light else 1.0
    brightness = float(r.uniform(0.45, 0.8) if severe else r.uniform(0.75, 0.95)) if low_light else 1.0
    quality = int(r.integers(8, 31) if severe else r.integers(35, 71))
    upscale_back = bool(r.random() < 0.5)
    return Recipe(scale, blur, motion, noise, grey, contrast, brightness, quality, upscale_back)


def apply(data: bytes, recipe: Recipe, key: str = "", seed: int = 0) -> bytes:
    """The photo `data` (any format Pillow reads) degraded by `recipe`, as JPEG bytes."""
    with Image.open(io.BytesIO(data)) as src:
        img = src.convert("RGB")
    w, h = img.size
    small = img.resize((max(8, round(w * recipe.scale)), max(8, round(h * recipe.scale))), Image.Resampling.BILINEAR)
    if recipe.blur:
        small = small.filter(ImageFilter.GaussianBlur(recipe.blur))
    if recipe.motion:  # a horizontal streak (camera pan or a moving subject); Pillow kernels are 3x3 or 5x5
        k = 5 if recipe.motion >= 5 else 3
        kernel = [0.0] * (k * k)
        kernel[(k // 2) * k : (k // 2) * k + k] = [1.0 / k] * k
        small = small.filter(ImageFilter.Kernel((k, k), kernel, scale=1.0))
    if recipe.contrast != 1.0:
        small = ImageEnhance.Contrast(small).enhance(recipe.contrast)
    if recipe.brightness != 1.0:
        small = ImageEnhance.Brightness(small).enhance(recipe.brightness)
    if recipe.grey:
        small = small.convert("L").convert("RGB")
    if recipe.noise:
        arr = np.asarray(small, dtype=np.float32)
        arr += _rng(key + "\0noise", seed).normal(0.0, recipe.noise, arr.shape[:2])[..., None]
        small = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=recipe.jpeg_quality)
    if recipe.upscale_back:  # the compressed small image zoomed back up, as on a screen or in a screenshot
        with Image.open(io.BytesIO(buf.getvalue())) as again:
            big = again.convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        big.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def draw_level(key: str, seed: int = 0) -> str:
    """A level drawn per photo, half of them each (calibration's degraded copies)."""
    return LEVELS[int(_rng(key + "\0level", seed).integers(0, len(LEVELS)))]


def degrade(data: bytes, level: str, key: str, seed: int = 0) -> bytes:
    """`data` degraded at `level` by the recipe drawn for `key` (the photo's relative path) and `seed`."""
    return apply(data, draw_recipe(level, key, seed), key, seed)
