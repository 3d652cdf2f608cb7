"""/start, /help, and the replies to anything else a whitelisted account sends."""

from __future__ import annotations

import logging

from telegram import Update

from bot import menus, texts
from bot.context import BotContext

logger = logging.getLogger(__name__)


async def on_start(update: Update, context: BotContext) -> None:
    """Explain the flow; give an admin's chat the admin menu (it may not have existed before)."""
    assert update.effective_message is not None
    if context.account.is_admin:
        await menus.show_admin_menu(context.bot, context.account.user_id, context.t)
    await update.effective_message.reply_text(texts.start(context.t))


async def on_help(update: Update, context: BotContext) -> None:
    """List the commands this account may use."""
    assert update.effective_message is not None
    account = context.account
    await update.effective_message.reply_text(
        texts.help_text(context.t, account.is_admin, account.active_case, context.settings.rate_limit_per_hour)
    )


async def on_unknown_command(update: Update, context: BotContext) -> None:
    """A command the bot does not have."""
    assert update.effective_message is not None
    logger.info("unknown command from %s", context.account.user_id)
    await update.effective_message.reply_text(texts.unknown_command(context.t))


async def on_other(update: Update, context: BotContext) -> None:
    """Text, stickers, videos...: point to what the bot does."""
    assert update.effective_message is not None
    await update.effective_message.reply_text(texts.send_a_photo(context.t))
