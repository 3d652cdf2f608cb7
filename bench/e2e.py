"""Photo sent -> answer received, through the real bot, the real engine and a fake Bot API on 127.0.0.1.

The gallery holds N synthetic face-like embeddings (drawn like bench/search.py's, from the mean and
covariance of real calib embeddings) plus the dev set's real faces (the first photo of each of the 28
identities). Officers send the other dev photos, as Telegram delivers them (<= 1280 px), and we time
from the update being queued to the bot's reply arriving at the fake API — download, decode, detect,
embed, index search, exact re-scoring, audit write, picture rendering and upload included.

It measures, in one run:
  * start-up: Engine.open on the N-face gallery (models, database, saved index, consistency check);
  * sequential searches: p50/p99 over --searches photos from one officer;
  * --officers officers searching at once (each sends its next photo when the previous answer arrives);
  * rank-1: whether the right identity was named first among the N distractors;
  * a burst: --burst officers each send one photo at the same moment (fastest, p50 and max answer time:
    answered in arrival order, p50 is about half the max).

The fake Bot API is test harness, not product: it runs in a child process of its own (it decodes every photo
it serves and answers over aiohttp), so "process CPU per search" is the bot's and engine's alone; the fake's
own CPU is printed beside it. This process drives it over a local socket, one JSON line per search; answer
times are taken inside the fake, from the update being queued to the answer being recorded.

The synthetic gallery (database rows + saved index) is built once through the product's own code path
(rows written to SQLite, the index repaired from them by Engine.open) and cached under
~/.cache/sightline-bench/e2e-<N>/, since building 1 M faces takes a while on 2 cores.

    python bench/e2e.py --n 1000000          # the issue's target
    python bench/e2e.py --n 20000 --searches 20 --officers 5    # a quick smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import logging
import os
import re
import sqlite3
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE), str(ROOT / "tests")]

import common  # noqa: E402
import search as search_bench  # noqa: E402

from engine import Engine, EngineConfig  # noqa: E402

logger = logging.getLogger("bench.e2e")
DEV = ROOT.parent / "shared" / "faces" / "dev"
OFFICER_BASE = 700_000
# Long polling as the bot runs it (PTB's run_polling default): an idle bot asks Telegram once per 10 s. The fake's
# 0.25-s cap (short, so tests stop quickly) made the bot ask ~1 more time per search: harness, not product.
POLL_TIMEOUT_S = 10


def dev_sets() -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
    """(gallery, probes): the first photo of each identity, and all the others."""
    gallery, probes = [], []
    for d in sorted(p for p in DEV.iterdir() if p.is_dir()):
        photos = sorted(d.glob("*.jpg"), key=lambda p: int(p.stem))
        gallery.append((d.name, photos[0]))
        probes += [(d.name, p) for p in photos[1:]]
    return gallery, probes


def as_telegram_photo(path: Path) -> bytes:
    """What Telegram delivers for a photo message: at most 1280 px on the long side, JPEG."""
    img = Image.open(path).convert("RGB")
    img.thumbnail((1280, 1280))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=87)
    return buf.getvalue()


def thumbnail_blob() -> bytes:
    """A real-sized face thumbnail for synthetic rows (the bot shows it beside the query face)."""
    name, path = dev_sets()[0][0]
    img = Image.open(path).convert("RGB").resize((112, 112))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return buf.getvalue()


def insert_synthetic(db_path: Path, vectors: np.ndarray, batch: int = 20_000) -> None:
    """Write N synthetic gallery images (one face each) straight into SQLite, in large transactions."""
    thumb = thumbnail_blob()
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA synchronous=OFF")
    now = "2026-01-01T00:00:00+00:00"
    try:
        for start in range(0, len(vectors), batch):
            chunk = vectors[start : start + batch]
            db.execute("BEGIN")
            for i, vec in enumerate(chunk, start):
                sha = hashlib.sha256(f"synthetic-{i}".encode()).hexdigest()
                cur = db.execute(
                    "INSERT INTO images(sha256, source_url, subject, added_at, added_by, width, height)"
                    " VALUES (?, ?, NULL, ?, 'bench', 250, 250)",
                    (sha, f"https://archive.example/synthetic/{i}.jpg", now),
                )
                db.execute(
                    "INSERT INTO faces(image_id, number, x1, y1, x2, y2, det_score, width_px, blur, yaw, pitch,"
                    " quality_ok, is_primary, subject, embedding, thumbnail)"
                    " VALUES (?, 1, 70, 60, 180, 200, 0.8, 110, 200.0, 0.0, 0.0, 1, 1, NULL, ?, ?)",
                    (cur.lastrowid, vec.astype(np.float32).tobytes(), thumb),
                )
            db.execute("COMMIT")
            print(f"  synthetic rows {min(start + batch, len(vectors)):,}/{len(vectors):,}", file=sys.stderr, end="\r")
        print(file=sys.stderr)
    finally:
        db.close()


def synthetic_rows(db_path: Path) -> int:
    """How many synthetic gallery images a cached database holds."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM images WHERE added_by = 'bench'").fetchone()[0])
    except sqlite3.Error:
        return -1
    finally:
        db.close()


async def build_gallery(data_dir: Path, n: int, seed: int) -> dict[str, float]:
    """The dev gallery's real faces plus n synthetic ones; returns build timings (empty if cached)."""
    done = data_dir / "BUILT"
    if done.exists():
        return {}
    timings: dict[str, float] = {}
    db_path = data_dir / "sightline.sqlite3"
    if not (db_path.exists() and synthetic_rows(db_path) == n):  # else the rows are written: only the index is left
        await write_rows(data_dir, n, seed, timings)
    # Engine.open finds the saved index short of the new rows (or missing) and builds it from the database.
    with common.Stopwatch() as sw:
        engine = await Engine.open(EngineConfig(data_dir=data_dir, require_case=False))
        await engine.close()
    timings["index_build_s"] = sw.s
    done.write_text("ok\n")
    return timings


async def write_rows(data_dir: Path, n: int, seed: int, timings: dict[str, float]) -> None:
    """A fresh data dir: the dev gallery enrolled through the engine, then n synthetic rows written to SQLite."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for stale in data_dir.glob("*"):
        stale.unlink()
    engine = await Engine.open(EngineConfig(data_dir=data_dir, require_case=False))
    try:
        for name, path in dev_sets()[0]:
            await engine.enroll(path.read_bytes(), source_url=f"https://gallery.example/{name}/1.jpg", subject=name,
                                save=False)
    finally:
        await engine.close()
    real = common.real_embeddings()
    dist, _ = search_bench.fit_distribution(real, "between")
    with common.Stopwatch() as sw:
        data = search_bench.make_dataset(dist, n, 1, seed)
    timings["generate_s"] = sw.s
    with common.Stopwatch() as sw:
        insert_synthetic(data_dir / "sightline.sqlite3", data.gallery)
    timings["insert_s"] = sw.s


def probe_photos() -> list[tuple[str, bytes]]:
    """(identity, photo as Telegram delivers it) for every probe, in a fixed order."""
    return [(name, as_telegram_photo(p)) for name, p in dev_sets()[1]]


async def serve_fake_api() -> int:
    """The child process: the fake Bot API, plus a control socket on which the bench asks for searches.

    Prints one JSON line (token, URLs, control port) on stdout, then serves until the control connection
    closes. Requests: {"id", "op": "search", "uid", "photo"} -> {"id", "elapsed", "right"}; {"id", "op": "cpu"}
    -> {"id", "cpu"} (this process's CPU seconds).
    """
    import fakebotapi
    from fakebotapi import FakeBotAPI

    photos = probe_photos()
    for _, photo in photos:  # the small sizes Telegram's servers would make, made before the clock runs
        fakebotapi._thumbnail(photo)
    fake = await FakeBotAPI(max_poll_wait=POLL_TIMEOUT_S).start()
    closed = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    async def one_search(uid: int, name: str, photo: bytes) -> tuple[float, bool | None]:
        """Send a photo as `uid`; the seconds until the answer, and whether the right identity came first.

        The clock stops at the first answer (what the officer sees first). A long match list follows the
        picture as a second message, so rank-1 is read from whichever answer holds line "1. ". A photo with
        several faces is answered with the numbered faces to choose from: rank-1 is then None (not counted).
        """
        since = fake.mark()
        t0 = time.perf_counter()
        fake.send_photo(uid, photo)

        def answers() -> list[Any]:
            return [c for c in fake.calls[since:] if c.method in ("sendPhoto", "sendMessage")
                    and c.params.get("chat_id") in (uid, str(uid))]

        await fake.wait_until(answers, timeout=120)  # woken by each call the fake API records: no polling
        elapsed = time.perf_counter() - t0

        def first_line() -> str | None:
            for call in answers():
                if any(str(b.get("callback_data", "")).startswith("face:") for b in call.buttons):
                    return "?"  # which face? (several faces)
                line = next((ln for ln in call.text.splitlines() if ln.startswith("1. ")), None)
                if line is not None or call.text.startswith("No match"):
                    return line or ""
            return None

        first = await fake.wait_until(first_line, timeout=120)
        return elapsed, None if first == "?" else name in first

    async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def answer(request: dict[str, Any]) -> None:
            if request["op"] == "search":
                elapsed, right = await one_search(request["uid"], *photos[request["photo"] % len(photos)])
                reply: dict[str, Any] = {"id": request["id"], "elapsed": elapsed, "right": right}
            else:
                reply = {"id": request["id"], "cpu": time.process_time()}
            writer.write(json.dumps(reply).encode() + b"\n")

        try:
            while line := await reader.readline():
                task = asyncio.create_task(answer(json.loads(line)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            closed.set()

    server = await asyncio.start_server(control, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(json.dumps({"token": fake.token, "base_url": fake.base_url, "base_file_url": fake.base_file_url,
                                 "control_port": port, "photos": len(photos)}) + "\n")
    sys.stdout.flush()
    try:
        await closed.wait()
    finally:
        server.close()
        await fake.stop()
    return 0


def thread_cpu() -> dict[str, float]:
    """CPU seconds so far of this process's live threads, by kind: the event loop (bot, PTB, HTTP, aiosqlite's
    callbacks), the engine's workers (decode, detect, embed), asyncio.to_thread's (the result sheet), aiosqlite's
    connection thread (SQL), the index's warm-up thread, and the rest; "native" is the process's CPU outside
    Python's threads (onnxruntime's or numba's own, and threads that have ended)."""
    out: dict[str, float] = {"native": time.process_time()}
    for t in threading.enumerate():
        if t.ident is None:
            continue
        try:
            seconds = time.clock_gettime(time.pthread_getcpuclockid(t.ident))
        except (OSError, ProcessLookupError):  # ended meanwhile
            continue
        name = t.name
        if name == "MainThread":
            kind = "event loop"
        elif name.startswith("sightline-scan"):
            kind = "index scan"
        elif name.startswith("sightline"):
            kind = "engine workers"
        elif name.startswith("asyncio_"):
            kind = "to_thread"
        elif "_connection_worker_thread" in name:
            kind = "sqlite"
        else:
            kind = re.sub(r"[-_ ]?\d+", "", name) or "other"
        out[kind] = out.get(kind, 0.0) + seconds
        out["native"] -= seconds
    return out


class FakeProcess:
    """The fake Bot API's child process, seen from the bench: start it, ask it for searches, read its CPU."""

    def __init__(self) -> None:
        self.info: dict[str, Any] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = 0
        self._reader_task: asyncio.Task[None] | None = None

    async def start(self) -> FakeProcess:
        """Start the child and connect to its control socket."""
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).resolve()), "--serve-fake-api", stdout=asyncio.subprocess.PIPE,
        )
        assert self._proc.stdout is not None
        line = await asyncio.wait_for(self._proc.stdout.readline(), 120)
        if not line:
            raise RuntimeError("the fake Bot API process exited before it started")
        self.info = json.loads(line)
        reader, self._writer = await asyncio.open_connection("127.0.0.1", self.info["control_port"])
        self._reader_task = asyncio.create_task(self._read(reader))
        return self

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            reply = json.loads(line)
            self._pending.pop(reply["id"]).set_result(reply)

    async def _ask(self, **request: Any) -> dict[str, Any]:
        assert self._writer is not None
        self._ids += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._ids] = future
        self._writer.write(json.dumps({"id": self._ids, **request}).encode() + b"\n")
        return await asyncio.wait_for(future, 300)

    async def search(self, uid: int, photo: int) -> tuple[float, bool | None]:
        """Photo number `photo` sent by `uid`: seconds until the first answer, and whether rank 1 was right."""
        reply = await self._ask(op="search", uid=uid, photo=photo)
        return float(reply["elapsed"]), reply["right"]

    async def cpu(self) -> float:
        """The child's CPU seconds so far."""
        return float((await self._ask(op="cpu"))["cpu"])

    async def stop(self) -> None:
        """Close the control connection (the child then exits) and wait for the child."""
        if self._writer is not None:
            self._writer.close()
        if self._proc is not None:
            try:
                await asyncio.wait_for(self._proc.wait(), 10)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        if self._reader_task is not None:
            self._reader_task.cancel()


async def run(args: argparse.Namespace) -> int:
    """Build (or reuse) the gallery, start the bot against the fake API (own process), and time searches."""
    from bot.app import build_application, polling
    from bot.settings import Settings

    data_dir = Path(args.cache or common.cache_dir()) / f"e2e-{args.n}"
    built = await build_gallery(data_dir, args.n, args.seed)
    for k, v in built.items():
        print(f"built: {k} = {v:.1f}")

    rss0 = common.rss_bytes()
    with common.Stopwatch() as sw:
        engine = await Engine.open(EngineConfig(data_dir=data_dir, require_case=True))
    startup_s = sw.s
    gallery_faces = len(engine.index)
    print(f"start-up with {gallery_faces:,} faces: {startup_s:.2f} s, RSS +{(common.rss_bytes() - rss0) / 1e6:.0f} MB; "
          f"index {engine.index.ndim}-d, ef {engine.index.ef}")

    fake = await FakeProcess().start()
    n_photos = int(fake.info["photos"])
    settings = Settings(
        telegram_token=fake.info["token"], telegram_api_url=fake.info["base_url"],
        telegram_file_url=fake.info["base_file_url"],
        admins="1", http_port=0, data_dir=data_dir, rate_limit_per_hour=100_000, require_case=True,
    )
    officers = [OFFICER_BASE + i for i in range(max(args.officers, 1))]
    bursters = [OFFICER_BASE + 10_000 + i for i in range(args.burst)]
    for uid in officers + bursters:
        await engine.allow(uid, "officer", "bench", actor="bench")
        await engine.set_case(uid, "BENCH-1", actor="bench")
    app = build_application(settings, engine=engine)

    async def cpu_now() -> tuple[float, float]:
        """(this process's CPU seconds: bot and engine, the fake API's process's CPU seconds)."""
        return time.process_time(), await fake.cpu()

    def by_thread(since: dict[str, float], count: int) -> str:
        now = thread_cpu()
        spent = {k: (v - since.get(k, 0.0)) / max(count, 1) * 1e3 for k, v in now.items()}
        return ", ".join(f"{k} {v:.1f}" for k, v in sorted(spent.items(), key=lambda kv: -kv[1]) if v >= 0.05)

    def per_search(since: tuple[float, float], now: tuple[float, float], count: int) -> tuple[float, float]:
        return (now[0] - since[0]) / max(count, 1), (now[1] - since[1]) / max(count, 1)

    try:
        async with polling(app, poll_interval=0.0, timeout=timedelta(seconds=POLL_TIMEOUT_S)):
            await fake.search(officers[0], 0)  # warm-up: first inference allocates buffers
            seq, ranked = [], []
            threads0 = thread_cpu()
            cpu0 = await cpu_now()
            for i in range(args.searches):
                elapsed, right = await fake.search(officers[0], i)
                seq.append(elapsed)
                if right is not None:
                    ranked.append(right)
            cpu_seq, fake_seq = per_search(cpu0, await cpu_now(), len(seq))
            threads_seq = by_thread(threads0, len(seq))
            rank1 = sum(ranked) / max(len(ranked), 1)
            print(f"sequential: {len(seq)} searches, p50 {np.percentile(seq, 50) * 1e3:.0f} ms, "
                  f"p99 {np.percentile(seq, 99) * 1e3:.0f} ms, rank-1 {rank1:.3f} over the {len(ranked)} photos "
                  f"with one face ({len(seq) - len(ranked)} asked which face); process CPU {cpu_seq * 1e3:.0f} ms "
                  f"per search (bot and engine; the fake Bot API's own process {fake_seq * 1e3:.0f} ms more)")
            print(f"  by thread, ms per search: {threads_seq}")

            conc: list[float] = []

            async def officer(k: int, uid: int) -> None:
                for j in range(args.per_officer):
                    elapsed, _ = await fake.search(uid, (k * 7 + j) % n_photos)
                    conc.append(elapsed)

            cpu0 = await cpu_now()
            with common.Stopwatch() as wall:
                await asyncio.gather(*(officer(k, uid) for k, uid in enumerate(officers)))
            cpu_conc, fake_conc = per_search(cpu0, await cpu_now(), len(conc))
            print(f"{len(officers)} officers at once: {len(conc)} searches in {wall.s:.1f} s, "
                  f"p50 {np.percentile(conc, 50) * 1e3:.0f} ms, p99 {np.percentile(conc, 99) * 1e3:.0f} ms; process CPU "
                  f"{cpu_conc * 1e3:.0f} ms per search (fake Bot API {fake_conc * 1e3:.0f} ms more), so {len(officers)} "
                  f"searches at once need at least {len(officers) * cpu_conc / (os.cpu_count() or 1) * 1e3:.0f} ms "
                  f"on {os.cpu_count()} cores")

            burst: list[float] = []
            if bursters:  # N officers send one photo each at the same moment: answered in arrival order?
                await asyncio.sleep(1.0)
                cpu0 = await cpu_now()
                with common.Stopwatch() as burst_wall:
                    done = await asyncio.gather(*(fake.search(uid, k) for k, uid in enumerate(bursters)))
                burst = sorted(e for e, _ in done)
                cpu_burst, _ = per_search(cpu0, await cpu_now(), len(burst))
                print(f"burst of {len(burst)} at once: fastest {burst[0]:.2f} s, p50 {np.percentile(burst, 50):.2f} s, "
                      f"max {burst[-1]:.2f} s (p50/max {np.percentile(burst, 50) / burst[-1]:.2f}); all answered in "
                      f"{burst_wall.s:.1f} s, process CPU {cpu_burst * 1e3:.0f} ms per search")
    finally:
        await fake.stop()
        await engine.close()

    load = common.load_avg()
    print(common.kv_line({
        "n": gallery_faces, "ndim": engine.index.ndim, "ef": engine.index.ef, "startup_s": round(startup_s, 2),
        "p50_ms": round(float(np.percentile(seq, 50)) * 1e3, 1), "p99_ms": round(float(np.percentile(seq, 99)) * 1e3, 1),
        "rank1": round(rank1, 3), "asked_face": len(seq) - len(ranked), "officers": len(officers),
        "conc_p50_ms": round(float(np.percentile(conc, 50)) * 1e3, 1),
        "conc_p99_ms": round(float(np.percentile(conc, 99)) * 1e3, 1),
        "throughput_per_s": round(len(conc) / wall.s, 2), "cpu_ms_per_search": round(cpu_seq * 1e3, 1),
        "conc_cpu_ms_per_search": round(cpu_conc * 1e3, 1), "fake_api_cpu_ms_per_search": round(fake_seq * 1e3, 1),
        **({"burst": len(burst), "burst_min_s": round(burst[0], 2), "burst_p50_s": round(float(np.percentile(burst, 50)), 2),
            "burst_max_s": round(burst[-1], 2)} if burst else {}),
        "load1": round(load[0], 2),
    }))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="synthetic gallery faces (default 1,000,000)")
    p.add_argument("--searches", type=int, default=60, help="sequential searches (default 60)")
    p.add_argument("--officers", type=int, default=20, help="officers searching at once (default 20)")
    p.add_argument("--per-officer", type=int, default=5, help="searches per officer in the concurrent phase (default 5)")
    p.add_argument("--burst", type=int, default=50, help="then this many officers send one photo each at once (0: skip)")
    p.add_argument("--seed", type=int, default=7, help="random seed of the synthetic gallery")
    p.add_argument("--cache", type=Path, help="where built galleries are kept (default ~/.cache/sightline-bench)")
    p.add_argument("-v", "--verbose", action="store_true", help="log the bot's and engine's messages")
    p.add_argument("--serve-fake-api", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = p.parse_args(argv)
    if args.serve_fake_api:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        return asyncio.run(serve_fake_api())
    common.setup_logging(args.verbose)
    if not args.verbose:  # one line per search from the engine and the bot would drown the results
        for name in ("engine", "bot", "telegram", "httpx"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
