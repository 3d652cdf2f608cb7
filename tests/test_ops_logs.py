"""Logs: one line per event (text or JSON), never the token, never photo bytes."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from test_ops_support import TOKEN

from bot.logs import redact_also, setup_logging

SECRET_PART = TOKEN.split(":")[1]


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Put the root logger back as pytest had it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def emit(fmt: str) -> None:
    setup_logging("INFO", fmt)
    log = logging.getLogger("sightline.test")
    log.info("GET https://api.telegram.org/bot%s/getMe", TOKEN)
    log.info("token in the message itself: " + TOKEN)
    try:
        raise RuntimeError(f"Client error '404 Not Found' for url 'https://api.telegram.org/bot{TOKEN}/getFile'")
    except RuntimeError:
        log.exception("download failed")
    log.info("photo %s received", b"\xff\xd8\xff\xe0" + bytes(5000))


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_token_and_photo_bytes_never_reach_the_log(
    fmt: str, root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    emit(fmt)
    err = capsys.readouterr().err
    assert TOKEN not in err and SECRET_PART not in err
    assert err.count("<token>") == 3
    assert "<5004 bytes>" in err and "\\xff\\xd8" not in err
    if fmt == "json":
        events = [json.loads(line) for line in err.splitlines()]  # one JSON object per line
        assert len(events) == 4
        assert events[2]["level"] == "ERROR" and "RuntimeError" in events[2]["exc"]
        assert "<token>" in events[2]["exc"]


def test_configured_secrets_are_masked_whatever_their_shape(
    root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    redact_also("odd-shaped-local-token", None, "")
    setup_logging("INFO", "text")
    logging.getLogger("sightline.test").warning("calling http://localhost:8081/botodd-shaped-local-token/getMe")
    err = capsys.readouterr().err
    assert "odd-shaped-local-token" not in err and "<secret>" in err
