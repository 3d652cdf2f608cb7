"""/case: the officer's active case reference, which every search is logged against."""

from __future__ import annotations

from telegram import Update

from bot import texts
from bot.context import BotContext
from bot.telegram_io import command_argument
from engine import EngineError, InvalidArgument
from engine.engine import MAX_CASE_LEN


async def on_case(update: Update, context: BotContext) -> None:
    """/case <ref> sets the active case, /case shows it, /case clear (or the word in any language) clears it."""
    message = update.effective_message
    assert message is not None
    account = context.account
    t = context.t
    args = context.args or []
    if not args:
        await message.reply_text(texts.case_shown(t, account.active_case))
        return
    clear = len(args) == 1 and args[0].lower() in texts.clear_words(list(context.services.languages))
    typed = command_argument(message.text or "")  # as typed: args would turn "A<NEL>B" into "A B"
    try:
        case = await context.engine.set_case(account.user_id, None if clear else typed, actor=account.actor)
    except InvalidArgument:
        await message.reply_text(f"{texts.case_invalid(t, MAX_CASE_LEN)}\n{texts.usage_case(t)}")
        return
    except EngineError as exc:
        cfg = context.engine.config
        reply = texts.officer_error(t, exc, cfg.max_image_bytes, cfg.max_image_pixels)
        await message.reply_text(f"{reply}\n{texts.usage_case(t)}")
        return
    await message.reply_text(texts.case_set(t, case) if case else texts.case_cleared(t))
