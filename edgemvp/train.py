"""Training and evaluation loops shared by pre-training, pruners and fine-tuning.

CUDA with automatic mixed precision when a GPU is present, CPU otherwise. Progress is reported through an
optional object with tqdm's ``update``/``set_postfix`` methods; only the CLI creates progress bars.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal, Protocol, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgemvp import checks

logger = logging.getLogger(__name__)


class Progress(Protocol):
    """The part of tqdm's interface the loops use."""

    def reset(self, total: int | None = None) -> object: ...

    def update(self, n: int = 1) -> object: ...

    def set_postfix(self, **kwargs: object) -> object: ...


class _NoProgress:
    def reset(self, total: int | None = None) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None

    def set_postfix(self, **kwargs: object) -> None:
        return None


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule.

    Attributes:
        optimizer: ``sgd`` (momentum, Nesterov) or ``adamw``.
        lr: Peak learning rate.
        weight_decay: Decoupled for AdamW, L2 for SGD; not applied to biases and norm parameters.
        momentum: SGD momentum.
        warmup_steps: Linear warm-up before the cosine decay to zero.
        label_smoothing: Cross-entropy label smoothing.
    """

    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_steps: int = 0
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        checks.number("lr", self.lr, 0, 10, lo_open=True)
        checks.number("weight decay", self.weight_decay, 0, 10)
        checks.number("momentum", self.momentum, 0, 1, hi_open=True)
        checks.number("warm-up steps", self.warmup_steps, 0, 10**9, integer=True)
        checks.number("label smoothing", self.label_smoothing, 0, 1, hi_open=True)


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def lr_factor(cfg: OptimConfig, step: int, total_steps: int) -> float:
    """The schedule: linear warm-up to the peak, then cosine decay to zero at ``total_steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, total_steps - cfg.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))


def build_optimizer(model: nn.Module, cfg: OptimConfig, extra_groups: Sequence[dict] = ()) -> torch.optim.Optimizer:
    """An optimiser with no weight decay on 1-D parameters; ``extra_groups`` carry their own ``lr``.

    Every group records its peak learning rate as ``peak_lr`` (the schedule scales from it).
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay, "peak_lr": cfg.lr},
              {"params": no_decay, "weight_decay": 0.0, "peak_lr": cfg.lr}]
    groups += [{"weight_decay": 0.0, **g, "peak_lr": g.get("lr", cfg.lr)} for g in extra_groups]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


class StepHook:
    """Lets a pruner take part in training without its own loop (the default does nothing).

    ``param_groups`` adds optimiser groups (e.g. AHNP's scores with a larger learning rate), ``penalty`` adds
    to the loss (e.g. their L1 norm), and ``after_step`` may change the model; returning True says its
    parameters were replaced (progressive shrinking), so the optimiser is rebuilt.
    """

    def param_groups(self) -> list[dict]:
        return []

    def penalty(self) -> torch.Tensor | None:
        return None

    def after_step(self, step: int) -> bool:
        return False


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX), making bf16 autocast pay."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# Shapes of pruned ResNets' 1x1 stride-2 shortcut convolutions (few channels, small maps) whose channels-last
# weight gradient oneDNN computed differently from run to run with 2 threads on an AMD EPYC (AVX2, no AVX-512):
# (in, out, kernel, stride, batch, side).
_PROBE_SHAPES = ((4, 8, 1, 2, 32, 8), (2, 3, 1, 2, 32, 8), (6, 13, 1, 2, 32, 8))


@functools.lru_cache(maxsize=8)
def onednn_conv_is_reproducible(threads: int) -> bool:
    """Whether oneDNN's convolution weight gradients are bit-identical from run to run on this CPU (a probe of a
    few milliseconds, once per process and thread count).

    Where they are not, deterministic CPU training runs its convolutions without oneDNN, in the contiguous
    layout (measured: reproducible there), so that the same seeds give the same weights on every machine;
    machines where they are keep oneDNN and channels-last (and the results they always had).
    """
    del threads  # the cache key: the probe runs at the current thread count
    gen = torch.Generator().manual_seed(0)
    for layout in (torch.channels_last, torch.contiguous_format):
        if not _reproducible_gradients(layout, gen):
            logger.info("oneDNN convolution gradients vary between runs here; deterministic CPU training runs "
                        "without oneDNN")
            return False
    return True


def _reproducible_gradients(layout: torch.memory_format, gen: torch.Generator) -> bool:
    for cin, cout, k, stride, n, side in _PROBE_SHAPES:
        conv = nn.Conv2d(cin, cout, k, stride=stride, bias=False).to(memory_format=layout)
        x = torch.randn(n, cin, side, side, generator=gen).contiguous(memory_format=layout)
        w = torch.randn(conv(x).shape, generator=gen)
        seen = set()
        for _ in range(4):
            conv.weight.grad = None
            (conv(x) * w).sum().backward()
            seen.add(conv.weight.grad.numpy().tobytes())
        if len(seen) > 1:
            return False
    return True


def _layout(model: nn.Module, device: torch.device, deterministic: bool) -> tuple[torch.memory_format, bool]:
    """The memory format of training and whether oneDNN stays on: channels-last for CNNs (faster), unless that
    would make deterministic CPU training irreproducible here (:func:`onednn_conv_is_reproducible`)."""
    if not any(p.ndim == 4 for p in model.parameters()):
        return torch.contiguous_format, True
    if deterministic and device.type == "cpu" and not onednn_conv_is_reproducible(torch.get_num_threads()):
        return torch.contiguous_format, False
    return torch.channels_last, True


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    if amp and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    if amp and device.type == "cpu" and cpu_supports_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_steps(model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], steps: int,
                cfg: OptimConfig, device: torch.device | None = None, progress: Progress | None = None,
                amp: bool = True, hook: StepHook | None = None, deterministic: bool = False) -> list[float]:
    """Run ``steps`` optimisation steps of cross-entropy training.

    Args:
        model: Trained in place (moved to ``device``).
        batches: Endless ``(x, y)`` batches.
        steps: Number of optimiser steps.
        cfg: Optimiser and schedule.
        device: Defaults to :func:`default_device`.
        progress: Receives one ``update`` per step and the running loss.
        amp: Mixed precision where the hardware has it: fp16/bf16 on CUDA, bf16 on CPUs with native bf16.
        hook: A pruner's additions (extra parameter groups, a penalty, changes after a step).
        deterministic: Bit-reproducible on CPU: fp32 instead of bf16 autocast (oneDNN's bf16 kernels were
            measured to give different weights from run to run with the same seeds; fp32 does not).

    Returns:
        The loss of every step.
    """
    device = device or default_device()
    progress = _NoProgress() if progress is None else progress  # tqdm has no truth value
    hook = hook or StepHook()
    model.to(device).train()
    memory, onednn = _layout(model, device, deterministic)
    model.to(memory_format=memory)
    amp = amp and not (deterministic and device.type == "cpu")
    opt = build_optimizer(model, cfg, hook.param_groups())
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda" and not torch.cuda.is_bf16_supported())
    losses: list[float] = []
    progress.reset(total=steps)
    with torch.backends.mkldnn.flags(enabled=onednn):
        for step, (x, y) in zip(range(steps), batches):
            for group in opt.param_groups:
                group["lr"] = group["peak_lr"] * lr_factor(cfg, step, steps)
            x, y = x.to(device, non_blocking=True).contiguous(memory_format=memory), y.to(device, non_blocking=True)
            with _autocast(device, amp):
                loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
            penalty = hook.penalty()
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss if penalty is None else loss + penalty).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(float(loss.detach()))
            if hook.after_step(step):
                model.to(device=device, memory_format=memory)
                opt = build_optimizer(model, cfg, hook.param_groups())
            progress.update(1)
            if len(losses) % 10 == 0:
                progress.set_postfix(loss=f"{sum(losses[-10:]) / 10:.3f}")
    model.to(memory_format=torch.contiguous_format)
    return losses


@torch.no_grad()
def predict_logits(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and labels for every batch, in eval mode (autocast on CUDA only)."""
    device = device or default_device()
    model.to(device).eval()
    outs, labels = [], []
    for x, y in batches:
        with _autocast(device, amp=device.type == "cuda"):
            outs.append(model(x.to(device)).float().cpu())
        labels.append(y)
    return torch.cat(outs), torch.cat(labels)


def accuracy(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device | None = None) -> float:
    """Top-1 accuracy in percent."""
    logits, labels = predict_logits(model, batches, device)
    return 100.0 * float((logits.argmax(1) == labels).float().mean())
