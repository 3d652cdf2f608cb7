"""Every user-facing string of the bot, including the error -> reply table. Plain text (no parse mode).

Officer-facing texts take the reader's `Language` (bot/i18n.py) first and go through its gettext catalog;
numbers, percentages and durations are formatted for its locale. Admin replies, the start-up messages for
the operator and the audit stay English (language-neutral), like the CLI.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from bot.i18n import ENGLISH, N_, Language
from bot.telegram_io import DOWNLOAD_LIMIT, clip, single_line
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

logger = logging.getLogger(__name__)

SUBJECT_SHOWN = 100  # characters of a subject, note or case shown in a reply (the rest is cut with "…")
URL_SHOWN = 300  # characters of a source link shown in a list (its button carries the whole link)


def shown(label: str, limit: int = SUBJECT_SHOWN) -> str:
    """A stored label (subject, note, case, link) as a reply shows it: one safe line, cut to `limit` characters."""
    return clip(single_line(label), limit)

# -- start-up (for the operator, in the log) -----------------------------------------------------
MISSING_TOKEN = (
    "No Telegram bot token. In Telegram, talk to @BotFather, send /newbot and copy the token it gives you; "
    "then set SIGHTLINE_TELEGRAM_TOKEN=<token> (and SIGHTLINE_ADMINS=<your numeric Telegram id>) and start "
    "again. The gallery and search work offline without a token: `sightline search photo.jpg --case REF`."
)
TOKEN_REJECTED = "Telegram rejected the bot token: check SIGHTLINE_TELEGRAM_TOKEN (ask @BotFather for it again)."
BOOTSTRAP_NOTE = "bootstrap admin (SIGHTLINE_ADMINS)"

def NC_(context: str, message: str) -> str:
    """Mark a string with a context for extraction (Babel keyword NC_:1c,2); translated where it is used."""
    return message


# -- command names ----------------------------------------------------------------------------------
# The officer commands, each with its name in every language (msgctxt "command" in the catalogs): the bot
# answers to all of them, and each language's menu lists its own. Admin commands keep their English names.
LOCALISED_COMMANDS: tuple[str, ...] = (
    # Translators: the name of a Telegram command: lowercase letters a-z, digits and _ only (no accents or
    # spaces), at most 32 characters. Keep it short; officers type it. Leave "start" as it is: Telegram sends it.
    NC_("command", "start"),
    # Translators: command name (a-z, 0-9, _ only): shows the help.
    NC_("command", "help"),
    # Translators: command name (a-z, 0-9, _ only): sets the active case (the investigation's file reference).
    NC_("command", "case"),
    # Translators: command name (a-z, 0-9, _ only): changes the bot's language.
    NC_("command", "language"),
)

# -- menus: (command, description); officers see the first list (in their language), admins both -----
OFFICER_COMMANDS: tuple[tuple[str, str], ...] = (
    ("start", N_("How Sightline works")),
    ("help", N_("How to search, and the commands")),
    ("case", N_("Set, show or clear your active case: /case <reference> | /case clear")),
    ("language", N_("Choose your language")),
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


def officer_menu(t: Language) -> list[tuple[str, str]]:
    """The officer commands as `t` names and describes them."""
    return [(t.command(name), t._(text)) for name, text in OFFICER_COMMANDS]


def clear_words(languages: Sequence[Language]) -> set[str]:
    """The words that clear the active case (/case clear, /dossier effacer...), in every language."""
    # Translators: the argument of the case command that clears the active case ("/case clear"); one word.
    return {"clear"} | {t.pgettext("argument", "clear").lower() for t in languages}


# -- access ------------------------------------------------------------------------------------
def not_authorised(t: Language, user_id: int, quiet_seconds: int = 0) -> str:
    """The one reply an account that is not whitelisted gets (then silence for `quiet_seconds`)."""
    text = t._(
        "You are not authorised to use this bot.\n"
        "Your Telegram id is {user_id}. Send it to an administrator if you should have access."
    ).format(user_id=user_id)  # the raw digits: an admin types them into /allow
    if quiet_seconds > 0:
        text += "\n" + t._("Messages in the next {duration} will get no reply.").format(duration=t.duration(quiet_seconds))
    return text


def admin_only(t: Language) -> str:
    """An officer tried an admin command."""
    return t._("That command is for administrators. /help lists what you can do.")


def not_your_button(t: Language) -> str:
    """A button of someone else's search."""
    return t._("This button belongs to someone else's search.")


def start(t: Language) -> str:
    """The /start reply."""
    return t._(
        "Sightline searches your organisation's own photo gallery for a face.\n\n"
        "1. Set your case: /case <reference> (every search is logged against it).\n"
        "2. Send a photo, or an image as a file for full quality.\n"
        "3. You get the closest gallery faces with their similarity and source links. With several faces "
        "in the photo, you choose which one to search.\n\n"
        "Matches are leads, not identifications: confirm them another way before acting.\n"
        "/help lists the commands; /language changes the language."
    )


def help_text(t: Language, is_admin: bool, active_case: str | None, rate_limit_per_hour: int) -> str:
    """The /help reply: how to search, how to read an answer, the commands; admins also get theirs (in English,
    like every admin reply)."""
    strong, possible = t.pgettext("band", "strong"), t.pgettext("band", "possible")
    lines = [
        t._("Send a photo (or an image file: JPEG, PNG, WebP or HEIC, up to {size}) to search the gallery.").format(
            size=megabytes(t, DOWNLOAD_LIMIT)
        ),
        t._("Your active case: {case}").format(case=shown(active_case)) if active_case
        else t._("You have no active case: set one with /case <reference>."),
        t.ngettext(
            "You can send up to {n} photo per hour (each photo counts, and each extra face you search in it).",
            "You can send up to {n} photos per hour (each photo counts, and each extra face you search in it).",
            rate_limit_per_hour,
        ).format(n=t.number(rate_limit_per_hour)),
        "",
        t._("Reading an answer:"),
        t._("- Several faces in the photo: I box and number them. Tap a face's number to search that face."),
        t._("- Each match shows a percentage: how similar the two faces are ({full} would be the same picture). "
            "It is not a probability that it is the same person.").format(full=t.percent(1)),
        t._("- {strong}: similar enough that strangers rarely score this high. {possible}: worth a look, often a "
            "stranger.").format(strong=strong, possible=possible),
        t._("- The odds line says how often a stranger scores this high in this gallery: 1 in {strong_odds} is "
            "strong evidence, 1 in {weak_odds} is weak.").format(strong_odds=t.number(40_000), weak_odds=t.number(20)),
        t._("- More shows the next matches. Source opens where the gallery photo came from."),
        t._("Matches are leads, not identifications: confirm them another way before acting."),
        "",
        t._("Commands:"),
    ]
    lines += [f"/{name} - {text}" for name, text in officer_menu(t)]
    if is_admin:
        lines += ["", "Admin commands:"]
        lines += [f"/{name} - {text}" for name, text in ADMIN_COMMANDS]
    return "\n".join(lines)


def role_name(t: Language, role: str) -> str:
    """"officer" / "admin" in words of `t`."""
    if role == "admin":
        return t.pgettext("role", "administrator")
    return t.pgettext("role", "officer")


def welcome(t: Language, role: str) -> str:
    """Sent to an account when an admin whitelists it."""
    return t._("You now have access to Sightline as {role}. Send /help to start.").format(role=role_name(t, role))


def unknown_command(t: Language) -> str:
    """A command the bot does not have."""
    return t._("Unknown command. /help lists what you can do.")


def send_a_photo(t: Language) -> str:
    """Text, stickers and the like."""
    return t._("Send a photo to search the gallery. /help explains how.")


def sorry(t: Language) -> str:
    """After an unexpected error (logged with its traceback)."""
    return t._("Sorry, something went wrong on our side while handling that. It has been logged; please try again.")


# -- language ------------------------------------------------------------------------------------
def choose_language(t: Language) -> str:
    """The /language reply, above one button per language."""
    return t._("Choose your language:")


def language_set(t: Language) -> str:
    """After a language button: said in the new language."""
    # Translators: name your own language here, as in "From now on I answer in French."
    return t._("From now on I answer in English.")


# -- usage of every command ----------------------------------------------------------------------
def usage_case(t: Language) -> str:
    """How /case is used."""
    return t._("Usage: /case <reference> to set it, /case to show it, /case clear to clear it")


USAGE = {  # admin commands: English
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
}

# -- case ---------------------------------------------------------------------------------------
def need_case(t: Language) -> str:
    """A search refused because the account has no active case."""
    return t._(
        "Set a case reference first: /case <reference> (for example /case OP-2024-117); every search is logged "
        "against it. Then send the photo again: it was not kept."
    )


def case_set(t: Language, case: str) -> str:
    """After /case <ref>."""
    return t._("Active case: {case}. Your searches are now logged against it.").format(case=shown(case))


def case_shown(t: Language, case: str | None) -> str:
    """After /case alone."""
    if case:
        return t._("Active case: {case}").format(case=shown(case))
    return t._("You have no active case. Set one with /case <reference>.")


def case_cleared(t: Language) -> str:
    """After /case clear."""
    return t._("Active case cleared.")


def case_invalid(t: Language, max_length: int) -> str:
    """A case reference the engine refused (too long, control characters)."""
    return t.ngettext(
        "A case reference is at most {n} printable character.", "A case reference is at most {n} printable characters.",
        max_length,
    ).format(n=t.number(max_length))


# -- rate limit -----------------------------------------------------------------------------------
def rate_limited(t: Language, per_hour: int, wait_seconds: float) -> str:
    """A search refused because the user reached the hourly limit."""
    minutes = max(1, math.ceil(wait_seconds / 60))
    limit = t.ngettext(
        "You have reached the limit of {n} search per hour.", "You have reached the limit of {n} searches per hour.",
        per_hour,
    ).format(n=t.number(per_hour))
    return f"{limit} " + t._("Try again in {duration}.").format(duration=t.minutes(minutes))


# -- files -----------------------------------------------------------------------------------------
def not_an_image(t: Language) -> str:
    """A file that is not an image by its type or name."""
    return t._("That file is not an image. Send a photo, or a JPEG, PNG, WebP or HEIC file.")


def megabytes(t: Language, size_bytes: float, digits: int = 0) -> str:
    """A size in MB (10^6 bytes), this locale's way."""
    return t._("{size} MB").format(size=t.number(size_bytes / 1e6, digits))


def too_big(t: Language, size_bytes: int | None, limit_bytes: int) -> str:
    """An attachment refused before downloading because of its size."""
    limit = megabytes(t, limit_bytes)
    if size_bytes:
        return t._(
            "That file is too big ({size}): the limit is {limit}. Send a smaller photo, or send it as a photo rather "
            "than a file (Telegram makes it smaller)."
        ).format(size=megabytes(t, size_bytes, 1), limit=limit)
    return t._(
        "That file is too big: the limit is {limit}. Send a smaller photo, or send it as a photo rather than a file "
        "(Telegram makes it smaller)."
    ).format(limit=limit)


def results_expired(t: Language) -> str:
    """A More button (or an old button) whose results were dropped."""
    return t._("These results are no longer in memory. Send the photo again to search.")


def photo_unavailable(t: Language) -> str:
    """A photo the Bot API would not serve (getFile refused it): nothing was analysed or counted."""
    return t._(
        "Telegram could not give me that photo (it may have expired or been deleted). Send it again; "
        "it did not count against your searches."
    )


def photo_expired(t: Language, ttl_seconds: int) -> str:
    """A face button pressed after the photo was dropped."""
    return t._("That photo is no longer in memory (photos are dropped after {duration}). Send it again to search.").format(
        duration=t.duration(ttl_seconds)
    )


def duration(seconds: int) -> str:
    """"1 second", "90 seconds", "2 minutes" (English)."""
    return ENGLISH.duration(seconds)


# -- engine errors -> replies -----------------------------------------------------------------------
IMAGE_REJECTED = {
    "not_image": N_("That file is not an image I can read. Send a JPEG, PNG, WebP or HEIC photo."),
    "corrupt": N_("That image is damaged or cut off and cannot be read. Send it again."),
    "empty": N_("That file is empty."),
    "degenerate": N_(
        "That image is too thin or too long to hold a face: it needs at least 20 pixels on each side and may be at "
        "most 50 times longer than wide."
    ),
}
OFFICER_ERRORS: dict[type[EngineError], str] = {
    NoFaceFound: N_(
        "No face found in the photo. Use a photo where the face is visible, roughly frontal and not too small."
    ),
    FaceIndexError: N_("That face number is not in the photo."),
    ModelError: N_("The search service is not working (face models). An administrator has to check the server."),
    StorageError: N_("The search service is not working (storage). An administrator has to check the server."),
    IndexUnavailable: N_(
        "The search service cannot reach its index server right now. Try again in a minute; if it keeps failing, "
        "an administrator has to check the server."
    ),
    EngineError: N_("That did not work. It has been logged; please try again."),
}


def officer_error(t: Language, exc: EngineError, max_image_bytes: int, max_image_pixels: int) -> str:
    """The reply to an officer for an engine error, in their language (the English detail goes to the log)."""
    if isinstance(exc, CaseRequired):
        return need_case(t)
    if isinstance(exc, ImageRejected):
        if exc.reason == "too_large":
            return too_big(t, None, max_image_bytes)
        if exc.reason == "too_many_pixels":
            return t._("That image has too many pixels to open safely: the limit is {limit} megapixels.").format(
                limit=t.number(max_image_pixels / 1e6)
            )
        if exc.reason in IMAGE_REJECTED:
            return t._(IMAGE_REJECTED[exc.reason])
        return t._("That image cannot be used. Send another photo.")
    for cls in type(exc).__mro__:
        if cls in OFFICER_ERRORS:
            return t._(OFFICER_ERRORS[cls])  # type: ignore[index]
    return t._(OFFICER_ERRORS[EngineError])


ERRORS: dict[type[EngineError], str] = {  # admin replies: English, with the engine's detail
    NoFaceFound: OFFICER_ERRORS[NoFaceFound],
    FaceIndexError: OFFICER_ERRORS[FaceIndexError],
    NotFound: "Not found: {detail}.",
    InvalidArgument: "That doesn't work: {detail}.",
    CaseRequired: "A case reference is required for every search.",
    LastAdmin: (
        "That would leave Sightline without an administrator. Make another account admin first: "
        "/allow <user_id> admin."
    ),
    ModelError: OFFICER_ERRORS[ModelError],
    StorageError: OFFICER_ERRORS[StorageError],
    IndexUnavailable: OFFICER_ERRORS[IndexUnavailable],
    EngineError: "That failed: {detail}.",
}
ADMIN_IMAGE_REJECTED = {
    **IMAGE_REJECTED,
    "too_large": "That file is too big: {detail}.",
    "too_many_pixels": "That image has too many pixels to open safely: {detail}.",
}


def for_error(exc: EngineError) -> str:
    """The (English) reply to an admin for an engine error: the most specific entry of the table for its class."""
    detail = str(exc).rstrip(".") or type(exc).__name__
    if isinstance(exc, ImageRejected):
        return ADMIN_IMAGE_REJECTED.get(exc.reason, ERRORS[EngineError]).format(detail=detail)
    for cls in type(exc).__mro__:
        if cls in ERRORS:
            return ERRORS[cls].format(detail=detail)  # type: ignore[index]
    return ERRORS[EngineError].format(detail=detail)


# -- search results ------------------------------------------------------------------------------
def leads_not_ids(t: Language) -> str:
    """The legal caution above every list of matches."""
    return t._("Matches are leads, not identifications: confirm them independently before acting.")


def percent(t: Language, similarity: float) -> str:
    """A similarity as a whole percentage."""
    return t.percent(similarity)


def _nice(n: float) -> float:
    """A count rounded to two significant figures."""
    if n < 10:
        return float(round(n))
    digits = int(math.floor(math.log10(n))) - 1
    return float(round(n, -digits))


def strangers(t: Language, expected: float, gallery_faces: int, below: float | None = None) -> str:
    """How often a stranger would score this high in a gallery this size, in plain words.

    `below` (Hit.false_match_rate_below): no stranger of the calibration's comparisons of this quality class scored
    this high, so the rate is only known to be below it; the words say so, as a bound set by how few comparisons there
    were, not as a measured rate (a poor-quality exact copy would otherwise read as less sure than a good 61 % hit)."""
    if below is not None:
        bound = below * gallery_faces
        if bound >= 0.5:
            count = t.number(bound, 0 if bound >= 10 else 1)
            return t.ngettext(
                "no stranger scored this high in our tests, too few to rule out ~{count} in this gallery of {faces} face",
                "no stranger scored this high in our tests, too few to rule out ~{count} in this gallery of {faces} faces",
                gallery_faces,
            ).format(faces=t.number(gallery_faces), count=count)
        return t._("odds a stranger scores this high here: below 1 in {n} (none did in our tests, too few to say how far "
                   "below)").format(n=t.number(_nice(1 / bound)))
    if expected >= 0.5:
        count = t.number(expected, 0 if expected >= 10 else 1)
        return t.ngettext(
            "weak: ~{count} strangers in this gallery of {faces} face may score this high",
            "weak: ~{count} strangers in this gallery of {faces} faces may score this high",
            gallery_faces,
        ).format(faces=t.number(gallery_faces), count=count)
    if expected <= 0:
        return t._("no stranger in our test set scored this high")
    return t._("odds a stranger scores this high here: 1 in {n}").format(n=t.number(_nice(1 / expected)))


def subject_of(t: Language, hit: Hit) -> str:
    """The subject of a hit, or "unlabelled" (cut to fit a list)."""
    return shown(hit.subject) if hit.subject else t._("unlabelled")


# The engine's quality warnings (engine/faces.py, FaceModel.quality) are English phrases: each known one is
# recognised here and said again in the reader's language; an unknown one is shown as it is (and logged).
_WARNINGS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"face is (?P<width>\d+) px wide, (?P<analysed>\d+) px once the photo is scaled down \(crop around it\)"),
     N_("face is {width} px wide, {analysed} px once the photo is scaled down (crop around it)")),
    (re.compile(r"face is (?P<width>\d+) px wide"), N_("face is {width} px wide")),
    (re.compile(r"detector is unsure it is a face \((?P<score>\d+)%\)"), N_("detector is unsure it is a face ({score})")),
    (re.compile(r"face found only by a second, less strict detection \((?P<score>\d+)%\)"),
     N_("face found only by a second, less strict detection ({score})")),
    (re.compile(r"face is blurred"), N_("face is blurred")),
    (re.compile(r"head is turned \(~(?P<degrees>\d+)°\)"), N_("head is turned (~{degrees}°)")),
)


def warning_text(t: Language, warning: str) -> str:
    """One of the engine's quality warnings in `t`'s words (numbers formatted for its locale)."""
    for pattern, message in _WARNINGS:
        match = pattern.fullmatch(warning)
        if match:
            values = {k: t.number(int(v)) for k, v in match.groupdict().items()}
            if "score" in values:
                values["score"] = t.percent(int(match["score"]) / 100)
            return t._(message).format(**values)
    logger.warning("quality warning without a translation: %r", warning)
    return warning


def quality_warning(t: Language, warnings: Sequence[str], strong_hit: bool = False, *, calibrated: bool = True,
                    strong_set: bool = False) -> str | None:
    """The warning line for a searched face, or None when it looks fine.

    `strong_hit`: a hit shown is "strong". A poor probe's hits carry the odds of its quality class, and at the class's
    strong threshold strangers' faces reach it no more often than the table says (0.57-1.21x), for faces 18-40 px wide
    too (bench/RESULTS.md, "A strong hit on a poor photo"): the line then says so instead of calling every match weak.
    It claims no more than that: a poor photo still finds its person less often. The claim holds only for the class's
    calibrated threshold: with SIGHTLINE_THRESHOLD_STRONG set by hand (`strong_set`), "strong" is the operator's one
    score for every class, which the line then says; with no calibration (`calibrated` False) there are no odds."""
    if not warnings:
        return None
    shown = "; ".join(warning_text(t, w) for w in warnings)
    if strong_hit and strong_set:
        return t._("This photo is poor ({warnings}) and the match thresholds were set by hand: a strong match does not "
                   "allow for its quality; treat any match as a weak lead.").format(warnings=shown)
    if strong_hit and calibrated:
        return t._("This photo is poor ({warnings}): the odds shown for a strong match allow for its quality; treat a "
                   "possible match as a weak lead.").format(warnings=shown)
    return t._("This photo is poor ({warnings}): treat any match as a weak lead.").format(warnings=shown)


def tile_label(t: Language, hit: Hit) -> str:
    """The label under a match's thumbnail in the picture."""
    return f"#{hit.rank}  {percent(t, hit.similarity)}"


def query_tile(t: Language) -> str:
    """The label under the query face in the picture."""
    return t._("searched face")


def band(t: Language, hit: Hit) -> str:
    """The band of a hit in words, with the gallery face's quality."""
    word = t.pgettext("band", "strong") if hit.band == "strong" else t.pgettext("band", "possible")
    if hit.low_quality:
        return t._("{band}, poor-quality gallery face").format(band=word)
    return word


def hit_lines(t: Language, hit: Hit, gallery_faces: int, linked: bool) -> list[str]:
    """The lines describing one match."""
    lines = [f"{hit.rank}. {subject_of(t, hit)} - {percent(t, hit.similarity)} ({band(t, hit)})"]
    if hit.strangers_expected is not None:
        lines.append(f"   {strangers(t, hit.strangers_expected, gallery_faces, hit.false_match_rate_below)}")
    url = shown(hit.source_url, URL_SHOWN)
    lines.append(f"   {url}" if linked else "   " + t._("source: {url}").format(url=url))
    if hit.near_duplicates:
        lines.append(f"   {near_copies(t, len(hit.near_duplicates))}")
    return lines


def near_copies(t: Language, n: int) -> str:
    """How many near-identical copies of a gallery photo one hit stands for."""
    return t.ngettext(
        "and {n} near-identical copy of this photo in the gallery (a crop or re-encode)",
        "and {n} near-identical copies of this photo in the gallery (crops or re-encodes)", n,
    ).format(n=n)


def searched_where(t: Language, frame: int, frames: int, rotation: int) -> str | None:
    """Which frame of an animation was searched and how the photo was turned, or None for an ordinary photo."""
    parts = []
    if frames > 1:
        parts.append(t._("Searched frame {frame} of {frames}, the first with a face.").format(frame=frame, frames=frames))
    if rotation:
        parts.append(t._("The photo was turned {degrees}° clockwise to find an upright face.").format(degrees=rotation))
    return " ".join(parts) if parts else None


def search_header(t: Language, results: ResultSet) -> list[str]:
    """The lines above the matches: leads warning, case, which face, quality warning."""
    if results.faces_in_photo > 1:
        face = t._("face {number} of {total}").format(number=results.face, total=results.faces_in_photo)
    else:
        face = t._("1 face")
    case = t._("Case {case}").format(case=shown(results.case)) if results.case else t._("No case")
    gallery = t.ngettext("gallery of {n} face", "gallery of {n} faces", results.gallery_faces).format(
        n=t.number(results.gallery_faces)
    )
    lines = [leads_not_ids(t), f"{case} - {face} - {gallery}"]
    warning = quality_warning(t, results.warnings, any(h.band == "strong" for h in results.hits), calibrated=results.calibrated,
                              strong_set=results.strong_threshold_set)
    if warning:
        lines.append(warning)
    where = searched_where(t, results.frame, results.frames, results.rotation)
    if where:
        lines.append(where)
    return lines


def matches_range(t: Language, start: int, stop: int, total: int) -> str:
    """"Matches 6-10 of 12."."""
    return t._("Matches {first}-{last} of {total}.").format(first=start + 1, last=stop, total=total)


def result_page(t: Language, results: ResultSet, start: int, stop: int, linked: Sequence[bool]) -> str:
    """The text of one page of matches (hits[start:stop]); `linked` says which sources have a button."""
    lines = search_header(t, results) + [""]
    for hit, has_button in zip(results.hits[start:stop], linked, strict=True):
        lines += hit_lines(t, hit, results.gallery_faces, has_button)
    total = len(results.hits)
    lines += ["", matches_range(t, start, stop, total) if total > stop or start else matches_count(t, total)]
    if not results.calibrated:
        lines.append(t._("No calibration for this model: percentages are similarity scores, not odds."))
    return "\n".join(lines)


def matches_count(t: Language, n: int) -> str:
    """"1 match." / "3 matches."."""
    return t.ngettext("{n} match.", "{n} matches.", n).format(n=t.number(n))


def result_caption_short(t: Language, results: ResultSet, start: int, stop: int) -> str:
    """A photo caption when the full list does not fit (it follows as a message)."""
    more = t._("Matches {first}-{last} of {total}: see below.").format(first=start + 1, last=stop, total=len(results.hits))
    return "\n".join([*search_header(t, results), more])


def no_match(
    t: Language, case: str | None, gallery_faces: int, threshold: float, warnings: Sequence[str], second_look: bool = False
) -> str:
    """A search that found nothing above the threshold; `second_look`: the searched face was found only by the
    detector's second look, whose hits must clear a bar of their own (calibration.SECOND_LOOK), not `threshold`."""
    if second_look:
        first = t._("No match: a face was found, but the photo is too poor to search: "
                    "no gallery face reached the bar for such faces.")
    else:
        first = t.ngettext(
            "No match: no gallery face scored above {percent} among {n} gallery face.",
            "No match: no gallery face scored above {percent} among {n} gallery faces.",
            gallery_faces,
        ).format(percent=percent(t, threshold), n=t.number(gallery_faces))
    lines = [
        first,
        t._("Case {case}.").format(case=shown(case)) if case else t._("No case."),
    ]
    warning = quality_warning(t, warnings)
    if warning:
        lines.append(warning)
    return "\n".join(lines)


def source_button(t: Language, rank: int) -> str:
    """The label of a match's source button."""
    return t._("{rank}. source").format(rank=rank)


def more_button(t: Language, start: int, stop: int, total: int) -> str:
    """The label of the button that shows the next page."""
    return t._("More ({first}-{last} of {total})").format(first=start + 1, last=stop, total=total)


def choose_face(t: Language, faces: Sequence[DetectedFace], ttl_seconds: int, shown: int) -> str:
    """The caption of a photo with several faces boxed and numbered."""
    lines = [t.ngettext(
        "{n} face found. Which one should I search? Tap its number.",
        "{n} faces found. Which one should I search? Tap its number.",
        len(faces),
    ).format(n=len(faces))]
    for face in faces[:shown]:
        if face.quality.warnings:
            warnings = "; ".join(warning_text(t, w) for w in face.quality.warnings)
            lines.append(t._("Face {number}: {warnings}").format(number=face.number, warnings=warnings))
    if len(faces) > shown:
        lines.append(t._("Only faces 1-{last} have buttons: crop the photo to search the others.").format(last=shown))
    lines.append(t._("The photo stays in memory for {duration}, then it is dropped.").format(
        duration=t.duration(ttl_seconds)
    ))
    return "\n".join(lines)


def face_button(t: Language, number: int) -> str:
    """The label of a face choice button."""
    return t._("Face {number}").format(number=number)


def searching_face(t: Language, number: int) -> str:
    """The toast shown when a face button is pressed."""
    return t._("Searching face {number}...").format(number=number)


def already_searched(t: Language, number: int) -> str:
    """A face button pressed again: the answer is already in the chat."""
    return t._("Face {number} was already searched: its matches are above.").format(number=number)


def results_continued(t: Language, start: int, stop: int, total: int) -> str:
    """The header of the list of matches when it does not fit under the picture."""
    return t._("Matches {first}-{last} of {total} (continued):").format(first=start + 1, last=stop, total=total)


# -- admin: users, stats ---------------------------------------------------------------------------
def allowed(user: User) -> str:
    """After /allow."""
    note = f" ({shown(user.note)})" if user.note else ""
    return f"User {user.user_id} may now use Sightline as {user.role}{note}."


def cannot_demote_bootstrap(user_id: int) -> str:
    """/allow <id> officer for an admin listed in SIGHTLINE_ADMINS: nothing changes."""
    return (
        f"User {user_id} is an admin from SIGHTLINE_ADMINS and stays admin: remove them from SIGHTLINE_ADMINS "
        "and restart the bot to change that. Nothing was changed."
    )


# -- confirmations (inline buttons) before what cannot be undone: admin commands, English ---------------
def confirm_forget(what: str, value: str) -> str:
    """Asked before /forget erases anything."""
    return (
        f"Erase for good every gallery image of {what} {shown(value)}, with all its faces? "
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
            extra.append(f"case {shown(u.active_case)}")
        note = f" - {shown(u.note)}" if u.note and u.note != BOOTSTRAP_NOTE else ""
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
    subject = f", subject {shown(e.subject)} on its main face" if e.subject else ", unlabelled"
    return f"Added image {e.image_id}: {e.faces} face(s){subject}.\nSHA-256 {e.image_sha256}"


def forgotten(e: Erasure, what: str, value: str) -> str:
    """After /forget."""
    return f"Erased for good ({what} {shown(value)}): {e.images} image(s), {e.faces} face(s)."


# -- admin: audit --------------------------------------------------------------------------------------
def _details(details: dict[str, object]) -> str:
    parts = []
    for key, value in details.items():
        if isinstance(value, list | dict):
            parts.append(f"{key}={len(value)}")
        elif isinstance(value, str) and len(value) > 24:
            parts.append(f"{key}={single_line(value[:20])}...")
        else:
            parts.append(f"{key}={single_line(value) if isinstance(value, str) else value}")
    return " ".join(parts)


def audit_entries(entries: Sequence[AuditEntry]) -> str:
    """The /audit [n] reply, oldest first."""
    if not entries:
        return "The audit log is empty."
    lines = [f"Last {len(entries)} audit entries:"]
    for e in entries:
        case = f" case={shown(e.case_ref)}" if e.case_ref else ""
        lines.append(f"#{e.seq} {e.ts} {shown(e.actor)} {e.action}{case} {_details(e.details)}".rstrip())
    return "\n".join(lines)


def audit_check(check: ChainCheck) -> str:
    """The /audit verify reply."""
    if check.ok:
        return f"Audit chain OK: {check.entries} entries verified. Head {check.head}"
    return f"Audit chain BROKEN at entry {check.first_bad_seq}: {check.problem}. Entries checked: {check.entries}."
