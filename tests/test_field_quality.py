"""Field-quality probes: reproducible degradation, `eval --degrade`, quality-class calibration and matching."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.cli import main
from conftest import DEV, run_calibrate, shipped_calibration
from engine import Engine, EngineConfig
from engine import calibration as calib
from engine import degrade as degradation

PHOTO = DEV / "Colin_Powell" / "2.jpg"


def test_recipes_are_reproducible_per_photo_and_seed() -> None:
    data = PHOTO.read_bytes()
    a = degradation.degrade(data, "severe", "Colin_Powell/2.jpg", seed=0)
    assert a == degradation.degrade(data, "severe", "Colin_Powell/2.jpg", seed=0)
    # Another seed or another photo draws another recipe: no single recipe to tune to.
    recipes = {degradation.draw_recipe("severe", f"x/{i}.jpg", 0) for i in range(40)}
    assert len(recipes) == 40
    assert degradation.draw_recipe("severe", "k", 0) != degradation.draw_recipe("severe", "k", 1)
    with pytest.raises(ValueError, match="moderate, severe"):
        degradation.draw_recipe("awful", "k")


def test_severe_is_smaller_and_worse_than_moderate() -> None:
    data = PHOTO.read_bytes()
    w0, _ = Image.open(io.BytesIO(data)).size
    for i in range(12):
        key = f"p{i}"
        sev, mod = degradation.draw_recipe("severe", key), degradation.draw_recipe("moderate", key)
        assert sev.scale < mod.scale and sev.jpeg_quality < mod.jpeg_quality
        out = Image.open(io.BytesIO(degradation.apply(data, sev, key)))
        assert out.format == "JPEG"
        assert out.size[0] == (w0 if sev.upscale_back else max(8, round(w0 * sev.scale)))


def test_calibrate_builds_quality_class_tables(tmp_path: Path) -> None:
    t = run_calibrate(tmp_path, "table.json", 12, 3)
    assert t.pairs, "degraded copies must give at least one quality class a table"
    for name, table in t.pairs.items():
        assert name in calib.CLASSES
        assert all(b > a for a, b in zip(table.scores, table.scores[1:], strict=False))
        assert all(b <= a for a, b in zip(table.fmr, table.fmr[1:], strict=False))
        assert table.threshold_possible <= table.threshold_strong
        assert table.false_match_rate(table.threshold_possible) <= 0.1 * 1.25
    # A class threshold never loosens the overall one; the class's own odds are what a hit shows.
    for probe_ok in (True, False):
        for gallery_ok in (True, False):
            p, s = t.thresholds(probe_ok, gallery_ok)
            assert p >= t.threshold_possible and s >= t.threshold_strong
    name, table = next(iter(t.pairs.items()))
    a_ok, b_ok = {"good-good": (True, True), "good-poor": (True, False), "poor-poor": (False, False)}[name]
    assert t.false_match_rate(0.2, a_ok, b_ok) == table.false_match_rate(0.2)
    assert t.false_match_rate(0.2) == calib.interpolate_fmr(t.scores, t.fmr, t.impostor_pairs, 0.2)
    # Without the degraded copies there are no class tables (and the overall table is the same).
    p = run_calibrate(tmp_path, "plain.json", 12, 3, "--no-field")
    assert not p.pairs and (p.scores, p.fmr) == (t.scores, t.fmr)


@pytest.fixture(scope="module")
def severe_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`sightline eval --degrade severe` and a clean run on the same dev subset."""
    root = tmp_path_factory.mktemp("fieldq")
    out = {}
    for name, extra in (("clean", []), ("severe", ["--degrade", "severe"])):
        code = main(["--data-dir", str(root / "unused"), "eval", str(DEV), "--out", str(root / name),
                     "--max-identities", "10", "--max-per-identity", "4", "--no-progress", *extra])
        assert code == 0
        out[name] = json.loads((root / name / "metrics.json").read_text())
        out[name + "_md"] = (root / name / "report.md").read_text()
    return out


def test_eval_degrade_degrades_the_probes_only(severe_report: dict) -> None:
    clean, severe = severe_report["clean"], severe_report["severe"]
    assert clean["degrade"] is None and severe["degrade"] == {"level": "severe", "seed": 0}
    # Same gallery (clean), same probes, worse scores: the probes really were degraded.
    assert severe["counts"]["gallery_faces_indexed"] == clean["counts"]["gallery_faces_indexed"]
    assert severe["counts"]["probes"] == clean["counts"]["probes"]
    assert severe["scores"]["genuine_mean"] < clean["scores"]["genuine_mean"] - 0.05
    assert severe["quality"]["flagged"] > clean["quality"]["flagged"]
    assert "degraded, level severe" in severe_report["severe_md"]


def test_eval_reports_false_leads_by_probe_quality(severe_report: dict) -> None:
    for run in ("clean", "severe"):
        fl = severe_report[run]["false_leads"]
        a = fl["all"]
        assert a["probes"] == severe_report[run]["counts"]["probes"]
        for rule in ("overall", "quality"):
            x = a[rule]
            assert x["shown"] == x["mate_first"] + x["false_stranger"] + x["false_unlabelled"]
        # Quality-class thresholds are never below the overall one: they can only show fewer hits.
        assert a["quality"]["shown"] <= a["overall"]["shown"]
        assert a["quality"]["false_unlabelled"] <= a["overall"]["false_unlabelled"]
        assert fl["quality_ok"]["probes"] + fl["quality_flagged"]["probes"] + a["no_face"] == a["probes"]
        assert sum(r["probes"] for r in fl["by_width"].values()) + a["no_face"] == a["probes"]
    assert "## False leads" in severe_report["severe_md"]


async def test_hits_show_the_odds_of_their_quality_class(gallery_dir: Path) -> None:
    """A severely degraded probe against the dev gallery: each hit's false-match rate is its class's."""
    shipped = shipped_calibration()
    assert set(shipped.pairs) == {*calib.QUALITY_PAIRS, calib.SECOND_LOOK_GOOD}
    assert shipped.pairs["poor-poor"].threshold_possible > shipped.pairs["good-good"].threshold_possible
    engine = await Engine.open(EngineConfig(data_dir=gallery_dir, require_case=False))
    try:
        poor = degradation.apply(PHOTO.read_bytes(), degradation.Recipe(0.35, 0.0, 0, 8, True, 0.6, 0.6, 15, False))
        r = await engine.search(poor, actor="t", top=10, threshold=-1.0)
        probe_ok = r.faces[r.searched - 1].quality.ok
        assert not probe_ok, "the degraded probe must be flagged poor"
        for h in r.hits:
            table = shipped.table_for(probe_ok, not h.low_quality)
            assert table is not None
            assert h.false_match_rate == pytest.approx(table.false_match_rate(h.similarity), rel=0.02)  # similarity is rounded
        # With the default threshold, every hit clears its own class's "possible" threshold.
        r2 = await engine.search(poor, actor="t", top=10)
        for h in r2.hits:
            assert h.similarity >= engine.band_thresholds(probe_ok, not h.low_quality)[0]
        assert np.isfinite([h.similarity for h in r.hits]).all()
    finally:
        await engine.close()
