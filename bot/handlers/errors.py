"""The one error handler: log with the traceback first, then apologise (PTB `examples/errorhandlerbot.py`)."""

from __future__ import annotations

import logging

from telegram import Update
from telegram.error import Conflict, Forbidden, NetworkError, TelegramError

from bot import texts
from bot.context import BotContext
from bot.i18n import Language
from bot.telegram_io import UnreadableUpdates
from engine import EngineError

logger = logging.getLogger(__name__)


def _language(update: Update, context: BotContext) -> Language:
    """The account's language when the gate ran, else the one of the user's Telegram app."""
    try:
        return context.account.language
    except RuntimeError:
        user = update.effective_user
        return context.services.languages.choose(None, user.language_code if user else None)


async def on_error(update: object, context: BotContext) -> None:
    """Log every unexpected exception with its traceback, count it, and tell the user we failed.

    A failed poll for updates (Telegram unreachable, a proxy's 5xx or garbage, another instance polling) is expected
    operation, not a bug: one warning line, counted, no traceback (PTB's Updater retries with growing pauses up to 30 s).
    """
    error = context.error
    what = f"update {update.update_id}" if isinstance(update, Update) else "a job or the updater"
    if isinstance(error, Forbidden):  # the user blocked the bot: nobody to apologise to
        logger.info("cannot reach the user while handling %s: %s", what, error)
        return
    if update is None and isinstance(error, NetworkError | Conflict | UnreadableUpdates):  # getUpdates failed: PTB's Updater polls again
        logger.warning("cannot fetch updates from Telegram (%s: %s); polling again", type(error).__name__, error)
        context.metrics.error("telegram")
        return
    logger.error("unhandled error while handling %s", what, exc_info=error)
    kind = "engine" if isinstance(error, EngineError) else "telegram" if isinstance(error, TelegramError) else "unhandled"
    context.metrics.error(kind)
    if not isinstance(update, Update) or update.effective_chat is None:
        return
    if update.callback_query is not None:
        try:  # stop the button's spinner; fails harmlessly if it was answered already
            await update.callback_query.answer()
        except TelegramError:
            pass
    try:
        await context.bot.send_message(update.effective_chat.id, texts.sorry(_language(update, context)))
    except TelegramError as exc:
        logger.warning("could not apologise in chat %s: %s", update.effective_chat.id, exc)
