"""The Telegram Application: handlers, lifecycle (engine, menus, daily purge, HTTP server) and how it runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from telegram import Update
from telegram.error import InvalidToken, TelegramError
from telegram.ext import (
    Application,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    Defaults,
    MessageHandler,
    TypeHandler,
    filters,
)
from telegram.request import HTTPXRequest

from bot import jobs, menus, texts, web
from bot.context import ENGINE_KEY, SERVICES_KEY, BotContext, Services
from bot.handlers import access, audit, case, confirm, enroll, errors, forget, language, search, users
from bot.handlers import help as guide
from bot.i18n import LanguageError, describe
from bot.settings import Settings
from bot.telegram_io import FittingBot, RetryingRateLimiter, error_text
from engine import Engine, EngineError

logger = logging.getLogger(__name__)

BotApplication = Application[Any, BotContext, Any, Any, Any, Any]
ALLOWED_UPDATES = [Update.MESSAGE, Update.CALLBACK_QUERY]


class MissingToken(RuntimeError):
    """No bot token is configured."""


class BadLanguages(RuntimeError):
    """A configured language cannot be used (no catalog, not a locale)."""


def build_application(settings: Settings, engine: Engine | None = None) -> BotApplication:
    """The bot, ready to run: handlers registered; the engine is opened in post_init unless given."""
    token = settings.telegram_token.get_secret_value().strip() if settings.telegram_token else ""
    if not token:
        raise MissingToken(texts.MISSING_TOKEN)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its request lines contain the token
    bot = FittingBot(
        token,
        base_url=settings.telegram_api_url,
        base_file_url=settings.telegram_file_url,
        # PTB's own HTTP client, with the pools and timeouts ApplicationBuilder would give (tests/test_bot_request.py)
        request=HTTPXRequest(connection_pool_size=256),
        get_updates_request=HTTPXRequest(connection_pool_size=1),
        rate_limiter=RetryingRateLimiter(),
        # Every reply quotes the message it answers (albums: which answer is whose), even if that was deleted.
        defaults=Defaults(do_quote=True, allow_sending_without_reply=True),
    )
    application: BotApplication = (
        Application.builder()
        .bot(bot)
        .context_types(ContextTypes(context=BotContext))
        .post_init(_post_init)
        .post_shutdown(_post_shutdown)
        .build()
    )
    try:
        application.bot_data[SERVICES_KEY] = Services.create(settings)
    except LanguageError as exc:
        raise BadLanguages(f"SIGHTLINE_LANGUAGES: {exc}") from None
    if engine is not None:
        application.bot_data[ENGINE_KEY] = engine
    add_handlers(application)
    bot.on_poll_failure(lambda error, pause: errors.poll_failed(application, error, pause))
    return application


def add_handlers(application: BotApplication) -> None:
    """Every handler, in order: the access gate first (group -1), then commands, images, buttons, the rest."""
    new = filters.UpdateType.MESSAGE  # edits of old messages are ignored
    images = filters.PHOTO | filters.Document.ALL
    application.add_handler(TypeHandler(Update, access.gate), group=-1)
    services: Services = application.bot_data[SERVICES_KEY]
    aliases = command_aliases(services)
    commands = [
        ("start", guide.on_start, True),
        ("help", guide.on_help, True),
        ("case", case.on_case, True),
        ("language", language.on_language, True),
        ("allow", users.on_allow, True),
        ("revoke", users.on_revoke, True),
        ("users", users.on_users, True),
        ("stats", users.on_stats, True),
        ("audit", audit.on_audit, False),  # verify walks the whole chain
        ("enroll", enroll.on_enroll, False),  # download + inference
        ("forget", forget.on_forget, False),  # index rewrite
    ]
    for name, callback, block in commands:
        names = [name, *aliases.get(name, [])]
        application.add_handler(CommandHandler(names, callback, filters=new, block=block))
    application.add_handler(
        MessageHandler(new & images & filters.CaptionRegex(enroll.CAPTION_PATTERN), enroll.on_enroll_caption, block=False)
    )
    application.add_handler(MessageHandler(new & images, search.on_image, block=False))
    application.add_handler(CallbackQueryHandler(search.on_face_choice, pattern=search.FACE_PATTERN, block=False))
    application.add_handler(CallbackQueryHandler(search.on_more, pattern=search.MORE_PATTERN, block=False))
    application.add_handler(CallbackQueryHandler(language.on_language_choice, pattern=language.LANGUAGE_PATTERN))
    application.add_handler(CallbackQueryHandler(confirm.on_confirm, pattern=confirm.PATTERN, block=False))
    application.add_handler(CallbackQueryHandler(search.on_stale_button))
    application.add_handler(MessageHandler(new & filters.COMMAND, guide.on_unknown_command))
    application.add_handler(MessageHandler(new, guide.on_other))
    application.add_error_handler(errors.on_error)


ADMIN_COMMAND_NAMES = frozenset(name for name, _ in texts.ADMIN_COMMANDS)


def command_aliases(services: Services) -> dict[str, list[str]]:
    """Officer command -> its names in the configured languages (/aide, /hulp, /hilfe for /help).

    A name that is already another command's (in any language) is left out, with a warning: the first
    command to claim a name keeps it.
    """
    taken = {name for name, _ in texts.OFFICER_COMMANDS} | ADMIN_COMMAND_NAMES
    out: dict[str, list[str]] = {}
    for name, names in services.languages.aliases().items():
        for alias in names:
            if alias in taken:
                logger.warning("command name /%s (for /%s) is already taken; not registered", alias, name)
                continue
            taken.add(alias)
            out.setdefault(name, []).append(alias)
    return out


async def _post_init(application: BotApplication) -> None:
    """Open the engine (unless given), make sure bootstrap admins exist, publish menus, start background work."""
    services: Services = application.bot_data[SERVICES_KEY]
    settings = services.settings
    engine: Engine | None = application.bot_data.get(ENGINE_KEY)
    if engine is None:
        engine = await Engine.open(settings.engine_config())
        application.bot_data[ENGINE_KEY] = engine
        services.owns_engine = True
    for user_id in sorted(settings.admin_ids):
        if await engine.user(user_id) is None:
            await engine.allow(user_id, "admin", texts.BOOTSTRAP_NOTE, actor="system")
    admin_ids = {u.user_id for u in await engine.users() if u.role == "admin"} | settings.admin_ids
    admins = {i: services.languages.choose(await engine.language(i), None) for i in admin_ids}
    await menus.publish(application.bot, services.languages, admins)
    services.tasks.append(asyncio.create_task(jobs.purge_daily(engine, settings.purge_hour_utc), name="daily-purge"))
    services.tasks.append(asyncio.create_task(jobs.save_index_periodically(engine), name="index-saver"))
    services.tasks.append(asyncio.create_task(jobs.audit_strangers_periodically(services, engine), name="strangers"))
    if settings.mode == "polling":  # in webhook mode bot/web.py runs the server itself
        services.http = await web.start_http(settings, engine, application)
    logger.info("bot @%s ready: %d gallery faces, %d admin(s); languages %s", application.bot.username, len(engine.index),
                len(admins), describe(services.languages))


async def _post_shutdown(application: BotApplication) -> None:
    """Stop background work, drop in-memory photos and results, close the engine if we opened it."""
    services: Services = application.bot_data[SERVICES_KEY]
    for task in services.tasks:
        task.cancel()
    await asyncio.gather(*services.tasks, return_exceptions=True)
    services.tasks.clear()
    engine_open: Engine | None = application.bot_data.get(ENGINE_KEY)
    if engine_open is not None:  # refusals counted in memory go to the audit log before it closes
        await access.flush_strangers(services, engine_open, everything=True)
    services.photos.clear()
    services.results.clear()
    services.confirmations.clear()
    await web.stop_http(services.http)
    services.http = None
    if services.owns_engine:
        engine: Engine | None = application.bot_data.pop(ENGINE_KEY, None)
        if engine is not None:
            await engine.close()
        services.owns_engine = False


@contextlib.asynccontextmanager
async def polling(application: BotApplication, **start_polling: Any) -> AsyncIterator[BotApplication]:
    """Run the bot with long polling inside an already running event loop, as `run_polling` would.

    initialize -> post_init -> start polling -> start ... stop -> post_stop -> shutdown -> post_shutdown. A failed
    poll is reported, paused and retried inside FittingBot.get_updates (errors.poll_failed); any error of getUpdates
    that still reaches PTB's loop goes to the error handlers (update None), as run_polling's error callback sends it.
    """
    updater = application.updater
    assert updater is not None

    def error_callback(exc: TelegramError) -> None:
        application.create_task(application.process_error(error=exc, update=None))

    start_polling.setdefault("error_callback", error_callback)
    await application.initialize()
    try:
        if application.post_init:
            await application.post_init(application)
        await updater.start_polling(allowed_updates=ALLOWED_UPDATES, **start_polling)
        await application.start()
        try:
            yield application
        finally:
            if updater.running:
                await updater.stop()
            if application.running:
                await application.stop()
                if application.post_stop:
                    await application.post_stop(application)
    finally:
        await application.shutdown()
        if application.post_shutdown:
            await application.post_shutdown(application)


def run_webhook(settings: Settings, application: BotApplication) -> int:
    """Webhook mode: bot/web.py serves Telegram's POSTs (and /healthz, /metrics) around this Application."""
    return asyncio.run(web.run_webhook(settings, application, allowed_updates=ALLOWED_UPDATES))


class QuietNetworkRecords(logging.Filter):
    """python-telegram-bot's own records of a Bot API that does not answer, made one line each (tracebacks with -v).

    * "Network Retry Loop (...) ... Aborting" (start-up gave up: no answer, or the token refused): dropped, since `run`
      then says in one line what failed and what to do;
    * "Error while calling `get_updates` one more time ..." (stopping while Telegram is unreachable): one line with
      the cause instead of a traceback;
    * "Error while parsing updates! Received data was ..." (getUpdates answered JSON that is not updates): dropped, as
      it quotes the whole answer; bot.telegram_io.FittingBot.get_updates treats it as UnreadableUpdates instead, which
      `bot.handlers.errors.poll_failed` logs in one line (and the next poll waits, up to 30 s).
    "Network Retry Loop (Polling Updates): ... Invalid token" cannot happen while running: get_updates handles a 401.
    """

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[str, float] = {}  # when each kind of repeated record was last let through (time.monotonic)
        self._held: dict[str, int] = {}  # how many of each were held back since

    def filter(self, record: logging.LogRecord) -> bool:
        """False for PTB's give-up record and repeats within REPEAT_S; its last-getUpdates, invalid-JSON and
        unprocessable-data records shortened to one line; other records untouched."""
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            return True
        text = record.getMessage()
        if text.startswith("Network Retry Loop") and "Aborting" in text:
            return False
        if text.startswith("Can not load invalid JSON data"):  # the answer's body can be anything (binary, a proxy's page)
            return self._once(record, "json", "the Bot API's answer is not JSON (%d characters): is SIGHTLINE_TELEGRAM_API_URL "
                              "a Bot API server, or is a proxy answering instead?", (len(text),))
        if text.startswith("Error while parsing updates!"):  # it repeats the whole answer (messages, names): on_error says it
            return False
        if text.startswith("Something went wrong processing the data received from Telegram"):
            error = record.exc_info[1] if record.exc_info else None
            return self._once(record, "data", "the Bot API's updates could not be read (%s: %s): they were not processed",
                              (type(error).__name__, str(error)[:200]))
        if record.exc_info and text.startswith("Error while calling `get_updates` one more time"):
            error = record.exc_info[1]
            record.msg = "could not mark the last updates read while stopping (%s): Telegram may deliver them again"
            record.args = (error_text(error) if error else "?",)
            record.levelno, record.levelname = logging.WARNING, "WARNING"  # nothing is lost that Telegram keeps
            record.exc_info = None
            record.exc_text = None
        return True

    def _once(self, record: logging.LogRecord, kind: str, msg: str, args: tuple[object, ...]) -> bool:
        """Record rewritten to one WARNING line without traceback; let through at most once per REPEAT_S per kind, with
        the count held back since (a Bot API answering garbage is retried several times a second)."""
        now = time.monotonic()
        if now - self._last.get(kind, -REPEAT_S) < REPEAT_S:
            self._held[kind] = self._held.get(kind, 0) + 1
            return False
        held = self._held.pop(kind, 0)
        self._last[kind] = now
        record.msg = msg + (f" ({held} more like it in the last {REPEAT_S:.0f} s)" if held else "")
        record.args = args
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = None
        record.exc_text = None
        return True


REPEAT_S = 60.0  # QuietNetworkRecords lets one record of a kind through per minute
# PTB's network retry loop (telegram/ext/_utils), Updater, BaseRequest (an answer that is not JSON), ExtBot (not updates)
QUIETED_LOGGERS = ("telegram.ext", "telegram.ext.Updater", "telegram.request.BaseRequest", "telegram.ext.ExtBot")


def quiet_ptb_records() -> None:
    """Put QuietNetworkRecords on python-telegram-bot's loggers (once)."""
    for name in QUIETED_LOGGERS:
        ptb = logging.getLogger(name)
        if not any(isinstance(f, QuietNetworkRecords) for f in ptb.filters):
            ptb.addFilter(QuietNetworkRecords())


def run(settings: Settings) -> int:
    """Run the bot until interrupted (long polling, or a webhook when SIGHTLINE_MODE=webhook); the exit code.

    0 after a stop (Ctrl-C, SIGTERM); 2 without a token, with a bad language, or when Telegram refuses the token (at
    start, or while running: the token was revoked); 1 when the engine or Telegram cannot be reached at start.
    """
    quiet_ptb_records()
    try:
        application = build_application(settings)
    except (MissingToken, BadLanguages) as exc:
        logger.error("%s", exc)
        return 2
    try:
        if settings.mode == "webhook":
            return run_webhook(settings, application)
        application.run_polling(allowed_updates=ALLOWED_UPDATES)
        if isinstance(application.bot, FittingBot) and application.bot.token_refused:
            return 2  # the token was revoked while running: bot.handlers.errors.poll_failed said so and stopped the bot
    except InvalidToken:
        logger.error("%s", texts.TOKEN_REJECTED)
        return 2
    except EngineError as exc:
        logger.error("cannot start the bot: %s", exc)
        return 1
    except TelegramError as exc:
        logger.error("cannot talk to Telegram at %s: %.300s", settings.telegram_api_url, exc)  # (an answer's body: cut short)
        return 1
    except OSError as exc:  # e.g. the health/metrics port is taken
        logger.error("cannot start the bot: %s", exc)
        return 1
    return 0
