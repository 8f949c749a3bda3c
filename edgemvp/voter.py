"""The voter: rank a zoo's entries for a new task, vote the target's masks and average its initial weights.

One code path wherever MVP runs. ``edgemvp prune`` on a local zoo calls it in process through
:class:`LocalZoo`; the zoo server (:mod:`edgemvp.zoo.server`) calls the very same :class:`LocalZoo` methods
for ``POST /neighbours`` and ``POST /vote``. A prune against a remote zoo therefore gets the same neighbours,
the same masks and bit-identical initial weights as a local prune with the same seed.

What stays with the caller (the client, in a remote prune): LEEP, which needs the target's images (it scores
candidate models the caller loads with :meth:`LocalZoo.entry_models` or downloads), BatchNorm re-estimation
and fine-tuning on the target's data.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch.nn as nn

from edgemvp import checks
from edgemvp.data.tasks import TaskSpec
from edgemvp.errors import UsageError
from edgemvp.masks import Masks, random_masks
from edgemvp.models.base import BaseManifest, find_base, load_base
from edgemvp.mvp import averaged_model
from edgemvp.similarity import Hierarchy, Taxonomy, wordnet_similarity
from edgemvp.vote import DEFAULT_NEIGHBOURS, DEFAULT_TEMPERATURE, nearest, vote
from edgemvp.zoo.entry import EntryManifest
from edgemvp.zoo.store import ZooStore

VOTER_METHODS = ("mvp", "transfer", "random")  # the methods whose initial model the voter makes


@dataclass(frozen=True)
class Ranking:
    """Candidates ranked for the target (all of them, or the best ``limit`` in nearest-first order)."""

    ids: list[str]
    scores: np.ndarray
    kind: str  # what was used: "wordnet", "hierarchy", "leep" or "given"
    note: str | None = None  # why it fell back to LEEP


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
    """

    task: TaskSpec
    method: str = "mvp"
    neighbours: int = DEFAULT_NEIGHBOURS
    ratio: float = 0.9
    temperature: float = DEFAULT_TEMPERATURE
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in VOTER_METHODS:
            raise UsageError(f"the voter makes {', '.join(VOTER_METHODS)} models, not '{self.method}'")
        check_vote_settings(self.ratio, self.temperature, self.neighbours)

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


def rank_by_taxonomy(ids: list[str], tasks: list[tuple[str, tuple[str, ...]]], task: TaskSpec,
                     hierarchy: Hierarchy | None = None, cache: str | os.PathLike[str] | None = None,
                     limit: int | None = None) -> Ranking:
    """Wu-Palmer task similarity of the target to every zoo task (WordNet, or ``hierarchy``).

    The target's own synsets (``task.synsets``) place its classes in WordNet. With ``limit`` only the best
    ``limit`` candidates are kept, nearest first, exactly as :func:`edgemvp.vote.nearest` orders them.

    Raises:
        UsageError: A target class the taxonomy does not know (callers fall back to LEEP), or no WordNet.
    """
    synsets = {(task.dataset, c): s for c, s in zip(task.classes, task.synsets) if s}
    taxonomy = Taxonomy(hierarchy, cache, synsets=synsets if hierarchy is None else None)
    scores = wordnet_similarity([(task.dataset, c) for c in task.classes], tasks, taxonomy)
    kind = "wordnet" if hierarchy is None else "hierarchy"
    if limit is None:
        return Ranking(list(ids), scores, kind)
    order = nearest(scores, min(limit, len(ids)))
    return Ranking([ids[i] for i in order], scores[order], kind)


def initialise(store: ZooStore, base_model: nn.Module, base: BaseManifest, spec: VoteSpec,
               ranking: Ranking | None) -> Initial:
    """Masks and initial model of a voter method (docs/design.md, decisions 4, 5, 8).

    Args:
        store: The zoo (neighbours' masks and weights are read from it, sha256-checked).
        base_model: The base (fallback weights where no neighbour has an element, class rows it knows).
        base: Its manifest.
        spec: Target task and method settings.
        ranking: Candidates for ``mvp``/``transfer`` (the ``spec.count`` nearest are used); None for random.
    """
    task = spec.task
    common = dict(base=base_model, base_classes=base.classes, base_dataset=base.dataset, arch=base.arch,
                  spec=base.input_spec, target_dataset=task.dataset, target_classes=task.classes, seed=spec.seed)
    if spec.method == "random":
        masks = random_masks(base.arch, spec.ratio, spec.seed, base_sha256=base.weights_sha256)
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
        result = vote(base.arch, rows, spec.ratio, spec.temperature, spec.seed, base.weights_sha256)
        masks = result.masks
        info["vote"] = {"neighbours": len(entries), "temperature": spec.temperature, "seed": spec.seed,
                        "unanimous_kept_fraction": round(result.agreement(), 4)}
    else:
        masks = entries[0].manifest.masks
    return Initial(averaged_model(masks=masks, neighbours=entries, **common), masks, picked, info)


def zoo_base(store: ZooStore, arch: str | None, base_dataset: str | None,
             cache: str | os.PathLike[str] | None) -> BaseManifest:
    """The cached base a zoo's entries were pruned from (of ``arch`` / ``base_dataset`` when given).

    Raises:
        UsageError: Empty zoo, no entries of that arch, base not cached or cached with other weights.
    """
    bases = store.bases()
    if not bases:
        raise UsageError(f"zoo {store.root} is empty; build it with 'edgemvp zoo build --zoo {store.root}'")
    wanted = [b for b in bases if arch in (None, b[0])]
    if not wanted:
        have = ", ".join(sorted({b[0] for b in bases}))
        raise UsageError(f"zoo {store.root} holds {have} entries, not {arch}")
    refs = [store.get(b[3]).manifest.base for b in wanted]
    if base_dataset is not None:
        from edgemvp.data.datasets import canonical_name

        named = canonical_name(base_dataset)
        matching = [r for r in refs if r.dataset == named]
        if not matching:  # never a silent vote with another base than the one asked for
            have = ", ".join(sorted({f"{r.arch} of '{r.dataset}'" for r in refs}))
            raise UsageError(f"zoo {store.root} holds no entries pruned from a base of '{named[:120]}'; "
                             f"it holds entries of: {have}")
        refs = matching
    for ref in refs:
        cached = find_base(ref.arch, ref.dataset, cache)
        if cached is not None and cached.weights_sha256 == ref.weights_sha256:
            return cached
    ref = refs[0]
    cached = find_base(ref.arch, ref.dataset, cache)
    if cached is None:
        raise UsageError(f"zoo {store.root} was built for a {ref.arch} base of '{ref.dataset}' "
                         f"(sha256 {ref.weights_sha256[:12]}), which is not in the cache; run 'edgemvp pretrain "
                         f"--arch {ref.arch} --dataset {ref.dataset}' or import that base")
    raise UsageError(f"zoo {store.root} was built for another base model: its {ref.arch} base of '{ref.dataset}' "
                     f"has sha256 {ref.weights_sha256[:12]}, the cached one {cached.weights_sha256[:12]}")


class LocalZoo:
    """A zoo folder and the cached base it votes with: what a local prune uses and what the server serves.

    The remote counterpart with the same methods is :class:`edgemvp.zoo.remote.RemoteZoo`.
    """

    def __init__(self, store: ZooStore, base: BaseManifest, cache: str | os.PathLike[str] | None = None,
                 model: nn.Module | None = None) -> None:
        self.store, self.base, self.cache = store, base, cache
        self._model = model

    @classmethod
    def open(cls, path: Path, arch: str | None = None, base_dataset: str | None = None,
             cache: str | os.PathLike[str] | None = None) -> "LocalZoo":
        """Open a zoo folder and find its cached base.

        Raises:
            UsageError: No zoo there, or no usable base (see :func:`zoo_base`).
        """
        store = ZooStore.open(path)
        try:
            return cls(store, zoo_base(store, arch, base_dataset, cache), cache)
        except BaseException:
            store.close()
            raise

    @property
    def label(self) -> str:
        """Where the zoo is (for reports)."""
        return str(self.store.root)

    def base_model(self) -> nn.Module:
        """The base model (loaded once, sha256 verified)."""
        if self._model is None:
            self._model, _ = load_base(self.base.arch, self.base.dataset, self.cache)
        return self._model

    def task_table(self) -> tuple[list[str], list[tuple[str, tuple[str, ...]]]]:
        """Ids and ``(dataset, classes)`` of the base's entries."""
        return self.store.task_table(self.base.weights_sha256)

    def rank_by_taxonomy(self, ids: list[str], tasks: list[tuple[str, tuple[str, ...]]], task: TaskSpec,
                         hierarchy: Hierarchy | None, limit: int | None = None) -> Ranking:
        """See :func:`rank_by_taxonomy`."""
        return rank_by_taxonomy(ids, tasks, task, hierarchy, self.cache, limit)

    def entry_models(self, ids: Sequence[str]) -> Iterator[nn.Module]:
        """The entries' pruned models, one at a time (for LEEP)."""
        return (self.store.get(i).load_model() for i in ids)

    def initialise(self, spec: VoteSpec, ranking: Ranking | None) -> Initial:
        """See :func:`initialise`."""
        return initialise(self.store, self.base_model(), self.base, spec, ranking)

    def put(self, manifest: EntryManifest, weights: bytes, build_seconds: float | None = None) -> str:
        """Store an entry (see :meth:`ZooStore.put`)."""
        return self.store.put(manifest, weights, build_seconds)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "LocalZoo":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
