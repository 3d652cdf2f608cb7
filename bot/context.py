"""The typed context every handler receives (PTB `examples/contexttypesbot.py`) and what the handlers share."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from telegram.ext import Application, CallbackContext, ExtBot

from bot.i18n import Language, Languages
from bot.metrics import Metrics
from bot.sessions import Confirmation, ExpiringStore, PendingPhoto, RateLimiter, ResultSet, StrangerThrottle
from bot.settings import Settings
from engine import Engine

ENGINE_KEY = "engine"  # bot_data key of the open Engine (bot/web.py reads it for /healthz)
SERVICES_KEY = "services"
RESULTS_TTL_SECONDS = 3600  # the More button works for an hour after a search
MAX_RESULT_SETS = 50  # per user: result lists kept for their More buttons
MAX_PENDING_PHOTOS = 8  # per user: photos waiting for a face choice (each up to 20 MB); never another user's
CONFIRM_TTL_SECONDS = 300  # a Confirm button of /forget or a self-revoke works for 5 minutes
MAX_SEEN_LANGUAGES = 10_000  # Telegram language codes of recent senders, kept in memory for the welcome


@dataclass(frozen=True, slots=True)
class Account:
    """The whitelisted account behind an update, read afresh for every update (so /revoke is immediate)."""

    user_id: int
    role: str
    active_case: str | None
    bootstrap: bool  # listed in SIGHTLINE_ADMINS
    language: Language  # the one it chose with /language, else its Telegram app's, else the default

    @property
    def is_admin(self) -> bool:
        """Admins manage accounts and the gallery."""
        return self.role == "admin" or self.bootstrap

    @property
    def actor(self) -> str:
        """How the audit log names this account."""
        return f"tg:{self.user_id}"


@dataclass
class Services:
    """Settings and the short-lived, in-memory state the handlers share (one per Application)."""

    settings: Settings
    languages: Languages
    limiter: RateLimiter
    results: ExpiringStore[ResultSet]
    photos: ExpiringStore[PendingPhoto]
    confirmations: ExpiringStore[Confirmation]
    strangers: StrangerThrottle
    seen_languages: dict[int, str] = field(default_factory=dict)  # user id -> last Telegram language_code
    owns_engine: bool = False
    http: web.AppRunner | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def saw_language(self, user_id: int, code: str | None) -> None:
        """Remember the language of a sender's Telegram app (in memory, newest last, bounded).

        So the welcome an admin's /allow sends someone who was refused a minute ago is in their language.
        """
        if not code:
            return
        self.seen_languages.pop(user_id, None)
        self.seen_languages[user_id] = code
        while len(self.seen_languages) > MAX_SEEN_LANGUAGES:
            del self.seen_languages[next(iter(self.seen_languages))]

    @classmethod
    def create(cls, settings: Settings) -> Services:
        """Fresh state for these settings; raises LanguageError when a configured language has no catalog."""
        return cls(
            settings=settings,
            languages=Languages.load(settings.language_tags),
            limiter=RateLimiter(settings.rate_limit_per_hour),
            results=ExpiringStore(RESULTS_TTL_SECONDS, MAX_RESULT_SETS),
            photos=ExpiringStore(settings.photo_ttl_seconds, MAX_PENDING_PHOTOS),
            confirmations=ExpiringStore(CONFIRM_TTL_SECONDS, 4),
            strangers=StrangerThrottle(settings.stranger_quiet_seconds, settings.stranger_replies_per_minute),
        )


class BotContext(CallbackContext[ExtBot[None], dict[Any, Any], dict[Any, Any], dict[Any, Any]]):
    """CallbackContext with typed access to the engine, the settings and the caller's account."""

    def __init__(self, application: Application[Any, Any, Any, Any, Any, Any], chat_id: int | None = None,
                 user_id: int | None = None) -> None:
        super().__init__(application, chat_id=chat_id, user_id=user_id)
        self._account: Account | None = None

    @property
    def engine(self) -> Engine:
        """The open engine."""
        engine = self.application.bot_data.get(ENGINE_KEY)
        if engine is None:
            raise RuntimeError("the engine is not open yet")
        return engine  # type: ignore[no-any-return]

    @property
    def services(self) -> Services:
        """Settings and shared in-memory state."""
        return self.application.bot_data[SERVICES_KEY]  # type: ignore[no-any-return]

    @property
    def settings(self) -> Settings:
        """The bot's settings."""
        return self.services.settings

    @property
    def metrics(self) -> Metrics:
        """The Prometheus metrics of this Application."""
        return Metrics.of(self.application)

    @property
    def account(self) -> Account:
        """The whitelisted account behind this update (set by the access gate before any handler runs)."""
        if self._account is None:
            raise RuntimeError("no account: the access gate did not run for this update")
        return self._account

    @account.setter
    def account(self, value: Account) -> None:
        self._account = value

    @property
    def t(self) -> Language:
        """The language to answer this update in: the account's, or (before the gate ran) the default."""
        return self._account.language if self._account is not None else self.services.languages.default
