"""How batch-1 latency statistics relate to the median here: the spread a device profile states.

The latency gate compares a figure with the budget at the budget's statistic (p90 for every packaged
profile), while cost-model estimates come at their references' statistic (medians, or the means NVIDIA
publishes). ``calibration.spread`` converts between them. This script measures the spread of onnxruntime on
this machine (the profile's threads and providers), over models of the calibration suite: for each model
p90/p50, p99/p50 and mean/p50 of ``--runs`` timed runs after a warm-up, and their medians over the models.

    python bench/latency_spread.py --device host --runs 300 [--json out.json]

The packaged remote profiles state this machine's medians as an assumption (their ``spread-assumed`` source
says so) until ``edgemvp devices calibrate`` measures the spread on the device itself.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

from edgemvp.deploy.devices import ProfileRegistry, ReferenceModel
from edgemvp.deploy.latency import build_reference_onnx, measure

MODELS = (ReferenceModel("resnet18", 32, 1, 10, 0.9), ReferenceModel("resnet18", 32, 1, 10, 0.0),
          ReferenceModel("resnet18", 224, ratio=0.9), ReferenceModel("resnet18", 224, ratio=0.5),
          ReferenceModel("resnet50", 224, ratio=0.9), ReferenceModel("deit_tiny", 224, ratio=0.7))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="host")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    profile = ProfileRegistry().get(args.device)
    rows = []
    for ref in MODELS:
        with tempfile.TemporaryDirectory() as tmp:
            path = build_reference_onnx(ref, Path(tmp) / "m.onnx")
            report = measure(path, profile, runs=args.runs, warmup=20, statistic="p50")
        ratios = {k: v / report.stats["p50"] for k, v in report.stats.items()}
        rows.append({"model": ref.key(), "p50_ms": round(report.stats["p50"], 4),
                     **{k: round(v, 4) for k, v in ratios.items() if k != "p50"}})
        print(f"{ref.key():36s} p50 {report.stats['p50']:8.3f} ms  p90/p50 {ratios['p90']:.3f}  "
              f"p99/p50 {ratios['p99']:.3f}  mean/p50 {ratios['mean']:.3f}", flush=True)
    medians = {k: round(statistics.median(r[k] for r in rows), 3) for k in ("p90", "p99", "mean")}
    print(f"median over {len(rows)} models: " + ", ".join(f"{k}/p50 {v}" for k, v in medians.items()))
    if args.json:
        args.json.write_text(json.dumps({"device": profile.name, "cpu": platform.processor() or platform.machine(),
                                         "threads": profile.runtime.threads, "runs": args.runs, "rows": rows,
                                         "median": medians}, indent=1))


if __name__ == "__main__":
    main()
