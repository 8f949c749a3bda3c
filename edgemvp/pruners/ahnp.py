"""Automatic head and node pruning (AHNP, paper appendix Algorithm 3) for ViT/DeiT.

A learnable score per attention head and per MLP hidden node multiplies that unit's output (the head's slice
of the projection input, the node's input to ``fc2``). Scores start at 1, train with a larger learning rate
than the inherited weights and carry an L1 penalty. Every h steps each group switches off p% of its remaining
units with the smallest |score|, until it keeps max(1, round((1 - r) n)). The surviving scores are then folded
into the weights (so the function is unchanged), the model is shrunk, and K fine-tune steps follow.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from edgemvp.masks import Masks, full_masks
from edgemvp.pruners.base import (Batches, PruneConfig, PruneOutcome, event_interval, final_keep, next_keep,
                                  prune_positions, pruning_events, register_pruner)
from edgemvp.shrink import shrink
from edgemvp.train import Progress, StepHook, default_device, train_steps
from edgemvp.units import unit_space


class _ScoreHook(StepHook):
    """Scores multiplied into heads and MLP nodes, their L1 penalty and the thresholding events."""

    def __init__(self, model: nn.Module, arch: str, cfg: PruneConfig, phase_steps: int) -> None:
        self.cfg = cfg
        self.units = {u.name: u for u in unit_space(arch).units}
        device = next(model.parameters()).device
        self.scores = {n: nn.Parameter(torch.ones(u.size, device=device)) for n, u in self.units.items()}
        self.alive = {n: torch.ones(u.size, dtype=torch.bool, device=device) for n, u in self.units.items()}
        self.finals = final_keep(arch, cfg.ratio, cfg.round_to)
        events = pruning_events({n: u.size for n, u in self.units.items()}, self.finals, cfg.prune_fraction)
        self.every = event_interval(cfg, phase_steps, events)
        self.events = 0
        modules = dict(model.named_modules())
        self.handles = []
        for name, unit in self.units.items():
            target = modules[f"{name}.proj"] if unit.kind == "heads" else modules[f"{name}.fc2"]
            self.handles.append(target.register_forward_pre_hook(self._make_hook(name)))

    def gate(self, name: str) -> torch.Tensor:
        """Score times alive mask of a group (what multiplies the units' outputs)."""
        score = self.scores[name]
        return score * self.alive[name].to(score.device, score.dtype)

    def _make_hook(self, name: str):
        unit = self.units[name]

        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            x = args[0]  # (B, N, units * width): heads are head-major slices of the projection input
            g = self.gate(name).to(x.device, x.dtype).repeat_interleave(unit.width)
            return (x * g,) + tuple(args[1:])
        return hook

    @property
    def done(self) -> bool:
        return all(int(self.alive[n].sum()) <= f for n, f in self.finals.items())

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.scores.values()), "lr": self.cfg.score_lr, "weight_decay": 0.0}]

    def penalty(self) -> torch.Tensor:
        return self.cfg.l1 * sum(self.gate(n).abs().mean() for n in self.units)

    def after_step(self, step: int) -> bool:
        if not self.done and (step + 1) % self.every == 0:
            self.threshold()
        return False

    def threshold(self) -> None:
        """One event: every group not at its target switches off p% of its remaining units (smallest |score|)."""
        for name in self.units:
            alive = self.alive[name].nonzero().flatten()
            keep = next_keep(len(alive), self.finals[name], self.cfg.prune_fraction)
            if keep < len(alive):
                score = self.scores[name].detach().abs().cpu()[alive]
                survivors = alive[torch.as_tensor(prune_positions(score, keep), device=alive.device)]
                self.alive[name] = torch.zeros_like(self.alive[name]).index_fill_(0, survivors, True)
        self.events += 1

    def masks(self, base_sha256: str, arch: str) -> Masks:
        return Masks(arch, {n: tuple(a.nonzero().flatten().tolist()) for n, a in self.alive.items()}, base_sha256)

    @torch.no_grad()
    def fold(self, model: nn.Module) -> None:
        """Multiply the scores into the weights that read the units' outputs, then remove the hooks."""
        modules = dict(model.named_modules())
        for name, unit in self.units.items():
            linear = modules[f"{name}.proj"] if unit.kind == "heads" else modules[f"{name}.fc2"]
            g = self.gate(name).detach().to(linear.weight.device, linear.weight.dtype)
            linear.weight.mul_(g.repeat_interleave(unit.width)[None, :])
        for handle in self.handles:
            handle.remove()


@register_pruner("ahnp", ("vit",))
def ahnp(model: nn.Module, arch: str, batches: Batches, cfg: PruneConfig, base_sha256: str,
         device: torch.device | None = None, progress: Progress | None = None) -> PruneOutcome:
    """Prune a ViT/DeiT (the base with the task's head) with AHNP; see the module docstring."""
    finetune = cfg.iters // 2 if cfg.finetune_iters is None else cfg.finetune_iters
    phase = cfg.iters - finetune
    device = device or default_device()
    hook = _ScoreHook(model.to(device), arch, cfg, phase)  # its scores live where the model trains
    losses = train_steps(model, batches, phase, cfg.optim("vit"), device, progress, cfg.amp,
                         hook=hook, deterministic=True)
    while not hook.done:  # the last event may fall after the phase when h does not divide it
        hook.threshold()
    hook.fold(model)
    masks = hook.masks(base_sha256, arch)
    shrink(model, masks)  # on the device it trained on
    if finetune:
        losses += train_steps(model, batches, finetune, cfg.optim("vit"), device, progress, cfg.amp,
                              deterministic=True)
    return PruneOutcome(model.eval(), masks, losses, hook.events)
