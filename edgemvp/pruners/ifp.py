"""Iterative filter pruning (IFP, paper appendix Algorithm 2) for CNNs, shrinking physically as it goes.

Training runs J SGD steps. Every h steps each unit group loses p% of its remaining channels, those with the
smallest importance accumulated since the previous event, until it keeps max(1, round((1 - r) n)). The model
is shrunk with torch-pruning at every event, so later steps are cheaper; the optimiser is rebuilt then.

Importance of a channel, summed over every BatchNorm of its coupling group (residual-coupled channels share
one score):

* ``activation``: mean of ReLU(BatchNorm output) over batch and space (the mean activation);
* ``taylor``: first-order Taylor (Molchanov et al., 2017): |mean over space of activation x gradient|,
  averaged over the batch.
"""
from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn as nn

from edgemvp.masks import Masks, full_masks
from edgemvp.pruners.base import (Batches, PruneConfig, PruneOutcome, event_interval, final_keep, next_keep,
                                  prune_positions, pruning_events, register_pruner)
from edgemvp.shrink import shrink
from edgemvp.train import Progress, StepHook, train_steps
from edgemvp.units import unit_space

logger = logging.getLogger(__name__)
Importance = Literal["activation", "taylor"]


def score_modules(arch: str) -> dict[str, list[str]]:
    """Per unit group, the modules whose outputs carry its channels (BatchNorms; convs where there is none)."""
    space = unit_space(arch)
    norms: dict[str, list[str]] = {u.name: [] for u in space.units}
    convs: dict[str, list[str]] = {u.name: [] for u in space.units}
    for cut in space.cuts:
        module = cut.key.rsplit(".", 1)[0]
        if cut.key.endswith(".running_mean"):
            norms[cut.unit].append(module)
        elif cut.key.endswith(".weight") and cut.dim == 0 and module not in convs[cut.unit]:
            convs[cut.unit].append(module)
    return {name: norms[name] or convs[name] for name in norms}


class _IFPHook(StepHook):
    """Accumulates channel importance with forward hooks and prunes + shrinks at every h-th step."""

    def __init__(self, model: nn.Module, masks: Masks, cfg: PruneConfig, importance: Importance) -> None:
        self.model, self.masks, self.cfg, self.importance = model, masks, cfg, importance
        self.finals = final_keep(masks.arch, cfg.ratio, cfg.round_to)
        sizes = {u: len(k) for u, k in masks.kept.items()}
        self.events_needed = pruning_events(sizes, self.finals, cfg.prune_fraction)
        self.every = event_interval(cfg, cfg.iters, self.events_needed)
        self.events = 0
        self.scores: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        self.handles = [modules[m].register_forward_hook(self._make_hook(unit))
                        for unit, names in score_modules(masks.arch).items() for m in names]

    @property
    def done(self) -> bool:
        return all(len(self.masks.kept[u]) <= f for u, f in self.finals.items())

    def _add(self, unit: str, value: torch.Tensor) -> None:
        value = value.detach().float()  # on the model's device: no host sync per forward pass
        self.scores[unit] = value if unit not in self.scores else self.scores[unit] + value

    def _make_hook(self, unit: str):
        def hook(module: nn.Module, inputs: object, out: torch.Tensor) -> None:
            if not (module.training and torch.is_grad_enabled()) or self.done:
                return
            if self.importance == "activation":
                self._add(unit, torch.relu(out.detach()).float().mean(dim=(0, 2, 3)))
            elif out.requires_grad:
                act = out.detach()
                out.register_hook(lambda g: self._add(unit, (act * g).float().mean(dim=(2, 3)).abs().mean(0)))
        return hook

    def after_step(self, step: int) -> bool:
        if self.done or (step + 1) % self.every:
            return False
        self.prune()
        return True

    def prune(self) -> None:
        """One pruning event: every group not yet at its target loses p% of its remaining channels."""
        kept = {}
        for unit, have in self.masks.kept.items():
            keep = next_keep(len(have), self.finals[unit], self.cfg.prune_fraction)
            score = self.scores[unit].cpu() if unit in self.scores else torch.zeros(len(have))
            kept[unit] = tuple(have[p] for p in prune_positions(score, keep)) if keep < len(have) else have
        new = Masks(self.masks.arch, kept, self.masks.base_sha256)
        shrink(self.model, new, current=self.masks)
        self.masks, self.scores, self.events = new, {}, self.events + 1

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def run_ifp(model: nn.Module, arch: str, batches: Batches, cfg: PruneConfig, base_sha256: str,
            device: torch.device | None, progress: Progress | None, importance: Importance) -> PruneOutcome:
    """Prune ``model`` (the base with the task's head) with IFP; see the module docstring."""
    hook = _IFPHook(model, full_masks(arch, base_sha256), cfg, importance)
    try:
        losses = train_steps(model, batches, cfg.iters, cfg.optim("cnn"), device, progress, cfg.amp,
                         hook=hook, deterministic=True)
        if not hook.done:  # fewer steps than events: finish on the last scores (no fine-tuning left)
            logger.warning("IFP: %d iterations were too few to reach the target by pruning every %d steps; "
                           "pruning the rest at the end", cfg.iters, hook.every)
        while not hook.done:
            hook.prune()
    finally:
        hook.close()
    return PruneOutcome(model.eval(), hook.masks, losses, hook.events)


@register_pruner("ifp-activation", ("cnn",))
def ifp_activation(model: nn.Module, arch: str, batches: Batches, cfg: PruneConfig, base_sha256: str,
                   device: torch.device | None = None, progress: Progress | None = None) -> PruneOutcome:
    """IFP with mean-activation importance."""
    return run_ifp(model, arch, batches, cfg, base_sha256, device, progress, "activation")


@register_pruner("ifp-taylor", ("cnn",))
def ifp_taylor(model: nn.Module, arch: str, batches: Batches, cfg: PruneConfig, base_sha256: str,
               device: torch.device | None = None, progress: Progress | None = None) -> PruneOutcome:
    """IFP with first-order Taylor importance."""
    return run_ifp(model, arch, batches, cfg, base_sha256, device, progress, "taylor")
