"""Benchmark: is a budget-search candidate (legacy tracer export) as fast as the shipped model (dynamo export)?

Usage: python bench/candidate_exporters.py [--ratios 0.64,0.74] [--rounds 3]

The search (:mod:`edgemvp.deploy.search`) times skeletons exported with the torchscript tracer (0.2-0.3 s)
and ships the dynamo export (4-5 s). Both files of the same resnet18 skeleton (224 px, channels in multiples of
16) are timed with the ``host`` profile, interleaved round by round (50 runs and at least 0.5 s each), so a
difference between the exporters shows apart from the machine's own drift.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import edgemvp.models  # noqa: F401  (registers the archs with timm)
from edgemvp.deploy.devices import ProfileRegistry
from edgemvp.deploy.latency import measure
from edgemvp.deploy.onnx import ExportConfig, export_raw
from edgemvp.masks import masks_from_scores
from edgemvp.models.factory import create_model
from edgemvp.shrink import shrink
from edgemvp.spec import IMAGENET_MEAN, IMAGENET_STD, InputSpec
from edgemvp.units import unit_space


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratios", default="0.64,0.74")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    spec = InputSpec(3, 224, IMAGENET_MEAN, IMAGENET_STD)
    host = ProfileRegistry().get("host")
    zeros = {u.name: np.zeros(u.size) for u in unit_space("resnet18").units}
    with tempfile.TemporaryDirectory() as tmp:
        for ratio in (float(r) for r in args.ratios.split(",")):
            model = shrink(create_model("resnet18", 1000, spec), masks_from_scores("resnet18", zeros, ratio, 16)).eval()
            paths = {}
            for exporter in ("torchscript", "dynamo"):
                paths[exporter] = Path(tmp) / f"{exporter}-{ratio}.onnx"
                export_raw(model, spec, paths[exporter], ExportConfig(exporter=exporter))
            for rnd in range(args.rounds):
                p90 = {e: measure(p, host, runs=50, min_seconds=0.5).stats["p90"] for e, p in paths.items()}
                print(f"ratio {ratio} round {rnd}: " + ", ".join(f"{e} {v:.3f} ms" for e, v in p90.items()), flush=True)


if __name__ == "__main__":
    main()
