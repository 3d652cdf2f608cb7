"""Ingest manifests (CSV and JSONL) as operators really write them, with one error per bad row.

A CSV may start with a UTF-8 byte-order mark, separate its fields with `,` `;` TAB or `|` (the separator
that makes the header name known columns wins), and write header names in any case with spaces around
them (`path, Source URL, subject`). Unknown columns are an error that lists the known ones; a file that is
not UTF-8 is refused with the line of the first bad byte. A bad row (an empty `,,,,` row from a
spreadsheet, a bad date, a label we refuse) is reported with its line and the other rows go in.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine import InvalidArgument, labels
from engine.engine import normalize_expiry

DELIMITERS = (",", ";", "\t", "|")
DELIMITER_NAMES = {",": "commas", ";": "semicolons", "\t": "tabs", "|": "bars"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}


class ManifestError(Exception):
    """The manifest as a whole cannot be read (encoding, header); the message says where and how to fix it."""


@dataclass(frozen=True, slots=True)
class Item:
    """One file to ingest with its labels, already checked: a valid manifest row, or a file of a folder."""

    path: Path
    source_url: str
    subject: str | None = None
    expires_at: str | None = None
    notes: str | None = None
    line: int | None = None  # the manifest line it comes from


FIELDS = tuple(f.name for f in fields(Item) if f.name != "line")  # a manifest's columns: path, source_url, subject, ...


@dataclass(frozen=True, slots=True)
class RowError:
    """A manifest row that was not ingested, and why."""

    line: int
    path: str  # as written in the row ("" when there is none)
    message: str


def column_name(raw: str) -> str:
    """A header cell as a column name: stripped of spaces and quotes, lower case, spaces and hyphens as `_`."""
    name = raw.strip().strip("\"'").strip().lower()
    return re.sub(r"[\s\-]+", "_", name)


def decode_text(data: bytes, name: str) -> str:
    """The manifest's text: UTF-8 with or without a byte-order mark; anything else raises ManifestError."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ManifestError(f"{name}: the file is UTF-16 (line 1); save it as UTF-8 (in Excel: Save As > CSV UTF-8)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ManifestError(
            f"{name}: line {line} is not UTF-8 (byte 0x{data[exc.start]:02X}, perhaps Windows-1252 or Latin-1); "
            "save it as UTF-8 (in Excel: Save As > CSV UTF-8)"
        ) from None


def read_manifest(path: Path, now: datetime | None = None) -> tuple[list[Item], list[RowError]]:
    """The valid rows of a manifest and the errors of the others; raises ManifestError, OSError."""
    text = decode_text(path.read_bytes(), str(path))
    first = next((line.lstrip() for line in text.splitlines() if line.strip()), "")
    if not first:
        raise ManifestError(f"{path}: the manifest is empty")
    records = _jsonl(text) if path.suffix.lower() in JSONL_SUFFIXES or first.startswith("{") else _csv(text, path)
    rows: list[Item] = []
    errors: list[RowError] = []
    base = path.parent
    for line, record in records:
        if isinstance(record, RowError):
            errors.append(record)
            continue
        try:
            rows.append(validate(line, record, base, now or datetime.now(UTC)))
        except InvalidArgument as exc:
            raw = record.get("path")
            errors.append(RowError(line, raw if isinstance(raw, str) else "", str(exc)))
    return rows, errors


def _jsonl(text: str) -> list[tuple[int, dict[str, Any] | RowError]]:
    out: list[tuple[int, dict[str, Any] | RowError]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            out.append((n, RowError(n, "", f"not valid JSON ({exc.msg} at column {exc.colno})")))
            continue
        if not isinstance(obj, dict):
            out.append((n, RowError(n, "", f"the row is {_kind(obj)}, not an object such as {{\"path\": \"a.jpg\"}}")))
            continue
        unknown = sorted(k for k in obj if k not in FIELDS)
        if unknown:
            path = obj.get("path") if isinstance(obj.get("path"), str) else ""
            out.append((n, RowError(n, path, f"unknown key(s) {', '.join(map(repr, unknown))}; the known keys are {', '.join(FIELDS)}")))
            continue
        out.append((n, obj))
    return out


def sniff_header(header: str) -> tuple[str, list[str]]:
    """The separator and column names of a CSV header line: the separator under which most names are known."""
    best: tuple[int, int, str, list[str]] | None = None
    for d in DELIMITERS:
        names = [column_name(c) for c in next(csv.reader([header], delimiter=d), [])]
        score = (sum(n in FIELDS for n in names), len(names))
        if best is None or score > best[:2]:
            best = (*score, d, names)
    assert best is not None
    return best[2], best[3]


def _csv(text: str, path: Path) -> list[tuple[int, dict[str, Any] | RowError]]:
    lines = text.splitlines()
    header_at = next(i for i, line in enumerate(lines) if line.strip())
    delimiter, names = sniff_header(lines[header_at])
    named = [n for n in names if n]
    unknown = [n for n in named if n not in FIELDS]
    found = f"found {', '.join(repr(n) for n in names)} separated by {DELIMITER_NAMES[delimiter]}"
    if unknown:
        raise ManifestError(
            f"{path}:{header_at + 1}: unknown column(s) {', '.join(map(repr, unknown))} ({found}); "
            f"the known columns are {', '.join(FIELDS)}"
        )
    dupes = sorted({n for n in named if named.count(n) > 1})
    if dupes:
        raise ManifestError(f"{path}:{header_at + 1}: column(s) {', '.join(map(repr, dupes))} appear twice ({found})")
    if "path" not in named:
        raise ManifestError(f"{path}:{header_at + 1}: the header must name a 'path' column ({found}); "
                            f"the known columns are {', '.join(FIELDS)}")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    out: list[tuple[int, dict[str, Any] | RowError]] = []
    last = 0
    seen_header = False
    for cells in reader:
        line, last = last + 1, reader.line_num  # a quoted value may span lines: report where the row starts
        if not any(c.strip() for c in cells):
            if cells and seen_header:  # `,,,,`: a spreadsheet's blank row, not a blank line
                out.append((line, RowError(line, "", "the row is empty (only separators, as a spreadsheet writes blank rows)")))
            continue
        if not seen_header:
            seen_header = True
            continue
        extra = [c for c in cells[len(names):] if c.strip()]
        nameless = [c for c, n in zip(cells, names, strict=False) if not n and c.strip()]
        if extra or nameless:
            out.append((line, RowError(line, cells[names.index("path")].strip() if len(cells) > names.index("path") else "",
                                       f"the row has {len(cells)} fields with values where the header ({len(named)} columns) "
                                       "names none; quote a value that contains the separator")))
            continue
        out.append((line, {n: c for n, c in zip(names, cells, strict=False) if n}))
    return out


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def validate(line: int, record: dict[str, Any], base: Path, now: datetime) -> Item:
    """One manifest row checked as the engine will check it; raises InvalidArgument with what is wrong."""
    for key in FIELDS:
        value = record.get(key)
        if value is not None and not isinstance(value, str):
            raise InvalidArgument(f"{key} must be text, not {_kind(value)}")
    raw = (record.get("path") or "").strip()
    if not raw:
        raise InvalidArgument("the path is empty" if "path" in record else "the row has no path")
    if "\x00" in raw:
        raise InvalidArgument("the path contains a NUL character")
    p = Path(raw)
    p = p if p.is_absolute() else base / p
    source = labels.source_link((record.get("source_url") or "").strip() or str(p.resolve()))
    expires = normalize_expiry(record.get("expires_at"))
    if expires is not None and datetime.fromisoformat(expires) <= now:
        raise InvalidArgument(f"expires_at {record.get('expires_at', '').strip()} is in the past: the image would never be searchable")
    return Item(p, source, labels.subject(record.get("subject")), expires, labels.notes(record.get("notes")), line)
