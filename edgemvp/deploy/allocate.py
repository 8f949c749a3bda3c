"""A per-group allocation under a latency budget: after the uniform search, prune where it saves the most latency
for the least of the target's importance lost (``prune --ratio auto --allocate greedy``).

A uniform ratio removes the same share of every unit group, though the groups differ both in what their units cost
on the device (a channel of an early, high-resolution stage costs many times one of the last stage) and in how much
of the model's response on the target they carry. Like NetAdapt's layer-wise search, the greedy allocation starts
from a model less pruned than the uniform one that met the budget (:data:`SPAN` below it on the grid) and removes
one block of units at a time (a multiple of the device's channel block) from the group whose removal has the
largest ratio of latency saved to importance lost, until the model meets the aim:

* *Latency saved* per group is the device's cost model evaluated on skeletons (the arch shrunk to the counts,
  :class:`~edgemvp.deploy.search.SkeletonTimer`) one block smaller in that group: the per-node times of
  :mod:`edgemvp.deploy.costmodel`, with its fitted constants where the device has references and its hardware
  priors otherwise (only the ratios between groups matter). The savings are linear from the point they were
  measured at, so after the greedy has reached the aim by them the counts are timed as the search times its
  candidates (measured on the device, estimated otherwise) and, while that is still over, the savings are measured
  again at the new counts and the removal goes on (at most :data:`ROUNDS` times).
* *Importance lost* is the share of the model's importance on the target that the removed ranks carry: the
  base's mean activation per unit on the target's images (:mod:`edgemvp.mvp.prior`; a residual stream's
  channels summed over the layers that carry them), sorted within the group, as a fraction of the whole
  model's; equal shares within each group where there is no prior (ViTs).

No group drops below what the uniform ratio :data:`~edgemvp.deploy.search.HI` keeps. When the rounds end over the
aim, or the removals come to keep fewer units than the uniform counts the search chose (a noisy measured figure
can drive them there), the allocation falls back to those uniform counts (they met the aim). The vote then draws each group's
count from its neighbours' votes as it draws a uniform one.
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgemvp.deploy.costmodel import CostConstants, estimate_ms, op_table, prior_constants
from edgemvp.deploy.latency import device_constants
from edgemvp.deploy.search import GRID, HI, SkeletonTimer, counts
from edgemvp.errors import UsageError
from edgemvp.masks import ALIGNED_KINDS
from edgemvp.units import unit_space

ALLOCATIONS = ("uniform", "greedy")
SPAN = 0.10  # the greedy starts this far below the uniform ratio the search chose
ROUNDS = 4  # times the savings are measured (and the counts timed) before falling back to the uniform counts
EPS = 1e-9  # importance lost is at least this (a removal of units that carry nothing is the cheapest)


@dataclass(frozen=True)
class Removal:
    """One block the greedy removed."""

    group: str
    keep: int  # the group's count after it
    saved_ms: float  # the latency the cost model says it saves (in the timer's units)
    lost: float  # the share of the model's importance on the target it removed

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Allocation:
    """What the greedy chose and how (``report.json``'s ``search.allocation``)."""

    counts: tuple[int, ...]  # per unit group, unit-space order
    groups: tuple[str, ...]
    start_ratio: float
    aim_ms: float
    latency_ms: float  # the timer's figure of ``counts``
    keep_ratio: float  # share of all units kept
    uniform_keep_ratio: float  # the uniform search's
    fell_back: bool = False  # over the aim after the rounds, or below the uniform counts: those are kept
    removals: list[Removal] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)  # each round's timing: counts' latency and whether within

    def to_dict(self) -> dict:
        return {"method": "greedy", "start_ratio": self.start_ratio, "aim_ms": round(self.aim_ms, 4),
                "latency_ms": round(self.latency_ms, 4), "keep_ratio": round(self.keep_ratio, 5),
                "uniform_keep_ratio": round(self.uniform_keep_ratio, 5), "fell_back": self.fell_back,
                "counts": dict(zip(self.groups, self.counts)), "removals": [r.to_dict() for r in self.removals],
                "checks": list(self.checks)}


def rank_shares(arch: str, importance: np.ndarray | None) -> list[np.ndarray]:
    """Per group, each rank's share of the whole model's importance (sorted descending within the group; without
    importance, every group's ranks share equally in the group).

    Shares of the whole model, not of the group: the prior sums a residual-coupled channel's activation over
    every BatchNorm that carries it, so a channel of a residual stream, which every block of its stage reads,
    weighs that much more. Normalised per group instead, the greedy thinned the residual streams to one block
    first and lost accuracy (docs/results.md, issue 25).
    """
    space = unit_space(arch)
    if importance is None:
        return [np.full(u.size, 1.0 / u.size) for u in space.units]
    imp = np.clip(np.asarray(importance, dtype=np.float64), 0, None)
    total = imp.sum() if imp.sum() > 0 else 1.0
    out, start = [], 0
    for unit in space.units:
        out.append(np.sort(imp[start:start + unit.size])[::-1] / total)
        start += unit.size
    return out


def blocks(arch: str, round_to: int) -> tuple[int, ...]:
    """Units one greedy step removes per group: the channel block (a multiple of it for wide groups, about 1/32
    of the group), so the counts stay aligned."""
    out = []
    for unit in unit_space(arch).units:
        r = round_to if unit.kind in ALIGNED_KINDS else 1
        out.append(r * max(1, (unit.size // 32) // r))
    return tuple(out)


class SkeletonCost:
    """The device's cost-model estimate (ms) of the skeleton at per-group counts (once per counts)."""

    def __init__(self, timer: SkeletonTimer, cache=None):
        self.timer, self.times = timer, {}
        profile = timer.profile
        try:
            self.constants: CostConstants = device_constants(profile, cache)
            self.constants_source = "fitted"
        except UsageError:  # no references (a host not calibrated): the hardware priors rank the groups
            self.constants, self.constants_source = prior_constants(profile.hardware), "hardware priors"

    def __call__(self, key: tuple[int, ...]) -> float:
        if key not in self.times:
            with tempfile.TemporaryDirectory() as tmp:
                path = self.timer.export(0.0, Path(tmp) / "skeleton.onnx", key)
                self.times[key] = estimate_ms(op_table(path), self.constants, self.timer.profile.hardware.channel_block)
        return self.times[key]


def _savings(c: list[int], floor: tuple[int, ...], step: tuple[int, ...], cost: Callable, scale: float) -> dict:
    here = cost(tuple(c))
    out = {}
    for g in range(len(c)):
        if c[g] - step[g] >= floor[g]:
            smaller = list(c)
            smaller[g] -= step[g]
            saved = (here - cost(tuple(smaller))) * scale
            if saved > 0:
                out[g] = saved
    return out


def greedy(c: list[int], floor: tuple[int, ...], step: tuple[int, ...], shares: list[np.ndarray], saves: dict,
           predicted: float, aim: float, names: tuple[str, ...]) -> tuple[float, list[Removal]]:
    """Remove blocks by largest saving per importance lost until ``predicted`` (linear in the savings) is at the aim.
    Changes ``c`` in place; returns the prediction and the removals."""
    removals = []
    while predicted > aim and saves:
        def lost(g: int) -> float:
            return float(shares[g][c[g] - step[g]:c[g]].sum())
        g = max(saves, key=lambda g: saves[g] / max(lost(g), EPS))
        loss = lost(g)
        c[g] -= step[g]
        predicted -= saves[g]
        removals.append(Removal(names[g], c[g], round(saves[g], 5), round(loss, 5)))
        if c[g] - step[g] < floor[g]:
            del saves[g]
    return predicted, removals


def allocate(timer: SkeletonTimer, cost: Callable[[tuple[int, ...]], float], importance: np.ndarray | None,
             ratio: float, aim_ms: float, start: tuple[int, ...] | None = None) -> Allocation:
    """The greedy per-group counts under ``aim_ms`` (see the module docstring).

    Args:
        timer: Times skeletons as the search does (its figure decides).
        cost: Cost-model estimate of a skeleton's counts (:class:`SkeletonCost`): ranks the removals.
        importance: Per unit (unit-space order), the base's importance on the target; None: equal.
        ratio: The uniform ratio the search chose (its counts met the aim: the fallback).
        aim_ms: The figure to meet.
        start: Counts to start from (a retry continues from its allocation); default the uniform counts
            :data:`SPAN` below ``ratio``.
    """
    arch, rt = timer.arch, timer.round_to
    space = unit_space(arch)
    names = tuple(u.name for u in space.units)
    total = sum(u.size for u in space.units)
    uniform = counts(arch, ratio, rt)
    start_ratio = max(0.0, round((round(ratio * GRID) - round(SPAN * GRID)) / GRID, 2))
    c = list(start if start is not None else counts(arch, start_ratio, rt))
    floor = tuple(min(f, k) for f, k in zip(counts(arch, HI, rt), c))
    step, shares = blocks(arch, rt), rank_shares(arch, importance)
    out = Allocation(tuple(c), names, start_ratio, aim_ms, float("nan"), sum(c) / total, sum(uniform) / total)
    for _ in range(ROUNDS):
        if sum(c) < sum(uniform):  # fewer units than the uniform counts, which met the aim: no point going on
            break
        timed = timer.at(tuple(c))
        out.checks.append({"keep_ratio": round(sum(c) / total, 5), "latency_ms": round(timed, 4),
                           "within": timed <= aim_ms})
        if timed <= aim_ms:
            out.counts, out.latency_ms, out.keep_ratio = tuple(c), timed, sum(c) / total
            return out
        scale = timed / cost(tuple(c))  # the cost model's units to the timer's
        saves = _savings(c, floor, step, cost, scale)
        if not saves:
            break
        _, removed = greedy(c, floor, step, shares, saves, timed, aim_ms, names)
        out.removals.extend(removed)
    out.counts, out.latency_ms, out.keep_ratio, out.fell_back = uniform, timer.at(uniform), sum(uniform) / total, True
    return out
