"""Prometheus metrics of one running bot, on a registry of their own (served at /metrics by bot/web.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from engine import (
    CaseRequired,
    Engine,
    FaceIndexError,
    ImageRejected,
    InvalidArgument,
    NoFaceFound,
    SearchResult,
)
from engine.engine import backend_of
from engine.milvus_index import MilvusIndex

logger = logging.getLogger(__name__)

# Label values are a closed set, so a typo or an odd exception can't create unbounded series.
SEARCH_OUTCOMES = ("match", "no_match", "no_face", "rejected", "no_case", "invalid", "error")
REFUSAL_REASONS = ("not_allowed", "rate_limited", "no_case", "other")
ERROR_KINDS = ("unhandled", "engine", "telegram", "other")
WEBHOOK_RESULTS = ("accepted", "forbidden", "bad_request")
# A search is decode + detect + embed + index lookup on CPU: tens of ms to a few seconds.
SEARCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


def search_outcome(value: SearchResult | BaseException) -> str:
    """The outcome label of a finished search: its result, or the exception it raised."""
    if isinstance(value, SearchResult):
        return "match" if value.hits else "no_match"
    if isinstance(value, NoFaceFound):
        return "no_face"
    if isinstance(value, ImageRejected):
        return "rejected"
    if isinstance(value, CaseRequired):
        return "no_case"
    if isinstance(value, InvalidArgument | FaceIndexError):
        return "invalid"
    return "error"


def _closed(value: str, allowed: tuple[str, ...], fallback: str) -> str:
    if value in allowed:
        return value
    logger.debug("metric label %r is not one of %s; counted as %r", value, allowed, fallback)
    return fallback


class Metrics:
    """The bot's counters, histogram and gauges; one instance per Application (see `Metrics.of`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        PlatformCollector(registry=r)  # python_info
        self.searches = Counter("sightline_searches", "Searches run, by outcome.", ["outcome"], registry=r)
        self.search_seconds = Histogram(
            "sightline_search_duration_seconds", "Time from photo received to result (seconds).",
            buckets=SEARCH_BUCKETS, registry=r,
        )
        self.refusals = Counter("sightline_refusals", "Requests refused, by reason.", ["reason"], registry=r)
        self.errors = Counter("sightline_errors", "Errors reaching the error handler, by kind.", ["kind"], registry=r)
        self.webhook_updates = Counter(
            "sightline_webhook_updates", "Webhook deliveries, by result.", ["result"], registry=r
        )
        self.faces_indexed = Gauge("sightline_faces_indexed", "Faces in the search index (read at scrape).", registry=r)
        self._engine: Engine | None = None
        self.faces_indexed.set_function(self._faces)
        r.register(self)  # collect(): the index backend's series
        # Create every labelled series at zero so dashboards and alerts see them before the first event.
        for outcome in SEARCH_OUTCOMES:
            self.searches.labels(outcome)
        for reason in REFUSAL_REASONS:
            self.refusals.labels(reason)
        for kind in ERROR_KINDS:
            self.errors.labels(kind)
        for result in WEBHOOK_RESULTS:
            self.webhook_updates.labels(result)

    @classmethod
    def of(cls, application: Any) -> Metrics:
        """The Metrics of a PTB Application, kept in its bot_data under "metrics" (created on first use)."""
        metrics = application.bot_data.get("metrics")
        if metrics is None:
            metrics = cls()
            application.bot_data["metrics"] = metrics
        return metrics  # type: ignore[no-any-return]

    def bind_engine(self, engine: Engine | None) -> None:
        """Read the faces gauge from this engine at every scrape (None: report 0)."""
        self._engine = engine

    def _faces(self) -> float:
        engine = self._engine
        if engine is None:
            return 0.0
        index = engine.index
        n = index.cached_len() if isinstance(index, MilvusIndex) else len(index)  # never waits on a server in a scrape
        return float(n) if n >= 0 else float("nan")

    def collect(self) -> Iterator[Metric]:
        """The index backend and its lookups, read from the bound engine's index at scrape time."""
        engine = self._engine
        if engine is None:
            return
        backend = [backend_of(engine.index)]
        info = GaugeMetricFamily("sightline_index_backend", "The index backend in use (1 for the one in use).",
                                 labels=["backend"])
        info.add_metric(backend, 1.0)
        yield info
        count = CounterMetricFamily("sightline_index_lookups", "Index searches this process made.", labels=["backend"])
        count.add_metric(backend, float(engine.lookups))
        yield count
        total = CounterMetricFamily("sightline_index_lookup_seconds", "Seconds this process spent in index searches "
                                    "(divide by sightline_index_lookups_total for the mean latency).", labels=["backend"])
        total.add_metric(backend, float(engine.lookup_seconds))
        yield total
        last = engine.lookup_last_ms
        gauge = GaugeMetricFamily("sightline_index_last_lookup_seconds", "Duration of the last index search.",
                                  labels=["backend"])
        gauge.add_metric(backend, last / 1000 if last is not None else float("nan"))
        yield gauge

    # -- what handlers call ------------------------------------------------------------------------
    def observe_search(self, outcome: str, seconds: float) -> None:
        """Count one finished search and its duration; `outcome` is one of SEARCH_OUTCOMES."""
        self.searches.labels(_closed(outcome, SEARCH_OUTCOMES, "error")).inc()
        self.search_seconds.observe(max(0.0, seconds))

    def refused(self, reason: str = "other") -> None:
        """Count a refused request; `reason` is one of REFUSAL_REASONS."""
        self.refusals.labels(_closed(reason, REFUSAL_REASONS, "other")).inc()

    def error(self, kind: str = "unhandled") -> None:
        """Count an error; `kind` is one of ERROR_KINDS."""
        self.errors.labels(_closed(kind, ERROR_KINDS, "other")).inc()

    def webhook(self, result: str) -> None:
        """Count a webhook delivery (accepted, forbidden or bad_request)."""
        self.webhook_updates.labels(_closed(result, WEBHOOK_RESULTS, "bad_request")).inc()

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)
