"""Reproducibility and step time of CPU training under the three ways :mod:`edgemvp.probe` can choose.

A 90%-pruned resnet18 (seeded random masks) at 32 px, batch 128, 30 SGD steps on fixed random batches,
trained three times per way from the same weights, interleaved: ``sound`` (oneDNN as is, channels-last),
``strided-1x1`` (strided 1x1 convolutions computed as subsample + 1x1) and ``unsound`` (oneDNN off,
contiguous). Printed per round: ms per step and the first 8 hex digits of the final weights' sha256 (the same
digits three times mean reproducible).

    python bench/conv_workaround.py [--threads 2] [--rounds 3]
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import platform
import time

import torch

import edgemvp.train as train
from edgemvp.masks import random_masks
from edgemvp.probe import onednn_training
from edgemvp.shrink import build_pruned
from edgemvp.spec import InputSpec

WAYS = ("sound", "strided-1x1", "unsound")


def one_run(base: torch.nn.Module, data: list, way: str) -> tuple[float, str]:
    """ms per step and the weights' digest after training a copy of ``base`` the given way."""
    layout = torch.contiguous_format if way == "unsound" else torch.channels_last
    train._layout = lambda model, device: (layout, way)  # force the way (the library asks the probe)
    model = copy.deepcopy(base)
    start = time.perf_counter()
    train.train_steps(model, iter(data), len(data), train.OptimConfig(lr=0.01), torch.device("cpu"),
                      deterministic=True)
    ms = (time.perf_counter() - start) / len(data) * 1e3
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in model.state_dict().values())).hexdigest()[:8]
    return round(ms, 1), digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads; "
          f"the probe says: {onednn_training(args.threads)}")
    torch.manual_seed(0)
    base = build_pruned("resnet18", 5, InputSpec(1, 32, (0.5,), (0.25,)), random_masks("resnet18", 0.9, 0))
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(128, 1, 32, 32, generator=gen), torch.randint(0, 5, (128,), generator=gen))
            for _ in range(30)]
    for r in range(args.rounds):
        print(f"round {r}: " + ", ".join(f"{way} {ms} ms/step {digest}"
                                         for way, (ms, digest) in ((w, one_run(base, data, w)) for w in WAYS)))


if __name__ == "__main__":
    main()
