"""Benchmark: the host cost model fitted on the calibration suite, validated on a disjoint held-out set (issue 5).

Usage: python bench/cost_model.py [--runs 60] [--cache-dir DIR] [--json FILE]
1. ``devices calibrate host``: measure the host profile's suite here and fit the twelve constants.
2. Held-out: resnet18 / resnet50 / vit_tiny, dense and pruned at 50% and 90%, at 32 px (grey, 10 classes) and
   224 px (RGB, 1000 classes); none of these is in the suite. Each is measured (median of ``--runs``) and
   estimated by the fitted model. Prints a Markdown table and the share within +-20%.
3. ``--json FILE``: also store every measurement with its op table (suite and held-out), so that alternative cost
   formulas can be compared offline on the same measurements (``bench/cost_model_select.py``).
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import numpy as np

from edgemvp.deploy.costmodel import COST_MODEL_VERSION, CostConstants, estimate_ms, op_table
from edgemvp.deploy.devices import ProfileRegistry, ReferenceModel, load_profile
from edgemvp.deploy.calibrate import calibrate
from edgemvp.deploy.latency import build_reference_onnx, measure, reference_table

HELD_OUT = [ReferenceModel(arch, size, 1 if size == 32 else 3, 10 if size == 32 else 1000, ratio)
            for arch in ("resnet18", "resnet50", "vit_tiny") for ratio in (0.0, 0.5, 0.9) for size in (32, 224)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="Also write every measurement and op table here.")
    args = parser.parse_args()
    host = ProfileRegistry(cache=args.cache_dir).get("host")
    path, fit = calibrate(host, args.cache_dir, runs=args.runs)
    print(f"fitted on {len(fit.rel_errors)} suite models ({100 * fit.within():.0f}% within 20% of their own "
          f"measurements); profile written to {path}")
    fitted = load_profile(path)
    constants = CostConstants.from_dict(dict(fitted.calibration.constants), versioned=True)
    print("constants:", constants.to_dict())
    print("\n| model | input | measured p50 ms | estimated ms | error |")
    print("|---|---|---|---|---|")
    errors, held = [], []
    for ref in HELD_OUT:
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = build_reference_onnx(ref, Path(tmp) / "m.onnx")
            measured = measure(onnx_path, fitted, runs=args.runs, statistic="p50").value_ms
            table = op_table(onnx_path)
            est = estimate_ms(table, constants, fitted.hardware.channel_block)
        errors.append(est / measured - 1)
        held.append({"model": ref.key(), "latency_ms": measured, "table": json.loads(table.to_json())})
        pruned = f"{100 * ref.ratio:.0f}% pruned" if ref.ratio else "dense"
        print(f"| {ref.arch} {pruned} | {ref.channels}x{ref.size} | {measured:.3f} | {est:.3f} | {100 * errors[-1]:+.1f}% |",
              flush=True)
    within = float(np.mean(np.abs(errors) <= 0.2))
    print(f"\nheld-out within +-20%: {100 * within:.0f}% ({sum(abs(e) <= 0.2 for e in errors)}/{len(errors)}); "
          f"median |error| {100 * float(np.median(np.abs(errors))):.1f}%")
    if args.json:
        suite = [{"model": ref.model.key(), "latency_ms": ref.latency_ms,
                  "table": json.loads(reference_table(ref.model, args.cache_dir).to_json())}
                 for ref in fitted.calibration.references]
        hw = fitted.hardware
        record = {"cost_model_version": COST_MODEL_VERSION, "runs": args.runs, "machine": platform.node(),
                  "channel_block": hw.channel_block, "cache_mb": hw.cache_mb, "constants": constants.to_dict(),
                  "suite": suite, "held_out": held}
        args.json.write_text(json.dumps(record))
        print(f"measurements written to {args.json}")


if __name__ == "__main__":
    main()
