"""Talking to Telegram robustly: retries, chat actions, and getting an image's bytes (checked before download)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, TypeVar

from telegram import Bot, Message
from telegram.constants import ChatAction
from telegram.error import BadRequest, NetworkError, TelegramError
from telegram.ext import AIORateLimiter

logger = logging.getLogger(__name__)
T = TypeVar("T")

NETWORK_RETRIES = 3  # after the first attempt
BACKOFF_SECONDS = 0.5  # doubled after each failure: 0.5, 1, 2
CHAT_ACTION_EVERY = 4.5  # Telegram shows an action for 5 s
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".avif"}


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


async def download(bot: Bot, attachment: Attachment, max_bytes: int) -> bytes:
    """The attachment's bytes, in memory only; raises FileTooBig before downloading anything too large."""
    if attachment.file_size is not None and attachment.file_size > max_bytes:
        raise FileTooBig(attachment.file_size)
    try:
        file = await bot.get_file(attachment.file_id)
    except BadRequest as exc:
        if "too big" in exc.message.lower():  # the Bot API serves files up to 20 MB
            raise FileTooBig(attachment.file_size) from None
        raise
    if file.file_size is not None and file.file_size > max_bytes:
        raise FileTooBig(file.file_size)
    data = await with_backoff(file.download_as_bytearray, "file download")
    if len(data) > max_bytes:
        raise FileTooBig(len(data))
    return bytes(data)


def split_message(text: str, limit: int = 4096) -> list[str]:
    """Split a long reply at line breaks into chunks Telegram accepts."""
    chunks: list[str] = []
    current = ""
    for line in text.splitlines():
        line = line[:limit]
        if current and len(current) + 1 + len(line) > limit:
            chunks.append(current)
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    if current:
        chunks.append(current)
    return chunks
