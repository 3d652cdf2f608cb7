"""Polling for updates survives whatever the Bot API answers (a hostile tester's findings, break7): a real bot (PTB's
Updater, our FittingBot) polling the fake Bot API over real HTTP, the fake answering getUpdates as a broken server,
a proxy or Telegram under flood control would.

Each test fails on the code before the fix: polling stopped for good, polled hundreds of times a second, slept for a
day, logged nothing or a whole proxy page, or a stop waited out the pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web
from fakebotapi import FakeBotAPI
from test_ops_support import RunningBot

from bot.app import quiet_ptb_records
from conftest import BOT_ADMIN, BotHarness

SECRET = "SECRET-of-the-proxy-page"


def raw(body: str, status: int = 200, content_type: str = "application/json") -> web.Response:
    """An answer with exactly this body."""
    return web.Response(text=body, status=status, content_type=content_type)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The messages logged by the error handlers' logger (where a failed poll is reported)."""
    return [r.getMessage() for r in caplog.records if r.name == "bot.handlers.errors"]


async def polls_during(bot: BotHarness, seconds: float) -> int:
    """How many getUpdates requests arrived in the next `seconds`."""
    before = bot.fake.polls
    await asyncio.sleep(seconds)
    return bot.fake.polls - before


async def still_answers(bot: BotHarness) -> None:
    """With getUpdates good again, the bot answers a command (the next pause is at most a few seconds)."""
    bot.fake.poll_answer = None
    reply = await bot.command(BOT_ADMIN, "/stats", timeout=20)
    assert reply.text.startswith("Gallery:")


async def eventually(condition: Callable[[], object], timeout: float) -> None:
    """Wait until `condition()` is truthy, checking every 0.1 s; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s"
        await asyncio.sleep(0.1)


async def stop_time(bot: BotHarness) -> float:
    """Seconds the Updater takes to stop (what Ctrl-C / SIGTERM waits for before the audit flush)."""
    started = time.monotonic()
    await bot.app.updater.stop()
    return time.monotonic() - started


async def test_an_update_id_that_is_not_a_number_is_one_warning_and_polling_goes_on(
        bot: BotHarness, caplog: pytest.LogCaptureFixture) -> None:
    """Item 1: `[{"update_id": "x"}]` parsed as an Update, then PTB's `update_id + 1` raised TypeError outside any
    handler and polling ended for good, silently. Now an unreadable answer: a warning, a pause, recovery."""
    caplog.set_level("WARNING")

    async def answer(request: web.Request) -> web.Response:
        return raw('{"ok": true, "result": [{"update_id": "x"}]}')

    bot.fake.poll_answer = answer
    bad = await polls_during(bot, 3)
    assert 1 <= bad <= 4, bad  # pauses of 1, 1.5 s
    lines = warnings_of(caplog)
    assert lines and all("cannot fetch updates from Telegram (UnreadableUpdates" in line for line in lines), lines
    assert "an update is not an object with an integer update_id" in lines[0], lines
    await still_answers(bot)


@pytest.mark.parametrize("body", ['{"ok": true, "result": {}}', '{"ok": true, "result": ""}', '{"ok": true, "result": null}',
                                  '{"ok": true, "result": [5]}'])
async def test_a_result_that_is_not_a_list_of_updates_is_unreadable(
        bot: BotHarness, body: str, caplog: pytest.LogCaptureFixture) -> None:
    """Item 2: `{}` and `""` were read as "no updates" and polled again at once (~250 polls a second, no line)."""
    caplog.set_level("WARNING")

    async def answer(request: web.Request) -> web.Response:
        return raw(body)

    bot.fake.poll_answer = answer
    bad = await polls_during(bot, 3)
    assert 1 <= bad <= 4, bad
    lines = warnings_of(caplog)
    assert lines and all("cannot fetch updates from Telegram (UnreadableUpdates: " in line for line in lines), lines
    await still_answers(bot)


async def test_empty_answers_at_once_are_polled_at_most_once_a_second(bot: BotHarness, caplog: pytest.LogCaptureFixture) -> None:
    """Item 2: a server answering each long poll at once with `[]` was polled ~250 times a second; after three such
    answers in a row (each within a tenth of the 1 s timeout the tests poll with) the bot polls once a second."""
    caplog.set_level("WARNING", logger="bot.telegram_io")

    async def answer(request: web.Request) -> web.Response:
        return raw('{"ok": true, "result": []}')

    bot.fake.poll_answer = answer
    bad = await polls_during(bot, 4)
    assert 3 <= bad <= 9, bad  # 4 at once, then one a second
    early = [r.getMessage() for r in caplog.records if "answers long polls at once" in r.getMessage()]
    assert len(early) == 1, early  # said once for the streak, not per poll
    await still_answers(bot)
    assert await polls_during(bot, 2) >= 3  # long polls that wait (0.25 s in the fake) are not paused


async def test_a_huge_retry_after_is_capped_reported_and_does_not_delay_a_stop(
        bot: BotHarness, caplog: pytest.LogCaptureFixture) -> None:
    """Items 4 and 6: a 429 asking for 100,000 s was slept whole (27.8 h), without a line, and SIGTERM waited for it."""
    caplog.set_level("WARNING")

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 100000",
                                  "parameters": {"retry_after": 100000}}, status=429)

    bot.fake.poll_answer = answer
    assert await polls_during(bot, 3) == 1
    lines = warnings_of(caplog)
    assert lines == ["Telegram asks to wait 100000 s before polling again (a 429, flood control); polling again in 300 s"], lines
    assert await stop_time(bot) < 2.0


async def test_a_stop_during_the_pause_after_failures_is_prompt(bot: BotHarness) -> None:
    """Item 6: stopping waited out the current pause (up to 30 s; 16.9 s measured), close to compose's 30 s grace."""

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"ok": False, "error_code": 502, "description": "Bad Gateway"}, status=502)

    bot.fake.poll_answer = answer
    await eventually(lambda: bot.fake.polls >= 4, timeout=15)  # pauses 1, 1.5, 2.25; now 3.4 s
    await asyncio.sleep(0.2)
    assert await stop_time(bot) < 2.0


async def test_a_proxy_page_with_an_error_status_is_one_short_line(bot: BotHarness, caplog: pytest.LogCaptureFixture) -> None:
    """Item 5: a proxy's 502 page went into the log whole on every failed poll (220,189-character lines)."""
    caplog.set_level("WARNING")
    quiet_ptb_records()  # as `sightline run` does
    page = "<html><body><h1>502 Bad Gateway</h1>" + SECRET + "x" * 200_000 + "</body></html>"

    async def answer(request: web.Request) -> web.Response:
        return raw(page, status=502, content_type="text/html")

    bot.fake.poll_answer = answer
    await polls_during(bot, 2.5)
    lines = [r.getMessage() for r in caplog.records]
    failed = [line for line in lines if "cannot fetch updates from Telegram" in line]
    assert failed, lines
    assert all(len(line) < 500 for line in lines), [len(line) for line in lines]
    assert not any(SECRET in line for line in lines), failed  # the page is described, never quoted
    assert "NetworkError: Bad Gateway (502). The answer is not JSON (a proxy's page?)" in failed[0], failed
    await still_answers(bot)


async def test_a_server_that_hangs_or_trickles_is_one_warning_per_poll(bot: BotHarness, caplog: pytest.LogCaptureFixture) -> None:
    """Item 7: timed-out polls logged nothing, and a body arriving one byte at a time kept one poll for minutes; now each
    is a warning, and a poll gets long-poll timeout (1 s here) + read timeout (5 s) + 5 s overall."""
    caplog.set_level("WARNING")

    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"ok": true, "result": [')
        with contextlib.suppress(ConnectionError):
            for _ in range(600):
                await response.write(b" ")
                await asyncio.sleep(0.5)
        return response

    bot.fake.poll_answer = trickle
    started = time.monotonic()
    await eventually(lambda: any("TimedOut" in line for line in warnings_of(caplog)), timeout=25)
    assert 9 < time.monotonic() - started < 16, time.monotonic() - started
    assert "no complete answer to getUpdates within 11 s" in warnings_of(caplog)[0], warnings_of(caplog)

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    caplog.clear()
    bot.fake.poll_answer = hang
    await eventually(lambda: any("TimedOut" in line for line in warnings_of(caplog)), timeout=25)
    await still_answers(bot)


async def test_another_poller_is_said_once_per_poll_without_repeating_the_kind(
        bot: BotHarness, caplog: pytest.LogCaptureFixture) -> None:
    """Item 8: the warning read "Conflict: Conflict: terminated by other getUpdates request"."""
    caplog.set_level("WARNING")

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"ok": False, "error_code": 409, "description": "Conflict: terminated by other getUpdates "
                                  "request; make sure that only one bot instance is running"}, status=409)

    bot.fake.poll_answer = answer
    await polls_during(bot, 1.5)
    lines = warnings_of(caplog)
    assert lines and lines[0].startswith("cannot fetch updates from Telegram (Conflict: terminated by other getUpdates"), lines
    assert not any("Conflict: Conflict" in line for line in lines), lines
    await still_answers(bot)


async def test_a_token_revoked_while_running_is_one_error_and_exit_2(tmp_path: Path) -> None:
    """Item 3: a 401 mid-run ended polling silently (PTB's "Invalid token" line filtered), health stayed ok, and the
    process ran on; now one ERROR at once and `sightline run` exits with 2 within seconds."""
    async def unauthorized(request: web.Request) -> web.Response:
        return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)

    fake = await FakeBotAPI(token="123456:ABCdefGHIjklMNOpqrSTUvwxYZ012345").start()
    try:
        async with RunningBot(fake, tmp_path / "data") as bot:
            await bot.until("Application started", 240)
            fake.poll_answer = unauthorized
            revoked = time.monotonic()
            await bot.rest(30)
            assert bot.proc is not None
            code = await asyncio.wait_for(bot.proc.wait(), 30)
            took = time.monotonic() - revoked
    finally:
        await fake.stop()
    lines, stderr = bot.lines, bot.stderr
    assert code == 2, stderr
    assert took < 10, (took, stderr)
    errors = [line for line in lines if " ERROR " in line or " CRITICAL " in line]
    assert len(errors) == 1 and "Telegram refused the bot token while running" in errors[0], stderr
    assert "Traceback" not in stderr and "ABCdef" not in stderr, stderr
