"""Zoo builds: resumable, deterministic, crash-safe under SIGKILL, the same through Ray; CLI bad input."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from edgemvp.data.datasets import get_dataset
from edgemvp.data.loader import eval_batches
from edgemvp.data.tasks import task_view
from edgemvp.pruners import PruneConfig
from edgemvp.train import accuracy
from edgemvp.zoo import ZooStore
from edgemvp.zoo.build import BuildSpec, build
from edgemvp.zoo.store import MARKER
from tests.helpers import edgemvp

ROOT = Path(__file__).parent.parent
SPEC = BuildSpec("resnet18", "digits", tasks=4, classes_per_task=3, pruner="ifp-activation",
                 config=PruneConfig(iters=12, batch_size=32), seed=0)
CLI_BUILD = ["zoo", "build", "--dataset", "digits", "--tasks", "4", "--classes-per-task", "3", "--iters", "12",
             "--batch-size", "32", "--threads", "2"]


def _cli(cache: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    """``edgemvp ARGS`` in process with ``cache`` as the cache (see :func:`tests.helpers.edgemvp`)."""
    return edgemvp(*args, env={**os.environ, "EDGEMVP_CACHE": str(cache)}, cwd=ROOT, **kw)


def test_build_resume_and_rebuild_from_store(tiny_bases, tmp_path: Path) -> None:
    zoo = tmp_path / "zoo"
    first = build(SPEC, zoo, tiny_bases, threads=2)
    assert first.built == 4 and first.skipped == 0 and len(set(first.ids)) == 4
    again = build(SPEC, zoo, tiny_bases, threads=2)
    assert again.built == 0 and again.skipped == 4 and again.ids == first.ids
    more = build(BuildSpec(**{**SPEC.__dict__, "tasks": 5}), zoo, tiny_bases, threads=2)
    assert more.built == 1 and more.ids[:4] == first.ids  # the i-th task does not depend on the count
    ds = get_dataset("digits")
    with ZooStore.open(zoo) as store:
        assert len(store) == 5 and store.verify().clean
        for row in store.rows():
            entry = store.get(row.id)
            assert set(entry.manifest.task.classes) <= set(ds.classes) and len(entry.manifest.task.classes) == 3
            view = task_view(entry.manifest.task, ds, "test")
            acc = accuracy(entry.load_model(), eval_batches(view, entry.manifest.base.input_spec), torch.device("cpu"))
            assert acc == pytest.approx(row.test_acc, abs=0.1)  # rebuilt from the store, same accuracy


def test_same_seeds_same_entries_in_another_process(tiny_bases, tmp_path: Path) -> None:
    here = build(SPEC, tmp_path / "a", tiny_bases, threads=2)
    proc = _cli(tiny_bases, *CLI_BUILD, "--zoo", str(tmp_path / "b"))
    assert proc.returncode == 0, proc.stderr
    with ZooStore.open(tmp_path / "b") as store:
        assert tuple(r.id for r in store.rows()) == here.ids


@pytest.mark.slow  # over 15 s on 2 cores: make test-all
def test_sigkill_at_random_moments_then_resume(tiny_bases, tmp_path: Path) -> None:
    start = time.perf_counter()
    clean = _cli(tiny_bases, *CLI_BUILD, "--zoo", str(tmp_path / "clean"))  # the reference, and its duration
    duration = time.perf_counter() - start
    assert clean.returncode == 0, clean.stderr
    start = time.perf_counter()
    assert _cli(tiny_bases, *CLI_BUILD, "--zoo", str(tmp_path / "clean")).returncode == 0  # nothing left to do
    startup = min(time.perf_counter() - start, duration)
    per_task = (duration - startup) / 4
    zoo = tmp_path / "zoo"
    env = {**os.environ, "EDGEMVP_CACHE": str(tiny_bases)}
    rng = random.Random(0)
    kills = runs = 0
    # each run resumes the previous one and is killed somewhere in its start-up, training or writing: the moment is
    # drawn over the time the run needs for the tasks still left, so that resumed runs are interrupted as well
    while kills < 5 and runs < 20:
        left = 4
        if (zoo / MARKER).exists():  # the first run may be killed before it creates the zoo
            with ZooStore.open(zoo) as store:
                left = 4 - len(store.rows())
        if left == 0:
            break
        runs += 1
        proc = subprocess.Popen([sys.executable, "-m", "edgemvp", *CLI_BUILD, "--zoo", str(zoo)], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.15, 0.8) * (startup + left * per_task))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 5, f"only {kills} of {runs} runs were interrupted"
    done = _cli(tiny_bases, *CLI_BUILD, "--zoo", str(zoo))
    assert done.returncode == 0, done.stderr
    verify = _cli(tiny_bases, "zoo", "verify", "--zoo", str(zoo))
    assert verify.returncode == 0, verify.stderr
    assert "0 corrupt, 0 missing" in verify.stdout
    with ZooStore.open(zoo) as store:
        rows = store.rows()
        assert len(rows) == 4 and len({r.job_key for r in rows}) == 4  # every task once
        assert not list((zoo / "objects").glob(".tmp-*"))
        on_disk = {p.name for p in store.objects()}
    assert on_disk == {r.id for r in rows}
    with ZooStore.open(tmp_path / "clean") as reference:
        assert {r.id for r in rows} == {r.id for r in reference.rows()}  # the interruptions changed nothing


@pytest.mark.slow  # over 15 s on 2 cores: make test-all
def test_ray_build_gives_the_same_entries(tiny_bases, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    local = build(SPEC, tmp_path / "local", tiny_bases, threads=2)
    try:
        distributed = build(SPEC, tmp_path / "ray", tiny_bases, ray_address="local", threads=2)
    finally:
        ray.shutdown()
    assert distributed.ids == local.ids and distributed.built == 4


def test_a_ray_task_needs_none_of_the_drivers_paths(tiny_bases, tmp_path: Path, monkeypatch) -> None:
    """A Ray task carries the base's bytes and resolves the dataset by name on its own machine: with a worker
    cache that has no base (and a data folder of its own), it builds the entry a local build builds."""
    from edgemvp.models.base import base_files, find_base
    from edgemvp.models.weights import sha256_bytes
    from edgemvp.zoo.distributed import _remote_job
    from edgemvp.zoo.jobs import plan, run_job

    small = BuildSpec("resnet18", "digits", tasks=1, classes_per_task=3, pruner="ifp-activation",
                      config=PruneConfig(iters=4, batch_size=32), seed=0)
    job = plan(small, find_base("resnet18", "digits", tiny_bases))[0]
    local = run_job(job, tiny_bases, None, 2)
    carried = base_files("resnet18", "digits", tiny_bases)
    monkeypatch.setenv("EDGEMVP_CACHE", str(tmp_path / "worker-cache"))  # the worker's machine: no base here
    monkeypatch.setenv("EDGEMVP_DATA", str(tmp_path / "worker-data"))
    remote = _remote_job(job, carried, 2, None)
    assert (remote.key, remote.manifest, remote.weights) == (local.key, local.manifest, local.weights)
    assert not list(tmp_path.glob("worker-cache/bases/*"))  # the carried base lived in a private folder
    with pytest.raises(Exception, match="does not match its sha256"):
        _remote_job(job, (carried[0], carried[1][:-1] + b"x"), 2, None)
    assert sha256_bytes(carried[1]) == find_base("resnet18", "digits", tiny_bases).weights_sha256


@pytest.mark.slow  # a 2-node Ray cluster and 4 jobs: make test-all
def test_ray_build_on_two_nodes_with_their_own_folders(tiny_bases, tmp_path: Path) -> None:
    """Two Ray nodes whose cache and data folders are their own (not the driver's): the build finishes, both
    nodes run tasks, and the entries are identical to a local build's."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    local = build(SPEC, tmp_path / "local", tiny_bases, threads=2)
    nodes = {name: {"EDGEMVP_CACHE": str(tmp_path / name / "cache"), "EDGEMVP_DATA": str(tmp_path / name / "data")}
             for name in ("a", "b")}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "env_vars": nodes["a"]})
    cluster.add_node(num_cpus=2, env_vars=nodes["b"])
    try:
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        distributed = build(SPEC, tmp_path / "ray", tiny_bases, ray_address=cluster.address, threads=2,
                            ray_resources=(2, 0))
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert distributed.ids == local.ids and distributed.built == 4
    for name in nodes:  # each node used its own cache (its probe verdicts), never holding the base
        assert list((tmp_path / name / "cache" / "probes").glob("*.json")), name
        assert not list((tmp_path / name / "cache").glob("bases/*"))


@pytest.mark.parametrize("args, message", [
    (["--cpus-per-task", "2"], "are for Ray builds (--ray)"),
    (["--pruner", "magic"], "unknown pruner 'magic'"),
    (["--arch", "resnet9"], "unknown arch"),
    (["--ratio", "1.5"], "must be in (0, 1), got 1.5"),
    (["--ratio", "0"], "must be in (0, 1), got 0"),
    (["--classes-per-task", "11"], "fewer than 11 per task"),
    (["--pruner", "ahnp"], "does not prune CNN models"),
])
def test_bad_build_input_one_line_exit_2_store_untouched(tiny_bases, tmp_path: Path, args, message) -> None:
    zoo = tmp_path / "zoo"
    proc = _cli(tiny_bases, "zoo", "build", "--dataset", "digits", "--tasks", "2", "--iters", "2", "--zoo", str(zoo), *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and message in proc.stderr
    assert not zoo.exists()


def test_newer_schema_zoo_is_refused_by_the_cli(tiny_bases, tmp_path: Path) -> None:
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "zoo.json").write_text('{"format": "edgemvp-zoo", "schema_version": 7}')
    for args in (["zoo", "build", "--dataset", "digits", "--tasks", "1", "--zoo", str(zoo)],
                 ["zoo", "list", "--zoo", str(zoo)], ["zoo", "verify", "--zoo", str(zoo)]):
        proc = _cli(tiny_bases, *args)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "newer edgemvp" in proc.stderr
    assert [p.name for p in zoo.iterdir()] == ["zoo.json"]


def test_cli_list_show_verify_export_import(tiny_bases, tmp_path: Path) -> None:
    zoo = tmp_path / "zoo"
    ids = build(SPEC, zoo, tiny_bases, threads=2).ids
    listed = _cli(tiny_bases, "zoo", "list", "--zoo", str(zoo))
    assert listed.returncode == 0 and all(i[:12] in listed.stdout for i in ids)
    shown = _cli(tiny_bases, "zoo", "show", ids[0][:8], "--zoo", str(zoo))
    assert shown.returncode == 0 and ids[0] in shown.stdout and '"pruner": "ifp-activation"' in shown.stdout
    assert _cli(tiny_bases, "zoo", "export", str(tmp_path / "b.tar"), "--zoo", str(zoo)).returncode == 0
    imported = _cli(tiny_bases, "zoo", "import", str(tmp_path / "b.tar"), "--zoo", str(tmp_path / "copy"))
    assert imported.returncode == 0 and "imported 4 entries" in imported.stdout
    weights = next((zoo / "objects").glob(f"{ids[1][:2]}/{ids[1]}")) / "weights.safetensors"
    weights.chmod(0o644)
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    verify = _cli(tiny_bases, "zoo", "verify", "--zoo", str(zoo))
    assert verify.returncode == 1 and f"zoo entry {ids[1][:12]}" in verify.stderr
    missing = _cli(tiny_bases, "zoo", "show", "abc", "--zoo", str(zoo))
    assert missing.returncode == 2 and "no zoo entry with id abc" in missing.stderr


def test_build_from_a_file_of_named_past_tasks(tiny_bases, tmp_path: Path) -> None:
    from edgemvp.data.tasks import load_task_list

    (tmp_path / "past.yaml").write_text("tasks:\n  - {dataset: digits, classes: [0, 1, 2], name: digits-low}\n"
                                        "  - {dataset: digits, classes: ['7', '8', '9']}\n")
    tasks = load_task_list(tmp_path / "past.yaml")
    assert [(t.name, t.classes) for t in tasks] == [("digits-low", ("0", "1", "2")),
                                                    (tasks[1].name, ("7", "8", "9"))]
    spec = BuildSpec("resnet18", "digits", len(tasks), pruner="random", config=PruneConfig(iters=2, batch_size=16),
                     task_list=tasks)
    report = build(spec, tmp_path / "zoo", tiny_bases, threads=2)
    with ZooStore.open(tmp_path / "zoo") as store:
        assert [store.get(i).manifest.task.name for i in report.ids] == ["digits-low", tasks[1].name]
    for text, message in (("tasks: []", "non-empty 'tasks:' list"),
                          ("tasks:\n  - {dataset: digits}", "needs 'dataset' (text) and 'classes'"),
                          ("tasks:\n  - {dataset: digits, classes: [0, 1]}\n  - {dataset: digits, classes: [1, 0]}",
                           "repeats the classes"),
                          ("tasks:\n  - {dataset: digits, classes: [0, 11]}", "11")):
        (tmp_path / "bad.yaml").write_text(text)
        r = edgemvp("--cache-dir", str(tiny_bases), "zoo", "build", "--dataset", "digits", "--tasks-file",
                    str(tmp_path / "bad.yaml"), "--zoo", str(tmp_path / "zoo2"))
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, (text, r.stderr)
    assert not (tmp_path / "zoo2").exists()


FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def _fashion_jobs(class_sets: list[tuple[int, ...]]) -> list:
    from edgemvp.data.tasks import TaskSpec
    from edgemvp.zoo.jobs import Job

    return [Job(TaskSpec(f"t{i}", "fashion-mnist", tuple(FASHION[c] for c in cs)), "resnet18", "fashion-mnist", "",
                "ifp-activation", PruneConfig(), f"key{i}") for i, cs in enumerate(class_sets)]


def test_the_default_zoos_first_build_makes_only_what_the_vote_can_pick() -> None:
    from edgemvp.data.tasks import NAMED_TASKS, TaskSpec
    from edgemvp.mvp.rank import rank_by_taxonomy
    from edgemvp.zoo.defaults import nearest_jobs

    rng = random.Random(0)
    sets = [tuple(sorted(rng.sample(range(10), 5))) for _ in range(12)]
    sets.append(sets[4])  # a task twice: equal scores, both kept when they sit at the cut
    jobs, target = _fashion_jobs(sets), NAMED_TASKS["fashion5"]

    def top(js: list, n: int) -> list[str]:
        return rank_by_taxonomy([j.key for j in js], [(j.dataset, j.task.classes) for j in js], target, limit=n).ids

    for voters in (1, 3, 5):
        some = nearest_jobs(jobs, target, voters)
        assert voters <= len(some) < len(jobs)
        assert [j.key for j in some] == [j.key for j in jobs if j in some]  # plan order kept
        assert top(some, voters) == top(jobs, voters)  # the same neighbours, nearest first
        scores = rank_by_taxonomy([j.key for j in jobs], [(j.dataset, j.task.classes) for j in jobs], target).scores
        cut = sorted(scores, reverse=True)[voters - 1]
        assert {j.key for j, s in zip(jobs, scores) if s >= cut} == {j.key for j in some}  # ties included
    assert nearest_jobs(jobs, target, len(jobs)) == jobs
    unplaced = TaskSpec("odd", "fashion-mnist", ("Pullover", "no-such-class"))
    assert nearest_jobs(jobs, unplaced, 3) == jobs  # LEEP scores every entry: all are built


def test_a_selected_build_is_finished_later_with_the_same_ids(tiny_bases, tmp_path: Path) -> None:
    zoo = tmp_path / "zoo"
    part = build(SPEC, zoo, tiny_bases, threads=2, select=lambda jobs: jobs[1:3])
    assert part.built == 2 and len(part.ids) == 2
    full = build(SPEC, zoo, tiny_bases, threads=2)
    assert full.built == 2 and full.skipped == 2 and full.ids[1:3] == part.ids
