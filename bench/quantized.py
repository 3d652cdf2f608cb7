"""What an int8 recognizer would buy: speed per face and agreement with the shipped float32 model.

The embedder is the largest CPU cost of a search (bench/RESULTS.md), and with 20 officers searching at
once on 2 cores, CPU per search is what sets the latency. This script quantizes the recognizer with
onnxruntime (static QDQ int8 by default, activation ranges from the first 200 faces; or dynamic:
weights int8, activations quantized at run time) into a temporary folder, never into the model
folder, and compares it with the original on the calib photos:

  * thread-CPU ms per face, one intra-op thread (as the engine runs it), both models, same crops;
  * cosine between each face's float32 and int8 embeddings;
  * verification on calib (primary face of each photo, all pairs): TAR at FAR 1e-3 / 1e-4 for both.

It is a measurement, not a product change: an int8 model produces different embeddings, so using
one means re-enrolling the gallery and running `sightline calibrate` for it.

    python bench/quantized.py [--photos 600]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (bench/ is not a package)

from engine import metrics  # noqa: E402
from engine.config import DEFAULT_RECOGNIZER, EngineConfig  # noqa: E402
from engine.faces import FaceModel, primary_face  # noqa: E402
from engine.images import decode  # noqa: E402

logger = logging.getLogger("bench.quantized")


def recognizer_session(path: Path):  # type: ignore[no-untyped-def]
    """An insightface ArcFace model on one intra-op thread, as FaceModel builds it."""
    import onnxruntime as ort
    from insightface.model_zoo import get_model

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    model = get_model(str(path), session=ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]))
    return model


def arcface_blob(model, crop: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The network input insightface's ArcFaceONNX.get_feat makes from one aligned BGR crop."""
    import cv2

    size = tuple(model.input_size)
    return cv2.dnn.blobFromImages([crop], 1.0 / model.input_std, size, (model.input_mean,) * 3, swapRB=True)


def timed_feats(model, crops: list[np.ndarray]) -> tuple[np.ndarray, float]:  # type: ignore[no-untyped-def]
    """Embeddings one crop at a time and the median thread-CPU ms per crop."""
    feats, times = [], []
    model.get_feat([crops[0]])  # warm-up
    for crop in crops:
        c0 = time.thread_time()
        feats.append(model.get_feat([crop])[0])
        times.append(time.thread_time() - c0)
    x = np.stack(feats).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), float(np.median(times) * 1e3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=0, help="only the first N calib photos (default: all 2,254)")
    ap.add_argument("--mode", choices=["static", "dynamic"], default="static",
                    help="static: QDQ int8 with activation ranges from --calibration faces (default); dynamic: "
                    "weights only, activations quantized at run time")
    ap.add_argument("--calibration", type=int, default=200, help="faces used for the static activation ranges")
    args = ap.parse_args(argv)
    common.setup_logging()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    m0 = common.machine()
    config = EngineConfig()
    src = config.resolved_model_dir() / (config.recognizer_file or DEFAULT_RECOGNIZER)
    faces = FaceModel(config)
    photos = common.calib_photos()
    if args.photos:
        photos = photos[: args.photos]
    crops, labels = [], []
    for path, identity in photos:
        d = decode(path.read_bytes(), max_bytes=config.max_image_bytes, max_pixels=config.max_image_pixels,
                   max_side=config.max_side)
        found = faces.detect_faces(d.bgr)
        if not found:
            continue
        h, w = d.bgr.shape[:2]
        boxes = np.stack([f.box for f in found])
        crops.append(found[primary_face(boxes, w, h, config.primary_rule)].aligned)
        labels.append(identity)
    logger.info("%d aligned primary faces from %d photos", len(crops), len(photos))
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / (src.stem + ".int8.onnx")
        fp32_model = recognizer_session(src)
        if args.mode == "dynamic":
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        else:  # static QDQ: activation ranges from the first --calibration crops (an operator's own faces would do)
            from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

            class Crops(CalibrationDataReader):
                def __init__(self) -> None:
                    self._it = iter(crops[: args.calibration])

                def get_next(self) -> dict[str, np.ndarray] | None:
                    crop = next(self._it, None)
                    if crop is None:
                        return None
                    return {fp32_model.input_name: arcface_blob(fp32_model, crop)}

            quantize_static(str(src), str(dst), Crops(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=False)  # the model is opset < 13
        fp32, ms32 = timed_feats(fp32_model, crops)
        int8, ms8 = timed_feats(recognizer_session(dst), crops)
        size32, size8 = src.stat().st_size, dst.stat().st_size
    agree = np.sum(fp32 * int8, axis=1)
    out = {}
    for name, x in (("fp32", fp32), ("int8", int8)):
        genuine, impostor = metrics.pair_scores(x, labels)
        for far in (1e-3, 1e-4):
            t = metrics.threshold_at_rate(impostor, far)
            out[f"{name}_tar_far{far:g}"] = metrics.share_at_or_above(genuine, t)
    m1 = common.machine()
    common.emit(f"# quantized recognizer  {src.name}: {size32 / 1e6:.1f} MB float32 -> {size8 / 1e6:.1f} MB int8 "
                f"(onnxruntime {args.mode} quantization); {len(crops)} calib faces")
    common.emit(f"# machine  start: {common.kv_line(m0)}")
    common.emit(f"# machine  end:   {common.kv_line(m1)}")
    common.emit(f"# per face (thread CPU, 1 intra-op thread): float32 {ms32:.1f} ms, int8 {ms8:.1f} ms")
    common.emit(f"# agreement: cosine(float32, int8) mean {agree.mean():.4f}, p1 {np.percentile(agree, 1):.4f}, "
                f"min {agree.min():.4f}")
    common.emit(common.kv_line({
        "mode": args.mode, "faces": len(crops), "fp32_ms": ms32, "int8_ms": ms8, "speedup": ms32 / ms8,
        "agree_mean": float(agree.mean()), "agree_p1": float(np.percentile(agree, 1)), **out,
        "load1_start": m0["load1"], "load1_end": m1["load1"],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
