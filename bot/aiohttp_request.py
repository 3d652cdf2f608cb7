"""python-telegram-bot's networking backend on aiohttp instead of httpx: the same Bot API calls for a quarter of the CPU.

PTB lets a bot bring its own `telegram.request.BaseRequest` (docs.python-telegram-bot.org, "Architecture" and
`BaseRequest`); its default, `HTTPXRequest`, cost 2.0 ms of CPU per call on the 2-core machine of bench/RESULTS.md
against 0.5 ms for aiohttp (a dependency already: the health and webhook server), and a search makes ~5 calls
(getUpdates, getFile, the download, sendChatAction, sendPhoto). Behaviour follows `HTTPXRequest`: HTTP/1.1
keep-alive connections from a bounded pool, the same default timeouts, PTB's User-Agent, form-encoded parameters
(multipart when a file is uploaded), an HTTP proxy from HTTPS_PROXY/HTTP_PROXY/ALL_PROXY unless NO_PROXY names
the host (read once per host; aiohttp's own `trust_env` would also read ~/.netrc on a worker thread for every
call), certificates from certifi,
timeouts raised as `TimedOut` and transport failures as `NetworkError` (their text never carries the URL,
which holds the bot token, nor a proxy's user and password). Like HTTPXRequest it never follows a redirect (a
Bot API that answers 3xx would otherwise get the photo re-sent wherever it points), its timeouts bound each wait
(a slow 20 MB download that keeps moving completes), and an answer over MAX_RESPONSE_BYTES is refused while it
arrives, not after it is all in memory.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from telegram._utils.defaultvalue import DefaultValue
from telegram._utils.types import ODVInput
from telegram.error import NetworkError, TimedOut
from telegram.request import BaseRequest, RequestData

logger = logging.getLogger(__name__)

# The longest answer read: the Bot API serves files of at most 20 MB (bot.telegram_io.DOWNLOAD_LIMIT), a JSON
# answer is far smaller; past this a call fails as it arrives instead of filling memory.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
# One call's upper bound on top of the per-wait timeouts: a 20 MB download at 70 KB/s still fits.
LONGEST_CALL_S = 300.0
_CHUNK = 256 * 1024
_BOT_PATH = re.compile(r"/bot[^/\s'\"]+")  # /bot<token>, raw or percent-encoded
_USERINFO = re.compile(r"(//)[^/@\s'\"]+@")  # scheme://user:password@host


def _ssl_context() -> ssl.SSLContext:
    """Certificates from certifi when it is installed (as httpx uses), else the system's."""
    try:
        import certifi
    except ImportError:  # pragma: no cover - httpx (a PTB dependency) brings certifi
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


def _redacted(text: str, url: str) -> str:
    """`text` without the URL or its path (the path of a Bot API URL holds the token)."""
    path = urlsplit(url).path
    for secret in (url, path):
        if secret:
            text = text.replace(secret, "<url>")
    return _USERINFO.sub(r"\1<user>@", _BOT_PATH.sub("/bot<token>", text))


class AiohttpRequest(BaseRequest):
    """A `BaseRequest` over one aiohttp ClientSession (created on `initialize`, closed on `shutdown`).

    Timeouts are in seconds (None: no limit), with HTTPXRequest's defaults, and bound each wait: `read_timeout`
    each read of the answer, `connect_timeout` the connection, `pool_timeout` the wait for a free connection
    (aiohttp counts it in its `connect` timeout). aiohttp has no write timeout of its own: the whole call is
    bounded by the larger of the four timeouts' sum and LONGEST_CALL_S (so a stalled upload ends too).
    """

    __slots__ = ("_connect", "_media_write", "_pool", "_pool_size", "_proxies", "_read", "_session", "_write")

    def __init__(
        self,
        connection_pool_size: int = 256,
        read_timeout: float | None = 5.0,
        write_timeout: float | None = 5.0,
        connect_timeout: float | None = 5.0,
        pool_timeout: float | None = 1.0,
        media_write_timeout: float | None = 20.0,
    ) -> None:
        self._pool_size = max(1, connection_pool_size)
        self._read, self._write, self._connect, self._pool = read_timeout, write_timeout, connect_timeout, pool_timeout
        self._media_write = media_write_timeout
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[tuple[str, str], str | None] = {}

    @property
    def read_timeout(self) -> float | None:
        """The default read timeout, in seconds."""
        return self._read

    async def initialize(self) -> None:
        """Open the session (in the running event loop)."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._pool_size, ssl=_ssl_context())
            self._session = aiohttp.ClientSession(connector=connector, headers={"User-Agent": self.USER_AGENT})
            self._proxies.clear()

    def _proxy_for(self, url: str) -> str | None:
        """The proxy the environment sets for this URL's scheme and host (None: connect directly)."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.hostname or "")
        if key not in self._proxies:
            proxies = urllib.request.getproxies_environment()
            bypass = bool(key[1]) and urllib.request.proxy_bypass_environment(key[1], proxies)
            self._proxies[key] = None if bypass else proxies.get(key[0]) or proxies.get("all")
        return self._proxies[key]

    async def shutdown(self) -> None:
        """Close the session and its connections."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        write_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        connect_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        pool_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        """One HTTP request: (status code, body). Raises TimedOut or NetworkError."""
        if self._session is None or self._session.closed:
            raise RuntimeError("This AiohttpRequest is not initialized!")
        files = request_data.multipart_data if request_data else None
        params = request_data.json_parameters if request_data else None
        read = self._read if isinstance(read_timeout, DefaultValue) else read_timeout
        connect = self._connect if isinstance(connect_timeout, DefaultValue) else connect_timeout
        pool = self._pool if isinstance(pool_timeout, DefaultValue) else pool_timeout
        default_write = self._media_write if files else self._write
        write = default_write if isinstance(write_timeout, DefaultValue) else write_timeout
        parts = (read, write, connect, pool)
        timeout = aiohttp.ClientTimeout(
            total=None if any(p is None for p in parts) else max(LONGEST_CALL_S, sum(p for p in parts if p is not None)),
            connect=None if connect is None or pool is None else connect + pool,
            sock_connect=connect, sock_read=read,
        )
        body: Any = params or None
        if files:
            form = aiohttp.FormData()
            for name, value in (params or {}).items():
                form.add_field(name, value)
            for name, (filename, content, mimetype) in files.items():
                form.add_field(name, content, filename=filename, content_type=mimetype)
            body = form
        try:
            async with self._session.request(method, url, data=body, timeout=timeout, proxy=self._proxy_for(url),
                                             allow_redirects=False) as response:
                if (response.content_length or 0) > MAX_RESPONSE_BYTES:
                    raise NetworkError(f"the Bot API's answer is {response.content_length} bytes, over {MAX_RESPONSE_BYTES}: refused")
                chunks, size = [], 0
                async for chunk in response.content.iter_chunked(_CHUNK):
                    size += len(chunk)
                    if size > MAX_RESPONSE_BYTES:
                        raise NetworkError(f"the Bot API's answer is over {MAX_RESPONSE_BYTES} bytes: refused")
                    chunks.append(chunk)
                return response.status, b"".join(chunks)
        except TimeoutError as exc:  # aiohttp's timeouts are asyncio.TimeoutError (TimeoutError since 3.11)
            raise TimedOut(_redacted(f"aiohttp.{type(exc).__name__}: {exc}", url)) from None
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
            raise NetworkError(_redacted(f"aiohttp.{type(exc).__name__}: {exc}", url)) from None
