"""The HTTP server over real HTTP on 127.0.0.1: /healthz, /metrics and the Telegram webhook."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from telegram import Update
from telegram.ext import Application, ContextTypes, MessageHandler, filters
from test_ops_support import QUERY, TOKEN, FakeBotApi, engine_config, gallery_copy, settings

from bot.metrics import Metrics, search_outcome
from bot.web import SECRET_HEADER, run_webhook, start_http, stop_http, webhook_problems
from engine import Engine, ImageRejected, NoFaceFound
from engine.index import UsearchIndex
from engine.store import MetadataStore

SECRET = "s3cret_for-tests"
UPDATE = {
    "update_id": 1001,
    "message": {
        "message_id": 7, "date": 1700000000, "text": "/help",
        "chat": {"id": 42, "type": "private"}, "from": {"id": 42, "is_bot": False, "first_name": "Ann"},
    },
}


@pytest.fixture(scope="module")
async def engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Engine]:
    """The real engine on the three-photo gallery, shared by this module's tests."""
    data = gallery_copy(tmp_path_factory.mktemp("web") / "data")
    engine = await Engine.open(engine_config(data))
    yield engine
    await engine.close()


async def get(url: str) -> tuple[int, str, str]:
    """GET over real HTTP: (status, content type, body)."""
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


def app_without_network() -> Application:  # type: ignore[type-arg]
    """A real PTB Application with a dummy token, never initialised (no call leaves the machine)."""
    return Application.builder().token(TOKEN).updater(None).build()


# -- /healthz ----------------------------------------------------------------------------------------
async def test_healthz_ok_with_real_engine(engine: Engine) -> None:
    s = settings()
    runner = await start_http(s, engine)
    try:
        status, ctype, body = await get(f"http://127.0.0.1:{s.http_port}/healthz")
    finally:
        await stop_http(runner)
    assert status == 200, body
    assert ctype.startswith("application/json")
    report = json.loads(body)
    assert report["status"] == "ok"
    assert report["models"]["ok"] and "w600k_mbf" in report["models"]["name"]
    assert report["database"] == {"ok": True, "faces": 3}
    assert report["index"] == {"ok": True, "faces": 3}


async def test_healthz_503_when_index_disagrees_with_database(engine: Engine, tmp_path: Path) -> None:
    # Same models, a copy of the gallery's database, and an index that lost its vectors.
    data = gallery_copy(tmp_path / "data")
    config = engine_config(data)
    store = await MetadataStore.open(config.db_path)
    broken = Engine(engine.faces, UsearchIndex(config.index_path), store, config, None)
    s = settings()
    runner = await start_http(s, broken)
    try:
        status, _, body = await get(f"http://127.0.0.1:{s.http_port}/healthz")
    finally:
        await stop_http(runner)
        await broken.close()
    assert status == 503, body
    report = json.loads(body)
    assert report["status"] == "fail"
    assert report["database"] == {"ok": True, "faces": 3}
    assert report["index"]["ok"] is False and "index holds 0 faces, the database 3" in report["index"]["error"]


async def test_healthz_503_when_database_closed_or_engine_not_open(engine: Engine, tmp_path: Path) -> None:
    s = settings()
    runner = await start_http(s, None)
    try:
        status, _, body = await get(f"http://127.0.0.1:{s.http_port}/healthz")
    finally:
        await stop_http(runner)
    assert status == 503 and '"starting"' in body

    data = gallery_copy(tmp_path / "data")
    config = engine_config(data)
    store = await MetadataStore.open(config.db_path)
    closed = Engine(engine.faces, UsearchIndex(config.index_path), store, config, None)
    await store.close()
    runner = await start_http(s, closed)
    try:
        status, _, body = await get(f"http://127.0.0.1:{s.http_port}/healthz")
    finally:
        await stop_http(runner)
        closed._executor.shutdown()
    assert status == 503
    assert '"database": {"ok": false' in body


# -- /metrics ----------------------------------------------------------------------------------------
async def test_metrics_exposes_the_bots_metrics(engine: Engine) -> None:
    s = settings()
    metrics = Metrics()
    result = await engine.search(QUERY.read_bytes(), actor="test", case="T-1")
    metrics.observe_search(search_outcome(result), 0.3)
    metrics.observe_search(search_outcome(NoFaceFound("none")), 0.1)
    metrics.observe_search(search_outcome(ImageRejected("corrupt", "bad")), 0.01)
    metrics.observe_search("not-a-known-outcome", 0.2)  # counted as "error", not a new series
    metrics.refused("rate_limited")
    metrics.error()
    runner = await start_http(s, engine, metrics=metrics)
    try:
        status, ctype, body = await get(f"http://127.0.0.1:{s.http_port}/metrics")
    finally:
        await stop_http(runner)
    assert status == 200 and ctype.startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }
    assert samples[("sightline_searches_total", (("outcome", "match"),))] == 1
    assert samples[("sightline_searches_total", (("outcome", "no_face"),))] == 1
    assert samples[("sightline_searches_total", (("outcome", "rejected"),))] == 1
    assert samples[("sightline_searches_total", (("outcome", "error"),))] == 1
    assert samples[("sightline_searches_total", (("outcome", "no_match"),))] == 0  # pre-created at zero
    assert samples[("sightline_search_duration_seconds_count", ())] == 4
    assert samples[("sightline_search_duration_seconds_bucket", (("le", "0.25"),))] == 3  # 0.01, 0.1, 0.2
    assert samples[("sightline_faces_indexed", ())] == 3  # read from the engine at scrape time
    assert samples[("sightline_refusals_total", (("reason", "rate_limited"),))] == 1
    assert samples[("sightline_errors_total", (("kind", "unhandled"),))] == 1
    assert ("sightline_webhook_updates_total", (("result", "forbidden"),)) in samples
    assert any(name == "process_resident_memory_bytes" for name, _ in samples)


async def test_stats_probe_lookups_are_not_counted_as_searches(tmp_path: Path) -> None:
    """`stats` (the admin's /stats) times two probe lookups of its own when nothing has searched yet; /metrics counted
    them as index searches, so an idle bot seemed to be searching."""
    engine = await Engine.open(engine_config(gallery_copy(tmp_path / "data")))
    s = settings()
    runner = await start_http(s, engine, metrics=Metrics())

    async def lookups() -> tuple[float, float]:
        _, _, body = await get(f"http://127.0.0.1:{s.http_port}/metrics")
        samples = {sample.name: sample.value for family in text_string_to_metric_families(body) for sample in family.samples
                   if sample.labels.get("backend") == "embedded"}
        return samples["sightline_index_lookups_total"], samples["sightline_index_lookup_seconds_total"]

    try:
        stats = await engine.stats()
        assert stats.index_latency_ms is not None and stats.index_latency_ms > 0  # the probe still times a lookup
        assert await lookups() == (0.0, 0.0)
        await engine.search(QUERY.read_bytes(), actor="test", case="T-1")
        count, seconds = await lookups()
        assert count >= 1 and seconds > 0  # a real search is counted
        await engine.stats()
        assert (await lookups())[0] == count
    finally:
        await stop_http(runner)
        await engine.close()


def test_metrics_of_keeps_one_instance_per_application() -> None:
    a, b = app_without_network(), app_without_network()
    assert Metrics.of(a) is Metrics.of(a)
    assert Metrics.of(a) is not Metrics.of(b)  # separate registries: no "Duplicated timeseries" clash


# -- webhook -----------------------------------------------------------------------------------------
async def post(url: str, body: Any, secret: str | None) -> tuple[int, str]:
    """POST a JSON body, with Telegram's secret header when `secret` is given."""
    headers = {SECRET_HEADER: secret} if secret is not None else {}
    async with aiohttp.ClientSession() as session, session.post(url, json=body, headers=headers) as resp:
        return resp.status, await resp.text()


async def test_webhook_checks_the_secret_and_queues_the_update(engine: Engine) -> None:
    application = app_without_network()
    s = settings(mode="webhook", webhook_url="https://bot.example.test/tg/hook", webhook_secret=SECRET)
    runner = await start_http(s, engine, application)
    url = f"http://127.0.0.1:{s.http_port}/tg/hook"
    try:
        assert (await post(url, UPDATE, "wrong-secret"))[0] == 403
        assert (await post(url, UPDATE, None))[0] == 403
        assert (await post(url, UPDATE, SECRET[:-1]))[0] == 403  # a prefix is not the secret
        assert application.update_queue.empty()
        assert (await post(url, {"not": "an update"}, SECRET))[0] == 400
        status, _ = await post(url, UPDATE, SECRET)
        assert status == 200
        update = application.update_queue.get_nowait()
        assert isinstance(update, Update)
        assert update.update_id == 1001 and update.message is not None and update.message.text == "/help"
        assert application.update_queue.empty()
        _, _, metrics = await get(f"http://127.0.0.1:{s.http_port}/metrics")
    finally:
        await stop_http(runner)
    assert 'sightline_webhook_updates_total{result="forbidden"} 3.0' in metrics
    assert 'sightline_webhook_updates_total{result="accepted"} 1.0' in metrics
    assert 'sightline_webhook_updates_total{result="bad_request"} 1.0' in metrics


async def test_polling_mode_has_no_webhook_route(engine: Engine) -> None:
    application = app_without_network()
    s = settings(mode="polling", webhook_secret=SECRET)
    runner = await start_http(s, engine, application)
    try:
        status, _ = await post(f"http://127.0.0.1:{s.http_port}/", UPDATE, SECRET)
    finally:
        await stop_http(runner)
    assert status in (404, 405)
    assert application.update_queue.empty()
    assert await start_http(settings(http_port=0), engine) is None  # port 0: server off in polling mode


async def test_webhook_refuses_to_run_without_a_secret(engine: Engine) -> None:
    s = settings(mode="webhook", webhook_url="https://bot.example.test/hook")
    with pytest.raises(ValueError, match="secret"):
        await start_http(s, engine, app_without_network())


def test_webhook_settings_problems() -> None:
    assert webhook_problems(settings(mode="webhook", webhook_url="https://x.example/h", webhook_secret=SECRET)) == []
    problems = webhook_problems(settings(mode="webhook", webhook_url="http://x.example/h", webhook_secret="no spaces!"))
    assert any("https://" in p for p in problems) and any("SECRET" in p for p in problems)
    assert any("not set" in p for p in webhook_problems(settings(mode="webhook")))


@pytest.mark.parametrize("configured", [SECRET, ""], ids=["configured-secret", "random-secret"])
async def test_run_webhook_full_lifecycle_against_a_fake_bot_api(engine: Engine, configured: str) -> None:
    api = await FakeBotApi().start()
    seen: list[Update] = []
    lifecycle: list[str] = []

    async def post_init(app: Application) -> None:  # type: ignore[type-arg]
        app.bot_data["engine"] = engine
        lifecycle.append("post_init")

    async def post_shutdown(app: Application) -> None:  # type: ignore[type-arg]
        lifecycle.append("post_shutdown")

    async def on_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        seen.append(update)

    application = (
        Application.builder().token(TOKEN).base_url(api.base_url).updater(None)
        .post_init(post_init).post_shutdown(post_shutdown).build()
    )
    application.add_handler(MessageHandler(filters.ALL, on_message))
    s = settings(mode="webhook", webhook_url="https://bot.example.test/hook", webhook_secret=configured,
                 telegram_api_url=api.base_url)
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_webhook(s, application, allowed_updates=["message", "callback_query"], stop=stop, stop_signals=())
    )
    try:
        async with asyncio.timeout(10):
            while not api.called("setWebhook"):
                assert not task.done(), task.result()
                await asyncio.sleep(0.02)
        (params,) = api.called("setWebhook")
        secret = params["secret_token"]
        assert params["url"] == "https://bot.example.test/hook" and secret == (configured or secret)
        assert len(secret) >= 32 or configured  # an empty setting means "random", never "no secret"
        assert json.loads(params["allowed_updates"]) == ["message", "callback_query"]
        base = f"http://127.0.0.1:{s.http_port}"
        assert (await post(f"{base}/hook", UPDATE, "nope"))[0] == 403
        assert (await post(f"{base}/hook", UPDATE, secret))[0] == 200
        async with asyncio.timeout(5):
            while not seen:
                await asyncio.sleep(0.02)
        assert seen[0].update_id == 1001
        status, _, _ = await get(f"{base}/healthz")
        assert status == 200
    finally:
        stop.set()
        code = await asyncio.wait_for(task, 10)
        await api.stop()
    assert code == 0
    assert lifecycle == ["post_init", "post_shutdown"]
    assert len(seen) == 1  # the forged delivery never reached a handler
    assert [name for name, _ in api.calls][:1] == ["getMe"]  # initialize() asked who we are
    with pytest.raises(aiohttp.ClientConnectorError):  # the server is gone after shutdown
        await get(f"http://127.0.0.1:{s.http_port}/healthz")


async def test_run_webhook_refuses_bad_settings_without_touching_the_network() -> None:
    application = app_without_network()
    code = await run_webhook(settings(mode="webhook", webhook_url="http://plain.example/hook"), application,
                             stop_signals=())
    assert code == 2
