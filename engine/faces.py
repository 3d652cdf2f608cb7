"""FaceModel: SCRFD detection and ArcFace embedding on onnxruntime. Synchronous, compute only."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from .config import (
    ALTERNATIVE_DETECTORS,
    ALTERNATIVE_RECOGNIZERS,
    DEFAULT_DETECTOR,
    DEFAULT_RECOGNIZER,
    EngineConfig,
)
from .errors import ModelError
from .images import DETECTOR_SIDE, ELONGATED, file_sha256
from .types import Box, Quality

logger = logging.getLogger(__name__)

EMBEDDING_DIM = 512
SMALL_FACE_PX = 48  # below this width in the detector's input, faces are often missed at 640
# Detector input sides. SCRFD letterboxes every image into its input, so a 250 px photo at 640 is upscaled
# 2.6x and costs 6.5x the pixels it needs (bench/pipeline.py: 25.7 -> 6.8 ms per LFW photo at 320, TAR at
# FAR 1e-3 unchanged on calib). Few sizes, because insightface keeps one session per input size; 320 is the
# floor because 256 lost some small background faces.
DET_BUCKETS = (320, 416, 512, 640)
# Orientation not recorded in EXIF: a face is "confident" when the detector gives it >= 0.72 and its landmarks
# put the mouth within 30 degrees of straight below the eyes. On the 174 dev photos every upright photo kept
# its orientation (5.7% were tried in the others too), and turned copies were put upright 98.3% of the time
# at 90/270 degrees and 93.7% at 180 (the detector's score alone does not tell: turned faces score up to 0.81).
CONFIDENT_SCORE = 0.72
# A turned copy replaces a photo in which an upright face was found (below CONFIDENT_SCORE) only when the detector
# is surer of the turned copy's upright face by more than this. At a 320-px input an upside-down copy of an upright
# face can outscore it by up to 0.067: 15 of the 2,254 calib photos were turned 180 degrees and embedded upside
# down, raising the FMR 1e-5 threshold from 0.336 to 0.423. On half the calib photos plus those 15 (1,151 rows)
# and their turned copies, 0.1 turns no upright photo (the 15 before); 90/270-degree copies are put upright as
# before (1,114 vs 1,116 of 1,151), 180-degree ones less often (949 vs 1,072: some stay as sent).
TURN_MARGIN = 0.1
UPRIGHT_ROLL = 30.0
ROTATIONS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}
SAME_FACE_OVERLAP = 0.5  # two detections from overlapping tiles whose overlap covers half the smaller are one face
# A heavily blurred photo (Pillow GaussianBlur radius 8-16 on a dev photo, any orientation) can read to SCRFD as one
# "face" whose box covers the whole frame, at 0.35-0.69, with 5 plausible-looking landmarks (it passes det_threshold
# 0.5 in a turned copy, or the second look's 0.35), and such a face was searched and gave "possible" hits. Such a
# detection is dropped when its box covers FRAME_FILLING of the frame's width and height, its score is below
# CONFIDENT_SCORE, and its landmarks span LANDMARK_SPREAD of the box's longer side or more (the eyes-to-mouth or
# eye-to-eye span of a real face is ~0.38 of its box: 99th percentile 0.52 over 2,062 real faces). Measured on 58
# dev photos blurred at radius 0-16 and turned 0/90/180/270, and 44 close-up crops (the face filling the frame,
# blurred or not; bench/RESULTS.md, "Whole-frame false faces"): it drops 58 of the 68 whole-frame false faces,
# no real face in ordinary framing (0 of 1,326), and 18 of 786 close-ups, all blurred at 5 % of the face's width.
FRAME_FILLING = 0.75
LANDMARK_SPREAD = 0.5


def det_input_size(width: int, height: int, cap: int) -> tuple[int, int]:
    """The detector input for an image: the smallest bucket that holds its long side, at most `cap`."""
    long_side = max(width, height)
    side = next((b for b in DET_BUCKETS if long_side <= b <= cap), cap)
    return side, side


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one box with each of several (x1, y1, x2, y2)."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def rotate(bgr: np.ndarray, degrees: int) -> np.ndarray:
    """The image turned clockwise by 0, 90, 180 or 270 degrees."""
    return bgr if degrees == 0 else np.ascontiguousarray(cv2.rotate(bgr, ROTATIONS[degrees]))


def unrotate_box(box: np.ndarray, degrees: int, width: int, height: int) -> np.ndarray:
    """A box found in an image turned `degrees` clockwise, in the unturned image (`width` x `height` px)."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    if degrees == 90:
        out = (y1, height - x2, y2, height - x1)
    elif degrees == 180:
        out = (width - x2, height - y2, width - x1, height - y1)
    elif degrees == 270:
        out = (width - y2, x1, width - y1, x2)
    else:
        out = (x1, y1, x2, y2)
    return np.asarray(out, dtype=np.float32)


def face_roll(kps: np.ndarray) -> float:
    """In-plane roll in degrees from the 5 landmarks: 0 when the mouth is straight below the eyes, 180 upside down."""
    k = np.asarray(kps, dtype=np.float64)
    down = (k[3] + k[4]) / 2 - (k[0] + k[1]) / 2
    return math.degrees(math.atan2(-down[0], down[1]))


def frame_filling_doubt(box: np.ndarray, score: float, kps: np.ndarray, width: int, height: int) -> bool:
    """True for a detection that is most likely a blurred frame read as one face (see FRAME_FILLING): its box (x1, y1,
    x2, y2, px) covers FRAME_FILLING of the `width` x `height` frame both ways, its score is below CONFIDENT_SCORE, and
    its 5 landmarks (5x2, px) span LANDMARK_SPREAD of the box's longer side or more."""
    bw, bh = float(box[2] - box[0]), float(box[3] - box[1])
    if bw < FRAME_FILLING * width or bh < FRAME_FILLING * height or score >= CONFIDENT_SCORE:
        return False
    k = np.asarray(kps, dtype=np.float64)
    span = max(float(np.ptp(k[:, 0])), float(np.ptp(k[:, 1])))
    return span >= LANDMARK_SPREAD * max(bw, bh, 1e-6)


def merge_detections(boxes: np.ndarray, kps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Detections from overlapping tiles without repeats: of two boxes covering the same face, the surer one."""
    if len(boxes) == 0:
        return boxes, kps
    keep: list[int] = []
    for i in np.argsort(-boxes[:, 4], kind="stable"):
        b = boxes[i]
        area = (b[2] - b[0]) * (b[3] - b[1])
        dup = False
        for j in keep:
            o = boxes[j]
            inter = max(0.0, min(b[2], o[2]) - max(b[0], o[0])) * max(0.0, min(b[3], o[3]) - max(b[1], o[1]))
            if inter >= SAME_FACE_OVERLAP * max(min(area, (o[2] - o[0]) * (o[3] - o[1])), 1e-9):
                dup = True
                break
        if not dup:
            keep.append(int(i))
    return boxes[keep], kps[keep]


def tiles(length: int, short: int) -> list[tuple[int, int]]:
    """(start, stop) windows along an elongated image's long side.

    Each window is twice the short side long (at least DETECTOR_SIDE px) and they overlap by the short side,
    so every face no larger than the image is high lies wholly inside one window.
    """
    window = min(length, max(2 * short, DETECTOR_SIDE))
    step = max(1, window - short)
    starts = list(range(0, max(length - window, 0) + 1, step))
    if starts[-1] + window < length:
        starts.append(length - window)
    return [(s, s + window) for s in starts]


@dataclass(frozen=True, slots=True)
class Found:
    """Where the faces of a photo were found: which of its frames, turned how far, and the faces."""

    index: int  # 0-based, into the frames given to FaceModel.find_faces
    rotation: int  # degrees clockwise the frame was turned (0, 90, 180, 270)
    bgr: np.ndarray  # the frame as analysed (turned)
    faces: list[RawFace]


def upright_score(faces: Sequence[RawFace]) -> float:
    """The best detector score among faces whose landmarks say they are upright (0 when none is)."""
    return max((f.score for f in faces if abs(face_roll(f.kps)) <= UPRIGHT_ROLL), default=0.0)


@dataclass(frozen=True, slots=True)
class RawFace:
    """A detected face in working-image pixels, with its 5 landmarks and embedding."""

    box: np.ndarray  # x1, y1, x2, y2 (float32)
    score: float
    kps: np.ndarray  # 5x2
    aligned: np.ndarray  # 112x112 BGR crop, aligned on the landmarks
    embedding: np.ndarray | None = None  # 512 float32, L2-normalised, once embedded
    retried: bool = False  # found only by the low-confidence retry (FaceModel.retry_faces): always poor quality


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _pick(folder: Path, configured: str | None, default: str, alternatives: tuple[str, ...], what: str) -> Path:
    if configured:
        path = folder / configured
        if not path.is_file():
            raise ModelError(f"the {what} model {path} does not exist")
        return path
    for name in (default, *alternatives):
        if (folder / name).is_file():
            return folder / name
    raise ModelError(
        f"no {what} model in {folder}: expected {default} or one of {', '.join(alternatives)}"
    )


def primary_face(boxes: np.ndarray, width: int, height: int, rule: str = "central") -> int:
    """Index of the face a photo is "about".

    `largest`: the biggest box. `central`: among faces at least half as wide as the largest, the one
    whose centre is nearest the image centre. A labelled gallery photo (LFW-style) centres its subject;
    a phone query usually centres the person photographed; a tiny face at the centre of a crowd shot
    is not the subject, hence the size floor.
    """
    if len(boxes) == 0:
        raise ValueError("no faces")
    widths = boxes[:, 2] - boxes[:, 0]
    if rule == "largest":
        areas = widths * (boxes[:, 3] - boxes[:, 1])
        return int(np.argmax(areas))
    if rule != "central":
        raise ValueError(f"unknown primary-face rule {rule!r}")
    candidates = np.flatnonzero(widths >= 0.5 * widths.max())
    cx = (boxes[candidates, 0] + boxes[candidates, 2]) / 2 - width / 2
    cy = (boxes[candidates, 1] + boxes[candidates, 3]) / 2 - height / 2
    return int(candidates[int(np.argmin(cx * cx + cy * cy))])


def estimate_pose(kps: np.ndarray) -> tuple[float, float]:
    """Rough yaw and pitch in degrees from the 5 landmarks (eyes, nose, mouth corners)."""
    le, re, nose, lm, rm = (np.asarray(p, dtype=np.float64) for p in kps)
    eye_mid = (le + re) / 2
    axis = (lm + rm) / 2 - eye_mid  # eyes -> mouth: the face's midline, whatever the in-plane roll
    length = float(np.linalg.norm(axis)) or 1.0
    rel = nose - eye_mid
    # Yaw: the nose tip stands ~25 mm in front of the eye-mouth plane and the eyes are ~64 mm apart, so
    # turning by t moves the nose off the midline by 25 sin t while the eye distance shrinks to 64 cos t:
    # offset / eye distance = 0.39 tan t. Measured perpendicular to the midline, so roll does not count.
    offset = (axis[0] * rel[1] - axis[1] * rel[0]) / length
    eye_dist = float(np.linalg.norm(re - le)) or 1.0
    yaw = math.degrees(math.atan2(offset, 0.39 * eye_dist))
    # Pitch: where the nose falls along the midline (0.53 of the way down on frontal faces, the median
    # on LFW); a rough linear map, reported but not used for warnings.
    ratio = float(np.dot(rel, axis)) / (length * length)
    pitch = max(-90.0, min(90.0, (ratio - 0.53) * 150.0))
    return yaw, pitch


class FaceModel:
    """Detector + recognizer sessions, created once with thread counts we choose."""

    def __init__(self, config: EngineConfig) -> None:
        import onnxruntime as ort
        from insightface.model_zoo import get_model

        folder = config.resolved_model_dir()
        if not folder.is_dir():
            raise ModelError(f"the model folder {folder} does not exist")
        det_path = _pick(folder, config.detector_file, DEFAULT_DETECTOR, ALTERNATIVE_DETECTORS, "detection")
        rec_path = _pick(folder, config.recognizer_file, DEFAULT_RECOGNIZER, ALTERNATIVE_RECOGNIZERS, "recognition")
        self.config = config
        self.detector_path = det_path
        self.recognizer_path = rec_path
        self.recognizer_sha256 = file_sha256(rec_path)
        self.name = f"{det_path.name}+{rec_path.name}"

        def options() -> ort.SessionOptions:
            so = ort.SessionOptions()
            so.intra_op_num_threads = max(1, config.inference_threads)
            so.inter_op_num_threads = 1
            # w600k_mbf declares a batch of 1; batches work but onnxruntime warns on every run.
            so.log_severity_level = 3
            return so

        providers = ["CPUExecutionProvider"]
        try:
            self.detector = get_model(str(det_path), providers=providers, sess_options=options())
            self.recognizer = get_model(str(rec_path), providers=providers, sess_options=options())
        except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
            raise ModelError(f"cannot load the face models from {folder}: {exc}") from None
        if self.detector is None or self.detector.__class__.__name__ != "SCRFD":
            raise ModelError(f"{det_path} is not an SCRFD face detector")
        if self.recognizer is None or self.recognizer.__class__.__name__ != "ArcFaceONNX":
            raise ModelError(f"{rec_path} is not an ArcFace recognition model")
        self.detector.det_thresh = config.det_threshold
        self.det_size = (config.det_size, config.det_size)
        logger.info("face models loaded: %s (recognizer sha256 %s)", self.name, self.recognizer_sha256[:12])

    # -- detection ---------------------------------------------------------------------------
    def detect(self, bgr: np.ndarray, small_faces: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (n, 5: x1 y1 x2 y2 score) and landmarks (n, 5, 2); retries once on a padded image.

        With `small_faces`, a photo larger than `small_face_side` is also detected at that input size,
        and the faces too small for the first pass (under ~48 px in its input) that it did not find are
        added: in a 12 MP photo the 640 pass misses most 60 px faces, while a 1280 pass on close-ups
        loses accuracy, so the first pass keeps every face it found.
        """
        h, w = bgr.shape[:2]
        if max(h, w) > ELONGATED * min(h, w):
            return self._detect_tiled(bgr)
        size = det_input_size(bgr.shape[1], bgr.shape[0], self.det_size[0])
        boxes, kps = self.detector.detect(bgr, input_size=size)
        side = self.config.small_face_side
        if small_faces and self.config.small_face_pass and max(bgr.shape[:2]) > side:
            b2, k2 = self.detector.detect(bgr, input_size=(side, side))
            if len(b2):
                first_scale = self.det_size[0] / max(bgr.shape[:2])  # first-pass input px per image px
                small = (b2[:, 2] - b2[:, 0]) * first_scale < SMALL_FACE_PX
                new = [i for i in np.flatnonzero(small) if len(boxes) == 0 or iou(b2[i, :4], boxes[:, :4]).max() < 0.3]
                if new:
                    boxes = np.concatenate([boxes.reshape(-1, 5), b2[new]])
                    kps = np.concatenate([kps.reshape(-1, 5, 2), k2[new]])
        if len(boxes) == 0 and self.config.pad_retry:
            # A face that fills the frame is missed at 640x640: give it a border and try again.
            h, w = bgr.shape[:2]
            pad = max(h, w) // 2
            padded = cv2.copyMakeBorder(bgr, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            boxes, kps = self.detector.detect(padded, input_size=size)
            if len(boxes):
                boxes = boxes.copy()
                boxes[:, :4] -= pad
                kps = kps - pad
                boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
                boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        if kps is None:
            raise ModelError("the detection model gives no landmarks; a keypoint SCRFD model is needed")
        return boxes.astype(np.float32), kps.astype(np.float32)

    def _detect_tiled(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Detection on a panorama or long screenshot, window by window along its long side (see `tiles`)."""
        h, w = bgr.shape[:2]
        across = w >= h
        all_boxes, all_kps = [np.empty((0, 5), np.float32)], [np.empty((0, 5, 2), np.float32)]
        for start, stop in tiles(max(h, w), min(h, w)):
            tile = np.ascontiguousarray(bgr[:, start:stop] if across else bgr[start:stop, :])
            size = det_input_size(tile.shape[1], tile.shape[0], self.det_size[0])
            boxes, kps = self.detector.detect(tile, input_size=size)
            if kps is None:
                raise ModelError("the detection model gives no landmarks; a keypoint SCRFD model is needed")
            if len(boxes):
                boxes, kps = boxes.astype(np.float32).copy(), kps.astype(np.float32).copy()
                axis = 0 if across else 1
                boxes[:, [axis, axis + 2]] += start
                kps[:, :, axis] += start
                all_boxes.append(boxes)
                all_kps.append(kps)
        return merge_detections(np.concatenate(all_boxes), np.concatenate(all_kps))

    def find_faces(self, frames: Sequence[np.ndarray], small_faces: bool = False, retry: bool = False) -> Found:
        """The first frame that holds a face, turned upright, with its faces (none found: frame 0, no faces).

        A frame whose faces are not confident (CONFIDENT_SCORE, UPRIGHT_ROLL) is also tried turned by 90, 180
        and 270 degrees, and the orientation whose upright face the detector is surest of wins (by more than
        TURN_MARGIN over an upright face found as given). With `retry`
        (queries), a photo in which none of that finds a face gets `retry_faces` on each frame as given.
        """
        for i, bgr in enumerate(frames):
            faces = self.detect_faces(bgr, small_faces)
            if upright_score(faces) >= CONFIDENT_SCORE:
                return Found(i, 0, bgr, faces)
            tried = [(0, bgr, faces)]
            for degrees in ROTATIONS:
                turned = rotate(bgr, degrees)
                tried.append((degrees, turned, self.detect_faces(turned, small_faces)))
            best = max(tried, key=lambda t: upright_score(t[2]))
            if best[0] != 0 and upright_score(faces) > 0 and upright_score(best[2]) <= upright_score(faces) + TURN_MARGIN:
                best = tried[0]  # an upright face as given, and no turn clearly surer of its own: keep the photo
            if upright_score(best[2]) > 0:
                return Found(i, best[0], best[1], best[2])
            if faces:  # faces, but none upright in any orientation (a tilted head): keep the photo as given
                return Found(i, 0, bgr, faces)
            turned_faces = next((t for t in tried if t[2]), None)
            if turned_faces is not None:
                return Found(i, turned_faces[0], turned_faces[1], turned_faces[2])
        if retry:
            for i, bgr in enumerate(frames):
                faces = self.retry_faces(bgr)
                if faces:
                    return Found(i, 0, bgr, faces)
        return Found(0, 0, frames[0], [])

    def retry_faces(self, bgr: np.ndarray) -> list[RawFace]:
        """Faces found at the retry confidence and input size (EngineConfig.det_retry_*), marked `retried`, but for a
        blurred frame read as one face (`frame_filling_doubt`).

        For a photo in which the normal pass found nothing; [] when the retry is off (threshold 0; default 0.35).
        SCRFD enlarges a small photo to fill its 320-px input, and a small, blurred, noisy face enlarged 4x looks
        unlike the faces it learned; detected near its own size (a 64-px input) at confidence 0.35, it finds a
        third of the faces the normal pass missed on severely degraded calib probes, and 4 on 2,198 face-free
        images (bench/RESULTS.md, bench/noface.py). The cost is one 64-px detection, only when nothing was found.
        """
        c = self.config
        if c.det_retry_threshold <= 0:
            return []
        boxes, kps = self.detector.detect(bgr, input_size=(c.det_retry_size, c.det_retry_size), det_thresh=c.det_retry_threshold)
        if kps is None:
            raise ModelError("the detection model gives no landmarks; a keypoint SCRFD model is needed")
        if len(boxes) == 0:
            return []
        h, w = bgr.shape[:2]
        boxes = boxes.astype(np.float32).copy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        kps = kps.astype(np.float32)
        order = [i for i in np.argsort(boxes[:, 0], kind="stable").tolist() if not self._doubtful(boxes[i], kps[i], w, h)]
        found = [
            RawFace(box=boxes[i, :4].copy(), score=float(boxes[i, 4]), kps=kps[i], aligned=self.align(bgr, kps[i]), retried=True)
            for i in order
        ]
        logger.debug("retry found %d face(s) at confidence >= %.2f", len(found), c.det_retry_threshold)
        return found

    @staticmethod
    def _doubtful(box: np.ndarray, kps: np.ndarray, width: int, height: int) -> bool:
        """`frame_filling_doubt` for one detection (x1, y1, x2, y2, score), logged when it is dropped."""
        if not frame_filling_doubt(box, float(box[4]), kps, width, height):
            return False
        logger.info("dropped a detection covering the whole frame at low confidence (%.2f): a blurred photo, not a face",
                    float(box[4]))
        return True

    # -- embedding ---------------------------------------------------------------------------
    def align(self, bgr: np.ndarray, kps: np.ndarray) -> np.ndarray:
        """The 112x112 crop ArcFace expects, aligned on the 5 landmarks."""
        from insightface.utils import face_align

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # scikit-image deprecation inside insightface
            return face_align.norm_crop(bgr, landmark=kps, image_size=self.recognizer.input_size[0])

    def embed_aligned(self, crops: list[np.ndarray]) -> np.ndarray:
        """L2-normalised embeddings (n, 512) of aligned crops, in one batch."""
        if not crops:
            return np.empty((0, EMBEDDING_DIM), dtype=np.float32)
        feats = self.recognizer.get_feat(crops)
        if self.config.flip_fusion:
            feats = feats + self.recognizer.get_feat([c[:, ::-1] for c in crops])
        return l2_normalize(feats)

    def detect_faces(self, bgr: np.ndarray, small_faces: bool = False) -> list[RawFace]:
        """Detect every face and align it (no embedding yet), ordered left to right; a blurred frame read as one face
        (`frame_filling_doubt`) is left out."""
        boxes, kps = self.detect(bgr, small_faces)
        h, w = bgr.shape[:2]
        order: list[int] = np.argsort(boxes[:, 0], kind="stable").tolist() if len(boxes) else []
        order = [i for i in order if not self._doubtful(boxes[i], kps[i], w, h)]
        return [
            RawFace(box=boxes[i, :4].copy(), score=float(boxes[i, 4]), kps=kps[i], aligned=self.align(bgr, kps[i]))
            for i in order
        ]

    def embed(self, faces: list[RawFace]) -> list[RawFace]:
        """The same faces with their embeddings, computed in one batch."""
        embs = self.embed_aligned([f.aligned for f in faces])
        return [replace(f, embedding=embs[i]) for i, f in enumerate(faces)]

    # -- quality -----------------------------------------------------------------------------
    def quality(self, face: RawFace, scale: float) -> Quality:
        """Detection score, size in original pixels, sharpness and pose, with plain-word warnings.

        The floors (EngineConfig.quality_*) are where accuracy was measured to fall off on degraded
        calibration photos; see docs/model-card.md, "Image quality".
        """
        c = self.config
        analysed = int(round(float(face.box[2] - face.box[0])))  # what the recognizer saw (working image)
        width = int(round(analysed / max(scale, 1e-6)))
        gray = cv2.cvtColor(face.aligned, cv2.COLOR_BGR2GRAY)
        blur = float(cv2.Laplacian(gray, cv2.CV_64F).var())
        yaw, pitch = estimate_pose(face.kps)
        warnings_: list[str] = []
        # A big photo is scaled down before analysis (max_side): a face that is 60 px wide in a 12 MP
        # photo is analysed at 29 px, and it is the analysed size that limits accuracy.
        if analysed < c.quality_min_width:
            if width > analysed + 1:
                warnings_.append(f"face is {width} px wide, {analysed} px once the photo is scaled down (crop around it)")
            else:
                warnings_.append(f"face is {width} px wide")
        if face.retried:  # whatever its score: the normal pass did not see it (FaceModel.retry_faces)
            warnings_.append(f"face found only by a second, less strict detection ({face.score:.0%})")
        elif face.score < c.quality_min_det_score:
            warnings_.append(f"detector is unsure it is a face ({face.score:.0%})")
        if blur < c.quality_min_blur:
            warnings_.append("face is blurred")
        if abs(yaw) > c.quality_max_yaw:
            warnings_.append(f"head is turned (~{abs(yaw):.0f}°)")
        return Quality(
            det_score=round(face.score, 4),
            width_px=width,
            blur=round(blur, 1),
            yaw=round(yaw, 1),
            pitch=round(pitch, 1),
            ok=not warnings_,
            warnings=tuple(warnings_),
            second_look=face.retried,
        )

    def thumbnail(self, bgr: np.ndarray, box: np.ndarray) -> bytes:
        """A square JPEG of the face with some margin, for showing results."""
        from .images import encode_jpeg

        h, w = bgr.shape[:2]
        x1, y1, x2, y2 = (float(v) for v in box[:4])
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        side = max(x2 - x1, y2 - y1) * 1.4
        a, b = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
        c_, d = int(min(w, cx + side / 2)), int(min(h, cy + side / 2))
        crop = bgr[b:d, a:c_] if d > b and c_ > a else bgr
        size = self.config.thumbnail_size
        crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
        return encode_jpeg(crop, quality=80)


def to_original_box(box: np.ndarray, scale: float, rotation: int = 0, turned: tuple[int, int] = (0, 0)) -> Box:
    """A working-image box in the original image's pixels, as ints.

    With a `rotation`, the box was found in the working image turned that far clockwise, `turned` = its
    (width, height); the result is in the photo as it was given (EXIF applied), so it can be drawn on it.
    """
    if rotation:
        tw, th = turned
        box = unrotate_box(box, rotation, *((th, tw) if rotation in (90, 270) else (tw, th)))
    s = max(scale, 1e-6)
    x1, y1, x2, y2 = (int(round(float(v) / s)) for v in box[:4])
    return (x1, y1, x2, y2)
