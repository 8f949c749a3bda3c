"""Zoo entries at several ratios (``zoo build --ratio 0.5,0.7,0.9``): the vote takes each neighbour task at the
ratio nearest the target's, and the task's entries at other ratios still rank units.

A zoo may hold one task more than once, pruned at different ratios. Ranking scores entries; Wu-Palmer gives
the entries of one task the same score. So that N neighbours are N tasks, each task is represented by one entry
for a target ratio ``r``: the one whose kept share of units is nearest ``1 - r`` (ties: the earlier entry).
The same tasks' entries at other ratios then count, unit by unit, how many of them kept it; those counts order
the units a vote takes beyond the neighbours' votes (before the base's own importance, :mod:`edgemvp.mvp.prior`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from edgemvp.mvp.rank import Ranking, ZooTasks, nearest


def several_ratios(tasks: ZooTasks) -> bool:
    """Whether some task has more than one entry."""
    return len(set(tasks)) < len(tasks)


def at_ratio(ranking: Ranking, ids: Sequence[str], tasks: ZooTasks, keep: dict[str, float], ratio: float,
             count: int) -> tuple[Ranking, list[str]]:
    """One entry per task, nearest the target's ratio, and the other entries of the ``count`` nearest tasks.

    Args:
        ranking: Scores of entries (some or all of ``ids``).
        ids, tasks: The zoo's entries and their ``(dataset, classes)``.
        keep: Per entry, its kept share of units.
        ratio: The target's ratio.
        count: Neighbour tasks the method uses.

    Returns:
        The ranking restricted to the chosen entries (in its order), and the other-ratio entries of its
        ``count`` nearest tasks.
    """
    task_of = dict(zip(ids, tasks))
    chosen: dict[tuple, int] = {}  # task -> position in the ranking of its entry nearest the ratio
    for pos, entry in enumerate(ranking.ids):
        task = task_of[entry]
        best = chosen.get(task)
        if best is None or abs(keep[entry] - (1 - ratio)) < abs(keep[ranking.ids[best]] - (1 - ratio)):
            chosen[task] = pos
    picked = sorted(chosen.values())
    narrowed = Ranking([ranking.ids[p] for p in picked], np.asarray(ranking.scores)[picked], ranking.kind,
                       ranking.note)
    near = {task_of[narrowed.ids[i]] for i in nearest(narrowed.scores, min(count, len(picked)))} if count else set()
    others = [e for e in ranking.ids if task_of[e] in near and e not in narrowed.ids]
    return narrowed, others


def fill_order(importance: np.ndarray | None, other_votes: np.ndarray | None) -> np.ndarray | None:
    """The order a vote fills units in beyond its neighbours' votes: first by how many of the neighbours' other-
    ratio entries kept a unit, then by the base's importance (scaled below one count, so it only breaks ties)."""
    if other_votes is None:
        return importance
    order = np.asarray(other_votes, dtype=np.float64)
    if importance is not None:
        top = float(np.max(importance)) if len(importance) else 0.0
        order = order + 0.999 * np.asarray(importance, dtype=np.float64) / (top if top > 0 else 1.0)
    return order
