"""The pruner interface, its typed configuration and the registry."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Literal, Protocol

import torch
import torch.nn as nn

from edgemvp import checks
from edgemvp.errors import UsageError, unknown
from edgemvp.masks import Masks, unit_keep
from edgemvp.models.factory import FAMILIES
from edgemvp.train import OptimConfig, Progress
from edgemvp.units import unit_space

Family = Literal["cnn", "vit"]
Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]

DEFAULT_OPTIM: dict[Family, OptimConfig] = {name: f.prune for name, f in FAMILIES.items()}  # see models.factory


@dataclass(frozen=True)
class PruneConfig:
    """Hyper-parameters of a single-task pruning run (paper defaults where it gives them).

    Attributes:
        ratio: Fraction of units removed in every group (paper: 0.9).
        iters: Optimiser steps J in all (AHNP: score phase plus ``finetune_iters``).
        batch_size: Training batch (paper: 128).
        lr: Peak learning rate of inherited weights; ``None`` takes the family default (:data:`DEFAULT_OPTIM`).
        weight_decay: ``None`` takes the family default.
        prune_fraction: p, the share of each group's remaining units removed at every pruning event.
        prune_every: h, steps between pruning events; ``None`` spreads the events evenly so the target is
            reached at ``prune_until`` of the score/pruning phase.
        prune_until: Fraction of the pruning phase by which the target ratio is reached when ``prune_every``
            is ``None``; the rest is fine-tuning of the final sub-network.
        finetune_iters: AHNP's K fine-tune steps after thresholding; ``None`` is ``iters // 2``.
        score_lr: AHNP's learning rate for head/node scores (larger than ``lr``).
        l1: AHNP's L1 weight on the scores (summed over groups of per-group mean |score|).
        seed: Seeds batches, random masks and initialisation.
        amp: Mixed precision on CUDA. CPU runs fp32 so that builds are bit-reproducible.
        round_to: Channel (MLP node) counts kept as multiples of this, a device's channel block; 1 (the default)
            is left out of :meth:`to_dict`, so zoo job keys of unaligned builds are what they were.
    """

    ratio: float = 0.9
    iters: int = 1000
    batch_size: int = 128
    lr: float | None = None
    weight_decay: float | None = None
    prune_fraction: float = 0.2
    prune_every: int | None = None
    prune_until: float = 0.5
    finetune_iters: int | None = None
    score_lr: float = 0.05
    l1: float = 1e-2
    seed: int = 0
    amp: bool = True
    round_to: int = 1

    def __post_init__(self) -> None:
        checks.number("ratio", self.ratio, 0, 1, lo_open=True, hi_open=True)
        checks.number("round-to", self.round_to, 1, 4096, integer=True)
        checks.number("iters", self.iters, 1, 10**9, integer=True)
        checks.number("batch size", self.batch_size, 1, 65_536, integer=True)
        checks.optional("lr", self.lr, lo=0, hi=10, lo_open=True)
        checks.optional("weight decay", self.weight_decay, lo=0, hi=10)
        checks.number("prune fraction", self.prune_fraction, 0, 1, lo_open=True, hi_open=True)
        checks.number("prune-until", self.prune_until, 0, 1, lo_open=True)
        checks.optional("prune-every", self.prune_every, lo=1, hi=10**9, integer=True)
        checks.optional("finetune iters", self.finetune_iters, lo=0, hi=self.iters, hi_open=True, integer=True)
        checks.number("score lr", self.score_lr, 0, 100, lo_open=True)
        checks.number("l1", self.l1, 0, 100)
        checks.seed("seed", self.seed)

    def optim(self, family: Family) -> OptimConfig:
        """The optimiser for inherited weights: family default with this config's overrides."""
        base = DEFAULT_OPTIM[family]
        return OptimConfig(optimizer=base.optimizer, lr=self.lr if self.lr is not None else base.lr,
                           weight_decay=base.weight_decay if self.weight_decay is None else self.weight_decay,
                           momentum=base.momentum)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for manifests (``round_to`` only when it aligns)."""
        out = asdict(self)
        if self.round_to == 1:
            del out["round_to"]
        return out


@dataclass
class PruneOutcome:
    """What a pruner returns: the shrunk, trained model, its masks and the training losses."""

    model: nn.Module
    masks: Masks
    losses: list[float] = field(default_factory=list)
    events: int = 0


class Pruner(Protocol):
    """A single-task pruning algorithm."""

    name: str
    families: tuple[Family, ...]

    def __call__(self, model: nn.Module, arch: str, batches: Batches, cfg: PruneConfig, base_sha256: str,
                 device: torch.device | None, progress: Progress | None) -> PruneOutcome: ...


PRUNERS: dict[str, Pruner] = {}


def register_pruner(name: str, families: tuple[Family, ...]) -> Callable[[Callable], Pruner]:
    """Register a pruning function under ``name`` for the given model families."""

    def wrap(fn: Callable) -> Pruner:
        fn.name, fn.families = name, families  # type: ignore[attr-defined]
        PRUNERS[name] = fn  # type: ignore[assignment]
        return fn  # type: ignore[return-value]

    return wrap


def get_pruner(name: str, family: Family | None = None) -> Pruner:
    """A registered pruner, checked against the model family.

    Raises:
        UsageError: Unknown pruner, or one that does not prune this family.
    """
    if name not in PRUNERS:
        raise unknown("pruner", name, sorted(PRUNERS))
    pruner = PRUNERS[name]
    if family is not None and family not in pruner.families:
        fits = sorted(n for n, p in PRUNERS.items() if family in p.families)
        raise UsageError(f"pruner '{name}' does not prune {family.upper()} models; use one of: {', '.join(fits)}")
    return pruner


def final_keep(arch: str, ratio: float, round_to: int = 1) -> dict[str, int]:
    """Units each group keeps at the end: max(1, round((1 - r) n)) (docs/design.md, decision 2), channel and MLP
    groups rounded to a multiple of ``round_to`` (:func:`edgemvp.masks.unit_keep`)."""
    return {u.name: unit_keep(u, ratio, round_to) for u in unit_space(arch).units}


def next_keep(have: int, final: int, fraction: float) -> int:
    """Units a group keeps after one pruning event: p% of the remaining removed (at least one), not below final."""
    return max(final, have - max(1, round(fraction * have)))


def pruning_events(sizes: dict[str, int], finals: dict[str, int], fraction: float) -> int:
    """Events needed until every group reaches its final size."""
    worst = 0
    for name, have in sizes.items():
        count = 0
        while have > finals[name]:
            have, count = next_keep(have, finals[name], fraction), count + 1
        worst = max(worst, count)
    return worst


def event_interval(cfg: PruneConfig, phase_steps: int, events: int) -> int:
    """h: the configured interval, or one that finishes ``events`` events by ``prune_until`` of the phase."""
    if cfg.prune_every is not None:
        return cfg.prune_every
    return max(1, math.floor(cfg.prune_until * phase_steps / max(1, events)))


def prune_positions(scores: torch.Tensor, keep: int) -> list[int]:
    """Positions of the ``keep`` highest scores, in increasing order (ties keep the lower position)."""
    order = torch.argsort(-scores.double(), stable=True)[:keep]
    return sorted(order.tolist())
