"""What a prune sees of a zoo, wherever it is: the :class:`Zoo` protocol, and :func:`open_zoo` for every
``--zoo`` value (a folder, a name under ``<cache>/zoos``, a zoo server's URL, or nothing: the default zoo).

Two implementations: :class:`edgemvp.zoo.local.LocalZoo` (a folder and its cached base, in process) and
:class:`edgemvp.zoo.remote.RemoteZoo` (a zoo server over HTTP(S)). Both rank by taxonomy where the zoo is,
hand out entry models for LEEP, run the voter and store new entries.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

import torch.nn as nn

from edgemvp.data.tasks import TaskSpec
from edgemvp.errors import UsageError
from edgemvp.manifest import EntryManifest
from edgemvp.models.base import BaseManifest, find_base
from edgemvp.mvp.rank import Ranking, ZooTasks, rank_by_taxonomy, wordnet_gap
from edgemvp.mvp.similarity import Hierarchy
from edgemvp.mvp.voter import Initial, VoteSpec
from edgemvp.paths import cache_dir
from edgemvp.pretrain import PretrainConfig, pretrain
from edgemvp.train import Progress
from edgemvp.zoo.defaults import (DEFAULT_ARCH, DEFAULT_DATASET, DEFAULT_ZOO, default_zoo_path, ensure_default_zoo,
                                  zoo_path)
from edgemvp.zoo.local import LocalZoo
from edgemvp.zoo.remote import RemoteZoo, ZooAddress, is_url, read_token
from edgemvp.zoo.store import MARKER, ZooStore

Location = Path | ZooAddress  # where a zoo is: a folder or a zoo server
# A zoo fits a task when some entry's Wu-Palmer task similarity reaches this: fashion5 has neighbours at 0.99
# in the default zoo, while pets5 scores about 0.43 against every Fashion-MNIST task (nearest by chance).
DEFAULT_MIN_SIMILARITY = 0.5
LITE0_BASE = "imagenet-1k-64px"  # the offline pre-trained base the commands in errors suggest


class Zoo(Protocol):
    """A zoo and the base it votes with (local or remote: the same methods)."""

    base: BaseManifest
    cache: str | os.PathLike[str] | None  # edgemvp's cache here (WordNet, downloads)

    @property
    def label(self) -> str:
        """Where the zoo is (for reports)."""

    def base_model(self) -> nn.Module:
        """The base model (sha256 verified)."""

    def task_table(self) -> tuple[list[str], ZooTasks]:
        """Ids and ``(dataset, classes)`` of the base's entries."""

    def rank_by_taxonomy(self, ids: list[str], tasks: ZooTasks, task: TaskSpec, hierarchy: Hierarchy | None,
                         limit: int | None = None) -> Ranking:
        """Wu-Palmer ranking where the zoo is (:func:`edgemvp.mvp.rank.rank_by_taxonomy`)."""

    def entry_models(self, ids: Sequence[str]) -> Iterator[nn.Module]:
        """The entries' pruned models, one at a time (for LEEP)."""

    def initialise(self, spec: VoteSpec, ranking: Ranking | None) -> Initial:
        """The voter's masks and initial model (:func:`edgemvp.mvp.voter.initialise`)."""

    def put(self, manifest: EntryManifest, weights: bytes, build_seconds: float | None = None) -> str:
        """Store an entry; returns its id."""

    def close(self) -> None: ...

    def __enter__(self) -> "Zoo": ...

    def __exit__(self, *exc: object) -> None: ...


def zoo_folder(value: str | None, cache: str | os.PathLike[str] | None = None) -> Path:
    """A zoo folder from ``--zoo``: a path, or a zoo name under ``<cache>/zoos``; None: the default zoo.

    Raises:
        UsageError: A zoo server's URL (for commands that work on a folder).
    """
    if value is not None and is_url(value):
        raise UsageError(f"this command works on a zoo folder; '{value}' is a zoo server (edgemvp prune and "
                         "edgemvp zoo build take one)")
    if value is None:
        return default_zoo_path(cache)
    path = Path(value)
    named = cache_dir(cache) / "zoos" / value
    return named if not path.exists() and named.exists() else path


def zoo_location(value: str, cache: str | os.PathLike[str] | None = None, token_file: Path | None = None,
                 ca_file: Path | None = None) -> Location:
    """``--zoo`` of prune and build: a zoo server's address (with the client's token and CA), or a folder.

    Raises:
        UsageError: An unreadable token file, or a CA file given for a folder.
    """
    if is_url(value):
        return ZooAddress(value, read_token(token_file), ca_file=ca_file)
    if ca_file is not None:
        raise UsageError("--ca-file is for a zoo server (--zoo https://...), not a zoo folder")
    return zoo_folder(value, cache)


def ensure_default_base(cache: str | os.PathLike[str] | None, data_root: str | os.PathLike[str] | None,
                        say: Callable[[str], None], progress: Callable[[str, str], Progress | None]) -> None:
    """Pre-train the offline default base when the cache lacks it (first use)."""
    if find_base(DEFAULT_ARCH, DEFAULT_DATASET, cache) is None:
        say(f"base: pre-training {DEFAULT_ARCH} on {DEFAULT_DATASET} (first use; cached afterwards)")
        done = pretrain(DEFAULT_ARCH, DEFAULT_DATASET, PretrainConfig(), cache, data_root,
                        progress=progress(f"pretrain {DEFAULT_ARCH}", "step"), say=say)
        say(f"base: test accuracy {done.test_acc:.2f}% on {len(done.classes)} classes in "
            f"{done.train['train_seconds']:.0f} s")


def _best_similarity(store: ZooStore, task: TaskSpec, cache: str | os.PathLike[str] | None
                     ) -> tuple[float, str] | None:
    """The best Wu-Palmer task similarity of ``task`` to a zoo's entries whose base is cached, and that base's
    name; None when no entry has a cached base. A target class WordNet cannot place scores 1 against entries of
    its own dataset (LEEP ranks those), else 0."""
    best: tuple[float, str] | None = None
    for arch, _sha, _, entry_id in store.bases():
        ref = store.get(entry_id).manifest.base
        cached = find_base(arch, ref.dataset, cache)
        if cached is None or cached.weights_sha256 != ref.weights_sha256:
            continue
        ids, tasks = store.task_table(ref.weights_sha256)
        if not ids:
            continue
        if wordnet_gap(task) is None:
            score = float(rank_by_taxonomy(ids, tasks, task, None, cache).scores.max())
        else:
            score = 1.0 if any(d == task.dataset for d, _ in tasks) else 0.0
        if best is None or score > best[0]:
            best = (score, ref.dataset)
    return best


def fitting_zoo(task: TaskSpec, cache: str | os.PathLike[str] | None = None,
                min_similarity: float = DEFAULT_MIN_SIMILARITY) -> Path:
    """The cached zoo whose entries are nearest to ``task`` (``prune`` without ``--zoo``, for a task that is
    not the offline default's): never a silent vote from unrelated tasks.

    Raises:
        UsageError: No zoo, or none with an entry at ``min_similarity`` or above: one line with the best
            similarity found and the commands that would build a zoo that fits.
    """
    found: list[tuple[float, str, Path]] = []
    root = cache_dir(cache) / "zoos"
    for folder in sorted(p for p in root.glob("*") if (p / MARKER).is_file()) if root.is_dir() else ():
        with ZooStore.open(folder) as store:
            best = _best_similarity(store, task, cache)
        if best is not None:
            found.append((best[0], best[1], folder))
    fits = [f for f in found if f[0] >= min_similarity]
    if fits:
        return max(fits, key=lambda f: f[0])[2]
    seen = (f"the best is {max(found)[0]:.2f} in {max(found)[2].name}" if found else "no zoo is cached")
    build = (f"edgemvp bases add efficientnet_lite0 --weights package --size 64 && edgemvp zoo build --arch "
             f"efficientnet_lite0 --base {LITE0_BASE} --dataset {task.dataset}")
    raise UsageError(f"no zoo fits task {task.name} (Wu-Palmer similarity {min_similarity:g} needed; {seen}); "
                     f"build one: {build}, or pass --zoo")


def _default_zoo(cache: str | os.PathLike[str] | None, data_root: str | os.PathLike[str] | None,
                 say: Callable[[str], None], progress: Callable[[str, str], Progress | None], task: TaskSpec | None,
                 voters: int | None) -> None:
    """Build (or finish) the default zoo, only the target's nearest tasks when the caller ranks by WordNet."""
    nearest = (task, voters) if task is not None and voters else None
    report = ensure_default_zoo(cache, data_root, nearest, overall=progress("default zoo (first use)", "task"),
                                task_progress=lambda job: progress(f"  {job.task.name}", "step"))
    left = DEFAULT_ZOO.tasks - len(report.ids)
    if report.built and left > 0 and task is not None:
        say(f"zoo: built the {len(report.ids)} default-zoo tasks nearest to {task.name}; the other {left} are "
            "built when a task needs them ('edgemvp zoo default' builds them all)")


def open_zoo(location: Location | None, arch: str | None = None, base_dataset: str | None = None,
             cache: str | os.PathLike[str] | None = None, data_root: str | os.PathLike[str] | None = None,
             writable: bool = False, say: Callable[[str], None] = lambda line: None,
             progress: Callable[[str, str], Progress | None] = lambda desc, unit: None,
             task: TaskSpec | None = None, min_similarity: float = DEFAULT_MIN_SIMILARITY,
             voters: int | None = None) -> Zoo:
    """The zoo to vote from with the base it was built for (building the offline default on first use).

    Args:
        location: A folder or a zoo server; None: the base's zoo under the cache (for the offline default
            base, the default zoo, built with its base on first use).
        arch: Base architecture (None: the zoo's, or the default's).
        base_dataset: Dataset the base was pre-trained on (None: the zoo's, or the default's).
        cache: edgemvp's cache.
        data_root: Where datasets are (for building the default).
        writable: Refuse early, before any work, a zoo server this client cannot upload to.
        say: One-line notes (what is being built).
        progress: ``(description, unit) -> progress`` for the default's first build.
        task: The task a prune votes for: without ``location``, ``arch`` and ``base_dataset``, a task of
            another dataset than the offline default's gets the cached zoo that fits it (:func:`fitting_zoo`),
            never the offline default.
        min_similarity: What fitting means there.
        voters: The caller ranks ``task`` by Wu-Palmer over WordNet and takes this many entries: the default
            zoo then builds only the tasks such a ranking can pick (:func:`edgemvp.zoo.defaults.nearest_jobs`).

    Raises:
        UsageError: No zoo there, a zoo of another base, a refused token, ...
    """
    if isinstance(location, ZooAddress):
        remote = RemoteZoo.connect(location, arch, base_dataset, cache)
        if writable:
            try:
                remote.require_write()
            except BaseException:
                remote.close()
                raise
        return remote
    if location is None and arch is None and base_dataset is None and task is not None \
            and task.dataset != DEFAULT_DATASET:
        location = fitting_zoo(task, cache, min_similarity)
        say(f"zoo: {location} (nearest to {task.name} among the cached zoos)")
    if location is None:
        arch, dataset = arch or DEFAULT_ARCH, base_dataset or DEFAULT_DATASET
        if (arch, dataset) == (DEFAULT_ARCH, DEFAULT_DATASET):
            ensure_default_base(cache, data_root, say, progress)
            say(f"zoo: default zoo ({default_zoo_path(cache)})")
            _default_zoo(cache, data_root, say, progress, task, voters)
            path = default_zoo_path(cache)
        else:
            path = zoo_path(arch, dataset, cache)
            if not path.exists():
                raise UsageError(f"no zoo for the {arch} base of '{dataset}' at {path}; build one with 'edgemvp zoo "
                                 f"build --arch {arch} --dataset {dataset} --zoo {path}' or pass --zoo")
    else:
        path = location
        if not path.exists():
            raise UsageError(f"zoo not found: {path}")
    return LocalZoo.open(path, arch, base_dataset, cache)
