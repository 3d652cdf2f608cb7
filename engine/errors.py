"""Domain exceptions raised by the engine; the edges (CLI, bot) translate them into replies."""

from __future__ import annotations

from typing import Any


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class ModelError(EngineError):
    """A face model is missing, unreadable or of the wrong kind."""


class ImageRejected(EngineError):
    """The bytes are not an image we accept (not an image, corrupt, too big, a decompression bomb)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # one of: not_image, corrupt, too_large, too_many_pixels, empty


class NoFaceFound(EngineError):
    """The image decoded fine but no face was detected in it."""


class SeveralFaces(EngineError):
    """The photo shows several faces and the caller asked to choose one (search(..., several="ask"))."""

    def __init__(self, faces: tuple[Any, ...]) -> None:
        super().__init__(f"the photo shows {len(faces)} faces; choose one")
        self.faces = faces  # tuple[DetectedFace, ...], numbered left to right


class FaceIndexError(EngineError):
    """The caller asked for a face number the photo does not have."""


class NotFound(EngineError):
    """The subject, source link, image or user asked for does not exist."""


class InvalidArgument(EngineError):
    """An argument a user typed is malformed (bad date, bad role, empty case reference)."""


class CaseRequired(EngineError):
    """A search was attempted without a case reference while one is required."""


class StorageError(EngineError):
    """The data directory cannot be used (permissions, corrupt database)."""


class IndexUnavailable(EngineError):
    """The vector index server (Milvus) is unreachable, too slow or refused the request; nothing was changed
    in the gallery by the failed call. The message says what failed, for the log and `sightline doctor`."""
