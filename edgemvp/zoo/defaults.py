"""Where zoos live in the cache, and the default zoo the offline default votes from."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from edgemvp.data.tasks import TaskSpec
from edgemvp.errors import UsageError
from edgemvp.mvp.rank import rank_by_taxonomy, wordnet_gap
from edgemvp.paths import cache_dir
from edgemvp.pruners import PruneConfig
from edgemvp.zoo.build import BuildReport, BuildSpec, build
from edgemvp.zoo.jobs import Job

DEFAULT_ARCH = "resnet18"
DEFAULT_DATASET = "fashion-mnist"
# A small zoo that builds in minutes on a 2-core CPU; held-out named tasks (fashion5) are never drawn.
# IFP@300 since issue 24 (IFP@500 before), for the 15-minute cold start.
DEFAULT_ZOO = BuildSpec(DEFAULT_ARCH, DEFAULT_DATASET, tasks=10, classes_per_task=5, pruner="ifp-activation",
                        config=PruneConfig(ratio=0.9, iters=300), seed=0)
# The folder names the recipe, so that a cache holding the zoo of an earlier default recipe is not mixed into
# this one's (its entries would have other job keys, and the build would add ten more beside them).
DEFAULT_ZOO_NAME = "default-ifp300"


def zoo_path(arch: str, dataset: str, cache: str | os.PathLike[str] | None = None, name: str = "zoo") -> Path:
    """The cache folder of a zoo for (arch, dataset): ``<cache>/zoos/<arch>--<dataset>[-<name>]``."""
    slug = re.sub(r"[^0-9A-Za-z._-]+", "_", dataset)
    suffix = "" if name == "zoo" else f"-{name}"
    return cache_dir(cache) / "zoos" / f"{arch}--{slug}{suffix}"


def default_zoo_path(cache: str | os.PathLike[str] | None = None) -> Path:
    """Folder of the default zoo."""
    return zoo_path(DEFAULT_ZOO.arch, DEFAULT_ZOO.dataset, cache, DEFAULT_ZOO_NAME)


def nearest_jobs(jobs: list[Job], task: TaskSpec, voters: int,
                 cache: str | os.PathLike[str] | None = None) -> list[Job]:
    """The planned jobs a Wu-Palmer vote of ``voters`` entries for ``task`` can pick: every planned task at
    least as similar as the ``voters``-th nearest, ties included.

    A zoo holding those (and whatever else) ranks the same ``voters`` nearest entries, in the same order, as the
    finished zoo would: an entry outside the set scores below every one inside it. All jobs when Wu-Palmer
    cannot place a target class (LEEP then scores every entry's model).
    """
    if voters >= len(jobs) or wordnet_gap(task) is not None:
        return jobs
    try:
        scores = rank_by_taxonomy([j.key for j in jobs], [(j.dataset, j.task.classes) for j in jobs], task,
                                  None, cache).scores
    except UsageError:  # no WordNet here: the prune's own ranking says so in its one line
        return jobs
    cut = np.sort(scores)[::-1][voters - 1]
    return [job for job, score in zip(jobs, scores) if score >= cut]


def ensure_default_zoo(cache: str | os.PathLike[str] | None = None, data_root: str | os.PathLike[str] | None = None,
                       nearest: tuple[TaskSpec, int] | None = None, **progress: object) -> BuildReport:
    """Build the default zoo from the cached base, or finish it (a finished one returns at once).

    Args:
        cache: Cache folder (base and zoo).
        data_root: Data folder.
        nearest: ``(task, voters)``: build only the tasks a Wu-Palmer vote of ``voters`` entries for ``task``
            can pick (:func:`nearest_jobs`), so that a first prune waits for 3 tasks instead of 10 and gets the
            model the finished zoo would give; a later prune builds what it needs, ``edgemvp zoo default`` the rest.
        progress: Passed to :func:`edgemvp.zoo.build.build` (``overall``, ``task_progress``).
    """
    select = None if nearest is None else (lambda jobs: nearest_jobs(jobs, nearest[0], nearest[1], cache))
    return build(DEFAULT_ZOO, default_zoo_path(cache), cache, data_root, select=select,  # type: ignore[arg-type]
                 **progress)
