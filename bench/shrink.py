"""Benchmark: params and MACs of pruned resnet18, and how long shrinking takes (issue: units/masks/shrink).

Usage: python bench/shrink.py [--repeats 5]
Prints a Markdown table for docs/results.md.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from edgemvp.masks import full_masks, random_masks
from edgemvp.models.factory import create_model
from edgemvp.shrink import params_and_macs, shrink
from edgemvp.spec import IMAGENET_MEAN, IMAGENET_STD, InputSpec

RGB224 = InputSpec(3, 224, IMAGENET_MEAN, IMAGENET_STD)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    print("| arch | kept per group | params | params w/o classifier | MACs @224 px |")
    print("|---|---|---|---|---|")
    for arch in ("resnet18", "resnet50"):
        for ratio in (0.0, 0.5, 0.9):
            masks = full_masks(arch) if ratio == 0 else random_masks(arch, ratio, seed=0)
            model = shrink(create_model(arch, 1000, RGB224), masks).eval()
            params, macs = params_and_macs(model, RGB224)
            head = sum(p.numel() for p in model.get_classifier().parameters())
            print(f"| {arch} | {100 * (1 - ratio):.0f}% | {params / 1e6:.3f} M | {(params - head) / 1e6:.3f} M "
                  f"| {macs / 1e6:.1f} M |")
    print()
    print("| arch | ratio | shrink time @224 px, median of", args.repeats, "(create excluded) |")
    print("|---|---|---|")
    for arch in ("resnet18", "resnet50", "deit_small"):
        masks = random_masks(arch, 0.9, seed=0)
        times = []
        for _ in range(args.repeats):
            model = create_model(arch, 1000, RGB224)
            start = time.perf_counter()
            shrink(model, masks)
            times.append(time.perf_counter() - start)
        print(f"| {arch} | 0.9 | {statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f}) |")


if __name__ == "__main__":
    main()
