"""A small, poor probe (a face 18-40 px wide) whose hit is "strong": the answer says one coherent thing about it."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot import texts
from bot.cli import main
from bot.i18n import ENGLISH as EN
from bot.i18n import load_language
from conftest import DEV, make_config, new_user_id
from engine import Engine

PROBE = "Barack_Obama/2.jpg"  # its mate, Barack_Obama/1.jpg, is in the dev gallery
WEAK = "treat any match as a weak lead"


def shrunk(rel: str, face_px: int, clean_width: float) -> bytes:
    """The dev photo `rel` scaled down so that its face (`clean_width` px wide in the original) is `face_px` wide."""
    img = Image.open(DEV / rel).convert("RGB")
    s = face_px / clean_width
    small = img.resize((max(8, round(img.width * s)), max(8, round(img.height * s))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=90)
    return buf.getvalue()


async def tiny_probes(engine: Engine) -> list[bytes]:
    """PROBE with its face 24 and 32 px wide."""
    clean = next(f for f in await engine.detect((DEV / PROBE).read_bytes()) if f.primary)
    return [shrunk(PROBE, px, clean.box[2] - clean.box[0]) for px in (24, 32)]


async def test_a_strong_hit_on_a_tiny_probe_is_not_called_a_weak_lead(start_bot: Any, gallery_copy: Path) -> None:
    """Over the real bot: the face is flagged poor (too small), its mate's hit is strong with the good-poor class's odds,
    and the poor-photo line says the odds allow for the photo instead of calling every match weak."""
    engine = await Engine.open(make_config(gallery_copy, require_case=True))
    try:
        bot = await start_bot(engine=engine)
        officer = new_user_id()
        await bot.allow(officer)
        for probe in await tiny_probes(engine):
            r = await engine.search(probe, actor="t", case="C-1")
            q = r.faces[r.searched - 1].quality
            assert not q.ok and q.width_px < 40 and any(w.endswith("px wide") for w in q.warnings)
            assert r.hits[0].subject == "Barack_Obama" and r.hits[0].band == "strong"
            bot.fake.send_photo(officer, probe)
            reply = await bot.fake.wait_for("sendPhoto", chat_id=officer)
            lines = reply.text.splitlines()
            first = next(line for line in lines if line.startswith("1. "))
            assert first.startswith("1. Barack_Obama - ") and "(strong)" in first, reply.text
            poor = [line for line in lines if line.startswith("This photo is poor (")]
            assert len(poor) == 1 and "px wide" in poor[0], reply.text
            assert WEAK not in reply.text, reply.text  # not "weak" beside "strong"
            assert poor[0].endswith("the odds shown for a strong match allow for its quality; "
                                    "treat a possible match as a weak lead."), reply.text
    finally:
        await engine.close()


BY_HAND = ("and the match thresholds were set by hand: a strong match does not allow for its quality; "
           "treat any match as a weak lead.")


async def test_with_the_strong_threshold_set_by_hand_the_line_does_not_claim_calibrated_odds(
        start_bot: Any, gallery_copy: Path, tmp_path: Path) -> None:
    """SIGHTLINE_THRESHOLD_STRONG set: "strong" is the operator's one score for every quality class, not the poor class's
    calibrated threshold, so the line said something untrue ("the odds shown for a strong match allow for its
    quality"); now it says the thresholds were set by hand."""
    from bot.settings import Settings

    settings = Settings(data_dir=gallery_copy, threshold_strong=0.35, require_case=True)  # as SIGHTLINE_THRESHOLD_STRONG
    engine = await Engine.open(settings.engine_config())
    try:
        bot = await start_bot(engine=engine, threshold_strong=0.35)
        officer = new_user_id()
        await bot.allow(officer)
        probe = (await tiny_probes(engine))[0]
        r = await engine.search(probe, actor="t", case="C-1")
        assert not r.faces[r.searched - 1].quality.ok and r.hits[0].band == "strong" and r.strong_threshold_set
        bot.fake.send_photo(officer, probe)
        reply = await bot.fake.wait_for("sendPhoto", chat_id=officer)
        poor = [line for line in reply.text.splitlines() if line.startswith("This photo is poor (")]
        assert len(poor) == 1 and "px wide" in poor[0] and poor[0].endswith(BY_HAND), reply.text
        assert "allow for its quality;" not in reply.text.replace(BY_HAND, ""), reply.text
        bot.fake.set_user_language(officer, "fr")  # the officer's Telegram app is in French
        bot.fake.send_photo(officer, probe)
        reply = await bot.fake.wait_for("sendPhoto", chat_id=officer)
        assert "les seuils de correspondance ont été fixés à la main" in reply.text, reply.text
    finally:
        await engine.close()


@pytest.mark.parametrize("language", ["fr_BE", "nl_BE", "de_BE"])
def test_the_strong_hit_line_is_said_in_every_language(language: str) -> None:
    t = load_language(language)
    warnings = ("face is 24 px wide",)
    weak, strong = texts.quality_warning(t, warnings), texts.quality_warning(t, warnings, strong_hit=True)
    assert weak and strong and weak != strong
    assert texts.warning_text(t, warnings[0]) in strong
    assert strong != texts.quality_warning(EN, warnings, strong_hit=True)  # translated, not left in English
    assert t.pgettext("band", "strong") in strong  # the band word the hit line shows
    assert t.pgettext("band", "possible") in strong
    by_hand = texts.quality_warning(t, warnings, strong_hit=True, strong_set=True)
    assert by_hand and by_hand not in (weak, strong) and texts.warning_text(t, warnings[0]) in by_hand
    assert by_hand != texts.quality_warning(EN, warnings, strong_hit=True, strong_set=True)
    assert texts.quality_warning(t, warnings, strong_hit=True, calibrated=False) == weak  # no calibration: no odds to vouch for


def small_probe(tmp_path: Path) -> Path:
    """The first of tiny_probes' small faces, written to tmp_path/small.jpg (for the CLI, outside an event loop)."""
    import asyncio

    async def probes() -> list[bytes]:
        engine = await Engine.open(make_config(tmp_path / "scratch"))
        try:
            return await tiny_probes(engine)
        finally:
            await engine.close()

    probe = tmp_path / "small.jpg"
    probe.write_bytes(asyncio.run(probes())[0])
    return probe


def test_the_cli_says_the_same(gallery_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    probe = small_probe(tmp_path)
    code = main(["--data-dir", str(gallery_copy), "search", str(probe), "--case", "C-1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Barack_Obama" in out and "strong" in out and "px wide" in out
    assert WEAK not in out
    assert "this photo is poor: the odds shown for a strong match allow for its quality" in out


def test_the_cli_says_when_the_strong_threshold_was_set_by_hand(gallery_copy: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    probe = small_probe(tmp_path)
    monkeypatch.setenv("SIGHTLINE_THRESHOLD_STRONG", "0.35")
    code = main(["--data-dir", str(gallery_copy), "search", str(probe), "--case", "C-1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Barack_Obama" in out and "(strong" in out, out
    assert "this photo is poor and the match thresholds were set by hand: a strong match does not allow for its quality" in out
    assert "the odds shown for a strong match allow" not in out, out
    code = main(["--data-dir", str(gallery_copy), "search", str(probe), "--case", "C-1", "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["strong_threshold_set"] is True


async def test_an_exact_copy_of_a_poor_gallery_photo_shows_its_odds_as_a_bound(tmp_path: Path) -> None:
    """The poor-poor table has 240,093 impostor pairs, none above 0.51: an exact copy (100 %) of a poor gallery photo got
    half of 1/240,093, so it read as less sure ("1 in 120,000" here) than a good photo's 49 % hit on a poor probe ("1 in
    1,200,000", half of good-poor's bound). Both are bounds of how many pairs the tables have, and are now said so."""
    from bot.i18n import ENGLISH

    engine = await Engine.open(make_config(tmp_path / "data", require_case=False))
    try:
        await engine.enroll((DEV / "Tony_Blair" / "1.jpg").read_bytes(), subject="Tony_Blair", source_url="https://x.example/1",
                            actor="t")
        clean = next(f for f in await engine.detect((DEV / "Tony_Blair" / "2.jpg").read_bytes()) if f.primary)
        small = shrunk("Tony_Blair/2.jpg", 24, clean.box[2] - clean.box[0])
        await engine.enroll(small, subject="tiny", source_url="https://x.example/tiny", actor="t")
        result = await engine.search(small, actor="t")
        assert not result.faces[result.searched - 1].quality.ok
        copy, mate = result.hits[0], result.hits[1]
        assert (copy.subject, mate.subject) == ("tiny", "Tony_Blair") and copy.similarity > 0.99 > mate.similarity, result.hits
        assert engine.calibration is not None
        poor_poor, good_poor = engine.calibration.pairs["poor-poor"], engine.calibration.pairs["good-poor"]
        assert copy.low_quality and copy.false_match_rate_below == 1 / poor_poor.impostor_pairs
        assert copy.false_match_rate == pytest.approx(copy.false_match_rate_below / 2)  # unchanged: the table's stand-in
        assert mate.similarity > good_poor.scores[-1] and mate.false_match_rate_below == 1 / good_poor.impostor_pairs
        copy_line, mate_line = (texts.hit_lines(ENGLISH, h, result.gallery_faces, linked=True)[1] for h in (copy, mate))
        def one_in(pairs: int) -> str:
            return ENGLISH.number(texts._nice(pairs / result.gallery_faces))  # e.g. 80,000 in 3 gallery faces

        assert copy_line.strip() == (f"odds a stranger scores this high here: below 1 in {one_in(poor_poor.impostor_pairs)} "
                                     "(none did in our tests, too few to say how far below)"), copy_line
        assert mate_line.strip().startswith(f"odds a stranger scores this high here: below 1 in {one_in(good_poor.impostor_pairs)} ")
        assert engine.calibration.rate_below(good_poor.scores[-1] - 0.05, False, True) is None  # a measured rate stays one
    finally:
        await engine.close()


def test_the_cli_says_a_bound_in_the_bots_words_and_its_json_holds_no_point_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CLI said `(strong, fewer than 3.4e-05 strangers expected this close (none in the calibration's comparisons, too
    few to say how many fewer))`, and --json gave the table's stand-in (half the bound) as `false_match_rate` and
    `strangers_expected`: a precise number the text says cannot be known. Now the text is the bot's line, on a line of
    its own, and the JSON has null point values and the bounds."""
    import asyncio

    data = tmp_path / "data"

    async def build() -> bytes:
        engine = await Engine.open(make_config(data, require_case=False))
        try:
            await engine.enroll((DEV / "Tony_Blair" / "1.jpg").read_bytes(), subject="Tony_Blair",
                                source_url="https://x.example/1", actor="t")
            clean = next(f for f in await engine.detect((DEV / "Tony_Blair" / "2.jpg").read_bytes()) if f.primary)
            small = shrunk("Tony_Blair/2.jpg", 24, clean.box[2] - clean.box[0])
            await engine.enroll(small, subject="tiny", source_url="https://x.example/tiny", actor="t")
            return small
        finally:
            await engine.close()

    probe = tmp_path / "tiny.jpg"
    probe.write_bytes(asyncio.run(build()))
    monkeypatch.setenv("SIGHTLINE_INFERENCE_THREADS", "1")
    code = main(["--data-dir", str(data), "search", str(probe), "--case", "C-1"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("  1. tiny  "))
    assert lines[first].endswith("% (strong)  https://x.example/tiny") or "(possible)" in lines[first], out
    odds = lines[first + 1].strip()
    assert odds.startswith("odds a stranger scores this high here: below 1 in ") and odds.endswith(
        "(none did in our tests, too few to say how far below)"), out
    assert "e-0" not in out and "))" not in out and "expected this close" not in out, out
    code = main(["--data-dir", str(data), "search", str(probe), "--case", "C-1", "--json"])
    result = json.loads(capsys.readouterr().out)
    copy = result["hits"][0]
    assert code == 0 and copy["subject"] == "tiny"
    assert copy["false_match_rate"] is None and copy["strangers_expected"] is None, copy
    assert copy["false_match_rate_below"] > 0
    assert copy["strangers_expected_below"] == pytest.approx(copy["false_match_rate_below"] * result["gallery_faces"])
