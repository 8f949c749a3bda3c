"""Batches of model input for a labelled subset of a split, seeded and augmentation-aware."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from edgemvp.data.datasets import ImageSplit
from edgemvp.data.transforms import augment, to_input
from edgemvp.spec import InputSpec


@dataclass(frozen=True)
class LabeledView:
    """A subset of a split with labels re-mapped for a task.

    Attributes:
        split: The underlying split.
        indices: Positions in ``split`` (``(N,)`` int64).
        targets: The label of each position for the task (``(N,)`` int64, 0..k-1).
        hflip: Whether mirrored images keep their labels.
    """

    split: ImageSplit
    indices: np.ndarray
    targets: np.ndarray
    hflip: bool = False

    def __len__(self) -> int:
        return len(self.indices)


def train_batches(view: LabeledView, spec: InputSpec, batch_size: int, seed: int,
                  augmented: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled batches (reshuffled every epoch) with optional augmentation.

    Yields:
        ``x`` float ``(B, C, S, S)`` normalised for ``spec`` and ``y`` int64 ``(B,)``.
    """
    gen = torch.Generator().manual_seed(seed)
    n = len(view)
    batch_size = min(batch_size, n)
    targets = torch.from_numpy(view.targets)
    while True:
        order = torch.randperm(n, generator=gen)
        for start in range(0, n - batch_size + 1, batch_size):
            pick = order[start : start + batch_size].numpy()
            x = view.split.load(view.indices[pick], spec.size, spec.crop_pct, spec.interpolation)
            if augmented:
                x = augment(x, gen, view.hflip, pad=max(1, spec.size // 16))
            yield to_input(x, spec), targets[pick]


def eval_batches(view: LabeledView, spec: InputSpec, batch_size: int = 512
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches in order, without augmentation."""
    targets = torch.from_numpy(view.targets)
    for start in range(0, len(view), batch_size):
        sl = slice(start, start + batch_size)
        x = view.split.load(view.indices[sl], spec.size, spec.crop_pct, spec.interpolation)
        yield to_input(x, spec), targets[sl]


def balanced_sample(view: LabeledView, spec: InputSpec, samples: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """A seeded sample of at most ``samples`` images of a view, balanced over its classes."""
    per_class = max(1, math.ceil(samples / max(1, int(view.targets.max()) + 1)))
    rng = np.random.default_rng(seed)
    pick = np.concatenate([np.sort(rng.permutation(np.flatnonzero(view.targets == t))[:per_class])
                           for t in np.unique(view.targets)])
    sub = LabeledView(view.split, view.indices[pick], view.targets[pick], view.hflip)
    xs, ys = zip(*eval_batches(sub, spec))
    return torch.cat(xs), torch.cat(ys).numpy()
