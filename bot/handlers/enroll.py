"""/enroll: an admin adds a photo to the gallery, replying to it (or as its caption)."""

from __future__ import annotations

import logging

from telegram import Message, Update

from bot import texts
from bot.context import BotContext
from bot.handlers.access import admin_only
from bot.i18n import ENGLISH
from bot.telegram_io import FileTooBig, chat_action, download, download_limit, image_attachment
from engine import EngineError

logger = logging.getLogger(__name__)

CAPTION_PATTERN = r"^/enroll(@\w+)?(\s|$)"


@admin_only
async def on_enroll(update: Update, context: BotContext) -> None:
    """/enroll <source_url> [subject] as a reply to a photo or image file."""
    message = update.effective_message
    assert message is not None
    await _enroll(message, message.reply_to_message, context.args or [], context)


@admin_only
async def on_enroll_caption(update: Update, context: BotContext) -> None:
    """A photo or image file sent with "/enroll <source_url> [subject]" as its caption."""
    message = update.effective_message
    assert message is not None and message.caption is not None
    await _enroll(message, message, message.caption.split()[1:], context)


async def _enroll(message: Message, photo: Message | None, args: list[str], context: BotContext) -> None:
    """Check the arguments and the image, download it, and add it to the gallery."""
    attachment = image_attachment(photo)
    if attachment is None or not args:
        await message.reply_text(texts.USAGE["enroll"])
        return
    source_url, subject = args[0], " ".join(args[1:]) or None
    engine = context.engine
    limit = download_limit(engine.config.max_image_bytes)
    async with chat_action(context.bot, message.chat_id, "typing"):
        try:
            image = await download(context.bot, attachment, limit)
            enrollment = await engine.enroll(image, source_url=source_url, subject=subject,
                                             actor=context.account.actor, save=False)  # saved each minute
        except FileTooBig as exc:
            await message.reply_text(texts.too_big(ENGLISH, exc.size, limit))
            return
        except EngineError as exc:
            await message.reply_text(texts.for_error(exc))
            return
    logger.info("%s enrolled image %s (%d faces)", context.account.actor, enrollment.image_id, enrollment.faces)
    await message.reply_text(texts.enrolled(enrollment))
