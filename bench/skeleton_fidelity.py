"""Benchmark: does a search candidate (a skeleton) run as fast as the shipped model of the same shapes? (issue 25)

Usage: EDGEMVP_CACHE=... python bench/skeleton_fidelity.py [--ratio 0.69] [--rounds 4]

Prunes fashion5 at ``--ratio`` on ``host`` (channels in the host's block), then times, side by side in
``--rounds`` interleaved rounds on onnxruntime (the ``host`` profile: 1 thread, 100 runs and at least 0.3 s
each), five graphs of the same layer shapes:

* the skeleton with a fresh model's BatchNorm (mean 0, variance 1, scale 1, shift 0), legacy tracer;
* the same with the dynamo exporter;
* the skeleton as :class:`edgemvp.deploy.search.SkeletonTimer` builds it (trained-looking statistics,
  :func:`~edgemvp.deploy.search.like_trained`), legacy tracer;
* the trained pruned model, legacy tracer;
* the shipped ``model.onnx`` (dynamo).

Prints each graph's round p90s, their median, its node count and op types.
"""
from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import numpy as np
import onnx

from edgemvp.data.tasks import resolve_task
from edgemvp.deploy.devices import ProfileRegistry
from edgemvp.deploy.export import load_source
from edgemvp.deploy.latency import measure
from edgemvp.deploy.onnx import ExportConfig, export_raw
from edgemvp.deploy.search import SkeletonTimer
from edgemvp.masks import masks_from_scores
from edgemvp.models.factory import create_model
from edgemvp.pipeline import PruneRequest, run
from edgemvp.shrink import shrink
from edgemvp.units import unit_space

TRACER = ExportConfig(exporter="torchscript", fallback=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.69)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    host = ProfileRegistry().get("host")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        result = run(PruneRequest(task=resolve_task("fashion5", None, None), device="host", out=tmp / "run",
                                  ratio=args.ratio))
        src = load_source(tmp / "run")
        round_to = result.report["settings"]["round_to"]
        timer = SkeletonTimer("resnet18", 5, src.spec, host, round_to)
        zeros = {u.name: np.zeros(u.size) for u in unit_space("resnet18").units}
        fresh = shrink(create_model("resnet18", 5, src.spec).eval(),
                       masks_from_scores("resnet18", zeros, args.ratio, round_to))
        export_raw(copy.deepcopy(fresh), src.spec, tmp / "a.onnx", TRACER)
        export_raw(fresh, src.spec, tmp / "b.onnx", ExportConfig())
        timer.export(args.ratio, tmp / "c.onnx")
        export_raw(src.model, src.spec, tmp / "d.onnx", TRACER)
        paths = {"skeleton, fresh BN, tracer": tmp / "a.onnx", "skeleton, fresh BN, dynamo": tmp / "b.onnx",
                 "skeleton, like_trained, tracer": tmp / "c.onnx", "trained, tracer": tmp / "d.onnx",
                 "shipped model.onnx (dynamo)": tmp / "run" / "model.onnx"}
        p90s: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(args.rounds):
            for name, path in paths.items():
                p90s[name].append(measure(path, host, runs=100, min_seconds=0.3).stats["p90"])
        print(f"fashion5 at ratio {args.ratio} (channels x{round_to}), p90 ms per round, median:")
        for name, path in paths.items():
            graph = onnx.load(path).graph
            print(f"  {name:32s} {' '.join(f'{x:.4f}' for x in p90s[name])}  median {np.median(p90s[name]):.4f}  "
                  f"{len(graph.node)} nodes {sorted({n.op_type for n in graph.node})}")


if __name__ == "__main__":
    main()
