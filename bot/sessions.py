"""Short-lived, in-memory state of the bot: the per-user rate limit, pending photos and result lists.

Nothing here is written to disk. A restart forgets it all, which is what we want for query photos.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from engine import DetectedFace, Hit, SearchResult


class Owned(Protocol):
    """Something kept for one Telegram user."""

    @property
    def owner(self) -> int:
        """The user's id."""


T = TypeVar("T", bound=Owned)


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
    """Values under short random tokens, each dropped after `ttl_seconds`, or earlier when its owner keeps more
    than `max_per_owner` (that owner's oldest goes first: one user's burst never evicts another user's values).

    Memory is bounded by the whitelist: at most `max_per_owner` values per whitelisted account.
    """

    def __init__(self, ttl_seconds: float, max_per_owner: int) -> None:
        self.ttl = ttl_seconds
        self.max_per_owner = max(1, max_per_owner)
        self._items: dict[str, tuple[T, asyncio.TimerHandle]] = {}

    def put(self, value: T) -> str:
        """Keep a value; returns its token (8 URL-safe characters, fit for callback data)."""
        mine = [token for token, (v, _) in self._items.items() if v.owner == value.owner]
        for token in mine[:max(0, len(mine) - self.max_per_owner + 1)]:  # oldest first (dicts keep order)
            self._drop(token)
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

    def pop(self, token: str) -> T | None:
        """Take the value under `token` out (None when expired or already taken)."""
        item = self._items.get(token)
        self._drop(token)
        return item[0] if item else None

    def owned_by(self, owner: int) -> int:
        """How many values `owner` has here."""
        return sum(1 for v, _ in self._items.values() if v.owner == owner)

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
    """A photo with several faces, kept for its face buttons until it expires.

    It remembers the case active when it arrived (its searches are logged under that case) and the message
    it came in (answers quote it); `searched` holds the face numbers already searched (a second tap on a
    face button does not search again).
    """

    owner: int
    image: bytes
    faces: tuple[DetectedFace, ...]
    case: str | None
    chat_id: int
    message_id: int
    searched: set[int] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Confirmation:
    """An irreversible admin action waiting for its Confirm button: what to do, as (action, arguments)."""

    owner: int
    action: str  # "forget" | "revoke" | "demote"
    args: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Crowd:
    """Strangers' refusals beyond the per-minute cap: how many, of which kinds, from how many accounts."""

    count: int
    kinds: dict[str, int]
    accounts: int


class StrangerThrottle:
    """Who was refused recently: the first message of a stranger is answered and audited, the next ones within
    `quiet_seconds` are only counted; the count becomes one audit entry when the quiet time ends.

    The per-account quiet time does not stop many accounts at once (300 throwaway accounts would get 300 replies
    and 300 audit entries), so at most `per_minute` strangers are answered in any minute, all accounts together
    (0: no cap). Beyond it refusals are only counted, and become one audit entry a minute after the first.
    """

    CROWD_WINDOW = 60.0  # seconds
    MAX_CROWD_ACCOUNTS = 100_000  # distinct accounts remembered per window (memory bound; the count goes on)

    def __init__(self, quiet_seconds: float, per_minute: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.quiet = quiet_seconds
        self.per_minute = per_minute
        self._clock = clock
        self._since: dict[int, float] = {}  # user id -> when their quiet time began
        self._counts: dict[int, dict[str, int]] = {}  # user id -> update kind -> refusals not yet audited
        self._answered: deque[float] = deque()  # when strangers were answered, within the last minute
        self._crowd_since: float | None = None  # first refusal counted beyond the cap, not yet audited
        self._crowd: dict[str, int] = {}
        self._crowd_accounts: set[int] = set()

    def first(self, user_id: int) -> bool:
        """True when this stranger should get a reply (and an audit entry of its own) now."""
        now = self._clock()
        started = self._since.get(user_id)
        if started is not None and now - started < self.quiet:
            return False
        while self._answered and now - self._answered[0] >= self.CROWD_WINDOW:
            self._answered.popleft()
        if self.per_minute > 0 and len(self._answered) >= self.per_minute:
            return False  # too many strangers this minute: counted in the crowd (see count)
        self._answered.append(now)
        self._since[user_id] = now
        return True

    def count(self, user_id: int, kind: str) -> None:
        """Remember one more silent refusal of this kind: the account's own, in its quiet time, or the crowd's."""
        if user_id in self._since:
            kinds = self._counts.setdefault(user_id, {})
        else:
            kinds = self._crowd
            if self._crowd_since is None:
                self._crowd_since = self._clock()
            if len(self._crowd_accounts) < self.MAX_CROWD_ACCOUNTS:
                self._crowd_accounts.add(user_id)
        kinds[kind] = kinds.get(kind, 0) + 1

    def due(self, everything: bool = False) -> dict[int, dict[str, int]]:
        """Take the counts whose quiet time is over (or all of them) for auditing; forget finished windows."""
        now = self._clock()
        out: dict[int, dict[str, int]] = {}
        for user_id in list(self._since):
            if everything or now - self._since[user_id] >= self.quiet:
                del self._since[user_id]
                counts = self._counts.pop(user_id, None)
                if counts:
                    out[user_id] = counts
        return out

    def crowd_due(self, everything: bool = False) -> Crowd | None:
        """Take the crowd's counts once their minute is over (or now, with `everything`), or None."""
        if self._crowd_since is None or not (everything or self._clock() - self._crowd_since >= self.CROWD_WINDOW):
            return None
        crowd = Crowd(sum(self._crowd.values()), self._crowd, len(self._crowd_accounts))
        self._crowd_since, self._crowd, self._crowd_accounts = None, {}, set()
        return crowd

    def __len__(self) -> int:
        return len(self._since)


@dataclass(frozen=True, slots=True)
class ResultSet:
    """What one search found, kept for the More button: the hits and their context, never the photo."""

    owner: int
    case: str | None
    chat_id: int
    message_id: int  # the photo the results answer (every page quotes it)
    hits: tuple[Hit, ...]
    face: int  # number of the searched face
    faces_in_photo: int
    warnings: tuple[str, ...]  # quality warnings of the searched face
    gallery_faces: int
    calibrated: bool
    frame: int = 1  # the frame of an animated photo that was searched
    frames: int = 1
    rotation: int = 0  # degrees clockwise the photo was turned to find an upright face
    strong_threshold_set: bool = False  # SIGHTLINE_THRESHOLD_STRONG set by hand (SearchResult.strong_threshold_set)
    pages_sent: set[int] = field(default_factory=set)  # pages already sent (a second More tap sends nothing)

    @classmethod
    def of(cls, result: SearchResult, owner: int, case: str | None, chat_id: int, message_id: int) -> ResultSet:
        """The parts of a SearchResult worth keeping (drops the query thumbnail)."""
        searched = next(f for f in result.faces if f.number == result.searched)
        return cls(
            owner=owner, case=case, chat_id=chat_id, message_id=message_id, hits=result.hits, face=result.searched,
            faces_in_photo=len(result.faces),
            warnings=searched.quality.warnings, gallery_faces=result.gallery_faces, calibrated=result.calibrated,
            frame=result.frame, frames=result.frames, rotation=result.rotation,
            strong_threshold_set=result.strong_threshold_set,
        )

    def page_bounds(self, page: int, per_page: int) -> tuple[int, int]:
        """Start and stop indices of a page (0-based) of hits."""
        start = page * per_page
        return start, min(start + per_page, len(self.hits))
