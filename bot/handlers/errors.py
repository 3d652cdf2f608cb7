"""The one error handler: log with the traceback first, then apologise (PTB `examples/errorhandlerbot.py`)."""

from __future__ import annotations

import logging
from typing import Any

from telegram import Update
from telegram.error import Conflict, Forbidden, InvalidToken, NetworkError, RetryAfter, TelegramError
from telegram.ext import Application

from bot import texts
from bot.context import BotContext
from bot.i18n import Language
from bot.metrics import Metrics
from bot.telegram_io import UnreadableUpdates, error_text, seconds
from engine import EngineError

logger = logging.getLogger(__name__)


def _language(update: Update, context: BotContext) -> Language:
    """The account's language when the gate ran, else the one of the user's Telegram app."""
    try:
        return context.account.language
    except RuntimeError:
        user = update.effective_user
        return context.services.languages.choose(None, user.language_code if user else None)


TOKEN_REVOKED = ("Telegram refused the bot token while running (revoked, or replaced in @BotFather?): stopping. "
                 "Set SIGHTLINE_TELEGRAM_TOKEN to the bot's current token and start it again.")


def poll_failed(application: Application[Any, Any, Any, Any, Any, Any], error: TelegramError, pause: float) -> None:
    """A getUpdates poll failed (bot.telegram_io.FittingBot.get_updates pauses `pause` s, then polls again): one line and
    a count; a refused token (401) is one ERROR and stops the bot (`sightline run` then exits with 2)."""
    Metrics.of(application).error("telegram")
    if isinstance(error, InvalidToken):
        logger.error("%s", TOKEN_REVOKED)
        application.stop_running()
        return
    if isinstance(error, RetryAfter):
        logger.warning("Telegram asks to wait %.0f s before polling again (a 429, flood control); polling again in %.0f s",
                       seconds(error._retry_after), pause)  # PTB's own loop reads this too; .retry_after warns of its type change
        return
    logger.warning("cannot fetch updates from Telegram (%s); polling again in %.1f s", error_text(error), pause)


async def on_error(update: object, context: BotContext) -> None:
    """Log every unexpected exception with its traceback, count it, and tell the user we failed.

    A failed poll for updates is expected operation, not a bug: FittingBot.get_updates reports it to `poll_failed`; one
    that reaches PTB's loop anyway (update None) is one warning line, counted, no traceback.
    """
    error = context.error
    what = f"update {update.update_id}" if isinstance(update, Update) else "a job or the updater"
    if isinstance(error, Forbidden):  # the user blocked the bot: nobody to apologise to
        logger.info("cannot reach the user while handling %s: %s", what, error)
        return
    if update is None and isinstance(error, NetworkError | Conflict | UnreadableUpdates):  # getUpdates failed: PTB's Updater polls again
        logger.warning("cannot fetch updates from Telegram (%s); polling again", error_text(error))
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
