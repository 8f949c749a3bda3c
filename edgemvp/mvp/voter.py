"""The voter: vote a new task's masks from its nearest zoo entries and average its initial weights.

One code path wherever MVP runs. ``edgemvp prune`` on a local zoo calls :func:`initialise` in process
(through :class:`edgemvp.zoo.local.LocalZoo`); the zoo server calls the very same function for ``POST /vote``.
A prune against a remote zoo therefore gets the same masks and bit-identical initial weights as a local prune
with the same seed.

The voter reads entries through :class:`EntrySource` (what a zoo store offers), so the method imports nothing
from :mod:`edgemvp.zoo`. Ranking is :mod:`edgemvp.mvp.rank`'s; what stays with the caller (the client, in a
remote prune): LEEP, which needs the target's images, BatchNorm re-estimation and fine-tuning.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np
import torch.nn as nn

from edgemvp import checks
from edgemvp.data.tasks import TaskSpec
from edgemvp.errors import UsageError
from edgemvp.manifest import EntryManifest, ZooEntry
from edgemvp.masks import Masks, random_masks
from edgemvp.models.base import BaseManifest, base_rows
from edgemvp.mvp.average import averaged_model
from edgemvp.mvp.rank import Ranking, nearest
from edgemvp.mvp.vote import DEFAULT_NEIGHBOURS, DEFAULT_RATIO, DEFAULT_TEMPERATURE, vote

VOTER_METHODS = ("mvp", "transfer", "random")  # the methods whose initial model the voter makes


class EntrySource(Protocol):
    """What the voter reads from a zoo (:class:`edgemvp.zoo.store.ZooStore` is one)."""

    def get(self, entry_id: str) -> ZooEntry:
        """An entry by id (manifest checked)."""

    def check_row(self, entry: ZooEntry) -> None:
        """Refuse an entry whose index row does not say what its manifest says."""

    def mask_rows(self, ids: Sequence[str]) -> np.ndarray:
        """``(len(ids), units)`` bool kept units of the entries, in unit-space order."""


@dataclass(frozen=True)
class Neighbour:
    """A zoo entry that voted, with its similarity to the target."""

    id: str
    manifest: EntryManifest
    similarity: float

    def summary(self) -> dict:
        """The report's line for this neighbour."""
        m = self.manifest
        return {"id": self.id, "task": m.task.name, "dataset": m.task.dataset, "classes": list(m.task.classes),
                "similarity": round(self.similarity, 5), "test_acc": m.metrics.get("test_acc"), "pruner": m.pruner}


def check_vote_settings(ratio: float, temperature: float, neighbours: int) -> None:
    """Refuse a ratio outside (0, 1), a non-positive tau or fewer than one neighbour (one line each).

    Raises:
        UsageError: The first bad setting.
    """
    checks.number("--ratio", ratio, 0, 1, lo_open=True, hi_open=True)
    checks.number("--temperature", temperature, 0, 1e6, lo_open=True)
    checks.number("--neighbours", neighbours, 1, 1000, integer=True)


@dataclass(frozen=True)
class VoteSpec:
    """What the voter needs besides the zoo: the target task and the method's settings.

    Attributes:
        task: The target task.
        method: ``mvp`` (N nearest vote), ``transfer`` (the nearest entry's masks and weights) or ``random``
            (seeded random masks, base weights).
        neighbours: N, for ``mvp``.
        ratio: Fraction of every unit group removed.
        temperature: tau of softmax(v / tau).
        seed: Seeds the vote and default-initialised classifier rows.
        head_from_base: Start a target class from the base's classifier row for it: a class of the base's
            own dataset, or for a stock ImageNet base a class whose synset is an ImageNet class.
        round_to: Channel (MLP node) counts kept as multiples of this, the device's channel block (``mvp`` and
            ``random``; ``transfer`` keeps its entry's masks as they are).
        prior: The base's per-unit importance on the target (:mod:`edgemvp.mvp.prior`), which fills groups
            that keep more units than the neighbours voted for (``mvp``); None: those are drawn at random.
        counts: Per unit group (unit-space order), the units to keep instead of the uniform ``ratio``'s: a
            per-group allocation under a latency budget (``mvp`` and ``random``; :mod:`edgemvp.deploy.allocate`).
    """

    task: TaskSpec
    method: str = "mvp"
    neighbours: int = DEFAULT_NEIGHBOURS
    ratio: float = DEFAULT_RATIO
    temperature: float = DEFAULT_TEMPERATURE
    seed: int = 0
    head_from_base: bool = True
    round_to: int = 1
    prior: np.ndarray | None = field(default=None, compare=False, repr=False)
    counts: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.method not in VOTER_METHODS:
            raise UsageError(f"the voter makes {', '.join(VOTER_METHODS)} models, not '{self.method}'")
        check_vote_settings(self.ratio, self.temperature, self.neighbours)
        checks.number("--round-to", self.round_to, 1, 4096, integer=True)

    @property
    def count(self) -> int:
        """Neighbours the method uses (0 for random)."""
        return {"mvp": self.neighbours, "transfer": 1, "random": 0}[self.method]


@dataclass
class Initial:
    """The voter's answer: the target's masks, its initial shrunk model, the neighbours and report fields."""

    model: nn.Module
    masks: Masks
    neighbours: list[Neighbour]
    info: dict


def initialise(store: EntrySource, base_model: nn.Module, base: BaseManifest, spec: VoteSpec,
               ranking: Ranking | None, cache: str | os.PathLike[str] | None = None) -> Initial:
    """Masks and initial model of a voter method (docs/design.md, decisions 4, 5, 8).

    Args:
        store: The zoo (neighbours' masks and weights are read from it, sha256-checked).
        base_model: The base (fallback weights where no neighbour has an element, class rows it knows).
        base: Its manifest.
        spec: Target task and method settings.
        ranking: Candidates for ``mvp``/``transfer`` (the ``spec.count`` nearest are used); None for random.
    """
    task = spec.task
    rows = base_rows(base, task, cache) if spec.head_from_base else ("",) * len(task.classes)  # "": no base row
    common = dict(base=base_model, base_classes=base.classes, base_dataset=base.dataset, arch=base.arch,
                  spec=base.input_spec, target_dataset=task.dataset, target_classes=task.classes, seed=spec.seed,
                  rows=rows)
    if spec.method == "random":
        masks = random_masks(base.arch, spec.ratio, spec.seed, spec.round_to, base.weights_sha256, spec.counts)
        return Initial(averaged_model(masks=masks, neighbours=[], **common), masks, [], {})
    if ranking is None:
        raise UsageError(f"--method {spec.method} needs ranked zoo entries")
    order = nearest(ranking.scores, spec.count)
    entries = [store.get(ranking.ids[i]) for i in order]
    for entry in entries:  # ranked and voted from index rows: refuse rows that do not say what the entry is
        store.check_row(entry)
    picked = [Neighbour(e.id, e.manifest, float(ranking.scores[i])) for e, i in zip(entries, order)]
    info: dict = {}
    if spec.method == "mvp":
        rows = store.mask_rows([e.id for e in entries])
        result = vote(base.arch, rows, spec.ratio, spec.temperature, spec.seed, base.weights_sha256, spec.round_to,
                      spec.prior, spec.counts)
        masks = result.masks
        info["vote"] = {"neighbours": len(entries), "temperature": spec.temperature, "seed": spec.seed,
                        "unanimous_kept_fraction": round(result.agreement(), 4), "round_to": spec.round_to,
                        "filled_by_importance": result.filled if spec.prior is not None else None,
                        **({"counts": list(spec.counts)} if spec.counts is not None else {})}
    else:
        masks = entries[0].manifest.masks
    return Initial(averaged_model(masks=masks, neighbours=entries, **common), masks, picked, info)
