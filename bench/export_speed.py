"""Benchmark: onnxruntime batch-1 latency of a 90%-pruned resnet18 against the dense one at 224 px (issue 5).

Usage: python bench/export_speed.py [--runs 300] [--ratio 0.9] [--round-to 1,8,16]
The pruned model is made once per ``--round-to`` value (channel counts kept as multiples of it, the same seeded
random draw; issue 25). All models are exported with edgemvp's default exporter (parity-checked), then timed with the ``host`` profile
(CPUExecutionProvider, its thread count, all graph optimisations), interleaved in rounds so that a burst of load
from other processes hits both alike. Prints a Markdown table for docs/results.md.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from edgemvp.deploy.devices import ProfileRegistry
from edgemvp.deploy.onnx import ExportConfig, export_model
from edgemvp.deploy.latency import measure
from edgemvp.masks import random_masks
from edgemvp.models.factory import create_model
from edgemvp.shrink import params_and_macs, shrink
from edgemvp.spec import IMAGENET_MEAN, IMAGENET_STD, InputSpec

RGB224 = InputSpec(3, 224, IMAGENET_MEAN, IMAGENET_STD)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ratio", type=float, default=0.9)
    parser.add_argument("--round-to", default="1", help="comma-separated channel multiples, one pruned model each")
    args = parser.parse_args()
    multiples = [int(v) for v in args.round_to.split(",")]
    torch.manual_seed(0)
    host = ProfileRegistry().get("host")
    models = {"dense": create_model("resnet18", 1000, RGB224).eval()}
    for k in multiples:
        name = "pruned" if k == 1 else f"pruned, x{k}"
        models[name] = shrink(create_model("resnet18", 1000, RGB224),
                              random_masks("resnet18", args.ratio, 0, round_to=k)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        paths, macs = {}, {}
        for name, model in models.items():
            file = Path(tmp) / f"{name.replace(', ', '-')}.onnx"
            paths[name] = export_model(model, "resnet18", RGB224, file, ExportConfig(parity_samples=64)).path
            macs[name] = params_and_macs(model, RGB224)[1]
        times: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(args.rounds):
            for name, path in paths.items():
                report = measure(path, host, runs=args.runs // args.rounds, warmup=5)
                times[name].append(report.stats["p50"])  # per-round medians
                times[name + ":p90"] = times.get(name + ":p90", []) + [report.stats["p90"]]
    print(f"| model | stage widths | MACs @224 | p50 ms (median of {args.rounds} rounds) | p90 ms | speed-up (p50) "
          f"| MACs ratio | threads |")
    print("|---|---|---|---|---|---|---|---|")
    dense = np.median(times["dense"])
    for name, model in models.items():
        widths = "/".join(str(getattr(model, f"layer{i}")[0].conv2.out_channels) for i in range(1, 5))
        p50 = np.median(times[name])
        print(f"| resnet18 {name} | {widths} | {macs[name] / 1e6:.1f} M | {p50:.3f} | "
              f"{np.median(times[name + ':p90']):.3f} | {dense / p50:.1f}x | {macs['dense'] / macs[name]:.1f}x | "
              f"{host.runtime.threads} |")


if __name__ == "__main__":
    main()
