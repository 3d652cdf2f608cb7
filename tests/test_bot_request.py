"""The bot's Bot API transport (bot/aiohttp_request.py) over real HTTP: uploads arrive byte for byte, names and
captions in any script, downloads, timeouts and dead servers raised as PTB's errors without the token, a small
pool shared by concurrent calls."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from fakebotapi import FakeBotAPI
from telegram import Bot, InputFile
from telegram.error import NetworkError, TimedOut

from bot.aiohttp_request import AiohttpRequest
from conftest import DEV

PHOTO = DEV / "George_W_Bush" / "1.jpg"


@pytest.fixture
async def fake() -> AsyncIterator[FakeBotAPI]:
    api = await FakeBotAPI().start()
    yield api
    await api.stop()


def bot_on(fake_or_url: FakeBotAPI | str, token: str = "123456:TEST-fake-token-for-the-bot-api", **request: float) -> Bot:
    """A PTB Bot whose every call goes through AiohttpRequest."""
    if isinstance(fake_or_url, FakeBotAPI):
        base, files, token = fake_or_url.base_url, fake_or_url.base_file_url, fake_or_url.token
    else:
        base, files = f"{fake_or_url}/bot", f"{fake_or_url}/file/bot"
    return Bot(token, base_url=base, base_file_url=files, request=AiohttpRequest(**request),
               get_updates_request=AiohttpRequest(connection_pool_size=1))


async def test_uploads_downloads_and_text_arrive_exactly(fake: FakeBotAPI) -> None:
    data = PHOTO.read_bytes()
    caption = "Müller — Ŝ 東京 😀\nline two & <b>"
    async with bot_on(fake) as bot:
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


async def test_concurrent_calls_share_a_pool_of_one(fake: FakeBotAPI) -> None:
    async with bot_on(fake, connection_pool_size=1) as bot:
        sent = await asyncio.gather(*(bot.send_message(7, f"message {i}") for i in range(20)))
    assert sorted(m.text for m in sent) == sorted(f"message {i}" for i in range(20))


async def test_a_dead_server_is_a_network_error_without_the_token() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "987654:SECRET-token-that-must-not-leak"
    bot = bot_on(f"http://127.0.0.1:{port}", token=token)
    with pytest.raises(NetworkError) as caught:
        await bot.initialize()
    assert not isinstance(caught.value, TimedOut)
    assert "SECRET" not in str(caught.value) and "987654" not in str(caught.value)
    await bot.shutdown()


async def test_a_server_that_never_answers_times_out_without_the_token() -> None:
    stalled = asyncio.Event()

    async def never(request: web.Request) -> web.Response:
        stalled.set()
        await asyncio.sleep(30)
        return web.json_response({"ok": True, "result": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", never)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    token = "987654:SECRET-token-that-must-not-leak"
    request = AiohttpRequest(read_timeout=0.3)
    await request.initialize()
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimedOut) as caught:
            await request.post(f"http://127.0.0.1:{port}/bot{token}/getMe")
        assert stalled.is_set() and asyncio.get_running_loop().time() - started < 5
        assert "SECRET" not in str(caught.value) and "987654" not in str(caught.value)
    finally:
        await request.shutdown()
        await runner.cleanup()


async def test_not_initialized_refuses_and_shutdown_twice_is_harmless() -> None:
    request = AiohttpRequest()
    with pytest.raises(RuntimeError, match="not initialized"):
        await request.do_request("http://127.0.0.1:9/x", "GET")
    await request.initialize()
    await request.shutdown()
    await request.shutdown()


async def test_the_proxy_from_the_environment_is_used_unless_no_proxy_names_the_host(
    fake: FakeBotAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fake answers as the proxy: the Bot API's host does not exist, so only a proxied call can succeed.
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{fake.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with Bot(fake.token, base_url="http://api.telegram.invalid/bot", base_file_url="http://api.telegram.invalid/file/bot",
                   request=AiohttpRequest(), get_updates_request=AiohttpRequest(connection_pool_size=1)) as bot:
        assert (await bot.send_message(5, "through the proxy")).text == "through the proxy"
    monkeypatch.setenv("NO_PROXY", "telegram.invalid")
    bot = Bot(fake.token, base_url="http://api.telegram.invalid/bot", request=AiohttpRequest(),
              get_updates_request=AiohttpRequest(connection_pool_size=1))
    with pytest.raises(NetworkError):
        await bot.initialize()  # getMe, straight to a host that does not exist
    await bot.shutdown()


async def serve(handler: object) -> tuple[web.AppRunner, int]:
    """An aiohttp server on 127.0.0.1 answering every path with `handler`; (runner, port)."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)  # type: ignore[arg-type]
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def test_a_redirect_is_not_followed() -> None:
    hits: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"ok": True, "result": True})

    other, other_port = await serve(elsewhere)

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"http://127.0.0.1:{other_port}/stolen")

    runner, port = await serve(moved)
    request = AiohttpRequest()
    await request.initialize()
    try:
        status, _ = await request.do_request(f"http://127.0.0.1:{port}/bot1:T/sendPhoto", "POST",
                                             read_timeout=2, write_timeout=2, connect_timeout=2, pool_timeout=1)
        assert status == 307 and hits == []  # the photo is not re-sent to where the redirect points
    finally:
        await request.shutdown()
        await runner.cleanup()
        await other.cleanup()


async def test_a_slow_download_that_keeps_moving_completes() -> None:
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
    request = AiohttpRequest(read_timeout=0.5, write_timeout=0.5, connect_timeout=0.5, pool_timeout=0.5)
    await request.initialize()
    try:
        status, body = await request.do_request(f"http://127.0.0.1:{port}/file/bot1:T/photo.jpg", "GET")
        assert status == 200 and body == piece * 12
    finally:
        await request.shutdown()
        await runner.cleanup()


@pytest.mark.parametrize("declared", [True, False])
async def test_an_answer_too_large_is_refused_as_it_arrives(declared: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bot.aiohttp_request.MAX_RESPONSE_BYTES", 1_000_000)
    sent: list[int] = []

    async def flood(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        if declared:
            response.content_length = 50_000_000
        await response.prepare(request)
        try:
            for _ in range(500):  # 50 MB if it were all read
                await response.write(b"\x00" * 100_000)
                sent.append(1)
        except (ConnectionResetError, ConnectionError):
            pass
        return response

    runner, port = await serve(flood)
    request = AiohttpRequest()
    await request.initialize()
    try:
        with pytest.raises(NetworkError, match="over 1000000"):
            await request.do_request(f"http://127.0.0.1:{port}/file/bot1:T/big.jpg", "GET")
        assert len(sent) < 500  # stopped before the whole answer was sent
    finally:
        await request.shutdown()
        await runner.cleanup()


async def test_a_proxy_password_never_reaches_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://user:secretpw@127.0.0.1:99999")  # a port aiohttp refuses: InvalidURL
    monkeypatch.setenv("HTTP_PROXY", "http://user:secretpw@127.0.0.1:99999")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    token = "987654:SECRET tok"  # percent-encoded in the URL aiohttp reports
    bot = Bot(token, base_url="http://api.telegram.invalid/bot", request=AiohttpRequest(),
              get_updates_request=AiohttpRequest(connection_pool_size=1))
    with pytest.raises(NetworkError) as caught:
        await bot.initialize()
    text = str(caught.value)
    assert "secretpw" not in text and "SECRET" not in text and "987654" not in text, text
    await bot.shutdown()
