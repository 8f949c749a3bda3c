"""Pre-train a base model on all classes of a dataset and keep it in the cache (``edgemvp pretrain``)."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable
import numpy as np
import torch

from edgemvp import checks
from edgemvp.data.datasets import Dataset, get_dataset
from edgemvp.data.loader import LabeledView, eval_batches, train_batches
from edgemvp.models.base import BaseManifest, base_folder, save_base
from edgemvp.models.factory import FAMILIES, create_model, get_arch
from edgemvp.spec import IMAGENET_MEAN, IMAGENET_STD, InputSpec
from edgemvp.train import OptimConfig, Progress, accuracy, choose_cpu_mode, default_device, train_steps
from edgemvp.versions import tool_versions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    """How a base model is trained.

    The defaults were chosen by measurement for resnet18 on Fashion-MNIST at 32 px on a 2-core CPU
    (docs/results.md): batch 256, SGD + Nesterov, peak lr 0.2 after a short warm-up, cosine to zero, label
    smoothing 0.1, random 2 px shifts (+ flip where it keeps labels); on a CPU, bf16 or fp32 and the memory
    format by a cached probe of this machine (:func:`edgemvp.train.choose_cpu_mode`). 3 epochs keep the README's
    cold start within 15 minutes on a 2-core CPU without fast bf16 (5 epochs until issue 24; ``--epochs 12``
    for the stronger base).
    """

    epochs: float = 3.0
    batch_size: int = 256
    size: int = 32
    seed: int = 0
    init: str = "none"  # "none", "hub" or a local weights file
    amp: bool = True
    optim: OptimConfig | None = None  # None: the family's default (PRETRAIN_OPTIM)

    def __post_init__(self) -> None:
        checks.number("epochs", self.epochs, 0, 10_000, lo_open=True)
        checks.number("batch size", self.batch_size, 1, 65_536, integer=True)
        checks.number("size", self.size, 8, 4096, integer=True)
        checks.seed("seed", self.seed)


PRETRAIN_OPTIM = {name: family.pretrain for name, family in FAMILIES.items()}  # declared in edgemvp.models.factory


def input_spec_for(dataset: Dataset, size: int, init: str = "none", sample: int = 10000) -> InputSpec:
    """The base model's input spec: the dataset's channels at ``size``, normalised by its own statistics.

    With hub weights the ImageNet statistics are kept, as the weights expect them.
    """
    if init == "hub":
        return InputSpec(3, size, IMAGENET_MEAN, IMAGENET_STD)
    if init != "none":
        raise ValueError("input_spec_for is for random or hub initialisation")
    pick = np.random.default_rng(0).permutation(len(dataset.train))[:sample]
    x = dataset.train.load(pick, size).float().div_(255.0)  # (N, C, S, S)
    mean = tuple(round(float(v), 4) for v in x.mean(dim=(0, 2, 3)))
    std = tuple(round(float(v), 4) for v in x.std(dim=(0, 2, 3)).clamp_min(1e-3))
    return InputSpec(dataset.channels, size, mean, std)


def pretrain(arch: str, dataset_name: str, cfg: PretrainConfig = PretrainConfig(),
             cache: str | os.PathLike[str] | None = None, data_root: str | os.PathLike[str] | None = None,
             progress: Progress | None = None, device: torch.device | None = None,
             say: Callable[[str], None] | None = None) -> BaseManifest:
    """Train ``arch`` on every class of a dataset and store it as the cached base for (arch, dataset).

    Args:
        arch: Registered architecture.
        dataset_name: Registered dataset or ``imagefolder:<path>``.
        cfg: Training settings.
        cache: Cache folder.
        data_root: Data folder.
        progress: Receives one update per step (see :func:`pretrain_steps`).
        device: Defaults to CUDA when available.
        say: Receives one line: on a CPU, the precision and memory format the probe chose
            (:func:`edgemvp.train.choose_cpu_mode`; with ``cfg.amp`` only).

    Returns:
        The stored manifest, with the test accuracy on all classes.
    """
    get_arch(arch)
    dataset = get_dataset(dataset_name, data_root)
    spec = input_spec_for(dataset, cfg.size, "hub" if cfg.init == "hub" else "none")
    torch.manual_seed(cfg.seed)
    local = cfg.init not in ("none", "hub")
    model = create_model(arch, len(dataset.classes), spec, pretrained="hub" if cfg.init == "hub" else "none",
                         checkpoint_path=cfg.init if local else None)
    train = LabeledView(dataset.train, np.arange(len(dataset.train)), dataset.train.labels, dataset.hflip)
    test = LabeledView(dataset.test, np.arange(len(dataset.test)), dataset.test.labels)
    steps = pretrain_steps(len(train), cfg)
    device = device or default_device()
    cpu_mode = None
    if device.type == "cpu" and cfg.amp:  # bf16 or fp32, channels-last or not: whatever is fastest here
        cpu_mode = choose_cpu_mode(model, (min(cfg.batch_size, len(train)), spec.channels, cfg.size, cfg.size),
                                   len(dataset.classes), cache)
        (logger.debug if say is not None else logger.info)("%s", cpu_mode.describe())
        if say is not None:
            say(f"base: {cpu_mode.describe()}")
    start = time.perf_counter()
    batches = train_batches(train, spec, cfg.batch_size, cfg.seed, pin_memory=device.type == "cuda")
    optim = cfg.optim or PRETRAIN_OPTIM[get_arch(arch).family]
    train_steps(model, batches, steps, optim, device, progress, amp=cfg.amp, cpu_mode=cpu_mode)
    train_s = time.perf_counter() - start
    acc = accuracy(model, eval_batches(test, spec), device)
    logger.info("%s on %s: %.2f%% test accuracy after %d steps (%.0f s)", arch, dataset.name, acc, steps, train_s)
    settings = {**asdict(cfg), "optim": asdict(optim), "steps": steps, "train_seconds": round(train_s, 1),
                "device": str(device)}
    if cpu_mode is not None:
        settings["cpu_mode"] = {"name": cpu_mode.name, "seconds_per_step": cpu_mode.seconds}
    manifest = BaseManifest(arch, dataset.name, spec, dataset.classes, round(acc, 3), "", settings, tool_versions())
    return save_base(model.cpu(), manifest, base_folder(arch, dataset.name, cache))


def pretrain_steps(n_train: int, cfg: PretrainConfig) -> int:
    """Optimiser steps for ``cfg.epochs`` passes over ``n_train`` images."""
    return max(1, round(cfg.epochs * n_train / min(cfg.batch_size, n_train)))
