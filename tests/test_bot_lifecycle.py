"""The Application's lifecycle: it opens (and later closes) its own engine, and serves /healthz while polling."""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from fakebotapi import FakeBotAPI

from bot.app import build_application, polling
from bot.context import ENGINE_KEY
from bot.settings import Settings
from conftest import BOT_ADMIN
from engine import Engine


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_bot_opens_its_own_engine_serves_health_and_closes_it(gallery_copy: Path) -> None:
    fake = await FakeBotAPI().start()
    port = free_port()
    settings = Settings(
        telegram_token=fake.token, telegram_api_url=fake.base_url, telegram_file_url=fake.base_file_url,
        admins=str(BOT_ADMIN), data_dir=gallery_copy, http_host="127.0.0.1", http_port=port,
    )
    app = build_application(settings)  # no engine given: post_init opens one on settings.data_dir
    try:
        async with polling(app, poll_interval=0.0, timeout=timedelta(seconds=1)):
            engine: Engine = app.bot_data[ENGINE_KEY]
            fake.send_text(BOT_ADMIN, "/stats")
            reply = await fake.wait_for("sendMessage", chat_id=BOT_ADMIN)
            assert reply.text.startswith(f"Gallery: {(await engine.stats()).images} images")
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200 and (await response.json())["status"] == "ok"
        assert ENGINE_KEY not in app.bot_data  # closed by post_shutdown, as we opened it
        with pytest.raises(ValueError, match="no active connection|Connection closed"):  # aiosqlite's words for a closed database
            await engine.users()
    finally:
        await fake.stop()
