"""The greedy per-group allocation under a latency budget (``--allocate greedy``, edgemvp.deploy.allocate)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgemvp.deploy.allocate import SkeletonCost, allocate, blocks, greedy, rank_shares
from edgemvp.deploy.devices import ProfileRegistry
from edgemvp.deploy.search import HI, SkeletonTimer, counts, search_ratio
from edgemvp.errors import UsageError
from edgemvp.masks import ALIGNED_KINDS, Masks, check_counts, random_masks
from edgemvp.models.factory import create_model
from edgemvp.mvp.vote import vote
from edgemvp.shrink import shrink
from edgemvp.spec import InputSpec
from edgemvp.units import unit_space

SPEC = InputSpec(1, 16, (0.5,), (0.5,))


def test_the_greedy_removes_where_saving_per_importance_lost_is_largest_and_stops_at_the_aim() -> None:
    # group a saves 1.0 ms a block, b 0.6 ms; a's last ranks carry 0.05 each, its next ones 0.1; b's all 0.05
    shares = [np.array([0.3, 0.3, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05]),
              np.array([0.2, 0.2, 0.2, 0.2, 0.05, 0.05, 0.05, 0.05])]
    c = [8, 8]
    predicted, removed = greedy(c, (2, 2), (2, 2), shares, {0: 1.0, 1: 0.6}, 10.0, 8.0, ("a", "b"))
    assert [r.group for r in removed] == ["a", "a"] and c == [4, 8] and predicted == 8.0  # 1.0/0.1 > 0.6/0.1
    predicted, removed = greedy(c, (2, 2), (2, 2), shares, {0: 1.0, 1: 0.6}, predicted, 7.0, ("a", "b"))
    assert [r.group for r in removed] == ["b", "b"] and c == [4, 4]  # a's next block is dearer: 1.0/0.2 < 0.6/0.1
    assert removed[0].lost == 0.1 and removed[0].saved_ms == 0.6 and predicted <= 7.0
    c = [4, 4]
    predicted, removed = greedy(c, (4, 2), (2, 2), shares, {1: 0.5}, 10.0, 0.0, ("a", "b"))
    assert c == [4, 2] and len(removed) == 1  # no group drops below its floor, even over the aim


def test_rank_shares_are_of_the_whole_models_importance_and_blocks_keep_counts_aligned() -> None:
    space = unit_space("resnet18")
    imp = np.concatenate([np.arange(u.size, dtype=float) * (10.0 ** i) for i, u in enumerate(space.units)])
    shares = rank_shares("resnet18", imp)
    assert np.isclose(sum(s.sum() for s in shares), 1) and all(np.all(np.diff(s) <= 0) for s in shares)
    assert np.allclose(shares[1], 10 * shares[0])  # a group carrying 10x the activation weighs 10x
    assert all(np.isclose(s.sum(), 1) for s in rank_shares("resnet18", None))  # no prior: equal within groups
    assert all(b % 8 == 0 for b, u in zip(blocks("resnet18", 8), space.units) if u.kind in ALIGNED_KINDS)


@pytest.fixture(scope="module")
def timer(tiny_bases) -> SkeletonTimer:
    return SkeletonTimer("resnet18", 3, SPEC, ProfileRegistry().get("rpi4"), 4, cache=tiny_bases)


def test_the_allocation_meets_the_aim_and_keeps_more_units_than_the_uniform_ratio(timer, tiny_bases) -> None:
    budget = timer(0.8) / 0.98
    sized = search_ratio(timer, "resnet18", budget, "p90", timer.source, 4)
    cost = SkeletonCost(timer, tiny_bases)
    importance = np.random.default_rng(0).random(sum(u.size for u in unit_space("resnet18").units))
    out = allocate(timer, cost, importance, sized.ratio, sized.aim_ms)
    assert not out.fell_back and out.latency_ms <= sized.aim_ms and timer.at(out.counts) == out.latency_ms
    assert out.keep_ratio > out.uniform_keep_ratio  # the point of it: more of the model under the same budget
    assert out.counts != counts("resnet18", sized.ratio, 4) and out.removals and cost.constants_source == "fitted"
    floor = counts("resnet18", HI, 4)
    assert all(k >= f and k % 4 == 0 for k, f in zip(out.counts, floor))
    assert out.checks[-1]["within"] and not out.checks[0]["within"]  # it started over the aim
    record = out.to_dict()
    assert set(record["counts"]) == {u.name for u in unit_space("resnet18").units}
    assert record["removals"][0]["keep"] == out.removals[0].keep


def test_an_aim_the_rounds_cannot_reach_falls_back_to_the_uniform_counts(timer, tiny_bases) -> None:
    out = allocate(timer, SkeletonCost(timer, tiny_bases), None, 0.9, 1e-9)
    assert out.fell_back and out.counts == counts("resnet18", 0.9, 4) and not out.checks[-1]["within"]


class _Slow:
    """The real timer plus a constant: a slow, noisy measurement that no removal undoes."""

    def __init__(self, timer: SkeletonTimer, offset: float):
        self.arch, self.round_to, self.real, self.offset = timer.arch, timer.round_to, timer, offset

    def at(self, key):
        return self.real.at(key) + self.offset


def test_removals_that_would_keep_fewer_units_than_the_uniform_counts_fall_back_to_them(timer, tiny_bases) -> None:
    aim = timer(0.8)
    out = allocate(_Slow(timer, aim / 2), SkeletonCost(timer, tiny_bases), None, 0.8, aim)
    assert out.fell_back and out.counts == counts("resnet18", 0.8, 4)
    assert all(c["keep_ratio"] >= out.uniform_keep_ratio for c in out.checks)  # it never timed fewer units


def test_voted_counts_are_the_allocations_and_the_masks_load_strictly() -> None:
    space = unit_space("resnet18")
    want = tuple(max(1, u.size // (2 + i % 3)) for i, u in enumerate(space.units))
    rows = np.random.default_rng(1).random((3, sum(u.size for u in space.units))) < 0.1
    result = vote("resnet18", rows, 0.9, counts=want)
    assert tuple(len(result.masks.kept[u.name]) for u in space.units) == want
    again = Masks.from_json(result.masks.to_json(), arch="resnet18")
    assert again == result.masks
    small = shrink(create_model("resnet18", 3, SPEC), again)
    twin = shrink(create_model("resnet18", 3, SPEC), again)
    twin.load_state_dict(small.state_dict(), strict=True)
    assert small.eval()(torch.zeros(1, 1, 16, 16)).shape == (1, 3)
    assert tuple(len(random_masks("resnet18", 0.5, 0, counts=want).kept[u.name]) for u in space.units) == want


@pytest.mark.parametrize("bad, message", [((1, 2), "has 12 unit groups"), ((0,) * 12, "keeps 1..64 units, not 0"),
                                          ((65,) * 12, "not 65"), ((1.5,) * 12, "not 1.5")])
def test_bad_counts_are_one_usage_error(bad, message) -> None:
    with pytest.raises(UsageError, match=message):
        check_counts("resnet18", bad)
