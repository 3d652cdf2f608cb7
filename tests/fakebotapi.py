"""A small fake Telegram Bot API server (aiohttp, 127.0.0.1, a free port) for testing the real bot over HTTP.

It implements what python-telegram-bot calls: getMe, getUpdates (long polling from a queue that tests push
updates into), getFile plus the file download route (downloads are counted), sendMessage, sendPhoto,
sendChatAction, edit*, answerCallbackQuery, the command-menu methods (kept per scope and language_code, as
Telegram keeps them) and deleteWebhook. Unknown methods answer ok with `true`. Users may have a Telegram app
language (`set_user_language`), sent as `from.language_code` as Telegram does. Every call but getUpdates is
recorded (method, decoded parameters, uploaded files) so tests can wait for it and assert on what a user
would see; getUpdates requests are counted (`polls`) and can be answered with any bytes (`garbled_updates`).

It refuses what Telegram refuses, with Telegram's 400 descriptions (core.telegram.org/bots/api; the texts
are the ones the Bot API server answers): message text over 4,096 or caption over 1,024 UTF-16 code units
after entity parsing, empty text, malformed HTML/MarkdownV2 ("can't parse entities"), callback_data outside
1-64 bytes, URL buttons with a link Telegram does not accept, buttons without text or action, more than 100
buttons or 8 per row, callback-query answers over 200 characters or a second answer to one query, an edit
that changes nothing, a reply to a message that does not exist, and getFile of a file over 20 MB ("file is
too big").
"""

from __future__ import annotations

import asyncio
import functools
import html.parser
import io
import itertools
import json
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from telegram.constants import (
    CallbackQueryLimit,
    InlineKeyboardButtonLimit,
    InlineKeyboardMarkupLimit,
    MessageLimit,
)

BOT_USER = {
    "id": 4242, "is_bot": True, "first_name": "Sightline", "username": "sightline_test_bot",
    "can_join_groups": False, "can_read_all_group_messages": False, "supports_inline_queries": False,
}
# Parameters that are free text and must not be JSON-decoded ("123" stays a string).
TEXT_PARAMS = {"text", "caption", "callback_query_id", "file_id", "url", "photo", "document", "description"}
DOWNLOAD_LIMIT = 20 * 1024 * 1024  # getFile serves files up to 20 MB
MARKDOWN_V2_RESERVED = set("_*[]()~`>#+-=|{}.!")
MAX_POLL_WAIT = 0.25  # seconds a getUpdates call waits for an update (short, so the bot stops quickly)


@dataclass
class Call:
    """One Bot API call the bot made."""

    index: int
    method: str
    params: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    result: Any = None

    @property
    def text(self) -> str:
        """The message text or photo caption ("" when neither)."""
        return str(self.params.get("text") or self.params.get("caption") or "")

    @property
    def buttons(self) -> list[dict[str, Any]]:
        """Every inline button of the reply markup, row by row."""
        markup = self.params.get("reply_markup") or {}
        return [button for row in markup.get("inline_keyboard", []) for button in row]

    @property
    def message(self) -> dict[str, Any]:
        """The Message the fake answered with (for pressing its buttons)."""
        assert isinstance(self.result, dict), f"{self.method} did not return a message"
        return self.result


class FakeBotAPI:
    """The fake server. `await start()`, point the bot at `base_url`/`base_file_url`, push updates, assert."""

    def __init__(self, token: str = "123456:TEST-fake-token-for-the-bot-api", *, max_poll_wait: float = MAX_POLL_WAIT) -> None:
        self.token = token
        self.max_poll_wait = max_poll_wait  # longest a getUpdates call waits (Telegram: the bot's timeout, up to 50 s)
        self.calls: list[Call] = []
        self.files: dict[str, bytes] = {}
        self.file_sizes: dict[str, int] = {}  # what getFile reports (may differ from the real bytes, to test limits)
        self.downloads: list[str] = []  # file ids, in download order
        self.messages: dict[int, dict[str, Any]] = {}  # every message the bot sent, by id
        self.commands: dict[tuple[str, str], list[dict[str, Any]]] = {}  # (scope JSON, language_code) -> menu
        self.user_languages: dict[int, str] = {}  # user id -> language_code of their Telegram app
        self._updates: list[dict[str, Any]] = []
        self.polls = 0  # getUpdates requests answered (they are not recorded in `calls`)
        self.garbled_updates: bytes | None = None  # when set, getUpdates answers these bytes (HTTP 200) instead
        # when set, getUpdates is answered by this (a hostile or broken server: any status, a hang, a trickle)
        self.poll_answer: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None
        self.poll_times: list[float] = []  # time.monotonic() of each getUpdates request
        self._ids = itertools.count(1)
        self._update_ids = itertools.count(1)
        self._changed = asyncio.Condition()
        self._failures: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        self._answered: set[str] = set()  # callback queries answered (Telegram takes one answer each)
        self._last_push = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- server ----------------------------------------------------------------------------------
    async def start(self) -> FakeBotAPI:
        """Listen on 127.0.0.1, on a free port."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._on_method)
        app.router.add_get("/file/bot{token}/{path:.+}", self._on_file)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))  # a free port, known before the server starts
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def stop(self) -> None:
        """Close the server."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        """What to pass as Settings.telegram_api_url."""
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        """What to pass as Settings.telegram_file_url."""
        return f"http://127.0.0.1:{self.port}/file/bot"

    async def _on_method(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        method = request.match_info["method"]
        params, files = await _read_params(request)
        if method == "getUpdates":
            self.polls += 1
            self.poll_times.append(time.monotonic())
            if self.poll_answer is not None:
                return await self.poll_answer(request)
            if self.garbled_updates is not None:  # a broken Bot API or a proxy: answered at once, as Telegram would not
                return web.Response(body=self.garbled_updates, content_type="application/json")
            return _ok(await self._get_updates(params))
        call = Call(len(self.calls), method, params, files)
        failures = self._failures.get(method)
        if failures:
            status, body = failures.pop(0)
            call.result = body
            await self._record(call)
            return web.json_response(body, status=status)
        try:
            call.result = self._answer(method, params, files)
        except _ApiError as exc:
            call.result = exc.body()
            await self._record(call)
            return web.json_response(exc.body(), status=exc.status)
        await self._record(call)
        return _ok(call.result)

    async def _on_file(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        file_id = request.match_info["path"].rsplit("/", 1)[-1]
        if file_id not in self.files:
            return web.Response(status=404)
        self.downloads.append(file_id)
        return web.Response(body=self.files[file_id], content_type="application/octet-stream")

    async def _record(self, call: Call) -> None:
        async with self._changed:
            self.calls.append(call)
            self._changed.notify_all()

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        limit = int(params.get("limit") or 100)
        wait = min(float(params.get("timeout") or 0), self.max_poll_wait)
        deadline = time.monotonic() + wait
        async with self._changed:
            while True:
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
                remaining = deadline - time.monotonic()
                if self._updates or remaining <= 0:
                    return self._updates[:limit]
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    pass

    # -- answers -----------------------------------------------------------------------------------
    def _answer(self, method: str, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        _check_limits(method, params)
        if method in ("sendMessage", "sendPhoto", "sendDocument"):
            self._check_reply(params)
        if method == "getMe":
            return BOT_USER
        if method in ("sendMessage", "sendPhoto", "sendDocument"):
            return self._new_message(params, files, method)
        if method in ("editMessageText", "editMessageCaption", "editMessageReplyMarkup", "editMessageMedia"):
            return self._edit(method, params)
        if method == "getFile":
            file_id = str(params.get("file_id"))
            if file_id not in self.files:
                raise _ApiError(400, "Bad Request: invalid file_id")
            size = self.file_sizes.get(file_id, len(self.files[file_id]))
            if size > DOWNLOAD_LIMIT:
                raise _ApiError(400, "Bad Request: file is too big")
            return {"file_id": file_id, "file_unique_id": f"u{file_id}", "file_size": size,
                    "file_path": f"files/{file_id}"}
        if method in ("setMyCommands", "deleteMyCommands", "getMyCommands"):
            key = (json.dumps(params.get("scope") or {"type": "default"}, sort_keys=True), params.get("language_code") or "")
            if method == "setMyCommands":
                self.commands[key] = list(params.get("commands") or [])
                return True
            if method == "deleteMyCommands":
                self.commands.pop(key, None)
                return True
            return self.commands.get(key, [])
        if method == "answerCallbackQuery":
            query_id = str(params.get("callback_query_id"))
            if query_id in self._answered:
                raise _ApiError(400, "Bad Request: query is too old and response timeout expired or query ID is invalid")
            self._answered.add(query_id)
        return True  # sendChatAction, answerCallbackQuery, setMyCommands, deleteMyCommands, deleteWebhook, ...

    def _new_message(self, params: dict[str, Any], files: dict[str, bytes], method: str) -> dict[str, Any]:
        chat_id = int(params["chat_id"])
        message: dict[str, Any] = {
            "message_id": next(self._ids), "date": int(time.time()), "from": BOT_USER,
            "chat": {"id": chat_id, "type": "private" if chat_id > 0 else "group", "first_name": "User"},
        }
        if method == "sendMessage":
            message["text"] = params.get("text", "")
        elif method == "sendPhoto":
            data = files.get("photo", b"")
            width, height = _image_size(data)
            message["photo"] = [{"file_id": f"sent{message['message_id']}", "file_unique_id": f"s{message['message_id']}",
                                 "width": width, "height": height, "file_size": len(data)}]
        else:
            message["document"] = {"file_id": f"sent{message['message_id']}", "file_unique_id": "d"}
        if params.get("caption"):
            message["caption"] = params["caption"]
        if params.get("reply_markup"):
            message["reply_markup"] = params["reply_markup"]
        replied = self.messages.get(int((params.get("reply_parameters") or {}).get("message_id") or 0))
        if replied is not None:
            message["reply_to_message"] = {k: v for k, v in replied.items() if k != "reply_to_message"}
        if params.get("protect_content"):
            message["has_protected_content"] = True
        self.messages[message["message_id"]] = message
        return message

    def _check_reply(self, params: dict[str, Any]) -> None:
        reply = params.get("reply_parameters") or {}
        if reply and int(reply.get("message_id") or 0) not in self.messages and not reply.get("allow_sending_without_reply"):
            raise _ApiError(400, "Bad Request: message to be replied not found")

    def _edit(self, method: str, params: dict[str, Any]) -> Any:
        message = self.messages.get(int(params.get("message_id") or 0))
        if message is None:
            raise _ApiError(400, "Bad Request: message to edit not found")
        same_markup = params.get("reply_markup") == message.get("reply_markup")
        same_text = method == "editMessageText" and params.get("text", "") == message.get("text")
        if same_markup and (same_text or method == "editMessageReplyMarkup"):
            raise _ApiError(400, "Bad Request: message is not modified: specified new message content and reply "
                                 "markup are exactly the same as a current content and reply markup of the message")
        if method == "editMessageText":
            message["text"] = params.get("text", "")
        elif method == "editMessageCaption":
            message["caption"] = params.get("caption", "")
        if "reply_markup" in params:
            message["reply_markup"] = params["reply_markup"]
        elif method == "editMessageReplyMarkup":
            message.pop("reply_markup", None)
        return message

    # -- what tests do -----------------------------------------------------------------------------
    def fail_next(self, method: str, *, retry_after: int | None = None, status: int = 502) -> None:
        """Make the next call of `method` fail: a flood-control 429 (with retry_after) or an HTTP error."""
        if retry_after is not None:
            body = {"ok": False, "error_code": 429, "description": f"Too Many Requests: retry after {retry_after}",
                    "parameters": {"retry_after": retry_after}}
            self._failures.setdefault(method, []).append((429, body))
        else:
            body = {"ok": False, "error_code": status, "description": "Bad Gateway"}
            self._failures.setdefault(method, []).append((status, body))

    def add_file(self, data: bytes, *, reported_size: int | None = None) -> str:
        """Serve `data` under a new file id (getFile may report `reported_size` instead of the real size)."""
        file_id = f"file{next(self._ids)}"
        self.files[file_id] = data
        if reported_size is not None:
            self.file_sizes[file_id] = reported_size
        return file_id

    def push(self, update: dict[str, Any]) -> int:
        """Queue an update for getUpdates; returns the call index from which its replies are recorded."""
        update = {"update_id": next(self._update_ids), **update}
        self._updates.append(update)
        self._last_push = len(self.calls)
        task = asyncio.get_running_loop().create_task(self._notify())
        self._tasks.add(task)  # keep a reference until it ran
        task.add_done_callback(self._tasks.discard)
        return self._last_push

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def set_user_language(self, user_id: int, language_code: str | None) -> None:
        """Set (or, with None, remove) the language of a user's Telegram app, sent with their next updates."""
        if language_code:
            self.user_languages[user_id] = language_code
        else:
            self.user_languages.pop(user_id, None)

    def menu(self, *, chat_id: int | None = None, language_code: str = "") -> list[dict[str, Any]] | None:
        """The command menu last set for a chat (or the default scope) and language, or None when none is set."""
        scope = {"type": "chat", "chat_id": chat_id} if chat_id is not None else {"type": "default"}
        return self.commands.get((json.dumps(scope, sort_keys=True), language_code))

    def _person(self, user_id: int) -> dict[str, Any]:
        person: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": f"User{user_id}"}
        if user_id in self.user_languages:
            person["language_code"] = self.user_languages[user_id]
        return person

    def user_message(self, user_id: int, **content: Any) -> dict[str, Any]:
        """A message from a user in their private chat (not queued; see the send_* helpers)."""
        person = self._person(user_id)
        message = {"message_id": next(self._ids), "date": int(time.time()),
                   "chat": {"id": user_id, "type": "private", "first_name": person["first_name"]},
                   "from": person, **content}
        self.messages[message["message_id"]] = message  # the bot may reply to it
        return message

    def send_text(self, user_id: int, text: str, *, reply_to: dict[str, Any] | None = None) -> dict[str, Any]:
        """A user sends text (a command when it starts with "/"); returns the message."""
        content: dict[str, Any] = {"text": text}
        if text.startswith("/"):
            content["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
        if reply_to is not None:
            content["reply_to_message"] = reply_to
        message = self.user_message(user_id, **content)
        self.push({"message": message})
        return message

    def send_photo(self, user_id: int, data: bytes, *, caption: str | None = None,
                   reported_size: int | None = None) -> dict[str, Any]:
        """A user sends a photo: a small thumbnail size and the full one, as Telegram does; returns the message."""
        width, height = _image_size(data)
        thumb_id = self.add_file(_thumbnail(data))
        full_id = self.add_file(data, reported_size=reported_size)
        sizes = [
            {"file_id": thumb_id, "file_unique_id": f"u{thumb_id}", "width": max(1, width // 8),
             "height": max(1, height // 8), "file_size": len(self.files[thumb_id])},
            {"file_id": full_id, "file_unique_id": f"u{full_id}", "width": width, "height": height,
             "file_size": reported_size if reported_size is not None else len(data)},
        ]
        content: dict[str, Any] = {"photo": sizes}
        if caption:
            content["caption"] = caption
        message = self.user_message(user_id, **content)
        self.push({"message": message})
        return message

    def send_document(self, user_id: int, data: bytes, *, file_name: str, mime_type: str | None,
                      reported_size: int | None = None, size_in_message: bool = True) -> dict[str, Any]:
        """A user sends a file; returns the message (without file_size when `size_in_message` is False: only
        getFile then tells the size, as for some forwarded files)."""
        file_id = self.add_file(data, reported_size=reported_size)
        document: dict[str, Any] = {"file_id": file_id, "file_unique_id": f"u{file_id}", "file_name": file_name}
        if size_in_message:
            document["file_size"] = reported_size if reported_size is not None else len(data)
        if mime_type:
            document["mime_type"] = mime_type
        message = self.user_message(user_id, document=document)
        self.push({"message": message})
        return message

    def press(self, user_id: int, message: dict[str, Any], callback_data: str) -> int:
        """A user taps an inline button of a message the bot sent; returns the call index mark."""
        person = self._person(user_id)
        query = {"id": str(next(self._ids)), "from": person, "chat_instance": f"ci{user_id}",
                 "message": message, "data": callback_data}
        return self.push({"callback_query": query})

    def mark(self) -> int:
        """The index the next recorded call will have."""
        return len(self.calls)

    def calls_of(self, method: str, *, since: int = 0, **params: Any) -> list[Call]:
        """Recorded calls of `method` from index `since` whose parameters include `params`."""
        return [c for c in self.calls[since:] if c.method == method and _matches(c, params)]

    async def wait_for(
        self,
        method: str,
        *,
        since: int | None = None,
        timeout: float = 30.0,
        where: Callable[[Call], bool] | None = None,
        **params: Any,
    ) -> Call:
        """The first call of `method` (after the last pushed update, or `since`) matching `params` and `where`."""
        start = self._last_push if since is None else since

        def found() -> Call | None:
            for call in self.calls[start:]:
                if call.method == method and _matches(call, params) and (where is None or where(call)):
                    return call
            return None

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: found() is not None), timeout)
            except TimeoutError:
                seen = [f"{c.method}({c.text[:60]!r})" for c in self.calls[start:]]
                raise AssertionError(f"no {method} {params} within {timeout}s; calls since: {seen}") from None
        result = found()
        assert result is not None
        return result

    async def wait_until(self, condition: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Wait (without polling) until `condition()` is truthy after a recorded call; return its value."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(condition), timeout)
        return condition()

    async def quiet(self, seconds: float = 0.3) -> None:
        """Wait until no call has been recorded for `seconds` (to assert that something did NOT happen)."""
        count = -1
        while count != len(self.calls):
            count = len(self.calls)
            await asyncio.sleep(seconds)


class _ApiError(Exception):
    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description

    def body(self) -> dict[str, Any]:
        return {"ok": False, "error_code": self.status, "description": self.description}


def utf16_len(text: str) -> int:
    """Length as Telegram counts it: UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


class _HTMLText(html.parser.HTMLParser):
    """The text of a parse_mode=HTML message, checking that tags are known and closed as Telegram does."""

    TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a", "code", "pre",
            "blockquote", "tg-emoji"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.open: list[str] = []
        self.error: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.TAGS:
            self.error = self.error or f'Unsupported start tag "{tag}"'
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            self.error = self.error or f'Unmatched end tag "{tag}"'
        else:
            self.open.pop()

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def _parsed_text(text: str, parse_mode: str | None) -> str:
    """The text after entity parsing; raises the 400 Telegram answers for malformed markup."""
    mode = (parse_mode or "").lower()
    if mode == "html":
        parser = _HTMLText()
        parser.feed(text)
        parser.close()
        if parser.error is None and parser.open:
            parser.error = f"Can't find end tag corresponding to start tag \"{parser.open[-1]}\""
        if parser.error:
            raise _ApiError(400, f"Bad Request: can't parse entities: {parser.error}")
        return "".join(parser.parts)
    if mode == "markdownv2":
        out, i = [], 0
        while i < len(text):
            ch = text[i]
            if ch == "\\" and i + 1 < len(text):
                out.append(text[i + 1])
                i += 2
                continue
            if ch in MARKDOWN_V2_RESERVED and ch not in "*_~`|[]()":
                raise _ApiError(400, f"Bad Request: can't parse entities: Character '{ch}' is reserved and must be "
                                     f"escaped with the preceding '\\'")
            if ch not in "*_~`|":
                out.append(ch)
            i += 1
        return "".join(out)
    return text


def _check_limits(method: str, params: dict[str, Any]) -> None:
    """Refuse, as Telegram does, text, captions, buttons and answers over its limits."""
    mode = params.get("parse_mode")
    if method in ("sendMessage", "editMessageText"):
        text = _parsed_text(str(params.get("text") or ""), mode)
        if not text.strip():
            raise _ApiError(400, "Bad Request: message text is empty")
        if utf16_len(text) > MessageLimit.MAX_TEXT_LENGTH:
            raise _ApiError(400, "Bad Request: message is too long")
    caption = str(params.get("caption") or "")
    captioned = method in ("sendPhoto", "sendDocument", "editMessageCaption") and caption
    if captioned and utf16_len(_parsed_text(caption, mode)) > MessageLimit.CAPTION_LENGTH:
        raise _ApiError(400, "Bad Request: message caption is too long")
    limit = CallbackQueryLimit.ANSWER_CALLBACK_QUERY_TEXT_LENGTH
    if method == "answerCallbackQuery" and utf16_len(str(params.get("text") or "")) > limit:
        raise _ApiError(400, "Bad Request: MESSAGE_TOO_LONG")
    markup = params.get("reply_markup")
    if isinstance(markup, dict) and "inline_keyboard" in markup:
        _check_keyboard(markup["inline_keyboard"])


def _check_keyboard(rows: list[list[dict[str, Any]]]) -> None:
    buttons = [b for row in rows for b in row]
    if len(buttons) > InlineKeyboardMarkupLimit.TOTAL_BUTTON_NUMBER:
        raise _ApiError(400, "Bad Request: reply markup is too long")
    if any(len(row) > InlineKeyboardMarkupLimit.BUTTONS_PER_ROW for row in rows):
        raise _ApiError(400, "Bad Request: too many buttons in a row")
    for button in buttons:
        if not str(button.get("text") or "").strip():
            raise _ApiError(400, "Bad Request: BUTTON_TEXT_INVALID")
        if "callback_data" in button:
            size = len(str(button["callback_data"]).encode())
            if not InlineKeyboardButtonLimit.MIN_CALLBACK_DATA <= size <= InlineKeyboardButtonLimit.MAX_CALLBACK_DATA:
                raise _ApiError(400, "Bad Request: BUTTON_DATA_INVALID")
        elif "url" in button:
            if not _acceptable_url(str(button["url"])):
                raise _ApiError(400, "Bad Request: BUTTON_URL_INVALID")
        else:
            raise _ApiError(400, "Bad Request: text buttons are unallowed in the inline keyboard")


URL = re.compile(r"^(https?|tg)://[^\s/?#]+([/?#]\S*)?$", re.IGNORECASE)


def _acceptable_url(url: str) -> bool:
    """A link Telegram takes on a URL button: http(s) to a host with a dot, or tg://; at most 2,048 characters."""
    if len(url) > 2048 or not URL.match(url):
        return False
    host = url.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0].rsplit("@", 1)[-1].split(":", 1)[0]
    return url.lower().startswith("tg://") or ("." in host and not host.startswith(".") and not host.endswith("."))


def _ok(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})


def _matches(call: Call, params: dict[str, Any]) -> bool:
    return all(call.params.get(k) == v for k, v in params.items())


async def _read_params(request: web.Request) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Form or multipart fields (JSON-encoded values decoded), and uploaded files' bytes."""
    params: dict[str, Any] = {}
    files: dict[str, bytes] = {}
    if request.content_type == "application/json":
        body = await request.json()
        return (body if isinstance(body, dict) else {}), files
    form = await request.post()
    for key, value in form.items():
        if isinstance(value, web.FileField):
            files[key] = value.file.read()
        elif key in TEXT_PARAMS:
            params[key] = value
        else:
            try:
                params[key] = json.loads(value)
            except ValueError:
                params[key] = value
    for key in list(files):  # sendPhoto's "photo" arrives as a file; keep a marker in params too
        params.setdefault(key, f"<{len(files[key])} bytes>")
    return params, files


def _image_size(data: bytes) -> tuple[int, int]:
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:  # noqa: BLE001 (not an image: a plausible size is enough)
        return 1, 1


@functools.lru_cache(maxsize=512)
def _thumbnail(data: bytes) -> bytes:
    """A small JPEG version of an image, like Telegram's smallest photo size (the bytes themselves if not one).

    Cached: Telegram makes these on its own servers, so a benchmark sending the same photo again should not
    pay for it in the bot's process."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            small = img.convert("RGB")
        small.thumbnail((90, 90))
        buf = io.BytesIO()
        small.save(buf, "JPEG")
        return buf.getvalue()
    except Exception:  # noqa: BLE001
        return data
