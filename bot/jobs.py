"""Background work of the running bot: the daily purge of expired gallery images and old audit entries, index
saves, and the audit of strangers' counted refusals."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from bot.context import Services
from bot.handlers.access import flush_strangers
from engine import Engine

logger = logging.getLogger(__name__)


def seconds_until(hour_utc: int, now: datetime) -> float:
    """Seconds from `now` (aware) to the next time the UTC clock shows hour_utc:00."""
    now = now.astimezone(UTC)
    target = now.replace(hour=hour_utc % 24, minute=0, second=0, microsecond=0)
    if target <= now:
        target += timedelta(days=1)
    return (target - now).total_seconds()


async def purge_daily(engine: Engine, hour_utc: int) -> None:
    """Every day at hour_utc:00 UTC, erase what has expired (audited as actor "system"); runs until cancelled.

    An asyncio task rather than PTB's JobQueue, so the bot needs no APScheduler.
    """
    while True:
        await asyncio.sleep(seconds_until(hour_utc, datetime.now(UTC)))
        try:
            erasure = await engine.purge_expired(actor="system")
        except Exception:  # a failed purge must not end the loop: log it and try again tomorrow
            logger.exception("daily purge failed; it runs again tomorrow")
            continue
        logger.info("daily purge: %d expired image(s), %d face(s) erased", erasure.images, erasure.faces)


async def save_index_periodically(engine: Engine, every_seconds: float = 60.0) -> None:
    """Write the index to disk when it changed, once a minute; runs until cancelled.

    Enrolments from the bot do not rewrite the whole index file each time (about 0.8 GB at 1 M faces):
    the database holds every committed face, and a crash before the next save is repaired at start-up.
    """
    while True:
        await asyncio.sleep(every_seconds)
        try:
            await engine.save_index()
        except Exception:
            logger.exception("saving the index failed; retrying in %.0f s", every_seconds)


async def audit_strangers_periodically(services: Services, engine: Engine) -> None:
    """Audit strangers' silently counted refusals once their quiet time is over; runs until cancelled."""
    every = max(1.0, min(60.0, services.strangers.quiet / 4))
    while True:
        await asyncio.sleep(every)
        try:
            await flush_strangers(services, engine)
        except Exception:
            logger.exception("auditing strangers' refusals failed; retrying in %.0f s", every)
