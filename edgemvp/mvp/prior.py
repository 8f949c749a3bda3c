"""The base's own ranking of units on the target's data: the order in which a vote takes units that no neighbour
kept (a ratio below the neighbours', or a channel block that rounds a group up past their union).

A unit's importance is its mean activation on a seeded, class-balanced sample of the target's training images:
ReLU of every BatchNorm output that carries it (residual-coupled channels summed over their coupling group), the
``activation`` criterion of IFP (:mod:`edgemvp.pruners.ifp`), measured once on the unpruned base in eval mode.
Families without BatchNorm-carried channel groups (ViTs) get no prior and keep the vote's Gumbel order.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from edgemvp.pruners.ifp import score_modules
from edgemvp.units import unit_space

PRIOR_IMAGES = 64  # target images the importance is measured on


def unit_importance(model: nn.Module, arch: str, images: torch.Tensor) -> np.ndarray | None:
    """Per unit, in unit-space order, the mean ReLU activation it carries on ``images`` (None when some group
    has no BatchNorm or convolution output to read it from).

    Args:
        model: The unpruned base (any head: only activations are read).
        arch: Its architecture.
        images: Normalised model inputs, ``(n, C, H, W)``.
    """
    space = unit_space(arch)
    modules = dict(model.named_modules())
    sources = score_modules(arch)
    if any(not sources[u.name] or any(not isinstance(modules[m], (nn.BatchNorm2d, nn.Conv2d)) for m in sources[u.name])
           for u in space.units):
        return None
    device = next(model.parameters()).device
    scores = {u.name: torch.zeros(u.size, dtype=torch.float64) for u in space.units}

    def hook_for(unit: str):
        def hook(module: nn.Module, inputs: object, out: torch.Tensor) -> None:
            scores[unit] += torch.relu(out).double().mean(dim=(0, 2, 3)).cpu()
        return hook

    handles = [modules[m].register_forward_hook(hook_for(u)) for u, names in sources.items() for m in names]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(images.to(device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return np.concatenate([scores[u.name].numpy() for u in space.units])
