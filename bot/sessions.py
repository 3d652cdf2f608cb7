"""Short-lived, in-memory state of the bot: the per-user rate limit, pending photos and result lists.

Nothing here is written to disk. A restart forgets it all, which is what we want for query photos.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from engine import DetectedFace, Hit, SearchResult

T = TypeVar("T")


class RateLimiter:
    """A sliding window of searches per user (one hour by default), in memory."""

    def __init__(self, limit: int, window_seconds: float = 3600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window_seconds
        self._clock = clock
        self._events: dict[int, deque[float]] = {}

    def _recent(self, key: int) -> deque[float]:
        events = self._events.setdefault(key, deque())
        cutoff = self._clock() - self.window
        while events and events[0] <= cutoff:
            events.popleft()
        return events

    def wait(self, key: int) -> float:
        """Seconds until `key` may search again; 0 when it may search now."""
        events = self._recent(key)
        if len(events) < self.limit:
            return 0.0
        if not events:  # limit <= 0: searching is switched off
            return self.window
        return max(0.0, events[len(events) - self.limit] + self.window - self._clock())

    def acquire(self, key: int) -> float:
        """Take one search for `key`: 0 when taken, otherwise the seconds to wait (nothing is taken)."""
        wait = self.wait(key)
        if wait == 0.0:
            self._events[key].append(self._clock())
        return wait


    def release(self, key: int) -> None:
        """Give back the last search taken for `key` (it turned out not to be a search)."""
        events = self._events.get(key)
        if events:
            events.pop()


class ExpiringStore(Generic[T]):
    """Values under short random tokens, each dropped after `ttl_seconds` (or earlier, oldest first, when full)."""

    def __init__(self, ttl_seconds: float, max_items: int) -> None:
        self.ttl = ttl_seconds
        self.max_items = max_items
        self._items: dict[str, tuple[T, asyncio.TimerHandle]] = {}

    def put(self, value: T) -> str:
        """Keep a value; returns its token (8 URL-safe characters, fit for callback data)."""
        while len(self._items) >= self.max_items:
            self._drop(next(iter(self._items)))
        token = secrets.token_urlsafe(6)
        while token in self._items:
            token = secrets.token_urlsafe(6)
        handle = asyncio.get_running_loop().call_later(self.ttl, self._drop, token)
        self._items[token] = (value, handle)
        return token

    def get(self, token: str) -> T | None:
        """The value under `token`, or None when it expired or never existed."""
        item = self._items.get(token)
        return item[0] if item else None

    def _drop(self, token: str) -> None:
        item = self._items.pop(token, None)
        if item:
            item[1].cancel()

    def clear(self) -> None:
        """Drop everything now."""
        for token in list(self._items):
            self._drop(token)

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True, slots=True)
class PendingPhoto:
    """A photo with several faces, kept for its face buttons until it expires."""

    owner: int
    image: bytes
    faces: tuple[DetectedFace, ...]


@dataclass(frozen=True, slots=True)
class ResultSet:
    """What one search found, kept for the More button: the hits and their context, never the photo."""

    owner: int
    case: str | None
    hits: tuple[Hit, ...]
    face: int  # number of the searched face
    faces_in_photo: int
    warnings: tuple[str, ...]  # quality warnings of the searched face
    gallery_faces: int
    calibrated: bool
    frame: int = 1  # the frame of an animated photo that was searched
    frames: int = 1
    rotation: int = 0  # degrees clockwise the photo was turned to find an upright face

    @classmethod
    def of(cls, result: SearchResult, owner: int, case: str | None) -> ResultSet:
        """The parts of a SearchResult worth keeping (drops the query thumbnail)."""
        searched = next(f for f in result.faces if f.number == result.searched)
        return cls(
            owner=owner, case=case, hits=result.hits, face=result.searched, faces_in_photo=len(result.faces),
            warnings=searched.quality.warnings, gallery_faces=result.gallery_faces, calibrated=result.calibrated,
            frame=result.frame, frames=result.frames, rotation=result.rotation,
        )

    def page_bounds(self, page: int, per_page: int) -> tuple[int, int]:
        """Start and stop indices of a page (0-based) of hits."""
        start = page * per_page
        return start, min(start + per_page, len(self.hits))
