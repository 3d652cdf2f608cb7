"""Search: a photo (or image file) in, the closest gallery faces out; the face-choice and More buttons."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, LinkPreviewOptions, Message, Update
from telegram.error import BadRequest

from bot import render, texts
from bot.context import BotContext
from bot.handlers.access import refuse
from bot.metrics import search_outcome
from bot.sessions import PendingPhoto, ResultSet
from bot.telegram_io import FileTooBig, chat_action, download, image_attachment
from engine import DetectedFace, EngineError, SeveralFaces

logger = logging.getLogger(__name__)

FACE_PATTERN = r"^face:([\w-]{8}):(\d{1,3})$"
MORE_PATTERN = r"^more:([\w-]{8}):(\d{1,3})$"
CAPTION_LIMIT = 1024  # Telegram's limit for photo captions
MAX_FACE_BUTTONS = 40
BUTTONS_PER_ROW = 5
MAX_PER_PAGE = 10


# -- handlers ------------------------------------------------------------------------------------
async def on_image(update: Update, context: BotContext) -> None:
    """Search the gallery for the face in a photo or image file; with several faces, ask which one."""
    message = update.effective_message
    assert message is not None
    started = time.perf_counter()
    attachment = image_attachment(message)
    if attachment is None:
        await message.reply_text(texts.not_an_image(context.t))
        return
    if not await _may_search(update, context):
        return
    engine = context.engine
    async with chat_action(context.bot, message.chat_id):
        try:
            image = await download(context.bot, attachment, engine.config.max_image_bytes)
        except FileTooBig as exc:
            await message.reply_text(texts.too_big(context.t, exc.size, engine.config.max_image_bytes))
            return
        await _search_and_reply(update, message, context, image, None, started)


async def on_face_choice(update: Update, context: BotContext) -> None:
    """A face button under a multi-face photo: search that face, if the photo is still in memory."""
    query = update.callback_query
    assert query is not None and context.matches
    token, number = context.matches[0].group(1), int(context.matches[0].group(2))
    pending = context.services.photos.get(token)
    message = query.message if isinstance(query.message, Message) else None
    if pending is None or message is None:
        await query.answer(texts.photo_expired(context.t, context.settings.photo_ttl_seconds), show_alert=True)
        return
    if pending.owner != context.account.user_id:
        await query.answer(texts.not_your_button(context.t), show_alert=True)
        return
    if not await _may_search(update, context):
        return
    await query.answer(texts.searching_face(context.t, number))
    started = time.perf_counter()
    async with chat_action(context.bot, message.chat_id):
        await _search_and_reply(update, message, context, pending.image, number, started)


async def on_more(update: Update, context: BotContext) -> None:
    """The More button: the next page of a search's matches (kept in memory, without the photo)."""
    query = update.callback_query
    assert query is not None and context.matches
    token, page = context.matches[0].group(1), int(context.matches[0].group(2))
    results = context.services.results.get(token)
    message = query.message if isinstance(query.message, Message) else None
    if results is None or message is None or page * _per_page(context) >= len(results.hits):
        await query.answer(texts.results_expired(context.t), show_alert=True)
        return
    if results.owner != context.account.user_id:
        await query.answer(texts.not_your_button(context.t), show_alert=True)
        return
    await query.answer()
    per_page = _per_page(context)
    try:  # drop this page's More button first, so a second tap cannot send the next page twice
        await query.edit_message_reply_markup(page_markup(context, results, token, page - 1, per_page, more=False))
    except BadRequest as exc:
        logger.debug("could not remove the More button: %s", exc.message)
    async with chat_action(context.bot, message.chat_id):
        await _send_page(message, context, token, results, page, query_face=None)


async def on_stale_button(update: Update, context: BotContext) -> None:
    """A button whose data we no longer understand (an old message, a previous version)."""
    assert update.callback_query is not None
    await update.callback_query.answer(texts.results_expired(context.t), show_alert=True)


# -- steps ---------------------------------------------------------------------------------------
async def _may_search(update: Update, context: BotContext) -> bool:
    """Refuse (and record) a search without a case when one is required, or past the hourly limit."""
    account = context.account
    if context.settings.require_case and not account.active_case:
        await refuse(update, context, account.actor, "no_case", texts.need_case(context.t))
        return False
    wait = context.services.limiter.wait(account.user_id)
    if wait:
        limit = context.settings.rate_limit_per_hour
        await refuse(update, context, account.actor, "rate_limited", texts.rate_limited(context.t, limit, wait))
        return False
    return True


async def _ask_which_face(message: Message, context: BotContext, image: bytes, faces: Sequence[DetectedFace]) -> None:
    """Reply with the photo, faces boxed and numbered, and a button per face; keep the photo for a while."""
    token = context.services.photos.put(PendingPhoto(context.account.user_id, image, tuple(faces)))
    boxed = await asyncio.to_thread(render.boxed_faces, image, faces)
    shown = min(len(faces), MAX_FACE_BUTTONS)
    buttons = [
        InlineKeyboardButton(texts.face_button(context.t, f.number), callback_data=f"face:{token}:{f.number}")
        for f in faces[:shown]
    ]
    caption = texts.choose_face(context.t, faces, context.settings.photo_ttl_seconds, shown)[:CAPTION_LIMIT]
    await message.reply_photo(boxed, caption=caption, reply_markup=InlineKeyboardMarkup(_rows(buttons)))


async def _search_and_reply(
    update: Update, reply_to: Message, context: BotContext, image: bytes, face: int | None, started: float
) -> None:
    """Run one search (counted against the rate limit, audited by the engine) and send the first page.

    `face=None` is a new photo: one decode and detection serve it whole; with several faces the engine
    answers SeveralFaces and we ask which one (that does not count as a search).
    """
    account = context.account
    settings = context.settings
    wait = context.services.limiter.acquire(account.user_id)
    if wait:
        await refuse(update, context, account.actor, "rate_limited",
                     texts.rate_limited(context.t, settings.rate_limit_per_hour, wait))
        return
    try:
        result = await context.engine.search(
            image, actor=account.actor, case=account.active_case, top=min(max(settings.max_results, 1), 100), face=face,
            several="ask", language=context.t.code,
        )
    except SeveralFaces as exc:
        context.services.limiter.release(account.user_id)
        await _ask_which_face(reply_to, context, image, exc.faces)
        return
    except EngineError as exc:
        context.metrics.observe_search(search_outcome(exc), time.perf_counter() - started)
        logger.info("search by %s failed: %s: %s", account.actor, type(exc).__name__, exc)
        config = context.engine.config
        await reply_to.reply_text(texts.officer_error(context.t, exc, config.max_image_bytes, config.max_image_pixels))
        return
    context.metrics.observe_search(search_outcome(result), time.perf_counter() - started)
    results = ResultSet.of(result, account.user_id, account.active_case)
    if not result.hits:
        await reply_to.reply_text(
            texts.no_match(context.t, results.case, result.gallery_faces, result.threshold, results.warnings)
        )
        return
    token = context.services.results.put(results)
    await _send_page(reply_to, context, token, results, 0, query_face=result.query_thumbnail)


async def _send_page(
    reply_to: Message, context: BotContext, token: str, results: ResultSet, page: int, query_face: bytes | None
) -> None:
    """One picture (query face, when given, beside the page's matches) with the list, source and More buttons."""
    per_page = _per_page(context)
    start, stop = results.page_bounds(page, per_page)
    hits = results.hits[start:stop]
    t = context.t
    tiles = [render.Tile(await context.engine.thumbnail(h.face_id), texts.tile_label(t, h), texts.subject_of(t, h)) for h in hits]
    query = render.Tile(query_face, texts.query_tile(t)) if query_face is not None else None
    sheet = await asyncio.to_thread(render.result_sheet, query, tiles)
    text = texts.result_page(t, results, start, stop, [is_web_link(h.source_url) for h in hits])
    markup = page_markup(context, results, token, page, per_page, more=True)
    if len(text) <= CAPTION_LIMIT:
        try:
            await reply_to.reply_photo(sheet, caption=text, reply_markup=markup)
        except BadRequest as exc:  # Telegram refuses a button URL we thought valid: send without source buttons
            logger.warning("results not sent with source buttons (%s); retrying without them", exc.message)
            await reply_to.reply_photo(sheet, caption=text, reply_markup=page_markup(context, results, token, page, per_page,
                                                                                     more=True, sources=False))
        return
    await reply_to.reply_photo(sheet, caption=texts.result_caption_short(t, results, start, stop))
    await reply_to.reply_text(text, reply_markup=markup, link_preview_options=LinkPreviewOptions(is_disabled=True))


# -- small pure helpers ------------------------------------------------------------------------------
def is_web_link(url: str) -> bool:
    """True for an http(s) link Telegram will accept on a URL button."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    host = parts.hostname or ""
    return (
        parts.scheme in ("http", "https") and "." in host and len(url) <= 2048
        and not any(ch.isspace() or ord(ch) < 32 for ch in url)
    )


def page_markup(
    context: BotContext,
    results: ResultSet, token: str, page: int, per_page: int, *, more: bool, sources: bool = True
) -> InlineKeyboardMarkup | None:
    """Source buttons for a page's http(s) links, and a More button when more matches follow."""
    start, stop = results.page_bounds(page, per_page)
    rows: list[list[InlineKeyboardButton]] = []
    if sources:
        rows += _rows([
            InlineKeyboardButton(texts.source_button(context.t, h.rank), url=h.source_url)
            for h in results.hits[start:stop] if is_web_link(h.source_url)
        ])
    if more and stop < len(results.hits):
        next_start, next_stop = results.page_bounds(page + 1, per_page)
        label = texts.more_button(context.t, next_start, next_stop, len(results.hits))
        rows.append([InlineKeyboardButton(label, callback_data=f"more:{token}:{page + 1}")])
    return InlineKeyboardMarkup(rows) if rows else None


def _rows(buttons: list[InlineKeyboardButton]) -> list[list[InlineKeyboardButton]]:
    return [buttons[i:i + BUTTONS_PER_ROW] for i in range(0, len(buttons), BUTTONS_PER_ROW)]


def _per_page(context: BotContext) -> int:
    return min(max(context.settings.results_per_page, 1), MAX_PER_PAGE)
