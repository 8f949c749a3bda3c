"""Batches of model input for a labelled subset of a split, seeded and augmentation-aware."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import numpy as np
import torch

from edgemvp import checks
from edgemvp.data.datasets import ArraySplit, ImageSplit
from edgemvp.data.transforms import apply_augment, draw_augment, to_input
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


class _Plan(NamedTuple):
    """One batch as the main process decides it: view positions and the augmentation's random draws."""

    pick: np.ndarray
    offsets: torch.Tensor | None
    flips: torch.Tensor | None


class _Plans(torch.utils.data.Sampler):
    """Endless batch plans: a seeded shuffle per epoch and the augmentation draws, from one generator in the
    main process, in the order the in-thread loader always drew them (so batches do not depend on workers)."""

    def __init__(self, n: int, batch_size: int, seed: int, hflip: bool, pad: int, augmented: bool) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.hflip, self.pad, self.augmented = hflip, pad, augmented

    def __iter__(self) -> Iterator[_Plan]:
        gen = torch.Generator().manual_seed(self.seed)
        while True:
            order = torch.randperm(self.n, generator=gen)
            for start in range(0, self.n - self.batch_size + 1, self.batch_size):
                pick = order[start : start + self.batch_size].numpy()
                draws = draw_augment(len(pick), gen, self.hflip, self.pad) if self.augmented else (None, None)
                yield _Plan(pick, *draws)


class _Ordered(torch.utils.data.Sampler):
    """Evaluation plans: consecutive slices in order, no augmentation."""

    def __init__(self, n: int, batch_size: int) -> None:
        self.n, self.batch_size = n, batch_size

    def __iter__(self) -> Iterator[_Plan]:
        for start in range(0, self.n, self.batch_size):
            yield _Plan(np.arange(start, min(start + self.batch_size, self.n)), None, None)

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)


class _Batches(torch.utils.data.Dataset):
    """Makes the uint8 batch of a plan (in a worker process, or in this thread with no workers): decode or slice
    the images at the model's input size and apply the drawn augmentation. Normalising to float is left to the
    training process (:func:`_normalised`): a uint8 batch is a quarter of the bytes in the workers' shared
    memory and in flight."""

    def __init__(self, view: LabeledView, spec: InputSpec, pad: int) -> None:
        self.view, self.spec, self.pad = view, spec, pad
        self.targets = torch.from_numpy(view.targets)

    def __getitem__(self, plan: _Plan) -> tuple[torch.Tensor, torch.Tensor]:
        spec = self.spec
        x = self.view.split.load(self.view.indices[plan.pick], spec.size, spec.crop_pct, spec.interpolation)
        x = apply_augment(x, plan.offsets, plan.flips, self.pad)
        return x, self.targets[torch.from_numpy(np.asarray(plan.pick, dtype=np.int64))]


def _normalised(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], spec: InputSpec, pin_memory: bool
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The model's float input of each uint8 batch, page-locked when asked (for ``non_blocking`` CUDA copies)."""
    for x, y in batches:
        x = to_input(x, spec)
        yield (x.pin_memory(), y.pin_memory()) if pin_memory else (x, y)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers decode; the training process keeps the cores' threads


def default_workers(view: LabeledView) -> int:
    """Loader processes when none are asked for: none for images already in memory (slicing and per-batch
    resizing cost less than a process hand-off on small inputs), else up to 4, leaving a core for training."""
    if isinstance(view.split, ArraySplit):
        return 0
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def _loader(view: LabeledView, spec: InputSpec, sampler: torch.utils.data.Sampler, pad: int, workers: int | None,
            pin_memory: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    workers = default_workers(view) if workers is None else checks.number("workers", workers, 0, 256, integer=True)
    extra = dict(prefetch_factor=2, persistent_workers=True, worker_init_fn=_worker_init) if workers else {}
    loader = torch.utils.data.DataLoader(_Batches(view, spec, pad), sampler=sampler, batch_size=None,
                                         num_workers=workers, **extra)
    return _normalised(iter(loader), spec, pin_memory and torch.cuda.is_available())


def train_batches(view: LabeledView, spec: InputSpec, batch_size: int, seed: int, augmented: bool = True,
                  workers: int | None = None, pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled batches (reshuffled every epoch) with optional augmentation, from a torch
    ``DataLoader``.

    The shuffle and the augmentation's random draws are made in this process from one generator seeded with
    ``seed``; workers only decode, fit and apply them. So the same seed gives the same batches whatever the
    worker count (and the same as before the loader had workers).

    Args:
        workers: Loader processes (0: in this thread; None: :func:`default_workers`).
        pin_memory: Page-locked batches, for ``non_blocking`` copies to CUDA.

    Yields:
        ``x`` float ``(B, C, S, S)`` normalised for ``spec`` and ``y`` int64 ``(B,)``.
    """
    batch_size = min(batch_size, len(view))
    pad = max(1, spec.size // 16)
    plans = _Plans(len(view), batch_size, seed, view.hflip, pad, augmented)
    return _loader(view, spec, plans, pad, workers, pin_memory)


def eval_batches(view: LabeledView, spec: InputSpec, batch_size: int = 512, workers: int | None = None,
                 pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches in order, without augmentation (workers as in :func:`train_batches`)."""
    return _loader(view, spec, _Ordered(len(view), batch_size), 0, workers, pin_memory)


def balanced_sample(view: LabeledView, spec: InputSpec, samples: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """A seeded sample of at most ``samples`` images of a view, balanced over its classes."""
    per_class = max(1, math.ceil(samples / max(1, int(view.targets.max()) + 1)))
    rng = np.random.default_rng(seed)
    pick = np.concatenate([np.sort(rng.permutation(np.flatnonzero(view.targets == t))[:per_class])
                           for t in np.unique(view.targets)])
    sub = LabeledView(view.split, view.indices[pick], view.targets[pick], view.hflip)
    xs, ys = zip(*eval_batches(sub, spec))
    return torch.cat(xs), torch.cat(ys).numpy()
