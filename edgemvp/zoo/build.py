"""Building a zoo: one single-task pruning job per task, run in this process, in local worker processes or
as Ray tasks; the driver stores every result as it arrives.

A job is fully described by its :class:`Job` (base, task, pruner, config with the task's seed), so it gives
the same entry wherever it runs (same thread count, CPU). Workers return the entry's bytes and only the
driver writes, so the store needs no shared file system between Ray nodes. A build is resumable: jobs whose
``job_key`` is in the store are skipped.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import torch

from edgemvp import checks
from edgemvp.data.datasets import get_dataset
from edgemvp.data.loader import eval_batches, train_batches
from edgemvp.data.tasks import NAMED_TASKS, TaskSpec, random_tasks, task_view
from edgemvp.errors import UsageError
from edgemvp.models.base import BaseManifest, find_base, load_base, task_model
from edgemvp.models.factory import get_arch
from edgemvp.models.weights import sha256_bytes, weights_bytes
from edgemvp.pruners import PruneConfig, get_pruner
from edgemvp.shrink import params_and_macs, pruned_metadata
from edgemvp.train import Progress, accuracy
from edgemvp.versions import tool_versions
from edgemvp.zoo.entry import BaseRef, EntryManifest
from edgemvp.zoo.remote import RemoteZoo, ZooAddress
from edgemvp.zoo.store import ZooStore

logger = logging.getLogger(__name__)
JOB_FORMAT = 1


@dataclass(frozen=True)
class BuildSpec:
    """What to build.

    Attributes:
        arch: Architecture of the cached base model.
        dataset: Dataset the base was trained on; tasks are drawn from its classes.
        tasks: Number of tasks.
        classes_per_task: Classes per task (paper: 5).
        pruner: Registered pruner name.
        config: Pruner hyper-parameters (its ``seed`` is replaced per task, derived from ``seed``).
        seed: Seeds task drawing and every job.
        within_parent: Draw each task's classes from one parent of the dataset's hierarchy (e.g. one Omniglot
            alphabet), so that tasks have near neighbours by taxonomy.
    """

    arch: str
    dataset: str
    tasks: int
    classes_per_task: int = 5
    pruner: str = "ifp-activation"
    config: PruneConfig = PruneConfig()
    seed: int = 0
    within_parent: bool = False

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
    dataset = get_dataset(spec.dataset, data_root)
    held_out = tuple(t.classes for t in NAMED_TASKS.values() if t.dataset == dataset.name)
    jobs = []
    for task in random_tasks(dataset, spec.tasks, spec.classes_per_task, spec.seed, exclude=held_out,
                             within_parent=spec.within_parent):
        task_seed = int(hashlib.sha256(f"{spec.seed}:{task.name}".encode()).hexdigest()[:8], 16)
        cfg = replace(spec.config, seed=task_seed)
        ident = {"format": JOB_FORMAT, "base": base.weights_sha256, "dataset": dataset.name,
                 "classes": list(task.classes), "pruner": spec.pruner, "config": cfg.to_dict()}
        key = sha256_bytes(json.dumps(ident, sort_keys=True).encode())
        jobs.append(Job(task, spec.arch, dataset.name, base.weights_sha256, spec.pruner, cfg, key))
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
    base, manifest = load_base(job.arch, job.dataset, cache)
    if manifest.weights_sha256 != job.base_sha256:
        raise UsageError(f"the cached {job.arch} base changed since this build was planned")
    dataset = get_dataset(job.dataset, data_root)
    spec, cfg = manifest.input_spec, job.config
    model = task_model(base, manifest.classes, job.task.classes, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    batches = train_batches(task_view(job.task, dataset, "train"), spec, cfg.batch_size, cfg.seed)
    pruner = get_pruner(job.pruner, get_arch(job.arch).family)
    out = pruner(model, job.arch, batches, cfg, manifest.weights_sha256, None, progress)
    model = out.model.cpu().eval()
    acc = accuracy(model, eval_batches(task_view(job.task, dataset, "test"), spec), torch.device("cpu"))
    params, macs = params_and_macs(model, spec)
    weights = weights_bytes(model.state_dict(), pruned_metadata(out.masks, spec, len(job.task.classes)))
    tail = out.losses[-20:] or [float("nan")]
    metrics = {"test_acc": round(acc, 4), "train_loss": round(sum(tail) / len(tail), 5), "params": params,
               "macs": macs, "keep_ratio": round(out.masks.keep_ratio(), 5), "pruning_events": out.events}
    entry = EntryManifest(job.task, BaseRef(job.arch, job.dataset, manifest.weights_sha256, spec), out.masks,
                          job.pruner, cfg.to_dict(), metrics, sha256_bytes(weights), job.key,
                          versions=tool_versions())
    return JobResult(job.key, entry.to_bytes(), weights, time.perf_counter() - start)


def _store(store: ZooStore, result: JobResult) -> str:
    manifest = EntryManifest.from_bytes(result.manifest, f"job {result.key[:12]}")
    return store.put(manifest, result.weights, build_seconds=round(result.seconds, 2))


@dataclass(frozen=True)
class BuildReport:
    """Outcome of a build: entry ids in job order, how many were built now vs found, and wall time."""

    ids: tuple[str, ...]
    built: int
    skipped: int
    seconds: float


def build(spec: BuildSpec, zoo: str | os.PathLike[str] | ZooAddress, cache: str | os.PathLike[str] | None = None,
          data_root: str | os.PathLike[str] | None = None, workers: int = 1, ray_address: str | None = None,
          threads: int | None = None, overall: Progress | None = None,
          task_progress: Callable[[Job], Progress] | None = None) -> BuildReport:
    """Build (or resume) a zoo.

    Args:
        spec: What to build.
        zoo: Zoo folder (created if missing), or a zoo server: jobs run here, each entry is uploaded as it
            arrives (the server validates it) and jobs the server has are skipped.
        cache: Cache folder with the base model.
        data_root: Data folder.
        workers: Local worker processes (1 = in this process).
        ray_address: Run every job as a Ray task: ``local`` starts a local Ray instance, ``auto`` joins the
            running cluster, anything else is a cluster address.
        threads: torch threads per job (default: this process's count divided by ``workers``).
        overall: One update per finished task.
        task_progress: Makes a per-step progress object for a task (in-process builds only).

    Raises:
        UsageError: Bad spec, missing base model, newer zoo schema, Ray not installed.
    """
    start = time.perf_counter()
    base = find_base(spec.arch, spec.dataset, cache)
    if base is None:
        raise UsageError(f"no pre-trained {spec.arch} base for dataset '{spec.dataset}' in the cache; run "
                         f"'edgemvp pretrain --arch {spec.arch} --dataset {spec.dataset}'")
    jobs = plan(spec, base, data_root)
    threads = threads or max(1, torch.get_num_threads() // max(1, workers))
    with _open_sink(zoo, base) as store:
        todo = [j for j in jobs if store.job_entry(j.key) is None]
        if overall is not None:
            overall.reset(total=len(jobs))
            overall.update(len(jobs) - len(todo))
        for result in _results(todo, cache, data_root, workers, ray_address, threads, task_progress):
            _store(store, result)
            if overall is not None:
                overall.update(1)
        ids = tuple(store.job_entry(j.key) or "" for j in jobs)
    return BuildReport(ids, len(todo), len(jobs) - len(todo), time.perf_counter() - start)


def _open_sink(zoo: str | os.PathLike[str] | ZooAddress, base: BaseManifest) -> ZooStore | RemoteZoo:
    """Where a build stores entries: a zoo folder (recovered first) or a zoo server that votes with ``base``.

    Raises:
        UsageError: A server without this base (it would refuse every upload), or unreachable.
    """
    if isinstance(zoo, ZooAddress):
        remote = RemoteZoo(zoo)
        try:
            remote.require_write()
            if base.weights_sha256 not in {b.weights_sha256 for b in remote.bases()}:
                raise UsageError(f"zoo server {zoo.url} has no {base.arch} base of '{base.dataset}' with sha256 "
                                 f"{base.weights_sha256[:12]} (the cached one here); it accepts entries of its own "
                                 "bases only")
        except BaseException:
            remote.close()
            raise
        return remote
    store = ZooStore.open(zoo, create=True)
    recovered = store.recover()
    if recovered.recovered or recovered.removed_temp:
        logger.info("recovered %d entries, removed %d unfinished writes", len(recovered.recovered),
                    recovered.removed_temp)
    return store


def _results(todo: list[Job], cache: str | os.PathLike[str] | None, data_root: str | os.PathLike[str] | None,
             workers: int, ray_address: str | None, threads: int,
             task_progress: Callable[[Job], Progress] | None) -> Iterator[JobResult]:
    cache = None if cache is None else str(Path(cache).resolve())
    data_root = None if data_root is None else str(Path(data_root).resolve())
    if ray_address is not None:
        from edgemvp.zoo.distributed import ray_results

        yield from ray_results(todo, cache, data_root, ray_address, threads)
    elif workers > 1:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [pool.submit(run_job, job, cache, data_root, threads) for job in todo]
            for fut in cf.as_completed(futures):
                yield fut.result()
    else:
        for job in todo:
            yield run_job(job, cache, data_root, threads, task_progress(job) if task_progress else None)
