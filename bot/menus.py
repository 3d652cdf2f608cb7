"""The command menus Telegram shows: officer commands in each language, admin commands only in admins' chats.

The default menu is published once per configured language (`setMyCommands` with `language_code`), so
Telegram shows each officer the menu of their app's language, with that language's command names. An
account that chose another language with /language gets a menu of its own (chat scope), as admins do.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from telegram import Bot, BotCommand, BotCommandScopeChat, BotCommandScopeDefault
from telegram.error import TelegramError

from bot import texts
from bot.i18n import Language, Languages

logger = logging.getLogger(__name__)


def officer_commands(t: Language) -> list[BotCommand]:
    """The menu of every account, in `t`'s words."""
    return [BotCommand(name, text[:256]) for name, text in texts.officer_menu(t)]


def admin_commands(t: Language) -> list[BotCommand]:
    """The menu in an admin's chat: the officer commands (in `t`'s words), then the admin ones (English)."""
    return officer_commands(t) + [BotCommand(name, text[:256]) for name, text in texts.ADMIN_COMMANDS]


async def publish(bot: Bot, languages: Languages, admins: Mapping[int, Language]) -> None:
    """Register the default menu (the default language's, and one per other language) and each admin's menu."""
    await bot.set_my_commands(officer_commands(languages.default), scope=BotCommandScopeDefault())
    for language in languages:
        if language is not languages.default:
            await bot.set_my_commands(officer_commands(language), scope=BotCommandScopeDefault(),
                                      language_code=language.code)
    for user_id in sorted(admins):
        await show_admin_menu(bot, user_id, admins[user_id])


async def show_admin_menu(bot: Bot, user_id: int, t: Language) -> None:
    """Give an admin's private chat the admin menu."""
    try:
        await bot.set_my_commands(admin_commands(t), scope=BotCommandScopeChat(user_id))
    except TelegramError as exc:  # "chat not found" until the admin has written to the bot once
        logger.info("admin menu for %s not set: %s", user_id, exc)


async def show_officer_menu(bot: Bot, user_id: int, t: Language, chosen: str | None) -> None:
    """An officer's chat: their chosen language's menu, or (no choice) the default menu of their app's language."""
    if chosen is None:
        await hide_admin_menu(bot, user_id)
        return
    try:
        await bot.set_my_commands(officer_commands(t), scope=BotCommandScopeChat(user_id))
    except TelegramError as exc:
        logger.info("menu for %s not set: %s", user_id, exc)


async def hide_admin_menu(bot: Bot, user_id: int) -> None:
    """Back to the default menu in a chat (after /revoke or a demotion)."""
    try:
        await bot.delete_my_commands(scope=BotCommandScopeChat(user_id))
    except TelegramError as exc:
        logger.info("admin menu for %s not removed: %s", user_id, exc)
