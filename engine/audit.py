"""The audit log's hash chain: pure functions, so an auditor's check is easy to read and re-implement.

Each entry's hash is SHA-256 over the previous entry's hash and the entry's canonical JSON
(sorted keys, no spaces, UTF-8). Editing, deleting or reordering any entry breaks the chain at that
entry. When old entries are purged, the hash of the last purged entry is kept as the anchor that the
first kept entry must point to.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .types import ChainCheck

GENESIS = "0" * 64
logger = logging.getLogger(__name__)


def canonical(seq: int, ts: str, actor: str, action: str, case_ref: str | None, details: dict[str, Any]) -> str:
    """The exact text that is hashed for one entry."""
    body = {"seq": seq, "ts": ts, "actor": actor, "action": action, "case": case_ref, "details": details}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_hash(prev_hash: str, canonical_text: str) -> str:
    """SHA-256 of the previous hash and this entry's canonical text."""
    return hashlib.sha256((prev_hash + "\n" + canonical_text).encode("utf-8")).hexdigest()


def verify_rows(rows: Iterable[tuple[Any, ...]], anchor: str, anchor_seq: int) -> ChainCheck:
    """Check rows of (seq, ts, actor, action, case_ref, details_json, prev_hash, hash) in seq order."""
    prev = anchor
    expected_seq = anchor_seq + 1
    count = 0
    for seq, ts, actor, action, case_ref, details_json, prev_hash, stored_hash in rows:
        count += 1
        if seq != expected_seq:
            what = "missing" if seq > expected_seq else "out of order"
            return ChainCheck(False, count, prev, first_bad_seq=expected_seq, problem=f"entry {expected_seq} is {what}")
        if prev_hash != prev:
            return ChainCheck(False, count, prev, first_bad_seq=seq, problem=f"entry {seq} does not point to entry {seq - 1}")
        try:
            details = json.loads(details_json)
        except (TypeError, ValueError):
            return ChainCheck(False, count, prev, first_bad_seq=seq, problem=f"entry {seq} has unreadable details")
        recomputed = entry_hash(prev_hash, canonical(seq, ts, actor, action, case_ref, details))
        if recomputed != stored_hash:
            return ChainCheck(False, count, prev, first_bad_seq=seq, problem=f"entry {seq} was altered")
        prev = stored_hash
        expected_seq = seq + 1
    return ChainCheck(True, count, prev)


class HeadLog:
    """An append-only file of `seq hash` lines, one per audit entry, kept outside the database.

    Appended after each audit entry commits. `audit verify` checks the chain against it, so a truncated
    log or a lost `-wal` file shows without an auditor remembering a hash. Put it on another disk
    (SIGHTLINE_AUDIT_HEAD_FILE) and/or send each head to syslog (SIGHTLINE_AUDIT_HEAD_SYSLOG) so one
    failure cannot take both. Lines are written, not fsynced: as durable as the database's own commits
    (WAL with synchronous=NORMAL survives a process kill).
    """

    def __init__(self, path: Path, syslog_address: str | None = None) -> None:
        self.path = Path(path)
        self._syslog: logging.Logger | None = None
        if syslog_address:
            self._syslog = _syslog_logger(syslog_address)

    def append(self, seq: int, digest: str) -> None:
        """Record a new head; a failure is logged (the entry is already committed) and never raised."""
        line = f"{seq} {digest}\n"
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode("ascii"))
            finally:
                os.close(fd)
        except OSError as exc:
            logger.error("cannot append audit head %d to %s (%s): `audit verify` will not see it there",
                         seq, self.path, exc.strerror or exc)
        if self._syslog is not None:
            self._syslog.info("sightline audit head %d %s", seq, digest)

    def read(self) -> tuple[list[tuple[int, str]], int] | None:
        """The recorded (seq, hash) pairs and the number of unreadable lines; None when the file is missing.
        Raises OSError when it exists but cannot be read (a folder, no permission, an I/O error)."""
        try:
            text = self.path.read_bytes().decode("ascii", errors="replace")
        except FileNotFoundError:
            return None
        records, bad = [], 0
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit() and len(parts[1]) == 64:
                records.append((int(parts[0]), parts[1]))
            elif line.strip():
                bad += 1
        return records, bad


def _syslog_logger(address: str) -> logging.Logger:
    from logging.handlers import SysLogHandler

    host, _, port = address.rpartition(":")
    target: str | tuple[str, int] = (host, int(port)) if address.count(":") == 1 and port.isdigit() else address
    log = logging.getLogger("sightline.audit_head")
    if not log.handlers:
        handler = SysLogHandler(address=target)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False
        log.setLevel(logging.INFO)
    return log


def check_head_log(
    records: list[tuple[int, str]], chain: dict[int, str], anchor_seq: int, last_seq: int
) -> tuple[int, str] | None:
    """Compare the head file's records with the chain ({seq: hash} after the anchor): None when they agree,
    else (the first entry in doubt, what is wrong).

    Entries purged by retention (seq <= anchor_seq) are skipped. A record past the chain's end means entries
    were lost; a record whose hash differs means the log was rewritten from there on.
    """
    beyond = [seq for seq, _ in records if seq > last_seq]
    if beyond:
        return last_seq + 1, (f"the head file records entry {max(beyond)} but the log ends at entry {last_seq}: entries "
                f"{last_seq + 1}..{max(beyond)} were lost (a truncated log, a lost -wal file, or an older "
                "database put back)")
    for seq, digest in records:
        if seq > anchor_seq and chain.get(seq) != digest:
            return seq, f"entry {seq} is not the one the head file recorded: the log was rewritten from there on"
    return None
