"""Accuracy commands: `eval` (measure the product on a labelled folder) and `calibrate` (score -> FMR table)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from bot.cli import add_command, int_in
from engine import calibration as calib
from engine import codes, projection
from engine import degrade as degradation
from engine import evaluate as ev

logger = logging.getLogger(__name__)

EVAL_DESCRIPTION = f"""\
Measure how accurate Sightline is, end to end, on a labelled folder DIR laid out as
DIR/<identity>/<n>.jpg (optionally with DIR/LABELS.csv, columns path,identity).

{ev.PROTOCOL}
Reported: rank-1 and rank-5 identification; open-set FNIR at FPIR 1 % and 0.1 % with their thresholds;
verification TAR at FAR 1e-3, 1e-4 and 1e-5 with their thresholds; photos with no face found.
The report folder (--out) gets report.md, metrics.json, det.png (DET curves), scores.png (genuine and
impostor score histograms) and worst_misses.png (probe | wrong first hit | true mate).
The engine settings (SIGHTLINE_PRIMARY_RULE, SIGHTLINE_FLIP_FUSION, SIGHTLINE_DET_SIZE, ...) apply, so
a setting can be compared by running eval twice.
"""

CALIBRATE_DESCRIPTION = f"""\
Build the score -> false-match-rate table of the current recognition model from the impostor pairs of a
labelled folder DIR (same layout as `eval`), and choose the band thresholds from it: "possible" at
--possible-fmr and "strong" at --strong-fmr. The table is written to
engine/calibration/<sha256 of the model>.json (or --output), where the engine finds it at start-up.
The shipped table was made with:  sightline calibrate /work/shared/faces/calib

It also fits the index projection (the principal directions of the same embeddings; the index searches
faces projected to SIGHTLINE_INDEX_DIMS of them) and writes it beside the table as
<sha256>.projection.npz, and the index's code model (the mean, a 128-bit lead code of the top directions
the index scans, then a random rotation: 512 sign bits per face; engine/codes.py) as <sha256>.codes.npz. A new projection or
code model takes effect by rebuilding the index, which the engine does at its next start.

Quality classes: every photo is also embedded degraded, once per seed (a moderate or severe field-quality
recipe drawn per photo and seed, see `eval --degrade`), and a table and thresholds are built per quality class of a
comparison: good-good, good-poor, poor-poor (a face is poor when it fails the engine's quality checks; from the
copies of the first seed), and second-look/good and second-look/poor: a probe face found only by the detector's
second, less strict look (SIGHTLINE_DET_RETRY_*; built only when the retry is on; from the copies of seeds
{', '.join(map(str, ev.FIELD_SEEDS))}) against every face indexed from the gallery photos (the first photo of
each identity, as eval enrols them), good or poor; a table without them uses poor-poor's for them.
Hits then show the odds of their own class, and a poor comparison needs a higher score to be shown
(never a lower one than the overall threshold). --no-field skips this.

Pairs: the same embeddings as the verification part of `eval` (gallery photos enrolled through
Engine.enroll, the others embedded by the search path), all pairs of different identities. With n
impostor pairs no rate below 1/n can be measured; the 95 % intervals come from resampling identities.
Default thresholds: FMR {calib.DEFAULT_POSSIBLE_FMR:g} (possible) and {calib.DEFAULT_STRONG_FMR:g} (strong).
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `eval` and `calibrate`."""
    p = add_command(
        sub, "eval", cmd_eval,
        help="measure accuracy end to end on a labelled folder (rank-1/5, FNIR@FPIR, TAR@FAR)",
        description=EVAL_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", type=Path, help="labelled folder: DIR/<identity>/<n>.jpg, optional LABELS.csv")
    p.add_argument("--out", type=Path, default=Path("eval-report"), help="report folder (default ./eval-report)")
    p.add_argument("--worst", type=int_in(0, 500), default=24, help="misses shown in worst_misses.png (default 24)")
    p.add_argument("--max-identities", type=int_in(1, 10**9), help="only the first N identities (alphabetical): a quick run")
    p.add_argument("--max-per-identity", type=int_in(1, 10**9), help="only the first K photos of each identity")
    p.add_argument("--degrade", choices=degradation.LEVELS,
                   help="degrade every probe (gallery photos stay clean) like a CCTV still or a photo of a screen: "
                        "a recipe drawn per photo (downscale, blur, noise, grey, low light, heavy JPEG); see engine/degrade.py")
    p.add_argument("--degrade-seed", type=int, default=0, help="seed of the per-photo recipes (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = add_command(
        sub, "calibrate", cmd_calibrate,
        help="build the score -> false-match-rate table and band thresholds from a labelled folder",
        description=CALIBRATE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", type=Path, help="labelled folder (many identities; LFW-style)")
    p.add_argument("--output", type=Path, help="table file (default engine/calibration/<model sha256>.json)")
    p.add_argument("--possible-fmr", type=float, default=calib.DEFAULT_POSSIBLE_FMR,
                   help=f"false-match rate of the 'possible' threshold (default {calib.DEFAULT_POSSIBLE_FMR:g})")
    p.add_argument("--strong-fmr", type=float, default=calib.DEFAULT_STRONG_FMR,
                   help=f"false-match rate of the 'strong' threshold (default {calib.DEFAULT_STRONG_FMR:g})")
    p.add_argument("--report", type=Path, help="also write a verification report (DET, histograms) here")
    p.add_argument("--no-field", action="store_true",
                   help="skip the degraded copies: no per-quality-class tables (hits then show the overall odds)")
    p.add_argument("--max-identities", type=int_in(1, 10**9), help="only the first N identities (alphabetical)")
    p.add_argument("--max-per-identity", type=int_in(1, 10**9), help="only the first K photos of each identity")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _plan(args: argparse.Namespace) -> ev.Plan | None:
    """The searches of the labelled folder, or None after saying why there are none (the command then exits 1)."""
    try:
        photos = ev.load_labelled(args.dir)
    except (OSError, ValueError) as exc:
        print(f"sightline: error: {exc}", file=sys.stderr)
        return None
    plan = ev.make_plan(photos, max_identities=getattr(args, "max_identities", None),
                        max_per_identity=getattr(args, "max_per_identity", None))
    if plan.identities < 2:
        print(f"sightline: error: {args.dir} needs at least two identities", file=sys.stderr)
        return None
    return plan


async def _collect(args: argparse.Namespace, plan: ev.Plan, searches: bool) -> ev.Observations:
    from tqdm import tqdm

    field_copies = not searches and not getattr(args, "no_field", False)
    with tqdm(total=ev.steps(plan, searches, field_copies), unit="photo", disable=args.no_progress, dynamic_ncols=True,
              desc="eval" if searches else "calibrate") as bar:
        return await ev.collect(args.dir, args.settings.engine_config(), plan, searches=searches,
                                progress=bar.update, worst=getattr(args, "worst", 24),
                                degrade=getattr(args, "degrade", None), degrade_seed=getattr(args, "degrade_seed", 0),
                                field_copies=field_copies)


async def cmd_eval(args: argparse.Namespace) -> int:
    """Run the protocol and write the report."""
    plan = _plan(args)
    if plan is None:
        return 1
    if not plan.probes:
        print(f"sightline: error: no identity in {args.dir} has two photos: nothing to search", file=sys.stderr)
        return 1
    obs = await _collect(args, plan, searches=True)
    summary = ev.summarise(obs)
    ev.write_report(obs, summary, args.out, worst=args.worst)
    print(summary_text(summary))
    print(f"report: {args.out / 'report.md'}")
    return 0


def summary_text(s: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    c = s["counts"]
    lines = [f"{c['photos']} photos, {c['identities']} identities; {c['probes']} mated and "
             f"{c['nonmated_searches']} non-mated searches; {c['no_face']} photo(s) with no face found"]
    if "identification" in s:
        i = s["identification"]
        lines.append(f"rank-1 {i['rank1']:.4f}   rank-5 {i['rank5']:.4f}   "
                     f"(named hits only: rank-1 {i['rank1_named']:.4f}, rank-5 {i['rank5_named']:.4f})")
        for p, q in zip(i["open_set"], i["open_set_named"], strict=True):
            thr = "—" if p["threshold"] is None else f"{p['threshold']:.3f}"
            lines.append(f"FNIR {p['fnir']:.4f} at FPIR {p['target']:g} (threshold {thr}, {p['errors']} alarms; "
                         f"named hits only: FNIR {q['fnir']:.4f})")
    for p in s.get("verification", []):
        flag = "" if p["resolvable"] else "  (too few pairs to measure)"
        lines.append(f"TAR {p['tar']:.4f} at FAR {p['target']:g} (threshold {p['threshold']:.3f}){flag}")
    if "false_leads" in s:
        a = s["false_leads"]["all"]
        for rule in s["false_leads"]["rules"]:
            x = a[rule]
            lines.append(f"false leads ({rule} thresholds): {x['false_stranger'] + x['false_unlabelled']} of {a['probes']} "
                         f"probes ({x['false_stranger']} stranger first, {x['false_unlabelled']} unlabelled face first); "
                         f"person first: {x['mate_first']}")
        if s.get("degrade"):
            lines.append(f"probes degraded: {s['degrade']['level']} (seed {s['degrade']['seed']})")
    return "\n".join(lines)


async def cmd_calibrate(args: argparse.Namespace) -> int:
    """Embed the folder, build the table, write it."""
    if not 0 < args.strong_fmr <= args.possible_fmr < 1:
        print("sightline: error: need 0 < --strong-fmr <= --possible-fmr < 1", file=sys.stderr)
        return 2
    plan = _plan(args)
    if plan is None:
        return 1
    obs = await _collect(args, plan, searches=False)
    table = ev.build_calibration(
        obs, possible_fmr=args.possible_fmr, strong_fmr=args.strong_fmr,
        source=f"sightline calibrate {args.dir.name}: {plan.photos} photos, {plan.identities} identities",
    )
    out = args.output or calib.TABLES / f"{obs.recognizer_sha256}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.save(out)
    basis_note = ""
    try:
        basis = projection.fit(obs.embeddings, obs.recognizer_sha256, table.source)
    except ValueError as exc:
        basis_note = f"\nno index projection written: {exc}"
    else:
        basis_path = out.with_name(out.stem + projection.SUFFIX)
        basis.save(basis_path)
        dims = args.settings.index_dims or basis.directions.shape[0]
        basis_note = (f"\nindex projection written to {basis_path} (the top {dims} of {basis.directions.shape[0]} "
                      f"directions keep {basis.energy[:dims].sum():.1%} of the energy)")
    try:
        code_model = codes.fit(obs.embeddings, source=f"{table.source} (mean, a lead code of the top directions, then a "
                               f"{codes.ROTATION} rotation)", lead=codes.LEAD, rotation=codes.ROTATION)
    except ValueError as exc:
        basis_note += f"\nno index code model written: {exc}"
    else:
        codes_path = out.with_name(out.stem + codes.SUFFIX)
        code_model.save(codes_path)
        basis_note += (f"\nindex code model written to {codes_path} ({code_model.lead}-bit lead + "
                       f"{code_model.bits - code_model.lead}-bit sign codes)")
    if args.report:
        summary = ev.summarise(obs)
        ev.write_report(obs, summary, args.report)
    lo_p, hi_p = table.fmr_possible_interval or (float("nan"), float("nan"))
    lo_s, hi_s = table.fmr_strong_interval or (float("nan"), float("nan"))
    print(
        f"{table.impostor_pairs:,} impostor and {table.genuine_pairs:,} genuine pairs from {plan.photos} photos\n"
        f"possible >= {table.threshold_possible:.3f}: FMR {table.fmr_possible:.1e} (95% {lo_p:.1e}-{hi_p:.1e}), "
        f"TAR {table.tar_possible:.4f}\n"
        f"strong   >= {table.threshold_strong:.3f}: FMR {table.fmr_strong:.1e} (95% {lo_s:.1e}-{hi_s:.1e}), "
        f"TAR {table.tar_strong:.4f}\n"
        f"table written to {out}{basis_note}"
    )
    for name, t in table.pairs.items():
        print(f"quality class {name}: {t.impostor_pairs:,} impostor pairs, possible >= {t.threshold_possible:.3f}, "
              f"strong >= {t.threshold_strong:.3f}")
    missing = [c for c in calib.QUALITY_PAIRS if c not in table.pairs]
    if not args.no_field and missing:
        print(f"too few impostor pairs for quality class(es) {', '.join(missing)} (need {ev.min_class_pairs(args.possible_fmr):,}): "
              "hits of those classes show the overall odds")
    lacking = [c for c in calib.SECOND_LOOK_CLASSES if c not in table.pairs]
    if not args.no_field and lacking:
        why = ("the detector retry is off (SIGHTLINE_DET_RETRY_THRESHOLD=0)" if args.settings.engine_config().det_retry_threshold <= 0
               else f"too few impostor pairs (need {ev.min_class_pairs(args.possible_fmr):,})")
        print(f"no {' or '.join(lacking)} class: {why}; those comparisons of faces found only by the detector's second look "
              "use poor-poor's table")
    return 0
