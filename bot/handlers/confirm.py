"""Confirmation buttons before what cannot be undone: /forget, and an admin revoking or demoting themself."""

from __future__ import annotations

import logging

from telegram import Message, Update
from telegram.error import BadRequest

from bot import texts
from bot.context import BotContext
from bot.handlers.access import refuse
from bot.sessions import Confirmation
from bot.telegram_io import button, markup

logger = logging.getLogger(__name__)

PATTERN = r"^(yes|no):([\w-]{8})$"


async def ask_confirmation(message: Message, context: BotContext, pending: Confirmation, question: str,
                           confirm_label: str) -> None:
    """Reply with the question and two buttons (confirm, cancel); the action waits in memory for 5 minutes."""
    token = context.services.confirmations.put(pending)
    keys = markup([[button(confirm_label, callback_data=f"yes:{token}"), button(texts.CANCEL, callback_data=f"no:{token}")]])
    await message.reply_text(question, reply_markup=keys)


async def on_confirm(update: Update, context: BotContext) -> None:
    """A confirm or cancel button: run the action once (a second tap finds nothing), or drop it."""
    from bot.handlers import forget, users  # they import this module for ask_confirmation

    query = update.callback_query
    assert query is not None and context.matches
    answer, token = context.matches[0].group(1), context.matches[0].group(2)
    store = context.services.confirmations
    pending = store.get(token)
    message = query.message if isinstance(query.message, Message) else None
    if pending is None or message is None:
        await query.answer(texts.CONFIRM_EXPIRED, show_alert=True)
        return
    account = context.account
    if pending.owner != account.user_id:
        await query.answer(texts.not_your_button(context.t), show_alert=True)
        return
    store.pop(token)  # before any await: a second tap finds nothing
    if answer == "no":
        await query.answer(texts.CANCELLED)
        await _close(query.edit_message_text, f"{message.text or ''}\n\n{texts.CANCELLED}")
        return
    if not account.is_admin:  # demoted since the question was asked
        await refuse(update, context, account.actor, "not_admin", texts.admin_only(context.t), command=pending.action)
        return
    await query.answer()
    await _close(query.edit_message_reply_markup, None)
    if pending.action == "forget":
        await forget.execute(message, context, *pending.args)
    elif pending.action == "revoke":
        await users.execute_revoke(message, context, int(pending.args[0]))
    elif pending.action == "demote":
        user_id, role, note = pending.args
        await users.execute_allow(message, context, int(user_id), role, note)
    else:  # pragma: no cover - every action above is the only kind stored
        logger.error("unknown confirmed action %r", pending.action)


async def _close(edit: object, value: object) -> None:
    """Remove the buttons of the question (cosmetic: a failure is only logged)."""
    try:
        await edit(value)  # type: ignore[operator]
    except BadRequest as exc:
        logger.debug("could not close the question: %s", exc.message)
