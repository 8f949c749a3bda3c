"""``edgemvp prune`` end to end on tiny digits bases: artifacts, methods, add-to-zoo, errors and exit codes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from edgemvp.data.datasets import get_dataset
from edgemvp.data.loader import eval_batches
from edgemvp.data.tasks import resolve_task, task_view
from edgemvp.deploy.export import MEASURE_SECONDS_PER_RUN
from edgemvp.pipeline import PruneRequest, run
from edgemvp.pruners import PruneConfig
from edgemvp.shrink import load_pruned
from edgemvp.spec import InputSpec
from edgemvp.train import accuracy
from edgemvp.zoo import ZooStore
from edgemvp.zoo.build import BuildSpec, build
from tests.helpers import edgemvp

ROOT = Path(__file__).parent.parent
ARTIFACTS = {"model.onnx", "masks.json", "weights.safetensors", "report.json", "README.md", "export.json"}


@pytest.fixture(scope="module")
def digits_zoo(tiny_bases, tmp_path_factory) -> Path:
    """Five 3-class digits tasks pruned by IFP (a few steps each) from the tiny resnet18 base."""
    zoo = tmp_path_factory.mktemp("pz") / "zoo"
    spec = BuildSpec("resnet18", "digits", tasks=5, classes_per_task=3, pruner="ifp-activation",
                     config=PruneConfig(iters=12, batch_size=32), seed=0)
    build(spec, zoo, tiny_bases, threads=2)
    return zoo


def _request(zoo: Path, out: Path, **kw) -> PruneRequest:
    task = resolve_task(None, "digits", "0,1,2")
    args = dict(task=task, device="host", zoo=zoo, iters=5, neighbours=2, batch_size=32, runs=5, out=out,
                bn_batches=4, leep_samples=60)
    args.update(kw)
    return PruneRequest(**args)


def _cli(cache: Path, *args: str) -> subprocess.CompletedProcess:
    """``edgemvp ARGS`` in process with ``cache`` as the cache (see :func:`tests.helpers.edgemvp`)."""
    return edgemvp(*args, env={**os.environ, "EDGEMVP_CACHE": str(cache)}, cwd=ROOT)


def test_mvp_end_to_end_falls_back_to_leep_and_writes_every_artifact(tiny_bases, digits_zoo, tmp_path) -> None:
    out = tmp_path / "run"
    result = run(_request(digits_zoo, out), tiny_bases)
    r = result.report
    assert ARTIFACTS <= {p.name for p in out.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left
    # digits classes have no WordNet synsets: LEEP is used, and the report says why
    assert r["similarity"]["kind"] == "leep" and "no node in wordnet" in r["similarity"]["note"]
    sims = [n["similarity"] for n in r["neighbours"]]
    assert len(sims) == 2 and sims == sorted(sims, reverse=True) and all(s < 0 for s in sims)
    assert r["vote"]["neighbours"] == 2 and r["vote"]["temperature"] == 0.25
    assert r["latency"]["source"] == "measured" and r["latency"]["first_measurement_ms"] is None  # within: once
    # the folder rebuilds the same model, and the report's accuracy is its accuracy
    model, masks = load_pruned(out)
    assert masks.keep_ratio() == pytest.approx(r["keep_ratio"], abs=1e-5) and r["keep_ratio"] < 0.15
    ds = get_dataset("digits")
    spec = InputSpec.from_dict(r["base"]["input_spec"])
    acc = accuracy(model, eval_batches(task_view(resolve_task(None, "digits", "0,1,2"), ds, "test"), spec),
                   torch.device("cpu"))
    assert acc == pytest.approx(r["accuracy"]["final"], abs=0.01)
    assert r["accuracy"]["final"] > 100 / 3 + 10  # learned something beyond chance
    assert r["params"] < 0.05 * r["base"]["params"]
    assert r["export"]["parity"]["passed"] and r["export"]["opset"] == 18
    lat = r["latency"]
    assert lat["source"] == "measured" and lat["within_budget"] and result.within_budget
    files = json.loads((out / "report.json").read_text())["files"]
    assert set(files) >= {"model.onnx", "masks.json", "weights.safetensors"}
    assert "# " in (out / "README.md").read_text() and "digits" in (out / "README.md").read_text()
    # the same request gives the same weights (seeded vote, batches and fp32 fine-tuning)
    again = run(_request(digits_zoo, tmp_path / "again"), tiny_bases)
    assert again.report["files"]["weights.safetensors"] == files["weights.safetensors"]


def test_user_hierarchy_ranks_by_wu_palmer(tiny_bases, digits_zoo, tmp_path) -> None:
    from edgemvp.mvp.similarity import Hierarchy, Taxonomy, wordnet_similarity

    tree = tmp_path / "digits.yaml"
    tree.write_text("digits:\n  even: ['0', '2', '4', '6', '8']\n  odd: ['1', '3', '5', '7', '9']\n")
    result = run(_request(digits_zoo, tmp_path / "h", hierarchy=tree, iters=0), tiny_bases)
    r = result.report
    assert r["similarity"]["kind"] == "hierarchy" and r["similarity"]["note"] is None
    with ZooStore.open(digits_zoo) as store:
        ids, tasks = store.task_table(r["base"]["weights_sha256"])
    sims = wordnet_similarity([("digits", c) for c in ("0", "1", "2")], tasks, Taxonomy(Hierarchy.load(tree)))
    best = [ids[i] for i in np.argsort(-sims, kind="stable")[:2]]
    assert [n["id"] for n in r["neighbours"]] == best
    assert r["accuracy"]["final"] == r["accuracy"]["init"]  # J = 0: no fine-tuning


@pytest.mark.slow  # over 15 s on 2 cores: make test-all
def test_baselines_run_through_the_same_path(tiny_bases, digits_zoo, tmp_path) -> None:
    from edgemvp.masks import random_masks

    with ZooStore.open(digits_zoo) as store:
        before = len(store)
    reports = {}
    for method in ("random", "transfer", "ifp"):
        reports[method] = run(_request(digits_zoo, tmp_path / method, method=method, iters=12), tiny_bases).report
        assert ARTIFACTS <= {p.name for p in (tmp_path / method).iterdir()}
    block = reports["random"]["settings"]["round_to"]  # the host's channel block (--round-to auto)
    assert load_pruned(tmp_path / "random")[1].kept == random_masks("resnet18", 0.9, 0, block).kept
    nearest = reports["transfer"]["neighbours"]
    assert len(nearest) == 1
    with ZooStore.open(digits_zoo) as store:
        assert load_pruned(tmp_path / "transfer")[1].kept == store.get(nearest[0]["id"]).manifest.masks.kept
        assert len(store) == before  # nothing added without --add-to-zoo
    assert reports["ifp"]["pruner"]["name"] == "ifp-activation" and reports["ifp"]["neighbours"] == []


def test_learning_rate_and_few_data_options(tiny_bases, digits_zoo, tmp_path) -> None:
    from edgemvp.pipeline import fit, rank

    ds = get_dataset("digits")
    req = _request(digits_zoo, tmp_path / "lr", method="random", iters=6, lr=0.2, train_per_class=4)
    assert len(req.train_view(ds)) == 12 and len(_request(digits_zoo, tmp_path).train_view(ds)) > 12
    assert req.train_view(ds).indices.tolist() == replace(req, seed=7).train_view(ds).indices.tolist()
    from edgemvp.zoo.local import LocalZoo

    with LocalZoo.open(digits_zoo, cache=tiny_bases) as zoo:
        fast = fit(req, zoo, None, ds)
        slow = fit(replace(req, lr=1e-4), zoo, None, ds)
        same = fit(req, zoo, None, ds)
        ids, tasks = zoo.task_table()
        ranking = rank(zoo, ids, tasks, req.task, ds, replace(req, similarity="leep"))
        ifp = fit(replace(req, method="ifp"), zoo, None, ds)
    state = {k: v for k, v in fast.model.state_dict().items() if v.is_floating_point()}
    assert all(torch.equal(v, same.model.state_dict()[k]) for k, v in state.items())
    assert any(not torch.equal(v, slow.model.state_dict()[k]) for k, v in state.items())
    # 6 steps are too few to replace BatchNorm statistics: auto re-estimates them
    assert fast.info == {"bn_reestimated": True} and fast.accuracy["init"] is not None
    assert ranking.kind == "leep" and len(ranking.scores) == len(ids)
    report = run(replace(req, out=tmp_path / "run"), tiny_bases).report
    assert report["settings"]["finetune_optim"]["lr"] == 0.2 and report["settings"]["train_per_class"] == 4
    assert {"evaluate_init", "bn_reestimate", "finetune", "evaluate"} <= set(report["timings"])
    assert ifp.info["pruner"]["config"]["lr"] == 0.2 and ifp.accuracy["init"] is None
    with pytest.raises(Exception, match="--lr must be in"):
        replace(req, lr=0.0)
    with pytest.raises(Exception, match=r"--train-per-class must be an integer in \[1, "):
        replace(req, train_per_class=0)


def test_add_to_zoo_records_parents(tiny_bases, digits_zoo, tmp_path) -> None:
    result = run(_request(digits_zoo, tmp_path / "add", add_to_zoo=True), tiny_bases)
    with ZooStore.open(digits_zoo) as store:
        entry = store.get(result.entry_id)
        assert store.verify().clean
    parents = [n["id"] for n in result.report["neighbours"]]
    assert list(entry.manifest.parents) == parents and entry.manifest.pruner == "mvp"
    assert entry.manifest.metrics["test_acc"] == result.report["accuracy"]["final"]
    assert entry.manifest.weights_sha256 == result.report["files"]["weights.safetensors"]
    # the stored entry rebuilds to the exported weights
    model = entry.load_model()
    exported, _ = load_pruned(tmp_path / "add")
    x = torch.randn(4, 1, 16, 16)
    assert torch.equal(model(x), exported(x))


def test_channels_are_aligned_to_the_devices_block(tiny_bases, digits_zoo, tmp_path) -> None:
    from edgemvp.deploy.devices import ProfileRegistry
    from edgemvp.units import unit_space

    def counts(r: dict, out: Path) -> dict[str, int]:
        _, masks = load_pruned(out)
        return {u.name: len(masks.kept[u.name]) for u in unit_space("resnet18").units}

    auto = run(_request(digits_zoo, tmp_path / "auto", device="rpi4"), tiny_bases)
    block = ProfileRegistry().get("rpi4").hardware.channel_block
    assert block == 4 and auto.report["settings"]["round_to"] == 4 and auto.report["vote"]["round_to"] == 4
    sizes = {u.name: u.size for u in unit_space("resnet18").units}
    assert all(k % 4 == 0 or k == sizes[u] for u, k in counts(auto.report, tmp_path / "auto").items())
    assert "channels in multiples of 4" in "\n".join(auto.summary.summary_lines(tmp_path / "auto"))
    plain = run(_request(digits_zoo, tmp_path / "plain", device="rpi4", round_to=1), tiny_bases)
    assert any(k % 4 for k in counts(plain.report, tmp_path / "plain").values())  # 64 at 90%: 6 kept
    random = run(_request(digits_zoo, tmp_path / "random", device="host", method="random", round_to=8), tiny_bases)
    assert all(k % 8 == 0 or k == sizes[u] for u, k in counts(random.report, tmp_path / "random").items())


def test_over_budget_exits_3_and_still_writes(tiny_bases, digits_zoo, tmp_path) -> None:
    out = tmp_path / "over"
    proc = _cli(tiny_bases, "prune", "--dataset", "digits", "--classes", "3,4,5", "--device", "host", "--zoo",
                str(digits_zoo), "--iters", "2", "-n", "2", "--runs", "5", "--budget-ms", "0.000001", "--ratio", "0.9",
                "--out", str(out))
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: over budget:")
    assert "OVER BUDGET" in proc.stdout and "neighbours by leep" in proc.stdout
    lat = json.loads((out / "report.json").read_text())["latency"]
    assert lat["within_budget"] is False
    assert lat["first_measurement_ms"] is not None  # the miss was measured again before it counted
    assert "measured again" in proc.stdout


def test_a_measured_miss_is_measured_again_before_it_counts(tiny_bases, digits_zoo, tmp_path, monkeypatch) -> None:
    import edgemvp.pipeline as pipeline

    verdicts = iter(["over budget: (the first figure, as if a burst of load had pushed it over)"])
    real = pipeline.over_budget
    monkeypatch.setattr(pipeline, "over_budget", lambda *a, **k: next(verdicts, None) or real(*a, **k))
    asked = []
    measure_again = pipeline.latency
    monkeypatch.setattr(pipeline, "latency", lambda *a: asked.append(a[4:]) or measure_again(*a))
    result = run(_request(digits_zoo, tmp_path / "again", budget_ms=1000.0), tiny_bases)
    lat = result.report["latency"]
    assert result.within_budget and lat["first_measurement_ms"] is not None
    assert asked == [(4 * 5, 4 * 5 * MEASURE_SECONDS_PER_RUN)]  # once, four times the runs and the seconds
    exported = json.loads((tmp_path / "again" / "export.json").read_text())["latency"]["fp32"]
    assert exported["value_ms"] == lat["value_ms"] and exported["model"] == str(tmp_path / "again" / "model.onnx")


def test_a_budget_chooses_the_ratio_and_the_report_records_each_step(tiny_bases, digits_zoo, tmp_path) -> None:
    from edgemvp.deploy.devices import ProfileRegistry
    from edgemvp.deploy.search import SkeletonTimer
    from edgemvp.models.base import find_base

    spec = find_base("resnet18", "digits", tiny_bases).input_spec
    timer = SkeletonTimer("resnet18", 3, spec, ProfileRegistry().get("rpi4"), 4, cache=tiny_bases)
    budget = (timer(0.5) + timer(0.9)) / 2 / 0.98  # an estimated device: the same figures every time
    result = run(_request(digits_zoo, tmp_path / "sized", device="rpi4", search=True, budget_ms=budget), tiny_bases)
    r = result.report
    search, lat = r["search"], r["latency"]
    assert 0.5 < search["ratio"] <= 0.9 and r["settings"]["ratio"] == search["ratio"]
    assert r["settings"]["ratio_search"] is True and search["source"] == "estimated" == lat["source"]
    assert lat["within_budget"] and lat["value_ms"] <= budget and lat["budget_ms"] == budget
    steps = {s["ratio"]: s for s in search["steps"]}
    assert steps[search["ratio"]]["within"] and steps[0.99]["within"] and not steps[0.01]["within"]
    below = round(search["ratio"] - 0.01, 2)  # one grid step less pruning misses the aim (or has the same counts)
    assert (below in steps and not steps[below]["within"]) or timer(below) == timer(search["ratio"])
    assert r["vote"]["filled_by_importance"] is not None and "budget_search" in r["timings"]
    assert "chosen by the" in "\n".join(result.summary.summary_lines(tmp_path / "sized"))


def test_a_greedy_allocation_sizes_each_group_and_the_report_records_it(tiny_bases, digits_zoo, tmp_path) -> None:
    from edgemvp.deploy.devices import ProfileRegistry
    from edgemvp.deploy.search import SkeletonTimer
    from edgemvp.masks import Masks
    from edgemvp.models.base import find_base
    from edgemvp.units import unit_space

    spec = find_base("resnet18", "digits", tiny_bases).input_spec
    budget = SkeletonTimer("resnet18", 3, spec, ProfileRegistry().get("rpi4"), 4, cache=tiny_bases)(0.8) / 0.98
    out = tmp_path / "greedy"
    result = run(_request(digits_zoo, out, device="rpi4", search=True, budget_ms=budget, allocate="greedy"),
                 tiny_bases)
    r = result.report
    alloc = r["search"]["allocation"]
    assert not alloc["fell_back"] and alloc["removals"] and alloc["latency_ms"] <= r["search"]["aim_ms"]
    masks = Masks.load(out / "masks.json", "resnet18")
    assert {u.name: len(masks.kept[u.name]) for u in unit_space("resnet18").units} == alloc["counts"]
    assert r["keep_ratio"] == alloc["keep_ratio"] > alloc["uniform_keep_ratio"]
    assert r["vote"]["counts"] == list(alloc["counts"].values()) and r["settings"]["allocate"] == "greedy"
    assert r["latency"]["within_budget"] and alloc["constants"] == "fitted"
    assert "greedy per-group allocation" in "\n".join(result.summary.summary_lines(out))


def test_a_shipped_model_over_the_budget_makes_the_search_step_up(tiny_bases, digits_zoo, tmp_path,
                                                                  monkeypatch) -> None:
    import edgemvp.pipeline as pipeline

    from edgemvp.deploy.devices import ProfileRegistry
    from edgemvp.deploy.search import SkeletonTimer
    from edgemvp.models.base import find_base

    spec = find_base("resnet18", "digits", tiny_bases).input_spec
    budget = SkeletonTimer("resnet18", 3, spec, ProfileRegistry().get("rpi4"), 4, cache=tiny_bases)(0.9) / 0.98
    verdicts = iter(["over budget: (the first shipped model, as if timing noise had pushed it over)"])
    real = pipeline.over_budget
    monkeypatch.setattr(pipeline, "over_budget", lambda *a, **k: next(verdicts, None) or real(*a, **k))
    result = run(_request(digits_zoo, tmp_path / "retry", device="rpi4", search=True, budget_ms=budget), tiny_bases)
    search = result.report["search"]
    first = search["retries"][0]["ratio"]
    assert len(search["retries"]) == 1 and first <= 0.9  # the first fitted model, sent back once
    assert search["ratio"] == search["retries"][0]["next"] > first
    assert result.report["settings"]["ratio"] == search["ratio"] and result.within_budget
    assert "1 retried" in "\n".join(result.summary.summary_lines(tmp_path / "retry"))


def test_a_budget_no_model_meets_exits_3_with_one_line_and_writes_nothing(tiny_bases, digits_zoo, tmp_path) -> None:
    out = tmp_path / "none"
    proc = _cli(tiny_bases, "prune", "--dataset", "digits", "--classes", "3,4,5", "--device", "host", "--zoo",
                str(digits_zoo), "--iters", "2", "-n", "2", "--runs", "5", "--budget-ms", "0.000001", "--out", str(out))
    assert proc.returncode == 3, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no model meets the budget: the smallest latency reached is ") and "(measured)" in last
    assert not out.exists()


def test_one_run_for_a_fleet_writes_a_model_per_device(tiny_bases, digits_zoo, tmp_path) -> None:
    out = tmp_path / "fleet"
    proc = _cli(tiny_bases, "prune", "--dataset", "digits", "--classes", "3,4,5", "--device", "rpi4,jetson",
                "--zoo", str(digits_zoo), "--iters", "2", "-n", "2", "--runs", "5", "--ratio", "auto", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    folders = {p.name for p in out.iterdir()}
    task = resolve_task(None, "digits", "3,4,5").name
    assert folders == {f"{task}-rpi4", f"{task}-jetson-nano"}, folders
    reports = {f: json.loads((out / f / "report.json").read_text()) for f in folders}
    assert {r["device"] for r in reports.values()} == {"rpi4", "jetson-nano"}
    assert all(r["search"] and r["latency"]["within_budget"] for r in reports.values())
    assert {r["settings"]["round_to"] for r in reports.values()} == {4, 8}
    table = proc.stdout[proc.stdout.index("device "):].splitlines()
    assert len(table) == 3 and all(any(d in row for row in table) for d in ("rpi4", "jetson-nano"))
    twice = _cli(tiny_bases, "prune", "--dataset", "digits", "--classes", "3,4,5", "--device", "jetson,jetson-nano",
                 "--zoo", str(digits_zoo), "--out", str(tmp_path / "twice"))
    assert twice.returncode == 2 and "listed twice" in twice.stderr and not (tmp_path / "twice").exists()


@pytest.mark.slow
def test_a_fleet_device_no_model_fits_gets_its_line_and_the_others_their_models(tiny_bases, digits_zoo,
                                                                                 tmp_path) -> None:
    from edgemvp.deploy.devices import ProfileRegistry
    from edgemvp.deploy.search import SkeletonTimer
    from edgemvp.models.base import find_base

    spec, registry = find_base("resnet18", "digits", tiny_bases).input_spec, ProfileRegistry()
    fastest = {d: SkeletonTimer("resnet18", 3, spec, registry.get(d), b, cache=tiny_bases)(0.99)
               for d, b in (("rpi4", 4), ("jetson-nano", 8))}
    slow, fast = sorted(fastest, key=fastest.get, reverse=True)
    budget = (fastest[slow] + fastest[fast]) / 2 / 0.98  # the faster device fits at 0.99, the slower never
    out = tmp_path / "fleet"
    proc = _cli(tiny_bases, "prune", "--dataset", "digits", "--classes", "3,4,5", "--device", "rpi4,jetson",
                "--zoo", str(digits_zoo), "--iters", "2", "-n", "2", "--budget-ms", str(budget), "--out", str(out))
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {slow}: no model meets the budget")
    task = resolve_task(None, "digits", "3,4,5").name
    assert {p.name for p in out.iterdir()} == {f"{task}-{fast}"}
    assert any(row.startswith(slow) and "none: no model meets" in row for row in proc.stdout.splitlines())


def test_bad_input_is_one_clear_line(tiny_bases, digits_zoo, tmp_path) -> None:
    from tests.helpers import make_entry

    empty = tmp_path / "empty"
    ZooStore.open(empty, create=True).close()
    other = tmp_path / "other"
    with ZooStore.open(other, create=True) as store:
        store.put(*make_entry(classes=("0", "1", "2"), base_sha256="b" * 64))
    digits = ["--dataset", "digits", "--classes", "0,1,2", "--out", str(tmp_path / "o")]
    cases = [
        (["--task", "nosuch", "--device", "host"], "unknown task 'nosuch'"),
        (["--task", "fashion5", "--device", "toaster"], "unknown device 'toaster'"),
        (["--task", "pets5", "--device", "jetson"], "Oxford-IIIT Pets is not in"),
        ([*digits, "--device", "host", "--zoo", str(empty)], "is empty"),
        ([*digits, "--device", "host", "--zoo", str(other)], "built for another base model"),
        ([*digits, "--device", "host", "--zoo", str(digits_zoo), "-n", "99"], "is more than the"),
        ([*digits, "--device", "host", "--zoo", str(tmp_path / "nope")], "zoo not found"),
        ([*digits, "--device", "host", "--zoo", str(digits_zoo), "--ratio", "1.5"], "must be in (0, 1), got 1.5"),
        ([*digits, "--device", "host", "--no-bn-reestimate", "--bn-reestimate", "on"], "contradicts"),
        ([*digits, "--device", "host", "--zoo", str(digits_zoo), "--round-to", "0"], "--round-to"),
        ([*digits, "--device", "host", "--zoo", str(digits_zoo), "--round-to", "eight"], "is not an integer"),
        ([*digits, "--device", "host", "--zoo", str(digits_zoo), "--margin", "0.1"], "--margin is for --ratio auto"),
        ([*digits, "--device", "host", "--zoo", str(digits_zoo), "--margin", "1"], "--margin"),
        ([*digits, "--device", "host", "--zoo", str(digits_zoo), "--ratio", "auto", "--int8"], "with --int8 give"),
        ([*digits, "--device", "host", "--zoo", str(digits_zoo), "--ratio", "auto", "--method", "transfer"],
         "has no ratio for a budget to choose"),
        ([*digits, "--device", "host", "--zoo", str(digits_zoo), "--allocate", "greedy"],
         "--allocate greedy is for --ratio auto"),
        ([*digits, "--device", "host", "--zoo", str(digits_zoo), "--ratio", "auto", "--allocate", "greedy", "--method",
          "ifp"], "a per-group allocation is for mvp and random"),
        ([*digits, "--device", "host", "--zoo", str(digits_zoo), "--allocate", "best"], "'best' is not one of"),
        ([*digits, "--device", "host,", "--zoo", str(digits_zoo)], "an empty device name"),
        ([*digits, "--device", "host,toaster", "--zoo", str(digits_zoo)], "unknown device 'toaster'"),
    ]
    for args, message in cases:
        proc = _cli(tiny_bases, "prune", *args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, proc.stderr)
    assert not (tmp_path / "o").exists()
    with ZooStore.open(digits_zoo) as store:
        assert store.verify().clean
    # a damaged cached base: its one line comes before the ranking's note (digits has no WordNet synsets)
    damaged = tmp_path / "damaged-cache"
    shutil.copytree(tiny_bases / "bases", damaged / "bases")
    weights = damaged / "bases" / "resnet18--digits" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    proc = _cli(damaged, "prune", *digits, "--device", "host", "--zoo", str(digits_zoo), "-n", "2")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "model.safetensors" in lines[0], proc.stderr


def test_vit_mvp_averages_heads_and_exports(tiny_bases, tmp_path) -> None:
    """ViT path: head/MLP-node masks voted, weights averaged, no BatchNorm, AdamW fine-tune, ONNX parity."""
    from edgemvp.models.base import find_base
    from tests.helpers import make_entry

    sha = find_base("vit_tiny", "digits", tiny_bases).weights_sha256
    zoo = tmp_path / "vzoo"
    with ZooStore.open(zoo, create=True) as store:
        for seed, classes in ((1, ("0", "1", "2")), (2, ("1", "2", "3")), (3, ("7", "8", "9"))):
            store.put(*make_entry(arch="vit_tiny", seed=seed, classes=classes, ratio=0.5, base_sha256=sha))
    tree = tmp_path / "t.yaml"
    tree.write_text("digits: ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']\n")
    r = run(_request(zoo, tmp_path / "v", iters=3, hierarchy=tree, ratio=0.5), tiny_bases).report
    assert r["base"]["arch"] == "vit_tiny" and r["settings"]["finetune_optim"]["optimizer"] == "adamw"
    assert [n["classes"] for n in r["neighbours"]] == [["0", "1", "2"], ["1", "2", "3"]]
    assert r["export"]["parity"]["passed"]
    from edgemvp.units import unit_space

    _, masks = load_pruned(tmp_path / "v")
    for unit in unit_space("vit_tiny").units:
        assert len(masks.kept[unit.name]) == max(1, round(0.5 * unit.size))


def test_auto_skips_batchnorm_reestimation_that_fine_tuning_would_replace(tiny_bases, digits_zoo, tmp_path) -> None:
    """At J = 66, (1 - 0.1)^66 < 1e-3 of the re-estimated statistics would be left: auto skips the work, and the
    trained parameters are exactly those of a run that re-estimates (training-mode BatchNorm uses batch statistics
    and the re-estimation draws from its own batches)."""
    from edgemvp.pipeline import fit
    from edgemvp.zoo.local import LocalZoo

    ds = get_dataset("digits")
    req = _request(digits_zoo, tmp_path, method="random", iters=66, train_per_class=10)
    with LocalZoo.open(digits_zoo, cache=tiny_bases) as zoo:
        auto, on = fit(req, zoo, None, ds), fit(replace(req, bn_reestimate=True), zoo, None, ds)
        short = fit(replace(req, iters=65), zoo, None, ds)
        start_auto, start_on = (fit(replace(req, iters=0, bn_reestimate=bn), zoo, None, ds).model.state_dict()
                                for bn in (False, True))
    assert auto.info == {"bn_reestimated": False} and on.info == {"bn_reestimated": True}
    assert short.info == {"bn_reestimated": True}  # 0.9^65 > 1e-3
    assert auto.accuracy["init"] == auto.accuracy["init_before_bn"] != on.accuracy["init"]
    a, b = auto.model.state_dict(), on.model.state_dict()
    params = dict(auto.model.named_parameters())
    assert params and all(torch.equal(a[k], b[k]) for k in params)
    stats = [k for k in a if k.endswith("running_var")]
    assert stats and any(not torch.equal(a[k], b[k]) for k in stats)
    # both runs move their statistics by the same batch statistics: what differs is 0.9^66 of where they started
    for k in stats:
        assert torch.allclose(a[k] - b[k], 0.9 ** 66 * (start_auto[k] - start_on[k]), atol=1e-5), k


def test_without_zoo_a_task_of_another_dataset_votes_from_the_cached_zoo_that_fits(tiny_bases, digits_zoo,
                                                                                   tmp_path) -> None:
    cache = tmp_path / "cache"
    (cache / "zoos").mkdir(parents=True)
    (cache / "bases").symlink_to(Path(tiny_bases) / "bases")
    (cache / "zoos" / "resnet18--digits").symlink_to(digits_zoo)
    result = run(_request(None, tmp_path / "run", iters=3), cache)
    r = result.report
    assert Path(r["zoo"]["path"]) == Path(digits_zoo).resolve() and r["base"]["dataset"] == "digits"
    assert not (cache / "bases" / "resnet18--fashion-mnist").exists()  # never the offline default's base
