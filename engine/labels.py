"""Labels and links at the engine's boundary: every string that enters the gallery or the audit log.

A label is Unicode NFC (so "José" typed on macOS, NFD, and on Windows, NFC, is one name), stripped, on one
line, with no control, bidirectional-override or zero-width characters, and within a length limit. A source
link that is a URL is a well-formed http(s) URL without whitespace; one that is not (a local path, an archive
reference) is kept as text.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any
from urllib.parse import urlsplit

from .errors import InvalidArgument

# Characters per field. A subject is a name or a reference; a source link the longest URL browsers share
# reliably (~2 kB); a case reference fits one line of an audit report.
MAX_SUBJECT = 200
MAX_SOURCE = 2048
MAX_NOTES = 2000
MAX_CASE = 64
MAX_USER_NOTE = 200

LINE_BREAKS = {"\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"}
BIDI = {"\u061c", "\u200e", "\u200f", *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))}
ZERO_WIDTH = {"\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u180e", "\u00ad"}
FORBIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Zl", "Zp"}  # control, format (bidi, zero-width), surrogates, private use, separators
# Letters and symbols that draw nothing: Hangul fillers (U+115F, U+1160, U+3164, U+FFA0) and the blank braille
# pattern (U+2800). Unicode calls them graphic, but a label made of them looks empty in every answer and the audit.
BLANK_LETTERS = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"}
# Schemes that run code, embed data or act inside Telegram when a viewer opens them; www. links need http(s).
REFUSED_SCHEMES = {"javascript", "vbscript", "data", "blob", "about", "tg"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
_HOST = re.compile(r"^[\w\-.]+$")  # letters of any script (IDN), digits, hyphens, dots; IPv6 is checked by urlsplit


def normalize(value: str) -> str:
    """NFC and stripped: how a label is stored and looked up."""
    return unicodedata.normalize("NFC", value).strip()


def forbidden(ch: str) -> str | None:
    """What is wrong with a character in a label, in plain words, or None when it is allowed."""
    if ch in LINE_BREAKS:
        return "a line break"
    if ch in BIDI:
        return "a bidirectional control"
    if ch in ZERO_WIDTH:
        return "a zero-width character"
    if ch == "\t":
        return "a tab"
    if ch in BLANK_LETTERS:
        return "a blank character that draws nothing"
    cat = unicodedata.category(ch)
    if cat in ("Zl", "Zp"):
        return "a line break"
    if cat == "Cs":
        return "a byte that is not valid text"
    if cat in FORBIDDEN_CATEGORIES:
        return "an invisible control character"
    return None


def check(value: Any, what: str, limit: int, *, required: bool = False) -> str | None:
    """`value` normalised (NFC, stripped) and checked; None when empty and not required.

    Raises InvalidArgument naming the field, the character (U+XX) and its position, or the limit.
    """
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise InvalidArgument(f"the {what} must be text, not {type(value).__name__}")
    text = normalize(value)
    if not text:
        if required:
            raise InvalidArgument(f"the {what} is empty")
        return None
    for i, ch in enumerate(text, 1):
        problem = forbidden(ch)
        if problem:
            raise InvalidArgument(
                f"the {what} contains {problem} (U+{ord(ch):04X}) at character {i}; remove it"
            )
    if len(text) > limit:
        raise InvalidArgument(f"the {what} is {len(text)} characters long; the limit is {limit} printable characters")
    return text


def looks_like_url(text: str) -> bool:
    """True for `scheme:...` (not a Windows drive such as C:\\) and for `www.` links."""
    return bool(_SCHEME.match(text) and not _WINDOWS_DRIVE.match(text)) or text.lower().startswith("www.")


def url_problem(text: str) -> str | None:
    """Why a link is unacceptable, or None: http(s) must be well-formed; other schemes are one-token references."""
    if any(ch.isspace() for ch in text):
        return "contains a space or other whitespace (write spaces in a URL as %20)"
    scheme = _SCHEME.match(text)
    name = scheme.group(1).lower() if scheme else ""
    if name in REFUSED_SCHEMES or not name:
        return "is not an http:// or https:// link"
    if name not in ("http", "https"):
        return None  # a reference in the operator's own scheme (case-file://A-1/3): one token, kept as text
    try:
        parts = urlsplit(text)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        return "is not a well-formed URL"
    if not host or not (_HOST.match(host) or ":" in host) or host.startswith(".") or ".." in host:
        return "has no valid host name"
    return None


def subject(value: Any) -> str | None:
    """A subject (the person's name or reference), or None."""
    return check(value, "subject", MAX_SUBJECT)


def source_link(value: Any) -> str:
    """A source link: required; an http(s) URL must be well-formed and without whitespace, and links that
    run code, embed data or act inside Telegram (javascript:, data:, tg:...) are refused; a local path, a
    file: link or a reference in the operator's own scheme (case-file://A-1/3) is kept as one token of text."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InvalidArgument("every gallery image needs a source link")
    text = check(value, "source link", MAX_SOURCE, required=True)
    assert text is not None
    if looks_like_url(text):
        problem = url_problem(text)
        if problem:
            raise InvalidArgument(f"the source link {text[:80]!r} {problem}")
    return text


def notes(value: Any) -> str | None:
    """Free-text notes about a gallery image, or None."""
    return check(value, "notes", MAX_NOTES)


def case_ref(value: Any) -> str | None:
    """A case reference, or None."""
    return check(value, "case reference", MAX_CASE)


def user_note(value: Any) -> str:
    """The note about a whitelisted user ("" when none)."""
    return check(value, "note", MAX_USER_NOTE) or ""


def scrub(value: Any) -> Any:
    """A value for the audit log: every string in it NFC, with forbidden characters written as \\uXX.

    The audit records what happened even when a user typed something we refuse, so nothing is dropped.
    """
    if isinstance(value, str):
        text = unicodedata.normalize("NFC", value)
        return "".join(f"\\u{ord(ch):04x}" if forbidden(ch) else ch for ch in text)
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def repair(value: str) -> str:
    """A stored label made valid where that is safe: NFC, breaks and tabs as spaces, invisible characters dropped."""
    out = []
    for ch in unicodedata.normalize("NFC", value):
        problem = forbidden(ch)
        if problem in ("a line break", "a tab"):
            out.append(" ")
        elif problem is None:
            out.append(ch)
    return re.sub(r" {2,}", " ", "".join(out)).strip()
