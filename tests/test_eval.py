"""`sightline eval` end to end on real dev photos, the metric functions, and the open-set protocol's premise."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bot.cli import main
from engine import Engine, EngineConfig, metrics
from engine.evaluate import load_labelled, make_plan

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEV = SHARED / "faces" / "dev"
REPORT_FILES = ("report.md", "metrics.json", "det.png", "scores.png", "worst_misses.png")


@pytest.fixture(scope="module")
def dev_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real `sightline eval` run on a dev subset: 8 identities, up to 3 photos each (23 photos)."""
    if not DEV.is_dir():
        pytest.fail(f"the shared face set is missing: {DEV}")
    root = tmp_path_factory.mktemp("eval")
    out = root / "report"
    code = main(["--data-dir", str(root / "unused"), "eval", str(DEV), "--out", str(out),
                 "--max-identities", "8", "--max-per-identity", "3", "--no-progress"])
    assert code == 0
    return out


def test_eval_writes_every_report_file(dev_report: Path) -> None:
    for name in REPORT_FILES:
        path = dev_report / name
        assert path.is_file() and path.stat().st_size > 0, name
    for name in ("det.png", "scores.png", "worst_misses.png"):
        assert (dev_report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (dev_report / "report.md").read_text()
    assert "## Protocol" in text and "rank-1" in text and "TAR" in text and "FNIR" in text


def test_eval_on_dev_finds_every_identity_first(dev_report: Path) -> None:
    m = json.loads((dev_report / "metrics.json").read_text())
    c = m["counts"]
    # Alex_Lacamoire has two photos, the next seven identities three or more.
    assert c["identities"] == 8 and c["gallery_photos"] == 8 and c["probes"] == 15
    assert c["nonmated_searches"] == 23 and c["no_face"] == 0
    assert m["identification"]["rank1"] == 1.0
    assert m["identification"]["rank5"] == 1.0
    # The probe embeddings used for verification are the ones the searches used.
    assert m["consistency_max_diff"] is not None and m["consistency_max_diff"] < 1e-3
    # Every genuine pair of the subset clears the lowest FAR threshold the subset can resolve.
    far3 = next(p for p in m["verification"] if p["target"] == 1e-3)
    assert far3["tar"] == 1.0
    assert c["genuine_pairs"] == 1 + 7 * 3 and c["impostor_pairs"] == 23 * 22 // 2 - 22
    assert m["calibrated"] is True and m["calibration_check"]


def test_labelled_folder_order_and_plan() -> None:
    photos = load_labelled(DEV)
    assert len(photos) == 174 and len({p.identity for p in photos}) == 28
    bush = [p.rel for p in photos if p.identity == "George_W_Bush"]
    assert bush[:3] == ["George_W_Bush/1.jpg", "George_W_Bush/2.jpg", "George_W_Bush/3.jpg"]
    assert bush[-1] == "George_W_Bush/10.jpg"  # natural order, not 1, 10, 2
    plan = make_plan(photos)
    assert plan.identities == 28 and len(plan.probes) == 174 - 28
    assert all(p.rel.endswith("/1.jpg") for p in plan.gallery)


def test_threshold_and_operating_points() -> None:
    impostor = np.arange(1000, dtype=np.float64) / 1000  # 0.000 .. 0.999
    t = metrics.threshold_at_rate(impostor, 0.01)
    assert np.sum(impostor >= t) == 10 and 0.989 < t <= 0.990
    assert metrics.threshold_at_rate(impostor, 1e-4) > impostor.max()  # below 1/n: above every impostor
    genuine = np.array([0.5, 0.995, 1.0])
    (p,) = metrics.verification_points(genuine, impostor, [0.01])
    assert p.errors == 10 and p.achieved == 0.01 and p.hit_rate == pytest.approx(2 / 3) and p.resolvable
    (q,) = metrics.verification_points(genuine, impostor, [1e-4])
    assert q.errors == 0 and not q.resolvable
    mated = np.array([0.9, 0.8, -np.inf, 0.2])
    nonmated = np.array([0.1, 0.3, 0.5, 0.25] * 25)
    (op,) = metrics.identification_points(mated, nonmated, [0.25])
    assert op.errors == 25 and op.threshold > 0.3 and 1 - op.hit_rate == pytest.approx(0.5)
    ranks = np.array([1, 1, 2, 0, 6])
    assert metrics.rank_k(ranks, 1) == 0.4 and metrics.rank_k(ranks, 5) == 0.6


def test_pair_scores_and_identity_bootstrap() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 8))
    labels = [f"id{i}" for i in range(20) for _ in range(3)]
    e = np.repeat(centres, 3, axis=0) + 0.3 * rng.normal(size=(60, 8))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    gen, imp = metrics.pair_scores(e, labels)
    assert len(gen) == 20 * 3 and len(imp) == 60 * 59 // 2 - 60
    assert gen.mean() > imp.mean() + 0.5
    full = e @ e.T
    assert np.allclose(np.sort(np.concatenate([gen, imp])), np.sort(full[np.triu_indices(60, 1)]), atol=1e-5)
    t = float(np.quantile(imp, 0.99))
    tail = metrics.high_impostor_pairs(e, labels, t - 0.1)
    point, lo, hi = metrics.bootstrap_fmr_interval(labels, tail, t, rounds=200)
    assert point == pytest.approx(np.mean(imp >= t))
    assert lo <= point <= hi


async def test_leaving_an_identity_out_equals_removing_it_from_the_answer(gallery_copy: Path) -> None:
    """The open-set protocol's premise: dropping an identity's images from a search's answer gives what a
    gallery without that identity answers (exact re-scoring), checked against a real `forget`."""
    engine = await Engine.open(EngineConfig(data_dir=gallery_copy, require_case=False))
    try:
        probe = (DEV / "Tony_Blair" / "2.jpg").read_bytes()
        full = await engine.search(probe, actor="t", top=20, threshold=-1.0)
        assert full.hits[0].subject == "Tony_Blair"
        without = [h for h in full.hits if h.subject != "Tony_Blair"]
        await engine.forget(subject="Tony_Blair", actor="t")
        held_out = await engine.search(probe, actor="t", top=20, threshold=-1.0)
        assert [(h.face_id, h.similarity) for h in held_out.hits[:10]] == \
               [(h.face_id, h.similarity) for h in without[:10]]
    finally:
        await engine.close()
