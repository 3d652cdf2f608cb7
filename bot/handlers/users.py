"""Admin commands about accounts and the gallery: /allow, /revoke, /users, /stats."""

from __future__ import annotations

import logging
import re

from telegram import Message, Update
from telegram.error import TelegramError

from bot import menus, texts
from bot.context import BotContext
from bot.handlers.access import admin_only
from bot.handlers.confirm import ask_confirmation
from bot.sessions import Confirmation
from bot.telegram_io import split_message
from engine import EngineError

logger = logging.getLogger(__name__)

ROLES = ("officer", "admin")
ASCII_DIGITS = re.compile(r"[0-9]{1,19}")  # str.isdigit() also accepts "²" and other digits int() refuses
MAX_USER_ID = 2**63 - 1  # Telegram ids fit in a signed 64-bit integer (and so in SQLite's INTEGER)


def parse_user_id(text: str) -> int | None:
    """A positive Telegram user id written in ASCII digits (at most 2**63 - 1), or None."""
    if not ASCII_DIGITS.fullmatch(text):
        return None
    user_id = int(text)
    return user_id if 0 < user_id <= MAX_USER_ID else None


@admin_only
async def on_allow(update: Update, context: BotContext) -> None:
    """/allow <user_id> [officer|admin] [note]: whitelist an account or change its role.

    A bootstrap admin (SIGHTLINE_ADMINS) cannot be made an officer here; an admin making themself an officer
    is asked to confirm; the engine refuses to demote the last admin.
    """
    message = update.effective_message
    assert message is not None
    args = context.args or []
    user_id = parse_user_id(args[0]) if args else None
    role = args[1].lower() if len(args) > 1 else "officer"
    if user_id is None or role not in ROLES:
        await message.reply_text(texts.USAGE["allow"])
        return
    note = " ".join(args[2:])
    if role != "admin" and user_id in context.settings.admin_ids:
        await message.reply_text(texts.cannot_demote_bootstrap(user_id))
        return
    if role != "admin" and user_id == context.account.user_id:
        await ask_confirmation(message, context, Confirmation(user_id, "demote", (str(user_id), role, note)),
                               texts.confirm_demote_self(user_id), texts.CONFIRM_DEMOTE)
        return
    await execute_allow(message, context, user_id, role, note)


async def execute_allow(message: Message, context: BotContext, user_id: int, role: str, note: str) -> None:
    """Whitelist the account (or change its role), fix its menu, confirm, and welcome them."""
    before = await context.engine.user(user_id)
    try:
        user = await context.engine.allow(user_id, role, note, actor=context.account.actor)
    except EngineError as exc:
        await message.reply_text(texts.for_error(exc))
        return
    chosen = await context.engine.language(user_id)
    language = context.services.languages.choose(chosen, context.services.seen_languages.get(user_id))
    if user.role == "admin":
        await menus.show_admin_menu(context.bot, user_id, language)
    elif before is not None and before.role == "admin" and user_id not in context.settings.admin_ids:
        await menus.show_officer_menu(  # demoted: the officer menu (their chosen language's, or the default)
            context.bot, user_id, language, chosen)
    await message.reply_text(texts.allowed(user))
    if user_id == context.account.user_id:
        return
    try:  # only works once they have written to the bot; harmless if not
        await context.bot.send_message(user_id, texts.welcome(language, user.role))
    except TelegramError as exc:
        logger.info("could not tell %s they were allowed: %s", user_id, exc)


@admin_only
async def on_revoke(update: Update, context: BotContext) -> None:
    """/revoke <user_id>: remove an account from the whitelist, effective for its next update.

    Revoking oneself is asked to confirm; the engine refuses to remove the last admin.
    """
    message = update.effective_message
    assert message is not None
    args = context.args or []
    user_id = parse_user_id(args[0]) if len(args) == 1 else None
    if user_id is None:
        await message.reply_text(texts.USAGE["revoke"])
        return
    if user_id in context.settings.admin_ids:
        await message.reply_text(texts.cannot_revoke_bootstrap(user_id))
        return
    if user_id == context.account.user_id:
        await ask_confirmation(message, context, Confirmation(user_id, "revoke", (str(user_id),)),
                               texts.confirm_revoke_self(user_id), texts.CONFIRM_REVOKE)
        return
    await execute_revoke(message, context, user_id)


async def execute_revoke(message: Message, context: BotContext, user_id: int) -> None:
    """Remove the account, hide its admin menu, and confirm."""
    try:
        await context.engine.revoke(user_id, actor=context.account.actor)
    except EngineError as exc:
        await message.reply_text(texts.for_error(exc))
        return
    await menus.hide_admin_menu(context.bot, user_id)
    await message.reply_text(texts.revoked(user_id))


@admin_only
async def on_users(update: Update, context: BotContext) -> None:
    """/users: every whitelisted account."""
    message = update.effective_message
    assert message is not None
    if context.args:
        await message.reply_text(texts.USAGE["users"])
        return
    users = await context.engine.users()
    for chunk in split_message(texts.users_list(users, context.settings.admin_ids)):
        await message.reply_text(chunk)


@admin_only
async def on_stats(update: Update, context: BotContext) -> None:
    """/stats: gallery counts and sizes."""
    message = update.effective_message
    assert message is not None
    if context.args:
        await message.reply_text(texts.USAGE["stats"])
        return
    await message.reply_text(texts.stats(await context.engine.stats()))

