"""Tasks: a set of classes of one dataset (the paper's downstream tasks are 5-class tasks).

Named tasks: ``pets5`` (five Oxford-IIIT Pets breeds, online data) and ``fashion5`` (five Fashion-MNIST
classes, reserved as the held-out demo task: the default zoo never contains exactly these classes).
Ad-hoc tasks are ``--dataset D --classes a,b,c``; zoo builds draw seeded random k-class tasks.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

import numpy as np

from edgemvp.data.datasets import IMAGENET, Dataset, get_dataset
from edgemvp.data.loader import LabeledView
from edgemvp.data.wordnet import synset_map
from edgemvp.errors import UsageError, unknown
from edgemvp.safeload import load_json, load_yaml


@dataclass(frozen=True)
class TaskSpec:
    """A downstream task.

    Attributes:
        name: Task name (named tasks) or a name derived from dataset and classes.
        dataset: Dataset name.
        classes: Class names, in the task's label order.
        synsets: WordNet synset per class where known (``None`` where not).
        description: One line for ``edgemvp tasks``.
    """

    name: str
    dataset: str
    classes: tuple[str, ...]
    synsets: tuple[str | None, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if len(self.classes) < 2:
            raise UsageError(f"task '{self.name}' needs at least 2 classes, got {len(self.classes)}")
        if len(set(self.classes)) != len(self.classes):
            raise UsageError(f"task '{self.name}' lists a class twice")
        if not self.synsets:
            known = synset_map(self.dataset)
            if self.dataset.startswith(IMAGENET):  # ImageNet's classes are WordNet ids: synsets free
                known = {c: c for c in self.classes}
            object.__setattr__(self, "synsets", tuple(known.get(c) for c in self.classes))


NAMED_TASKS: dict[str, TaskSpec] = {
    "pets5": TaskSpec("pets5", "oxford-pets", ("Abyssinian", "Bengal", "Beagle", "Pug", "Samoyed"),
                      description="2 cat and 3 dog breeds of Oxford-IIIT Pets (needs the data: online once)"),
    "fashion5": TaskSpec("fashion5", "fashion-mnist", ("Pullover", "Dress", "Sandal", "Shirt", "Bag"),
                         description="5 Fashion-MNIST classes, held out of the default zoo (offline demo)"),
}


def task_name(dataset: str, classes: tuple[str, ...]) -> str:
    """A short, stable name for an ad-hoc task: dataset, class count and a hash of the classes."""
    digest = hashlib.sha256("\n".join(classes).encode()).hexdigest()[:8]
    return f"{dataset.replace(':', '_').replace('/', '_')}-{len(classes)}c-{digest}"


def resolve_task(name: str | None = None, dataset: str | None = None, classes: str | None = None,
                 data_root: str | None = None) -> TaskSpec:
    """A named task, or an ad-hoc one from a dataset and comma-separated class names.

    Class names are checked against the dataset and replaced by its spelling.

    Raises:
        UsageError: Unknown task, missing dataset or classes, classes not in the dataset.
    """
    if name is not None:
        if name not in NAMED_TASKS:
            raise unknown("task", name, list(NAMED_TASKS))
        return NAMED_TASKS[name]
    if not dataset or not classes:
        raise UsageError("give a task name, or --dataset and --classes (comma-separated)")
    ds = get_dataset(dataset, data_root)
    wanted = [c.strip() for c in classes.split(",") if c.strip()]
    picked = tuple(ds.classes[ds.class_index(c)] for c in wanted)
    return TaskSpec(task_name(ds.name, picked), ds.name, picked)


def load_task_list(path: str | os.PathLike[str], data_root: str | os.PathLike[str] | None = None
                   ) -> tuple[TaskSpec, ...]:
    """A team's past tasks from a YAML (or JSON) file, read with bounds::

        tasks:
          - {dataset: fashion-mnist, classes: [T-shirt/top, Trouser, Pullover, Dress, Coat]}
          - {dataset: digits, classes: ["0", "1", "2"], name: digits-low}

    Class names are checked against each dataset (its spelling is kept).

    Raises:
        UsageError: Unreadable or malformed file, an unknown dataset or class, or the same task twice.
    """
    source = str(path)
    data = load_json(path, source) if str(path).endswith(".json") else load_yaml(path, source)
    items = data.get("tasks") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise UsageError(f"{source}: needs a non-empty 'tasks:' list of {{dataset, classes}}")
    out: list[TaskSpec] = []
    for i, item in enumerate(items):
        classes = item.get("classes") if isinstance(item, dict) else None
        if not (isinstance(item, dict) and isinstance(item.get("dataset"), str) and isinstance(classes, list)
                and all(isinstance(c, (str, int)) for c in classes)):
            raise UsageError(f"{source}: task {i + 1} needs 'dataset' (text) and 'classes' (a list)")
        task = resolve_task(None, item["dataset"], ",".join(str(c) for c in classes), data_root)
        name = item.get("name")
        if name is not None:
            if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
                raise UsageError(f"{source}: task {i + 1}: name must be 1-64 of [a-z0-9_.-]")
            task = TaskSpec(name, task.dataset, task.classes)
        if any(t.dataset == task.dataset and set(t.classes) == set(task.classes) for t in out):
            raise UsageError(f"{source}: task {i + 1} repeats the classes of an earlier task")
        out.append(task)
    return tuple(out)


TASK_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


def random_tasks(dataset: Dataset, count: int, classes_per_task: int, seed: int,
                 exclude: tuple[tuple[str, ...], ...] = (), within_parent: bool = False) -> list[TaskSpec]:
    """``count`` distinct random tasks (as class sets) of a dataset, reproducible from ``seed``.

    Args:
        dataset: The dataset to draw classes from.
        count: Number of tasks.
        classes_per_task: Classes in each task.
        seed: Random seed; the i-th task does not depend on ``count``.
        exclude: Class sets that must not be drawn (e.g. held-out targets), in any order.
        within_parent: Draw each task's classes from one parent of the dataset's hierarchy (e.g. one Omniglot
            alphabet), the parent picked with probability proportional to its size.

    Raises:
        UsageError: When the dataset has too few classes, no hierarchy (``within_parent``), or not enough
            distinct tasks exist.
    """
    pools = _class_pools(dataset, classes_per_task, within_parent)
    weights = np.array([len(p) for p in pools], dtype=np.float64)
    rng = np.random.default_rng(seed)
    seen = {frozenset(e) for e in exclude}
    tasks: list[TaskSpec] = []
    for _ in range(count * 1000):
        if len(tasks) == count:
            break
        pool = pools[rng.choice(len(pools), p=weights / weights.sum())] if within_parent else pools[0]
        picked = rng.choice(len(pool), classes_per_task, replace=False)
        pick = tuple(sorted((pool[i] for i in picked), key=dataset.class_index))
        if frozenset(pick) not in seen:
            seen.add(frozenset(pick))
            tasks.append(TaskSpec(task_name(dataset.name, pick), dataset.name, pick))
    if len(tasks) < count:
        raise UsageError(f"dataset '{dataset.name}' has fewer than {count} distinct {classes_per_task}-class tasks")
    return tasks


def _class_pools(dataset: Dataset, classes_per_task: int, within_parent: bool) -> list[tuple[str, ...]]:
    """The class sets tasks are drawn from: the whole dataset, or each parent with enough classes."""
    n = len(dataset.classes)
    if classes_per_task > n:
        raise UsageError(f"dataset '{dataset.name}' has {n} classes, fewer than {classes_per_task} per task")
    if not within_parent:
        return [dataset.classes]
    if not dataset.hierarchy:
        raise UsageError(f"dataset '{dataset.name}' has no class hierarchy to draw tasks within a parent from")
    pools = [tuple(v) for v in dataset.hierarchy.values() if len(v) >= classes_per_task]
    if not pools:
        raise UsageError(f"no parent in '{dataset.name}' has {classes_per_task} classes")
    return pools


def task_view(task: TaskSpec, dataset: Dataset, split: str, per_class: int | None = None,
              seed: int = 0) -> LabeledView:
    """The images of a task's classes in one split, labelled 0..k-1 in the task's class order.

    Args:
        task: The task.
        dataset: Its dataset (already loaded).
        split: ``train`` or ``test``.
        per_class: Keep at most this many images per class (seeded), e.g. 100 for few-data runs.
        seed: Seed for the per-class subsample.
    """
    part = dataset.train if split == "train" else dataset.test
    labels = [dataset.class_index(c) for c in task.classes]
    rng = np.random.default_rng(seed)
    idx, tgt = [], []
    for t, label in enumerate(labels):
        pos = np.flatnonzero(part.labels == label)
        if per_class is not None and len(pos) > per_class:
            pos = np.sort(rng.choice(pos, per_class, replace=False))
        idx.append(pos)
        tgt.append(np.full(len(pos), t, dtype=np.int64))
    return LabeledView(part, np.concatenate(idx), np.concatenate(tgt), dataset.hflip)
