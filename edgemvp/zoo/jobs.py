"""Zoo build jobs: what a build is asked for (:class:`BuildSpec`), one single-task pruning job per task
(:class:`Job`, planned by :func:`plan`) and running one (:func:`run_job`), wherever it runs: in this process,
a worker process or a Ray task. A job returns the entry's bytes (:class:`JobResult`); only the driver
(:mod:`edgemvp.zoo.build`) writes to the store.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, replace

import torch

from edgemvp import checks
from edgemvp.data.datasets import get_dataset
from edgemvp.data.loader import eval_batches, train_batches
from edgemvp.data.tasks import NAMED_TASKS, TaskSpec, random_tasks, task_view
from edgemvp.errors import UsageError
from edgemvp.models.base import BaseManifest, base_rows, load_base, task_model
from edgemvp.models.factory import get_arch
from edgemvp.models.weights import sha256_bytes, weights_bytes
from edgemvp.pruners import PruneConfig, get_pruner
from edgemvp.shrink import params_and_macs, pruned_metadata
from edgemvp.train import Progress, accuracy, default_device
from edgemvp.versions import tool_versions
from edgemvp.manifest import BaseRef, EntryManifest

logger = logging.getLogger(__name__)

JOB_FORMAT = 1


@dataclass(frozen=True)
class BuildSpec:
    """What to build.

    Attributes:
        arch: Architecture of the cached base model.
        dataset: Dataset the tasks are drawn from (and, without ``base``, the one the base was trained on).
        tasks: Number of tasks.
        classes_per_task: Classes per task (paper: 5).
        pruner: Registered pruner name.
        config: Pruner hyper-parameters (its ``seed`` is replaced per task, derived from ``seed``).
        seed: Seeds task drawing and every job.
        within_parent: Draw each task's classes from one parent of the dataset's hierarchy (e.g. one Omniglot
            alphabet), so that tasks have near neighbours by taxonomy.
        base: The cached base's name when it is not ``dataset``'s own, e.g. a pre-trained ``imagenet-1k-64px``
            (:mod:`edgemvp.models.pretrained`); the tasks' images are converted to its input (channels, size).
        task_list: Named past tasks (of any datasets, :func:`edgemvp.data.tasks.load_task_list`) instead of
            ``tasks`` random draws.
    """

    arch: str
    dataset: str
    tasks: int
    classes_per_task: int = 5
    pruner: str = "ifp-activation"
    config: PruneConfig = PruneConfig()
    seed: int = 0
    within_parent: bool = False
    base: str | None = None
    task_list: tuple[TaskSpec, ...] | None = None

    @property
    def base_dataset(self) -> str:
        """The name the base is cached under."""
        return self.base or self.dataset

    def __post_init__(self) -> None:
        get_pruner(self.pruner, get_arch(self.arch).family)
        checks.number("--tasks", self.tasks, 1, 1_000_000, integer=True)
        checks.number("--classes-per-task", self.classes_per_task, 2, 100_000, integer=True)
        checks.seed("--seed", self.seed)


@dataclass(frozen=True)
class Job:
    """One task's pruning job; ``key`` identifies it in the store."""

    task: TaskSpec
    arch: str
    dataset: str
    base_sha256: str
    pruner: str
    config: PruneConfig
    key: str
    base_dataset: str | None = None  # the base's name when it is not ``dataset``'s own

    @property
    def base_name(self) -> str:
        return self.base_dataset or self.dataset


@dataclass(frozen=True)
class JobResult:
    """What a worker sends back: the entry's bytes and how long it took."""

    key: str
    manifest: bytes
    weights: bytes
    seconds: float


def plan(spec: BuildSpec, base: BaseManifest, data_root: str | os.PathLike[str] | None = None) -> list[Job]:
    """The jobs of a build, in a fixed order; held-out named tasks (e.g. ``fashion5``) are never drawn.

    Raises:
        UsageError: Too few classes in the dataset for the task size, or too few distinct tasks.
    """
    if spec.task_list is not None:
        tasks = list(spec.task_list)
    else:
        dataset = get_dataset(spec.dataset, data_root)
        held_out = tuple(t.classes for t in NAMED_TASKS.values() if t.dataset == dataset.name)
        tasks = random_tasks(dataset, spec.tasks, spec.classes_per_task, spec.seed, exclude=held_out,
                             within_parent=spec.within_parent)
    jobs = []
    for task in tasks:
        task_seed = int(hashlib.sha256(f"{spec.seed}:{task.name}".encode()).hexdigest()[:8], 16)
        cfg = replace(spec.config, seed=task_seed)
        ident = {"format": JOB_FORMAT, "base": base.weights_sha256, "dataset": task.dataset,
                 "classes": list(task.classes), "pruner": spec.pruner, "config": cfg.to_dict()}
        key = sha256_bytes(json.dumps(ident, sort_keys=True).encode())
        jobs.append(Job(task, spec.arch, task.dataset, base.weights_sha256, spec.pruner, cfg, key,
                        None if spec.base is None and task.dataset == base.dataset else base.dataset))
    return jobs


def run_job(job: Job, cache: str | os.PathLike[str] | None, data_root: str | os.PathLike[str] | None,
            threads: int | None = None, progress: Progress | None = None) -> JobResult:
    """Prune one task from the cached base and return its entry (manifest bytes + weights bytes).

    Args:
        job: The job.
        cache: Cache folder with the base model.
        data_root: Data folder.
        threads: torch intra-op threads (fixed so results do not depend on where the job runs).
        progress: Per-step progress of this task.
    """
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    base, manifest = load_base(job.arch, job.base_name, cache)
    if manifest.weights_sha256 != job.base_sha256:
        raise UsageError(f"the cached {job.arch} base changed since this build was planned")
    dataset = get_dataset(job.dataset, data_root)
    spec, cfg = manifest.input_spec, job.config
    model = task_model(base, manifest.classes, base_rows(manifest, job.task), seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    device = default_device()
    batches = train_batches(task_view(job.task, dataset, "train"), spec, cfg.batch_size, cfg.seed,
                            pin_memory=device.type == "cuda")
    pruner = get_pruner(job.pruner, get_arch(job.arch).family)
    out = pruner(model, job.arch, batches, cfg, manifest.weights_sha256, device, progress)
    acc = accuracy(out.model.eval(), eval_batches(task_view(job.task, dataset, "test"), spec), device)
    model = out.model.cpu().eval()
    params, macs = params_and_macs(model, spec)
    weights = weights_bytes(model.state_dict(), pruned_metadata(out.masks, spec, len(job.task.classes)))
    tail = out.losses[-20:] or [float("nan")]
    metrics = {"test_acc": round(acc, 4), "train_loss": round(sum(tail) / len(tail), 5), "params": params,
               "macs": macs, "keep_ratio": round(out.masks.keep_ratio(), 5), "pruning_events": out.events}
    entry = EntryManifest(job.task, BaseRef(job.arch, manifest.dataset, manifest.weights_sha256, spec), out.masks,
                          job.pruner, cfg.to_dict(), metrics, sha256_bytes(weights), job.key,
                          versions=tool_versions())
    return JobResult(job.key, entry.to_bytes(), weights, time.perf_counter() - start)
