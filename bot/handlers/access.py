"""Who may use the bot: the gate every update passes first, and the admin-only guard."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from telegram import ReplyParameters, Update
from telegram.constants import ChatType
from telegram.error import BadRequest
from telegram.ext import ApplicationHandlerStop

from bot import texts
from bot.context import Account, BotContext, Services
from bot.i18n import Language
from engine import Engine

logger = logging.getLogger(__name__)

Handler = Callable[[Update, BotContext], Coroutine[Any, Any, None]]
# audit reason -> metrics label (bot/metrics.py REFUSAL_REASONS)
STRANGERS_ACTOR = "tg:strangers"  # the audit actor of refusals beyond the per-minute cap (many accounts at once)
METRIC_REASONS = {"not_whitelisted": "not_allowed", "not_admin": "not_allowed"}


def update_kind(update: Update) -> str:
    """A one-word description of an update for the audit log (never its content)."""
    message = update.effective_message
    if update.callback_query is not None:
        return "button"
    if message is None:
        return "other"
    if message.photo:
        return "photo"
    if message.document:
        return "document"
    if message.text and message.text.startswith("/"):
        return "command"
    return "text" if message.text else "other"


async def account_for(context: BotContext, user_id: int, telegram_language: str | None = None) -> Account | None:
    """The whitelisted account of a Telegram user, or None; bootstrap admins get a row on first contact."""
    bootstrap = user_id in context.settings.admin_ids
    user = await context.engine.user(user_id)
    if user is None and bootstrap:
        user = await context.engine.allow(user_id, "admin", texts.BOOTSTRAP_NOTE, actor="system")
    if user is None:
        return None
    language = context.services.languages.choose(await context.engine.language(user_id), telegram_language)
    return Account(user.user_id, user.role, user.active_case, bootstrap, language)


async def refuse(update: Update, context: BotContext, actor: str, reason: str, reply: str,
                 language: Language | None = None, **details: Any) -> None:
    """Record a refusal in the audit log (with the language of the reply), count it, and tell the user why
    (quoting the message refused, so in an album the officer sees which photo was not searched)."""
    await context.engine.record(actor, "refused", None, reason=reason, update=update_kind(update),
                                lang=(language or context.t).code, **details)
    context.metrics.refused(METRIC_REASONS.get(reason, reason))
    await _tell(update, context, reply)


async def _tell(update: Update, context: BotContext, reply: str) -> None:
    """A refusal's reply: an alert on a button, else a message in the chat."""
    if update.callback_query is not None:
        try:
            await update.callback_query.answer(reply[:200], show_alert=True)
            return
        except BadRequest:  # already answered ("Searching face 2..."): say it in the chat instead
            pass
    if update.effective_chat is not None:
        message = update.effective_message if update.callback_query is None else None
        quote = ReplyParameters(message.message_id, allow_sending_without_reply=True) if message else None
        await context.bot.send_message(update.effective_chat.id, reply, reply_parameters=quote)


async def gate(update: Update, context: BotContext) -> None:
    """Let whitelisted accounts through; refuse everyone else, showing their id, and stop the update there.

    Nothing of a refused update is downloaded or processed. Only private chats are served. A stranger gets
    one reply, then silence for `stranger_quiet_seconds`: those refusals are counted, not answered, and
    audited as one entry with their count when the quiet time ends.
    """
    user = update.effective_user
    chat = update.effective_chat
    if user is None or user.is_bot or (chat is not None and chat.type != ChatType.PRIVATE):
        logger.debug("ignoring update %s: not from a person in a private chat", update.update_id)
        raise ApplicationHandlerStop
    context.services.saw_language(user.id, user.language_code)
    account = await account_for(context, user.id, user.language_code)
    if account is None:
        await _refuse_stranger(update, context, user.id, context.services.languages.choose(None, user.language_code))
        raise ApplicationHandlerStop
    context.account = account


async def _refuse_stranger(update: Update, context: BotContext, user_id: int, language: Language) -> None:
    """Answer a stranger's first message, in the language of their Telegram app; only count the next ones for a while."""
    services = context.services
    await flush_strangers(services, context.engine)  # windows that ended become audit entries first
    kind = update_kind(update)
    if not services.strangers.first(user_id):
        services.strangers.count(user_id, kind)
        context.metrics.refused(METRIC_REASONS["not_whitelisted"])
        logger.debug("refused %s from %s silently (quiet time)", kind, user_id)
        if update.callback_query is not None:  # stop the button's spinner, say nothing
            try:
                await update.callback_query.answer()
            except BadRequest:
                pass
        return
    logger.info("refused %s from %s: not whitelisted", kind, user_id)
    reply = texts.not_authorised(language, user_id, context.settings.stranger_quiet_seconds)
    await refuse(update, context, f"tg:{user_id}", "not_whitelisted", reply, language)


async def flush_strangers(services: Services, engine: Engine, everything: bool = False) -> None:
    """Write one audit entry per stranger whose quiet time ended, with how many refusals it covered, and one for
    the strangers beyond the per-minute cap once their minute ended."""
    for user_id, counts in services.strangers.due(everything).items():
        await engine.record(f"tg:{user_id}", "refused", None, reason="not_whitelisted", update="repeated",
                            count=sum(counts.values()), kinds=counts, quiet_seconds=services.strangers.quiet)
    crowd = services.strangers.crowd_due(everything)
    if crowd is not None:
        logger.warning("refused %d messages from %d accounts that are not whitelisted without replying (over %d a minute)",
                       crowd.count, crowd.accounts, services.strangers.per_minute)
        await engine.record(STRANGERS_ACTOR, "refused", None, reason="not_whitelisted", update="crowd", count=crowd.count,
                            kinds=crowd.kinds, accounts=crowd.accounts, per_minute=services.strangers.per_minute)


def admin_only(handler: Handler) -> Handler:
    """Run the handler for admins; others get a short refusal, recorded in the audit log."""

    @functools.wraps(handler)
    async def guarded(update: Update, context: BotContext) -> None:
        account = context.account
        if not account.is_admin:
            command = handler.__name__.removeprefix("on_")
            await refuse(update, context, account.actor, "not_admin", texts.admin_only(context.t), command=command)
            return
        await handler(update, context)

    return guarded
