"""/audit: the last entries of the hash-chained audit log, or a verification of the whole chain."""

from __future__ import annotations

import re

from telegram import Update

from bot import texts
from bot.context import BotContext
from bot.handlers.access import admin_only
from bot.telegram_io import split_message

DEFAULT_ENTRIES = 10
MAX_ENTRIES = 100
COUNT = re.compile(r"[0-9]{1,3}")  # ASCII digits only: str.isdigit() accepts "²", which int() refuses


@admin_only
async def on_audit(update: Update, context: BotContext) -> None:
    """/audit [n] lists the last n entries (default 10); /audit verify checks the chain."""
    message = update.effective_message
    assert message is not None
    args = context.args or []
    if args == ["verify"]:
        await message.reply_text(texts.audit_check(await context.engine.audit_verify()))
        return
    if len(args) > 1 or (args and not (COUNT.fullmatch(args[0]) and 1 <= int(args[0]) <= MAX_ENTRIES)):
        await message.reply_text(texts.USAGE["audit"])
        return
    n = int(args[0]) if args else DEFAULT_ENTRIES
    for chunk in split_message(texts.audit_entries(await context.engine.audit_tail(n))):
        await message.reply_text(chunk, protect_content=context.settings.protect_content)  # names gallery subjects
