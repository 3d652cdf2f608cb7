"""Sightline's engine: face detection, embedding, the gallery index, metadata and audit. No Telegram here."""

from __future__ import annotations

from .config import EngineConfig
from .engine import Engine
from .errors import (
    CaseRequired,
    EngineError,
    FaceIndexError,
    ImageRejected,
    IndexUnavailable,
    InvalidArgument,
    LastAdmin,
    ModelError,
    NoFaceFound,
    NotFound,
    SeveralFaces,
    StorageError,
)
from .types import (
    AuditEntry,
    ChainCheck,
    DetectedFace,
    Enrollment,
    Erasure,
    Hit,
    LabelChange,
    Quality,
    SearchResult,
    Stats,
    User,
)

__all__ = [
    "AuditEntry", "CaseRequired", "ChainCheck", "DetectedFace", "Engine", "EngineConfig", "EngineError",
    "Enrollment", "Erasure", "FaceIndexError", "Hit", "ImageRejected", "IndexUnavailable", "InvalidArgument",
    "LabelChange", "LastAdmin", "ModelError", "NoFaceFound", "NotFound", "Quality", "SearchResult", "SeveralFaces",
    "Stats", "StorageError", "User",
]
