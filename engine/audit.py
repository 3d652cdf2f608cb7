"""The audit log's hash chain: pure functions, so an auditor's check is easy to read and re-implement.

Each entry's hash is SHA-256 over the previous entry's hash and the entry's canonical JSON
(sorted keys, no spaces, UTF-8). Editing, deleting or reordering any entry breaks the chain at that
entry. When old entries are purged, the hash of the last purged entry is kept as the anchor that the
first kept entry must point to.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from .types import ChainCheck

GENESIS = "0" * 64


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
