"""The bot's HTTP server (aiohttp): /healthz and /metrics in both modes, and the Telegram webhook in webhook mode.

In webhook mode we don't use PTB's `run_webhook` (it brings its own tornado server); `run_webhook` below runs
the Application's lifecycle by hand around our aiohttp server, as PTB's `examples/customwebhookbot` does.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import secrets
import signal
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from bot.logs import redact_also
from bot.metrics import CONTENT_TYPE, Metrics
from bot.settings import Settings
from engine import Engine, EngineError

logger = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# Telegram accepts 1-256 characters from this set as a webhook secret.
SECRET_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,256}")
DB_TIMEOUT_S = 3.0  # a /healthz that waits longer than this on the database reports it unreachable
RECHECK_DELAY_S = 0.25  # an enroll commits the row a moment before the vector: look twice before failing
MAX_UPDATE_BYTES = 1 << 20  # Telegram updates are a few KB; a bigger body is not one

ENGINE_KEY = web.AppKey("engine", object)
METRICS_KEY = web.AppKey("metrics", Metrics)


# -- health ------------------------------------------------------------------------------------------
async def check_health(engine: Engine | None) -> tuple[bool, dict[str, Any]]:
    """Models loaded, database reachable, index holding as many faces as the database: (healthy, report)."""
    if engine is None:
        return False, {"status": "starting", "detail": "the engine is not open yet"}
    report: dict[str, Any] = {}
    faces = getattr(engine, "faces", None)
    models_ok = faces is not None and getattr(faces, "detector", None) is not None and (
        getattr(faces, "recognizer", None) is not None
    )
    report["models"] = {"ok": models_ok, "name": getattr(faces, "name", None)}
    db_faces: int | None = None
    for attempt in range(2):
        try:
            db_faces, _ = await asyncio.wait_for(engine.store.face_fingerprint(), DB_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 (closed connection, locked or corrupt file, timeout: all "unreachable")
            report["database"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]}
            db_faces = None
            break
        report["database"] = {"ok": True, "faces": db_faces}
        index_faces, index_error = await _index_faces(engine)
        if index_faces == db_faces or attempt == 1:
            break
        await asyncio.sleep(RECHECK_DELAY_S)
    index_faces, index_error = await _index_faces(engine)
    if index_error is not None:
        report["index"] = {"ok": False, "faces": None, "error": index_error}
    elif db_faces is None:
        report["index"] = {"ok": False, "faces": index_faces, "error": "database unreachable"}
    elif index_faces != db_faces:
        report["index"] = {
            "ok": False, "faces": index_faces,
            "error": f"the index holds {index_faces} faces, the database {db_faces}",
        }
    else:
        report["index"] = {"ok": True, "faces": index_faces}
    healthy = all(part["ok"] for part in report.values())
    return healthy, {"status": "ok" if healthy else "fail", **report}


async def _index_faces(engine: Engine) -> tuple[int | None, str | None]:
    """Faces in the index, off the event loop (Milvus: a call to the server, with its timeout); or the error."""
    try:
        return await asyncio.to_thread(len, engine.index), None
    except EngineError as exc:
        return None, str(exc)[:300]


async def on_healthz(request: web.Request) -> web.Response:
    """200 with a JSON report when the bot can serve searches, 503 (same shape) when it cannot."""
    healthy, report = await check_health(request.app[ENGINE_KEY])  # type: ignore[arg-type]
    return web.json_response(report, status=200 if healthy else 503)


async def on_metrics(request: web.Request) -> web.Response:
    """The Prometheus exposition of the bot's registry."""
    body = request.app[METRICS_KEY].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


# -- webhook -----------------------------------------------------------------------------------------
def webhook_path(url: str) -> str:
    """The local route of the webhook: the path of the public URL Telegram posts to."""
    return urlsplit(url).path or "/"


def configured_secret(settings: Settings) -> str | None:
    """The webhook secret from the settings; None when unset or empty (`SIGHTLINE_WEBHOOK_SECRET=` in a file)."""
    if settings.webhook_secret is None:
        return None
    return settings.webhook_secret.get_secret_value() or None


def webhook_problems(settings: Settings) -> list[str]:
    """What stops webhook mode from working with these settings (empty when nothing does)."""
    problems = []
    url = settings.webhook_url or ""
    if not url:
        problems.append("SIGHTLINE_WEBHOOK_URL is not set: the public HTTPS URL Telegram posts updates to")
    elif urlsplit(url).scheme != "https" or not urlsplit(url).hostname:
        problems.append(f"SIGHTLINE_WEBHOOK_URL must be an https:// URL (Telegram only posts to HTTPS), got {url!r}")
    secret = configured_secret(settings)
    if secret is not None and not SECRET_PATTERN.fullmatch(secret):
        problems.append("SIGHTLINE_WEBHOOK_SECRET must be 1-256 characters from A-Z, a-z, 0-9, _ and -")
    if not 0 < settings.http_port < 65536:
        problems.append(f"SIGHTLINE_HTTP_PORT must be a port number in webhook mode, got {settings.http_port}")
    return problems


def _webhook_handler(application: Any, secret: str) -> Any:
    expected = secret.encode()

    async def on_webhook(request: web.Request) -> web.Response:
        """Check Telegram's secret header, then hand the update to PTB's update queue."""
        from telegram import Update

        metrics: Metrics = request.app[METRICS_KEY]
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, expected):
            metrics.webhook("forbidden")
            logger.warning("webhook call from %s with a wrong or missing secret: refused", request.remote)
            return web.json_response({"ok": False, "error": "forbidden"}, status=403)
        try:
            data = await request.json()
            if not isinstance(data, dict) or "update_id" not in data:
                raise ValueError("not a Telegram update")
            update = Update.de_json(data, application.bot)
        except (ValueError, TypeError, KeyError, json.JSONDecodeError) as exc:
            metrics.webhook("bad_request")
            logger.warning("webhook body is not a Telegram update: %s", type(exc).__name__)
            return web.json_response({"ok": False, "error": "bad request"}, status=400)
        await application.update_queue.put(update)
        metrics.webhook("accepted")
        return web.json_response({"ok": True})

    return on_webhook


# -- server ------------------------------------------------------------------------------------------
def build_web_app(
    settings: Settings,
    engine: Engine | None,
    application: Any = None,
    *,
    metrics: Metrics | None = None,
    secret: str | None = None,
) -> web.Application:
    """The aiohttp application: /healthz, /metrics and, in webhook mode with an Application, the webhook."""
    if metrics is None:
        metrics = Metrics.of(application) if application is not None else Metrics()
    metrics.bind_engine(engine)
    app = web.Application(client_max_size=MAX_UPDATE_BYTES)
    app[ENGINE_KEY] = engine
    app[METRICS_KEY] = metrics
    app.router.add_get("/healthz", on_healthz)
    app.router.add_get("/metrics", on_metrics)
    if settings.mode == "webhook" and application is not None:
        secret = secret or configured_secret(settings)
        if not secret:
            raise ValueError("webhook mode needs a secret: an unauthenticated webhook would accept forged updates")
        app.router.add_post(webhook_path(settings.webhook_url or "/"), _webhook_handler(application, secret))
    return app


async def start_http(
    settings: Settings,
    engine: Engine | None,
    application: Any = None,
    *,
    metrics: Metrics | None = None,
    secret: str | None = None,
) -> web.AppRunner | None:
    """Start the server on settings.http_host:http_port; None when http_port is 0 in polling mode (disabled)."""
    if settings.http_port == 0 and settings.mode == "polling":
        logger.info("HTTP server disabled (SIGHTLINE_HTTP_PORT=0): no /healthz or /metrics")
        return None
    app = build_web_app(settings, engine, application, metrics=metrics, secret=secret)
    # No access log: Prometheus and the health check would write a line every few seconds.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(
            exc.errno, f"cannot listen on {settings.http_host}:{settings.http_port} "
            f"(SIGHTLINE_HTTP_HOST / SIGHTLINE_HTTP_PORT): {exc.strerror}"
        ) from None
    routes = sorted({r.resource.canonical for r in app.router.routes() if r.resource is not None})
    logger.info("HTTP server on %s:%d: %s", settings.http_host, settings.http_port, ", ".join(routes))
    return runner


async def stop_http(runner: web.AppRunner | None) -> None:
    """Stop the server (no-op for None)."""
    if runner is not None:
        await runner.cleanup()


# -- webhook mode lifecycle --------------------------------------------------------------------------
async def run_webhook(
    settings: Settings,
    application: Any,
    *,
    allowed_updates: Sequence[str] | None = None,
    stop: asyncio.Event | None = None,
    stop_signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM),
) -> int:
    """Run the bot in webhook mode until SIGINT/SIGTERM (or `stop` is set); returns an exit code.

    `allowed_updates` goes to setWebhook, as run_polling's does to getUpdates (None: every type).

    initialize -> post_init -> our HTTP server -> start -> setWebhook ... stop -> post_stop -> shutdown ->
    post_shutdown, the order PTB's own run_* methods follow. post_init must put the open engine in
    application.bot_data["engine"] (for /healthz).
    """
    problems = webhook_problems(settings)
    if problems:
        for problem in problems:
            logger.error("webhook mode: %s", problem)
        return 2
    assert settings.webhook_url is not None
    secret = configured_secret(settings)
    if secret is None:
        # Telegram sends back whatever we give setWebhook, so a fresh secret per run works for one process.
        secret = secrets.token_urlsafe(32)  # only characters Telegram accepts
        logger.info("no SIGHTLINE_WEBHOOK_SECRET set: using a random secret for this run")
    redact_also(secret)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in stop_signals:
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
            logger.debug("cannot handle signal %s here", sig)
    runner: web.AppRunner | None = None
    try:
        await application.initialize()
        if application.post_init:
            await application.post_init(application)
        runner = await start_http(settings, application.bot_data.get("engine"), application, secret=secret)
        await application.start()
        from telegram import Update

        await application.bot.set_webhook(
            url=settings.webhook_url, secret_token=secret,
            allowed_updates=list(allowed_updates) if allowed_updates is not None else Update.ALL_TYPES,
        )
        logger.info("webhook set: Telegram posts updates to %s", settings.webhook_url)
        await stop.wait()
        logger.info("stopping")
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await stop_http(runner)  # no new updates in; then let PTB finish the queued ones
        if application.running:
            await application.stop()
            if application.post_stop:
                await application.post_stop(application)
        await application.shutdown()
        if application.post_shutdown:
            await application.post_shutdown(application)
    return 0
