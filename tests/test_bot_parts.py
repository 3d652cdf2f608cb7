"""The bot's small pure parts: wording, the error table, the rate limit, expiring storage, pictures, timing."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from PIL import Image

from bot import render, texts
from bot.handlers.search import is_web_link
from bot.i18n import ENGLISH as EN
from bot.jobs import seconds_until
from bot.sessions import ExpiringStore, RateLimiter, StrangerThrottle
from bot.telegram_io import split_message
from engine import CaseRequired, EngineError, Hit, ImageRejected, InvalidArgument, NoFaceFound, NotFound, StorageError


def hit(similarity: float = 0.62, strangers: float | None = 2.5e-5, subject: str | None = "alice") -> Hit:
    """A hit as the engine returns it."""
    return Hit(rank=1, face_id=7, image_id=3, similarity=similarity, band="strong", subject=subject,
               source_url="https://gallery.example/a.jpg", image_sha256="0" * 64, box=(0, 0, 10, 10),
               low_quality=False, false_match_rate=None if strangers is None else strangers / 1000,
               strangers_expected=strangers)


@pytest.mark.parametrize(
    "expected,gallery,words",
    [
        (2.5e-5, 1000, "odds a stranger scores this high here: 1 in 40,000"),
        (0.0123, 1000, "odds a stranger scores this high here: 1 in 81"),
        (0.002, 50_000, "odds a stranger scores this high here: 1 in 500"),
        (3.46, 80_000, "weak: ~3.5 strangers in this gallery of 80,000 faces may score this high"),
        (12.4, 1_000_000, "weak: ~12 strangers in this gallery of 1,000,000 faces may score this high"),
        (0.0, 1000, "no stranger in our test set scored this high"),
    ],
)
def test_stranger_odds_in_plain_words(expected: float, gallery: int, words: str) -> None:
    assert texts.strangers(EN, expected, gallery).startswith(words)


@pytest.mark.parametrize(
    "below,gallery,words",
    [
        (1 / 240_093, 4, "odds a stranger scores this high here: below 1 in 60,000 (none did in our tests, too few to say how far below)"),
        (1 / 240_093, 1_000_000, "no stranger scored this high in our tests, too few to rule out ~4.2 in this gallery of 1,000,000 faces"),
    ],
)
def test_odds_beyond_the_calibration_table_are_said_as_a_bound(below: float, gallery: int, words: str) -> None:
    """No stranger of the class's table scored this high: a bound set by how many pairs it has, not a measured rate
    (nor "weak: ~2 strangers" for an exact copy of a poor gallery photo in a large gallery)."""
    assert texts.strangers(EN, below / 2 * gallery, gallery, below) == words


def test_hit_lines_show_rank_subject_percentage_band_odds_and_source() -> None:
    lines = texts.hit_lines(EN, hit(), 1000, linked=True)
    assert lines == [
        "1. alice - 62% (strong)",
        "   odds a stranger scores this high here: 1 in 40,000",
        "   https://gallery.example/a.jpg",
    ]
    uncalibrated = texts.hit_lines(EN, hit(strangers=None, subject=None), 1000, linked=False)
    assert uncalibrated == ["1. unlabelled - 62% (strong)", "   source: https://gallery.example/a.jpg"]


def test_error_table_picks_the_most_specific_reply() -> None:
    assert texts.for_error(NoFaceFound("x")).startswith("No face found")
    assert texts.for_error(CaseRequired("x")) == "A case reference is required for every search."
    assert texts.officer_error(EN, CaseRequired("x"), 1, 1) == texts.need_case(EN)
    assert texts.for_error(NotFound("no subject 'bob' in the gallery")) == "Not found: no subject 'bob' in the gallery."
    assert texts.for_error(InvalidArgument("bad date.")) == "That doesn't work: bad date."
    assert texts.for_error(ImageRejected("too_large", "the file is 30.0 MB; the limit is 25 MB")) == (
        "That file is too big: the file is 30.0 MB; the limit is 25 MB."
    )
    assert "storage" in texts.for_error(StorageError("disk full"))

    class NewKind(EngineError):
        """An engine error the bot has no entry for yet."""

    assert texts.for_error(NewKind("odd")) == "That failed: odd."


def test_rate_limit_is_a_sliding_hour_per_user() -> None:
    now = [0.0]
    limiter = RateLimiter(2, clock=lambda: now[0])
    assert limiter.acquire(1) == 0 and limiter.acquire(1) == 0
    assert limiter.acquire(1) == pytest.approx(3600)  # refused: nothing taken
    assert limiter.acquire(2) == 0  # other users are not affected
    now[0] = 1800
    assert limiter.wait(1) == pytest.approx(1800)
    now[0] = 3600.5
    assert limiter.acquire(1) == 0 and limiter.wait(1) == 0  # the first two expired
    assert RateLimiter(0).wait(5) > 0  # a limit of 0 switches searching off


@dataclass(frozen=True)
class Kept:
    """A value kept for a user."""

    owner: int
    data: bytes


async def test_expiring_store_drops_values_after_their_time_and_never_another_users() -> None:
    store: ExpiringStore[Kept] = ExpiringStore(ttl_seconds=0.1, max_per_owner=2)
    a = store.put(Kept(1, b"a"))
    other = store.put(Kept(2, b"z"))
    assert len(a) == 8 and store.get(a) == Kept(1, b"a")
    b, c = store.put(Kept(1, b"b")), store.put(Kept(1, b"c"))  # user 1 is full: their oldest goes
    assert store.get(a) is None and store.get(b) and store.get(c) and store.get(other) == Kept(2, b"z")
    assert store.owned_by(1) == 2 and store.pop(b) == Kept(1, b"b") and store.pop(b) is None
    await asyncio.sleep(0.2)
    assert len(store) == 0 and store.get(c) is None


def test_strangers_are_answered_once_per_quiet_time() -> None:
    now = [0.0]
    throttle = StrangerThrottle(600, clock=lambda: now[0])
    assert throttle.first(9) and not throttle.first(9) and throttle.first(10)
    throttle.count(9, "text")
    throttle.count(9, "photo")
    throttle.count(9, "text")
    assert throttle.due() == {}  # still quiet
    now[0] = 601
    assert throttle.due() == {9: {"text": 2, "photo": 1}} and throttle.due() == {}
    assert throttle.first(9)  # answered again after the quiet time


def test_strangers_are_capped_per_minute_all_accounts_together() -> None:
    now = [0.0]
    throttle = StrangerThrottle(600, per_minute=2, clock=lambda: now[0])
    assert throttle.first(1) and throttle.first(2) and not throttle.first(3) and not throttle.first(4)
    throttle.count(3, "text")
    throttle.count(4, "photo")
    throttle.count(3, "text")
    throttle.count(1, "text")  # in its own quiet time: its own count
    assert throttle.crowd_due() is None  # the minute is not over
    now[0] = 60
    crowd = throttle.crowd_due()
    assert crowd is not None and (crowd.count, crowd.kinds, crowd.accounts) == (3, {"text": 2, "photo": 1}, 2)
    assert throttle.crowd_due() is None and throttle.first(3)  # a new minute: answered
    now[0] = 601
    assert throttle.due() == {1: {"text": 1}}


def test_only_web_links_get_buttons() -> None:
    assert is_web_link("https://gallery.example/a/1.jpg")
    assert is_web_link("http://records.example.org/x?id=3")
    for url in ("ftp://archive.example/x", "file:///etc/passwd", "javascript:alert(1)", "https://localhost/x",
                "https://example.com/a b", "case-file 123", "http://[::1"):
        assert not is_web_link(url), url


def test_long_replies_are_split_at_lines() -> None:
    text = "\n".join(f"line {i:04d} " + "x" * 90 for i in range(200))
    chunks = split_message(text)
    assert len(chunks) > 1 and all(len(c) <= 4096 for c in chunks)
    assert "\n".join(chunks) == text


def test_daily_purge_waits_until_the_configured_hour() -> None:
    assert seconds_until(3, datetime(2025, 1, 1, 2, 30, tzinfo=UTC)) == 1800
    assert seconds_until(3, datetime(2025, 1, 1, 3, 0, tzinfo=UTC)) == 24 * 3600
    assert seconds_until(3, datetime(2025, 1, 1, 23, 0, tzinfo=UTC)) == 4 * 3600


def test_results_sheet_has_the_query_and_one_tile_per_match() -> None:
    face = io.BytesIO()
    Image.new("RGB", (112, 112), (200, 150, 120)).save(face, "JPEG")
    tiles = [render.Tile(face.getvalue(), f"#{i}  70%", "a very long subject name indeed") for i in (1, 2, 3)]
    with_query = Image.open(io.BytesIO(render.result_sheet(render.Tile(face.getvalue(), "query"), tiles)))
    without = Image.open(io.BytesIO(render.result_sheet(None, [*tiles[:2], render.Tile(None, "#3")])))
    assert with_query.width == render.GAP + 4 * (render.TILE + render.GAP)
    assert without.width == render.GAP + 3 * (render.TILE + render.GAP)
