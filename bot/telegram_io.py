"""Talking to Telegram robustly: retries, chat actions, Telegram's size limits, and getting an image's bytes
(checked before download)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import time
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, TypeVar

from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
from telegram.constants import (
    CallbackQueryLimit,
    ChatAction,
    FileSizeLimit,
    InlineKeyboardButtonLimit,
    InlineKeyboardMarkupLimit,
    MessageLimit,
)
from telegram.error import BadRequest, InvalidToken, NetworkError, RetryAfter, TelegramError, TimedOut
from telegram.ext import AIORateLimiter, ExtBot

logger = logging.getLogger(__name__)
T = TypeVar("T")

NETWORK_RETRIES = 3  # after the first attempt
BACKOFF_SECONDS = 0.5  # doubled after each failure: 0.5, 1, 2
CHAT_ACTION_EVERY = 4.5  # Telegram shows an action for 5 s
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".avif"}
# Telegram's limits (python-telegram-bot's constants mirror core.telegram.org/bots/api); lengths are UTF-16 code units.
TEXT_LIMIT = MessageLimit.MAX_TEXT_LENGTH  # 4,096
CAPTION_LIMIT = MessageLimit.CAPTION_LENGTH  # 1,024
ANSWER_LIMIT = CallbackQueryLimit.ANSWER_CALLBACK_QUERY_TEXT_LENGTH  # 200, the toast or alert of a button
CALLBACK_DATA_BYTES = InlineKeyboardButtonLimit.MAX_CALLBACK_DATA  # 64
BUTTONS_PER_ROW = InlineKeyboardMarkupLimit.BUTTONS_PER_ROW  # 8
MAX_BUTTONS = InlineKeyboardMarkupLimit.TOTAL_BUTTON_NUMBER  # 100
BUTTON_TEXT_LIMIT = 64  # undocumented; longer labels are cut on phones anyway
DOWNLOAD_LIMIT = FileSizeLimit.FILESIZE_DOWNLOAD  # 20 MB: the largest file getFile serves
ELLIPSIS = "…"


async def with_backoff(call: Callable[[], Awaitable[T]], what: str, retries: int = NETWORK_RETRIES) -> T:
    """Await `call()`, retrying network errors (not BadRequest, which is a NetworkError too) with backoff."""
    for attempt in range(retries + 1):
        try:
            return await call()
        except BadRequest:
            raise
        except NetworkError as exc:
            if attempt == retries:
                raise
            delay = BACKOFF_SECONDS * 2**attempt
            logger.warning("Telegram %s failed (%s); retry %d in %.1f s", what, type(exc).__name__, attempt + 1, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


class RetryingRateLimiter(AIORateLimiter):
    """PTB's AIORateLimiter (Telegram's flood limits; waits out RetryAfter and retries) plus network retries.

    Every Bot API call except getUpdates (which the Updater retries itself) goes through it.
    """

    def __init__(self, *, max_retries: int = 3, network_retries: int = NETWORK_RETRIES) -> None:
        super().__init__(max_retries=max_retries)
        self.network_retries = network_retries

    async def process_request(
        self,
        callback: Callable[..., Any],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: int | None,
    ) -> Any:
        """Send the request through the flood limiter, retrying network errors with backoff."""
        async def attempt() -> Any:
            return await AIORateLimiter.process_request(self, callback, args, kwargs, endpoint, data, rate_limit_args)

        return await with_backoff(attempt, endpoint, self.network_retries)


@contextlib.asynccontextmanager
async def chat_action(bot: Bot, chat_id: int, action: str = ChatAction.UPLOAD_PHOTO) -> AsyncIterator[None]:
    """Show "sending photo..." (or another action) in the chat until the block ends."""

    async def keep_showing() -> None:
        while True:
            try:
                await bot.send_chat_action(chat_id, action)
            except TelegramError as exc:  # cosmetic: never fail the search for it
                logger.debug("chat action failed: %s", exc)
            await asyncio.sleep(CHAT_ACTION_EVERY)

    task = asyncio.create_task(keep_showing())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@dataclass(frozen=True, slots=True)
class Attachment:
    """An image a message carries: the largest size of a photo, or a file."""

    file_id: str
    file_size: int | None
    kind: str  # "photo" | "document"


def image_attachment(message: Message | None) -> Attachment | None:
    """The image in a message, or None (no photo; a file that is not an image by type or name)."""
    if message is None:
        return None
    if message.photo:
        largest = max(message.photo, key=lambda p: (p.width * p.height, p.file_size or 0))
        return Attachment(largest.file_id, largest.file_size, "photo")
    doc = message.document
    if doc is None:
        return None
    mime = (doc.mime_type or "").lower()
    suffix = PurePosixPath(doc.file_name or "").suffix.lower()
    if mime.startswith("image/") or (mime in ("", "application/octet-stream") and suffix in IMAGE_SUFFIXES):
        return Attachment(doc.file_id, doc.file_size, "document")
    return None


class FileTooBig(Exception):
    """The attachment is larger than we accept; nothing was downloaded."""

    def __init__(self, size: int | None) -> None:
        super().__init__(f"file of {size} bytes is too big")
        self.size = size


class FileUnavailable(Exception):
    """The Bot API cannot serve the attachment (getFile refused it: expired, deleted, an invalid file id)."""


def download_limit(max_image_bytes: int) -> int:
    """The largest attachment we can fetch: our own limit, or the Bot API's 20 MB when that is lower."""
    return min(max_image_bytes, DOWNLOAD_LIMIT)


async def download(bot: Bot, attachment: Attachment, max_bytes: int) -> bytes:
    """The attachment's bytes, in memory only; raises FileTooBig before downloading anything too large.

    `max_bytes` should come from `download_limit()`; a getFile refusal ("file is too big") is FileTooBig too,
    any other refusal of the file (getFile or the download answering 400/404) is FileUnavailable.
    """
    if attachment.file_size is not None and attachment.file_size > max_bytes:
        raise FileTooBig(attachment.file_size)
    try:
        file = await bot.get_file(attachment.file_id)
    except BadRequest as exc:
        if "too big" in exc.message.lower():  # the Bot API serves files up to 20 MB
            raise FileTooBig(attachment.file_size) from None
        raise FileUnavailable(exc.message) from None
    if file.file_size is not None and file.file_size > max_bytes:
        raise FileTooBig(file.file_size)
    try:
        data = await with_backoff(file.download_as_bytearray, "file download")
    except BadRequest as exc:
        raise FileUnavailable(exc.message) from None
    if len(data) > max_bytes:
        raise FileTooBig(len(data))
    return bytes(data)


def utf16_len(text: str) -> int:
    """The length Telegram measures: UTF-16 code units (an emoji outside the BMP counts 2)."""
    return len(text.encode("utf-16-le")) // 2


# Explicit bidi embeddings, overrides and isolates (LRE RLE PDF LRO RLO, LRI RLI FSI PDI): inside one line they
# reorder the text that follows them (a case "OP-1<RLO>71-PO" reads as another), so a label never carries them.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def single_line(text: str) -> str:
    """`text` safe to show as one line: line breaks, tabs and other control characters (Unicode Cc, Zl, Zp)
    become spaces, bidi embeddings/overrides/isolates are dropped and lone surrogates become U+FFFD.

    Zero-width joiners and direction marks stay (emoji sequences and right-to-left names need them).
    """
    if text.isprintable() and not any(ch in BIDI_CONTROLS for ch in text):
        return text  # the common case, without a loop in Python
    out = []
    for ch in text:
        if ch in BIDI_CONTROLS:
            continue
        category = unicodedata.category(ch)
        if category in ("Cc", "Zl", "Zp"):
            out.append(" ")
        elif category == "Cs":
            out.append("\ufffd")
        else:
            out.append(ch)
    return "".join(out)


def command_argument(text: str, skip: int = 1) -> str:
    """What follows the command (and `skip - 1` keywords after it) exactly as typed: inner spaces, tabs and
    other characters kept, only the ends stripped ("" when nothing follows).

    PTB's context.args splits on any whitespace (NEL and others too), and joining the words again turns
    "Jane  Doe" into "Jane Doe" and "A<NEL>B" into "A B".
    """
    head = re.match(rf"(?:\S+\s+){{{skip}}}", text)
    return text[head.end():].strip() if head else ""


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-16 code units, ending in "…" when cut (never splits a character)."""
    if utf16_len(text) <= limit:
        return text
    room = limit - 1
    out: list[str] = []
    used = 0
    for ch in text:
        size = 2 if ord(ch) > 0xFFFF else 1
        if used + size > room:
            break
        out.append(ch)
        used += size
    return "".join(out).rstrip() + ELLIPSIS


def split_message(text: str, limit: int = TEXT_LIMIT) -> list[str]:
    """Split a long reply at line breaks into chunks Telegram accepts (a line longer than `limit` is cut)."""
    chunks: list[str] = []
    current = ""
    for line in text.splitlines():
        line = clip(line, limit)
        if current and utf16_len(current) + 1 + utf16_len(line) > limit:
            chunks.append(current)
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    if current.strip():
        chunks.append(current)
    return chunks or [ELLIPSIS]


def caption_and_rest(text: str, limit: int = CAPTION_LIMIT) -> tuple[str, str]:
    """A caption that fits (whole lines) and the lines that did not fit ("" when all did)."""
    if utf16_len(text) <= limit:
        return text, ""
    lines = text.splitlines()
    kept: list[str] = []
    for i, line in enumerate(lines):
        candidate = "\n".join([*kept, line])
        if utf16_len(candidate) > limit:
            if not kept:  # one overlong first line: cut it, the rest follows
                return clip(line, limit), "\n".join(lines[i + 1:])
            return "\n".join(kept), "\n".join(lines[i:])
        kept.append(line)
    return "\n".join(kept), ""  # pragma: no cover - the text fit after all


def button(text: str, *, callback_data: str | None = None, url: str | None = None) -> InlineKeyboardButton:
    """An inline button within Telegram's limits: label cut to fit; callback data must be 1-64 bytes."""
    if callback_data is not None and not 1 <= len(callback_data.encode()) <= CALLBACK_DATA_BYTES:
        raise ValueError(f"callback data of {len(callback_data.encode())} bytes (Telegram takes 1-64)")
    return InlineKeyboardButton(clip(text, BUTTON_TEXT_LIMIT) or "?", callback_data=callback_data, url=url)


def keyboard(buttons: list[InlineKeyboardButton], per_row: int, extra_rows: int = 0) -> list[list[InlineKeyboardButton]]:
    """Buttons in rows of at most `per_row` (and 8), keeping the total within 100 (room left for `extra_rows`)."""
    per_row = max(1, min(per_row, BUTTONS_PER_ROW))
    buttons = buttons[:MAX_BUTTONS - extra_rows]
    return [buttons[i:i + per_row] for i in range(0, len(buttons), per_row)]


def markup(rows: list[list[InlineKeyboardButton]]) -> InlineKeyboardMarkup | None:
    """An inline keyboard, or None without buttons."""
    rows = [row for row in rows if row]
    return InlineKeyboardMarkup(rows) if rows else None


class UnreadableUpdates(TelegramError):
    """The Bot API answered getUpdates with something that is not updates (not JSON, no `result`, not Update objects)."""


# How polling for updates (FittingBot.get_updates) treats a failed or odd getUpdates answer. README "If the Bot API
# cannot be reached" says the same in words.
POLL_PAUSE_FIRST = 1.0  # s after the first failed poll; as PTB's own retry loop (telegram/ext/_utils/networkloop.py)
POLL_PAUSE_GROWTH = 1.5  # each further failure in a row pauses this much longer ...
POLL_PAUSE_MAX = 30.0  # ... up to this (PTB's cap too)
# A 429's retry_after is honoured up to this: Telegram's flood waits on getUpdates are seconds; a proxy or broken server
# asking for 100,000 s would silence the bot for a day. Polling early just gets another 429 (and another pause).
RATE_LIMIT_PAUSE_MAX = 300.0
POLL_MARGIN = 5.0  # s: a getUpdates call gets long-poll timeout + read timeout + this overall, even on a trickling body
STOPPING_CALL_LIMIT = 2.0  # s: PTB's last getUpdates while stopping (timeout 0, to mark updates read) gets no more
EARLY_FRACTION = 0.1  # an empty answer within a tenth of the long-poll timeout is "early" (Telegram waits it out) ...
EARLY_STREAK = 3  # ... and after this many early empty answers in a row, each next poll waits
EARLY_PAUSE = 1.0  # this long first: at most one poll a second while a server answers long polls at once
ERROR_TEXT_LIMIT = 300  # characters of an error's text in a log line (a proxy's page can be 200 kB)


# PTB's NetworkError for an HTTP error whose body is not JSON quotes the body (telegram/request/_baserequest.py)
NOT_JSON = re.compile(r"\. Parsing the server response .* failed$", re.DOTALL)


def error_text(error: BaseException) -> str:
    """`Kind: message` of an error on one line, cut to ERROR_TEXT_LIMIT (not "Conflict: Conflict: ..." when the message
    already starts with its kind); a body that is not JSON (a proxy's page: anything) is described, not quoted."""
    text = single_line(NOT_JSON.sub(". The answer is not JSON (a proxy's page?)", str(error))).strip()
    name = type(error).__name__
    if not text.startswith(name):
        text = f"{name}: {text}" if text else name
    return text if len(text) <= ERROR_TEXT_LIMIT else text[:ERROR_TEXT_LIMIT - 1] + ELLIPSIS


def seconds(period: Any) -> float:
    """A PTB time period (seconds, a timedelta or None) in seconds."""
    if period is None:
        return 0.0
    if isinstance(period, dt.timedelta):
        return period.total_seconds()
    return float(period)


PollFailure = Callable[[TelegramError, float], None]  # (the error, the pause before the next poll in s)


class FittingBot(ExtBot[None]):
    """The bot, with a last line of defence for Telegram's length limits, and polling for updates that survives any
    answer of the Bot API.

    Replies are built to fit; should one not (a translation, a field we forgot), a text over 4,096 is sent as
    several messages (the keyboard on the last), a caption over 1,024 keeps the lines that fit and sends the
    rest as a message, and a button answer is cut to 200. Each such event is logged as a warning.
    """

    def __init__(self, *args: Any, on_poll_failure: PollFailure | None = None, **kwargs: Any) -> None:
        """ExtBot's arguments; `on_poll_failure` hears of every failed poll (else a warning is logged here)."""
        super().__init__(*args, **kwargs)
        self._on_poll_failure = on_poll_failure  # (PTB freezes a bot's public attributes)
        self._token_refused = False
        self._failures = 0  # failed polls in a row
        self._early = 0  # early empty answers in a row

    def on_poll_failure(self, callback: PollFailure | None) -> None:
        """Report every failed poll to `callback(error, pause)` (it must not raise)."""
        self._on_poll_failure = callback

    @property
    def token_refused(self) -> bool:
        """Whether a getUpdates was answered 401 (the token revoked or replaced while running)."""
        return self._token_refused

    async def _post(self, endpoint: str, data: Any = None, **kwargs: Any) -> Any:
        """PTB's _post; for getUpdates, raises UnreadableUpdates unless the result is what PTB's Updater relies on: a
        list of objects, each with an integer update_id (it computes `updates[-1].update_id + 1` outside any handler;
        a string there ended polling for good)."""
        result = await super()._post(endpoint, data, **kwargs)
        if endpoint == "getUpdates":
            if not isinstance(result, list):
                raise UnreadableUpdates(f"the answer's result is not a list but {type(result).__name__}")
            for item in result:
                update_id = item.get("update_id") if isinstance(item, dict) else None
                if not isinstance(update_id, int) or isinstance(update_id, bool):
                    raise UnreadableUpdates("an update is not an object with an integer update_id")
        return result

    async def get_updates(self, offset: int | None = None, limit: int | None = None, timeout: Any = None,  # type: ignore[override]
                          allowed_updates: Any = None, **kwargs: Any) -> tuple[Update, ...]:
        """PTB's getUpdates, for PTB's Updater: a failed poll is reported to `on_poll_failure`, paused after *here*, and
        answered as "no updates" (an empty tuple), so the Updater polls again at once.

        Why here and not in PTB's retry loop (telegram/ext/_utils/networkloop.py): its pause (1 s growing 1.5 times to
        30 s) is an asyncio.sleep that stopping the Updater waits out, while this call is raced against the stop (a
        stop ends it at once); it sleeps a 429's retry_after whole (100,000 s was honoured) and reports neither that
        nor timeouts; a 401 ends it silently. Rules: any failure (no answer, timed out, an HTTP error, a 409, an
        answer that is not updates) pauses POLL_PAUSE_FIRST growing POLL_PAUSE_GROWTH times to POLL_PAUSE_MAX; a 429
        pauses its retry_after, at most RATE_LIMIT_PAUSE_MAX; a good answer resets the pauses. A long poll gets
        timeout + read timeout + POLL_MARGIN s overall (a body trickling in never times out in httpx). More than
        EARLY_STREAK empty answers in a row each within EARLY_FRACTION of the timeout pause EARLY_PAUSE. A 401 sets
        `token_refused` (`on_poll_failure` stops the bot). PTB's last call while stopping (timeout 0) is not paused, gets
        STOPPING_CALL_LIMIT s, and raises as PTB's own would (PTB logs it).
        """
        long_poll = seconds(timeout)
        call = super().get_updates(offset, limit, timeout, allowed_updates, **kwargs)
        if long_poll <= 0:  # PTB's call to mark the updates read while stopping
            if self._token_refused:
                call.close()
                return ()
            return await self._within(call, STOPPING_CALL_LIMIT)
        started = time.monotonic()
        try:
            updates = await self._within(call, long_poll + self._read_timeout() + POLL_MARGIN)
        except InvalidToken as exc:
            self._token_refused = True
            pause = self._failed(exc, POLL_PAUSE_MAX)
        except RetryAfter as exc:
            pause = self._failed(exc, min(seconds(exc._retry_after), RATE_LIMIT_PAUSE_MAX))
        except TelegramError as exc:
            pause = self._failed(exc, min(POLL_PAUSE_FIRST * POLL_PAUSE_GROWTH**self._failures, POLL_PAUSE_MAX))
        else:
            self._failures = 0
            early = not updates and time.monotonic() - started < EARLY_FRACTION * long_poll
            self._early = self._early + 1 if early else 0
            if self._early > EARLY_STREAK:
                if self._early == EARLY_STREAK + 1:
                    logger.warning("the Bot API answers long polls at once with no updates; polling at most once a second "
                                   "until it waits again")
                await asyncio.sleep(EARLY_PAUSE)
            return updates
        await asyncio.sleep(pause)  # a stop of the Updater cancels this call, and so the pause
        return ()

    def _failed(self, error: TelegramError, pause: float) -> float:
        """Count a failed poll and report it; the pause to make before the next."""
        self._failures += 1
        self._early = 0
        if self._on_poll_failure is not None:
            self._on_poll_failure(error, pause)
        else:
            logger.warning("cannot fetch updates from Telegram (%s); polling again in %.1f s", error_text(error), pause)
        return pause

    def _read_timeout(self) -> float:
        """The read timeout of the getUpdates connection in s (PTB's HTTPXRequest: 5 s unless set)."""
        read_timeout = getattr(self._request[0], "read_timeout", None)
        return float(read_timeout) if read_timeout else 0.0

    async def _within(self, call: Awaitable[tuple[Update, ...]], limit: float) -> tuple[Update, ...]:
        """`await call`, turned into TimedOut after `limit` s; anything else but a TelegramError into UnreadableUpdates."""
        try:
            return await asyncio.wait_for(call, limit)
        except TimeoutError:
            raise TimedOut(f"no complete answer to getUpdates within {limit:.0f} s") from None
        except TelegramError as exc:
            if type(exc) is not TelegramError:  # NetworkError, Conflict, InvalidToken, RetryAfter, UnreadableUpdates
                raise
            raise UnreadableUpdates(f"the answer is not JSON ({error_text(exc)})") from exc
        except Exception as exc:
            raise UnreadableUpdates(f"the answer is not updates ({error_text(exc)[:200]})") from exc

    async def initialize(self) -> None:
        """PTB's initialize (open the HTTP clients, then getMe); when getMe fails (the Bot API does not answer, or
        refuses the token), close the clients again before raising: PTB leaves them open, with any keep-alive
        connection to the server."""
        try:
            await super().initialize()
        except BaseException:
            await self.shutdown()
            raise

    async def send_message(self, chat_id: Any, text: str, *args: Any, **kwargs: Any) -> Message:  # type: ignore[override]
        """sendMessage, split into several messages when the text is too long."""
        if args or utf16_len(text) <= TEXT_LIMIT or kwargs.get("parse_mode"):
            return await super().send_message(chat_id, text, *args, **kwargs)
        logger.warning("a reply of %d characters was split into several messages", utf16_len(text))
        chunks = split_message(text)
        reply_markup = kwargs.pop("reply_markup", None)
        for chunk in chunks[:-1]:
            await super().send_message(chat_id, chunk, **kwargs)
        return await super().send_message(chat_id, chunks[-1], reply_markup=reply_markup, **kwargs)

    async def send_photo(self, chat_id: Any, photo: Any, *args: Any, **kwargs: Any) -> Message:  # type: ignore[override]
        """sendPhoto; a caption that is too long is cut at a line and the rest follows as a message."""
        caption = kwargs.get("caption")
        if args or not caption or utf16_len(caption) <= CAPTION_LIMIT or kwargs.get("parse_mode"):
            return await super().send_photo(chat_id, photo, *args, **kwargs)
        logger.warning("a caption of %d characters was cut; the rest follows as a message", utf16_len(caption))
        kwargs["caption"], rest = caption_and_rest(caption)
        sent = await super().send_photo(chat_id, photo, **kwargs)
        if rest.strip():
            await self.send_message(chat_id, rest, protect_content=kwargs.get("protect_content"))
        return sent

    async def edit_message_text(self, text: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """editMessageText, cut to the limit."""
        if utf16_len(text) > TEXT_LIMIT and not kwargs.get("parse_mode"):
            logger.warning("an edited text of %d characters was cut", utf16_len(text))
            text = clip(text, TEXT_LIMIT)
        return await super().edit_message_text(text, *args, **kwargs)

    async def answer_callback_query(self, callback_query_id: str, text: str | None = None, *args: Any,
                                    **kwargs: Any) -> bool:  # type: ignore[override]
        """answerCallbackQuery, its toast or alert cut to 200."""
        if text is not None and utf16_len(text) > ANSWER_LIMIT:
            text = clip(text, ANSWER_LIMIT)
        return await super().answer_callback_query(callback_query_id, text, *args, **kwargs)
