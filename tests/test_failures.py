"""Failures end cleanly (issue 11, items 4 and 6): one line, a non-zero exit, never a hang, nothing half-done.

These run the real `sightline` console script in a subprocess: a thread left running (the database
connection's) would keep it from exiting, which an in-process call cannot show. The full-disk tests mount a
real, small tmpfs and so need root (CI runs as root).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_ops_support import FACES, QUERY, REPO, RunningBot, cli, gallery_copy

SIGHTLINE = Path(sys.executable).with_name("sightline")
TIMEOUT_S = 240  # far beyond any of these commands; reaching it means a hang
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs to fill the disk needs root")


def run(*args: str, stdin: int | None = subprocess.DEVNULL, **env: str) -> subprocess.CompletedProcess[str]:
    """`sightline ARGS` as a separate process; fails the test if it does not end in time."""
    return subprocess.run(
        [str(SIGHTLINE), *args], cwd=REPO, stdin=stdin, capture_output=True, text=True, timeout=TIMEOUT_S,
        env={**os.environ, "PYTHONPATH": str(REPO), "SIGHTLINE_INFERENCE_THREADS": "1", "SIGHTLINE_WORKERS": "1", **env},
    )


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


@contextlib.contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of `size` mounted at `where`."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path, leave: int = 0) -> None:
    """Fill a disk up, leaving about `leave` bytes."""
    free = shutil.disk_usage(disk).free - leave
    with open(disk / "filler", "wb") as fh, contextlib.suppress(OSError):
        while free > 0:
            fh.write(b"\0" * min(free, 1 << 16))
            free -= 1 << 16


def test_damaged_database_page_ends_with_one_line(tmp_path: Path) -> None:
    data = gallery_copy(tmp_path / "data")
    db = data / "sightline.sqlite3"
    raw = bytearray(db.read_bytes())
    raw[8192:40960] = b"\xff" * (40960 - 8192)  # pages 3-10: the faces' b-tree, past the schema page
    db.write_bytes(bytes(raw))
    proc = run("--data-dir", str(data), "stats")
    assert proc.returncode == 1, proc.stderr
    line = one_line(proc.stderr)
    assert line.startswith("sightline: error:") and "damaged" in line and "restore a backup" in line, line


@needs_root
def test_full_disk_during_index_says_so_and_leaves_nothing_half_done(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "400k") as disk:
        data = disk / "data"
        proc = run("--data-dir", str(data), "index", str(FACES), "--subject-from-folder", "--no-progress",
                   "--concurrency", "2")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        line = one_line(proc.stderr)
        assert line.startswith(f"sightline: error: disk full at {data} (") and "MB free)" in line, line
        assert not [p.name for p in data.iterdir() if p.name.endswith(".tmp")]  # no partial index file
        conn = sqlite3.connect(data / "sightline.sqlite3")
        try:
            assert conn.execute("PRAGMA quick_check").fetchone() == ("ok",)
            images = conn.execute("SELECT count(*) FROM images").fetchone()[0]
        finally:
            conn.close()
        assert 0 < images < 174
        # Given room again, the gallery opens, is consistent, and the run resumes.
        (disk / "data" / "ingest-report.csv").unlink(missing_ok=True)
    shutil.rmtree(tmp_path / "disk", ignore_errors=True)


@needs_root
def test_full_disk_during_an_index_rebuild_at_start(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "2m") as disk:
        data = disk / "data"
        shutil.copytree(gallery_copy(tmp_path / "src"), data)
        (data / "gallery.usearch").unlink()  # the engine rebuilds it at start, and must save it
        fill(disk)
        proc = run("--data-dir", str(data), "stats")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert one_line(proc.stderr).startswith(f"sightline: error: disk full at {data} (0 MB free)")
        assert not (data / "gallery.usearch").exists() and not list(data.glob("*.tmp"))
        (disk / "filler").unlink()
        proc = run("--data-dir", str(data), "stats")
        assert proc.returncode == 0 and "faces           3" in proc.stdout, proc.stderr


@needs_root
def test_full_disk_during_backup_leaves_no_partial_folder(tmp_path: Path) -> None:
    data = gallery_copy(tmp_path / "data")
    with small_disk(tmp_path / "disk", "64k") as disk:
        proc = run("--data-dir", str(data), "backup", str(disk / "bk"))
        assert proc.returncode == 1, proc.stdout + proc.stderr
        line = one_line(proc.stderr)
        assert f"disk full at {disk}" in line and "nothing was backed up" in line, line
        assert list(disk.iterdir()) == []


def test_backup_killed_outright_is_cleaned_up_by_the_next(tmp_path: Path) -> None:
    data = gallery_copy(tmp_path / "data")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    left = tmp_path / "backups" / f".sightline-backup-monday.partial-{gone.pid}"  # what SIGKILL leaves behind
    left.mkdir(parents=True)
    (left / "sightline.sqlite3").write_bytes(b"biometric data")
    proc = run("--data-dir", str(data), "backup", str(tmp_path / "backups" / "tuesday"))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "backups").iterdir()) == ["tuesday"]


@pytest.mark.parametrize(
    "command",
    [["stats"], ["search", str(QUERY), "--case", "C-1"], ["forget", "--subject", "x", "--yes"], ["audit", "verify"],
     ["audit", "tail"], ["report"], ["purge"]],
)
def test_read_only_commands_never_create_a_gallery(tmp_path: Path, command: list[str]) -> None:
    nowhere = tmp_path / "nowhere"
    code, out, err = cli("--data-dir", str(nowhere), *command)
    assert code == 1, out + err
    assert f"no gallery at {nowhere}" in err and "given by --data-dir" in err, err
    assert "SIGHTLINE_DATA_DIR" in err and "Nothing was created" in err
    assert not nowhere.exists()


def test_no_gallery_message_names_the_environment_or_the_default(tmp_path: Path) -> None:
    proc = run("stats", SIGHTLINE_DATA_DIR=str(tmp_path / "env-dir"))
    assert proc.returncode == 1 and f"no gallery at {tmp_path / 'env-dir'} (from SIGHTLINE_DATA_DIR" in proc.stderr
    env = {k: v for k, v in os.environ.items() if k != "SIGHTLINE_DATA_DIR"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([str(SIGHTLINE), "audit", "verify"], cwd=elsewhere, capture_output=True, text=True,
                          timeout=TIMEOUT_S, env={**env, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1 and f"the default index_data/ of the current folder {elsewhere}" in proc.stderr
    assert not (elsewhere / "index_data").exists()


def test_forget_without_a_terminal_needs_yes(tmp_path: Path) -> None:
    data = gallery_copy(tmp_path / "data")
    proc = run("--data-dir", str(data), "forget", "--subject", "Colin_Powell")
    assert proc.returncode == 2 and "pass --yes" in one_line(proc.stderr)
    conn = sqlite3.connect(data / "sightline.sqlite3")
    assert conn.execute("SELECT count(*) FROM images WHERE subject = 'Colin_Powell'").fetchone() == (1,)
    conn.close()
    proc = run("--data-dir", str(data), "forget", "--subject", "Colin_Powell", "--yes")
    assert proc.returncode == 0 and "erased 1 image(s)" in proc.stdout, proc.stderr


def test_sigterm_during_index_ends_cleanly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [str(SIGHTLINE), "--data-dir", str(data), "index", str(FACES), "--no-progress", "--concurrency", "2"],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "SIGHTLINE_INFERENCE_THREADS": "1", "SIGHTLINE_WORKERS": "1"},
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not _enrolled(data) and time.monotonic() < deadline:  # wait until it is writing
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert one_line(err) == "sightline: stopped by SIGTERM"
    assert not [p.name for p in data.iterdir() if p.name.endswith(".tmp")]
    proc2 = run("--data-dir", str(data), "stats")
    assert proc2.returncode == 0, proc2.stderr
    assert f"faces           {_enrolled(data)}" in proc2.stdout  # the saved index holds what was committed


def _enrolled(data: Path) -> int:
    """Faces committed so far (0 before the database exists)."""
    db = data / "sightline.sqlite3"
    if not db.is_file():
        return 0
    try:
        conn = sqlite3.connect(db, timeout=5)
        try:
            return int(conn.execute("SELECT count(*) FROM faces").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


@pytest.mark.parametrize("api", ["refused", "silent"])
def test_the_bot_fails_in_one_clear_line_when_the_bot_api_does_not_answer(tmp_path: Path, api: str) -> None:
    """`sightline run` with a token, against a Bot API address where nothing listens (refused) or where a server takes
    the connection and never answers (silent): it gives up within a minute, says so, and prints no traceback."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        if api == "silent":
            server.listen(16)  # the kernel completes the handshakes; nobody ever reads or answers
        else:
            server.close()  # nothing listens on the port: connections are refused
        started = time.monotonic()
        proc = run("--data-dir", str(tmp_path / "data"), "run", SIGHTLINE_TELEGRAM_TOKEN="123456:ABCdefGHIjklMNOpqrSTUvwxYZ012345",
                   SIGHTLINE_ADMINS="1", SIGHTLINE_TELEGRAM_API_URL=f"http://127.0.0.1:{port}/bot", SIGHTLINE_HTTP_PORT="0")
    assert time.monotonic() - started < 90, "it took too long to give up"
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "  File " not in proc.stderr, proc.stderr
    assert f"ERROR bot.app: cannot talk to Telegram at http://127.0.0.1:{port}/bot" in proc.stderr.splitlines()[-1], proc.stderr
    assert error_lines(proc.stderr) == [proc.stderr.splitlines()[-1]], proc.stderr  # PTB's "Aborting." line is not shown
    assert "123456:ABC" not in proc.stderr  # the token is never logged


def error_lines(stderr: str) -> list[str]:
    """The log lines at ERROR or above (tracebacks would show as lines starting with spaces, checked apart)."""
    return [line for line in stderr.splitlines() if " ERROR " in line or " CRITICAL " in line]


async def test_a_refused_token_is_one_line_without_the_token(tmp_path: Path) -> None:
    from fakebotapi import FakeBotAPI

    fake = await FakeBotAPI().start()  # it knows another token: every call answers 401
    token = "123456:ABCdefGHIjklMNOpqrSTUvwxYZ012345"
    try:
        proc = await asyncio.to_thread(run, "--data-dir", str(tmp_path / "data"), "run", SIGHTLINE_TELEGRAM_TOKEN=token,
                                       SIGHTLINE_ADMINS="1", SIGHTLINE_TELEGRAM_API_URL=fake.base_url, SIGHTLINE_HTTP_PORT="0")
    finally:
        await fake.stop()
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "ABCdef" not in proc.stderr, proc.stderr
    assert error_lines(proc.stderr) == [proc.stderr.splitlines()[-1]], proc.stderr  # PTB's own give-up line is not shown
    assert "ERROR bot.app: Telegram rejected the bot token" in proc.stderr.splitlines()[-1]


async def test_a_bot_api_that_goes_away_while_running_is_one_warning_a_poll(tmp_path: Path) -> None:
    """The Bot API stops answering under a running bot: each failed poll is one warning line (no traceback, no token),
    and the bot still stops cleanly on SIGINT, saying in one line that it could not mark the last updates read."""
    from fakebotapi import FakeBotAPI

    fake = await FakeBotAPI(token="123456:ABCdefGHIjklMNOpqrSTUvwxYZ012345").start()
    async with RunningBot(fake, tmp_path / "data") as bot:
        await bot.until("Application started", TIMEOUT_S)
        await fake.stop()  # Telegram goes away: getUpdates is refused from now on
        await bot.until("cannot fetch updates from Telegram", 60)
        await bot.until("cannot fetch updates from Telegram (NetworkError", 60)
        assert bot.proc is not None
        bot.proc.send_signal(signal.SIGINT)
        await bot.rest(90)
        assert await bot.proc.wait() == 0, bot.stderr
    lines, stderr = bot.lines, bot.stderr
    polls = [line for line in lines if "cannot fetch updates from Telegram" in line]
    assert len(polls) >= 1 and all(" WARNING bot.handlers.errors: " in line for line in polls), stderr
    assert "Traceback" not in stderr and "  File " not in stderr and "ABCdef" not in stderr, stderr
    assert error_lines(stderr) == [], stderr
    assert any("could not mark the last updates read while stopping (NetworkError" in line for line in lines), stderr


async def test_a_running_bot_fed_updates_it_cannot_read_pauses_and_never_logs_them(tmp_path: Path) -> None:
    """`sightline run` while the Bot API answers getUpdates with JSON that is not updates: PTB polled again at once
    (~190 times a second) and logged each answer whole, messages and names included, as CRITICAL with a traceback;
    now polls pause (1 s growing to 30 s), each is one warning, and the answer is never logged."""
    from fakebotapi import FakeBotAPI

    fake = await FakeBotAPI(token="123456:ABCdefGHIjklMNOpqrSTUvwxYZ012345").start()
    try:
        async with RunningBot(fake, tmp_path / "data") as bot:
            await bot.until("Application started", TIMEOUT_S)
            fake.garbled_updates = b'{"ok": true, "result": [{"update_id": "x", "message": {"text": "Ada Lovelace"}}]}'
            polls = fake.polls
            await asyncio.sleep(6)
            bad = fake.polls - polls
            assert bot.proc is not None
            bot.proc.send_signal(signal.SIGINT)
            await bot.rest(90)
            assert await bot.proc.wait() == 0, bot.stderr
    finally:
        await fake.stop()
    lines, stderr = bot.lines, bot.stderr
    assert 1 <= bad <= 7, (bad, stderr)  # pauses of 1, 1.5, 2.25 s ...; before: over a thousand
    failed = [line for line in lines if "cannot fetch updates from Telegram (UnreadableUpdates" in line]
    assert 1 <= len(failed) <= bad and all(" WARNING bot.handlers.errors: " in line for line in failed), stderr
    assert "Ada Lovelace" not in stderr and "Traceback" not in stderr and "  File " not in stderr, stderr
    assert error_lines(stderr) == [], stderr


@pytest.mark.parametrize("body", [b"<html><body>502 Bad Gateway: proxy says no</body></html>", b"\x00\xff\xfe garbage \x89PNG"])
def test_a_bot_api_answering_something_else_than_json_is_one_line(tmp_path: Path, body: bytes) -> None:
    """A proxy's error page or binary garbage where the Bot API should be: PTB logged every attempt as an ERROR with a
    traceback and the raw body (found by a hostile tester); now one warning for the kind, then our one give-up line."""
    import http.server
    import threading

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(500)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = run("--data-dir", str(tmp_path / "data"), "run", SIGHTLINE_TELEGRAM_TOKEN="123456:ABCdefGHIjklMNOpqrSTUvwxYZ012345",
                   SIGHTLINE_ADMINS="1", SIGHTLINE_TELEGRAM_API_URL=f"http://127.0.0.1:{server.server_address[1]}/bot",
                   SIGHTLINE_HTTP_PORT="0")
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode in (1, 2), proc.stderr
    assert "Traceback" not in proc.stderr and "  File " not in proc.stderr, proc.stderr
    *before, last = proc.stderr.splitlines()
    assert not any("proxy says no" in line or "garbage" in line for line in before), proc.stderr  # the body, only cut short
    assert len(last) < 500, last  # in the give-up line, escaped (PTB's error repeats it)
    assert error_lines(proc.stderr) == [proc.stderr.splitlines()[-1]], proc.stderr
    assert len([line for line in proc.stderr.splitlines() if "is not JSON" in line]) == 1, proc.stderr
    assert "123456:ABC" not in proc.stderr
