"""Fewer "no face" on field-quality probes (issue 17): which second detection to try when nothing is found.

For calib probes (every photo but an identity's first) degraded by engine/degrade.py, the normal pass
(FaceModel.detect: the smallest detector input bucket that holds the photo, the padding retry) is run; for
those in which it finds nothing, each candidate second detection is tried: an input size (the photo is
letterboxed into it, so 64 means "about its own size" for a 40-90 px still) and a confidence threshold.

  * person found: the face the primary-face rule picks overlaps (IoU >= 0.4) the face the normal pass finds
    on the clean original, scaled to the degraded photo -- the labelled person;
  * other face first: it picks some other box (most are real bystanders: look at them);
  * face-free: images with no face -- solid colours, noise, blotches, gradients, stripes, and corners of calib
    photos away from every face the detector sees at confidence 0.2 there, enlarged to 250 px -- clean and
    degraded; an image counts when the normal pass or the candidate (run when the normal pass found nothing)
    gives any box. A few corners hold part of a real face (the normal pass finds those too).

    python bench/noface.py [--probes 400] [--levels severe] [--seeds 3,4] [--candidates 64:0.35,96:0.4,160:0.3]
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CALIB_DIR, kv_line, machine, setup_logging  # noqa: E402

from engine import EngineConfig  # noqa: E402
from engine import degrade as dg  # noqa: E402
from engine.errors import ImageRejected  # noqa: E402
from engine.faces import FaceModel, det_input_size, iou, primary_face  # noqa: E402
from engine.images import decode, encode_jpeg  # noqa: E402

Boxes = np.ndarray


def face_free_sources(ids: list[Path], model: FaceModel, dec: object, every: int) -> list[tuple[str, np.ndarray]]:
    """Face-free RGB/BGR arrays: synthetic ones, and 64-px corners of calib photos away from any face, enlarged."""
    import cv2

    rng = np.random.default_rng(5)
    free: list[tuple[str, np.ndarray]] = []
    for _ in range(6):
        free.append(("solid", np.full((200, 200, 3), rng.integers(0, 256, 3).tolist(), np.uint8)))
    for sig in (10, 30, 60, 100):
        for _ in range(2):
            free.append(("noise", np.clip(128 + rng.normal(0, sig, (240, 240, 3)), 0, 255).astype(np.uint8)))
    for _ in range(12):
        small = rng.integers(0, 256, (int(rng.integers(3, 20)),) * 2 + (3,)).astype(np.uint8)
        free.append(("blobs", cv2.resize(small, (250, 250), interpolation=cv2.INTER_CUBIC)))
    for _ in range(6):
        x = np.linspace(0, 1, 250)
        g = (np.outer(x, np.ones(250)) * 255 * rng.random() + np.outer(np.ones(250), x) * 255 * rng.random()).clip(0, 255)
        g = g.astype(np.uint8)
        free.append(("gradient", np.dstack([g, g[::-1], g.T])))
    for _ in range(8):
        per = int(rng.integers(4, 40))
        yy, xx = np.mgrid[0:250, 0:250]
        wave = np.sin(xx * 2 * np.pi / per + rng.random() * 3) * np.cos(yy * 2 * np.pi / (per * rng.uniform(0.5, 2)))
        t = (wave * 127 + 128).astype(np.uint8)
        free.append(("texture", np.dstack([t, t, t])))
    for p in [p for d in ids[::every] for p in sorted(d.glob("*.jpg"))[:1]]:
        img = dec(p.read_bytes())  # type: ignore[operator]
        h, w = img.shape[:2]
        b, _ = model.detector.detect(img, input_size=det_input_size(w, h, 640), det_thresh=0.2)
        grown = b[:, :4].copy()
        if len(grown):
            bw, bh = grown[:, 2] - grown[:, 0], grown[:, 3] - grown[:, 1]
            grown[:, 0] -= bw * 0.15
            grown[:, 2] += bw * 0.15
            grown[:, 1] -= bh * 0.15
            grown[:, 3] += bh * 0.3
        for x, y in ((0, 0), (w - 64, 0), (0, h - 64), (w - 64, h - 64)):
            box = np.array([x, y, x + 64, y + 64], np.float32)
            if len(grown) and (iou(box, grown) > 0).any():
                continue
            crop = np.ascontiguousarray(img[y:y + 64, x:x + 64])
            free.append(("corner", cv2.resize(crop, (250, 250), interpolation=cv2.INTER_CUBIC)))
    return free


def main() -> None:
    """Measure and print."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probes", type=int, default=400, help="calib probes drawn (fixed shuffle)")
    ap.add_argument("--levels", default="severe", help="degradation levels, comma-separated")
    ap.add_argument("--seeds", default="3,4", help="degradation seeds, comma-separated")
    ap.add_argument("--candidates", default="64:0.35,64:0.3,96:0.4,160:0.3,bucket:0.3",
                    help="second detections: SIZE:THRESHOLD, SIZE a square input side or 'bucket' (the normal pass's)")
    ap.add_argument("--corners-every", type=int, default=9, help="take face-free corners from every Nth identity")
    args = ap.parse_args()
    setup_logging()
    levels, seeds = args.levels.split(","), [int(s) for s in args.seeds.split(",")]
    cands = [(c.split(":")[0], float(c.split(":")[1])) for c in args.candidates.split(",")]
    cfg = EngineConfig(data_dir=Path("unused"), det_retry_threshold=0.0)
    model = FaceModel(cfg)

    def dec(data: bytes) -> np.ndarray:
        return decode(data, max_bytes=cfg.max_image_bytes, max_pixels=cfg.max_image_pixels, max_side=cfg.max_side).bgr

    def second(img: np.ndarray) -> dict[str, tuple[Boxes, Boxes]]:
        h, w = img.shape[:2]
        out = {}
        for size, thr in cands:
            side = det_input_size(w, h, cfg.det_size)[0] if size == "bucket" else int(size)
            b, k = model.detector.detect(img, input_size=(side, side), det_thresh=thr)
            out[f"{size}:{thr}"] = (b, k)
        return out

    names = [f"{s}:{t}" for s, t in cands]
    ids = sorted(p for p in CALIB_DIR.iterdir() if p.is_dir())
    probes = [p for d in ids for p in sorted(d.glob("*.jpg"), key=lambda q: int(q.stem)) if p.stem != "1"]
    random.Random(1).shuffle(probes)
    probes = probes[: args.probes]
    print(kv_line(machine()))
    print(f"calib probes: {len(probes)}; levels {levels}; seeds {seeds}")
    print("| level | seed | second detection | no face | person found | other face first |")
    print("|---|---|---|---|---|---|")
    for level in levels:
        for seed in seeds:
            tally: Counter[str] = Counter()
            for p in probes:
                rel = p.relative_to(CALIB_DIR).as_posix()
                raw = p.read_bytes()
                clean = dec(raw)
                cb, _ = model.detect(clean)
                if not len(cb):
                    continue
                truth = cb[primary_face(cb, clean.shape[1], clean.shape[0]), :4]
                img = dec(dg.degrade(raw, level, rel, seed))
                truth = truth * (img.shape[1] / clean.shape[1])
                base, _ = model.detect(img)
                results = {"normal pass only": base}
                if not len(base):
                    results.update({n: b for n, (b, _) in second(img).items()})
                for name in ["normal pass only", *names]:
                    b = results.get(name, base)
                    if not len(b):
                        tally[name, "none"] += 1
                    elif iou(truth, b[[primary_face(b, img.shape[1], img.shape[0])], :4])[0] >= 0.4:
                        tally[name, "person"] += 1
                    else:
                        tally[name, "other"] += 1
            for name in ["normal pass only", *names]:
                print(f"| {level} | {seed} | {name} | {tally[name, 'none']} | {tally[name, 'person']} | {tally[name, 'other']} |")
    free = face_free_sources(ids, model, dec, args.corners_every)
    variants = ["clean", *(f"{lv} {s}" for lv in levels for s in seeds)]
    hits: Counter[str] = Counter()
    images = 0
    for idx, (_kind, arr) in enumerate(free):
        data = encode_jpeg(arr, 95)
        for v in variants:
            try:
                img = dec(data if v == "clean" else dg.degrade(data, v.split()[0], f"free{idx}", int(v.split()[1])))
            except ImageRejected:  # degraded below the smallest image the product accepts
                continue
            images += 1
            base, _ = model.detect(img)
            if len(base):
                hits["normal pass only"] += 1
                for n in names:
                    hits[n] += 1
                continue
            for n, (b, _) in second(img).items():
                hits[n] += bool(len(b))
    print(f"\nface-free images ({len(free)} sources x {', '.join(variants)}: {images}) in which a face is found:")
    for name in ["normal pass only", *names]:
        print(f"  {name}: {hits[name]}")


if __name__ == "__main__":
    main()
