"""A zoo folder and the cached base it votes with (:class:`LocalZoo`): what a local prune uses and what the
zoo server serves. Its remote counterpart, with the same methods, is :class:`edgemvp.zoo.remote.RemoteZoo`;
both satisfy :class:`edgemvp.zoo.api.Zoo`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import torch.nn as nn

from edgemvp.data.datasets import canonical_name
from edgemvp.data.tasks import TaskSpec
from edgemvp.errors import UsageError
from edgemvp.manifest import EntryManifest
from edgemvp.models.base import BaseManifest, find_base, load_base
from edgemvp.mvp.rank import Ranking, ZooTasks, rank_by_taxonomy
from edgemvp.mvp.similarity import Hierarchy
from edgemvp.mvp.voter import Initial, VoteSpec, initialise
from edgemvp.zoo.store import ZooStore


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

    def rank_by_taxonomy(self, ids: list[str], tasks: ZooTasks, task: TaskSpec, hierarchy: Hierarchy | None,
                         limit: int | None = None) -> Ranking:
        """See :func:`edgemvp.mvp.rank.rank_by_taxonomy`."""
        return rank_by_taxonomy(ids, tasks, task, hierarchy, self.cache, limit)

    def entry_models(self, ids: Sequence[str]) -> Iterator[nn.Module]:
        """The entries' pruned models, one at a time (for LEEP)."""
        return (self.store.get(i).load_model() for i in ids)

    def initialise(self, spec: VoteSpec, ranking: Ranking | None) -> Initial:
        """See :func:`edgemvp.mvp.voter.initialise`."""
        return initialise(self.store, self.base_model(), self.base, spec, ranking, self.cache)

    def put(self, manifest: EntryManifest, weights: bytes, build_seconds: float | None = None) -> str:
        """Store an entry (see :meth:`ZooStore.put`)."""
        return self.store.put(manifest, weights, build_seconds)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "LocalZoo":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
