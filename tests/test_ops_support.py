"""Helpers shared by the tests/test_ops_*.py modules (no tests here): a tiny real gallery, fake Bot API servers."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import io
import json
import logging
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FACES = SHARED / "faces" / "dev"
# Three identities, one photo each, in the gallery; a second photo of each is a query that must match.
GALLERY = {"Colin_Powell": "1.jpg", "Hugo_Chavez": "1.jpg", "George_W_Bush": "1.jpg"}
QUERY = FACES / "Colin_Powell" / "2.jpg"
EXTRA = FACES / "Tony_Blair" / "1.jpg"  # enrolled by tests that need a write while something else runs
# Shaped like a real token (digits:35 chars) so the log filter's pattern would catch it too.
TOKEN = "123456789:AAH-fake_token_for_tests_0123456789ab"
BOT = {"id": 123456789, "is_bot": True, "first_name": "Sightline", "username": "sightline_test_bot"}

_gallery: Path | None = None


def engine_config(data_dir: Path) -> Any:
    """An EngineConfig for tests: small thread counts (the machine has 2 cores shared with others)."""
    from engine import EngineConfig

    return EngineConfig(data_dir=data_dir, inference_threads=1, workers=1, require_case=False)


async def _build(data_dir: Path) -> None:
    from engine import Engine

    engine = await Engine.open(engine_config(data_dir))
    try:
        for subject, name in GALLERY.items():
            path = FACES / subject / name
            await engine.enroll(path.read_bytes(), source_url=f"file://{subject}/{name}", subject=subject)
    finally:
        await engine.close()


def gallery_copy(dest: Path) -> Path:
    """A copy, at `dest`, of a data directory holding the three-photo gallery (built once per test run)."""
    global _gallery
    if _gallery is None:
        root = Path(tempfile.mkdtemp(prefix="sightline-ops-gallery-"))
        atexit.register(shutil.rmtree, root, True)
        # asyncio.run in a thread of its own: callers may be inside a running event loop.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, _build(root / "data")).result()
        _gallery = root / "data"
    shutil.copytree(_gallery, dest)
    return dest


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings(**overrides: Any) -> Any:
    """Settings for a test, from keyword arguments only (the environment of the test run is ignored)."""
    from bot.settings import Settings

    values = {"http_host": "127.0.0.1", "http_port": free_port(), "inference_threads": 1, "workers": 1}
    values.update(overrides)
    return Settings(**values)


# -- a fake Bot API inside the test's event loop (aiohttp) -----------------------------------------------
class FakeBotApi:
    """Answers getMe/setWebhook/deleteWebhook/... for TOKEN on 127.0.0.1 and records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        """What PTB's base_url / SIGHTLINE_TELEGRAM_API_URL should be."""
        return f"http://127.0.0.1:{self.port}/bot"

    def called(self, method: str) -> list[dict[str, Any]]:
        """Parameters of every call of `method`."""
        return [params for name, params in self.calls if name == method]

    async def _handle(self, request: web.Request) -> web.Response:
        token, method = request.match_info["token"], request.match_info["method"]
        if token != TOKEN:
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        params: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                params.update(await request.json())
            else:
                params.update(await request.post())
        self.calls.append((method, {k: str(v) for k, v in params.items()}))
        results = {"getMe": BOT, "getUpdates": []}
        return web.json_response({"ok": True, "result": results.get(method, True)})

    async def start(self) -> FakeBotApi:
        """Listen on a free port."""
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        self.port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        """Stop listening."""
        if self.runner:
            await self.runner.cleanup()


# -- a fake getMe for synchronous tests (a thread) ---------------------------------------------------
@contextlib.contextmanager
def threaded_get_me(status: int = 200) -> Iterator[str]:
    """A Bot API answering getMe for TOKEN (or with `status`) in a thread; yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server API)
            path = urlsplit(self.path).path
            ok = status == 200 and path == f"/bot{TOKEN}/getMe"
            body = {"ok": True, "result": BOT} if ok else {"ok": False, "error_code": 401, "description": "Unauthorized"}
            data = json.dumps(body).encode()
            self.send_response(200 if ok else (status if status != 200 else 401))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/bot"
    finally:
        server.shutdown()
        server.server_close()


# -- the CLI --------------------------------------------------------------------------------------------
def cli(*argv: str) -> tuple[int, str, str]:
    """Run `sightline ARGV...` in-process: (exit code, stdout, stderr). Root logging is restored afterwards."""
    import sys

    from bot.cli import main

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out, err = io.StringIO(), io.StringIO()
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        code = main(list(argv))
    finally:
        sys.stdout, sys.stderr = old
        root.handlers[:] = handlers
        root.setLevel(level)
    return code, out.getvalue(), err.getvalue()



class RunningBot:
    """`sightline run` in a subprocess against a fake Bot API (tests/fakebotapi.py), its stderr read line by line.

    `async with RunningBot(fake, data_dir) as bot:` starts it; `await bot.until(text, timeout_s)` reads stderr until a
    line holds `text`; `await bot.rest(timeout_s)` reads the rest to the end; on leaving, a process still running is
    killed. `bot.lines` holds every stderr line read, `bot.stderr` them joined.
    """

    def __init__(self, fake: Any, data_dir: Path) -> None:
        self.fake, self.data_dir = fake, data_dir
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> RunningBot:
        import os
        import subprocess
        import sys

        self.proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("sightline")), "--data-dir", str(self.data_dir), "run", cwd=REPO,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO), "SIGHTLINE_INFERENCE_THREADS": "1", "SIGHTLINE_WORKERS": "1",
                 "SIGHTLINE_TELEGRAM_TOKEN": self.fake.token, "SIGHTLINE_ADMINS": "1", "SIGHTLINE_HTTP_PORT": "0",
                 "SIGHTLINE_TELEGRAM_API_URL": self.fake.base_url, "SIGHTLINE_TELEGRAM_FILE_URL": self.fake.base_file_url},
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    async def until(self, text: str, timeout_s: float) -> None:
        """Read stderr lines until one holds `text`; AssertionError (with what was read) if stderr ends first."""
        async def read() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            while not any(text in line for line in self.lines):
                line = await self.proc.stderr.readline()
                assert line, self.stderr
                self.lines.append(line.decode(errors="replace").rstrip("\n"))
        await asyncio.wait_for(read(), timeout_s)

    async def rest(self, timeout_s: float) -> None:
        """Read stderr to its end (the process exits or closes it)."""
        assert self.proc is not None and self.proc.stderr is not None
        tail = await asyncio.wait_for(self.proc.stderr.read(), timeout_s)
        self.lines.extend(tail.decode(errors="replace").splitlines())
