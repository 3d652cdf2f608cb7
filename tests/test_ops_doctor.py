"""`sightline doctor` on healthy and broken set-ups: exit codes, messages, and never the token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_ops_support import TOKEN, cli, engine_config, free_port, gallery_copy, threaded_get_me

from bot import doctor


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SIGHTLINE_TELEGRAM_TOKEN", "SIGHTLINE_MODE", "SIGHTLINE_WEBHOOK_URL", "SIGHTLINE_MODEL_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SIGHTLINE_INFERENCE_THREADS", "1")


def lines(out: str) -> dict[str, str]:
    """The report's check lines by check name: {"database": "✓ database  3 images, ..."}."""
    return {line.split()[1]: line for line in out.splitlines() if line[:1] in "✓!✗-" and len(line.split()) > 1}


def test_healthy_setup_passes_and_names_the_bot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = gallery_copy(tmp_path / "data")
    monkeypatch.setenv("SIGHTLINE_TELEGRAM_TOKEN", TOKEN)
    with threaded_get_me() as api:
        monkeypatch.setenv("SIGHTLINE_TELEGRAM_API_URL", api)
        code, out, err = cli("--data-dir", str(data), "doctor")
    assert code == 0, out + err
    checks = lines(out)
    for name in ("settings", "models", "data", "database", "index", "disk", "telegram"):
        assert checks[name].startswith("✓"), out
    assert "3 images, 3 faces" in checks["database"]
    assert "3 faces (projected to 192 dims), checksum ok, consistent with the database" in checks["index"]
    assert "@sightline_test_bot" in checks["telegram"]
    assert TOKEN not in out + err and TOKEN.split(":")[1] not in out + err
    assert out.rstrip().endswith("all checks passed")


def test_fresh_machine_is_fine_and_json_output_works(tmp_path: Path) -> None:
    code, out, err = cli("--data-dir", str(tmp_path / "new"), "doctor", "--skip-telegram", "--json")
    assert code == 0, out + err
    report = json.loads(out)
    by_name = {c["name"]: c for c in report["checks"]}
    assert report["ok"] is True
    assert "created at first start" in by_name["data dir"]["detail"]
    assert by_name["telegram"]["status"] == "skip"
    assert not (tmp_path / "new").exists()  # doctor creates nothing


def test_damaged_database_fails(tmp_path: Path) -> None:
    data = gallery_copy(tmp_path / "data")
    db = data / "sightline.sqlite3"
    db.write_bytes(b"this is not a database" * 500)
    code, out, _ = cli("--data-dir", str(data), "doctor", "--skip-telegram")
    assert code == 1
    checks = lines(out)
    assert checks["database"].startswith("✗") and "restore a backup" in checks["database"] + out
    assert checks["index"].startswith("-")
    assert "1 problem(s)" in out


def test_data_dir_that_is_a_file_fails(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("oops")
    code, out, _ = cli("--data-dir", str(tmp_path / "data"), "doctor", "--skip-telegram")
    assert code == 1
    assert lines(out)["data"].startswith("✗") and "is not a folder" in out


def test_index_out_of_step_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    data = gallery_copy(tmp_path / "data")
    (data / "gallery.usearch").unlink()
    code, out, _ = cli("--data-dir", str(data), "doctor", "--skip-telegram")
    assert code == 0, out
    assert lines(out)["index"].startswith("!") and "rebuilds it from the 3 faces" in out
    assert (data / "sightline.sqlite3").exists() and not (data / "gallery.usearch").exists()  # nothing repaired


def test_missing_models_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGHTLINE_MODEL_DIR", str(tmp_path / "no-models"))
    code, out, _ = cli("--data-dir", str(tmp_path / "data"), "doctor", "--skip-telegram")
    assert code == 1
    assert lines(out)["models"].startswith("✗") and "does not exist" in out


def test_telegram_problems_fail_without_showing_the_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    code, out, _ = cli("--data-dir", str(data), "doctor")
    assert code == 1 and "@BotFather" in lines(out)["telegram"] and "SIGHTLINE_TELEGRAM_TOKEN" in out

    monkeypatch.setenv("SIGHTLINE_TELEGRAM_TOKEN", TOKEN)
    with threaded_get_me(status=401) as api:
        monkeypatch.setenv("SIGHTLINE_TELEGRAM_API_URL", api)
        code, out, err = cli("--data-dir", str(data), "doctor")
    assert code == 1 and "rejected the token (HTTP 401)" in out
    assert TOKEN not in out + err

    monkeypatch.setenv("SIGHTLINE_TELEGRAM_API_URL", f"http://127.0.0.1:{free_port()}/bot")  # nobody listens
    code, out, err = cli("--data-dir", str(data), "doctor")
    assert code == 1 and "cannot reach the Bot API" in lines(out)["telegram"]
    assert TOKEN not in out + err and TOKEN.split(":")[1] not in out + err


def test_webhook_mode_needs_an_https_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGHTLINE_MODE", "webhook")
    monkeypatch.setenv("SIGHTLINE_WEBHOOK_URL", "http://bot.example.test/hook")
    code, out, _ = cli("--data-dir", str(tmp_path / "data"), "doctor", "--skip-telegram")
    assert code == 1
    assert lines(out)["settings"].startswith("✗") and "https://" in out


def test_low_disk_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert doctor.check_disk(engine_config(tmp_path / "data")).status == "ok"
    monkeypatch.setattr(doctor, "MIN_FREE_BYTES", 1 << 62)  # more than any disk has
    check = doctor.check_disk(engine_config(tmp_path / "data"))
    assert check.status == "warn" and check.detail.startswith("only ")


@pytest.mark.parametrize(("variable", "value", "says"), [
    ("SIGHTLINE_THRESHOLD_POSSIBLE", "NaN", "SIGHTLINE_THRESHOLD_POSSIBLE: Input should be a finite number"),
    ("SIGHTLINE_THRESHOLD_POSSIBLE", "-1.5", "SIGHTLINE_THRESHOLD_POSSIBLE: Input should be greater than or equal to -1"),
    ("SIGHTLINE_THRESHOLD_STRONG", "inf", "SIGHTLINE_THRESHOLD_STRONG: Input should be a finite number"),
    ("SIGHTLINE_THRESHOLD_STRONG", "1.5", "SIGHTLINE_THRESHOLD_STRONG: Input should be less than or equal to 1"),
    ("SIGHTLINE_THRESHOLD_STRONG", "-inf", "SIGHTLINE_THRESHOLD_STRONG: Input should be a finite number"),
])
def test_a_threshold_no_similarity_can_mean_is_refused_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str,
) -> None:
    """NaN listed every gallery face as a possible lead, 1.5 made nothing strong: a cosine similarity is in [-1, 1]."""
    monkeypatch.setenv(variable, value)
    code, out, err = cli("--data-dir", str(tmp_path / "new"), "doctor", "--skip-telegram")
    assert code == 2 and not out and err.strip() == f"sightline: bad setting: {says}", (code, out, err)
    code, out, _ = cli("--data-dir", str(tmp_path / "new"), "stats", "--json")
    assert code == 2 and json.loads(out)["error"] == {"type": "BadSetting", "reason": "settings", "message": f"bad setting: {says}"}
    assert not (tmp_path / "new").exists()


def test_strong_below_possible_is_refused_and_an_empty_threshold_is_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGHTLINE_THRESHOLD_POSSIBLE", "0.5")
    monkeypatch.setenv("SIGHTLINE_THRESHOLD_STRONG", "0.4")
    code, _, err = cli("--data-dir", str(tmp_path / "new"), "doctor", "--skip-telegram")
    assert code == 2 and err.strip() == ("sightline: bad setting: SIGHTLINE_THRESHOLD_STRONG=0.4 is below "
                                         "SIGHTLINE_THRESHOLD_POSSIBLE=0.5: every match listed would be strong"), err
    monkeypatch.setenv("SIGHTLINE_THRESHOLD_POSSIBLE", "")  # empty: unset, the calibration's per-class thresholds
    monkeypatch.setenv("SIGHTLINE_THRESHOLD_STRONG", "")
    code, out, err = cli("--data-dir", str(tmp_path / "new"), "doctor", "--skip-telegram")
    assert code == 0, out + err
    assert lines(out)["thresholds"].startswith("✓ thresholds  from the calibration table: possible 0."), out


@pytest.mark.parametrize(("variable", "value", "says"), [
    ("SIGHTLINE_THRESHOLD_STRONG", "0.2", "! thresholds  set by hand (strong 0.200): strong is below possible for overall (0.200 < 0.2"),
    ("SIGHTLINE_THRESHOLD_POSSIBLE", "0.5", "! thresholds  set by hand (possible 0.500): strong is below possible for overall (0.3"),
    ("SIGHTLINE_THRESHOLD_POSSIBLE", "-1", "! thresholds  set by hand (possible -1.000): at possible -1.000, 100% of strangers' faces "
     "are listed as matches"),
])
def test_doctor_warns_of_a_hand_set_threshold_that_crosses_the_calibrated_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str,
) -> None:
    """One threshold set, the other from the calibration table: allowed (each is in range), but strong below possible
    makes every listed hit strong, and a possible threshold of -1 lists every face: doctor says so, as a warning."""
    monkeypatch.setenv(variable, value)
    code, out, err = cli("--data-dir", str(tmp_path / "new"), "doctor", "--skip-telegram")
    assert code == 0, out + err  # warnings don't fail
    assert lines(out)["thresholds"].startswith(says), out
    assert "every match listed there is strong" in out or "listed as matches" in out


@pytest.mark.parametrize("kwargs", [{"threshold_possible": float("nan")}, {"threshold_strong": 1.5}, {"threshold_possible": -2.0},
                                    {"threshold_possible": 0.5, "threshold_strong": 0.4}])
def test_the_engine_refuses_those_thresholds_too(kwargs: dict[str, float]) -> None:
    """A program using the engine without the CLI's settings gets the same refusal."""
    from engine import EngineConfig

    with pytest.raises(ValueError, match="threshold"):
        EngineConfig(**kwargs)  # type: ignore[arg-type]
