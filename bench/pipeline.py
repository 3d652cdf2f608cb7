"""Ingestion benchmark: decode + detect + embed per photo, and images/s through the real Engine.enroll.

Part 1 (per photo, one at a time, median of --repeats): a 250 px LFW face crop from calib, a
1280 px dev photo, and a 12 MP phone photo made here by upscaling a dev photo to 4000x3000 and
saving it as JPEG q90 and as HEIC (pillow-heif) in a temporary folder. Each stage is the engine's
own call: `engine.images.decode`, `FaceModel.detect_faces` (SCRFD + alignment), `FaceModel.embed`
(ArcFace), quality + thumbnail; and the whole of `Engine._prepare_enrollment`, which is what
`Engine.enroll` runs on its thread pool.

Part 2 (throughput): every calib photo through `Engine.enroll` (as `sightline gallery add` calls it:
save=False, the index saved at the end) into a temporary data dir, --concurrency enrolls in flight
(asyncio.gather + a semaphore), both cores; then the same for --phone-count distinct 12 MP JPEGs.

Other people's work on the machine inflates wall-clock times, so both parts also report CPU time:
per stage (process CPU, all threads) and, for throughput, images / (CPU seconds / cores), an estimate of
images/s on idle cores. With --inference-threads 2 that CPU includes onnxruntime's spin-waiting.

`--proto` switches on prototypes of engine changes, applied here by monkeypatching and labelled
in the output, so their effect can be measured before the engine is changed:
  draft   JPEG draft decode asks for the photo's own aspect ratio (max_side on the long side) instead
          of (max_side, max_side), which for a 4:3 12 MP photo disables the DCT downscale.
  fitdet  the detector input is sized to the photo: the smallest of 160/256/320/416/512/640 that
          holds its long side (capped at det_size), instead of always 640x640.
`--workers` / `--inference-threads` / `--max-side` / `--det-size` override EngineConfig.

Example: python bench/pipeline.py --proto draft,fitdet --workers 2 --inference-threads 1
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import logging
import pstats
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (bench/ is not a package)

from engine import Engine, EngineConfig  # noqa: E402
from engine.errors import EngineError  # noqa: E402
from engine.faces import FaceModel, primary_face  # noqa: E402
from engine.images import decode  # noqa: E402

logger = logging.getLogger("bench.pipeline")

TARGET_LFW_IPS = 25.0
TARGET_12MP_IPS = 6.0
PHONE_SIZE = (4000, 3000)
DET_BUCKETS = (160, 256, 320, 416, 512, 640)


# -- prototypes of engine changes (monkeypatches, bench-only) ---------------------------------
def fitted_det_size(width: int, height: int, cap: int) -> tuple[int, int]:
    """The smallest square bucket that holds the image's long side, at most `cap` (the current det_size)."""
    long_side = max(width, height)
    for side in DET_BUCKETS:
        if side >= long_side and side <= cap:
            return side, side
    return cap, cap


class _FittedDetSize:
    """A per-thread det_size for FaceModel: two worker threads detect different photos at once."""

    def __init__(self, default: tuple[int, int]) -> None:
        self.default = default
        self.local = threading.local()

    def __get__(self, obj: object, objtype: type | None = None) -> tuple[int, int] | _FittedDetSize:
        if obj is None:
            return self  # on the class: the descriptor itself
        return getattr(self.local, "size", self.default)

    def __set__(self, obj: object, value: tuple[int, int]) -> None:
        self.default = value


def apply_prototypes(names: Sequence[str]) -> list[str]:
    """Monkeypatch the engine with the named prototypes; returns what was applied."""
    applied: list[str] = []
    if "draft" in names:
        from PIL.JpegImagePlugin import JpegImageFile

        original = JpegImageFile.draft

        def draft(self: JpegImageFile, mode: str | None, size: tuple[int, int] | None) -> object:
            """JpegImageFile.draft with an aspect-preserving request."""
            # Proposed fix in engine.images.decode: ask for the aspect-preserving target size.
            if size is not None:
                w, h = self.size
                f = max(size) / max(w, h)
                if f < 1:
                    size = (max(1, round(w * f)), max(1, round(h * f)))
            return original(self, mode, size)

        JpegImageFile.draft = draft  # type: ignore[method-assign,assignment]
        applied.append("draft")
    if "fitdet" in names:
        original_detect = FaceModel.detect
        fitted = _FittedDetSize((640, 640))
        FaceModel.det_size = fitted  # type: ignore[assignment,misc]

        def detect(self: FaceModel, bgr: np.ndarray, *args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
            """FaceModel.detect with the detector input fitted to the image."""
            h, w = bgr.shape[:2]
            cap = self.config.det_size
            fit = getattr(self, "bench_fit", True)  # parity_check() turns it off to compare
            fitted.local.size = fitted_det_size(w, h, cap) if fit else (cap, cap)
            return original_detect(self, bgr, *args, **kwargs)

        FaceModel.detect = detect  # type: ignore[method-assign,assignment]
        applied.append("fitdet")
    unknown = set(names) - {"draft", "fitdet"}
    if unknown:
        raise SystemExit(f"unknown prototype(s): {', '.join(sorted(unknown))}")
    return applied


# -- photos -----------------------------------------------------------------------------------
def cover_resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale to cover `size` (swapped for portrait sources) and centre-crop: a phone-sized photo."""
    w, h = img.size
    tw, th = size if w >= h else (size[1], size[0])
    f = max(tw / w, th / h)
    big = img.convert("RGB").resize((round(w * f), round(h * f)), Image.Resampling.BICUBIC)
    x, y = (big.width - tw) // 2, (big.height - th) // 2
    return big.crop((x, y, x + tw, y + th))


def make_phone_photo(src: Path, fmt: str) -> bytes:
    """A 12 MP photo from a dev photo: upscaled to 4000x3000, JPEG q90 or HEIC q90."""
    img = cover_resize(Image.open(src), PHONE_SIZE)
    buf = io.BytesIO()
    if fmt == "HEIF":
        from pillow_heif import register_heif_opener

        register_heif_opener()
        img.save(buf, format="HEIF", quality=90)
    else:
        img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def large_dev_photos(min_side: int = 1200) -> list[Path]:
    """Dev photos whose long side is at least `min_side` pixels (the 1280 px class)."""
    out = []
    for p in sorted(common.DEV_DIR.glob("*/*.jpg")):
        with Image.open(p) as im:
            if max(im.size) >= min_side:
                out.append(p)
    return out


# -- part 1: per photo ------------------------------------------------------------------------
STAGES = ("decode", "detect", "embed", "rest", "total")


@dataclass(frozen=True, slots=True)
class StageTimes:
    """Median milliseconds per stage for one photo: wall clock, and process CPU time (all threads).

    Stages: decode; detect (SCRFD + alignment); embed (ArcFace); rest (quality + thumbnail); total
    (Engine._prepare_enrollment end to end). CPU time is robust to other work on the machine; with
    --inference-threads 2 it also counts onnxruntime's second thread, including its spin-waiting.
    """

    label: str
    pixels: str
    nbytes: int
    faces: int
    wall: dict[str, float]
    cpu: dict[str, float]


def time_stages(engine: Engine, label: str, data: bytes, repeats: int) -> StageTimes:
    """Time each stage of the enrollment CPU path on one photo (single thread of work)."""
    c = engine.config
    fm = engine.faces
    wall: dict[str, list[float]] = {k: [] for k in STAGES}
    cpu: dict[str, list[float]] = {k: [] for k in STAGES}
    n_faces = 0
    size = ""
    for r in range(repeats + 1):  # the first round warms up (sessions per input size, caches)
        marks = [(time.perf_counter(), time.process_time())]
        d = decode(data, max_bytes=c.max_image_bytes, max_pixels=c.max_image_pixels, max_side=c.max_side)
        marks.append((time.perf_counter(), time.process_time()))
        faces = fm.detect_faces(d.bgr)
        marks.append((time.perf_counter(), time.process_time()))
        embedded = fm.embed(faces)
        marks.append((time.perf_counter(), time.process_time()))
        for f in embedded:
            fm.quality(f, d.scale)
            fm.thumbnail(d.bgr, f.box)
        marks.append((time.perf_counter(), time.process_time()))
        try:
            engine._prepare_enrollment(data, None)
        except EngineError:
            pass
        marks.append((time.perf_counter(), time.process_time()))
        if r:
            for i, k in enumerate(STAGES):
                wall[k].append((marks[i + 1][0] - marks[i][0]) * 1000)
                cpu[k].append((marks[i + 1][1] - marks[i][1]) * 1000)
        n_faces = len(faces)
        size = f"{d.original_size[0]}x{d.original_size[1]}->{d.bgr.shape[1]}x{d.bgr.shape[0]}"
    return StageTimes(
        label, size, len(data), n_faces,
        {k: statistics.median(v) for k, v in wall.items()}, {k: statistics.median(v) for k, v in cpu.items()},
    )


# -- part 2: throughput -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Throughput:
    """What an ingestion run did and how fast."""

    images: int
    enrolled: int
    faces: int
    no_face: int
    seconds: float
    cpu_s: float  # process CPU time over the run
    open_s: float
    load_start: float
    load_end: float

    @property
    def ips(self) -> float:
        """Images per second, all photos offered (no-face ones take the same work)."""
        return self.images / self.seconds if self.seconds else float("nan")

    @property
    def cpu_ips(self) -> float:
        """Images per second if this process had every core to itself: images / (CPU seconds / cores)."""
        return self.images / (self.cpu_s / (common.machine()["nproc"])) if self.cpu_s else float("nan")  # type: ignore[operator]


async def ingest(config: EngineConfig, photos: Sequence[tuple[bytes, str, str | None]], concurrency: int) -> Throughput:
    """Enroll photos (bytes, source_url, subject) into a fresh data dir through Engine.enroll."""
    t_open = time.perf_counter()
    engine = await Engine.open(config)
    open_s = time.perf_counter() - t_open
    sem = asyncio.Semaphore(concurrency)
    faces = enrolled = no_face = 0

    async def one(data: bytes, url: str, subject: str | None) -> None:
        """Enroll one photo, counting the outcome."""
        nonlocal faces, enrolled, no_face
        async with sem:
            try:
                e = await engine.enroll(data, source_url=url, subject=subject, actor="bench", save=False)
            except EngineError:
                no_face += 1
                return
            enrolled += 1
            faces += e.faces

    load0 = common.load_avg()[0]
    t0 = time.perf_counter()
    c0 = time.process_time()
    await asyncio.gather(*(one(d, u, s) for d, u, s in photos))
    await engine.save_index()
    seconds = time.perf_counter() - t0
    cpu_s = time.process_time() - c0
    await engine.close()
    return Throughput(len(photos), enrolled, faces, no_face, seconds, cpu_s, open_s, load0, common.load_avg()[0])


def profile_single(engine: Engine, photos: Sequence[bytes], top: int) -> str:
    """cProfile of Engine._prepare_enrollment over photos, one at a time: where the CPU time goes.

    The profiler's clock is process CPU time, so other work on the machine does not inflate it.
    """
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    for data in photos:
        try:
            engine._prepare_enrollment(data, None)
        except EngineError:
            pass
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def tar_at_far(vectors: np.ndarray, ident: np.ndarray, far: float = 1e-3) -> tuple[float, float]:
    """Verification on labelled embeddings: share of same-person pairs above the stranger threshold at `far`."""
    sims = vectors @ vectors.T
    iu = np.triu_indices(len(vectors), 1)
    same = ident[iu[0]] == ident[iu[1]]
    s = sims[iu]
    threshold = float(np.quantile(s[~same], 1 - far))
    return float((s[same] > threshold).mean()), threshold


def parity_check(engine: Engine, photos: Sequence[tuple[Path, str]]) -> dict[str, float]:
    """Default 640x640 detection against the fitted input (fitdet prototype) on the same photos."""
    fm = engine.faces
    c = engine.config
    out: dict[str, list] = {"count_diff": [], "cos": [], "nf_default": [], "nf_fit": [], "ms_default": [], "ms_fit": []}
    emb: dict[bool, list[np.ndarray]] = {False: [], True: []}
    ids: list[str] = []
    for path, name in photos:
        d = decode(path.read_bytes(), max_bytes=c.max_image_bytes, max_pixels=c.max_image_pixels, max_side=c.max_side)
        got = {}
        for fit in (False, True):
            fm.bench_fit = fit  # type: ignore[attr-defined]
            t0 = time.perf_counter()
            faces = fm.detect_faces(d.bgr)
            out["ms_fit" if fit else "ms_default"].append((time.perf_counter() - t0) * 1000)
            got[fit] = faces
        fm.bench_fit = True  # type: ignore[attr-defined]
        out["count_diff"].append(len(got[False]) != len(got[True]))
        out["nf_default"].append(not got[False])
        out["nf_fit"].append(not got[True])
        if got[False] and got[True]:
            h, w = d.bgr.shape[:2]
            vecs = {}
            for fit in (False, True):
                boxes = np.stack([f.box for f in got[fit]])
                chosen = got[fit][primary_face(boxes, w, h, c.primary_rule)]
                vec = fm.embed([chosen])[0].embedding
                assert vec is not None
                vecs[fit] = vec
                emb[fit].append(vec)
            ids.append(name)
            out["cos"].append(float(np.dot(vecs[False], vecs[True])))
    cos = np.asarray(out["cos"])
    result = {
        "photos": len(photos), "face_count_differs": int(np.sum(out["count_diff"])),
        "no_face_default": int(np.sum(out["nf_default"])), "no_face_fitted": int(np.sum(out["nf_fit"])),
        "primary_cos_mean": float(cos.mean()), "primary_cos_p1": float(np.percentile(cos, 1)),
        "primary_cos_min": float(cos.min()), "detect_ms_default": statistics.median(out["ms_default"]),
        "detect_ms_fitted": statistics.median(out["ms_fit"]),
    }
    labels = np.unique(np.asarray(ids), return_inverse=True)[1]
    for fit in (False, True):
        tar, thr = tar_at_far(np.stack(emb[fit]), labels)
        result["tar_far1e-3_" + ("fitted" if fit else "default")] = tar
    return result


def run(args: argparse.Namespace) -> int:
    """Run parts 1 and 2 and print the results."""
    applied = apply_prototypes([p for p in args.proto.split(",") if p])
    base = EngineConfig()
    overrides: dict[str, object] = {}
    for name in ("workers", "inference_threads", "max_side", "det_size"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    m0 = common.machine()
    logger.info("machine at start: %s; prototypes: %s; config overrides: %s", m0, applied or "none", overrides)

    calib = common.calib_photos()
    if args.limit:
        calib = calib[: args.limit]
    lfw_path = calib[0][0]
    big = large_dev_photos()
    mid_path = next((p for p in big if max(Image.open(p).size) == 1280), big[0])
    phone_src = [p for p in big if max(Image.open(p).size) >= 1200]

    results: list[StageTimes] = []
    with tempfile.TemporaryDirectory(prefix="sightline-bench-") as tmp:
        tmpdir = Path(tmp)
        config = replace(base, data_dir=tmpdir / "single", **overrides)  # type: ignore[arg-type]
        phone_jpeg = make_phone_photo(mid_path, "JPEG")
        phone_heic = make_phone_photo(mid_path, "HEIF")
        (tmpdir / "phone.jpg").write_bytes(phone_jpeg)
        (tmpdir / "phone.heic").write_bytes(phone_heic)

        async def single() -> None:
            """Part 1 on one engine: per-photo stages, then the optional parity check and profile."""
            engine = await Engine.open(config)
            try:
                for label, data in (
                    ("lfw_250", lfw_path.read_bytes()),
                    ("photo_1280", mid_path.read_bytes()),
                    ("phone_12mp_jpeg", phone_jpeg),
                    ("phone_12mp_heic", phone_heic),
                ):
                    results.append(time_stages(engine, label, data, args.repeats))
                    logger.info("%s", results[-1])
                if args.parity and "fitdet" in applied:
                    par = parity_check(engine, calib[: args.parity] if args.parity > 0 else calib)
                    common.emit("# fitdet parity (640x640 vs fitted input, same photos): " + common.kv_line(par))
                if args.profile:
                    sample = [p.read_bytes() for p, _ in calib[: args.profile]]
                    common.emit(f"# cProfile: Engine._prepare_enrollment over {len(sample)} calib photos, tottime")
                    common.emit(profile_single(engine, sample, 25))
                    common.emit("# cProfile: Engine._prepare_enrollment over 5 x 12 MP JPEG, tottime")
                    common.emit(profile_single(engine, [phone_jpeg] * 5, 25))
            finally:
                await engine.close()

        asyncio.run(single())

        if args.no_ingest:
            lfw = phone = Throughput(0, 0, 0, 0, float("nan"), float("nan"), 0.0, 0.0, 0.0)
        else:
            lfw, phone = ingest_sets(args, config, tmpdir, calib, phone_src)
    report(args, applied, config, m0, lfw_path, mid_path, results, lfw, phone)
    return 0


def ingest_sets(
    args: argparse.Namespace, config: EngineConfig, tmpdir: Path, calib: Sequence[tuple[Path, str]],
    phone_src: Sequence[Path],
) -> tuple[Throughput, Throughput]:
    """Part 2: the calib set, then distinct 12 MP JPEGs, each into a fresh data dir through Engine.enroll."""
    lfw_photos = [(p.read_bytes(), f"file://calib/{p.parent.name}/{p.name}", p.parent.name) for p, _ in calib]
    logger.info("ingesting %d calib photos with concurrency %d", len(lfw_photos), args.concurrency)
    lfw = asyncio.run(ingest(replace(config, data_dir=tmpdir / "lfw"), lfw_photos, args.concurrency))
    logger.info("calib: %.1f images/s (%s)", lfw.ips, lfw)

    phones: list[tuple[bytes, str, str | None]] = []
    srcs = (phone_src * (args.phone_count // max(1, len(phone_src)) + 1))[: args.phone_count]
    for i, src in enumerate(srcs):
        # Distinct bytes per copy (the engine skips a photo it has seen): vary the JPEG quality a little.
        img = cover_resize(Image.open(src), PHONE_SIZE)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90 - (i // max(1, len(phone_src))))
        phones.append((buf.getvalue(), f"file://phone/{i}.jpg", None))
    logger.info("ingesting %d 12 MP JPEGs", len(phones))
    phone = asyncio.run(ingest(replace(config, data_dir=tmpdir / "phone"), phones, args.concurrency))
    logger.info("12 MP: %.2f images/s (%s)", phone.ips, phone)
    return lfw, phone


def report(
    args: argparse.Namespace, applied: list[str], config: EngineConfig, m0: dict[str, str | int | float],
    lfw_path: Path, mid_path: Path, results: list[StageTimes], lfw: Throughput, phone: Throughput,
) -> None:
    """Print the tables and the final key=value line."""
    m1 = common.machine()
    common.emit(f"# pipeline bench  prototypes={','.join(applied) or 'none'} workers={config.workers} "
                f"inference_threads={config.inference_threads} det_size={config.det_size} max_side={config.max_side} "
                f"concurrency={args.concurrency}")
    common.emit(f"# machine  start: {common.kv_line(m0)}")
    common.emit(f"# machine  end:   {common.kv_line(m1)}")
    common.emit(f"# per photo, one at a time, median of {args.repeats} (ms): lfw={lfw_path.relative_to(common.SHARED_FACES)} "
                f"1280={mid_path.relative_to(common.SHARED_FACES)} (12 MP made from it)")
    common.emit(f"  {'photo':<16} {'pixels (orig->work)':<22} {'KB':>6} {'faces':>5}      "
                + " ".join(f"{k:>7}" for k in STAGES))
    for r in results:
        for kind, values in (("wall", r.wall), ("cpu", r.cpu)):
            common.emit(f"  {r.label:<16} {r.pixels:<22} {r.nbytes / 1024:>6.0f} {r.faces:>5} {kind:>4} "
                        + " ".join(f"{values[k]:>7.1f}" for k in STAGES))
    for name, t, target in (("calib (LFW 250 px)", lfw, TARGET_LFW_IPS), ("12 MP JPEG", phone, TARGET_12MP_IPS)):
        common.emit(f"# throughput {name}: {t.images} images ({t.enrolled} enrolled, {t.faces} faces, {t.no_face} no face) "
                    f"in {t.seconds:.1f} s = {t.ips:.2f} images/s (target {target:g}: "
                    f"{'ok' if t.ips >= target else 'MISSED'}); CPU {t.cpu_s:.1f} s = {t.cpu_ips:.2f} images/s on "
                    f"{m1['nproc']} idle cores; load1 {t.load_start:.1f}->{t.load_end:.1f}; "
                    f"Engine.open {t.open_s:.2f} s")
    by = {r.label: r for r in results}
    final = {
        "proto": ",".join(applied) or "none", "workers": config.workers, "threads": config.inference_threads,
        "lfw_ips": lfw.ips, "lfw_cpu_ips": lfw.cpu_ips, "phone12mp_ips": phone.ips, "phone12mp_cpu_ips": phone.cpu_ips,
        "lfw_ms": by["lfw_250"].wall["total"], "lfw_cpu_ms": by["lfw_250"].cpu["total"],
        "p1280_ms": by["photo_1280"].wall["total"], "p1280_cpu_ms": by["photo_1280"].cpu["total"],
        "p12mp_jpeg_ms": by["phone_12mp_jpeg"].wall["total"], "p12mp_jpeg_cpu_ms": by["phone_12mp_jpeg"].cpu["total"],
        "p12mp_heic_ms": by["phone_12mp_heic"].wall["total"], "p12mp_heic_cpu_ms": by["phone_12mp_heic"].cpu["total"],
        "p12mp_jpeg_decode_ms": by["phone_12mp_jpeg"].wall["decode"],
        "p12mp_heic_decode_ms": by["phone_12mp_heic"].wall["decode"],
        "lfw_faces": lfw.faces, "nproc": m1["nproc"], "load1_start": m0["load1"], "load1_end": m1["load1"],
    }
    common.emit(common.kv_line(final))


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run."""
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Targets: >= 25 images/s for LFW-sized photos, >= 6 images/s for 12 MP.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--repeats", type=int, default=10, help="timed repeats per photo in part 1 (median reported)")
    ap.add_argument("--concurrency", type=int, default=4, help="enrolls in flight in part 2 (semaphore)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N calib photos (part 2, --parity, --profile; 0: all)")
    ap.add_argument("--phone-count", type=int, default=40, help="distinct 12 MP JPEGs ingested in part 2")
    ap.add_argument("--proto", default="", help="comma list of engine-change prototypes: draft, fitdet")
    ap.add_argument("--workers", type=int, default=None, help="EngineConfig.workers (thread pool size)")
    ap.add_argument("--inference-threads", type=int, default=None, help="EngineConfig.inference_threads (onnxruntime intra-op)")
    ap.add_argument("--max-side", type=int, default=None, help="EngineConfig.max_side")
    ap.add_argument("--det-size", type=int, default=None, help="EngineConfig.det_size")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="also cProfile the enrollment path over N calib photos")
    ap.add_argument("--no-ingest", action="store_true", help="skip part 2 (throughput)")
    ap.add_argument("--parity", type=int, default=0, metavar="N",
                    help="with --proto fitdet: compare detection at 640x640 and fitted on N calib photos (-1: all)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    common.setup_logging(args.verbose)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
