"""Shared fixtures: the real face sets beside the project, and a small real gallery built once."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bot.cli import main as cli_main
from engine import Engine, EngineConfig
from engine import calibration as calib
from engine.config import DEFAULT_RECOGNIZER, default_model_dir
from engine.faces import file_sha256

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DEV = SHARED / "faces" / "dev"
CALIB = SHARED / "faces" / "calib"


def dev_identities() -> dict[str, list[Path]]:
    """Identity name -> its photos, sorted by number."""
    out = {}
    for d in sorted(p for p in DEV.iterdir() if p.is_dir()):
        out[d.name] = sorted(d.glob("*.jpg"), key=lambda p: int(p.stem))
    return out


# Settings every make_config() gets on top of its own; tests/test_engine_milvus.py points them at Milvus so the
# engine tests run again against a real Milvus server.
BACKEND: dict[str, object] = {}


def milvus_collection_for(data_dir: Path) -> str:
    """One Milvus collection per data directory, so tests sharing the server never share a gallery."""
    return "t_" + hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:20]


def make_config(data_dir: Path, **overrides: object) -> EngineConfig:
    """An engine configuration for tests: a temporary data dir, one worker thread per core."""
    backend = dict(BACKEND)
    if backend.get("index_backend") == "milvus":
        backend.setdefault("milvus_collection", milvus_collection_for(data_dir))
    return replace(EngineConfig(data_dir=data_dir, require_case=False), **{**backend, **overrides})  # type: ignore[arg-type]


def milvus_config(data_dir: Path, server: Any, **overrides: object) -> EngineConfig:
    """An engine configuration on the test Milvus server, with a collection of its own for `data_dir`."""
    values: dict[str, object] = {"index_backend": "milvus", "milvus_uri": server.uri,
                                 "milvus_collection": milvus_collection_for(data_dir)}
    return make_config(data_dir, **{**values, **overrides})


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One real Milvus standalone server (the PyPI `milvus` package) for the whole session, on 127.0.0.1.

    It binds every interface, so it only starts inside a private network namespace: `scripts/test` runs pytest
    in one (as root: `unshare -n`). Elsewhere the tests that need it skip, saying why; with
    SIGHTLINE_TEST_REQUIRE_MILVUS=1 (set by .ci/run) they fail instead, so CI cannot skip them silently.
    """
    from engine.milvus_server import LocalMilvus, in_private_netns

    required = os.environ.get("SIGHTLINE_TEST_REQUIRE_MILVUS") == "1"
    reason = None
    if not in_private_netns():
        reason = ("the Milvus server binds every network interface, so these tests run it only inside a private "
                  "network namespace: run the suite with scripts/test as root (it uses `unshare -n`)")
    else:
        try:
            import milvus  # noqa: F401
            import pymilvus  # noqa: F401
        except ImportError as exc:
            reason = f"the Milvus packages are not installed ({exc}): pip install -e '.[test]'"
    if reason:
        if required:
            pytest.fail(reason)
        pytest.skip(reason)
    server = LocalMilvus(tmp_path_factory.mktemp("milvus"))
    server.start()
    yield server
    server.stop(timeout=5)  # its state is thrown away: no need to wait for a graceful shutdown


async def build_gallery(data_dir: Path) -> None:
    """Enroll the first photo of every dev identity, labelled with the identity's name."""
    engine = await Engine.open(make_config(data_dir, index_backend="embedded"))
    try:
        for name, photos in dev_identities().items():
            await engine.enroll(
                photos[0].read_bytes(), source_url=f"https://gallery.example/{name}/1.jpg", subject=name, save=False
            )
    finally:
        await engine.close()


@pytest.fixture(scope="session")
def gallery_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding the dev gallery (first photo of each of the 28 identities); do not modify it."""
    if not DEV.is_dir():
        pytest.fail(f"the shared face set is missing: {DEV} (it lives beside the project root)")
    path = tmp_path_factory.mktemp("gallery")
    asyncio.run(build_gallery(path))
    return path


def shipped_calibration() -> calib.Calibration:
    """The calibration table shipped for the default recognizer (w600k_mbf.onnx); fails the test without one."""
    sha = file_sha256(default_model_dir() / DEFAULT_RECOGNIZER)
    t = calib.for_model(sha)
    assert t is not None, f"no calibration table engine/calibration/{sha}.json for the default model"
    return t


def run_calibrate(tmp_path: Path, name: str, identities: int, per_identity: int, *extra: str) -> calib.Calibration:
    """`sightline calibrate` on the first dev identities (loose target rates, FMR 0.1 and 0.05, that a few pairs
    can measure), written to tmp_path/name; the table it wrote, checked to be monotone."""
    out = tmp_path / name
    code = cli_main(["--data-dir", str(tmp_path / "unused"), "calibrate", str(DEV), "--output", str(out),
                     "--max-identities", str(identities), "--max-per-identity", str(per_identity),
                     "--possible-fmr", "0.1", "--strong-fmr", "0.05", "--no-progress", *extra])
    assert code == 0
    t = calib.Calibration.load(out)
    assert t.threshold_possible <= t.threshold_strong
    assert all(b <= a for a, b in zip(t.fmr, t.fmr[1:], strict=False))
    return t


@pytest.fixture
def gallery_copy(tmp_path: Path, gallery_dir: Path) -> Path:
    """A private copy of the dev gallery that a test may change."""
    dest = tmp_path / "data"
    shutil.copytree(gallery_dir, dest)
    return dest


# -- bot fixtures (tests/test_bot_*.py): the real Application over HTTP against tests/fakebotapi.py ------------
BOT_ADMIN = 1001  # the bootstrap admin (SIGHTLINE_ADMINS) of every bot the tests start
_bot_user_ids = itertools.count(50_001)


def new_user_id() -> int:
    """A Telegram user id no other bot test uses (they share one engine, so one users table)."""
    return next(_bot_user_ids)


@dataclass
class BotHarness:
    """A running bot (real PTB Application + real engine) and the fake Bot API it talks to."""

    fake: Any  # fakebotapi.FakeBotAPI
    app: Any  # telegram.ext.Application
    settings: Any  # bot.settings.Settings

    async def command(self, user_id: int, text: str, **wait: Any) -> Any:
        """Send a command (or any text) as `user_id` and return the bot's text reply to that chat."""
        self.fake.send_text(user_id, text)
        return await self.fake.wait_for("sendMessage", chat_id=user_id, **wait)

    async def allow(self, user_id: int, role: str = "officer", case: str | None = "CASE-1") -> None:
        """Whitelist `user_id` through the admin's /allow, and give them an active case."""
        reply = await self.command(BOT_ADMIN, f"/allow {user_id} {role}")
        assert f"User {user_id} may now use Sightline as {role}" in reply.text, reply.text
        await self.fake.wait_for("sendMessage", chat_id=user_id)  # the welcome, sent after the admin's reply
        if case:
            reply = await self.command(user_id, f"/case {case}")
            assert f"Active case: {case}" in reply.text, reply.text


@pytest.fixture(scope="session")
async def bot_engine(gallery_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Engine]:
    """One real engine on a private copy of the dev gallery, shared by the bot tests; searches need a case."""
    path = tmp_path_factory.mktemp("bot-gallery")
    shutil.copytree(gallery_dir, path, dirs_exist_ok=True)
    engine = await Engine.open(make_config(path, require_case=True))
    yield engine
    await engine.close()


@pytest.fixture
async def start_bot(bot_engine: Engine, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[BotHarness]]]:
    """Start a bot polling a fresh fake Bot API: `await start_bot(**settings_overrides, engine=...)`.

    Everything started is stopped after the test; an engine passed in is not closed.
    """
    from datetime import timedelta

    from fakebotapi import FakeBotAPI

    from bot.app import build_application, polling
    from bot.settings import Settings

    stack = contextlib.AsyncExitStack()

    async def start(**overrides: Any) -> BotHarness:
        fake = await FakeBotAPI().start()
        stack.push_async_callback(fake.stop)
        values: dict[str, Any] = {
            "telegram_token": fake.token, "telegram_api_url": fake.base_url, "telegram_file_url": fake.base_file_url,
            "admins": str(BOT_ADMIN), "http_port": 0, "data_dir": tmp_path / "unused", "require_case": True,
        }
        engine = overrides.pop("engine", bot_engine)
        settings = Settings(**{**values, **overrides})
        app = build_application(settings, engine=engine)
        await stack.enter_async_context(polling(app, poll_interval=0.0, timeout=timedelta(seconds=1)))
        return BotHarness(fake, app, settings)

    try:
        yield start
    finally:
        await stack.aclose()


@pytest.fixture
async def bot(start_bot: Callable[..., Awaitable[BotHarness]]) -> BotHarness:
    """A bot with default settings."""
    return await start_bot()


def index_copies(index: object, face_ids: list[int]) -> list[bytes]:
    """What the index keeps of each face: code and int8 vector (hamming) or the int8 vector (usearch)."""
    from engine.hamming import HammingIndex
    from engine.index import UsearchIndex

    if isinstance(index, HammingIndex):
        live = index._keys[: len(index)]
        rows = [int(np.flatnonzero(live == i)[0]) for i in face_ids]
        return [a[r].tobytes() for a in (index._codes, index._codes2, index._vecs) for r in rows if a.shape[1]]
    assert isinstance(index, UsearchIndex)
    return [index._index.get(i, dtype="i8").tobytes() for i in face_ids]
