"""Gallery commands: index, search, forget, stats, purge."""

from __future__ import annotations

import argparse
import asyncio
import csv
import getpass
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.cli import add_command, add_json, given_path, int_in, missing_gallery, seconds
from engine import Engine, EngineError, ImageRejected, InvalidArgument, NoFaceFound, SearchResult, StorageError, fsmodes, images, labels
from engine.engine import normalize_expiry
from engine.errors import IndexUnavailable, is_damaged_database, is_disk_full

from .manifest import Item, ManifestError, read_manifest

logger = logging.getLogger(__name__)

SAVE_EVERY_S = 30.0


def cli_actor() -> str:
    """The audit actor for the command line: the operating-system user."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in some containers
        return "cli:unknown"


@asynccontextmanager
async def open_engine(args: argparse.Namespace, *, create: bool = False) -> AsyncIterator[Engine]:
    """Open the engine from the settings and always close it (saving the index).

    Only `create` (indexing) may start a new gallery; every other command refuses a data directory without
    one, saying where it looked, rather than answering from a new, empty gallery."""
    if not create and (problem := missing_gallery(args)):
        raise StorageError(problem)
    engine = await Engine.open(args.settings.engine_config(), create=create)
    try:
        yield engine
    except BaseException:
        try:  # the first error is the one to report: a close that fails after it (the same full disk) is logged
            await engine.close()
        except Exception as exc:  # noqa: BLE001
            logger.debug("closing the engine after an error also failed: %r", exc)
        raise
    await engine.close()


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the gallery sub-commands."""
    p = add_command(
        sub, "index", cmd_index,
        help="add a folder of images or a manifest to the gallery",
        description="Add images to the gallery. SOURCE is a folder (every file under it named as an image, .jpg, .png, "
        ".heic, ..., or holding one whatever its name: JPEG, PNG, WebP, GIF, HEIC, AVIF, TIFF, BMP; other files, such as "
        "a LABELS.csv or README.md beside the photos, are left out and named with -v), one image, or a manifest (.csv or "
        ".jsonl with columns path, source_url, subject, expires_at, notes; paths relative to the manifest; the folder "
        "options --subject, --subject-from-folder, --source-prefix and --expires-at are refused with one). Every file that does "
        "not go in is counted in the summary and listed in the report with its reason. "
        "Every face of every image is indexed; a subject labels the image's "
        "primary face. Images already in the gallery (same SHA-256) are skipped, so a run can be resumed.",
    )
    p.add_argument("source", type=given_path, help="a folder of images, one image, or a .csv/.jsonl manifest")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--subject-from-folder", action="store_true", help="label each image with its folder's name")
    g.add_argument("--subject", help="label every image of a folder with this subject")
    p.add_argument("--source-prefix", help="source link = this prefix + the path relative to SOURCE (default: the file's absolute path)")
    p.add_argument("--expires-at", help="ISO date after which the images are purged (folder mode)")
    p.add_argument("--report", type=Path, help="CSV of the images that failed (default: DATA_DIR/ingest-report-<time>.csv)")
    p.add_argument("--concurrency", type=int_in(1, 64), default=4, help="images in flight at once, 1 to 64 (default 4)")
    p.add_argument("--save-every", type=seconds, default=SAVE_EVERY_S, metavar="SECONDS",
                   help=f"checkpoint the index this often during the run (default {SAVE_EVERY_S:.0f})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json(p, "print the summary (and any error) as JSON")

    p = add_command(
        sub, "search", cmd_search,
        help="search the gallery for a face in a photo",
        description="Find the faces in PHOTO, search the gallery for one of them (by default the primary face), "
        "and print the matches above the threshold. The photo is read into memory and never stored.",
    )
    p.add_argument("photo", type=Path, help="the query photo (JPEG, PNG, WebP, GIF, HEIC, AVIF, TIFF or BMP)")
    p.add_argument("--top", type=int_in(1, 100), default=5, help="how many matches at most, 1 to 100 (default 5)")
    p.add_argument("--face", type=int_in(1, 1000), help="search face N of the photo (numbered left to right, 1-1000)")
    p.add_argument("--case", help="case reference the search is made for (recorded in the audit log); required unless "
                   "SIGHTLINE_REQUIRE_CASE=false")
    add_json(p, "print JSON instead of text")

    p = add_command(
        sub, "forget", cmd_forget,
        help="erase a subject, a source link or an image from the gallery for good",
        description="Remove images with all their faces, thumbnails and index entries. The database is "
        "overwritten (secure_delete) and the index rewritten so nothing recoverable remains. The audit log "
        "records what was erased (counts and ids), not biometric data.",
    )
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--subject", help="every image labelled with this subject")
    g.add_argument("--source-url", help="every image with this source link")
    g.add_argument("--image", metavar="SHA256", help="the image with this SHA-256")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    p = add_command(sub, "stats", cmd_stats, help="counts and sizes of the gallery", description="Counts and sizes of the gallery.")
    add_json(p, "print JSON")

    p = add_command(
        sub, "purge", cmd_purge,
        help="erase expired gallery images (and audit entries past retention)",
        description="Erase every gallery image whose expires_at has passed, and audit entries older than "
        "SIGHTLINE_AUDIT_RETENTION_DAYS (the chain stays verifiable). The running bot does this daily.",
    )

    p = add_command(
        sub, "migrate-labels", cmd_migrate_labels,
        help="normalise the stored subjects, source links, notes and case references of an existing gallery",
        description="Bring labels stored before label checking to what enrolment accepts today: Unicode NFC (so a "
        "name typed as macOS writes it can be found and erased however it is typed), line breaks and tabs as spaces, "
        "invisible characters (zero-width, bidirectional controls) removed. Prints every change; values still not "
        "accepted (too long, a malformed link) are listed for a person to fix. The change is audited.",
    )
    p.add_argument("--dry-run", action="store_true", help="only report what would change")
    add_json(p, "print the changes as JSON")


# -- index --------------------------------------------------------------------------------------
@dataclass
class Summary:
    """What an ingest run did: one count per outcome, and every file or row that did not go in."""

    indexed: int = 0
    faces: int = 0
    duplicates: int = 0
    no_face: int = 0
    unreadable: int = 0  # image files we could not use: damaged, too big, too thin, unreadable from disk
    not_image: int = 0  # files that are not images (recognised by content, whatever their name)
    manifest_errors: int = 0  # manifest rows refused before any image was read
    invalid: int = 0  # labels the engine refused (a folder name used as subject, say)
    index_unavailable: int = 0  # good files not enrolled because the index server (Milvus) did not answer
    errors: int = 0  # anything unexpected on one file (logged with its traceback)
    near_copies: int = 0  # indexed images that are near-identical copies of gallery images (shown as one hit)
    ignored: int = 0  # a folder's files that are not images by name or content (LABELS.csv, README.md) or not regular files
    failures: list[tuple[str, str, str, int | None]] = field(default_factory=list)  # path, reason, message, line

    def fail(self, path: str, reason: str, message: str, line: int | None = None) -> None:
        """Record a file or row that did not go in."""
        self.failures.append((path, reason, message, line))

    def line(self) -> str:
        """The one-line summary printed at the end."""
        parts = [f"indexed {self.indexed} image(s) with {self.faces} face(s)", f"{self.duplicates} already in the gallery",
                 f"{self.no_face} with no face", f"{self.unreadable} unreadable"]
        for n, what in ((self.near_copies, "indexed as near-identical copies of gallery images"),
                        (self.not_image, "skipped (not an image)"), (self.manifest_errors, "manifest error(s)"),
                        (self.invalid, "with labels refused"),
                        (self.index_unavailable, "not indexed because the index server did not answer (run the same command again)"),
                        (self.errors, "failed unexpectedly"),
                        (self.ignored, "other file(s) left out (not images by name or content, or not regular files: -v names them)")):
            if n:
                parts.append(f"{n} {what}")
        return "; ".join(parts)

    def as_json(self) -> dict[str, Any]:
        """The summary as a JSON object."""
        counts = {k: v for k, v in asdict(self).items() if k != "failures"}
        return {**counts, "failures": [{"path": p, "line": ln, "reason": r, "message": m} for p, r, m, ln in self.failures]}


def display_path(path: Path) -> str:
    """A path as text we can print, store and put in a CSV: undecodable bytes as \\xNN, invisible characters as \\uXXXX."""
    return labels.scrub(os.fsencode(path).decode("utf-8", "backslashreplace"))


def folder_items(root: Path, args: argparse.Namespace) -> tuple[list[Item], list[Path]]:
    """The image files under a folder (or the one image `root`), in a stable order, and the other files, left out.

    A file is an image to index when its name says so (images.IMAGE_SUFFIXES: one that is not an image is then
    reported as such) or its content does, whatever its name (IMG_0001, a .dat from a camera); any other file (a
    LABELS.csv, README.md, .DS_Store beside the photos) is not an image anyone meant to index, and is left out
    without counting as a skipped image; so is what is not a regular file (a FIFO, a socket, a dangling or looping
    symbolic link). --subject-from-folder labels an image with the name of its folder."""
    files = [root] if root.is_file() else sorted((p for p in root.rglob("*") if not p.is_dir()), key=lambda p: os.fsencode(p))
    items: list[Item] = []
    ignored: list[Path] = []
    for path in files:
        if path != root and not path.is_file():  # a FIFO (opening it would wait for a writer), a socket, a dangling or looping link
            ignored.append(path)
            continue
        if path != root and not images.named_as_image(path) and not images.looks_like_image(path):
            ignored.append(path)
            continue
        rel = display_path(path.relative_to(root) if path != root else Path(path.name))
        source = f"{args.source_prefix.rstrip('/')}/{rel}" if args.source_prefix else display_path(path.resolve())
        subject = args.subject or (path.parent.name if args.subject_from_folder and path.parent != root else None)
        items.append(Item(path, source, subject, args.expires_at))
    return items, ignored


def fail_early(args: argparse.Namespace, message: str, code: int = 2, reason: str = "error", kind: str = "InvalidArgument") -> int:
    """Report an error that stops the command: a line on stderr, or with --json a JSON object on stdout shaped as the
    engine's errors are ({"error": {"type", "reason", "message"}}; `kind` is the type)."""
    if getattr(args, "json", False):
        print(json.dumps({"error": {"type": kind, "reason": reason, "message": message}}, ensure_ascii=False))
    else:
        print(f"sightline: error: {message}", file=sys.stderr)
    return code


FOLDER_OPTIONS = {"subject": "--subject", "subject_from_folder": "--subject-from-folder", "source_prefix": "--source-prefix",
                  "expires_at": "--expires-at"}


def folder_options_problem(args: argparse.Namespace, manifest: bool) -> str | None:
    """What is wrong with the labels given on the command line, checked once before any file is read; None if nothing.

    A manifest names each row's labels, so the folder options would be ignored: they are refused instead."""
    if manifest:
        given = [flag for name, flag in FOLDER_OPTIONS.items() if getattr(args, name)]
        if given:
            return (f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for a folder; {display_path(args.source)} is a "
                    "manifest, whose columns subject, source_url and expires_at label each row: put the values there")
        return None
    try:
        labels.subject(args.subject)
    except InvalidArgument as exc:
        return f"--subject: {exc}"
    try:
        expires = normalize_expiry(args.expires_at)
    except InvalidArgument as exc:
        return f"--expires-at: {exc}"
    if expires is not None and datetime.fromisoformat(expires) <= datetime.now(UTC):
        return f"--expires-at {args.expires_at} is in the past: the images would never be searchable"
    return None


async def cmd_index(args: argparse.Namespace) -> int:
    """Ingest a folder or a manifest, resumably, with a progress bar and a summary."""
    from tqdm import tqdm

    source: Path = args.source
    if not source.exists():
        return fail_early(args, f"{display_path(source)} does not exist", reason="not_found", kind="NotFound")
    # One file is a manifest unless it is an image by name or content: a photo.jpg that is not one is a bad image.
    manifest = source.is_file() and not images.named_as_image(source) and not images.looks_like_image(source)
    if problem := folder_options_problem(args, manifest):
        return fail_early(args, problem, reason="invalid")
    summary = Summary()
    if manifest:
        try:
            rows, row_errors = read_manifest(source)
        except (ManifestError, OSError) as exc:
            return fail_early(args, f"bad manifest: {exc}", reason="manifest", kind="ManifestError")
        for err in row_errors:
            summary.manifest_errors += 1
            summary.fail(err.path, "manifest", err.message, err.line)
        items = rows
    else:
        items, ignored = folder_items(source, args)
        summary.ignored = len(ignored)
        if ignored:
            logger.info("%d file(s) left out: not images by name or content, or not regular files", len(ignored))
            for path in ignored:
                logger.debug("left out (not an image by name or content, or not a regular file): %s", display_path(path))
    if not items and not summary.failures:
        also = f" ({summary.ignored} other file(s), none an image by name or content)" if summary.ignored else ""
        return fail_early(args, f"no images found in {display_path(source)}{also}", code=1, reason="empty")
    actor = cli_actor()
    if items:
        async with open_engine(args, create=True) as engine:
            bar = tqdm(total=len(items), unit="img", disable=args.no_progress or args.json, dynamic_ncols=True, desc="indexing")
            pending = iter(items)
            last_save = time.monotonic()

            async def worker() -> None:
                nonlocal last_save
                for item in pending:  # shared: each item goes to one worker
                    await ingest_one(engine, item, actor, summary)
                    bar.update(1)
                    bar.set_postfix(faces=summary.faces, new=summary.indexed, failed=len(summary.failures), refresh=False)
                    if time.monotonic() - last_save > args.save_every:
                        last_save = time.monotonic()
                        await engine.save_index()

            # A worker that fails (a full disk, a damaged database) cancels the others and the run ends with
            # its error; ingest_one already absorbs what one bad file can cause.
            try:
                async with asyncio.TaskGroup() as group:
                    for _ in range(max(1, args.concurrency)):
                        group.create_task(worker())
            finally:
                bar.close()
    report = write_report(args, summary)
    if args.json:
        print(json.dumps({**summary.as_json(), "report": str(report) if report else None}, indent=2, ensure_ascii=False))
    else:
        print(summary.line())
        if report:
            print(f"failures listed in {report}")
    return 0 if summary.indexed or summary.duplicates else 1


async def ingest_one(engine: Engine, item: Item, actor: str, summary: Summary) -> None:
    """Enroll one file, counting the outcome; nothing that goes wrong with one file stops the run."""
    where = display_path(item.path)
    try:
        size = (await asyncio.to_thread(item.path.stat)).st_size
        if size > engine.config.max_image_bytes:  # a video in the folder: do not read it into memory
            raise ImageRejected("too_large", f"the file is {size / 1e6:.1f} MB; the limit is {engine.config.max_image_bytes / 1e6:.0f} MB")
        data = await asyncio.to_thread(item.path.read_bytes)
        result = await engine.enroll(
            data, source_url=item.source_url, subject=item.subject, expires_at=item.expires_at,
            notes=item.notes, actor=actor, save=False,
        )
    except Exception as exc:  # one bad file never stops an ingest: record it against the file and go on
        if isinstance(exc, StorageError) or is_disk_full(exc, engine.config.data_dir) or is_damaged_database(exc):
            raise  # the gallery itself cannot be written: the run ends, saying so in one line
        record_failure(summary, where, item.line, exc)
    else:
        if result.duplicate:
            summary.duplicates += 1
        else:
            summary.indexed += 1
            summary.faces += result.faces
            summary.near_copies += result.near_duplicate_of is not None


def record_failure(summary: Summary, where: str, line: int | None, exc: Exception) -> None:
    """Count one file's failure under its kind and list it with its reason."""
    if isinstance(exc, NoFaceFound):
        summary.no_face += 1
        summary.fail(where, "no_face", str(exc), line)
    elif isinstance(exc, ImageRejected):
        if exc.reason == "not_image":
            summary.not_image += 1
        else:
            summary.unreadable += 1
        summary.fail(where, exc.reason, str(exc), line)
    elif isinstance(exc, OSError):
        summary.unreadable += 1
        summary.fail(where, "io", exc.strerror or str(exc), line)
    elif isinstance(exc, InvalidArgument):
        summary.invalid += 1
        summary.fail(where, "invalid_label", str(exc), line)
    elif isinstance(exc, IndexUnavailable):  # the file is fine: the server is not
        summary.index_unavailable += 1
        summary.fail(where, "index_unavailable", str(exc), line)
    elif isinstance(exc, EngineError):
        summary.unreadable += 1
        summary.fail(where, type(exc).__name__, str(exc), line)
    else:
        logger.warning("ingest of %s failed", where, exc_info=exc)
        summary.errors += 1
        summary.fail(where, "error", f"{type(exc).__name__}: {labels.scrub(str(exc))[:300]}", line)


def write_report(args: argparse.Namespace, summary: Summary) -> Path | None:
    """Write the failures to a CSV report; None when there were none."""
    if not summary.failures:
        return None
    path = args.report or Path(args.settings.data_dir) / f"ingest-report-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    path.parent.mkdir(mode=fsmodes.DIR_MODE, parents=True, exist_ok=True)
    with fsmodes.open_private(path, "w", newline="", encoding="utf-8") as fh:  # names and paths of case photos
        w = csv.writer(fh)
        w.writerow(["path", "reason", "message", "line"])
        w.writerows((p, r, m, "" if ln is None else ln) for p, r, m, ln in summary.failures)
    return path


# -- search -------------------------------------------------------------------------------------
def search_json(result: SearchResult) -> dict[str, Any]:
    """The JSON shape of a search result (no thumbnail bytes)."""
    return {
        "query_sha256": result.query_sha256,
        "faces": [
            {"number": f.number, "box": list(f.box), "det_score": f.det_score, "primary": f.primary,
             "quality": {k: v for k, v in asdict(f.quality).items()}}
            for f in result.faces
        ],
        "searched_face": result.searched,
        "frame": result.frame,
        "frames": result.frames,
        "rotation": result.rotation,
        "threshold": result.threshold,
        "calibrated": result.calibrated,
        "strong_threshold_set": result.strong_threshold_set,
        "gallery_faces": result.gallery_faces,
        "audit_seq": result.audit_id,
        "hits": [
            {"rank": h.rank, "subject": h.subject, "similarity": h.similarity, "band": h.band,
             "source_url": h.source_url, "image_sha256": h.image_sha256, "box": list(h.box), "face_id": h.face_id,
             "low_quality": h.low_quality, "false_match_rate": h.false_match_rate,
             "strangers_expected": h.strangers_expected, "false_match_rate_below": h.false_match_rate_below,
             "near_duplicates": len(h.near_duplicates),
             "near_duplicate_face_ids": list(h.near_duplicates)}
            for h in result.hits
        ],
    }


def search_text(result: SearchResult) -> str:
    """A human-readable search result."""
    lines = [f"{len(result.faces)} face(s) found; searched face {result.searched}"]
    if result.frames > 1:
        lines.append(f"searched frame {result.frame} of {result.frames} (the first examined frame with a face)")
    if result.rotation:
        lines.append(f"the photo was turned {result.rotation} degrees clockwise to find an upright face")
    for f in result.faces:
        mark = "*" if f.number == result.searched else " "
        warn = f"  ({'; '.join(f.quality.warnings)})" if f.quality.warnings else ""
        lines.append(f" {mark} face {f.number}: box {f.box}, detector {f.det_score:.2f}, {f.quality.width_px} px{warn}")
    searched = result.faces[result.searched - 1]
    strong_hit = any(h.band == "strong" for h in result.hits)
    if not searched.quality.ok and strong_hit and result.strong_threshold_set:  # texts.quality_warning says why
        lines.append("this photo is poor and the match thresholds were set by hand: a strong match does not allow for its "
                     "quality; treat any match as a weak lead")
    elif not searched.quality.ok and strong_hit and result.calibrated:
        lines.append("this photo is poor: the odds shown for a strong match allow for its quality; treat a possible match as "
                     "a weak lead")
    elif not searched.quality.ok:
        lines.append("this photo is poor: treat any match as a weak lead")
    if not result.hits and searched.quality.second_look:
        lines.append(f"no match: a face was found, but the photo is too poor to search: none of the {result.gallery_faces} "
                     "gallery faces reached the bar for such faces")
    elif not result.hits:
        lines.append(f"no match above the threshold ({result.threshold:.3f}) in {result.gallery_faces} gallery faces")
    else:
        lines.append("matches (leads, not identifications):")
        for h in result.hits:
            extra = ""
            if h.false_match_rate_below is not None:  # texts.strangers says why
                extra = (f", fewer than {h.false_match_rate_below * result.gallery_faces:.2g} strangers expected this close "
                         "(none in the calibration's comparisons, too few to say how many fewer)")
            elif h.strangers_expected is not None:
                extra = f", ~{h.strangers_expected:.2g} strangers expected this close"
            lines.append(
                f"  {h.rank}. {h.subject or 'unlabelled'}  {h.similarity * 100:.1f}% ({h.band}{extra})  {h.source_url}"
            )
            if h.near_duplicates:
                n = len(h.near_duplicates)
                lines.append(f"     and {n} near-identical {'copy' if n == 1 else 'copies'} in the gallery")
    if not result.calibrated:
        lines.append("note: no calibration table for this model; bands use the configured thresholds")
    return "\n".join(lines)


async def cmd_search(args: argparse.Namespace) -> int:
    """Search and print."""
    photo: Path = args.photo
    if not photo.is_file():
        return fail_early(args, f"{display_path(photo)} is not a file", reason="not_found", kind="NotFound")
    if args.settings.require_case and not (args.case or "").strip():
        return fail_early(
            args, "every search needs a case reference: add --case REF "
            "(or set SIGHTLINE_REQUIRE_CASE=false where your policy allows it)", reason="case_required", kind="CaseRequired",
        )
    data = photo.read_bytes()
    async with open_engine(args) as engine:
        result = await engine.search(data, actor=cli_actor(), case=args.case, top=args.top, face=args.face)
    print(json.dumps(search_json(result), indent=2) if args.json else search_text(result))
    return 0


# -- forget / stats / purge ---------------------------------------------------------------------
async def cmd_forget(args: argparse.Namespace) -> int:
    """Erase images for good: first find them (an unknown subject is said at once), then confirm, then erase."""
    what = "subject" if args.subject else "source link" if args.source_url else "image"
    value = args.subject or args.source_url or args.image
    async with open_engine(args) as engine:
        found = await engine.images_to_forget(subject=args.subject, source_url=args.source_url, sha256=args.image)
        if not args.yes:
            if not sys.stdin.isatty():
                print(f"sightline: error: forget erases for good and asks first, but there is no terminal to ask on: "
                      f"pass --yes to confirm the {len(found)} image(s) of {what} {value!r} (nothing erased)", file=sys.stderr)
                return 2
            question = f"Erase the {len(found)} image(s) of {what} {value!r} with their faces, for good? [y/N] "
            try:  # on this thread, not a worker's: Ctrl-C must interrupt the question (the CLI has no other task)
                answer = input(question)
            except EOFError:
                answer = ""
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing erased")
                return 1
        erasure = await engine.forget(
            subject=args.subject, source_url=args.source_url, sha256=args.image, actor=cli_actor()
        )
    print(f"erased {erasure.images} image(s) and {erasure.faces} face(s)")
    return 0


async def cmd_stats(args: argparse.Namespace) -> int:
    """Print counts and sizes."""
    async with open_engine(args) as engine:
        stats = await engine.stats()
        thresholds = (engine.threshold_possible, engine.threshold_strong, engine.calibration is not None)
    if args.json:
        print(json.dumps(asdict(stats), indent=2))
        return 0
    print(
        f"images          {stats.images}\nfaces           {stats.faces} ({stats.labelled_faces} labelled, "
        f"{stats.flagged_faces} below the quality floor)\nsubjects        {stats.subjects}\n"
        f"users           {stats.users}\naudit entries   {stats.audit_entries}\n"
        f"database        {stats.db_bytes / 1e6:.1f} MB\n{index_line(stats)}\n"
        f"model           {stats.model}\nthresholds      possible {thresholds[0]:.3f}, strong {thresholds[1]:.3f}"
        f" ({'calibrated' if thresholds[2] else 'configured: no calibration table'})"
    )
    return 0


def index_line(stats: Any) -> str:
    """The index's lines of `stats`: backend, where, size, kind, shape, breadth and the latency of one lookup."""
    latency = f"{stats.index_latency_ms:.1f} ms per lookup" if stats.index_latency_ms is not None else "no lookup yet"
    if stats.index_kind == "hamming" or stats.index_kind.startswith("milvus BIN"):
        breadth = f"{stats.index_ef} candidates re-ranked"
    elif stats.index_kind.startswith("milvus IVF"):
        breadth = f"{stats.index_ef} clusters searched"
    else:
        breadth = f"search breadth (ef) {stats.index_ef}"
    if stats.index_backend == "milvus":
        size = f"~{stats.index_memory_bytes / 1e6:.1f} MB in the query nodes' RAM (estimate)"
    else:
        size = f"{stats.index_bytes / 1e6:.1f} MB on disk, {stats.index_memory_bytes / 1e6:.1f} MB in RAM"
    return (f"index           {stats.index_backend}: {stats.index_where}\n"
            f"                {size}; {stats.index_kind}, {stats.index_dims}-d, {breadth}; {latency}")


async def cmd_purge(args: argparse.Namespace) -> int:
    """Erase what has expired."""
    async with open_engine(args) as engine:
        erasure = await engine.purge_expired(actor=cli_actor())
    print(f"purged {erasure.images} expired image(s) with {erasure.faces} face(s)")
    return 0


async def cmd_migrate_labels(args: argparse.Namespace) -> int:
    """Normalise stored labels and report what changed."""
    async with open_engine(args) as engine:
        changes = await engine.normalize_labels(apply=not args.dry_run, actor=cli_actor())
    changed = [c for c in changes if c.new != c.old]
    attention = [c for c in changes if c.problem]
    if args.json:
        print(json.dumps({"applied": not args.dry_run, "changed": len(changed), "needs_attention": len(attention),
                          "changes": [asdict(c) for c in changes]}, indent=2, ensure_ascii=False))
        return 0
    verb = "would change" if args.dry_run else "changed"
    for c in changed:  # ascii(): the difference is often invisible (NFD accents, zero-width characters)
        print(f"{c.table} {c.key} {c.column}: {ascii(c.old)} -> {ascii(c.new)}")
    for c in attention:
        print(f"{c.table} {c.key} {c.column}: needs a person: {c.problem}")
    print(f"{verb} {len(changed)} stored value(s); {len(attention)} still need attention")
    return 0
