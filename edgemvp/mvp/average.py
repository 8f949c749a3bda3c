"""The sub-network's initial weights: neighbour averaging in the full index space, class-aware head rows,
and BatchNorm statistics re-estimated on the target (docs/design.md, decisions 4 and 5).

Every neighbour's shrunk weights are expanded to the unpruned layout (:func:`edgemvp.shrink.expand_state`),
which also marks which elements it has: an element exists in a neighbour when that neighbour kept all the
units indexing it (output channel and input channel, head and model width, ...). Each element of the target
is the mean over the neighbours that have it, else the base model's value. Classifier rows follow class
identity: a target class's row is the mean of the neighbours' rows for the same class of the same dataset,
else the base model's row for that class when it has one, else timm's default initialisation (seeded). Then
the average is cut to the target's masks.

After averaging, the BatchNorm running statistics no longer describe the activations (they are means of other
sub-networks' statistics); :func:`edgemvp.train.reestimate_batchnorm` recomputes them on the target.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from edgemvp.manifest import WEIGHTS, ZooEntry
from edgemvp.masks import Masks
from edgemvp.models.base import task_model
from edgemvp.models.weights import load_weights
from edgemvp.shrink import contract_state, expand_state, rebuild_pruned
from edgemvp.spec import InputSpec

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Contribution:
    """One neighbour in the full index space.

    Attributes:
        state: Full-shape tensors (zeros where the neighbour has nothing).
        present: Per key, which elements the neighbour has.
        rows: For classifier keys: target row -> this neighbour's row of the same class.
    """

    state: StateDict
    present: dict[str, torch.Tensor]
    rows: Mapping[int, int]


def average_state(fallback: StateDict, contributions: Sequence[Contribution], head_keys: Sequence[str] = ()
                  ) -> StateDict:
    """Element-wise mean over the contributions that have an element, else ``fallback`` (decisions 4, 5).

    Args:
        fallback: The base model's state in the target's full layout (its head already has the target's
            class rows: the base's row for a known class, else default init).
        contributions: The neighbours, expanded.
        head_keys: Classifier keys, whose rows are matched by class (``Contribution.rows``) rather than position.

    Integer buffers (``num_batches_tracked``) keep the fallback value.
    """
    heads = set(head_keys)
    out: StateDict = {}
    for key, base in fallback.items():
        if not base.is_floating_point():
            out[key] = base.clone()
            continue
        device = base.device  # the target model's device; neighbours' tensors (read from disk) are moved there
        total = torch.zeros(base.shape, dtype=torch.float64, device=device)  # same shape as the target's tensor
        count = torch.zeros(base.shape, dtype=torch.int64, device=device)  # neighbours that have each element
        for c in contributions:
            # as `base`, but a head has the neighbour's rows
            value, have = c.state[key].to(device, torch.float64), c.present[key].to(device)
            if key in heads:  # head (its classes, width): its row for each target class it shares
                for target_row, row in c.rows.items():
                    total[target_row] += torch.where(have[row], value[row], 0.0)
                    count[target_row] += have[row]
            else:
                total += torch.where(have, value, 0.0)
                count += have
        averaged = total / count.clamp_min(1)
        out[key] = torch.where(count > 0, averaged, base.double()).to(base.dtype)
    return out


def classifier_keys(model: nn.Module) -> tuple[str, ...]:
    """State-dict keys of the model's classifier."""
    head = model.get_classifier()
    name = next(n for n, m in model.named_modules() if m is head)
    return tuple(f"{name}.{k}" for k, _ in head.named_parameters())


def neighbour_contribution(entry: ZooEntry, full_shapes: Mapping[str, torch.Size], head: Sequence[str],
                           target_dataset: str, target_classes: Sequence[str]) -> Contribution:
    """Expand a zoo entry's weights to the full layout and map its classifier rows to the target's classes.

    The weights are read with their sha256 checked (a corrupt entry is refused, never averaged in).
    """
    m = entry.manifest
    state = load_weights(entry.folder / WEIGHTS, m.weights_sha256)
    shapes = dict(full_shapes)
    for key in head:  # the neighbour's head has its own task's rows
        shapes[key] = torch.Size((len(m.task.classes),) + tuple(full_shapes[key][1:]))
    full, present = expand_state(state, m.masks, shapes)  # unpruned shapes; present: the elements it kept
    rows = {}
    if m.task.dataset == target_dataset:
        theirs = {c: i for i, c in enumerate(m.task.classes)}
        rows = {t: theirs[c] for t, c in enumerate(target_classes) if c in theirs}
    return Contribution(full, present, rows)


def target_model(base: nn.Module, base_classes: tuple[str, ...], base_dataset: str, target_dataset: str,
                 target_classes: tuple[str, ...], seed: int, rows: Sequence[str] | None = None) -> nn.Module:
    """A full copy of the base with the target's classifier: the base's row for a class of its own dataset
    (or, with ``rows``, for the base class each target class maps to: :func:`edgemvp.models.base.base_rows`),
    else default initialisation (seeded)."""
    if rows is not None:
        return task_model(base, base_classes, tuple(rows), seed=seed)
    known = base_classes if base_dataset == target_dataset else ()
    return task_model(base, known, target_classes, seed=seed)


def averaged_model(base: nn.Module, base_classes: tuple[str, ...], base_dataset: str, arch: str,
                   spec: InputSpec, masks: Masks, neighbours: Sequence[ZooEntry], target_dataset: str,
                   target_classes: tuple[str, ...], seed: int, rows: Sequence[str] | None = None) -> nn.Module:
    """The target's shrunk model initialised from its neighbours (and the base where none has an element).

    Args:
        base: The base model (full, its own classifier).
        base_classes: The base's classes (a base row serves a target class of the same name and dataset).
        base_dataset: The base's dataset.
        arch: Architecture.
        spec: Input spec.
        masks: The target's masks.
        neighbours: Zoo entries to average (empty: base weights only).
        target_dataset: The target task's dataset.
        target_classes: The target task's classes, in label order.
        seed: Seeds default-initialised classifier rows.
        rows: Per target class, the base class whose classifier row is its fallback (None: same name and
            dataset only).
    """
    full = target_model(base, base_classes, base_dataset, target_dataset, target_classes, seed, rows)
    fallback = full.state_dict()
    head = classifier_keys(full)
    shapes = {k: v.shape for k, v in fallback.items()}
    # averaging is element-wise, so it is done on the target's kept elements only (a tenth of the channels keep
    # about a hundredth of the weights): the same numbers as averaging the full layout and contracting after
    contributions = []
    for e in neighbours:
        c = neighbour_contribution(e, shapes, head, target_dataset, target_classes)
        contributions.append(Contribution(contract_state(c.state, masks), contract_state(c.present, masks), c.rows))
    averaged = average_state(contract_state(fallback, masks), contributions, head)  # on the base's device
    device = next(iter(fallback.values())).device
    return rebuild_pruned(arch, len(target_classes), spec, masks, averaged, "averaged neighbours").to(device)
