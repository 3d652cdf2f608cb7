"""Gallery commands: index, search, forget, stats, purge."""

from __future__ import annotations

import argparse
import asyncio
import csv
import getpass
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bot.cli import missing_gallery
from engine import Engine, EngineError, ImageRejected, NoFaceFound, SearchResult, StorageError, fsmodes

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif"}
MANIFEST_FIELDS = ("path", "source_url", "subject", "expires_at", "notes")
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
    p = sub.add_parser(
        "index",
        help="add a folder of images or a manifest to the gallery",
        description="Add images to the gallery. SOURCE is a folder (searched recursively for JPEG, PNG, WebP and "
        "HEIC files) or a manifest (.csv or .jsonl with columns path, source_url, subject, expires_at, notes; "
        "paths relative to the manifest). Every face of every image is indexed; a subject labels the image's "
        "primary face. Images already in the gallery (same SHA-256) are skipped, so a run can be resumed.",
    )
    p.add_argument("source", type=Path, help="a folder of images, or a .csv/.jsonl manifest")
    p.add_argument("--subject-from-folder", action="store_true", help="label each image with its folder's name")
    p.add_argument("--subject", help="label every image of a folder with this subject")
    p.add_argument("--source-prefix", help="source link = this prefix + the path relative to SOURCE (default: the file's absolute path)")
    p.add_argument("--expires-at", help="ISO date after which the images are purged (folder mode)")
    p.add_argument("--report", type=Path, help="CSV of the images that failed (default: DATA_DIR/ingest-report-<time>.csv)")
    p.add_argument("--concurrency", type=int, default=4, help="images in flight at once (default 4)")
    p.add_argument("--save-every", type=float, default=SAVE_EVERY_S, metavar="SECONDS",
                   help=f"checkpoint the index this often during the run (default {SAVE_EVERY_S:.0f})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser(
        "search",
        help="search the gallery for a face in a photo",
        description="Find the faces in PHOTO, search the gallery for one of them (by default the primary face), "
        "and print the matches above the threshold. The photo is read into memory and never stored.",
    )
    p.add_argument("photo", type=Path, help="the query photo (JPEG, PNG, WebP or HEIC)")
    p.add_argument("--top", type=int, default=5, help="how many matches at most (default 5)")
    p.add_argument("--face", type=int, help="search face N of the photo (numbered left to right)")
    p.add_argument("--case", help="case reference the search is made for (recorded in the audit log)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser(
        "forget",
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
    p.set_defaults(func=cmd_forget)

    p = sub.add_parser("stats", help="counts and sizes of the gallery", description="Counts and sizes of the gallery.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser(
        "purge",
        help="erase expired gallery images (and audit entries past retention)",
        description="Erase every gallery image whose expires_at has passed, and audit entries older than "
        "SIGHTLINE_AUDIT_RETENTION_DAYS (the chain stays verifiable). The running bot does this daily.",
    )
    p.set_defaults(func=cmd_purge)


# -- index --------------------------------------------------------------------------------------
@dataclass
class Item:
    """One image to ingest."""

    path: Path
    source_url: str
    subject: str | None = None
    expires_at: str | None = None
    notes: str | None = None


@dataclass
class Summary:
    """What an ingest run did."""

    indexed: int = 0
    faces: int = 0
    duplicates: int = 0
    no_face: int = 0
    unreadable: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # path, reason, message


def iter_folder(root: Path, args: argparse.Namespace) -> Iterator[Item]:
    """Images under a folder, in a stable order."""
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        rel = path.relative_to(root).as_posix()
        source = f"{args.source_prefix.rstrip('/')}/{rel}" if args.source_prefix else str(path.resolve())
        subject = args.subject or (path.parent.name if args.subject_from_folder and path.parent != root else None)
        yield Item(path, source, subject, args.expires_at)


def iter_manifest(manifest: Path) -> Iterator[Item]:
    """Rows of a CSV or JSONL manifest; raises ValueError with the line number for a bad row."""
    base = manifest.parent
    if manifest.suffix.lower() == ".jsonl":
        with manifest.open(encoding="utf-8") as fh:
            rows: Iterator[tuple[int, dict[str, Any]]] = (
                (n, json.loads(line)) for n, line in enumerate(fh, 1) if line.strip()
            )
            yield from _manifest_items(rows, base, manifest)
    else:
        with manifest.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise ValueError(f"{manifest}: the header must name at least: path, source_url")
            yield from _manifest_items(((n, r) for n, r in enumerate(reader, 2)), base, manifest)


def _manifest_items(rows: Iterator[tuple[int, dict[str, Any]]], base: Path, manifest: Path) -> Iterator[Item]:
    for line, row in rows:
        path = str(row.get("path") or "").strip()
        if not path:
            raise ValueError(f"{manifest}:{line}: the path is empty")
        p = Path(path)
        p = p if p.is_absolute() else base / p
        source = str(row.get("source_url") or "").strip() or str(p.resolve())
        yield Item(
            p, source, (row.get("subject") or None), (row.get("expires_at") or None), (row.get("notes") or None)
        )


async def cmd_index(args: argparse.Namespace) -> int:
    """Ingest a folder or a manifest, resumably, with a progress bar and a summary."""
    from tqdm import tqdm

    source: Path = args.source
    if not source.exists():
        print(f"sightline: error: {source} does not exist", file=sys.stderr)
        return 2
    try:
        items = list(iter_manifest(source) if source.is_file() else iter_folder(source, args))
    except (ValueError, OSError, json.JSONDecodeError) as exc:
        print(f"sightline: error: bad manifest: {exc}", file=sys.stderr)
        return 2
    if not items:
        print(f"sightline: no images found in {source}", file=sys.stderr)
        return 1
    summary = Summary()
    actor = cli_actor()
    async with open_engine(args, create=True) as engine:
        bar = tqdm(total=len(items), unit="img", disable=args.no_progress, dynamic_ncols=True, desc="indexing")
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
        # its error; ingest_one already absorbs what one bad image can cause.
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(max(1, args.concurrency)):
                    group.create_task(worker())
        finally:
            bar.close()
    report = write_report(args, summary)
    print(
        f"indexed {summary.indexed} image(s) with {summary.faces} face(s); "
        f"{summary.duplicates} already in the gallery; {summary.no_face} with no face; "
        f"{summary.unreadable} unreadable"
    )
    if report:
        print(f"failures listed in {report}")
    return 0 if summary.indexed or summary.duplicates else 1


async def ingest_one(engine: Engine, item: Item, actor: str, summary: Summary) -> None:
    """Enroll one file, counting the outcome instead of stopping the run."""
    try:
        data = await asyncio.to_thread(item.path.read_bytes)
        result = await engine.enroll(
            data, source_url=item.source_url, subject=item.subject, expires_at=item.expires_at,
            notes=item.notes, actor=actor, save=False,
        )
    except NoFaceFound as exc:
        summary.no_face += 1
        summary.failures.append((str(item.path), "no_face", str(exc)))
    except (ImageRejected, OSError) as exc:
        summary.unreadable += 1
        summary.failures.append((str(item.path), getattr(exc, "reason", "io"), str(exc)))
    except EngineError as exc:
        summary.unreadable += 1
        summary.failures.append((str(item.path), type(exc).__name__, str(exc)))
    else:
        if result.duplicate:
            summary.duplicates += 1
        else:
            summary.indexed += 1
            summary.faces += result.faces


def write_report(args: argparse.Namespace, summary: Summary) -> Path | None:
    """Write the failures to a CSV report; None when there were none."""
    if not summary.failures:
        return None
    path = args.report or Path(args.settings.data_dir) / f"ingest-report-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    path.parent.mkdir(mode=fsmodes.DIR_MODE, parents=True, exist_ok=True)
    with fsmodes.open_private(path, "w", newline="", encoding="utf-8") as fh:  # names and paths of case photos
        w = csv.writer(fh)
        w.writerow(["path", "reason", "message"])
        w.writerows(summary.failures)
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
        "threshold": result.threshold,
        "calibrated": result.calibrated,
        "gallery_faces": result.gallery_faces,
        "audit_seq": result.audit_id,
        "hits": [
            {"rank": h.rank, "subject": h.subject, "similarity": h.similarity, "band": h.band,
             "source_url": h.source_url, "image_sha256": h.image_sha256, "box": list(h.box), "face_id": h.face_id,
             "low_quality": h.low_quality, "false_match_rate": h.false_match_rate,
             "strangers_expected": h.strangers_expected}
            for h in result.hits
        ],
    }


def search_text(result: SearchResult) -> str:
    """A human-readable search result."""
    lines = [f"{len(result.faces)} face(s) found; searched face {result.searched}"]
    for f in result.faces:
        mark = "*" if f.number == result.searched else " "
        warn = f"  ({'; '.join(f.quality.warnings)})" if f.quality.warnings else ""
        lines.append(f" {mark} face {f.number}: box {f.box}, detector {f.det_score:.2f}, {f.quality.width_px} px{warn}")
    searched = result.faces[result.searched - 1]
    if not searched.quality.ok:
        lines.append("this photo is poor: treat any match as a weak lead")
    if not result.hits:
        lines.append(f"no match above the threshold ({result.threshold:.3f}) in {result.gallery_faces} gallery faces")
    else:
        lines.append("matches (leads, not identifications):")
        for h in result.hits:
            extra = ""
            if h.strangers_expected is not None:
                extra = f", ~{h.strangers_expected:.2g} strangers expected this close"
            lines.append(
                f"  {h.rank}. {h.subject or 'unlabelled'}  {h.similarity * 100:.1f}% ({h.band}{extra})  {h.source_url}"
            )
    if not result.calibrated:
        lines.append("note: no calibration table for this model; bands use the configured thresholds")
    return "\n".join(lines)


async def cmd_search(args: argparse.Namespace) -> int:
    """Search and print."""
    photo: Path = args.photo
    if not photo.is_file():
        print(f"sightline: error: {photo} is not a file", file=sys.stderr)
        return 2
    if args.settings.require_case and not (args.case or "").strip():
        print(
            "sightline: error: every search needs a case reference: add --case REF "
            "(or set SIGHTLINE_REQUIRE_CASE=false where your policy allows it)",
            file=sys.stderr,
        )
        return 2
    data = photo.read_bytes()
    async with open_engine(args) as engine:
        result = await engine.search(data, actor=cli_actor(), case=args.case, top=args.top, face=args.face)
    print(json.dumps(search_json(result), indent=2) if args.json else search_text(result))
    return 0


# -- forget / stats / purge ---------------------------------------------------------------------
async def cmd_forget(args: argparse.Namespace) -> int:
    """Erase images for good."""
    what = args.subject or args.source_url or args.image
    if not args.yes:
        if not sys.stdin.isatty():
            print("sightline: error: forget erases for good and asks first, but there is no terminal to ask on: "
                  "pass --yes to confirm (nothing erased)", file=sys.stderr)
            return 2
        answer = input(f"Erase every image of {what!r} with its faces, for good? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing erased")
            return 1
    async with open_engine(args) as engine:
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
    """The index's lines of `stats`: backend, where, size, shape and the latency of one lookup."""
    latency = f"{stats.index_latency_ms:.1f} ms per lookup" if stats.index_latency_ms is not None else "no lookup yet"
    if stats.index_backend == "milvus":
        size = f"~{stats.index_memory_bytes / 1e6:.1f} MB in the query nodes' RAM (estimate)"
    else:
        size = f"{stats.index_bytes / 1e6:.1f} MB on disk, {stats.index_memory_bytes / 1e6:.1f} MB in RAM"
    return (f"index           {stats.index_backend}: {stats.index_where}\n"
            f"                {size}; {stats.index_dims}-d, search breadth (ef) {stats.index_ef}; {latency}")


async def cmd_purge(args: argparse.Namespace) -> int:
    """Erase what has expired."""
    async with open_engine(args) as engine:
        erasure = await engine.purge_expired(actor=cli_actor())
    print(f"purged {erasure.images} expired image(s) with {erasure.faces} face(s)")
    return 0
