"""What a new operator types while following the README, carelessly: options after the command, one photo instead
of a folder, folder options with a manifest, a subject with a line break, a past expiry, output piped into `head`,
a backup path that is wrong, `--help` of every command. The real `sightline` CLI, models, SQLite and index."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from test_ops_support import QUERY, REPO, cli, gallery_copy

from bot.cli import build_parser
from conftest import DEV

SIGHTLINE = Path(sys.executable).with_name("sightline")
OBAMA = DEV / "Barack_Obama" / "2.jpg"


def subjects(data: Path) -> list[str | None]:
    """The subject of every image in the gallery at `data`."""
    with sqlite3.connect(data / "sightline.sqlite3") as db:
        return [r[0] for r in db.execute("SELECT subject FROM images ORDER BY id")]


def every_command(parser: argparse.ArgumentParser, prefix: str = "sightline") -> list[tuple[str, argparse.ArgumentParser]]:
    """Every (sub-)command's parser below `parser`, with its full name."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [(f"{prefix} {name}", sub), *every_command(sub, f"{prefix} {name}")]
    return found


def test_every_command_explains_itself_in_its_help() -> None:
    commands = every_command(build_parser())
    assert len(commands) >= 20
    unexplained = [name for name, p in commands if len(p.description or "") < 30]
    assert not unexplained, f"--help shows no description for: {unexplained}"
    run = dict(commands)["sightline run"].format_help()
    assert "SIGHTLINE_TELEGRAM_TOKEN" in run and "SIGHTLINE_ADMINS" in run  # what it needs to start


def test_global_options_work_after_the_command_too(tmp_path: Path) -> None:
    data = gallery_copy(tmp_path / "data")
    code, out, err = cli("stats", "--data-dir", str(data))
    assert code == 0 and "faces           3" in out, err
    code, out, err = cli("--data-dir", str(tmp_path / "nowhere"), "audit", "verify", "--data-dir", str(data))
    assert code == 0 and "audit chain OK" in out, err  # after the command wins, as it was typed last
    code, _, err = cli("--data-dir", str(tmp_path / "nowhere"), "stats")
    assert code == 1 and "no gallery at" in err  # before the command still counts when it is not repeated


def test_one_photo_is_indexed_whatever_its_name(tmp_path: Path) -> None:
    """`sightline index photo.jpg` indexes that photo; it used to be read as a manifest ("line 1 is not UTF-8")."""
    data = tmp_path / "data"
    code, out, err = cli("--data-dir", str(data), "index", str(OBAMA), "--subject-from-folder", "--no-progress")
    assert code == 0 and "indexed 1 image(s)" in out, out + err
    assert subjects(data) == ["Barack_Obama"]  # its folder's name
    named = tmp_path / "export.csv"  # recognised by content, as in a folder
    named.write_bytes((DEV / "Tony_Blair" / "2.jpg").read_bytes())
    code, out, err = cli("--data-dir", str(data), "index", str(named), "--subject", "Tony Blair", "--no-progress")
    assert code == 0 and "indexed 1 image(s)" in out, out + err
    assert subjects(data) == ["Barack_Obama", "Tony Blair"]
    code, out, err = cli("--data-dir", str(data), "search", str(DEV / "Tony_Blair" / "3.jpg"), "--case", "C-1", "--json")
    assert code == 0 and json.loads(out)["hits"][0]["subject"] == "Tony Blair", err


@pytest.mark.parametrize(("options", "needle"), [
    (["--subject", "Ann\nSmith"], "--subject: the subject contains a line break"),
    (["--expires-at", "2020-01-01"], "--expires-at 2020-01-01 is in the past"),
    (["--expires-at", "31/12/2030"], "--expires-at: expires_at '31/12/2030' is not an ISO date"),
])
def test_a_bad_folder_option_stops_the_run_before_any_file(tmp_path: Path, options: list[str], needle: str) -> None:
    """One clear error up front, not the same refusal for each of a thousand photos."""
    data = tmp_path / "data"
    code, out, err = cli("--data-dir", str(data), "index", str(DEV / "Tony_Blair"), *options, "--json")
    assert code == 2, out + err
    error = json.loads(out)["error"]
    assert error["type"] == "InvalidArgument" and error["message"].startswith(needle), error
    assert not data.exists()  # nothing was read, nothing created


def test_folder_options_with_a_manifest_are_refused_not_ignored(tmp_path: Path) -> None:
    manifest = tmp_path / "gallery.csv"
    manifest.write_text(f"path,source_url\n{OBAMA},https://records.example/1\n", encoding="utf-8")
    data = tmp_path / "data"
    code, _, err = cli("--data-dir", str(data), "index", str(manifest), "--subject", "Someone", "--expires-at", "2030-01-01")
    assert code == 2 and "--subject, --expires-at are for a folder" in err and "is a manifest" in err, err
    assert not data.exists()
    # argparse: the two ways of naming a subject exclude each other
    code, _, err = cli("--data-dir", str(data), "index", str(DEV / "Tony_Blair"), "--subject", "A", "--subject-from-folder")
    assert code == 2 and "not allowed with argument" in err, err


def test_errors_in_json_mode_always_name_their_type(tmp_path: Path) -> None:
    """README: with --json, errors are {"error": {"type", "reason", "message"}}, the early ones too."""
    code, out, _ = cli("--data-dir", str(tmp_path), "search", str(tmp_path / "missing.jpg"), "--case", "C-1", "--json")
    assert code == 2 and json.loads(out)["error"] == {
        "type": "NotFound", "reason": "not_found", "message": f"{tmp_path / 'missing.jpg'} is not a file"}
    code, out, _ = cli("--data-dir", str(tmp_path), "search", str(QUERY), "--json")
    assert code == 2 and json.loads(out)["error"]["type"] == "CaseRequired"
    bad = tmp_path / "bad.csv"
    bad.write_text("name,url\nx,y\n", encoding="utf-8")
    code, out, _ = cli("--data-dir", str(tmp_path), "index", str(bad), "--json")
    assert code == 2 and json.loads(out)["error"]["type"] == "ManifestError"


def test_output_piped_into_a_reader_that_stops_ends_quietly(tmp_path: Path) -> None:
    """`sightline audit export | head -1`: the reader leaves early; no "BrokenPipeError" line, the shell's 141."""
    data = gallery_copy(tmp_path / "data")
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    try:
        proc = subprocess.run([str(SIGHTLINE), "--data-dir", str(data), "audit", "export"], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=240, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        os.close(write)
    assert proc.returncode == 128 + signal.SIGPIPE and proc.stderr == "", proc.stderr


def test_restore_from_a_wrong_path_says_what_is_wrong(tmp_path: Path) -> None:
    code, _, err = cli("--data-dir", str(tmp_path / "data"), "restore", str(tmp_path / "no-such-backup"))
    assert code == 1 and "no-such-backup does not exist" in err, err
    code, _, err = cli("--data-dir", str(tmp_path / "data"), "restore", str(QUERY))
    assert code == 1 and "2.jpg is a file: a backup is the folder `sightline backup` wrote" in err, err


def test_stats_shows_a_lookup_time_not_the_first_call_warm_up(tmp_path: Path) -> None:
    """A fresh process's first index lookup also loads the scan kernels (~0.7 s); stats reports a real lookup."""
    data = gallery_copy(tmp_path / "data")
    proc = subprocess.run([str(SIGHTLINE), "--data-dir", str(data), "stats", "--json"], capture_output=True, text=True,
                          timeout=240, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["index_latency_ms"] < 100


@pytest.mark.parametrize("n", ["2", "-2"])
def test_audit_tail_shows_the_last_entries_however_the_count_is_typed(tmp_path: Path, n: str) -> None:
    """`audit tail -2` (the Unix habit) printed the whole log: SQLite reads LIMIT -2 as no limit."""
    data = gallery_copy(tmp_path / "data")
    code, everything, err = cli("--data-dir", str(data), "audit", "tail", "1000")
    assert code == 0 and len(everything.splitlines()) > 2, err
    code, out, err = cli("--data-dir", str(data), "audit", "tail", n)
    assert code == 0 and out.splitlines() == everything.splitlines()[-2:], err


def test_forget_of_a_name_typed_differently_names_the_stored_one_and_erases_nothing(tmp_path: Path) -> None:
    data = gallery_copy(tmp_path / "data")  # holds Colin_Powell, Hugo_Chavez, George_W_Bush
    code, _, err = cli("--data-dir", str(data), "forget", "--subject", "colin powell", "--yes")
    assert code == 1 and "no subject 'colin powell' in the gallery; did you mean 'Colin_Powell'?" in err, err
    code, _, err = cli("--data-dir", str(data), "forget", "--subject", "100%", "--yes")  # LIKE's wildcards are escaped
    assert code == 1 and "did you mean" not in err, err
    assert subjects(data).count("Colin_Powell") == 1


@pytest.mark.parametrize(("argv", "says"), [
    (["index", "photos", "--concurrency", "0"], "0 is out of range: give 1 to 64"),
    (["index", "photos", "--concurrency", "-5"], "-5 is out of range: give 1 to 64"),
    (["index", "photos", "--concurrency", "100000"], "100000 is out of range: give 1 to 64"),
    (["index", "photos", "--concurrency", "four"], "'four' is not a whole number"),
    (["index", "photos", "--save-every", "0"], "give a positive number"),
    (["index", "photos", "--save-every", "nan"], "give a positive number"),
    (["search", "p.jpg", "--top", "0"], "0 is out of range: give 1 to 100"),
    (["search", "p.jpg", "--face", "0"], "0 is out of range: give 1 to 1000"),  # was FaceIndexError after the analysis
    (["search", "p.jpg", "--face", "99999999999999999999"], "out of range: give 1 to 1000"),
    (["eval", "faces", "--worst", "-1"], "-1 is out of range"),
    (["eval", "faces", "--max-identities", "0"], "0 is out of range"),
    (["index", ""], "an empty path"),  # index "$DIR" with DIR unset: not the current folder
    (["index", "  "], "an empty path"),
])
def test_numbers_out_of_range_are_usage_errors(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err, err


def test_numbers_in_range_are_taken() -> None:
    args = build_parser().parse_args(["index", "photos", "--concurrency", "64", "--save-every", "2.5"])
    assert (args.concurrency, args.save_every) == (64, 2.5)
    assert build_parser().parse_args(["search", "p.jpg", "--top", "100"]).top == 100


@pytest.mark.parametrize(("argv", "says", "usage"), [
    (["search", "p.jpg", "--top", "0", "--json"], "0 is out of range: give 1 to 100", "search"),
    (["search", "--json"], "the following arguments are required: photo", "search"),
    (["stats", "--bogus", "--json"], "unrecognized arguments: --bogus", "stats"),  # was the top-level parser's usage
    (["stats", "--json", "--bogus"], "unrecognized arguments: --bogus", "stats"),
    (["--json", "stats", "--bogus"], "unrecognized arguments: --bogus", "stats"),  # --json before the command
    (["stats", "--json=yes"], "argument --json: ignored explicit argument 'yes'", "stats"),  # was argparse's text
    (["--json=yes", "stats"], "argument --json: ignored explicit argument 'yes'", ""),  # the top-level parser's option
    (["index", "photos", "--concurrency", "x", "--js"], "'x' is not a whole number", "index"),  # --json abbreviated, as argparse takes it
    (["forget", "--subject", "x", "--json"], "unrecognized arguments: --json", "forget"),  # no --json here, but JSON was asked for
    (["--json", "forget", "--subject", "x"], "argument --json: this command has no JSON output", "forget"),
    (["--json", "audit", "tail", "3"], "argument --json: this command has no JSON output", "audit tail"),
    (["audit", "tail", "99999999999999999999", "--json"], "99999999999999999999 is out of range: give 0 to 1000000000", "audit tail"),
    (["--json"], "give a command", ""),
    (["--json", "nonsense"], "invalid choice: 'nonsense'", ""),
])
def test_usage_errors_with_json_are_one_json_object(argv: list[str], says: str, usage: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """README: with --json (before or after the command), errors are JSON on standard output; argparse's usage errors
    too (exit 2, nothing on stderr), with the usage of the command that refused them."""
    from bot.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and err == "", err
    assert len(out.splitlines()) == 1, out
    error = json.loads(out)["error"]
    assert error["type"] == "UsageError" and error["reason"] == "usage", error
    expected = f"usage: sightline {usage} ".replace("  ", " ") if usage else "usage: sightline [-h]"
    assert says in error["message"] and error["usage"].startswith(expected), error
    assert error["message"].startswith(f"sightline {usage}:".replace(" :", ":")), error


def test_json_goes_before_or_after_the_command(tmp_path: Path) -> None:
    """`sightline --json stats` was refused ("unrecognized arguments: --json"); it is `sightline stats --json`."""
    data = gallery_copy(tmp_path / "data")
    before = cli("--json", "--data-dir", str(data), "stats")
    after = cli("--data-dir", str(data), "stats", "--json")
    assert before[0] == after[0] == 0, (before, after)
    first, second = json.loads(before[1]), json.loads(after[1])
    assert first.keys() == second.keys() and first["faces"] == second["faces"] == 3, after  # (a latency differs)
    code, out, _ = cli("--json", "--data-dir", str(tmp_path / "nowhere"), "stats")  # errors after parsing: JSON too
    assert code == 1 and json.loads(out)["error"]["type"] == "StorageError", out
    code, out, err = cli("--data-dir", str(data), "stats")  # neither: text
    assert code == 0 and out.startswith("images"), (out, err)


def test_an_unknown_option_after_a_command_shows_that_commands_usage(capsys: pytest.CaptureFixture[str]) -> None:
    from bot.cli import main

    assert main(["stats", "--bogus"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("usage: sightline stats") and "sightline stats: error: unrecognized arguments: --bogus" in err, err


def test_usage_errors_without_json_stay_argparse_text(capsys: pytest.CaptureFixture[str]) -> None:
    from bot.cli import main

    assert main(["search", "p.jpg", "--top", "0"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("usage: sightline search") and "0 is out of range: give 1 to 100" in err, err


@pytest.mark.parametrize("n", ["99999999999999999999", "-99999999999999999999", "1000000001"])
def test_audit_tail_of_a_huge_count_is_a_usage_error_naming_the_range(n: str, capsys: pytest.CaptureFixture[str]) -> None:
    """It printed "OverflowError: Python int too large to convert to SQLite INTEGER"."""
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["audit", "tail", n])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"{n.lstrip('-')} is out of range: give 0 to 1000000000" in err and "Overflow" not in err, err


def test_forget_of_an_unknown_subject_says_so_without_asking(tmp_path: Path) -> None:
    """It asked "Erase every image of 'Nobody'...? [y/N]" (or, with no terminal, asked for --yes) before finding out."""
    data = gallery_copy(tmp_path / "data")
    code, out, err = cli("--data-dir", str(data), "forget", "--subject", "Nobody")  # no --yes, and no terminal here
    assert code == 1 and "no subject 'Nobody' in the gallery" in err and "--yes" not in err and "Erase" not in out, err
    code, _, err = cli("--data-dir", str(data), "forget", "--subject", "Colin_Powell")  # a real one: still asks first
    assert code == 2 and "pass --yes" in err, err
    assert subjects(data).count("Colin_Powell") == 1


def forget_on_a_terminal(data: Path, answer: bytes, *argv: str) -> subprocess.CompletedProcess[str]:
    """`sightline forget ARGV` with a real terminal (a pseudo-terminal) as its input, typing `answer`."""
    import pty

    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen([str(SIGHTLINE), "--data-dir", str(data), "forget", *argv], stdin=follower,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        os.close(follower)
        os.write(leader, answer)
        out, err = proc.communicate(timeout=240)
    finally:
        os.close(leader)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_forget_on_a_terminal_asks_only_for_what_exists_and_says_how_much(tmp_path: Path) -> None:
    data = gallery_copy(tmp_path / "data")
    unknown = forget_on_a_terminal(data, b"y\n", "--subject", "Nobody")
    assert unknown.returncode == 1 and "Erase" not in unknown.stdout and "no subject 'Nobody'" in unknown.stderr, unknown
    known = forget_on_a_terminal(data, b"y\n", "--subject", "Colin_Powell")
    assert known.returncode == 0, known.stderr
    assert "Erase the 1 image(s) of subject 'Colin_Powell'" in known.stdout and "erased 1 image(s)" in known.stdout, known
    assert "Colin_Powell" not in subjects(data)


def test_a_non_image_named_like_a_photo_is_not_an_image_not_a_bad_manifest(tmp_path: Path) -> None:
    fake = tmp_path / "photo.jpg"
    fake.write_text("not an image at all\n", encoding="utf-8")
    code, out, err = cli("--data-dir", str(tmp_path / "data"), "index", str(fake), "--json")
    summary = json.loads(out)
    assert code == 1 and summary["not_image"] == 1 and summary["manifest_errors"] == 0, out
    assert [(f["path"], f["reason"]) for f in summary["failures"]] == [(str(fake), "not_image")]
    code, out, err = cli("--data-dir", str(tmp_path / "data"), "index", str(fake), "--no-progress")
    assert code == 1 and "1 skipped (not an image)" in out and "manifest" not in err + out, err


def test_a_folder_s_other_files_are_ignored_not_counted_as_skipped_images(tmp_path: Path) -> None:
    """Only files named as images (.jpg, .png, …) or holding one (whatever the name) are candidates; a folder's
    LABELS.csv, README.md or .DS_Store are not images the run skipped. -v lists them."""
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(DEV / "Colin_Powell" / "1.jpg", folder / "colin.jpg")
    shutil.copy(DEV / "Tony_Blair" / "1.jpg", folder / "IMG_0001")  # no extension: found by its content
    (folder / "broken.jpg").write_bytes(b"\x00 not a jpeg")  # named as a photo: reported, the run goes on
    (folder / "LABELS.csv").write_text("path,subject\ncolin.jpg,Colin_Powell\n", encoding="utf-8")
    (folder / "README.md").write_text("# photos\n", encoding="utf-8")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    code, out, err = cli("--data-dir", str(tmp_path / "data"), "index", str(folder), "--json")
    summary = json.loads(out)
    assert code == 0 and summary["indexed"] == 2 and summary["not_image"] == 1 and summary["ignored"] == 3, out
    assert [f["reason"] for f in summary["failures"]] == ["not_image"] and summary["failures"][0]["path"].endswith("broken.jpg")
    code, out, err = cli("-v", "--data-dir", str(tmp_path / "data"), "index", str(folder), "--no-progress")
    assert code == 0 and "2 already in the gallery" in out and "1 skipped (not an image)" in out, out
    assert "3 file(s) left out" in err and "LABELS.csv" in err and "README.md" in err, err
    assert "3 other file(s) left out" in out, out  # the text summary counts them too


def test_verbose_logs_hold_no_face_bytes_and_no_library_internals(tmp_path: Path) -> None:
    """With -v, aiosqlite's debug records carried every INSERT's parameters: a face's JPEG thumbnail and its embedding
    reached the log, where `forget` cannot erase them (found by a hostile tester); numba's compiler wrote ~43,000 lines."""
    data = tmp_path / "data"
    code, out, err = cli("-v", "--data-dir", str(data), "index", str(OBAMA), "--subject", "Barack Obama", "--no-progress")
    assert code == 0 and "indexed 1 image(s)" in out, out + err
    code, out, err2 = cli("-v", "--data-dir", str(data), "search", str(DEV / "Barack_Obama" / "2.jpg"), "--case", "C-9")
    assert code == 0, out + err2
    log = err + err2
    assert "DEBUG" in log  # -v took effect: our own debug records are there
    assert "xff\\xd8" not in log and "\\xd8\\xff" not in log  # no JPEG bytes (a thumbnail, or the probe)
    assert "INSERT" not in log and "aiosqlite" not in log
    assert "numba" not in log.lower()
    with sqlite3.connect(data / "sightline.sqlite3") as db:
        blob = db.execute("SELECT embedding FROM faces LIMIT 1").fetchone()[0]
    assert blob[:16].hex() not in log and repr(blob[:12])[2:-1] not in log  # nor the embedding, raw or escaped
