"""Search: a photo (or image file) in, the closest gallery faces out; the face-choice and More buttons.

Every analysed photo counts against the hourly limit (a photo with several faces too; each further face searched
in it counts once more) and is audited by the engine. Every answer quotes the photo it answers, and every
message showing gallery content is protected from forwarding and saving (SIGHTLINE_PROTECT_CONTENT).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from telegram import InlineKeyboardMarkup, LinkPreviewOptions, Message, ReplyParameters, Update
from telegram.error import BadRequest, TelegramError

from bot import render, texts
from bot.context import BotContext
from bot.handlers.access import refuse
from bot.metrics import search_outcome
from bot.sessions import PendingPhoto, ResultSet
from bot.telegram_io import (
    CAPTION_LIMIT,
    FileTooBig,
    FileUnavailable,
    button,
    caption_and_rest,
    chat_action,
    clip,
    download,
    download_limit,
    image_attachment,
    keyboard,
    markup,
    split_message,
    utf16_len,
)
from engine import DetectedFace, EngineError, FaceIndexError, ImageRejected, SeveralFaces

logger = logging.getLogger(__name__)

FACE_PATTERN = r"^face:([\w-]{8}):(\d{1,3})$"
MORE_PATTERN = r"^more:([\w-]{8}):(\d{1,3})$"
MAX_FACE_BUTTONS = 40
BUTTONS_PER_ROW = 5  # fits a phone; Telegram allows 8
MAX_PER_PAGE = 10
TILE_LABEL_CHARS = 60  # a tile is 160 px wide: more never shows


def quoting(message_id: int) -> ReplyParameters:
    """Reply parameters that quote the user's photo (and still send if they deleted it)."""
    return ReplyParameters(message_id=message_id, allow_sending_without_reply=True)


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
    account = context.account
    case = account.active_case
    if not await _take_search(update, context):
        return
    limit = download_limit(context.engine.config.max_image_bytes)
    async with chat_action(context.bot, message.chat_id):
        try:
            image = await download(context.bot, attachment, limit)
        except FileTooBig as exc:
            context.services.limiter.release(account.user_id)  # nothing was analysed
            await message.reply_text(texts.too_big(context.t, exc.size, limit), reply_parameters=quoting(message.message_id))
            return
        except FileUnavailable as exc:
            context.services.limiter.release(account.user_id)
            logger.info("photo from %s could not be fetched from Telegram: %s", account.user_id, exc)
            await message.reply_text(texts.photo_unavailable(context.t), reply_parameters=quoting(message.message_id))
            return
        except TelegramError:  # Telegram unreachable after retries: the apology, but no search spent
            context.services.limiter.release(account.user_id)
            raise
        await _search_and_reply(context, message.chat_id, message.message_id, image, None, case, started)


async def on_face_choice(update: Update, context: BotContext) -> None:
    """A face button under a multi-face photo: search that face once, under the case the photo came with."""
    query = update.callback_query
    assert query is not None and context.matches
    token, number = context.matches[0].group(1), int(context.matches[0].group(2))
    pending = context.services.photos.get(token)
    message = query.message if isinstance(query.message, Message) else None
    if pending is None or message is None:
        await query.answer(texts.photo_expired(context.t, context.settings.photo_ttl_seconds), show_alert=True)
        return
    account = context.account
    if pending.owner != account.user_id:
        await query.answer(texts.not_your_button(context.t), show_alert=True)
        return
    if number in pending.searched:
        await query.answer(texts.already_searched(context.t, number))
        return
    if number not in {f.number for f in pending.faces}:  # a forged or garbled button: no search, nothing counted
        await query.answer()
        config = context.engine.config
        reply = texts.officer_error(context.t, FaceIndexError(f"face {number}"), download_limit(config.max_image_bytes),
                                    config.max_image_pixels)
        await context.bot.send_message(pending.chat_id, reply, reply_parameters=quoting(pending.message_id))
        return
    # The photo's arrival paid for its first face; each further face is one more search. No await until the
    # face is marked, so two quick taps cannot both search it.
    if pending.searched:
        wait = context.services.limiter.acquire(account.user_id)
        if wait:
            limit = context.settings.rate_limit_per_hour
            await refuse(update, context, account.actor, "rate_limited", texts.rate_limited(context.t, limit, wait))
            return
    pending.searched.add(number)
    await query.answer(texts.searching_face(context.t, number))
    started = time.perf_counter()
    async with chat_action(context.bot, pending.chat_id):
        searched = await _search_and_reply(
            context, pending.chat_id, pending.message_id, pending.image, number, pending.case, started
        )
    if not searched:
        pending.searched.discard(number)  # it failed: the button may be tried again


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
    if page in results.pages_sent:  # a second tap: the page is on its way or in the chat
        await query.answer()
        return
    results.pages_sent.add(page)
    await query.answer()
    per_page = _per_page(context)
    try:  # drop this page's More button, so the keyboard shows it was used
        await query.edit_message_reply_markup(page_markup(context, results, token, page - 1, per_page, more=False))
    except BadRequest as exc:
        logger.debug("could not remove the More button: %s", exc.message)
    async with chat_action(context.bot, results.chat_id):
        await _send_page(context, token, results, page, query_face=None)


async def on_stale_button(update: Update, context: BotContext) -> None:
    """A button whose data we no longer understand (an old message, a previous version)."""
    assert update.callback_query is not None
    await update.callback_query.answer(texts.results_expired(context.t), show_alert=True)


# -- steps ---------------------------------------------------------------------------------------
async def _take_search(update: Update, context: BotContext) -> bool:
    """Take one search from the hourly limit; refuse (and record) without a case when one is required, or past
    the limit. Nothing is downloaded before this."""
    account = context.account
    if context.settings.require_case and not account.active_case:
        await refuse(update, context, account.actor, "no_case", texts.need_case(context.t))
        return False
    wait = context.services.limiter.acquire(account.user_id)
    if wait:
        limit = context.settings.rate_limit_per_hour
        await refuse(update, context, account.actor, "rate_limited", texts.rate_limited(context.t, limit, wait))
        return False
    return True


async def _ask_which_face(
    context: BotContext, chat_id: int, message_id: int, image: bytes, faces: Sequence[DetectedFace], case: str | None
) -> None:
    """Reply with the photo, faces boxed and numbered, and a button per face; keep the photo for a while."""
    pending = PendingPhoto(context.account.user_id, image, tuple(faces), case, chat_id, message_id)
    token = context.services.photos.put(pending)
    boxed = await asyncio.to_thread(render.boxed_faces, image, faces)
    shown = min(len(faces), MAX_FACE_BUTTONS)
    buttons = [button(texts.face_button(context.t, f.number), callback_data=f"face:{token}:{f.number}") for f in faces[:shown]]
    caption, rest = caption_and_rest(texts.choose_face(context.t, faces, context.settings.photo_ttl_seconds, shown))
    protect = context.settings.protect_content
    await context.bot.send_photo(
        chat_id, boxed, caption=caption, reply_markup=markup(keyboard(buttons, BUTTONS_PER_ROW)),
        reply_parameters=quoting(message_id), protect_content=protect,
    )
    for chunk in split_message(rest) if rest.strip() else []:
        await context.bot.send_message(chat_id, chunk, reply_parameters=quoting(message_id), protect_content=protect)


async def _search_and_reply(
    context: BotContext, chat_id: int, message_id: int, image: bytes, face: int | None, case: str | None,
    started: float,
) -> bool:
    """Run one search (its limit already taken, audited by the engine) and send the first page, quoting the
    photo; True when the gallery was searched.

    `face=None` is a new photo: one decode and detection serve it whole; with several faces the engine
    answers SeveralFaces (and audits the analysis) and we ask which one.
    """
    account = context.account
    settings = context.settings
    try:
        result = await context.engine.search(
            image, actor=account.actor, case=case, top=min(max(settings.max_results, 1), 100), face=face,
            several="ask", language=context.t.code,
        )
    except SeveralFaces as exc:
        await _ask_which_face(context, chat_id, message_id, image, exc.faces, case)
        return False
    except EngineError as exc:
        if isinstance(exc, ImageRejected):  # not analysed: it does not count
            context.services.limiter.release(account.user_id)
        context.metrics.observe_search(search_outcome(exc), time.perf_counter() - started)
        logger.info("search by %s failed: %s: %s", account.actor, type(exc).__name__, exc)
        config = context.engine.config
        reply = texts.officer_error(context.t, exc, download_limit(config.max_image_bytes), config.max_image_pixels)
        await context.bot.send_message(chat_id, reply, reply_parameters=quoting(message_id))
        return False
    context.metrics.observe_search(search_outcome(result), time.perf_counter() - started)
    results = ResultSet.of(result, account.user_id, case, chat_id, message_id)
    if not result.hits:
        await context.bot.send_message(
            chat_id, texts.no_match(context.t, results.case, result.gallery_faces, result.threshold, results.warnings,
                                    second_look=result.faces[result.searched - 1].quality.second_look),
            reply_parameters=quoting(message_id),
        )
        return True
    token = context.services.results.put(results)
    results.pages_sent.add(0)
    await _send_page(context, token, results, 0, query_face=result.query_thumbnail)
    return True


async def _send_page(context: BotContext, token: str, results: ResultSet, page: int, query_face: bytes | None) -> None:
    """One picture (query face, when given, beside the page's matches) with the list, source and More buttons.

    The list goes in the caption when it fits in 1,024 characters; otherwise the picture gets the header and
    the list follows as messages of at most 4,096 (the buttons under the last). All of it is protected.
    """
    per_page = _per_page(context)
    start, stop = results.page_bounds(page, per_page)
    hits = results.hits[start:stop]
    t = context.t
    tiles = [
        render.Tile(await context.engine.thumbnail(h.face_id), texts.tile_label(t, h), clip(texts.subject_of(t, h), TILE_LABEL_CHARS))
        for h in hits
    ]
    query = render.Tile(query_face, texts.query_tile(context.t)) if query_face is not None else None
    sheet = await asyncio.to_thread(render.result_sheet, query, tiles)
    text = texts.result_page(context.t, results, start, stop, [is_web_link(h.source_url) for h in hits])
    bot, chat_id = context.bot, results.chat_id
    protect = context.settings.protect_content
    reply = quoting(results.message_id)

    no_preview = LinkPreviewOptions(is_disabled=True)
    if utf16_len(text) <= CAPTION_LIMIT:
        caption, body = text, []
    else:
        caption = caption_and_rest(texts.result_caption_short(context.t, results, start, stop))[0]
        body = split_message(text)
        await bot.send_photo(chat_id, sheet, caption=caption, reply_parameters=reply, protect_content=protect)
        for chunk in body[:-1]:
            await bot.send_message(chat_id, chunk, reply_parameters=reply, protect_content=protect,
                                   link_preview_options=no_preview)

    async def send_last(keys: InlineKeyboardMarkup | None) -> None:
        """The message that carries the buttons: the picture itself, or the last part of the list."""
        if body:
            await bot.send_message(chat_id, body[-1], reply_markup=keys, reply_parameters=reply,
                                   protect_content=protect, link_preview_options=no_preview)
        else:
            await bot.send_photo(chat_id, sheet, caption=caption, reply_markup=keys, reply_parameters=reply,
                                 protect_content=protect)

    try:
        await send_last(page_markup(context, results, token, page, per_page, more=True))
    except BadRequest as exc:  # Telegram refused a button URL we thought valid: that one message again, without them
        if "button" not in exc.message.lower() and "url" not in exc.message.lower():
            raise
        logger.warning("results not sent with source buttons (%s); sending the last part again without", exc.message)
        await send_last(page_markup(context, results, token, page, per_page, more=True, sources=False))


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
        and not host.startswith(".") and not host.endswith(".")
        and not any(ch.isspace() or ord(ch) < 32 for ch in url)
    )


def page_markup(
    context: BotContext,
    results: ResultSet, token: str, page: int, per_page: int, *, more: bool, sources: bool = True
) -> InlineKeyboardMarkup | None:
    """Source buttons for a page's http(s) links, and a More button when more matches follow."""
    start, stop = results.page_bounds(page, per_page)
    rows = []
    if sources:
        links = [button(texts.source_button(context.t, h.rank), url=h.source_url)
                 for h in results.hits[start:stop] if is_web_link(h.source_url)]
        rows += keyboard(links, BUTTONS_PER_ROW, extra_rows=1)
    if more and stop < len(results.hits):
        next_start, next_stop = results.page_bounds(page + 1, per_page)
        label = texts.more_button(context.t, next_start, next_stop, len(results.hits))
        rows.append([button(label, callback_data=f"more:{token}:{page + 1}")])
    return markup(rows)


def _per_page(context: BotContext) -> int:
    return min(max(context.settings.results_per_page, 1), MAX_PER_PAGE)
