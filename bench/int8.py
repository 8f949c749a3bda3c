"""Benchmark: int8 against fp32 for resnet18 on the fashion5 task (issue 5).

Usage: python bench/int8.py [--base ~/.cache/edgemvp/bases/resnet18--fashion-mnist] [--out /tmp/int8-bench]
The cached Fashion-MNIST base (``edgemvp pretrain``) restricted to the task's five classes is exported with
parity, quantized (static QDQ, min-max calibration on 256 task training images, per-channel weights) and both
files are scored on the task's 5,000 test images and timed with the ``host`` profile (``edgemvp export --int8``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgemvp.data.tasks import resolve_task
from edgemvp.deploy.export import deploy, load_source
from edgemvp.deploy.devices import ProfileRegistry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", type=Path, default=Path.home() / ".cache/edgemvp/bases/resnet18--fashion-mnist")
    parser.add_argument("--out", type=Path, default=Path("/tmp/edgemvp-int8-bench"))
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    report = deploy(load_source(args.base), ProfileRegistry().get("host"), args.out, int8=True,
                    task=resolve_task("fashion5"), runs=args.runs).to_dict()
    acc, lat = report["accuracy"], report["latency"]
    print("| precision | accuracy (fashion5 test, 5,000 images) | p50 ms | p90 ms | file MB |")
    print("|---|---|---|---|---|")
    sizes = {"fp32": report["export"]["file_bytes"], "int8": report["int8"]["file_bytes"]}
    for p in ("fp32", "int8"):
        print(f"| {p} | {acc[p]:.2f}% | {lat[p]['stats']['p50']:.3f} | {lat[p]['stats']['p90']:.3f} | "
              f"{sizes[p] / 2**20:.2f} |")
    print(f"\nint8 top-1 agreement with fp32: {acc['top1_agreement']:.2f}%  (report: {args.out / 'export.json'})")
    print(json.dumps({"parity": report["export"]["parity"], "int8_mode": report["int8"]["mode"]}))


if __name__ == "__main__":
    main()
