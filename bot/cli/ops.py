"""Operations commands: run, doctor, backup, restore, index-migrate, config-docs."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from bot.cli import add_command, add_json
from engine import Engine

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the operations sub-commands."""
    p = add_command(
        sub, "run", cmd_run,
        help="run the Telegram bot",
        description="Run the bot until interrupted: long polling by default, or a webhook behind your HTTPS proxy "
        "(SIGHTLINE_MODE=webhook). Both serve /healthz and /metrics on SIGHTLINE_HTTP_HOST:SIGHTLINE_HTTP_PORT. Needs "
        "SIGHTLINE_TELEGRAM_TOKEN (from @BotFather) and SIGHTLINE_ADMINS (your numeric Telegram id); without a token it "
        "says how to get one. Exits 1 with one line if the Bot API cannot be reached.",
    )

    p = add_command(
        sub, "doctor", cmd_doctor,
        help="check that this machine can run the bot",
        description="Check the settings, the face models, the data directory (writable, and owner-only: no file "
        "readable by other accounts), the database, the audit chain (against its head file), the index (its gallery id "
        "and checksum), free disk space and (with a token) that the Bot API answers. Prints one line per check; exits 1 "
        "if any failed.",
    )
    p.add_argument("--skip-telegram", action="store_true", help="don't contact the Bot API (offline machines)")
    add_json(p, "print JSON instead of text")
    p.add_argument("--deep", action="store_true",
                   help="also verify every stored embedding (checksum, unit length) and every index vector against "
                   "it (reads the whole gallery: minutes at 1 M faces)")
    p.add_argument(
        "--fix", action="store_true",
        help="first make every file and folder of the data directory (and --also paths) owner-only: files 0600, folders 0700",
    )
    p.add_argument(
        "--also", type=Path, action="append", default=[], metavar="PATH",
        help="another file or folder holding Sightline data (backups, eval reports, audit exports) whose modes to check; "
        "repeatable",
    )

    p = add_command(
        sub, "backup", cmd_backup,
        help="copy the database and index to a new folder, safely while the bot runs",
        description="Take a consistent copy of the data directory into DEST (a new or empty folder): the database "
        "through SQLite's online backup (the running bot keeps writing), the index file, and manifest.json with "
        "counts and SHA-256 of each file. The copy holds biometric data: keep it as safe as the original.",
    )
    p.add_argument("dest", type=Path, help="folder to create for the backup")

    p = add_command(
        sub, "restore", cmd_restore,
        help="restore a backup into the data directory (bot stopped)",
        description="Verify the backup in SRC (manifest, SHA-256 of each file, SQLite integrity_check), copy it into "
        "the data directory, then open the engine so the index is reconciled with the database. Refuses a data "
        "directory that is not empty unless --force, and refuses while the bot has the database open.",
    )
    p.add_argument("src", type=Path, help="a folder written by `sightline backup`")
    p.add_argument("--force", action="store_true", help="replace the database and index already in the data directory")

    p = add_command(
        sub, "index-migrate", cmd_index_migrate,
        help="copy the gallery's vectors into the other index backend (embedded or Milvus) and remove the old copy",
        description="Build the index of backend TO (embedded: a file in the data folder, of SIGHTLINE_INDEX_KIND or "
        "the kind named: hamming or usearch; milvus: the Milvus collection "
        "SIGHTLINE_MILVUS_COLLECTION at SIGHTLINE_MILVUS_URI) from the database's embeddings, check it holds exactly "
        "the database's faces, then erase the copy in the other backend, so no "
        "erased face can linger there. The switch itself is a setting: set SIGHTLINE_INDEX_BACKEND=TO for the bot "
        "and the CLI (with --env-file, this command writes it into that file). Stop the bot first; start it again "
        "with the new setting.",
    )
    p.add_argument("--to", required=True, choices=["milvus", "embedded", "hamming", "usearch"],
                   help="the backend to move to (hamming, usearch: embedded, of that kind)")
    p.add_argument("--env-file", type=Path, help="also set SIGHTLINE_INDEX_BACKEND (and with hamming or usearch "
                   "SIGHTLINE_INDEX_KIND) in this dotenv file (e.g. .env)")
    p.add_argument("--keep-old", action="store_true", help="leave the old backend's copy in place (not recommended: "
                   "faces erased later stay in it)")

    p = add_command(
        sub, "config-docs", cmd_config_docs,
        help="print the configuration reference (Markdown), or check/update it in a file",
        description="Print the table of every SIGHTLINE_* setting, generated from bot/settings.py. With --check FILE, "
        "compare it with the block between the markers in FILE and exit 1 if they differ; with --write FILE, "
        "regenerate that block.",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--check", type=Path, metavar="FILE", help="exit 1 if FILE's configuration block is stale")
    g.add_argument("--write", type=Path, metavar="FILE", help="regenerate FILE's configuration block in place")


# -- run -------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    """Run the bot (bot.app owns the Application; it is imported only here, as it loads Telegram)."""
    from bot.logs import redact_also

    settings = args.settings
    redact_also(
        settings.telegram_token.get_secret_value() if settings.telegram_token else None,
        settings.webhook_secret.get_secret_value() if settings.webhook_secret else None,
    )
    try:
        from bot.app import run
    except ModuleNotFoundError as exc:
        if exc.name not in ("bot.app", "telegram"):
            raise
        print(f"sightline: error: the bot front-end is not available ({exc})", file=sys.stderr)
        return 1
    return int(run(settings) or 0)


# -- doctor ----------------------------------------------------------------------------------------
async def cmd_doctor(args: argparse.Namespace) -> int:
    """Run every check and print the report."""
    from bot import doctor

    if args.fix:
        changed = await asyncio.to_thread(doctor.fix_file_modes, args.settings.engine_config(), args.also)
        for line in changed:
            print(line, file=sys.stderr if args.json else sys.stdout)
    checks = await doctor.run_checks(args.settings, telegram=not args.skip_telegram, deep=args.deep, also=args.also)
    if args.json:
        report = {
            "ok": doctor.exit_code(checks) == 0,
            "checks": [{"name": c.name, "status": c.status, "detail": c.detail} for c in checks],
        }
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(doctor.render(checks))
    return doctor.exit_code(checks)


# -- backup / restore ------------------------------------------------------------------------------
def _mb(n: int | None) -> str:
    return f"{(n or 0) / 1e6:.1f} MB"


def cmd_backup(args: argparse.Namespace) -> int:
    """Take a backup and print what it holds (in the main thread: Ctrl-C or SIGTERM stops it and removes
    the partial copy; a backup killed outright is removed by the next one into the same parent folder)."""
    from engine.backup import create_backup

    manifest = create_backup(args.settings.engine_config(), args.dest)
    c = manifest["counts"]
    files = manifest["files"]
    index = manifest["index"]
    index_note = (
        "no index file (rebuilt from the database on restore)" if index is None
        else f"index {_mb(files[index['file']]['bytes'])}, "
        + ("consistent with the database" if index["consistent"] else "behind the database (reconciled on restore)")
    )
    print(
        f"backed up {c['images']} images, {c['faces']} faces, {c['users']} users, {c['audit_entries']} audit entries "
        f"to {args.dest}\ndatabase {_mb(files[manifest['database']['file']]['bytes'])} (integrity ok); {index_note}"
    )
    return 0


async def cmd_restore(args: argparse.Namespace) -> int:
    """Restore a backup, then open the engine to reconcile the index and check the counts."""
    from engine.backup import restore_backup

    config = args.settings.engine_config()
    manifest: dict[str, Any] = await asyncio.to_thread(restore_backup, config, args.src, force=args.force)
    engine = await Engine.open(config)  # restores the index, or repairs/rebuilds it from the database
    try:
        stats = await engine.stats()
        index_faces = len(engine.index)
        chain = await engine.audit_verify()
    finally:
        await engine.close()
    want = manifest["counts"]
    got = {"images": stats.images, "faces": stats.faces, "users": stats.users, "audit_entries": stats.audit_entries}
    if got != want or index_faces != stats.faces:
        print(
            f"sightline: error: after the restore the gallery holds {got} with {index_faces} faces in the index; "
            f"the backup recorded {want}",
            file=sys.stderr,
        )
        return 1
    print(
        f"restored the backup of {manifest['created_at']} into {config.data_dir}: {got['images']} images, "
        f"{got['faces']} faces (index consistent), {got['users']} users, {got['audit_entries']} audit entries; "
        f"audit chain {'verified' if chain.ok else 'BROKEN: ' + str(chain.problem)}"
    )
    return 0 if chain.ok else 1


# -- index-migrate ---------------------------------------------------------------------------------
def set_env_line(path: Path, key: str, value: str) -> None:
    """Set KEY=value in a dotenv file: replace its line (commented-out or not) or append one; atomic."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    out, done = [], False
    for line in lines:
        bare = line.strip().lstrip("#").strip().removeprefix("export ").strip()
        if bare.split("=", 1)[0].strip() == key and "=" in bare:
            if not done:
                out.append(f"{key}={value}")
                done = True
            continue
        out.append(line)
    if not done:
        out.append(f"{key}={value}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(out) + "\n", encoding="utf-8")
    tmp.replace(path)


async def cmd_index_migrate(args: argparse.Namespace) -> int:
    """Build the other backend's index from the database, check it, drop the old copy, and say how to switch."""
    from dataclasses import replace

    from engine.engine import backend_of
    from engine.errors import EngineError
    from engine.milvus_index import MilvusIndex

    config = args.settings.engine_config()
    to = "milvus" if args.to == "milvus" else "embedded"
    kind = args.to if args.to in ("hamming", "usearch") else config.index_kind
    source = "embedded" if to == "milvus" else "milvus"
    target = replace(config, index_backend=to, index_kind=kind)
    engine = await Engine.open(target)  # builds (or repairs) the target index from the database, logging progress
    try:
        db_ids = await engine.store.face_ids()
        keys = await asyncio.to_thread(engine.index.keys)
        index = engine.index
        where = index.where if isinstance(index, MilvusIndex) else f"the {kind} index {target.index_path}"
        if len(keys) != len(db_ids) or set(keys.tolist()) != set(db_ids.tolist()):
            print(f"sightline: error: {where} holds {len(keys)} faces, the database {len(db_ids)}; nothing was switched",
                  file=sys.stderr)
            return 1
        assert backend_of(index) == to
    finally:
        await engine.close()
    note = ""
    if not args.keep_old:
        old = (MilvusIndex(config.milvus_uri, config.milvus_collection, config.milvus_token, timeout=config.milvus_timeout)
               if source == "milvus" else None)
        try:
            await asyncio.to_thread(_drop_copy, old, config)
            note = f"; the {source} copy was erased"
        except EngineError as exc:
            note = f"; the {source} copy could NOT be erased ({exc}): erase it by hand"
    settings = {"SIGHTLINE_INDEX_BACKEND": to, **({"SIGHTLINE_INDEX_KIND": kind} if args.to != to else {})}
    if args.env_file:
        for key, value in settings.items():
            set_env_line(args.env_file, key, value)
    print(f"the gallery's {len(db_ids)} faces are in {where}{note}.")
    shown = " ".join(f"{k}={v}" for k, v in settings.items())
    if args.env_file:
        print(f"{args.env_file}: {shown} written; restart the bot to switch over.")
    elif config.index_backend == to and config.index_kind == kind:
        print(f"{shown} is already set here: make sure the bot and every CLI use it too.")
    else:
        print(f"Switch over: set {shown} wherever the bot and the CLI get their settings "
              "(.env, compose.yaml, the service unit), then restart the bot.")
    return 0


def _drop_copy(milvus: Any, config: Any) -> None:
    """Erase an index backend's copy: the Milvus collection (`milvus`), or (None) the embedded index file
    (overwritten first) and its sidecar."""
    if milvus is not None:
        try:
            if milvus._call("collection check", lambda c: c.has_collection(milvus.collection, timeout=milvus.timeout)):
                milvus._call("collection drop", lambda c: c.drop_collection(milvus.collection, timeout=milvus.slow_timeout))
        finally:
            milvus.close()
        return
    from engine.index import sidecar_path

    for path in (Path(config.index_path), sidecar_path(config.index_path)):
        if path.exists():
            size = path.stat().st_size
            with open(path, "r+b") as fh:  # a plain unlink leaves the blocks readable on disk until reused
                fh.write(b"\0" * size)
                fh.flush()
                os.fsync(fh.fileno())
            path.unlink()


# -- config-docs -----------------------------------------------------------------------------------
def cmd_config_docs(args: argparse.Namespace) -> int:
    """Print, check or write the configuration table."""
    from bot import configdoc

    if args.check:
        ok, message = configdoc.compare(args.check)
        print(message if ok else f"sightline: error: {message}", file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 1
    if args.write:
        try:
            text = args.write.read_text(encoding="utf-8")
            args.write.write_text(configdoc.replace_block(text), encoding="utf-8")
        except (OSError, ValueError) as exc:
            print(f"sightline: error: {args.write}: {exc}", file=sys.stderr)
            return 1
        print(f"{args.write}: configuration table written")
        return 0
    sys.stdout.write(configdoc.config_block())
    return 0
