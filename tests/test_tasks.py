"""Task resolution, random zoo tasks and task views."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgemvp.data.datasets import get_dataset
from edgemvp.data.tasks import NAMED_TASKS, random_tasks, resolve_task, task_view
from edgemvp.errors import UsageError
from tests.helpers import write_fashion


@pytest.fixture()
def fashion(tmp_path: Path):
    write_fashion(tmp_path / "fashion-mnist", n_train=100, n_test=50)
    return tmp_path


def test_named_tasks() -> None:
    pets = resolve_task("pets5")
    assert pets.dataset == "oxford-pets" and len(pets.classes) == 5
    f5 = resolve_task("fashion5")
    assert f5.synsets == ("pullover.n.01", "dress.n.01", "sandal.n.01", "shirt.n.01", "bag.n.04")
    with pytest.raises(UsageError, match="valid tasks: fashion5, pets5"):
        resolve_task("pets6")


def test_adhoc_task_uses_dataset_spelling(fashion: Path) -> None:
    task = resolve_task(None, "fashion-mnist", "ankle boot, BAG,trouser", str(fashion))
    assert task.classes == ("Ankle boot", "Bag", "Trouser")
    assert task.synsets == ("boot.n.01", "bag.n.04", "trouser.n.01")
    assert task.name == resolve_task(None, "fashion-mnist", "Ankle boot,Bag,Trouser", str(fashion)).name
    with pytest.raises(UsageError, match="'kilt' is not in dataset 'fashion-mnist'"):
        resolve_task(None, "fashion-mnist", "bag,kilt", str(fashion))
    with pytest.raises(UsageError, match="twice"):
        resolve_task(None, "fashion-mnist", "bag,Bag", str(fashion))


def test_random_tasks_are_seeded_distinct_and_exclude(fashion: Path) -> None:
    ds = get_dataset("fashion-mnist", fashion)
    held_out = NAMED_TASKS["fashion5"].classes
    a = random_tasks(ds, 30, 5, seed=3, exclude=(held_out,))
    b = random_tasks(ds, 10, 5, seed=3, exclude=(held_out,))
    assert [t.classes for t in a[:10]] == [t.classes for t in b]
    sets = {frozenset(t.classes) for t in a}
    assert len(sets) == 30 and frozenset(held_out) not in sets
    assert random_tasks(ds, 5, 5, seed=4)[0].classes != a[0].classes
    with pytest.raises(UsageError, match="fewer than 11 per task"):
        random_tasks(ds, 1, 11, seed=0)
    with pytest.raises(UsageError, match="distinct"):
        random_tasks(ds, 2, 10, seed=0)


def test_task_view_remaps_labels_and_subsamples(fashion: Path) -> None:
    ds = get_dataset("fashion-mnist", fashion)
    task = resolve_task(None, "fashion-mnist", "Bag,T-shirt/top", str(fashion))
    view = task_view(task, ds, "train")
    assert len(view) == 20 and set(view.targets.tolist()) == {0, 1}
    assert np.all(ds.train.labels[view.indices[view.targets == 0]] == 8)
    small = task_view(task, ds, "test", per_class=2, seed=0)
    assert np.bincount(small.targets).tolist() == [2, 2]


def test_random_tasks_within_parent_draw_from_one_alphabet(tmp_path: Path) -> None:
    from tests.helpers import write_omniglot_zip

    write_omniglot_zip(tmp_path / "omniglot" / "images_background.zip", {"Latin": 6, "Greek": 5, "Runic": 3})
    ds = get_dataset("omniglot", tmp_path)
    tasks = random_tasks(ds, 12, 4, seed=0, within_parent=True)
    parents = [{c.split("/")[0] for c in t.classes} for t in tasks]
    assert all(len(p) == 1 for p in parents)  # every task inside one alphabet
    assert {next(iter(p)) for p in parents} == {"Latin", "Greek"}  # Runic has too few characters
    assert len({frozenset(t.classes) for t in tasks}) == 12
    assert all(list(t.classes) == sorted(t.classes, key=ds.class_index) for t in tasks)
    assert [t.classes for t in random_tasks(ds, 12, 4, seed=0, within_parent=True)] == [t.classes for t in tasks]
    # without the flag, tasks mix alphabets
    assert any(len({c.split("/")[0] for c in t.classes}) > 1 for t in random_tasks(ds, 12, 4, seed=0))
    with pytest.raises(UsageError, match="no parent in 'omniglot' has 7 classes"):
        random_tasks(ds, 1, 7, seed=0, within_parent=True)


def test_within_parent_needs_a_hierarchy(fashion: Path) -> None:
    with pytest.raises(UsageError, match="has no class hierarchy"):
        random_tasks(get_dataset("fashion-mnist", fashion), 2, 3, seed=0, within_parent=True)
