"""The shipped calibration table, its regeneration command, and the fallback for a model without one."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import DEV, run_calibrate, shipped_calibration
from engine import Engine, EngineConfig
from engine import calibration as calib
from engine.config import DEFAULT_RECOGNIZER, default_model_dir


@pytest.fixture(scope="module")
def table() -> calib.Calibration:
    """The table shipped for the default recognizer (w600k_mbf.onnx)."""
    return shipped_calibration()


def test_table_loads_for_the_default_model(table: calib.Calibration) -> None:
    assert table.impostor_pairs > 2_000_000  # all impostor pairs of the 2,254 calib photos
    assert table.genuine_pairs > 3000
    assert "calib" in table.source
    assert table.settings["primary_rule"] == "central"


def test_false_match_rate_is_monotone_and_bounded(table: calib.Calibration) -> None:
    assert all(b > a for a, b in zip(table.scores, table.scores[1:], strict=False))
    assert all(b <= a for a, b in zip(table.fmr, table.fmr[1:], strict=False))
    grid = np.linspace(-1.0, 1.0, 2001)
    rates = np.array([table.false_match_rate(s) for s in grid])
    assert np.all(np.diff(rates) <= 0)
    assert rates[0] == 1.0 and 0 < rates[-1] <= table.min_fmr
    assert np.all((rates > 0) & (rates <= 1))


def test_thresholds_are_ordered_and_match_their_rates(table: calib.Calibration) -> None:
    assert 0.2 < table.threshold_possible < table.threshold_strong < 0.5
    assert table.fmr_strong < table.fmr_possible
    assert table.fmr_possible <= calib.DEFAULT_POSSIBLE_FMR
    assert table.fmr_strong <= calib.DEFAULT_STRONG_FMR
    assert table.false_match_rate(table.threshold_possible) == pytest.approx(table.fmr_possible, rel=0.25)
    assert table.false_match_rate(table.threshold_strong) == pytest.approx(table.fmr_strong, rel=0.25)
    assert table.fmr_strong_interval is not None
    lo, hi = table.fmr_strong_interval
    assert lo <= table.fmr_strong <= hi
    assert table.tar_strong is not None and table.tar_strong > 0.98


def test_wording_says_how_many_strangers(table: calib.Calibration) -> None:
    text = table.describe(table.threshold_strong, 50_000)
    assert "1 stranger in" in text and "50,000" in text and "not an identification" in text
    assert "no stranger scored this high" in table.describe(0.95, 1000)
    assert "Not evidence" in table.describe(0.05, 1000)


async def test_hits_carry_false_match_estimates(gallery_dir: Path) -> None:
    engine = await Engine.open(EngineConfig(data_dir=gallery_dir, require_case=False))
    try:
        assert engine.calibration is not None
        assert engine.threshold_strong == engine.calibration.threshold_strong
        r = await engine.search((DEV / "Colin_Powell" / "2.jpg").read_bytes(), actor="t", top=3, threshold=-1.0)
        assert r.calibrated
        first, second = r.hits[0], r.hits[1]
        assert first.subject == "Colin_Powell" and first.band == "strong"
        assert first.false_match_rate is not None and first.strangers_expected is not None
        assert first.strangers_expected == pytest.approx(first.false_match_rate * r.gallery_faces)
        assert second.false_match_rate is not None and second.false_match_rate > first.false_match_rate
    finally:
        await engine.close()


def _model_without_table(folder: Path) -> Path:
    """A copy of the default models whose recognizer bytes differ (re-saved with another doc string)."""
    import onnx

    src = default_model_dir()
    folder.mkdir()
    (folder / "scrfd_500m_bnkps.onnx").symlink_to(src / "scrfd_500m_bnkps.onnx")
    model = onnx.load(str(src / DEFAULT_RECOGNIZER))
    model.doc_string = "an operator's own recognizer"
    onnx.save(model, str(folder / DEFAULT_RECOGNIZER))
    return folder


async def test_model_without_table_falls_back_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    models = _model_without_table(tmp_path / "models")
    config = EngineConfig(data_dir=tmp_path / "data", model_dir=models, require_case=False)
    with caplog.at_level(logging.WARNING, logger="engine.engine"):
        engine = await Engine.open(config)
    try:
        assert engine.calibration is None
        assert (engine.threshold_possible, engine.threshold_strong) == (calib.FALLBACK_POSSIBLE, calib.FALLBACK_STRONG)
        assert any("no calibration table" in r.getMessage() for r in caplog.records)
        photo = (DEV / "Tony_Blair" / "1.jpg").read_bytes()
        await engine.enroll(photo, source_url="https://x.example/1", subject="Tony_Blair")
        r = await engine.search((DEV / "Tony_Blair" / "2.jpg").read_bytes(), actor="t")
        assert not r.calibrated and r.hits
        assert r.hits[0].false_match_rate is None and r.hits[0].strangers_expected is None
    finally:
        await engine.close()
    # Configured thresholds win over the fallback.
    engine = await Engine.open(replace(config, threshold_possible=0.25, threshold_strong=0.45))
    try:
        assert (engine.threshold_possible, engine.threshold_strong) == (0.25, 0.45)
    finally:
        await engine.close()


def test_calibrate_command_writes_a_loadable_table(tmp_path: Path) -> None:
    t = run_calibrate(tmp_path, "table.json", 5, 2)
    assert (t.genuine_pairs, t.impostor_pairs) == (5, 10 * 9 // 2 - 5)  # 5 identities x 2 photos
