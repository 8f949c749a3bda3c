"""A latency budget that chooses the model's size: the least pruning whose model meets a device's budget.

For a uniform ratio ``r`` every unit group keeps :func:`edgemvp.masks.unit_keep` units (rounded to the device's
channel block), whichever units they are; so the pruned model's shapes, and with them its latency, depend on
``r`` alone, not on the vote. :func:`search_ratio` therefore sizes the model before any vote or training: it
bisects on ``r`` over a grid of 0.01 (``lo`` .. ``hi``), and each candidate is a *skeleton* (the arch with
random weights shrunk to those counts) exported with the fast legacy tracer (no parity check: the weights are
random) and timed as the final model will be: measured with onnxruntime when edgemvp runs on the device,
estimated by its cost model otherwise. Candidates whose counts coincide (channel blocks make neighbouring
ratios equal) are timed once.

The search aims below the budget by a margin (measured times are noisy; the shipped model is exported again,
with the dynamo exporter, and held to the budget itself), and keeps the smallest ratio that meets the aim.
When even ``hi`` misses it, :class:`~edgemvp.errors.BudgetExceeded` says the smallest latency reached.
"""
from __future__ import annotations

import copy
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from edgemvp.deploy.devices import DeviceProfile
from edgemvp.deploy.latency import LatencyReport, latency
from edgemvp.deploy.onnx import ExportConfig, export_raw
from edgemvp.errors import BudgetExceeded, UsageError
from edgemvp.masks import masks_from_scores, unit_keep
from edgemvp.models.factory import create_model
from edgemvp.shrink import shrink
from edgemvp.spec import InputSpec
from edgemvp.units import unit_space

GRID = 100  # ratios are searched in steps of 1 / GRID
LO, HI = 0.01, 0.99  # the search range of the ratio
MARGIN = {"measured": 0.10, "estimated": 0.02}  # aim this far below the budget, by how the figure is obtained
CANDIDATE_RUNS = 50  # timed runs per measured candidate, at least (the shipped model gets --runs)
CANDIDATE_SECONDS = 0.25  # and at least this long (the shipped model: 5 ms per --runs run, 0.5 s at 100)
CANDIDATE_READINGS = 1  # a measured candidate's time: the median of this many readings (3 measured no better)


@dataclass(frozen=True)
class Step:
    """One candidate the search timed."""

    ratio: float
    latency_ms: float
    keep_ratio: float  # share of the units kept
    within: bool  # at or under the aim
    seconds: float  # export + timing

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchResult:
    """What the search chose and how (``report.json``'s ``search``)."""

    ratio: float
    budget_ms: float
    aim_ms: float  # the budget less the margin
    margin: float
    statistic: str
    source: str  # measured or estimated
    round_to: int
    steps: list[Step] = field(default_factory=list)
    retries: list[dict] = field(default_factory=list)  # shipped models over the budget, and the ratio taken next

    @property
    def chosen(self) -> Step:
        """The step of the chosen ratio (its last timing)."""
        return next(s for s in reversed(self.steps) if s.ratio == self.ratio)

    def to_dict(self) -> dict:
        return {"ratio": self.ratio, "budget_ms": self.budget_ms, "aim_ms": round(self.aim_ms, 4),
                "margin": self.margin, "statistic": self.statistic, "source": self.source, "round_to": self.round_to,
                "steps": [s.to_dict() for s in self.steps], "retries": list(self.retries)}


NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def like_trained(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give a fresh model's normalisation layers seeded, trained-looking statistics and affine parameters.

    A fresh BatchNorm (mean 0, variance 1, scale 1, shift 0) folds into all-zero convolution biases, which the
    exporter shares as one initializer; onnxruntime then optimises the graph differently, and such a skeleton
    measured about 30% faster than the trained model of the same shapes (docs/results.md, issue 25). Distinct
    statistics make the skeleton's graph the shipped model's.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, NORMS):
                continue
            for name in ("weight", "running_var"):
                if getattr(module, name, None) is not None:
                    t = getattr(module, name)
                    t.copy_(0.5 + torch.rand(t.shape, generator=gen))
            for name in ("bias", "running_mean"):
                if getattr(module, name, None) is not None:
                    t = getattr(module, name)
                    t.copy_(0.1 * torch.randn(t.shape, generator=gen))
    return model


def counts(arch: str, ratio: float, round_to: int) -> tuple[int, ...]:
    """Units every group keeps at a uniform ratio (what the latency depends on)."""
    return tuple(unit_keep(u, ratio, round_to) for u in unit_space(arch).units)


class SkeletonTimer:
    """Times the pruned skeleton of an arch at a ratio on a device (see the module docstring), once per counts."""

    def __init__(self, arch: str, classes: int, spec: InputSpec, profile: DeviceProfile, round_to: int,
                 measure: bool = False, cache: str | os.PathLike[str] | None = None, runs: int = CANDIDATE_RUNS,
                 readings: int | None = None):
        self.arch, self.spec, self.profile, self.round_to = arch, spec, profile, round_to
        self.measure, self.cache, self.runs = measure, cache, runs
        self.readings = CANDIDATE_READINGS if readings is None else readings
        torch.manual_seed(0)
        self.model = like_trained(create_model(arch, classes, spec)).eval()
        self.space = unit_space(arch)
        self.times: dict[tuple[int, ...], float] = {}

    @property
    def source(self) -> str:
        return "measured" if self.measure or self.profile.is_current() else "estimated"

    def export(self, ratio: float, path: Path, counts: tuple[int, ...] | None = None) -> Path:
        """Write the skeleton at ``ratio`` (or per-group ``counts``) to ``path`` (legacy tracer, no parity: the
        weights are random)."""
        zeros = {u.name: np.zeros(u.size) for u in self.space.units}  # ties: the first units, any would do
        masks = masks_from_scores(self.arch, zeros, ratio, self.round_to, counts=counts)
        export_raw(shrink(copy.deepcopy(self.model), masks), self.spec, path,
                   ExportConfig(exporter="torchscript", fallback=False))
        return path

    def report(self, ratio: float, counts: tuple[int, ...] | None = None) -> LatencyReport:
        """Export the skeleton at ``ratio`` (or ``counts``) and time it: measured, the reading with the median
        figure of :attr:`readings` (default 1: on a noisy 2-core host, where one reading moved by 30%, the median
        of 3 chose no better and searched 20-35% longer; docs/results.md, issue 25); an estimate once."""
        with tempfile.TemporaryDirectory() as tmp:
            path = self.export(ratio, Path(tmp) / "candidate.onnx", counts)
            reports = [latency(path, self.profile, self.measure, self.cache, self.runs, CANDIDATE_SECONDS)]
            while reports[0].source == "measured" and len(reports) < self.readings:
                reports.append(latency(path, self.profile, self.measure, self.cache, self.runs, CANDIDATE_SECONDS))
            return sorted(reports, key=lambda r: r.value_ms)[(len(reports) - 1) // 2]

    def at(self, key: tuple[int, ...]) -> float:
        """The skeleton's time with these per-group counts (timed once per counts)."""
        if key not in self.times:
            self.times[key] = self.report(0.0, key).value_ms
        return self.times[key]

    def __call__(self, ratio: float) -> float:
        return self.at(counts(self.arch, ratio, self.round_to))

    def afresh(self, ratio: float) -> float:
        """A new timing of the skeleton at ``ratio`` (not the one kept per counts)."""
        return self.report(0.0, counts(self.arch, ratio, self.round_to)).value_ms


def _keep_share(arch: str, ratio: float, round_to: int) -> float:
    space = unit_space(arch)
    return sum(counts(arch, ratio, round_to)) / sum(u.size for u in space.units)


def probe(result: SearchResult, arch: str, time_ms: Callable[[float], float], ratio: float) -> Step:
    """Time the model at ``ratio`` and record the step."""
    start = time.perf_counter()
    ms = time_ms(ratio)
    step = Step(ratio, round(ms, 4), round(_keep_share(arch, ratio, result.round_to), 5), ms <= result.aim_ms,
                round(time.perf_counter() - start, 3))
    result.steps.append(step)
    return step


def search_ratio(time_ms: Callable[[float], float], arch: str, budget_ms: float, statistic: str, source: str,
                 round_to: int = 1, margin: float | None = None, lo: float = LO, hi: float = HI) -> SearchResult:
    """The smallest ratio on the grid whose model's latency is at most ``budget_ms * (1 - margin)``.

    Args:
        time_ms: Latency (ms, at ``statistic``) of the model pruned at a ratio (:class:`SkeletonTimer`).
        arch: Architecture (for the kept share each step records).
        budget_ms: The budget.
        statistic: Its statistic (recorded).
        source: ``measured`` or ``estimated`` (sets the default margin).
        round_to: The channel block the counts are rounded to (recorded).
        margin: Aim this fraction below the budget; default :data:`MARGIN` for the source.
        lo, hi: The ratios searched (inclusive).

    Raises:
        BudgetExceeded: Even ``hi`` is over the aim: one line with the smallest latency reached.
    """
    margin = MARGIN[source] if margin is None else margin
    if not 0 <= margin < 1:
        raise UsageError(f"budget margin must be in [0, 1), got {margin}")
    if not 0 < lo <= hi < 1:
        raise UsageError(f"search range must be inside (0, 1), got {lo}..{hi}")
    aim = budget_ms * (1 - margin)
    result = SearchResult(hi, budget_ms, aim, margin, statistic, source, round_to)

    def ok(i: int) -> bool:
        return probe(result, arch, time_ms, i / GRID).within

    low, high = round(lo * GRID), round(hi * GRID)
    if not ok(high):
        best = min(s.latency_ms for s in result.steps)
        raise BudgetExceeded(f"no model meets the budget: the smallest latency reached is {best:.3f} ms {statistic} "
                             f"({source}) at ratio {hi:g}, over the {budget_ms:g} ms budget"
                             + (f" less its {100 * margin:g}% margin ({aim:.3f} ms)" if margin else ""))
    if ok(low):
        result.ratio = low / GRID
        return result
    while high - low > 1:  # ok(high) and not ok(low)
        mid = (low + high) // 2
        if ok(mid):
            high = mid
        else:
            low = mid
    result.ratio = high / GRID
    return result


def next_ratio(result: SearchResult, arch: str, shipped_ms: float, time_ms: Callable[[float], float],
               retime: Callable[[float], float] | None = None) -> float | None:
    """After the shipped model came out over the budget: the least pruning above the chosen ratio, with other counts,
    whose candidate time is below the chosen one's by at least the overshoot; else None. An exponential search
    (1, 2, 4, ... grid steps up, the last one at :data:`HI`) brackets it and a bisection finds it, so a noisy miss
    costs the fewest units. Each retry is recorded in ``result.retries``.

    ``retime`` times the chosen ratio's candidate afresh, next to the shipped model's measurement, and that reading
    scales the overshoot. The search's own reading of it is biased low on a noisy device: it is the least pruning
    whose reading came in under the aim, so a lucky reading is what chose it (measured: a candidate read 0.078 ms
    where its shipped model read 0.147 and other searches read the same candidate at 0.09-0.14; the retry then
    asked for 0.057 ms, which only ratio 0.98 reached; docs/results.md, issue 25)."""
    chosen = result.chosen.latency_ms
    entry: dict = {"ratio": result.ratio, "shipped_ms": round(shipped_ms, 4)}
    if retime is not None:
        chosen = retime(result.ratio)
        entry["chosen_retimed_ms"] = round(chosen, 4)
    need = min(chosen, chosen * result.aim_ms / shipped_ms)  # the candidate time that would have shipped at the aim
    here = counts(arch, result.ratio, result.round_to)

    def fits(i: int) -> bool:
        if counts(arch, i / GRID, result.round_to) == here:
            return False
        return probe(result, arch, time_ms, i / GRID).latency_ms <= need

    low, top, step, found = round(result.ratio * GRID), round(HI * GRID), 1, None  # low: known not to fit
    while found is None and low < top:
        i = min(low + step, top)
        if fits(i):
            found = i
        else:
            low, step = i, step * 2
    while found is not None and found - low > 1:  # fits(found), not fits(low)
        mid = (low + found) // 2
        if fits(mid):
            found = mid
        else:
            low = mid
    ratio = None if found is None else found / GRID
    result.retries.append({**entry, "next": ratio})
    if ratio is not None:
        result.ratio = ratio
    return ratio
