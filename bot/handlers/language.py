"""/language: an account chooses the bot's language with a button; the choice is remembered (users table)."""

from __future__ import annotations

import logging

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
from telegram.error import BadRequest

from bot import menus, texts
from bot.context import BotContext

logger = logging.getLogger(__name__)

LANGUAGE_PATTERN = r"^lang:([a-z]{2,8})$"


async def on_language(update: Update, context: BotContext) -> None:
    """One button per configured language, each in its own name; the current one is ticked."""
    message = update.effective_message
    assert message is not None
    current = context.t
    buttons = [
        [InlineKeyboardButton(("✓ " if language is current else "") + language.name, callback_data=f"lang:{language.code}")]
        for language in context.services.languages
    ]
    await message.reply_text(texts.choose_language(current), reply_markup=InlineKeyboardMarkup(buttons))


async def on_language_choice(update: Update, context: BotContext) -> None:
    """A language button: remember the choice (audited), confirm in that language, update the menu."""
    query = update.callback_query
    assert query is not None and context.matches
    language = context.services.languages.get(context.matches[0].group(1))
    if language is None:  # a language the operator has since removed
        await query.answer(texts.results_expired(context.t), show_alert=True)
        return
    account = context.account
    await context.engine.set_language(account.user_id, language.code, actor=account.actor)
    logger.info("%s chose language %s", account.actor, language.code)
    await query.answer()
    confirmation = texts.language_set(language)
    message = query.message if isinstance(query.message, Message) else None
    try:
        if message is None:
            raise BadRequest("no message")
        await query.edit_message_text(confirmation)
    except BadRequest:  # too old to edit: say it in the chat
        await context.bot.send_message(account.user_id, confirmation)
    if account.is_admin:
        await menus.show_admin_menu(context.bot, account.user_id, language)
    else:
        await menus.show_officer_menu(context.bot, account.user_id, language, language.code)
