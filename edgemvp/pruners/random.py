"""Random pruning + J fine-tune steps: the lower-bound baseline of the paper (any model family)."""
from __future__ import annotations

import torch
import torch.nn as nn

from edgemvp.masks import random_masks
from edgemvp.models.factory import get_arch
from edgemvp.pruners.base import Batches, PruneConfig, PruneOutcome, register_pruner
from edgemvp.shrink import shrink
from edgemvp.train import Progress, train_steps


@register_pruner("random", ("cnn", "vit"))
def random_prune(model: nn.Module, arch: str, batches: Batches, cfg: PruneConfig, base_sha256: str,
                 device: torch.device | None = None, progress: Progress | None = None) -> PruneOutcome:
    """Keep a seeded uniformly random (1 - r) of every group, shrink, then fine-tune for ``cfg.iters`` steps."""
    masks = random_masks(arch, cfg.ratio, cfg.seed, cfg.round_to, base_sha256=base_sha256)
    shrink(model, masks)
    family = get_arch(arch).family
    losses = train_steps(model, batches, cfg.iters, cfg.optim(family), device, progress, cfg.amp, deterministic=True)
    return PruneOutcome(model.eval(), masks, losses, 1)
