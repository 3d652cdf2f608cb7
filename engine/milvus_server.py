"""A local Milvus standalone server (the PyPI `milvus` package, Milvus 2.3) for trying and testing the Milvus backend.

The server binds every network interface on several ports (gRPC 19530, metrics 9091, etcd, its coordinators),
so run it only inside a private network namespace (`scripts/milvus` and `scripts/test` do: `unshare -n` or
`ip netns`, loopback up). Its whole state lives under `base_dir`: `data/` (segments, the message log, etcd),
`logs/`, `configs/milvus.yaml` and `bin/` (the unpacked executable, ~250 MB, reused between runs).

The configuration is the package's, changed where erasure needs it (see PRIVACY_CONFIG): a deleted face's
vector leaves the insert logs when its segment is compacted and the old files are garbage-collected, and
leaves the message log when its page expires; both take seconds here instead of the defaults' hours and days.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

logger = logging.getLogger(__name__)

# Milvus settings that make a deletion physical within seconds (defaults in brackets):
PRIVACY_CONFIG: dict[str, str] = {
    # the message log (rocksmq) keeps every insert message, vectors included, until its page expires
    "rocksmq.rocksmqPageSize": "4096",  # [64 MB] a page closes after 4 KB, so a page holds few messages
    "rocksmq.retentionTimeInMinutes": "0.1",  # [3 days] consumed pages expire after 6 s (flush persists first)
    "rocksmq.timtickerInterval": "2",  # [600 s] how often expiry is checked (the key is spelt so in Milvus)
    "rocksmq.compactionInterval": "10",  # [1 day] rocksdb compaction drops the deleted ranges from its files
    # insert logs: a segment with deletions is rewritten without them, the old files are removed soon after
    "dataCoord.compaction.single.ratio.threshold": "0.000001",  # [0.2] any deletion makes a segment compactable
    "dataCoord.gc.interval": "5",  # [3600 s] garbage collection of dropped segments' files
    "dataCoord.gc.dropTolerance": "1",  # [10800 s] how long a compacted-away segment's files are kept
    # growing (unflushed) segments are searched exactly, not through a coarse interim IVF index
    "queryNode.segcore.interimIndex.enableIndex": "false",
}


def set_yaml(text: str, dotted: str, value: str) -> str:
    """Set `a.b.c: value` in a block-style YAML text (2-space indents), adding missing keys under their parent."""
    parts = dotted.split(".")
    lines = text.split("\n")
    start, end, depth = 0, len(lines), 0  # the block we search in: lines[start:end] at indent 2*depth
    for i, key in enumerate(parts):
        indent = " " * (2 * depth)
        pattern = re.compile(rf"^{indent}{re.escape(key)}:(\s|$)")
        found = next((j for j in range(start, end) if pattern.match(lines[j])), None)
        last = i == len(parts) - 1
        if found is None:
            new = [" " * (2 * (depth + k)) + f"{p}:" for k, p in enumerate(parts[i:])]
            new[-1] += f" {value}"
            lines[start:start] = new
            return "\n".join(lines)
        if last:
            comment = lines[found].split("#", 1)[1] if "#" in lines[found] else ""
            lines[found] = f"{indent}{key}: {value}" + (f" # {comment.strip()}" if comment else "")
            return "\n".join(lines)
        # the child block: following lines indented deeper than this key
        child_end = found + 1
        while child_end < end and (not lines[child_end].strip() or lines[child_end].lstrip().startswith("#")
                                   or len(lines[child_end]) - len(lines[child_end].lstrip()) > 2 * depth):
            child_end += 1
        start, end, depth = found + 1, child_end, depth + 1
    return "\n".join(lines)


def binary_cache_dir() -> Path:
    """Where the unpacked server executable is kept between runs (it is ~250 MB; unpacking takes seconds)."""
    import milvus

    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "sightline" / f"milvus-{milvus.__version__}" / "bin"


def in_private_netns() -> bool:
    """True when this process sees no network interface but loopback (a private network namespace)."""
    try:
        names = {name for _, name in socket.if_nameindex()}
    except OSError:
        return False
    return names <= {"lo"}


class LocalMilvus:
    """One Milvus standalone process with its state under `base_dir`, listening on 127.0.0.1:`port`.

    Raises RuntimeError from `start()` when the server exits or is not healthy within `timeout` seconds.
    """

    def __init__(self, base_dir: Path, port: int = 19530, extra_config: dict[str, str] | None = None) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.port = port
        self.config = {**PRIVACY_CONFIG, **(extra_config or {})}
        self._proc: subprocess.Popen[bytes] | None = None
        self.health_port = 9091

    @property
    def uri(self) -> str:
        """The gRPC address clients connect to."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def storage_dir(self) -> Path:
        """Everything the server stores: segments, index files, the message log and etcd."""
        return self.base_dir / "data"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _prepare(self) -> Path:
        """Write the configuration and unpack (or link) the executable; return the executable's path."""
        from milvus import MilvusServerConfig, _initialize_data_files

        self.base_dir.mkdir(parents=True, exist_ok=True)
        cache = binary_cache_dir()
        bin_dir = self.base_dir / "bin"
        if not bin_dir.exists():
            cache.mkdir(parents=True, exist_ok=True)
            bin_dir.symlink_to(cache, target_is_directory=True)
        _initialize_data_files(str(self.base_dir))  # unpacks only what changed (md5 stamps)
        template = Path(MilvusServerConfig().template_file).read_text()
        for key, value in self.config.items():
            template = set_yaml(template, key, value)
        tmpl_path = self.base_dir / "milvus.yaml.template"
        tmpl_path.write_text(template)
        cfg = MilvusServerConfig(template=str(tmpl_path), data_dir=str(self.base_dir), proxy_port=self.port)
        cfg.glog_conf_file = str(Path(MilvusServerConfig().glog_conf_file))
        cfg.resolve()  # picks free ports for the internal services, writes configs/milvus.yaml
        return bin_dir / "milvus"

    def start(self, timeout: float = 180.0) -> str:
        """Start the server and wait until it is healthy; returns its URI."""
        exe = self._prepare()
        env = dict(os.environ)
        env.update(DEPLOY_MODE="STANDALONE", METRICS_PORT=str(self.health_port),
                   MILVUS_RUN_DIR=str(self.base_dir / "run"),
                   LD_LIBRARY_PATH=f"{exe.parent}:{os.environ.get('LD_LIBRARY_PATH', '')}")
        logs = self.base_dir / "logs"
        logs.mkdir(exist_ok=True)
        with open(logs / "milvus-stdout.log", "ab") as out, open(logs / "milvus-stderr.log", "ab") as err:
            self._proc = subprocess.Popen([str(exe), "run", "standalone"], cwd=self.base_dir, env=env,
                                          stdout=out, stderr=err, start_new_session=True)
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self._proc.poll() is not None:
                raise RuntimeError(f"milvus exited with code {self._proc.returncode}; see {logs}")
            if self.healthy():
                logger.info("milvus started in %.1f s at %s (data in %s)", time.monotonic() - started, self.uri,
                            self.storage_dir)
                return self.uri
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"milvus was not healthy within {timeout:.0f} s; see {logs}")

    def healthy(self) -> bool:
        """True when the server's health endpoint answers OK."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as resp:
                return b"OK" in resp.read()
        except OSError:
            return False

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `timeout` seconds)."""
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._proc = None

    def wipe(self) -> None:
        """Delete the server's state (not the cached executable). The server must be stopped."""
        if self._proc is not None:
            raise RuntimeError("stop the server first")
        shutil.rmtree(self.base_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m engine.milvus_server --base-dir DIR [--port P]`: run a server in the foreground until SIGTERM/SIGINT
    (scripts/milvus starts it so, inside its network namespace)."""
    import argparse
    import signal

    ap = argparse.ArgumentParser(description="Run a local Milvus standalone server in the foreground.")
    ap.add_argument("--base-dir", type=Path, required=True, help="the server's state (data, logs, configuration)")
    ap.add_argument("--port", type=int, default=19530)
    ap.add_argument("--pid-file", type=Path, help="write this process's id here (removed when it stops)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not in_private_netns():
        logger.error("refusing to start: this process sees network interfaces other than loopback, and Milvus would "
                     "listen on all of them; start it with scripts/milvus (its own network namespace)")
        return 2
    server = LocalMilvus(args.base_dir, port=args.port)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.pid_file:
        args.pid_file.write_text(f"{os.getpid()}\n")
    server.start()
    print(f"ready {server.uri}", flush=True)  # noqa: T201 (scripts/milvus waits for this line)
    while not stopping and server._proc is not None and server._proc.poll() is None:
        time.sleep(0.5)
    code = server._proc.returncode if server._proc is not None and server._proc.poll() is not None else 0
    server.stop()
    if args.pid_file:
        args.pid_file.unlink(missing_ok=True)
    logger.info("milvus stopped")
    return 0 if stopping else (code or 1)


if __name__ == "__main__":
    raise SystemExit(main())
