"""Zoo builds on Ray: every job is one Ray task (one GPU each where the cluster has GPUs).

Ray is an optional extra (``pip install 'edgemvp[ray]'``); nothing else in edgemvp imports it.
"""
from __future__ import annotations

import logging
from typing import Iterator

from edgemvp.errors import UsageError
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


def ray_results(todo: list[Job], cache: str | None, data_root: str | None, address: str, threads: int
                ) -> Iterator[JobResult]:
    """Submit every job as a Ray task and yield results as they finish (the caller stores them)."""
    ray = _ray()
    connect(address)
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    task = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=2)(run_job)
    pending = [task.remote(job, cache, data_root, threads) for job in todo]
    logger.info("submitted %d jobs to Ray (%d CPU%s each)", len(pending), threads, " + 1 GPU" if gpus else "")
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])
