"""Training and evaluation loops shared by pre-training, pruners and fine-tuning.

CUDA with automatic mixed precision when a GPU is present, CPU otherwise. Progress is reported through an
optional object with tqdm's ``update``/``set_postfix`` methods; only the CLI creates progress bars.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Literal, Protocol, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgemvp import checks
from edgemvp.paths import atomic_write_bytes, cache_dir
from edgemvp.probe import cpu_key, onednn_training

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


@dataclass(frozen=True)
class CpuMode:
    """How fast (not bit-exact) CPU training runs on this machine, chosen by :func:`choose_cpu_mode`.

    Attributes:
        bf16: bf16 autocast (else fp32).
        channels_last: The channels-last memory format (else contiguous).
        seconds: Measured seconds per training step of each candidate (``fp32/channels-last`` ...).
        cached: The choice was read from the cache (measured by an earlier process).
    """

    bf16: bool
    channels_last: bool
    seconds: dict[str, float] = field(default_factory=dict)
    cached: bool = False

    @property
    def name(self) -> str:
        return _mode_name(self.bf16, self.channels_last)

    def describe(self) -> str:
        """One line: the choice and what it was chosen over."""
        others = ", ".join(f"{k} {v:.3f}" for k, v in self.seconds.items() if k != self.name)
        chosen = self.seconds.get(self.name)
        measured = f" ({chosen:.3f} s/step; {others})" if chosen is not None else ""
        return f"CPU probe: {self.name}{measured}{', cached' if self.cached else ''}"


def _mode_name(bf16: bool, channels_last: bool) -> str:
    return f"{'bf16' if bf16 else 'fp32'}/{'channels-last' if channels_last else 'contiguous'}"


CPU_MODE_VERSION = 1


def _time_candidates(model: nn.Module, candidates: list[tuple[bool, bool]], verdict: str,
                     batch_shape: Sequence[int], num_classes: int, warmup: int, steps: int) -> list[list[float]]:
    """Seconds of each timed step of each (bf16, channels-last) candidate, on copies of ``model``."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*batch_shape, generator=gen)
    y = torch.randint(0, num_classes, (batch_shape[0],), generator=gen)
    runs = []
    for bf16, cl in candidates:
        memory = torch.channels_last if cl else torch.contiguous_format
        net = copy.deepcopy(model).cpu().train().to(memory_format=memory)
        runs.append((net, torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9),
                     x.contiguous(memory_format=memory), bf16))
    times: list[list[float]] = [[] for _ in candidates]
    with torch.random.fork_rng(devices=[]):
        for step in range(warmup + steps):  # one step of each candidate in turn: they share the machine's noise
            order = range(len(runs)) if step % 2 == 0 else reversed(range(len(runs)))
            for k in order:
                net, opt, xm, bf16 = runs[k]
                with _conv_workaround(net, verdict):
                    start = time.perf_counter()
                    with _autocast(torch.device("cpu"), bf16, native=bf16):
                        loss = F.cross_entropy(net(xm), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if step >= warmup:
                        times[k].append(time.perf_counter() - start)
    return times


def choose_cpu_mode(model: nn.Module, batch_shape: Sequence[int], num_classes: int, cache: object = None,
                    warmup: int = 3, steps: int = 3) -> CpuMode:
    """Measure which precision and memory format train ``model`` fastest on this CPU, and cache the choice.

    bf16 autocast pays on some CPUs with native bf16 and loses on others: on a 2-core AMD EPYC (AVX512-BF16)
    a resnet18 step at 32 px took 0.22 s in bf16 against 0.35 s in fp32, on a 2-core Intel Xeon (AMX) 0.94 s
    against 0.61 s. So the candidates (fp32 and, where oneDNN reports native bf16, bf16; each in channels-last
    and contiguous) are timed on copies of the model with a synthetic batch of the training shape, one step of
    each in turn (so that they share the machine's noise; bf16 kernels need two steps to warm up): ``warmup``
    untimed and ``steps`` timed steps each. The fastest median wins; a candidate within 5% of it that comes
    earlier (fp32 before bf16, channels-last before contiguous) wins the tie. The global RNG is left as it was. The choice is cached in ``<cache>/probes/`` by CPU (model name and ISA
    flags), torch version, thread count, model (class and parameter shapes) and batch shape, so it is
    measured once per machine and workload. Only for runs that need not be bit-exact (pre-training);
    deterministic runs stay fp32/channels-last.
    """
    shapes = ";".join(f"{n}:{tuple(p.shape)}" for n, p in model.state_dict().items())
    threads = torch.get_num_threads()
    key = hashlib.sha256(f"{type(model).__name__}|{shapes}|{tuple(batch_shape)}|{num_classes}|{threads}"
                         f"|{torch.__version__}|{cpu_key()}".encode()).hexdigest()[:16]
    path = cache_dir(cache) / "probes" / f"cpu-mode-v{CPU_MODE_VERSION}-{key}.json"
    try:
        saved = json.loads(path.read_text())
        return CpuMode(bool(saved["bf16"]), bool(saved["channels_last"]),
                       {str(k): float(v) for k, v in saved["seconds"].items()}, cached=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    verdict = onednn_training(threads) if any(p.ndim == 4 for p in model.parameters()) else "sound"
    layouts = [False] if verdict == "unsound" or not any(p.ndim == 4 for p in model.parameters()) else [True, False]
    candidates = [(bf16, cl) for bf16 in ([False, True] if cpu_supports_bf16() else [False]) for cl in layouts]
    times = _time_candidates(model, candidates, verdict, batch_shape, num_classes, warmup, steps)
    medians = [sorted(t)[len(t) // 2] for t in times]
    fastest = min(medians)
    # near ties (within 5%) go to the earlier candidate: fp32 before bf16, channels-last before contiguous
    best = next(c for c, m in zip(candidates, medians) if m <= 1.05 * fastest)
    seconds = {_mode_name(*c): round(m, 4) for c, m in zip(candidates, medians)}
    atomic_write_bytes(path, json.dumps({"bf16": best[0], "channels_last": best[1], "seconds": seconds,
                                         "threads": threads, "torch": torch.__version__,
                                         "batch_shape": list(batch_shape)}).encode())
    return CpuMode(best[0], best[1], seconds)


def _layout(model: nn.Module, device: torch.device) -> tuple[torch.memory_format, str]:
    """The memory format of training and how convolutions run (:func:`edgemvp.probe.onednn_training`):
    channels-last for CNNs (faster) with oneDNN where its gradients are sound or only its strided 1x1
    convolutions need the workaround; the contiguous layout without oneDNN where even that is not enough."""
    if not any(p.ndim == 4 for p in model.parameters()):
        return torch.contiguous_format, "sound"
    verdict = onednn_training(torch.get_num_threads()) if device.type == "cpu" else "sound"
    return (torch.contiguous_format if verdict == "unsound" else torch.channels_last), verdict


def _subsampled(module: nn.Conv2d, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """A strided 1x1 convolution as subsample + stride-1 1x1 (the same function; see :mod:`edgemvp.probe`)."""
    sh, sw = module.stride
    return F.conv2d(args[0][:, :, ::sh, ::sw], module.weight, module.bias, 1, 0, 1, module.groups)


@contextlib.contextmanager
def _conv_workaround(model: nn.Module, verdict: str) -> Iterator[None]:
    """Train with the probe's workaround for this CPU's oneDNN: none, subsampled strided 1x1 convolutions, or
    oneDNN off."""
    hooks = []
    if verdict == "strided-1x1":
        hooks = [m.register_forward_hook(_subsampled) for m in model.modules()
                 if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
                 and m.padding == (0, 0) and m.dilation == (1, 1)]
    try:
        with _onednn(verdict != "unsound"):
            yield
    finally:
        for hook in hooks:
            hook.remove()


@contextlib.contextmanager
def _onednn(enabled: bool) -> Iterator[None]:
    """oneDNN on or off for a block (torch warns about Intel-GPU TF32 whenever the flags are set: silenced)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
        flags = torch.backends.mkldnn.flags(enabled=enabled)
        flags.__enter__()
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
            flags.__exit__(None, None, None)


def _autocast(device: torch.device, amp: bool, native: bool | None = None) -> contextlib.AbstractContextManager:
    """Mixed precision: fp16/bf16 on CUDA; bf16 on a CPU when ``native`` (default: oneDNN reports native bf16)."""
    if amp and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    if amp and device.type == "cpu" and (cpu_supports_bf16() if native is None else native):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _precision(model: nn.Module, device: torch.device, amp: bool, deterministic: bool, cpu_mode: CpuMode | None
               ) -> tuple[torch.memory_format, str, bool, bool | None]:
    """Memory format, oneDNN verdict, autocast on or off, and native bf16 (None: oneDNN's report) of a run."""
    memory, verdict = _layout(model, device)
    amp = amp and not (deterministic and device.type == "cpu")
    native = None
    if cpu_mode is not None and device.type == "cpu" and not deterministic:
        amp = native = cpu_mode.bf16
        if not cpu_mode.channels_last:
            memory = torch.contiguous_format
    return memory, verdict, amp, native


@contextlib.contextmanager
def _cudnn_benchmark(device: torch.device) -> Iterator[None]:
    """On CUDA, cuDNN picks its fastest kernels per shape (training shapes are fixed between IFP events)."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = before or device.type == "cuda"
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def train_steps(model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], steps: int,
                cfg: OptimConfig, device: torch.device | None = None, progress: Progress | None = None,
                amp: bool = True, hook: StepHook | None = None, deterministic: bool = False,
                cpu_mode: CpuMode | None = None) -> list[float]:
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
        cpu_mode: On a CPU, not deterministic: the precision and memory format :func:`choose_cpu_mode` chose
            (default: bf16 wherever oneDNN reports native bf16, channels-last).

    Returns:
        The loss of every step.
    """
    device = device or default_device()
    progress = _NoProgress() if progress is None else progress  # tqdm has no truth value
    hook = hook or StepHook()
    model.to(device).train()
    memory, verdict, amp, native = _precision(model, device, amp, deterministic, cpu_mode)
    model.to(memory_format=memory)
    opt = build_optimizer(model, cfg, hook.param_groups())
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda" and not torch.cuda.is_bf16_supported())
    losses: list[float] = []
    progress.reset(total=steps)
    images, started = 0, time.perf_counter()
    with _conv_workaround(model, verdict), _cudnn_benchmark(device):
        for step, (x, y) in zip(range(steps), batches):
            for group in opt.param_groups:
                group["lr"] = group["peak_lr"] * lr_factor(cfg, step, steps)
            x, y = x.to(device, non_blocking=True).contiguous(memory_format=memory), y.to(device, non_blocking=True)
            with _autocast(device, amp, native):
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
            images += len(y)
            if len(losses) % 10 == 0:
                rate = images / max(time.perf_counter() - started, 1e-9)
                progress.set_postfix(loss=f"{sum(losses[-10:]) / 10:.3f}", img_s=f"{rate:.0f}")
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
            outs.append(model(x.to(device, non_blocking=True)).float().cpu())
        labels.append(y)
    return torch.cat(outs), torch.cat(labels)


def accuracy(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device | None = None) -> float:
    """Top-1 accuracy in percent."""
    logits, labels = predict_logits(model, batches, device)
    return 100.0 * float((logits.argmax(1) == labels).float().mean())


def _running_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def batchnorm_statistics_matter(model: nn.Module, steps: int, threshold: float = 1e-3) -> bool:
    """Whether BatchNorm statistics set now would still count after ``steps`` training steps.

    Training-mode BatchNorm normalises with batch statistics and moves its running statistics towards them by
    ``momentum`` per step, so after ``steps`` steps a fraction ``(1 - momentum) ** steps`` of what they were is
    left (momentum 0.1: 2.7e-5 after 100 steps, 1e-3 after 66). False when that fraction is below ``threshold``
    for every BatchNorm, or when the model has none; True for a cumulative average (momentum None).
    """
    norms = _running_batchnorms(model)
    if not norms:
        return False
    return any(m.momentum is None or (1.0 - m.momentum) ** steps >= threshold for m in norms)


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], steps: int,
                         device: torch.device | None = None) -> int:
    """Recompute every BatchNorm's running mean and variance as the average over ``steps`` batches.

    No parameter changes (forward passes only, in train mode for the statistics). Returns the number of
    BatchNorm layers reset (0 for models without any that keep running statistics, such as ViTs).
    """
    norms = _running_batchnorms(model)
    if not norms or steps < 1:
        return 0
    device = device or next(model.parameters()).device
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts equally
    model.train()
    try:
        with torch.no_grad():  # statistics only: no graph
            for _ in range(steps):
                x, _ = next(batches)
                model(x.to(device, non_blocking=True))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return len(norms)
