"""Refit only the shipped code model's lead (engine/calibration/<model sha256>.codes.npz), nothing else of the calibration.

`sightline calibrate` writes the code model together with the thresholds and the projection, from the calibration set's
embeddings (engine.codes.fit, lead=engine.codes.LEAD). To change only the lead's width, this refits the code model from
the bench's cached calibration embeddings (bench/common.real_embeddings: the primary face of each calib photo, the set
the shipped model was fitted on) after checking that they reproduce the shipped model's mean and 512 body bits exactly:
the body (and so a Milvus collection's codes, engine.codes.CodeModel.body) stays the same, only the lead changes. An index
built with the old model is rebuilt from the database at start-up (its code-model key differs).

Examples: python bench/refit_codes.py --lead 96; python bench/refit_codes.py --body hadamard
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from engine import codes  # noqa: E402
from engine.config import DEFAULT_RECOGNIZER, EngineConfig  # noqa: E402
from engine.images import file_sha256  # noqa: E402

logger = logging.getLogger("bench.refit_codes")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lead", type=int, default=codes.LEAD, help="lead bits (a multiple of 16)")
    ap.add_argument("--body", choices=["keep", "hadamard"], default="keep",
                    help="the bits after the lead: keep the shipped ones, or a structured (sign + Walsh-Hadamard) rotation "
                    "of the centred space, which a query is encoded with without reading a matrix (engine.codes.structured_weights)")
    ap.add_argument("--dry-run", action="store_true", help="check and report, write nothing")
    args = ap.parse_args(argv)
    common.setup_logging()
    cfg = EngineConfig()
    sha = file_sha256(cfg.resolved_model_dir() / (cfg.recognizer_file or DEFAULT_RECOGNIZER))
    path = codes.path_for(sha)
    shipped = codes.CodeModel.load(path)
    x = common.real_embeddings().vectors
    again = codes.fit(x, shipped.bits - shipped.lead, lead=shipped.lead, rotation="random" if shipped.signs is None else "hadamard")
    drift = max(float(np.abs(again.mean - shipped.mean).max()), float(np.abs(again.weights - shipped.weights).max()))
    if drift > 1e-5:
        raise SystemExit(f"the cached calib embeddings do not reproduce {path.name} (max difference {drift:.2e}): "
                         "run `sightline calibrate` instead")
    source = shipped.source.replace(f"a {shipped.lead}-bit lead code of the top {shipped.lead} directions",
                                    f"a {args.lead}-bit lead code of the top {args.lead} directions")
    if args.lead == shipped.lead:  # (kept as shipped, byte for byte)
        lead = shipped.weights[:, : shipped.lead]
    else:
        lead = codes.fit(x, shipped.bits - shipped.lead, lead=args.lead).weights[:, : args.lead]
    if args.body == "hadamard":
        signs = codes.structured_signs(len(shipped.mean))
        body, source = codes.structured_weights(signs), source.replace("mean + random rotation of the centred space, ", "mean, ").replace(
            "then those 512 bits", "then 512 bits of a structured rotation of the centred space (3 rounds of random signs and "
            "a Walsh-Hadamard transform)")
    else:  # the shipped mean and body bytes as they are (a refit reproduces them only to float32 rounding)
        signs, body = shipped.signs, shipped.body().weights
    model = codes.CodeModel(shipped.mean, np.ascontiguousarray(np.hstack([lead, body])), source, args.lead, signs)
    logger.info("%s: lead %d -> %d bits, body of %d bits %s, mean unchanged; key %s -> %s", path.name, shipped.lead, model.lead,
                model.bits - model.lead, "structured" if args.body == "hadamard" else "unchanged", shipped.key, model.key)
    if not args.dry_run:
        model.save(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
