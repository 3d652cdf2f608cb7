"""Typed, frozen results of the engine: plain Python values only (no numpy, no Telegram)."""

from __future__ import annotations

from dataclasses import dataclass, field

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels of the (EXIF-rotated) image


@dataclass(frozen=True, slots=True)
class Quality:
    """How usable a detected face is for recognition."""

    det_score: float  # detector confidence, 0..1
    width_px: int  # face box width in pixels of the original image
    blur: float  # variance of the Laplacian on the aligned 112x112 crop (higher is sharper)
    yaw: float  # estimated head yaw from the landmarks, degrees (0 = frontal)
    pitch: float  # estimated head pitch from the landmarks, degrees
    ok: bool  # False when any of the checks below failed
    warnings: tuple[str, ...] = ()  # human-readable, e.g. "face is 38 px wide"
    second_look: bool = False  # found only by the detector's second, less strict look (never ok; calibration.SECOND_LOOK)


@dataclass(frozen=True, slots=True)
class DetectedFace:
    """One face found in a photo (query or gallery)."""

    number: int  # 1-based, ordered left to right
    box: Box
    det_score: float
    quality: Quality
    primary: bool  # the face the primary-face rule picks by default


@dataclass(frozen=True, slots=True)
class Hit:
    """One gallery face that matched the query face."""

    rank: int  # 1-based
    face_id: int
    image_id: int
    similarity: float  # cosine similarity, higher is closer
    band: str  # "strong" | "possible"
    subject: str | None
    source_url: str
    image_sha256: str
    box: Box  # the face's box in its gallery image
    low_quality: bool  # the gallery face is below the quality floor (never "strong")
    false_match_rate: float | None  # calibrated chance that one stranger scores this high
    strangers_expected: float | None  # gallery faces x false_match_rate
    near_duplicates: tuple[int, ...] = ()  # face ids of near-identical copies of this image, shown as this one hit
    # Set when no impostor pair of the comparison's calibration table scored this high: the false-match rate is only
    # known to be below this (1 / the table's impostor pairs); false_match_rate is then half of it (Calibration.rate_below)
    false_match_rate_below: float | None = None


@dataclass(frozen=True, slots=True)
class SearchResult:
    """The answer to a search: every face in the query, the one searched, and its hits."""

    query_sha256: str
    faces: tuple[DetectedFace, ...]
    searched: int  # number of the face that was searched
    hits: tuple[Hit, ...]
    gallery_faces: int
    threshold: float  # lowest similarity returned
    calibrated: bool  # False when the model has no calibration table
    query_thumbnail: bytes = field(repr=False, default=b"")  # JPEG of the searched face, in memory only
    audit_id: int | None = None
    frame: int = 1  # the frame of an animated photo that was searched (1-based)
    frames: int = 1  # frames the photo has
    rotation: int = 0  # degrees clockwise the photo was turned to find an upright face (orientation not recorded)
    # SIGHTLINE_THRESHOLD_STRONG was set by hand: "strong" is that one score for every quality class, not the class's
    # calibrated threshold (the odds of each hit still come from its class's table)
    strong_threshold_set: bool = False


@dataclass(frozen=True, slots=True)
class Enrollment:
    """What adding one image to the gallery did."""

    image_id: int
    image_sha256: str
    faces: int
    subject: str | None
    duplicate: bool  # the image was already in the gallery; nothing was added
    frame: int = 1  # the frame of an animated image whose faces were enrolled (1-based)
    frames: int = 1  # frames the image has
    rotation: int = 0  # degrees clockwise the image was turned to find an upright face
    near_duplicate_of: int | None = None  # a gallery image this one is a near-identical copy of (crop, re-encode)


@dataclass(frozen=True, slots=True)
class Erasure:
    """What `forget` or `purge` removed."""

    images: int
    faces: int
    image_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Stats:
    """Counts and sizes of the gallery."""

    images: int
    faces: int
    subjects: int
    labelled_faces: int
    flagged_faces: int
    users: int
    audit_entries: int
    db_bytes: int
    index_bytes: int
    model: str
    index_dims: int = 512  # dimensions the index holds (a projection when < the embedding's)
    index_ef: int = 0  # the search breadth searches use now
    index_memory_bytes: int = 0  # what the index holds in RAM (Milvus: an estimate of the query nodes' share)
    # hamming (index_ef: candidates re-ranked per search), usearch (index_ef: HNSW ef), or "milvus <index type>"
    index_kind: str = "usearch"
    index_backend: str = "embedded"  # embedded (in this process) | milvus (a collection on a server)
    index_where: str = ""  # the index file, or the Milvus server and collection
    index_latency_ms: float | None = None  # of the last index lookup in this process (None: none yet)


@dataclass(frozen=True, slots=True)
class User:
    """A whitelisted account."""

    user_id: int
    role: str  # "admin" | "officer"
    note: str
    added_by: str
    added_at: str
    active_case: str | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry of the hash-chained audit log."""

    seq: int
    ts: str
    actor: str
    action: str
    case_ref: str | None
    details: dict[str, object]
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class ChainCheck:
    """The result of verifying the audit chain."""

    ok: bool
    entries: int
    head: str
    first_bad_seq: int | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class LabelChange:
    """A stored label the label migration repaired, or that still needs a person (`problem`)."""

    table: str  # images | faces | users
    column: str  # subject | source_url | notes | note | active_case
    key: int  # the row's id (user_id for users)
    old: str
    new: str
    problem: str | None = None  # why the repaired value is still not accepted (too long, a bad link)
