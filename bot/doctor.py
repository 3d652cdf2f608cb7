"""`sightline doctor`: can this machine run the bot? Models, data directory, database and index, disk, Telegram.

Every check reads; none repairs or creates anything (the engine repairs the index itself when it opens), except
`--fix`, which only removes group/other permission bits (`fix_file_modes`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from bot.i18n import LOCALES_DIR, SOURCE_LANGUAGE, LanguageError, Languages, catalog_files, describe, is_stale
from bot.settings import Settings
from bot.web import webhook_problems
from engine import EngineConfig, EngineError, calibration, fsmodes, integrity
from engine.audit import HeadLog
from engine.calibration import Calibration
from engine.store import DamagedFace

Status = Literal["ok", "warn", "fail", "skip"]
MARKS: dict[Status, str] = {"ok": "✓", "warn": "!", "fail": "✗", "skip": "-"}
MIN_FREE_BYTES = 1 << 30  # below 1 GB free we warn: the database, the index and its rebuild copy need room
TELEGRAM_TIMEOUT_S = 5.0
RESTORE_HINT = "restore a backup (`sightline restore SRC --force`, bot stopped)"


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome of one check."""

    name: str
    status: Status
    detail: str


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _can_write(folder: Path) -> str | None:
    """None if a file can be created in `folder`, else why not (an actual write: root ignores mode bits)."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def check_settings(settings: Settings) -> Check:
    """Mode-specific settings that pydantic cannot check alone."""
    address = f"{settings.http_host}:{settings.http_port}"
    if settings.mode == "webhook":
        problems = webhook_problems(settings)
        if problems:
            return Check("settings", "fail", "; ".join(problems))
        return Check("settings", "ok", f"webhook mode: {settings.webhook_url} -> {address}")
    http = "HTTP server off" if settings.http_port == 0 else f"/healthz and /metrics on {address}"
    return Check("settings", "ok", f"polling mode, {http}")


def check_languages(settings: Settings, locales_dir: Path = LOCALES_DIR) -> Check:
    """Every configured language has a catalog, compiled and current (else the bot compiles it at each start)."""
    try:
        languages = Languages.load(settings.language_tags, locales_dir)
    except LanguageError as exc:
        return Check("languages", "fail", f"SIGHTLINE_LANGUAGES: {exc}")
    stale = []
    for language in languages:
        if language.code == SOURCE_LANGUAGE:
            continue
        for name in dict.fromkeys((language.tag, language.code)):
            po, mo = catalog_files(name, locales_dir)
            if po.is_file() or mo.is_file():
                if is_stale(po, mo):
                    stale.append(name)
                break
    if stale:  # not a problem: the bot compiles those .po files in memory (a few ms each) and says so in its log
        return Check("languages", "ok", f"{describe(languages)}; {', '.join(stale)} not compiled or older than the .po: "
                     "compiled at each start (scripts/catalogs compile)")
    return Check("languages", "ok", describe(languages))


def check_models(config: EngineConfig) -> Check:
    """Find the ONNX files and open their sessions, as the bot does at start."""
    return open_models(config)[0]


def open_models(config: EngineConfig) -> tuple[Check, Calibration | None]:
    """`check_models`, and the calibration table of the recognizer it found (None: none shipped, or no models)."""
    from engine.faces import FaceModel

    try:
        model = FaceModel(config)
    except EngineError as exc:
        return Check("models", "fail", str(exc)), None
    return (Check("models", "ok", f"{model.name} in {model.detector_path.parent}: sessions open"),
            calibration.for_model(model.recognizer_sha256))


# The comparisons a search bands by (probe quality, gallery quality): unknown (the overall table), then the classes.
BAND_CLASSES: tuple[tuple[str, bool | None, bool | None], ...] = (
    ("overall", None, None), ("good-good", True, True), ("good-poor", True, False), ("poor-poor", False, False),
)
# A hand-set "possible" threshold at which more than this share of strangers would be listed is reported.
MAX_POSSIBLE_FMR = 0.01


def check_thresholds(settings: Settings, table: Calibration | None) -> Check:
    """The match thresholds in use: hand-set ones (SIGHTLINE_THRESHOLD_*) that cross the calibration's other threshold of
    some quality class (strong below possible: every listed hit strong), or at which many strangers are listed, warn."""
    possible, strong = settings.threshold_possible, settings.threshold_strong
    if possible is None and strong is None:
        if table is None:
            return Check("thresholds", "ok", f"no calibration table for this model: possible {calibration.FALLBACK_POSSIBLE:.3f}, "
                         f"strong {calibration.FALLBACK_STRONG:.3f} (built-in)")
        return Check("thresholds", "ok", f"from the calibration table: possible {table.threshold_possible:.3f}, strong "
                     f"{table.threshold_strong:.3f} overall (higher for poor photos)")
    problems, crossed = [], []
    for name, probe_ok, gallery_ok in BAND_CLASSES:
        if table is None:
            p_cls, s_cls = calibration.FALLBACK_POSSIBLE, calibration.FALLBACK_STRONG
        elif name == "overall" or table.table_for(probe_ok, gallery_ok) is not None:
            p_cls, s_cls = table.thresholds(probe_ok, gallery_ok)
        else:
            continue
        p_use = p_cls if possible is None else possible
        s_use = s_cls if strong is None else strong
        if s_use < p_use:
            crossed.append(f"{name} ({s_use:.3f} < {p_use:.3f})")
    if crossed:
        problems.append(f"strong is below possible for {', '.join(crossed)} comparisons: every match listed there is strong")
    if possible is not None and table is not None:
        fmr = table.false_match_rate(possible)
        if fmr > MAX_POSSIBLE_FMR:
            problems.append(f"at possible {possible:.3f}, {fmr:.0%} of strangers' faces are listed as matches")
    given = ", ".join(f"{k} {v:.3f}" for k, v in (("possible", possible), ("strong", strong)) if v is not None)
    if problems:
        return Check("thresholds", "warn", f"set by hand ({given}): {'; '.join(problems)}")
    return Check("thresholds", "ok", f"set by hand ({given}), for every quality class")


def check_data_dir(config: EngineConfig) -> Check:
    """The data directory exists (or can be created) and is writable."""
    data_dir = Path(config.data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        return Check("data dir", "fail", f"{data_dir} exists but is not a folder (SIGHTLINE_DATA_DIR)")
    if not data_dir.exists():
        parent = _nearest_existing(data_dir)
        why = _can_write(parent) if parent.is_dir() else "not a folder"
        if why:
            return Check("data dir", "fail", f"{data_dir} does not exist and cannot be created in {parent}: {why}")
        return Check("data dir", "ok", f"{data_dir} does not exist yet; it is created at first start")
    why = _can_write(data_dir)
    if why:
        return Check("data dir", "fail", f"{data_dir} is not writable by this user ({why})")
    as_root = " (checked as root: run doctor as the bot's user to check its rights)" if running_as_root() else ""
    return Check("data dir", "ok", f"{data_dir.resolve()} is writable{as_root}")


async def check_database_and_index(config: EngineConfig, deep: bool = False) -> list[Check]:
    """Run quick_check, open the database, verify the audit chain against its head file, and compare the
    saved index with the database: its gallery id and checksum, its faces, and with `deep` every stored
    embedding and every index vector (nothing is rebuilt)."""
    from engine.store import MetadataStore

    if not config.db_path.is_file():
        return [
            Check("database", "ok", f"no database yet at {config.db_path}: an empty gallery is created at first start"),
            Check("index", "skip", "no database yet"),
        ]
    # A plain sqlite3 connection first: a file SQLite can't read must not reach MetadataStore.open, which
    # leaves its connection thread running when opening fails (the process would then never exit).
    problem = await asyncio.to_thread(_quick_check, config.db_path)
    if problem:
        return [
            Check("database", "fail", f"{config.db_path} is damaged or unreadable ({problem}): {RESTORE_HINT}"),
            Check("index", "skip", "database unreadable"),
        ]
    try:
        store = await MetadataStore.open(config.db_path)
    except EngineError as exc:
        return [Check("database", "fail", f"{exc}: {RESTORE_HINT}"), Check("index", "skip", "database unreadable")]
    try:
        counts = await store.counts()
        count, key_sum = await store.face_fingerprint()
        gallery_id = store.gallery_id
        chain = await store.verify_audit(HeadLog(config.audit_head_path))
        damaged = [d async for _, d in store.damaged_faces() if d is not None] if deep else []
    finally:
        await store.close()
    database = Check(
        "database", "ok",
        f"{counts['images']} images, {counts['faces']} faces, {counts['users']} users, "
        f"{counts['audit_entries']} audit entries; quick_check ok",
    )
    checks = [database]
    if deep:
        checks.append(_rows_check(damaged, count))
    checks.append(
        Check("audit", "ok", f"chain of {chain.entries} entries verified, agrees with {config.audit_head_path}")
        if chain.ok else
        Check("audit", "fail", f"AUDIT CHAIN BROKEN at entry {chain.first_bad_seq}: {chain.problem}")
    )
    if config.index_backend == "milvus":
        return [*checks, await asyncio.to_thread(check_milvus, config, count, key_sum, gallery_id)]
    return checks + await _index_checks(config, count, key_sum, gallery_id, deep, {d.face_id for d in damaged})


def _rows_check(damaged: list[DamagedFace], count: int) -> Check:
    if not damaged:
        return Check("rows", "ok", f"all {count} stored embeddings match their checksums and are unit vectors")
    shown = "; ".join(f"face {d.face_id} (image {d.image_id}): {d.problem}" for d in damaged[:5])
    more = f" and {len(damaged) - 5} more" if len(damaged) > 5 else ""
    return Check("rows", "fail", f"{len(damaged)} damaged stored embedding(s), never ranked in searches: {shown}"
                 f"{more}. {RESTORE_HINT[0].upper()}{RESTORE_HINT[1:]}, or erase and re-enrol those images")


async def _index_checks(
    config: EngineConfig, count: int, key_sum: int, gallery_id: str | None, deep: bool, damaged: set[int]
) -> list[Check]:
    """The saved index against the database: sidecar (gallery, checksum), fingerprint, and with `deep` every vector."""
    from engine.backup import index_fingerprint
    from engine.index import read_sidecar
    fp = await asyncio.to_thread(index_fingerprint, config.index_path)
    if fp is None:
        if count == 0:
            return [Check("index", "ok", "no index file yet (the gallery is empty)")]
        return [Check(
            "index", "warn",
            f"{config.index_path} is missing or unreadable: the engine rebuilds it from the {count} faces at start",
        )]
    sidecar = read_sidecar(config.index_path)
    problem = await asyncio.to_thread(integrity.sidecar_problem, config.index_path, sidecar, gallery_id)
    if problem:
        return [Check("index", "warn", f"{config.index_path} is not used: {problem}; the engine rebuilds it "
                                       f"from the {count} faces at start")]
    projected = sidecar.get("projection")
    shape = f"projected to {str(projected).split(':')[0]} dims" if projected else "full vectors"
    if (fp.faces, fp.key_sum) != (count, key_sum):
        return [Check(
            "index", "warn",
            f"the index holds {fp.faces} faces, the database {count}: the engine repairs the index at start",
        )]
    checks = [Check("index", "ok", f"{count} faces ({shape}), checksum ok, consistent with the database")]
    if deep:
        checks.append(await _vectors_check(config, sidecar, damaged))
    return checks


async def _vectors_check(config: EngineConfig, sidecar: dict[str, object], damaged: set[int]) -> Check:
    """Every index vector against its stored embedding, projected as the engine projects it (int8 tolerance)."""
    from usearch.index import Index

    from engine import hamming, projection
    from engine.engine import make_index
    from engine.faces import FaceModel
    from engine.hamming import HammingIndex
    from engine.store import MetadataStore

    try:
        model = await asyncio.to_thread(FaceModel, config)
    except EngineError as exc:
        return Check("vectors", "skip", f"face models unavailable ({exc})")
    proj = projection.for_model(model.recognizer_sha256, config.index_dims)
    if (proj.key if proj else None) != sidecar.get("projection"):
        return Check("vectors", "skip", "the index was built with another projection: the engine rebuilds it at start")
    if hamming.saved_keys(config.index_path) is not None:  # the default index kind: its own file format
        held = make_index(config, model.recognizer_sha256)
        if not isinstance(held, HammingIndex):
            return Check("vectors", "skip", "the index file is of another kind than SIGHTLINE_INDEX_KIND: the engine "
                                            "rebuilds it at start")
        held.gallery_id = sidecar.get("gallery_id")  # type: ignore[assignment]  # the gallery was checked above
        if not await asyncio.to_thread(held.load):
            return Check("vectors", "skip", "the index was built with another code model: the engine rebuilds it at start")
        index = held
    else:
        index = await asyncio.to_thread(Index.restore, str(config.index_path), True)
    store = await MetadataStore.open(config.db_path, create=False)
    bad: list[int] = []
    checked = 0
    try:
        async for ids, vecs in store.iter_embeddings():
            keep = np.array([i not in damaged for i in ids.tolist()], dtype=bool)
            ids, vecs = ids[keep], vecs[keep]
            if not len(ids):
                continue
            want = proj.apply(vecs) if proj else vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
            if isinstance(index, HammingIndex):
                got = index.vectors(ids)  # its int8 rows, de-quantised: the same projected unit vectors
            else:
                got = np.asarray(index.get(ids.astype(np.uint64), dtype=np.float32), dtype=np.float32)
            got = got.reshape(len(ids), -1)
            norms = np.linalg.norm(got, axis=1)
            cos = np.einsum("ij,ij->i", got, want) / np.maximum(norms, 1e-12)
            bad.extend(ids[~(cos >= integrity.INDEX_VECTOR_MIN_COSINE)].tolist())
            checked += len(ids)
    finally:
        await store.close()
    if not bad:
        return Check("vectors", "ok", f"all {checked} index vectors match their stored embeddings "
                                      f"(cosine >= {integrity.INDEX_VECTOR_MIN_COSINE} after int8 quantisation)")
    shown = ", ".join(map(str, bad[:10])) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
    return Check("vectors", "fail", f"{len(bad)} index vector(s) do not match their stored faces ({shown}): those "
                                    f"faces are not found; delete {config.index_path} and the engine rebuilds it at start")


def check_milvus(config: EngineConfig, count: int, key_sum: int, gallery_id: str | None = None) -> Check:
    """Reach the Milvus server within its timeout and compare the collection's faces with the database's."""
    from engine.errors import IndexUnavailable
    from engine.milvus_index import MilvusIndex

    index = MilvusIndex(config.milvus_uri, config.milvus_collection, config.milvus_token, timeout=config.milvus_timeout)
    where = index.where
    try:
        version = index.ping()
        meta = index.stored_meta()
        if meta is None:
            if count == 0:
                return Check("index", "ok", f"{where} (Milvus {version}): no collection yet (the gallery is empty)")
            return Check("index", "warn", f"{where} (Milvus {version}): the collection is missing; the engine "
                         f"builds it from the {count} faces at start")
        if meta.get("gallery") and gallery_id and meta.get("gallery") != gallery_id:
            return Check("index", "fail", f"{where} belongs to another gallery ({meta.get('gallery')}; this database is "
                         f"{gallery_id}): set SIGHTLINE_MILVUS_COLLECTION to a collection of its own")
        index.ndim = int(meta.get("ndim", 0) or 0)
        index._call("collection load", lambda c: c.load_collection(index.collection, timeout=index.slow_timeout))
        keys = index.keys()
    except IndexUnavailable as exc:
        return Check("index", "fail", f"{exc}. Is the server running and SIGHTLINE_MILVUS_URI right? (the timeout is "
                     f"SIGHTLINE_MILVUS_TIMEOUT={config.milvus_timeout:g} s)")
    finally:
        index.close()
    projected = meta.get("projection")
    shape = f"projected to {str(projected).split(':')[0]} dims" if projected else "full vectors"
    if meta.get("codes"):
        shape = f"{meta.get('index')}: {str(meta['codes']).split(':')[0]}-bit sign codes"
    elif meta.get("index"):
        shape = f"{meta.get('index')}: {shape}"
    if (len(keys), int(keys.sum())) == (count, key_sum):
        return Check("index", "ok", f"{where} (Milvus {version}): {count} faces ({shape}), consistent with the database")
    return Check("index", "warn", f"{where} holds {len(keys)} faces, the database {count}: the engine repairs the "
                 "collection at start")


def _quick_check(db: Path) -> str | None:
    """None when SQLite's quick_check passes, else what is wrong."""
    try:
        conn = sqlite3.connect(str(db), timeout=10)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return str(exc)
    return None if rows == [("ok",)] else "; ".join(str(r[0]) for r in rows[:3])


def private_roots(config: EngineConfig, also: Sequence[Path] = ()) -> list[Path]:
    """Where biometric and case data live: the data directory (database, index, reports), the audit head file
    (which may be elsewhere) and any `also` paths."""
    roots = list(dict.fromkeys(p.absolute() for p in (Path(config.data_dir), config.audit_head_path, *map(Path, also))))
    return [r for r in roots if not any(r != other and r.is_relative_to(other) for other in roots)]


def check_file_modes(config: EngineConfig, also: Sequence[Path] = ()) -> Check:
    """No file or folder holding biometric or case data may be open to group or other accounts."""
    roots = private_roots(config, also)
    found = fsmodes.exposed(roots)
    where = ", ".join(str(r) for r in roots if r.exists())
    if not where:
        return Check("file modes", "ok", "nothing written yet")
    if not found:
        return Check("file modes", "ok", f"everything under {where} is owner-only")
    shown = "; ".join(str(e) for e in found[:5]) + (f"; and {len(found) - 5} more" if len(found) > 5 else "")
    return Check(
        "file modes", "fail",
        f"{len(found)} file(s)/folder(s) readable by other accounts: {shown}. Run `sightline doctor --fix` "
        "to make them owner-only (files 0600, folders 0700)",
    )


def fix_file_modes(config: EngineConfig, also: Sequence[Path] = ()) -> list[str]:
    """Remove group/other bits under the data directory and `also`; one line per change (or failure)."""
    return [
        f"made owner-only: {item.path} ({item.mode:04o} -> {item.mode & ~fsmodes.OTHERS:04o})" if why is None
        else f"could not make owner-only: {item.path} ({why})"
        for item, why in fsmodes.fix(fsmodes.exposed(private_roots(config, also)))
    ]


def check_disk(config: EngineConfig) -> Check:
    """Free space where the data lives."""
    where = _nearest_existing(Path(config.data_dir))
    usage = shutil.disk_usage(where)
    free = f"{usage.free / 1e9:.1f} GB free on the disk of {where}"
    if usage.free < MIN_FREE_BYTES:
        return Check("disk", "warn", f"only {free}: the index is rewritten in full on saves and erasures")
    return Check("disk", "ok", free)


async def check_telegram(settings: Settings, timeout: float = TELEGRAM_TIMEOUT_S) -> Check:
    """Ask the Bot API who we are (getMe). Nothing printed contains the token."""
    if settings.telegram_token is None or not settings.telegram_token.get_secret_value():
        return Check(
            "telegram", "fail",
            "no token: create a bot with @BotFather and set SIGHTLINE_TELEGRAM_TOKEN "
            "(the CLI, e.g. `sightline search`, works without it; --skip-telegram skips this check)",
        )
    host = urlsplit(settings.telegram_api_url).netloc or settings.telegram_api_url
    url = f"{settings.telegram_api_url}{settings.telegram_token.get_secret_value()}/getMe"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url) as resp,
        ):
            status = resp.status
            body = await resp.json(content_type=None)
    except TimeoutError:
        return Check("telegram", "fail", f"{host} did not answer within {timeout:.0f} s")
    except (aiohttp.ClientError, ValueError) as exc:
        # aiohttp's messages can carry the URL, and the URL carries the token: say only what and where.
        return Check("telegram", "fail", f"cannot reach the Bot API at {host} ({type(exc).__name__})")
    if status in (401, 404):
        return Check("telegram", "fail", f"{host} rejected the token (HTTP {status}): check SIGHTLINE_TELEGRAM_TOKEN")
    result = body.get("result") if isinstance(body, dict) and body.get("ok") else None
    if status != 200 or not isinstance(result, dict):
        return Check("telegram", "fail", f"{host} answered getMe with HTTP {status}")
    who = f"@{result.get('username')} (id {result.get('id')})"
    return Check("telegram", "ok", f"the Bot API at {host} knows this bot as {who}")


async def run_checks(
    settings: Settings, *, telegram: bool = True, deep: bool = False, also: Sequence[Path] = ()
) -> list[Check]:
    """Every check, in the order they are printed; `also`: more files or folders that must be owner-only."""
    config = settings.engine_config()
    models, table = await asyncio.to_thread(open_models, config)
    checks = [check_settings(settings), check_thresholds(settings, table), check_languages(settings), models,
              check_data_dir(config)]
    checks.append(await asyncio.to_thread(check_file_modes, config, also))
    checks += await check_database_and_index(config, deep)
    checks.append(check_disk(config))
    if telegram:
        checks.append(await check_telegram(settings))
    else:
        checks.append(Check("telegram", "skip", "not checked (--skip-telegram)"))
    return checks


def render(checks: list[Check]) -> str:
    """The report: one line per check, then a summary line."""
    width = max(len(c.name) for c in checks)
    lines = [f"{MARKS[c.status]} {c.name.ljust(width)}  {c.detail}" for c in checks]
    failed = sum(c.status == "fail" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    if failed:
        lines.append(f"{failed} problem(s), {warned} warning(s): the bot will not work until the ✗ lines are fixed")
    elif warned:
        lines.append(f"no problems, {warned} warning(s)")
    else:
        lines.append("all checks passed")
    return "\n".join(lines)


def exit_code(checks: list[Check]) -> int:
    """1 when any check failed, else 0 (warnings don't fail)."""
    return 1 if any(c.status == "fail" for c in checks) else 0


def running_as_root() -> bool:
    """True when run as root (every permission check then passes, which hides the container's real user)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0
