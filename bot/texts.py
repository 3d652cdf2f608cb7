"""Every user-facing string of the bot, including the error -> reply table. Plain text (no parse mode)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from bot.telegram_io import clip
from engine import (
    AuditEntry,
    CaseRequired,
    ChainCheck,
    DetectedFace,
    EngineError,
    Enrollment,
    Erasure,
    FaceIndexError,
    Hit,
    ImageRejected,
    IndexUnavailable,
    InvalidArgument,
    LastAdmin,
    ModelError,
    NoFaceFound,
    NotFound,
    Stats,
    StorageError,
    User,
)

if TYPE_CHECKING:
    from bot.sessions import ResultSet

SUBJECT_SHOWN = 100  # characters of a subject, note or case shown in a reply (the rest is cut with "…")
URL_SHOWN = 300  # characters of a source link shown in a list (its button carries the whole link)

# -- start-up (for the operator, in the log) -----------------------------------------------------
MISSING_TOKEN = (
    "No Telegram bot token. In Telegram, talk to @BotFather, send /newbot and copy the token it gives you; "
    "then set SIGHTLINE_TELEGRAM_TOKEN=<token> (and SIGHTLINE_ADMINS=<your numeric Telegram id>) and start "
    "again. The gallery and search work offline without a token: `sightline search photo.jpg --case REF`."
)
TOKEN_REJECTED = "Telegram rejected the bot token: check SIGHTLINE_TELEGRAM_TOKEN (ask @BotFather for it again)."
BOOTSTRAP_NOTE = "bootstrap admin (SIGHTLINE_ADMINS)"

# -- menus: (command, description); officers see the first list, admins both --------------------
OFFICER_COMMANDS: tuple[tuple[str, str], ...] = (
    ("start", "How Sightline works"),
    ("help", "How to search, and the commands"),
    ("case", "Set, show or clear your active case: /case <ref> | /case clear"),
)
ADMIN_COMMANDS: tuple[tuple[str, str], ...] = (
    ("allow", "Whitelist an account: /allow <user_id> [officer|admin] [note]"),
    ("revoke", "Remove an account: /revoke <user_id>"),
    ("users", "List whitelisted accounts"),
    ("stats", "Gallery counts and sizes"),
    ("enroll", "Add a photo to the gallery: reply to it (or caption it) with /enroll <source_url> [subject]"),
    ("forget", "Erase: /forget subject <S> | source <URL> | image <sha256>"),
    ("audit", "Last audit entries: /audit [n] | /audit verify"),
)

# -- access ------------------------------------------------------------------------------------
def not_authorised(user_id: int, quiet_seconds: int = 0) -> str:
    """The one reply an account that is not whitelisted gets (then silence for `quiet_seconds`)."""
    text = (
        "You are not authorised to use this bot.\n"
        f"Your Telegram id is {user_id}. Send it to an administrator if you should have access."
    )
    if quiet_seconds > 0:
        text += f"\nMessages in the next {duration(quiet_seconds)} will get no reply."
    return text


ADMIN_ONLY = "That command is for administrators. /help lists what you can do."
NOT_YOUR_BUTTON = "This button belongs to someone else's search."

START = (
    "Sightline searches your organisation's own photo gallery for a face.\n\n"
    "1. Set your case: /case <reference> (every search is logged against it).\n"
    "2. Send a photo, or an image as a file for full quality.\n"
    "3. You get the closest gallery faces with their similarity and source links. With several faces "
    "in the photo, you choose which one to search.\n\n"
    "Matches are leads, not identifications: confirm them another way before acting.\n"
    "/help lists the commands."
)


def help_text(is_admin: bool, active_case: str | None, rate_limit_per_hour: int) -> str:
    """The /help reply: how to search, how to read an answer, the commands; admins also get theirs."""
    lines = [
        "Send a photo (or an image file: JPEG, PNG, WebP or HEIC, up to 20 MB) to search the gallery.",
        f"Your active case: {clip(active_case, SUBJECT_SHOWN)}" if active_case
        else "You have no active case: set one with /case <ref>.",
        f"You can send up to {rate_limit_per_hour} photos per hour (each photo counts, and each extra face you "
        "search in it).",
        "",
        "Reading an answer:",
        "- Several faces in the photo: I box and number them. Tap a face's number to search that face.",
        "- Each match shows a percentage: how similar the two faces are (100% would be the same picture). "
        "It is not a probability that it is the same person.",
        "- strong: similar enough that strangers rarely score this high. possible: worth a look, often a stranger.",
        "- The odds line says how often a stranger scores this high in this gallery: 1 in 40,000 is strong "
        "evidence, 1 in 20 is weak.",
        "- More shows the next matches. Source opens where the gallery photo came from.",
        "Matches are leads, not identifications: confirm them another way before acting.",
        "",
        "Commands:",
    ]
    lines += [f"/{name} - {text}" for name, text in OFFICER_COMMANDS]
    if is_admin:
        lines += ["", "Admin commands:"]
        lines += [f"/{name} - {text}" for name, text in ADMIN_COMMANDS]
    return "\n".join(lines)


def welcome(role: str) -> str:
    """Sent to an account when an admin whitelists it."""
    return f"You now have access to Sightline as {role}. Send /help to start."


UNKNOWN_COMMAND = "Unknown command. /help lists what you can do."
SEND_A_PHOTO = "Send a photo to search the gallery. /help explains how."
SORRY = "Sorry, something went wrong on our side while handling that. It has been logged; please try again."

# -- usage of every command ----------------------------------------------------------------------
USAGE = {
    "allow": "Usage: /allow <user_id> [officer|admin] [note]\nExample: /allow 123456789 officer Unit 5",
    "revoke": "Usage: /revoke <user_id>",
    "users": "Usage: /users",
    "stats": "Usage: /stats",
    "enroll": (
        "Usage: reply to a photo (or an image file) with /enroll <source_url> [subject], "
        "or send the photo with that as its caption.\nExample: /enroll https://records.example/123 Jane Doe"
    ),
    "forget": (
        "Usage: /forget subject <name> | /forget source <URL> | /forget image <sha256>\n"
        "Erases the images and all their faces for good."
    ),
    "audit": "Usage: /audit [n] (the last n entries, 1-100, default 10) or /audit verify",
    "case": "Usage: /case <reference> to set it, /case to show it, /case clear to clear it",
}

# -- case ---------------------------------------------------------------------------------------
NEED_CASE = (
    "Set a case reference first: /case <reference> (for example /case OP-2024-117); every search is logged "
    "against it. Then send the photo again: it was not kept."
)


def case_set(case: str) -> str:
    """After /case <ref>."""
    return f"Active case: {clip(case, SUBJECT_SHOWN)}. Your searches are now logged against it."


def case_shown(case: str | None) -> str:
    """After /case alone."""
    return f"Active case: {clip(case, SUBJECT_SHOWN)}" if case else "You have no active case. Set one with /case <reference>."


CASE_CLEARED = "Active case cleared."

# -- rate limit -----------------------------------------------------------------------------------
def rate_limited(per_hour: int, wait_seconds: float) -> str:
    """A search refused because the user reached the hourly limit."""
    minutes = max(1, math.ceil(wait_seconds / 60))
    return (
        f"You have reached the limit of {per_hour} searches per hour. "
        f"Try again in {minutes} minute{'s' if minutes != 1 else ''}."
    )


# -- files -----------------------------------------------------------------------------------------
NOT_AN_IMAGE = "That file is not an image. Send a photo, or a JPEG, PNG, WebP or HEIC file."


def too_big(size_bytes: int | None, limit_bytes: int) -> str:
    """An attachment refused before downloading because of its size."""
    size = f" ({size_bytes / 1e6:.1f} MB)" if size_bytes else ""
    return (
        f"That file is too big{size}: the limit is {limit_bytes / 1e6:.0f} MB. "
        "Send a smaller photo, or send it as a photo rather than a file (Telegram makes it smaller)."
    )


PHOTO_EXPIRED = "That photo is no longer in memory (photos are dropped after {ttl}). Send it again to search."
RESULTS_EXPIRED = "These results are no longer in memory. Send the photo again to search."


def duration(seconds: int) -> str:
    """"1 second", "90 seconds", "2 minutes"."""
    if seconds >= 120:
        return f"{seconds // 60} minutes"
    return "1 second" if seconds == 1 else f"{seconds} seconds"


def photo_expired(ttl_seconds: int) -> str:
    """A face button pressed after the photo was dropped."""
    return PHOTO_EXPIRED.format(ttl=duration(ttl_seconds))


# -- engine errors -> replies -----------------------------------------------------------------------
IMAGE_REJECTED = {
    "not_image": "That file is not an image I can read. Send a JPEG, PNG, WebP or HEIC photo.",
    "corrupt": "That image is damaged or cut off and cannot be read. Send it again.",
    "too_large": "That file is too big: {detail}.",
    "too_many_pixels": "That image has too many pixels to open safely: {detail}.",
    "empty": "That file is empty.",
}
ERRORS: dict[type[EngineError], str] = {
    NoFaceFound: (
        "No face found in the photo. Use a photo where the face is visible, roughly frontal and not too small."
    ),
    FaceIndexError: "That face number is not in the photo.",
    NotFound: "Not found: {detail}.",
    InvalidArgument: "That doesn't work: {detail}.",
    CaseRequired: NEED_CASE,
    LastAdmin: (
        "That would leave Sightline without an administrator. Make another account admin first: "
        "/allow <user_id> admin."
    ),
    ModelError: "The search service is not working (face models). An administrator has to check the server.",
    StorageError: "The search service is not working (storage). An administrator has to check the server.",
    IndexUnavailable: "The search service cannot reach its index server right now, so nothing was done. "
    "Try again in a minute; if it keeps failing, an administrator has to check the server (sightline doctor).",
    EngineError: "That failed: {detail}.",
}


def for_error(exc: EngineError) -> str:
    """The reply for an engine error: the most specific entry of the table for its class."""
    detail = str(exc).rstrip(".") or type(exc).__name__
    if isinstance(exc, ImageRejected):
        return IMAGE_REJECTED.get(exc.reason, ERRORS[EngineError]).format(detail=detail)
    for cls in type(exc).__mro__:
        if cls in ERRORS:
            return ERRORS[cls].format(detail=detail)  # type: ignore[index]
    return ERRORS[EngineError].format(detail=detail)


# -- search results ------------------------------------------------------------------------------
LEADS_NOT_IDS = "Matches are leads, not identifications: confirm them independently before acting."
UNRELIABLE = "results unreliable"


def percent(similarity: float) -> str:
    """A similarity as a whole percentage."""
    return f"{similarity * 100:.0f}%"


def _nice(n: float) -> str:
    """A count rounded to two significant figures, with thousands separators."""
    if n < 10:
        return f"{n:.0f}"
    digits = int(math.floor(math.log10(n))) - 1
    return f"{round(n, -digits):,.0f}"


def strangers(expected: float, gallery_faces: int) -> str:
    """How often a stranger would score this high in a gallery this size, in plain words."""
    if expected >= 0.5:
        count = f"{expected:.0f}" if expected >= 10 else f"{expected:.1f}"
        return f"weak: ~{count} strangers in this gallery of {gallery_faces:,} faces may score this high"
    if expected <= 0:
        return "no stranger in our test set scored this high"
    return f"odds a stranger scores this high here: 1 in {_nice(1 / expected)}"


def subject_of(hit: Hit) -> str:
    """The subject of a hit, or "unlabelled" (cut to fit a list)."""
    return clip(hit.subject, SUBJECT_SHOWN) if hit.subject else "unlabelled"


def quality_warning(warnings: Sequence[str]) -> str | None:
    """The warning line for a searched face, or None when it looks fine."""
    if not warnings:
        return None
    return f"Warning: {'; '.join(warnings)} - {UNRELIABLE}."


def tile_label(hit: Hit) -> str:
    """The label under a match's thumbnail in the picture."""
    return f"#{hit.rank}  {percent(hit.similarity)}"


QUERY_TILE = "searched face"


def hit_lines(hit: Hit, gallery_faces: int, linked: bool) -> list[str]:
    """The lines describing one match."""
    low = ", poor-quality gallery face" if hit.low_quality else ""
    lines = [f"{hit.rank}. {subject_of(hit)} - {percent(hit.similarity)} ({hit.band}{low})"]
    if hit.strangers_expected is not None:
        lines.append(f"   {strangers(hit.strangers_expected, gallery_faces)}")
    url = clip(hit.source_url, URL_SHOWN)
    lines.append(f"   {url}" if linked else f"   source: {url}")
    return lines


def search_header(results: ResultSet) -> list[str]:
    """The lines above the matches: leads warning, case, which face, quality warning."""
    face = f"face {results.face} of {results.faces_in_photo}" if results.faces_in_photo > 1 else "1 face"
    case = f"Case {clip(results.case, SUBJECT_SHOWN)}" if results.case else "No case"
    lines = [LEADS_NOT_IDS, f"{case} - {face} - gallery of {results.gallery_faces:,} faces"]
    warning = quality_warning(results.warnings)
    if warning:
        lines.append(warning)
    return lines


def result_page(results: ResultSet, start: int, stop: int, linked: Sequence[bool]) -> str:
    """The text of one page of matches (hits[start:stop]); `linked` says which sources have a button."""
    lines = search_header(results) + [""]
    for hit, has_button in zip(results.hits[start:stop], linked, strict=True):
        lines += hit_lines(hit, results.gallery_faces, has_button)
    total = len(results.hits)
    lines += ["", f"Matches {start + 1}-{stop} of {total}." if total > stop or start else matches_count(total)]
    if not results.calibrated:
        lines.append("No calibration for this model: percentages are similarity scores, not odds.")
    return "\n".join(lines)


def matches_count(n: int) -> str:
    """"1 match." / "3 matches."."""
    return f"{n} match." if n == 1 else f"{n} matches."


def result_caption_short(results: ResultSet, start: int, stop: int) -> str:
    """A photo caption when the full list does not fit (it follows as a message)."""
    return "\n".join([*search_header(results), f"Matches {start + 1}-{stop} of {len(results.hits)}: see below."])


def no_match(case: str | None, gallery_faces: int, threshold: float, warnings: Sequence[str]) -> str:
    """A search that found nothing above the threshold."""
    lines = [
        f"No match: no gallery face scored above {percent(threshold)} among {gallery_faces:,} gallery faces.",
        f"Case {clip(case, SUBJECT_SHOWN)}." if case else "No case.",
    ]
    warning = quality_warning(warnings)
    if warning:
        lines.append(warning)
    return "\n".join(lines)


def source_button(rank: int) -> str:
    """The label of a match's source button."""
    return f"{rank}. source"


def more_button(start: int, stop: int, total: int) -> str:
    """The label of the button that shows the next page."""
    return f"More ({start + 1}-{stop} of {total})"


def choose_face(faces: Sequence[DetectedFace], ttl_seconds: int, shown: int) -> str:
    """The caption of a photo with several faces boxed and numbered."""
    lines = [f"{len(faces)} faces found. Which one should I search? Tap its number."]
    for face in faces[:shown]:
        if face.quality.warnings:
            lines.append(f"Face {face.number}: {'; '.join(face.quality.warnings)}")
    if len(faces) > shown:
        lines.append(f"Only faces 1-{shown} have buttons: crop the photo to search the others.")
    lines.append(f"The photo stays in memory for {duration(ttl_seconds)}, then it is dropped.")
    return "\n".join(lines)


def face_button(number: int) -> str:
    """The label of a face choice button."""
    return f"Face {number}"


def searching_face(number: int) -> str:
    """The toast shown when a face button is pressed."""
    return f"Searching face {number}..."


def already_searched(number: int) -> str:
    """A face button pressed again: the answer is already in the chat."""
    return f"Face {number} was already searched: its matches are above."


def results_continued(start: int, stop: int, total: int) -> str:
    """The header of the list of matches when it does not fit under the picture."""
    return f"Matches {start + 1}-{stop} of {total} (continued):"


# -- admin: users, stats ---------------------------------------------------------------------------
def allowed(user: User) -> str:
    """After /allow."""
    note = f" ({clip(user.note, SUBJECT_SHOWN)})" if user.note else ""
    return f"User {user.user_id} may now use Sightline as {user.role}{note}."


def cannot_demote_bootstrap(user_id: int) -> str:
    """/allow <id> officer for an admin listed in SIGHTLINE_ADMINS: nothing changes."""
    return (
        f"User {user_id} is an admin from SIGHTLINE_ADMINS and stays admin: remove them from SIGHTLINE_ADMINS "
        "and restart the bot to change that. Nothing was changed."
    )


# -- confirmations (inline buttons) before what cannot be undone ------------------------------------
def confirm_forget(what: str, value: str) -> str:
    """Asked before /forget erases anything."""
    return (
        f"Erase for good every gallery image of {what} {clip(value, SUBJECT_SHOWN)}, with all its faces? "
        "This cannot be undone."
    )


def confirm_revoke_self(user_id: int) -> str:
    """Asked before an admin removes their own access."""
    return f"You are about to remove your own access ({user_id}). You will not be able to use the bot afterwards."


def confirm_demote_self(user_id: int) -> str:
    """Asked before an admin makes themself an officer."""
    return f"You are about to make yourself ({user_id}) an officer: you will lose the admin commands."


CONFIRM_FORGET = "Erase for good"
CONFIRM_REVOKE = "Remove my access"
CONFIRM_DEMOTE = "Make me an officer"
CANCEL = "Cancel"
CANCELLED = "Cancelled: nothing was changed."
CONFIRM_EXPIRED = "This question has expired or was answered already. Send the command again."
DONE_BELOW = "Done: see below."


def revoked(user_id: int) -> str:
    """After /revoke."""
    return f"User {user_id} is no longer allowed. This takes effect immediately."


def cannot_revoke_bootstrap(user_id: int) -> str:
    """/revoke of an admin listed in SIGHTLINE_ADMINS."""
    return f"User {user_id} is an admin from SIGHTLINE_ADMINS: remove them there and restart the bot."


def users_list(users: Sequence[User], bootstrap: frozenset[int]) -> str:
    """The /users reply."""
    if not users:
        return "No whitelisted accounts."
    lines = [f"{len(users)} whitelisted account(s):"]
    for u in users:
        extra = [u.role]
        if u.user_id in bootstrap:
            extra.append("bootstrap")
        if u.active_case:
            extra.append(f"case {u.active_case}")
        note = f" - {clip(u.note, SUBJECT_SHOWN)}" if u.note and u.note != BOOTSTRAP_NOTE else ""
        lines.append(f"{u.user_id} ({', '.join(extra)}){note}")
    return "\n".join(lines)


def stats(s: Stats) -> str:
    """The /stats reply."""
    return "\n".join([
        f"Gallery: {s.images:,} images, {s.faces:,} faces, {s.subjects:,} subjects "
        f"({s.labelled_faces:,} labelled faces, {s.flagged_faces:,} flagged low quality).",
        f"Accounts: {s.users:,}. Audit entries: {s.audit_entries:,}.",
        f"Database {s.db_bytes / 1e6:.1f} MB, index {s.index_bytes / 1e6:.1f} MB "
        f"({s.index_dims}-d, search breadth {s.index_ef}). Model: {s.model}.",
    ])


# -- admin: enroll, forget ---------------------------------------------------------------------------
def enrolled(e: Enrollment) -> str:
    """After /enroll."""
    if e.duplicate:
        return f"That image is already in the gallery (image {e.image_id}); nothing was added."
    subject = f", subject {clip(e.subject, SUBJECT_SHOWN)} on its main face" if e.subject else ", unlabelled"
    return f"Added image {e.image_id}: {e.faces} face(s){subject}.\nSHA-256 {e.image_sha256}"


def forgotten(e: Erasure, what: str, value: str) -> str:
    """After /forget."""
    return f"Erased for good ({what} {clip(value, SUBJECT_SHOWN)}): {e.images} image(s), {e.faces} face(s)."


# -- admin: audit --------------------------------------------------------------------------------------
def _details(details: dict[str, object]) -> str:
    parts = []
    for key, value in details.items():
        if isinstance(value, list | dict):
            parts.append(f"{key}={len(value)}")
        elif isinstance(value, str) and len(value) > 24:
            parts.append(f"{key}={value[:20]}...")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def audit_entries(entries: Sequence[AuditEntry]) -> str:
    """The /audit [n] reply, oldest first."""
    if not entries:
        return "The audit log is empty."
    lines = [f"Last {len(entries)} audit entries:"]
    for e in entries:
        case = f" case={e.case_ref}" if e.case_ref else ""
        lines.append(f"#{e.seq} {e.ts} {e.actor} {e.action}{case} {_details(e.details)}".rstrip())
    return "\n".join(lines)


def audit_check(check: ChainCheck) -> str:
    """The /audit verify reply."""
    if check.ok:
        return f"Audit chain OK: {check.entries} entries verified. Head {check.head}"
    return f"Audit chain BROKEN at entry {check.first_bad_seq}: {check.problem}. Entries checked: {check.entries}."
