"""Admin work over real HTTP with the real engine: enroll, forget, audit, stats; Telegram errors and crashes."""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from fakebotapi import Call
from telegram import Update
from telegram.ext import CommandHandler

from bot import texts
from bot.i18n import ENGLISH as EN
from conftest import BOT_ADMIN, DEV, BotHarness, make_config, new_user_id
from engine import Engine

StartBot = Callable[..., Awaitable[BotHarness]]


async def confirmed(bot: BotHarness, command: str) -> Call:
    """Send an admin command that asks for confirmation, press its confirm button, and return the answer."""
    question = await bot.command(BOT_ADMIN, command)
    assert [b["text"] for b in question.buttons] == [texts.CONFIRM_FORGET, texts.CANCEL], question.text
    mark = bot.fake.press(BOT_ADMIN, question.message, question.buttons[0]["callback_data"])
    return await bot.fake.wait_for("sendMessage", chat_id=BOT_ADMIN, since=mark)


async def test_enroll_by_caption_and_by_reply_then_forget(bot: BotHarness, bot_engine: Engine) -> None:
    fake = bot.fake
    await bot.command(BOT_ADMIN, "/case clear")
    before = (await bot_engine.stats()).images
    fake.send_photo(BOT_ADMIN, (DEV / "Kit_Harington" / "2.jpg").read_bytes(),
                    caption="/enroll https://records.example/temp/1 Temp Person")
    reply = await fake.wait_for("sendMessage", chat_id=BOT_ADMIN)
    assert re.match(r"Added image \d+: 1 face\(s\), subject Temp Person on its main face", reply.text), reply.text
    assert not fake.calls_of("sendPhoto")  # an /enroll caption is never searched

    photo = fake.send_photo(BOT_ADMIN, (DEV / "Kit_Harington" / "3.jpg").read_bytes())
    await fake.wait_for("sendMessage", chat_id=BOT_ADMIN)  # a plain photo is a search: needs a case
    fake.send_text(BOT_ADMIN, "/enroll https://records.example/temp/2 Temp Person", reply_to=photo)
    assert (await fake.wait_for("sendMessage", chat_id=BOT_ADMIN)).text.startswith("Added image")
    fake.send_text(BOT_ADMIN, "/enroll https://records.example/temp/2", reply_to=photo)
    assert "already in the gallery" in (await fake.wait_for("sendMessage", chat_id=BOT_ADMIN)).text

    fake.send_photo(BOT_ADMIN, (DEV / "Colin_Powell" / "3.jpg").read_bytes(),
                                 caption="/enroll ftp://archive.example/rose")
    reply = await fake.wait_for("sendMessage", chat_id=BOT_ADMIN)
    assert ", unlabelled." in reply.text
    sha = reply.text.split("SHA-256 ")[1].strip()
    assert (await bot_engine.stats()).images == before + 3

    # A search now shows the unlabelled image's non-web source as text, without a button.
    await bot.command(BOT_ADMIN, "/case ADMIN-CHECK")
    fake.send_photo(BOT_ADMIN, (DEV / "Colin_Powell" / "4.jpg").read_bytes())
    result = await fake.wait_for("sendPhoto", chat_id=BOT_ADMIN)
    assert "source: ftp://archive.example/rose" in result.text
    assert "ftp://archive.example/rose" not in [b.get("url") for b in result.buttons]

    reply = await confirmed(bot, "/forget subject Temp Person")
    assert reply.text == "Erased for good (subject Temp Person): 2 image(s), 2 face(s)."
    reply = await confirmed(bot, f"/forget image {sha.upper()}")
    assert reply.text.endswith(": 1 image(s), 1 face(s).")
    reply = await bot.command(BOT_ADMIN, "/forget source https://records.example/temp/1")  # gone already: said at once,
    assert reply.text.startswith("Not found: no source link") and "records.example/temp/1" in reply.text
    assert not reply.buttons  # with no Confirm button to press first
    assert (await bot_engine.stats()).images == before
    forgets = [e.details for e in await bot_engine.audit_tail(10) if e.action == "forget"]
    assert [(d["by"], d["images"]) for d in forgets[-2:]] == [("subject", 2), ("sha256", 1)]
    assert all(e.actor == f"tg:{BOT_ADMIN}" for e in await bot_engine.audit_tail(10) if e.action == "forget")

    fake.send_photo(BOT_ADMIN, (DEV / "Kit_Harington" / "3.jpg").read_bytes())
    result = await fake.wait_for("sendPhoto", chat_id=BOT_ADMIN)
    assert "Temp Person" not in result.text and "1. Kit_Harington" in result.text


async def test_enroll_needs_a_photo_and_a_source(bot: BotHarness) -> None:
    text = bot.fake.send_text(BOT_ADMIN, "just text")
    await bot.fake.wait_for("sendMessage", chat_id=BOT_ADMIN)
    bot.fake.send_text(BOT_ADMIN, "/enroll https://records.example/x", reply_to=text)
    assert (await bot.fake.wait_for("sendMessage", chat_id=BOT_ADMIN)).text == texts.USAGE["enroll"]
    bot.fake.send_photo(BOT_ADMIN, (DEV / "Matt_Damon" / "2.jpg").read_bytes(), caption="/enroll")
    assert (await bot.fake.wait_for("sendMessage", chat_id=BOT_ADMIN)).text == texts.USAGE["enroll"]
    assert bot.fake.downloads == []


async def test_audit_lists_entries_and_verifies_the_chain(bot: BotHarness, bot_engine: Engine) -> None:
    reply = await bot.command(BOT_ADMIN, "/audit 3")
    lines = reply.text.splitlines()
    assert lines[0] == "Last 3 audit entries:" and len(lines) == 4 and all(line.startswith("#") for line in lines[1:])
    default = await bot.command(BOT_ADMIN, "/audit")
    assert len(default.text.splitlines()) == 11
    reply = await bot.command(BOT_ADMIN, "/audit verify")
    entries = (await bot_engine.stats()).audit_entries
    assert reply.text.startswith(f"Audit chain OK: {entries} entries verified. Head ")
    assert reply.text.endswith((await bot_engine.audit_verify()).head)


async def test_audit_verify_reports_tampering(start_bot: StartBot, gallery_copy: Path) -> None:
    engine = await Engine.open(make_config(gallery_copy, require_case=True))
    try:
        for i in range(3):
            await engine.record(f"tg:{9000 + i}", "refused", None, reason="not_whitelisted")
        with sqlite3.connect(gallery_copy / "sightline.sqlite3") as db:
            seq = db.execute("SELECT max(seq) - 1 FROM audit").fetchone()[0]
            db.execute("UPDATE audit SET actor = 'tg:1' WHERE seq = ?", (seq,))
        bot = await start_bot(engine=engine)
        reply = await bot.command(BOT_ADMIN, "/audit verify")
        assert reply.text.startswith(f"Audit chain BROKEN at entry {seq}:")
    finally:
        await engine.close()


async def test_stats_and_users(bot: BotHarness, bot_engine: Engine) -> None:
    stats = await bot_engine.stats()
    reply = await bot.command(BOT_ADMIN, "/stats")
    assert reply.text.startswith(f"Gallery: {stats.images:,} images, {stats.faces:,} faces")
    assert "(192-d, search breadth 1000)" in reply.text  # the projected index; the hamming index re-ranks 1,000
    reply = await bot.command(BOT_ADMIN, "/users")
    assert f"{BOT_ADMIN} (admin, bootstrap" in reply.text


async def test_flood_control_and_network_errors_are_retried(bot: BotHarness) -> None:
    bot.fake.fail_next("sendMessage", retry_after=1)
    bot.fake.fail_next("sendMessage", status=502)
    bot.fake.send_text(BOT_ADMIN, "/help")
    delivered = await bot.fake.wait_for("sendMessage", chat_id=BOT_ADMIN, where=lambda c: "message_id" in (c.result or {}))
    assert "Admin commands:" in delivered.text
    attempts = bot.fake.calls_of("sendMessage", chat_id=BOT_ADMIN)
    assert [a.result.get("error_code") for a in attempts] == [429, 502, None]


async def test_unexpected_error_is_logged_and_the_user_gets_an_apology(
    bot: BotHarness, caplog: pytest.LogCaptureFixture
) -> None:
    async def on_boom(update: Update, context: object) -> None:
        raise RuntimeError("boom")

    bot.app.add_handler(CommandHandler("boom", on_boom), group=1)
    officer = new_user_id()
    await bot.allow(officer)
    with caplog.at_level(logging.ERROR, logger="bot.handlers.errors"):
        bot.fake.send_text(officer, "/boom")
        await bot.fake.wait_for("sendMessage", chat_id=officer, where=lambda c: c.text == texts.sorry(EN))
    record = next(r for r in caplog.records if r.name == "bot.handlers.errors")
    assert record.exc_info and isinstance(record.exc_info[1], RuntimeError)
