"""Who may use the bot: refusals of strangers, /allow, /revoke, admin-only commands, menus, the token check."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest

from bot import texts
from bot.app import MissingToken, build_application, run
from bot.i18n import ENGLISH as EN
from bot.settings import Settings
from conftest import BOT_ADMIN, DEV, BotHarness, new_user_id
from engine import Engine

StartBot = Callable[..., Awaitable[BotHarness]]
PHOTO = DEV / "George_W_Bush" / "2.jpg"  # not in the gallery (photo 1 is)


async def audit_of(engine: Engine, user_id: int, n: int = 50) -> list[tuple[str, dict[str, object]]]:
    """(action, details) of the recent audit entries whose actor is this Telegram user."""
    return [(e.action, e.details) for e in await engine.audit_tail(n) if e.actor == f"tg:{user_id}"]


async def test_stranger_is_refused_with_their_id_nothing_downloaded_and_audited(start_bot: StartBot, bot_engine: Engine) -> None:
    bot = await start_bot(stranger_quiet_seconds=0)  # answer every message (test_bot_field.py tests the quiet time)
    stranger = new_user_id()
    bot.fake.send_photo(stranger, PHOTO.read_bytes())
    reply = await bot.fake.wait_for("sendMessage", chat_id=stranger)
    assert "not authorised" in reply.text and str(stranger) in reply.text
    assert not bot.fake.calls_of("getFile") and bot.fake.downloads == []

    reply = await bot.command(stranger, "/start")  # commands too: same one short reply
    assert "not authorised" in reply.text and str(stranger) in reply.text
    await bot.fake.quiet()
    assert not bot.fake.calls_of("sendPhoto") and bot.fake.downloads == []
    entries = await audit_of(bot_engine, stranger)
    assert [(a, d["reason"], d["update"]) for a, d in entries] == [
        ("refused", "not_whitelisted", "photo"), ("refused", "not_whitelisted", "command"),
    ]


async def test_allowed_officer_searches_and_the_right_identity_comes_first(bot: BotHarness, bot_engine: Engine) -> None:
    officer = new_user_id()
    reply = await bot.command(BOT_ADMIN, f"/allow {officer} officer Unit 5")
    assert reply.text == f"User {officer} may now use Sightline as officer (Unit 5)."
    welcome = await bot.fake.wait_for("sendMessage", chat_id=officer)
    assert "access to Sightline as officer" in welcome.text
    assert (await bot.command(officer, "/case OP-17")).text.startswith("Active case: OP-17")

    sent = bot.fake.send_photo(officer, PHOTO.read_bytes())
    result = await bot.fake.wait_for("sendPhoto", chat_id=officer)
    assert bot.fake.calls_of("sendChatAction", chat_id=officer)  # "sending photo..." while it worked
    assert bot.fake.downloads == [sent["photo"][-1]["file_id"]]  # the largest size only, once
    lines = result.text.splitlines()
    assert texts.leads_not_ids(EN) in lines
    assert any(line.startswith("Case OP-17") for line in lines)
    first = next(line for line in lines if line.startswith("1. "))
    assert first.startswith("1. George_W_Bush - ") and "(strong" in first
    urls = [b["url"] for b in result.buttons if "url" in b]
    assert urls[0] == "https://gallery.example/George_W_Bush/1.jpg"
    search = [d for a, d in await audit_of(bot_engine, officer) if a == "search"]
    assert len(search) == 1 and search[0]["faces"] == 1


async def test_revoke_takes_effect_on_the_next_message(bot: BotHarness) -> None:
    officer = new_user_id()
    await bot.allow(officer)
    assert "Send a photo" in (await bot.command(officer, "hello")).text

    mark = bot.fake.mark()
    reply = await bot.command(BOT_ADMIN, f"/revoke {officer}")
    assert reply.text == texts.revoked(officer)
    assert bot.fake.calls_of("deleteMyCommands", since=mark, scope={"type": "chat", "chat_id": officer})

    bot.fake.send_photo(officer, PHOTO.read_bytes())
    reply = await bot.fake.wait_for("sendMessage", chat_id=officer)
    assert "not authorised" in reply.text
    assert bot.fake.downloads == []

    assert "is not on the whitelist" in (await bot.command(BOT_ADMIN, f"/revoke {officer}")).text
    assert "SIGHTLINE_ADMINS" in (await bot.command(BOT_ADMIN, f"/revoke {BOT_ADMIN}")).text


async def test_officer_cannot_use_admin_commands(bot: BotHarness, bot_engine: Engine) -> None:
    officer = new_user_id()
    await bot.allow(officer)
    victim = new_user_id()
    for command in (f"/allow {victim} admin", f"/revoke {BOT_ADMIN}", "/users", "/stats", "/audit verify",
                    "/forget subject George_W_Bush", "/enroll https://x.example/1"):
        reply = await bot.command(officer, command)
        assert reply.text == texts.admin_only(EN), command
    assert await bot_engine.user(victim) is None
    assert (await bot_engine.stats()).subjects >= 28  # nothing was forgotten
    refused = [d["command"] for a, d in await audit_of(bot_engine, officer) if a == "refused"]
    assert refused == ["allow", "revoke", "users", "stats", "audit", "forget", "enroll"]


async def test_admin_commands_validate_their_arguments(bot: BotHarness) -> None:
    for command, usage in [
        ("/allow", "allow"), ("/allow abc", "allow"), ("/allow -5", "allow"), ("/allow 77 boss", "allow"),
        ("/revoke", "revoke"), ("/revoke 1 2", "revoke"), ("/revoke x", "revoke"),
        ("/audit 0", "audit"), ("/audit many", "audit"), ("/audit 1 2", "audit"),
        ("/forget", "forget"), ("/forget subject", "forget"), ("/forget image 1234", "forget"),
        ("/forget everything now", "forget"), ("/enroll", "enroll"), ("/users all", "users"),
    ]:
        reply = await bot.command(BOT_ADMIN, command)
        assert reply.text == texts.USAGE[usage], command


async def test_allow_admin_and_users_list_and_scoped_menus(bot: BotHarness) -> None:
    # At start-up: officer commands for everyone, admin commands only in the bootstrap admin's chat.
    menus = bot.fake.calls_of("setMyCommands")
    default = next(c for c in menus if c.params["scope"]["type"] == "default" and "language_code" not in c.params)
    admin = next(c for c in menus if c.params["scope"] == {"type": "chat", "chat_id": BOT_ADMIN})
    assert [c["command"] for c in default.params["commands"]] == ["start", "help", "case", "language"]
    assert {"allow", "revoke", "users", "stats", "enroll", "forget", "audit"} <= {
        c["command"] for c in admin.params["commands"]
    }

    new_admin = new_user_id()
    mark = bot.fake.mark()
    await bot.allow(new_admin, role="admin", case=None)
    assert bot.fake.calls_of("setMyCommands", since=mark, scope={"type": "chat", "chat_id": new_admin})
    reply = await bot.command(new_admin, "/users")  # the new admin can use admin commands
    assert f"{new_admin} (admin)" in reply.text and f"{BOT_ADMIN} (admin, bootstrap" in reply.text
    help_reply = await bot.command(new_admin, "/help")
    assert "/allow" in help_reply.text
    officer = new_user_id()
    await bot.allow(officer)
    assert "/allow" not in (await bot.command(officer, "/help")).text


async def test_unknown_command_and_plain_text(bot: BotHarness) -> None:
    assert (await bot.command(BOT_ADMIN, "/frobnicate")).text == texts.unknown_command(EN)
    assert (await bot.command(BOT_ADMIN, "who is this?")).text == texts.send_a_photo(EN)
    assert "Set your case" in (await bot.command(BOT_ADMIN, "/start")).text


async def test_missing_token_stops_startup_clearly(caplog: pytest.LogCaptureFixture, tmp_path: object) -> None:
    settings = Settings(telegram_token=None, data_dir=tmp_path, http_port=0)
    with pytest.raises(MissingToken) as info:
        build_application(settings)
    for words in ("@BotFather", "SIGHTLINE_TELEGRAM_TOKEN", "sightline search"):
        assert words in str(info.value)
    with caplog.at_level(logging.ERROR, logger="bot.app"):
        assert run(settings) == 2
    assert "SIGHTLINE_TELEGRAM_TOKEN" in caplog.text
