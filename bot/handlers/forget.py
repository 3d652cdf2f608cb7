"""/forget: erase images (and all their faces) by subject, source link or content hash, for good, after the
admin confirms with a button."""

from __future__ import annotations

import re

from telegram import Message, Update

from bot import texts
from bot.context import BotContext
from bot.handlers.access import admin_only
from bot.handlers.confirm import ask_confirmation
from bot.sessions import Confirmation
from bot.telegram_io import command_argument
from engine import EngineError

SHA256 = re.compile(r"[0-9a-fA-F]{64}")
KEYWORD = {"subject": "subject", "source": "source_url", "image": "sha256"}  # /forget's word -> Engine.forget's argument


@admin_only
async def on_forget(update: Update, context: BotContext) -> None:
    """/forget subject <name> | source <URL> | image <sha256>."""
    message = update.effective_message
    assert message is not None
    args = context.args or []
    what = args[0].lower() if args else ""
    value = command_argument(message.text or "", skip=2) if what == "subject" else " ".join(args[1:])
    valid = (
        (what == "subject" and value)
        or (what == "source" and len(args) == 2)
        or (what == "image" and len(args) == 2 and SHA256.fullmatch(value))
    )
    if not valid:
        await message.reply_text(texts.USAGE["forget"])
        return
    try:  # nothing to erase is said at once, not after the admin confirmed
        await context.engine.images_to_forget(**{KEYWORD[what]: value.lower() if what == "image" else value})
    except EngineError as exc:
        await message.reply_text(texts.for_error(exc))
        return
    await ask_confirmation(message, context, Confirmation(context.account.user_id, "forget", (what, value)),
                           texts.confirm_forget(what, value), texts.CONFIRM_FORGET)


async def execute(message: Message, context: BotContext, what: str, value: str) -> None:
    """Erase, after the admin confirmed, and say what went."""
    actor = context.account.actor
    try:
        erasure = await context.engine.forget(**{KEYWORD[what]: value.lower() if what == "image" else value}, actor=actor)
    except EngineError as exc:
        await message.reply_text(texts.for_error(exc))
        return
    await message.reply_text(texts.forgotten(erasure, what, value))
