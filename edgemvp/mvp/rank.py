"""Ranking zoo entries for a new task: the one place neighbours are chosen (docs/design.md, decisions 6 and 7).

Two similarities, one order:

* Wu-Palmer task similarity over WordNet or a user's class hierarchy (:func:`rank_by_taxonomy`). It needs
  only class names, so it runs where the zoo is: in process, or on the zoo server.
* LEEP of each candidate's model on the target's images (:func:`rank_by_leep`). It needs the images, so it
  runs where they are: with the caller.

:func:`rank` chooses between them: Wu-Palmer when every target class has a node, else LEEP with a note
saying why (a class missing from the user's own hierarchy is an error instead: a tree the user gave is never
silently replaced). :func:`nearest` orders candidates, most similar first; the vote and the server use it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
import torch.nn as nn

from edgemvp.data.tasks import TaskSpec
from edgemvp.errors import UsageError
from edgemvp.mvp.similarity import Hierarchy, Taxonomy, leep_similarity, wordnet_similarity

SIMILARITIES = ("wordnet", "leep")
ZooTasks = list[tuple[str, tuple[str, ...]]]  # (dataset, classes) of each candidate entry, in id order


class NoTaxonomyNode(UsageError):
    """The taxonomy (here, or the zoo server's) cannot place a target class; ranking falls back to LEEP."""


@dataclass(frozen=True)
class Ranking:
    """Candidates ranked for the target (all of them, or the best ``limit`` in nearest-first order)."""

    ids: list[str]
    scores: np.ndarray  # (candidates,) similarity of each id to the target
    kind: str  # what was used: "wordnet", "hierarchy", "leep" or "given"
    note: str | None = None  # why it fell back to LEEP


class RankSource(Protocol):
    """What ranking needs from a zoo (local or remote): taxonomy ranking where the zoo is, and its models."""

    def rank_by_taxonomy(self, ids: list[str], tasks: ZooTasks, task: TaskSpec, hierarchy: Hierarchy | None,
                         limit: int | None = None) -> Ranking: ...

    def entry_models(self, ids: Sequence[str]) -> Iterator[nn.Module]: ...


def nearest(similarity: np.ndarray, n: int) -> np.ndarray:
    """Positions of the ``n`` most similar candidates, most similar first (ties: earlier candidate first).

    Raises:
        UsageError: ``n`` < 1 or larger than the number of candidates.
    """
    total = len(similarity)
    if n < 1:
        raise UsageError(f"--neighbours must be at least 1, got {n}")
    if n > total:
        raise UsageError(f"--neighbours {n} is more than the {total} entr{'y' if total == 1 else 'ies'} the zoo has "
                         "for this base model")
    order = np.argsort(-np.asarray(similarity, dtype=np.float64), kind="stable")
    return order[:n]


def load_hierarchy(path: Path | None) -> Hierarchy | None:
    """The class hierarchy a user gave (``--hierarchy``): a YAML or JSON tree, read with bounds.

    Raises:
        UsageError: Missing, empty, unparsable, not a tree (a name twice, a recursive alias), too deep or too
            large: a hierarchy the user gave that cannot be used is never silently replaced by LEEP.
    """
    if path is None:
        return None
    return Hierarchy.load(path)


def wordnet_gap(task: TaskSpec) -> str | None:
    """The first target class WordNet cannot place (no shipped or given synset), if any."""
    taxonomy = Taxonomy(None, synsets={(task.dataset, c): s for c, s in zip(task.classes, task.synsets) if s})
    return next((c for c in task.classes if taxonomy.node((task.dataset, c)) is None), None)


def rank_by_taxonomy(ids: list[str], tasks: ZooTasks, task: TaskSpec, hierarchy: Hierarchy | None = None,
                     cache: str | os.PathLike[str] | None = None, limit: int | None = None) -> Ranking:
    """Wu-Palmer task similarity of the target to every zoo task (WordNet, or ``hierarchy``).

    The target's own synsets (``task.synsets``) place its classes in WordNet. With ``limit`` only the best
    ``limit`` candidates are kept, nearest first, exactly as :func:`nearest` orders them.

    Raises:
        UsageError: A target class the taxonomy does not know (callers fall back to LEEP), or no WordNet.
    """
    synsets = {(task.dataset, c): s for c, s in zip(task.classes, task.synsets) if s}
    taxonomy = Taxonomy(hierarchy, cache, synsets=synsets if hierarchy is None else None)
    scores = wordnet_similarity([(task.dataset, c) for c in task.classes], tasks, taxonomy)  # (candidates,)
    kind = "wordnet" if hierarchy is None else "hierarchy"
    if limit is None:
        return Ranking(list(ids), scores, kind)
    order = nearest(scores, min(limit, len(ids)))
    return Ranking([ids[i] for i in order], scores[order], kind)


def rank_by_leep(ids: list[str], models: Iterator[nn.Module], x: torch.Tensor, y: np.ndarray, num_labels: int,
                 note: str | None = None) -> Ranking:
    """LEEP of every candidate's model on a target sample ``(x, y)`` (all candidates, in id order)."""
    return Ranking(ids, leep_similarity(models, x, y, num_labels), "leep", note)


def rank(source: RankSource, ids: list[str], tasks: ZooTasks, task: TaskSpec, similarity: str,
         hierarchy: Hierarchy | None, limit: int, images: Callable[[], tuple[torch.Tensor, np.ndarray]]) -> Ranking:
    """Score zoo entries (``ids`` with their ``(dataset, classes)``) against the target (Wu-Palmer, else LEEP).

    Args:
        source: The zoo; Wu-Palmer runs where it is (in process, or on the zoo server).
        ids: Candidate entry ids.
        tasks: Their ``(dataset, classes)``.
        task: The target task.
        similarity: ``wordnet`` (over WordNet or ``hierarchy``) or ``leep``.
        hierarchy: The user's class hierarchy, if any.
        limit: Candidates a Wu-Palmer ranking keeps (LEEP scores all of them).
        images: The target sample LEEP scores on (called only when LEEP runs).

    A target class WordNet has no synset for falls back to LEEP (and the note says so); a class the user's
    hierarchy lacks is an error. LEEP always runs with the caller, over the candidates' models (downloaded and
    sha256-checked from a remote zoo).
    """
    if similarity not in SIMILARITIES:
        raise UsageError(f"unknown similarity '{similarity}'; valid: {', '.join(SIMILARITIES)}")
    note = None
    if similarity == "wordnet":
        gap = wordnet_gap(task) if hierarchy is None else None
        try:
            if gap is None:
                return source.rank_by_taxonomy(ids, tasks, task, hierarchy, limit=limit)
        except NoTaxonomyNode as exc:  # the zoo server's taxonomy lacks a class
            if hierarchy is not None:
                raise
            note = f"{exc}; falling back to LEEP"
        if gap is not None:
            note = f"class '{gap}' of dataset '{task.dataset}' has no node in wordnet; falling back to LEEP"
    x, y = images()
    return rank_by_leep(ids, source.entry_models(ids), x, y, len(task.classes), note)
