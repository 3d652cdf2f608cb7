"""The bot's Bot API transport over real HTTP, as `build_application` sets it up (python-telegram-bot's HTTPXRequest):
uploads arrive byte for byte, names and captions in any script, downloads, no redirect followed, a slow download that
keeps moving completes, dead or silent servers raised as PTB's errors with the token in no error and no log line,
the HTTP clients closed when start-up fails, a proxy from the environment."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from fakebotapi import FakeBotAPI
from telegram import InputFile
from telegram.error import InvalidToken, NetworkError, TelegramError, TimedOut

from bot.app import build_application
from bot.settings import Settings
from bot.telegram_io import FittingBot
from conftest import DEV

PHOTO = DEV / "George_W_Bush" / "1.jpg"
SECRET_TOKEN = "987654:SECRET-token-that-must-not-leak"


@pytest.fixture
async def fake() -> AsyncIterator[FakeBotAPI]:
    api = await FakeBotAPI().start()
    yield api
    await api.stop()


def real_bot(tmp_path: Path, api: FakeBotAPI | str, token: str = SECRET_TOKEN) -> FittingBot:
    """The bot exactly as the product builds it (its HTTP clients, pools, timeouts, retries), against `api`."""
    if isinstance(api, FakeBotAPI):
        base, files, token = api.base_url, api.base_file_url, api.token
    else:
        base, files = f"{api}/bot", f"{api}/file/bot"
    settings = Settings(telegram_token=token, telegram_api_url=base, telegram_file_url=files, admins="1", http_port=0,
                        data_dir=tmp_path / "unused")
    bot = build_application(settings).bot
    assert isinstance(bot, FittingBot)
    return bot


def free_port() -> int:
    """A port nobody listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve(handler: object) -> tuple[web.AppRunner, int]:
    """An aiohttp server on 127.0.0.1 answering every path with `handler`; (runner, port)."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)  # type: ignore[arg-type]
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def leaked(caplog: pytest.LogCaptureFixture, *secrets: str) -> list[str]:
    """Captured log lines (message and traceback) that contain any of `secrets`."""
    out = []
    for record in caplog.records:
        text = record.getMessage() + (logging.Formatter().formatException(record.exc_info) if record.exc_info else "")
        if any(s in text for s in secrets):
            out.append(text)
    return out


async def test_uploads_downloads_and_text_arrive_exactly(fake: FakeBotAPI, tmp_path: Path) -> None:
    data = PHOTO.read_bytes()
    caption = "Müller — Ŝ 東京 😀\nline two & <b>"
    async with real_bot(tmp_path, fake) as bot:
        sent = await bot.send_photo(42, data, caption=caption)
        assert sent.caption == caption and sent.photo[-1].width == 250
        call = fake.calls_of("sendPhoto")[-1]
        assert call.files["photo"] == data and call.params["caption"] == caption
        doc = InputFile(b"\x00\xffbinary\r\n--boundary--\r\n", filename="naïve näme.bin")
        await bot.send_document(42, doc)
        assert fake.calls_of("sendDocument")[-1].files["document"] == b"\x00\xffbinary\r\n--boundary--\r\n"
        message = await bot.send_message(42, "é" * 4096)
        assert message.text == "é" * 4096
        file_id = fake.add_file(data)
        got = await (await bot.get_file(file_id)).download_as_bytearray()
        assert bytes(got) == data and fake.downloads == [file_id]


async def test_concurrent_calls_all_arrive(fake: FakeBotAPI, tmp_path: Path) -> None:
    async with real_bot(tmp_path, fake) as bot:
        sent = await asyncio.gather(*(bot.send_message(7, f"message {i}") for i in range(40)))
    assert sorted(m.text for m in sent) == sorted(f"message {i}" for i in range(40))


async def test_a_dead_server_is_a_network_error_without_the_token_in_error_or_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    bot = real_bot(tmp_path, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(NetworkError) as caught:
        await bot.initialize()  # getMe, retried by the bot's RetryingRateLimiter, then given up
    assert not isinstance(caught.value, TimedOut)
    assert "SECRET" not in str(caught.value) and "987654" not in str(caught.value)
    assert any("getMe failed" in r.getMessage() for r in caplog.records)  # the retries were logged...
    assert leaked(caplog, "SECRET", "987654") == []  # ...without the token
    await bot.shutdown()


async def test_a_server_that_never_answers_times_out_without_the_token(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    stalled, released = asyncio.Event(), asyncio.Event()

    async def never(request: web.Request) -> web.Response:
        stalled.set()
        await released.wait()  # until the test ends
        return web.json_response({"ok": True, "result": True})

    runner, port = await serve(never)
    bot = real_bot(tmp_path, f"http://127.0.0.1:{port}")
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimedOut) as caught:
            await bot.get_me(read_timeout=0.3)  # through the bot's own retries: 4 attempts, 3.5 s of pauses
        assert stalled.is_set() and asyncio.get_running_loop().time() - started < 15
        assert "SECRET" not in str(caught.value) and "987654" not in str(caught.value)
        assert leaked(caplog, "SECRET", "987654") == []
    finally:
        released.set()
        await bot.shutdown()
        await runner.cleanup()


async def test_a_failed_start_up_closes_the_connections(tmp_path: Path) -> None:
    """The Bot API refuses the token (401) on a kept-alive connection: the bot's start-up fails, and the bot closes
    that connection itself (FittingBot.initialize); PTB alone would leave its HTTP clients and the connection open."""
    requests = 0
    closed = asyncio.Event()

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        body = b'{"ok":false,"error_code":401,"description":"Unauthorized"}'
        try:
            while True:  # HTTP/1.1, one request after another on this connection until the client hangs up
                head = await reader.readuntil(b"\r\n\r\n")
                sizes = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
                await reader.readexactly(sizes[0] if sizes else 0)
                requests += 1
                writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            closed.set()
        finally:
            writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    bot = real_bot(tmp_path, f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(InvalidToken):
            await bot.initialize()
        assert requests == 1
        await asyncio.wait_for(closed.wait(), 5)  # the client hung up: nothing left open
    finally:
        await bot.shutdown()
        server.close()
        await server.wait_closed()


async def test_a_redirect_is_not_followed(tmp_path: Path) -> None:
    hits: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"ok": True, "result": True})

    other, other_port = await serve(elsewhere)

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"http://127.0.0.1:{other_port}/stolen")

    runner, port = await serve(moved)
    bot = real_bot(tmp_path, f"http://127.0.0.1:{port}")
    await bot.request.initialize()
    try:
        status, _ = await bot.request.do_request(f"http://127.0.0.1:{port}/bot1:T/sendPhoto", "POST")
        assert status == 307 and hits == []  # a photo would not be re-sent to where the redirect points
    finally:
        await bot.request.shutdown()
        await runner.cleanup()
        await other.cleanup()


async def test_a_slow_download_that_keeps_moving_completes(tmp_path: Path) -> None:
    # 12 pieces 0.25 s apart: 3 s in all, longer than the four timeouts' sum (4 x 0.5 s), each wait shorter than one.
    piece = b"\xab" * 100_000

    async def drip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 12 * len(piece)
        await response.prepare(request)
        for _ in range(12):
            await response.write(piece)
            await asyncio.sleep(0.25)
        return response

    runner, port = await serve(drip)
    bot = real_bot(tmp_path, f"http://127.0.0.1:{port}")
    await bot.request.initialize()
    try:
        body = await bot.request.retrieve(f"http://127.0.0.1:{port}/file/bot1:T/photo.jpg",
                                          read_timeout=0.5, write_timeout=0.5, connect_timeout=0.5, pool_timeout=0.5)
        assert body == piece * 12
    finally:
        await bot.request.shutdown()
        await runner.cleanup()


async def test_the_proxy_from_the_environment_is_used_unless_no_proxy_names_the_host(
    fake: FakeBotAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fake answers as the proxy: the Bot API's host does not exist, so only a proxied call can succeed.
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{fake.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    proxied = real_bot(tmp_path, "http://api.telegram.invalid", token=fake.token)
    async with proxied as bot:
        assert (await bot.send_message(5, "through the proxy")).text == "through the proxy"
    monkeypatch.setenv("NO_PROXY", "telegram.invalid")
    direct = real_bot(tmp_path, "http://api.telegram.invalid", token=fake.token)
    with pytest.raises(NetworkError):
        await direct.initialize()  # getMe, straight to a host that does not exist
    await direct.shutdown()


async def test_a_proxy_password_never_reaches_the_error_or_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("HTTPS_PROXY", "http://user:secretpw@127.0.0.1:99999")  # a port no socket accepts
    monkeypatch.setenv("HTTP_PROXY", "http://user:secretpw@127.0.0.1:99999")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    bot = real_bot(tmp_path, "http://api.telegram.invalid", token="987654:SECRET tok")  # percent-encoded in a URL
    with pytest.raises(TelegramError) as caught:
        await bot.initialize()
    text = str(caught.value)
    assert "secretpw" not in text and "SECRET" not in text and "987654" not in text, text
    assert leaked(caplog, "secretpw", "SECRET", "987654") == []
    await bot.shutdown()
