"""Export parity at 224 px RGB: resnet18 / resnet50 / vit_tiny, dense and 90%-pruned (issue 5 acceptance).

Every export goes through ``edgemvp.export.export_model`` (checker + parity on 256 seeded inputs with the
arch's tolerances); a failing one raises ParityError with the numbers.

    python bench/parity.py
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from edgemvp.deploy.onnx import ExportConfig, export_model
from edgemvp.masks import random_masks
from edgemvp.models.factory import create_model
from edgemvp.shrink import shrink
from edgemvp.spec import IMAGENET_MEAN, IMAGENET_STD, InputSpec

SPEC = InputSpec(3, 224, IMAGENET_MEAN, IMAGENET_STD)


def main() -> None:
    print("| arch | kept | exporter | opset | max abs diff | top-1 agreement | samples | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("resnet18", "resnet50", "vit_tiny"):
            for ratio in (None, 0.9):
                torch.manual_seed(0)
                model = create_model(arch, 1000, SPEC).eval()
                if ratio is not None:
                    shrink(model, random_masks(arch, ratio, seed=0))
                start = time.perf_counter()
                res = export_model(model, arch, SPEC, Path(tmp) / f"{arch}-{ratio}.onnx", ExportConfig())
                p = res.parity
                print(f"| {arch} | {'100%' if ratio is None else '10%'} | {res.exporter} | {res.opset} | "
                      f"{p.max_abs_diff:.2e} | {100 * p.top1_agreement:.1f}% | {p.samples} | "
                      f"{time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
