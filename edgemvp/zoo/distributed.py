"""Zoo builds on Ray: every job is one Ray task (one GPU each where the cluster has GPUs).

Ray is an optional extra (``pip install 'edgemvp[ray]'``); nothing else in edgemvp imports it.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from edgemvp.errors import UsageError
from edgemvp.models.base import base_files, install_base
from edgemvp.zoo.jobs import Job, JobResult, run_job

logger = logging.getLogger(__name__)


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise UsageError("Ray is not installed; install the extra: pip install 'edgemvp[ray]'") from exc
    return ray


def connect(address: str) -> None:
    """``local``: start a Ray instance on this machine; ``auto``: join the running cluster; else its address."""
    ray = _ray()
    if ray.is_initialized():
        return
    try:
        if address == "local":
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]  # Ray's messages run to several lines
        raise UsageError(f"cannot connect to Ray at '{address[:120]}' ({exc.__class__.__name__}: {first})") from exc


def _remote_job(job: Job, base: tuple[bytes, bytes], threads: int, data_root: str | None) -> JobResult:
    """A job on a Ray worker: the base arrives as bytes (through the object store) and is installed in a
    private temporary cache on the worker's machine; the dataset is resolved by name in the worker's own data
    folder (``EDGEMVP_DATA``, else its cache's), never in the driver's paths."""
    private = Path(tempfile.mkdtemp(prefix="edgemvp-ray-job-"))
    try:
        install_base(*base, cache=private)
        return run_job(job, private, data_root, threads)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def ray_results(todo: list[Job], cache: str | None, data_root: str | None, address: str, threads: int,
                cpus_per_task: int | None = None, gpus_per_task: float | None = None) -> Iterator[JobResult]:
    """Submit every job as a Ray task and yield results as they finish (the caller stores them).

    Each task asks for ``cpus_per_task`` CPUs (default ``threads``; the job runs that many torch threads) and
    ``gpus_per_task`` GPUs (default 1 where the cluster has a GPU, else 0). The base's bytes go once into the
    object store; ``data_root`` is passed on only to a ``local`` Ray instance (same machine, same paths).
    """
    ray = _ray()
    connect(address)
    cpus = threads if cpus_per_task is None else cpus_per_task
    gpus = (1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0) if gpus_per_task is None else gpus_per_task
    bases = {(j.arch, j.base_name) for j in todo}
    refs = {key: ray.put(base_files(key[0], key[1], cache)) for key in bases}
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=2)(_remote_job)
    root = data_root if address == "local" else None
    pending = [task.remote(job, refs[(job.arch, job.base_name)], cpus, root) for job in todo]
    logger.info("submitted %d jobs to Ray (%s CPU%s each%s)", len(pending), cpus, "" if cpus == 1 else "s",
                f" + {gpus} GPU" if gpus else "")
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])
