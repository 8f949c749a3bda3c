"""Latency budgets that choose the model (issue 25): the ratio search, its exit-3 line, and the vote's prior."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgemvp.deploy.search import GRID, counts, next_ratio, search_ratio
from edgemvp.errors import BudgetExceeded, UsageError
from edgemvp.masks import unit_keep
from edgemvp.models.factory import create_model
from edgemvp.mvp.prior import unit_importance
from edgemvp.mvp.vote import vote
from edgemvp.spec import InputSpec
from edgemvp.units import unit_space

SPEC = InputSpec(3, 32, (0.5,) * 3, (0.25,) * 3)


def _kept_share_time(arch: str = "resnet18", round_to: int = 1):
    """A latency that falls with the share of units kept (what a real one does), and a log of calls."""
    calls: list[float] = []
    total = sum(u.size for u in unit_space(arch).units)

    def time_ms(ratio: float) -> float:
        calls.append(ratio)
        return 10.0 * sum(counts(arch, ratio, round_to)) / total
    return time_ms, calls


def test_search_keeps_the_least_pruning_that_meets_the_aim_and_records_each_step() -> None:
    time_ms, calls = _kept_share_time()
    result = search_ratio(time_ms, "resnet18", budget_ms=5.0, statistic="p90", source="estimated", margin=0.1)
    assert result.aim_ms == pytest.approx(4.5)
    assert time_ms(result.ratio) <= 4.5 < time_ms(round(result.ratio - 1 / GRID, 2))  # the least that meets it
    assert 0.5 < result.ratio < 0.6
    assert len(result.steps) == len(calls) - 2 <= 9  # two endpoints and a bisection over the 0.01 grid
    assert [s.ratio for s in result.steps][:2] == [0.99, 0.01]
    assert all(s.within == (s.latency_ms <= 4.5) for s in result.steps)
    record = result.to_dict()
    assert record["ratio"] == result.ratio and len(record["steps"]) == len(result.steps)
    assert record["source"] == "estimated" and record["margin"] == 0.1


def test_a_budget_the_whole_model_meets_keeps_it_all_and_the_default_margin_follows_the_source() -> None:
    time_ms, _ = _kept_share_time()
    result = search_ratio(time_ms, "resnet18", budget_ms=100.0, statistic="p90", source="measured")
    assert result.ratio == 0.01 and len(result.steps) == 2 and result.margin == 0.1
    assert search_ratio(time_ms, "resnet18", 100.0, "p90", "estimated").margin == 0.02


def test_no_model_under_the_budget_is_one_line_with_the_smallest_latency_reached() -> None:
    time_ms, calls = _kept_share_time()
    with pytest.raises(BudgetExceeded) as err:
        search_ratio(time_ms, "resnet18", budget_ms=0.01, statistic="p90", source="measured")
    line = str(err.value)
    assert "\n" not in line and line.startswith("no model meets the budget: the smallest latency reached is")
    assert f"{time_ms(0.99):.3f} ms p90" in line and "0.01 ms budget" in line
    assert calls[0] == 0.99  # the most pruned model first: nothing else is tried once it misses
    with pytest.raises(UsageError):
        search_ratio(time_ms, "resnet18", 1.0, "p90", "measured", margin=1.0)


def test_a_shipped_model_over_the_budget_steps_to_a_smaller_one() -> None:
    time_ms, _ = _kept_share_time(round_to=8)
    result = search_ratio(time_ms, "resnet18", 5.0, "p90", "measured", round_to=8)
    chosen = result.ratio
    nxt = next_ratio(result, "resnet18", shipped_ms=result.chosen.latency_ms * 1.3, time_ms=time_ms)
    assert nxt is not None and nxt > chosen and result.ratio == nxt
    assert counts("resnet18", nxt, 8) != counts("resnet18", chosen, 8)
    assert nxt in [s.ratio for s in result.steps]
    assert time_ms(nxt) <= result.aim_ms / 1.3  # below the aim by the overshoot
    assert result.retries == [{"ratio": chosen, "shipped_ms": pytest.approx(time_ms(chosen) * 1.3, abs=1e-3),
                               "next": nxt}]


def test_the_step_up_takes_the_least_pruning_below_the_overshoot_not_a_doubling_point() -> None:
    time_ms, _ = _kept_share_time()
    result = search_ratio(time_ms, "resnet18", 5.0, "p90", "measured")
    chosen = result.chosen.latency_ms
    need = chosen * result.aim_ms / (chosen * 1.05)
    nxt = next_ratio(result, "resnet18", shipped_ms=chosen * 1.05, time_ms=time_ms)
    assert nxt is not None and time_ms(nxt) <= need < time_ms(round(nxt - 1 / GRID, 2))  # the least that meets it
    assert len(result.retries) == 1


def test_the_step_up_reaches_the_most_pruned_model_when_only_it_fits() -> None:
    def time_ms(ratio: float) -> float:  # flat until 0.99 (per-node overheads): only the last grid point is faster
        return 1.0 if ratio >= 0.99 else 4.0
    result = search_ratio(time_ms, "resnet18", 5.0, "p90", "measured")
    assert result.ratio == 0.01
    assert next_ratio(result, "resnet18", shipped_ms=5.0, time_ms=time_ms) == 0.99
    assert next_ratio(result, "resnet18", shipped_ms=9.0, time_ms=time_ms) is None  # nothing above 0.99


def test_the_step_up_scales_the_overshoot_by_a_fresh_timing_not_by_the_lucky_reading_that_chose_the_ratio() -> None:
    true, _ = _kept_share_time()

    def time_ms(ratio: float) -> float:  # the search's one reading at 0.5 came in 45% low
        return 0.55 * true(ratio) if ratio == 0.5 else true(ratio)

    def search() -> tuple:
        result = search_ratio(time_ms, "resnet18", 5.0, "p90", "measured")
        assert result.ratio == 0.5  # chosen by the lucky reading: 0.49 and below read their true times
        return result, true(0.5)  # the shipped model: the candidate's true time, over the 4.5 ms aim
    result, shipped = search()
    lucky = next_ratio(result, "resnet18", shipped, time_ms)  # scaled by the lucky reading: asks for 2.5 ms
    assert lucky is not None and true(lucky) <= 0.55 * result.aim_ms and lucky >= 0.7
    result, shipped = search()
    nxt = next_ratio(result, "resnet18", shipped, time_ms, retime=true)
    assert nxt is not None and true(nxt) <= result.aim_ms < true(round(nxt - 1 / GRID, 2))  # the least that fits
    assert nxt < 0.6 and result.retries[0]["chosen_retimed_ms"] == pytest.approx(shipped, abs=1e-4)


def _rows(arch: str, keep: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.random(sum(u.size for u in unit_space(arch).units)) < keep for _ in range(2)])


def test_the_prior_fills_groups_beyond_the_neighbours_votes_and_leaves_the_rest_alone() -> None:
    space = unit_space("resnet18")
    rows = _rows("resnet18", 0.1, 0)  # two neighbours that kept about a tenth each
    prior = np.arange(rows.shape[1], dtype=float)[::-1].copy()  # lower index: more important
    plain = vote("resnet18", rows, 0.9, seed=3)
    high = vote("resnet18", rows, 0.9, seed=3, prior=prior)
    low = vote("resnet18", rows, 0.4, seed=3, prior=prior)  # keeps 60%: far beyond the union
    start = 0
    for unit in space.units:
        group = rows[:, start:start + unit.size].any(axis=0)
        voted = set(np.flatnonzero(group).tolist())
        k = unit_keep(unit, 0.4)
        kept = set(low.masks.kept[unit.name])
        assert voted <= kept and len(kept) == k  # every voted unit, then the prior's best of the rest
        rest = sorted(set(range(unit.size)) - voted)[:k - len(voted)]
        assert kept == voted | set(rest), unit.name
        if unit_keep(unit, 0.9) <= len(voted):  # within the votes: drawn exactly as without a prior
            assert high.masks.kept[unit.name] == plain.masks.kept[unit.name]
        start += unit.size
    assert low.filled == sum(unit_keep(u, 0.4) for u in space.units) - sum(
        min(unit_keep(u, 0.4), int(rows[:, s:s + u.size].any(axis=0).sum()))
        for u, s in zip(space.units, np.cumsum([0] + [u.size for u in space.units])[:-1]))
    with pytest.raises(UsageError):
        vote("resnet18", rows, 0.5, prior=prior[:10])


def test_unit_importance_reads_every_unit_from_the_targets_images() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", 4, SPEC)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(8, 3, 32, 32)
    scores = unit_importance(model, "resnet18", images)
    space = unit_space("resnet18")
    assert scores.shape == (sum(u.size for u in space.units),) and (scores >= 0).all() and scores.std() > 0
    assert np.array_equal(scores, unit_importance(model, "resnet18", images))  # deterministic
    assert not np.array_equal(scores, unit_importance(model, "resnet18", images * 3 + 1))  # it reads the images
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # eval mode: no statistic moved
    assert unit_importance(create_model("vit_tiny", 4, SPEC), "vit_tiny", images) is None


def _ranking_of(ids, scores):
    from edgemvp.mvp.rank import Ranking

    return Ranking(list(ids), np.asarray(scores, dtype=float), "wordnet")


def test_each_task_votes_at_the_ratio_nearest_the_targets_and_its_other_ratios_are_returned() -> None:
    from edgemvp.mvp.ratios import at_ratio, fill_order, several_ratios

    a, b, c = ("d", ("x", "y")), ("d", ("x", "z")), ("d", ("y", "z"))
    ids = ["a5", "a9", "b5", "b9", "c9"]
    tasks = [a, a, b, b, c]
    keep = {"a5": 0.5, "a9": 0.1, "b5": 0.52, "b9": 0.11, "c9": 0.1}
    assert several_ratios(tasks) and not several_ratios([a, b, c])
    ranking = _ranking_of(ids, [0.9, 0.9, 0.8, 0.8, 0.85])
    low, others = at_ratio(ranking, ids, tasks, keep, ratio=0.5, count=2)
    assert low.ids == ["a5", "b5", "c9"] and list(low.scores) == [0.9, 0.8, 0.85]
    assert others == ["a9"]  # the other ratio of the two nearest tasks (a, c); c has no other
    high, others = at_ratio(ranking, ids, tasks, keep, ratio=0.9, count=3)
    assert high.ids == ["a9", "b9", "c9"] and others == ["a5", "b5"]
    votes = np.array([0.0, 2.0, 1.0])
    order = fill_order(np.array([5.0, 0.0, 9.0]), votes)
    assert list(np.argsort(-order)) == [1, 2, 0]  # other-ratio votes first, importance within a count
    assert fill_order(None, votes) is votes or np.array_equal(fill_order(None, votes), votes)
    assert fill_order(np.array([1.0]), None)[0] == 1.0


def test_a_ratio_list_is_checked_before_any_work(tiny_bases, tmp_path) -> None:
    import os

    from tests.helpers import edgemvp

    env = {**os.environ, "EDGEMVP_CACHE": str(tiny_bases)}
    for ratios, message in (("0.5,0.5", "twice"), ("0.5,", "an empty item"), ("0.5,1.2", "must be"),
                            ("0.5,x", "is not a number")):
        bad = edgemvp("zoo", "build", "--dataset", "digits", "--ratio", ratios, "--zoo", str(tmp_path / "z"), env=env)
        assert bad.returncode == 2 and message in bad.stderr, (ratios, bad.stderr)
    assert not (tmp_path / "z").exists()


@pytest.mark.slow
def test_zoo_build_takes_a_ratio_list_and_prune_votes_from_the_nearest(tiny_bases, tmp_path) -> None:
    import json
    import os

    from edgemvp.zoo import ZooStore
    from tests.helpers import edgemvp

    env = {**os.environ, "EDGEMVP_CACHE": str(tiny_bases)}
    zoo = tmp_path / "zoo"
    built = edgemvp("zoo", "build", "--dataset", "digits", "--tasks", "2", "--classes-per-task", "3", "--iters", "4",
                    "--batch-size", "16", "--ratio", "0.5,0.9", "--zoo", str(zoo), env=env)
    assert built.returncode == 0, built.stderr
    assert "at ratio 0.5" in built.stdout and "at ratio 0.9" in built.stdout
    with ZooStore.open(zoo) as store:
        rows = store.db.execute("SELECT id FROM entries").fetchall()
        shares = sorted(round(float(store.mask_rows([r[0]]).mean()), 1) for r in rows)
    assert len(rows) == 4 and shares[:2] == [0.1] * 2 and shares[2:] == [0.5] * 2
    out = tmp_path / "p"
    proc = edgemvp("prune", "--dataset", "digits", "--classes", "3,4,5", "--device", "rpi4", "--zoo", str(zoo),
                   "--iters", "2", "-n", "2", "--ratio", "0.5", "--similarity", "leep", "--out", str(out),
                   env=env)
    assert proc.returncode == 0, proc.stderr
    r = json.loads((out / "report.json").read_text())
    assert len({tuple(n["classes"]) for n in r["neighbours"]}) == 2  # two tasks, not one task at two ratios
    with ZooStore.open(zoo) as store:
        assert all(abs(store.mask_rows([n["id"]]).mean() - 0.5) < 0.1 for n in r["neighbours"])


def test_the_candidate_skeleton_exports_the_graph_of_a_trained_model(tmp_path) -> None:
    import onnx

    from edgemvp.deploy.devices import ProfileRegistry
    from edgemvp.deploy.onnx import ExportConfig, export_raw
    from edgemvp.deploy.search import SkeletonTimer
    from edgemvp.masks import masks_from_scores
    from edgemvp.shrink import shrink

    spec = InputSpec(1, 32, (0.5,), (0.25,))
    timer = SkeletonTimer("resnet18", 5, spec, ProfileRegistry().get("host"), 16)
    candidate = onnx.load(timer.export(0.69, tmp_path / "candidate.onnx"))
    torch.manual_seed(1)
    model = create_model("resnet18", 5, spec).train()  # a few real steps move BatchNorm off its fresh state
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.randn(8, 1, 32, 32)), torch.randint(0, 5, (8,))).backward()
        opt.step()
    zeros = {u.name: np.zeros(u.size) for u in unit_space("resnet18").units}
    trained = shrink(model.eval(), masks_from_scores("resnet18", zeros, 0.69, 16))
    export_raw(trained, spec, tmp_path / "trained.onnx", ExportConfig(exporter="torchscript", fallback=False))
    shipped = onnx.load(tmp_path / "trained.onnx")
    ops = [n.op_type for n in candidate.graph.node]
    assert "Identity" not in ops  # a fresh BatchNorm's shared all-zero biases: onnxruntime ran that graph 30% faster
    assert ops == [n.op_type for n in shipped.graph.node]


@pytest.mark.parametrize("source, readings, expected", [("measured", [0.05, 0.13, 0.12, 9.0], 0.12),
                                                          ("estimated", [0.07, 9.0], 0.07)])
def test_a_measured_candidate_is_the_median_of_its_readings_and_an_estimate_is_read_once(
        monkeypatch, source, readings, expected) -> None:
    """``readings=3`` times a measured candidate by the median reading, not by a lucky one (0.05 against 0.12)."""
    import edgemvp.deploy.search as search
    from edgemvp.deploy.devices import ProfileRegistry
    from edgemvp.deploy.latency import LatencyReport

    left = list(readings)

    def fake(path, profile, *args) -> LatencyReport:
        return LatencyReport(str(path), profile.name, left.pop(0), "p90", source, "CPUExecutionProvider", 1)

    monkeypatch.setattr(search, "latency", fake)
    timer = search.SkeletonTimer("resnet18", 5, InputSpec(1, 32, (0.5,), (0.25,)), ProfileRegistry().get("host"), 16,
                                 readings=3)
    assert timer(0.8) == expected
    assert len(left) == 1  # three readings measured, one estimated; none more
    assert timer(0.8) == expected and len(left) == 1  # timed once per counts
