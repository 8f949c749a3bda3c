"""The budget gate: a model's latency figure (and file size) against a device profile's budget.

:func:`over_budget` says why a model is over (size first, then latency; unlike statistics are never compared),
:func:`enforce_budget` raises :class:`~edgemvp.errors.BudgetExceeded`, and :func:`check_model` is ``edgemvp check``:
validate an ONNX file for a device, then hold it to the budget.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from edgemvp.deploy.devices import DeviceProfile
from edgemvp.deploy.latency import LatencyReport, latency
from edgemvp.deploy.onnx import check_onnx, image_input_shape
from edgemvp.errors import BudgetExceeded, EdgeMVPError, UsageError


def over_budget(report: LatencyReport, profile: DeviceProfile, budget_ms: float | None = None,
                size_mb: float | None = None) -> str | None:
    """Why a model is over the device's budget (model size, then latency), or None when it is within.

    Args:
        report: Its latency figure.
        profile: The device.
        budget_ms: Overrides the profile's latency budget.
        size_mb: The model file's size, checked against the profile's size budget when given.
    """
    size = size_over_budget(profile, size_mb) if size_mb is not None else None
    budget = budget_ms if budget_ms is not None else profile.budget.latency_ms
    if not (math.isfinite(budget) and budget > 0):
        raise UsageError(f"latency budget must be a positive finite number of ms, got {budget}")
    if not math.isfinite(report.value_ms):
        raise EdgeMVPError(f"latency of {report.model} is not a finite number ({report.value_ms}); cannot gate it")
    if report.statistic != profile.budget.statistic:
        raise UsageError(f"latency is a {report.statistic} figure and the budget of '{profile.name}' is "
                         f"{profile.budget.statistic}: unlike statistics are not compared")
    return size or (f"over budget: {report.label()} > {budget:g} ms" if report.value_ms > budget else None)


def size_over_budget(profile: DeviceProfile, size_mb: float) -> str | None:
    """``over budget: model size ...`` when a file is larger than the profile allows, else None."""
    limit = profile.budget.model_size_mb
    if limit is not None and size_mb > limit:
        return f"over budget: model size {size_mb:.1f} MB > {limit:g} MB ({profile.name})"
    return None


def enforce_budget(report: LatencyReport, profile: DeviceProfile, budget_ms: float | None = None) -> float:
    """Compare a latency figure with the budget.

    Returns:
        The budget in ms.

    Raises:
        BudgetExceeded: ``over budget: 12.3 ms p90 (estimated, jetson-nano cost model) > 10.0 ms``.
    """
    reason = over_budget(report, profile, budget_ms)
    if reason:
        raise BudgetExceeded(reason)
    return budget_ms if budget_ms is not None else profile.budget.latency_ms


def check_model(path: str | os.PathLike[str], profile: DeviceProfile, budget_ms: float | None = None,
                force_measure: bool = False, cache: str | os.PathLike[str] | None = None, runs: int = 100) -> str:
    """Validate an ONNX file for a device and hold it to the device's budget (``edgemvp check``).

    Returns:
        ``within budget: <figure> <= <budget> ms`` with the figure's statistic and source.

    Raises:
        UsageError: Not ONNX, truncated, failing the checker, or an input shape the device does not take.
        BudgetExceeded: Over the latency (or model size) budget.
    """
    model = check_onnx(path)
    shape = image_input_shape(model, str(path))
    want = profile.export.input_size
    if want is not None and shape[2] != want:
        raise UsageError(f"{path}: wrong input shape {tuple(shape)}: device '{profile.name}' expects {want} px")
    too_big = size_over_budget(profile, Path(path).stat().st_size / 2 ** 20)  # before any latency work
    if too_big:
        raise BudgetExceeded(too_big)
    report = latency(path, profile, force_measure, cache, runs)
    budget = enforce_budget(report, profile, budget_ms)
    return f"within budget: {report.label()} <= {budget:g} ms"
