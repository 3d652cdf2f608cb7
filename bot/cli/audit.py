"""Oversight commands: audit verify/export/head/tail and report. They need only the database file."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bot.cli import add_command, int_in, missing_gallery
from bot.i18n import ENGLISH, Language, LanguageError, Languages
from engine import AuditEntry, InvalidArgument, StorageError, fsmodes, labels
from engine.audit import HeadLog
from engine.config import EngineConfig
from engine.store import MetadataStore

EXPORT_FIELDS = ("seq", "ts", "actor", "action", "case", "details", "prev_hash", "hash")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `audit` and `report`."""
    p = sub.add_parser(
        "audit",
        help="verify, export or show the tamper-evident audit log",
        description="The audit log records every search, refusal, enrolment, erasure, purge and admin action. "
        "Entries are hash-chained: each entry's SHA-256 covers its content and the previous entry's hash, so "
        "editing, deleting or reordering an entry is detected by `audit verify`. Each new head is also appended "
        "to a file outside the database (SIGHTLINE_AUDIT_HEAD_FILE, default DATA_DIR/audit-head.log), which "
        "`audit verify` checks too: a truncated log or a lost -wal file is detected. Recording `audit head` "
        "elsewhere as well (a ticket, an email to the oversight body) guards against losing both.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    asub = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    v = add_command(asub, "verify", cmd_verify, help="check the whole chain; exit 1 and name the first broken entry",
                    description="Check every entry's hash and its link to the entry before, and the chain against the audit "
                    "head file (SIGHTLINE_AUDIT_HEAD_FILE, default DATA_DIR/audit-head.log): a changed, deleted or reordered "
                    "entry, or a log cut short, is found. Prints the head; exits 1 naming the first broken entry.")
    v.add_argument("--expect-head", help="also require the chain to end at this hash (from an earlier `audit head`)")
    e = add_command(asub, "export", cmd_export, help="export entries as JSON lines or CSV for an oversight body",
                    description="Write the audit entries (all, or those the filters select; filters combine) as JSON lines "
                    f"or CSV with the columns {', '.join(EXPORT_FIELDS)}, for an oversight body.")
    _filters(e)
    e.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="output format (default jsonl)")
    e.add_argument("--out", type=Path, help="write to this file instead of standard output")
    add_command(asub, "head", cmd_head, help="print the chain head (last entry's number and hash) to record elsewhere",
                description="Print the last entry's number and hash. Record it somewhere else too (a ticket, a letter to "
                "the oversight body): `audit verify --expect-head HASH` then shows that no entry up to it was changed.")
    t = add_command(asub, "tail", cmd_tail, help="show the last N entries", description="Show the last N audit entries.")
    t.add_argument("n", nargs="?", type=entry_count, default=20, help=f"how many, 0 to {MAX_TAIL:,} (default 20; -5 as for `tail` means 5)")

    r = add_command(
        sub, "report", cmd_report,
        help="write an oversight summary: searches per user and case, hit rates, erasures, chain head",
        description="A short Markdown summary for an oversight body over a period (default: the last 30 days).",
    )
    r.add_argument("--since", help="start (ISO date or datetime, UTC); default 30 days ago")
    r.add_argument("--until", help="end (exclusive; ISO date or datetime, UTC); default now")
    r.add_argument("--out", type=Path, help="write to this file instead of standard output")
    r.add_argument("--lang", default="en", help="language of the report: en (default) or one of SIGHTLINE_LANGUAGES, "
                   "e.g. fr, nl, de; numbers and dates follow its locale")


MAX_TAIL = 1_000_000_000  # entries `audit tail` shows at most (SQLite's LIMIT takes 64-bit numbers only)


def entry_count(text: str) -> int:
    """A number of entries for `audit tail`, 0 to MAX_TAIL: `-5`, as Unix `tail -5` is typed, means 5 (SQLite reads
    LIMIT -5 as no limit, which printed the whole log); past the range, a usage error that names it."""
    return int_in(0, MAX_TAIL)(text.strip().removeprefix("-"))


def report_language(args: argparse.Namespace) -> Language | None:
    """The language `--lang` asks for, among the configured ones (English always); None after saying why."""
    if args.lang.lower() in ("en", "english"):
        return ENGLISH
    try:
        languages = Languages.load(args.settings.language_tags)
    except LanguageError as exc:
        print(f"sightline: SIGHTLINE_LANGUAGES: {exc}", file=sys.stderr)
        return None
    language = languages.get(args.lang)
    if language is None:
        available = ", ".join(dict.fromkeys(["en", *(lang.code for lang in languages)]))
        print(f"sightline: no report language {args.lang!r}; available: {available}", file=sys.stderr)
    return language


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", help="entries at or after this time (ISO date or datetime, UTC)")
    p.add_argument("--until", help="entries before this time (ISO date or datetime, UTC)")
    p.add_argument("--actor", help="only this actor, e.g. tg:12345 or cli:alice")
    p.add_argument("--case", help="only this case reference")
    p.add_argument("--action", help="only this action, e.g. search, forget, refused")


def parse_time(value: str | None) -> str | None:
    """An ISO date/datetime as the UTC ISO string the log uses."""
    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidArgument(f"{value!r} is not an ISO date or datetime such as 2026-11-01 or 2026-11-01T12:00") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat(timespec="seconds")


async def open_store(args: argparse.Namespace) -> MetadataStore:
    """Open the database only (no models, no index): an auditor needs nothing else."""
    cfg: EngineConfig = args.settings.engine_config()
    if problem := missing_gallery(args):
        raise StorageError(problem)
    return await MetadataStore.open(cfg.db_path, create=False)


def head_log(args: argparse.Namespace) -> HeadLog:
    """The audit head file (and syslog target) of the settings."""
    cfg: EngineConfig = args.settings.engine_config()
    return HeadLog(cfg.audit_head_path)


async def cmd_verify(args: argparse.Namespace) -> int:
    """Verify the chain."""
    store = await open_store(args)
    try:
        check = await store.verify_audit(head_log(args))
        seq = await store.get_meta("audit_head_seq")
    finally:
        await store.close()
    if not check.ok:
        print(f"AUDIT CHAIN BROKEN at entry {check.first_bad_seq}: {check.problem}")
        print(f"({check.entries} entries read; last good hash {check.head})")
        return 1
    if args.expect_head and args.expect_head != check.head:
        print(f"AUDIT CHAIN DOES NOT END AT THE EXPECTED HEAD: it ends at entry {seq} with {check.head}")
        return 1
    print(f"audit chain OK: {check.entries} entries, head entry {seq} hash {check.head}")
    return 0


async def cmd_head(args: argparse.Namespace) -> int:
    """Print the head."""
    store = await open_store(args)
    try:
        head = await store.get_meta("audit_head")
        seq = await store.get_meta("audit_head_seq")
    finally:
        await store.close()
    print(f"{seq or 0} {head or '0' * 64}")
    return 0


def entry_dict(e: AuditEntry) -> dict[str, Any]:
    """An entry as the export's JSON object."""
    return {"seq": e.seq, "ts": e.ts, "actor": e.actor, "action": e.action, "case": e.case_ref,
            "details": e.details, "prev_hash": e.prev_hash, "hash": e.hash}


def _nfc(value: str | None) -> str | None:
    """A filter as the audit stores it (labels are NFC), however it was typed."""
    return labels.normalize(value) if value else value


async def _entries(args: argparse.Namespace, **extra: Any) -> list[AuditEntry]:
    store = await open_store(args)
    try:
        return await store.audit_entries(
            since=parse_time(getattr(args, "since", None)), until=parse_time(getattr(args, "until", None)),
            actor=_nfc(getattr(args, "actor", None)), case_ref=_nfc(getattr(args, "case", None)),
            action=getattr(args, "action", None), **extra,
        )
    finally:
        await store.close()


async def cmd_export(args: argparse.Namespace) -> int:
    """Export entries."""
    entries = await _entries(args)
    buf = io.StringIO()
    if args.format == "jsonl":
        for e in entries:
            buf.write(json.dumps(entry_dict(e), ensure_ascii=False, sort_keys=True) + "\n")
    else:
        w = csv.writer(buf)
        w.writerow(EXPORT_FIELDS)
        for e in entries:
            d = entry_dict(e)
            d["details"] = json.dumps(e.details, ensure_ascii=False, sort_keys=True)
            w.writerow([d[k] for k in EXPORT_FIELDS])
    if args.out:
        fsmodes.write_private_text(args.out, buf.getvalue())  # who searched what, for which case: owner only
        print(f"exported {len(entries)} entries to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(buf.getvalue())
    return 0


async def cmd_tail(args: argparse.Namespace) -> int:
    """Show the last entries."""
    store = await open_store(args)
    try:
        entries = await store.audit_entries(last=args.n)
    finally:
        await store.close()
    for e in entries:
        print(format_entry(e))
    return 0


def format_entry(e: AuditEntry) -> str:
    """One line per entry for people."""
    details = ", ".join(f"{k}={v}" for k, v in e.details.items() if k != "hits")
    if "hits" in e.details:
        hits = e.details["hits"]
        details += f", hits={len(hits) if isinstance(hits, list) else hits}"
    return f"#{e.seq} {e.ts} {e.actor} {e.action}" + (f" case={e.case_ref}" if e.case_ref else "") + f" {details}"


def _when(t: Language, iso: str) -> str:
    """An ISO time of the audit log, written the reader's way (UTC)."""
    try:
        return t.date_time(datetime.fromisoformat(iso).astimezone(UTC).replace(tzinfo=None))
    except ValueError:
        return iso


def build_report(
    entries: list[AuditEntry], since: str, until: str, chain_ok: bool, head: str, head_seq: str, t: Language = ENGLISH
) -> str:
    """The Markdown oversight summary, in the language of `t` (audit values - actors, actions, cases - as recorded)."""
    searches = [e for e in entries if e.action == "search"]
    per_user: dict[str, Counter[str]] = defaultdict(Counter)
    per_case: dict[str, Counter[str]] = defaultdict(Counter)
    for e in searches:
        hit = bool(e.details.get("hits"))
        for table, key in ((per_user, e.actor), (per_case, e.case_ref or t._("(none)"))):
            table[key]["searches"] += 1
            table[key]["with_hits"] += hit
            table[key]["no_face"] += e.details.get("faces") == 0
    actions = Counter(e.action for e in entries)
    # the bot audits a stranger's repeated refusals as one entry with their count
    refusals = sum(int(e.details.get("count", 1)) for e in entries if e.action == "refused")
    erasures = [e for e in entries if e.action in ("forget", "purge")]
    languages = Counter(str(e.details["lang"]) for e in entries if e.details.get("lang"))
    n = t.number
    lines = [
        "# " + t._("Sightline oversight report"),
        "",
        t._("Period: {since} to {until} (UTC). Audit chain: **{state}**, head entry {seq} `{head}`.").format(
            since=_when(t, since), until=_when(t, until), state=t._("verified") if chain_ok else t._("BROKEN"),
            seq=head_seq, head=head,
        ),
        "",
        t._("Searches: {searches}; with at least one match: {hits}; photos analysed awaiting a face choice: "
            "{detected}; refusals: {refusals}; enrolments: {enrolments}; erasures: {erasures}; purges: {purges}.").format(
            searches=n(len(searches)), hits=n(sum(1 for e in searches if e.details.get("hits"))),
            detected=n(actions.get("detect", 0)), refusals=n(refusals), enrolments=n(actions.get("enroll", 0)),
            erasures=n(actions.get("forget", 0)), purges=n(actions.get("purge", 0)),
        ),
    ]
    if languages:
        counts = ", ".join(f"{code} {n(count)}" for code, count in languages.most_common())
        lines += ["", t._("Answers per language: {counts}.").format(counts=counts)]
    columns = [t._("user"), t._("searches"), t._("with matches"), t._("hit rate"), t._("no face")]
    lines += [
        "",
        "## " + t._("Searches per user"),
        "",
        "| " + " | ".join(columns) + " |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, c in sorted(per_user.items(), key=lambda kv: -kv[1]["searches"]):
        rate = t.percent(c["with_hits"] / c["searches"])
        lines.append(f"| {key} | {n(c['searches'])} | {n(c['with_hits'])} | {rate} | {n(c['no_face'])} |")
    columns = [t._("case"), *columns[1:4]]
    lines += ["", "## " + t._("Searches per case"), "", "| " + " | ".join(columns) + " |", "|---|---:|---:|---:|"]
    for key, c in sorted(per_case.items(), key=lambda kv: -kv[1]["searches"]):
        lines.append(f"| {key} | {n(c['searches'])} | {n(c['with_hits'])} | {t.percent(c['with_hits'] / c['searches'])} |")
    lines += ["", "## " + t._("Erasures and purges"), ""]
    if not erasures:
        lines.append(t._("None in this period."))
    for e in erasures:
        d = e.details
        images = t.ngettext("{n} image", "{n} images", int(d.get("images", 0))).format(n=n(int(d.get("images", 0))))
        faces = t.ngettext("{n} face", "{n} faces", int(d.get("faces", 0))).format(n=n(int(d.get("faces", 0))))
        lines.append(f"- #{e.seq} {e.ts} {e.actor} {e.action}: {images}, {faces}"
                     + (f" ({d.get('by')} {d.get('value')!r})" if d.get("by") else ""))
    admin = [e for e in entries if e.action in ("allow", "revoke")]
    lines += ["", "## " + t._("Access changes"), ""]
    if not admin:
        lines.append(t._("None in this period."))
    for e in admin:
        user = t._("user {user_id}").format(user_id=e.details.get("user_id"))
        role = " " + t._("as {role}").format(role=e.details.get("role")) if e.action == "allow" else ""
        lines.append(f"- #{e.seq} {e.ts} {e.actor} {e.action} {user}{role}")
    return "\n".join(lines) + "\n"


async def cmd_report(args: argparse.Namespace) -> int:
    """Write the oversight report."""
    language = report_language(args)
    if language is None:
        return 2
    now = datetime.now(UTC)
    since = parse_time(args.since) or (now - timedelta(days=30)).isoformat(timespec="seconds")
    until = parse_time(args.until)
    store = await open_store(args)
    try:
        entries = await store.audit_entries(since=since, until=until)
        until = until or now.isoformat(timespec="seconds")
        check = await store.verify_audit(head_log(args))
        head_seq = await store.get_meta("audit_head_seq") or "0"
    finally:
        await store.close()
    text = build_report(entries, since, until, check.ok, check.head, head_seq, language)
    if args.out:
        fsmodes.write_private_text(args.out, text)
        print(f"report written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0 if check.ok else 1
