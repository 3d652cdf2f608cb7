"""The command menus Telegram shows: officer commands for everyone, admin commands only in admins' chats."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from telegram import Bot, BotCommand, BotCommandScopeChat, BotCommandScopeDefault
from telegram.error import TelegramError

from bot import texts

logger = logging.getLogger(__name__)


def officer_commands() -> list[BotCommand]:
    """The menu of every account."""
    return [BotCommand(name, text[:256]) for name, text in texts.OFFICER_COMMANDS]


def admin_commands() -> list[BotCommand]:
    """The menu in an admin's chat: the officer commands, then the admin ones."""
    return officer_commands() + [BotCommand(name, text[:256]) for name, text in texts.ADMIN_COMMANDS]


async def publish(bot: Bot, admin_ids: Iterable[int]) -> None:
    """Register the default menu and each admin's menu (a chat the bot has never seen is skipped)."""
    await bot.set_my_commands(officer_commands(), scope=BotCommandScopeDefault())
    for user_id in sorted(set(admin_ids)):
        await show_admin_menu(bot, user_id)


async def show_admin_menu(bot: Bot, user_id: int) -> None:
    """Give an admin's private chat the admin menu."""
    try:
        await bot.set_my_commands(admin_commands(), scope=BotCommandScopeChat(user_id))
    except TelegramError as exc:  # "chat not found" until the admin has written to the bot once
        logger.info("admin menu for %s not set: %s", user_id, exc)


async def hide_admin_menu(bot: Bot, user_id: int) -> None:
    """Back to the default menu in a chat (after /revoke or a demotion)."""
    try:
        await bot.delete_my_commands(scope=BotCommandScopeChat(user_id))
    except TelegramError as exc:
        logger.info("admin menu for %s not removed: %s", user_id, exc)
