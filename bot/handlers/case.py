"""/case: the officer's active case reference, which every search is logged against."""

from __future__ import annotations

from telegram import Update

from bot import texts
from bot.context import BotContext
from bot.telegram_io import command_argument
from engine import EngineError


async def on_case(update: Update, context: BotContext) -> None:
    """/case <ref> sets the active case, /case shows it, /case clear clears it."""
    message = update.effective_message
    assert message is not None
    account = context.account
    args = context.args or []
    if not args:
        await message.reply_text(texts.case_shown(account.active_case))
        return
    clear = len(args) == 1 and args[0].lower() == "clear"
    typed = command_argument(message.text or "")  # as typed: args would turn "A<NEL>B" into "A B"
    try:
        case = await context.engine.set_case(account.user_id, None if clear else typed, actor=account.actor)
    except EngineError as exc:
        await message.reply_text(f"{texts.for_error(exc)}\n{texts.USAGE['case']}")
        return
    await message.reply_text(texts.case_set(case) if case else texts.CASE_CLEARED)
