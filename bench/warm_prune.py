"""Benchmark: a warm ``edgemvp prune`` end to end against ``prune --method ifp --iters 1000``, and a budget-driven
prune against a fixed-ratio one (issue 25), side by side on 4 Fashion-MNIST targets.

Usage: EDGEMVP_CACHE=... python bench/warm_prune.py [--threads 1] [--json docs/warm_prune.json]

Every run is a fresh ``edgemvp prune`` process (what a user waits for: interpreter start and imports
included), on the ``jetson`` profile (latency estimated), with the base and the default zoo already cached
(warm). Per target, interleaved so that load from other processes hits all alike:

* ``mvp``: ``prune --task T --device jetson`` (ratio 0.9, the default);
* ``mvp-ts``: the same with ``--exporter torchscript`` (the legacy tracer for the shipped model, parity-checked);
* ``auto``: ``prune --task T --device jetson --budget-ms B`` with B = 0.6 ms, a budget a little above the
  0.9 model's 0.52 ms estimate (the Jetson's cost model is flat there: it chooses about 0.68);
* ``auto-33``: ``prune --task T --device jetson --ratio auto``: the profile's 33 ms budget, which keeps almost
  the whole model (a larger model to fine-tune, export and check);
* ``auto-greedy``: ``auto`` with ``--allocate greedy`` (per-group counts under the same budget);
* ``ifp1000``: ``prune --task T --device jetson --method ifp --iters 1000``.

Each report's per-stage timings are kept. ``OMP_NUM_THREADS`` (and torch's threads) are set to ``--threads``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = (("--task", "fashion5"),
           ("--dataset", "fashion-mnist", "--classes", "T-shirt/top,Trouser,Coat,Sneaker,Ankle boot"),
           ("--dataset", "fashion-mnist", "--classes", "Trouser,Dress,Coat,Sandal,Bag"),
           ("--dataset", "fashion-mnist", "--classes", "T-shirt/top,Pullover,Shirt,Sneaker,Ankle boot"))
METHODS = {"mvp": (), "mvp-ts": ("--exporter", "torchscript"), "auto": ("--budget-ms", "0.6"),
           "auto-33": ("--ratio", "auto"), "auto-greedy": ("--budget-ms", "0.6", "--allocate", "greedy"),
           "ifp1000": ("--method", "ifp", "--iters", "1000")}


def _one(target: tuple[str, ...], extra: tuple[str, ...], out: Path, env: dict) -> dict:
    cmd = [sys.executable, "-m", "edgemvp", "prune", *target, "--device", "jetson", *extra, "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1]}")
    report = json.loads((out / "report.json").read_text())
    return {"wall_s": round(wall, 2), "timings": report["timings"], "accuracy": report["accuracy"]["final"],
            "ratio": report["settings"]["ratio"], "latency_ms": report["latency"]["value_ms"],
            "steps": len(report["search"]["steps"]) if report.get("search") else 0}


def _cpu() -> str:
    """The CPU's model name (``platform.processor()`` says only ``x86_64`` on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--json", type=Path, default=Path("docs/warm_prune.json"))
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONPATH": str(ROOT)}
    methods = args.methods.split(",")
    rows: dict[str, list[dict]] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        for i, target in enumerate(TARGETS):
            for m in methods:
                row = _one(target, METHODS[m], Path(tmp) / f"{m}-{i}", env)
                rows[m].append(row)
                print(f"target {i} {m}: {row['wall_s']} s wall, {row['timings']['total']} s in-process, "
                      f"r={row['ratio']} {row['accuracy']:.2f}% {row['latency_ms']:.3f} ms", flush=True)
    summary = {m: statistics.median(r["wall_s"] for r in rows[m]) for m in methods}
    print("\n| method | wall s per target (median of 4) | each | in-process total s (median) |")
    print("|---|---|---|---|")
    for m in methods:
        each = ", ".join(f"{r['wall_s']:.1f}" for r in rows[m])
        inproc = statistics.median(r["timings"]["total"] for r in rows[m])
        print(f"| {m} | {summary[m]:.1f} | {each} | {inproc:.1f} |")
    if "ifp1000" in summary:
        for m in methods:
            if m != "ifp1000":
                ratios = [b["wall_s"] / a["wall_s"] for a, b in zip(rows[m], rows["ifp1000"])]
                print(f"{m}: 1/{statistics.median(ratios):.1f} of ifp1000 (per-target medians of the ratios)")
    if "auto" in summary and "mvp" in summary:
        print(f"auto / mvp: {summary['auto'] / summary['mvp']:.2f}x; auto-33 / mvp: "
              f"{summary.get('auto-33', float('nan')) / summary['mvp']:.2f}x; auto-greedy / mvp: "
              f"{summary.get('auto-greedy', float('nan')) / summary['mvp']:.2f}x")
    args.json.write_text(json.dumps({"cpu": _cpu(), "threads": args.threads,
                                     "rows": rows, "median_wall_s": summary}, indent=1))


if __name__ == "__main__":
    main()
