"""Latency of an ONNX model on a device: *measured* with onnxruntime here, or *estimated* by the cost model.

Every figure is a :class:`LatencyReport` labelled ``measured`` or ``estimated``. A device measures for real when
edgemvp runs on it (its profile's ``detect`` block matches; ``host`` always does) or when asked (``measure=True``);
otherwise its cost model, fitted to the profile's reference latencies, estimates (see :mod:`edgemvp.deploy.costmodel`).
The budget gate is :mod:`edgemvp.deploy.budget`; measuring a device's suite to fit it, :mod:`edgemvp.deploy.calibrate`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from edgemvp.deploy.costmodel import (COST_MODEL_VERSION, CostConstants, FitResult, OpTable, estimate_ms, fit_constants,
                                      op_table, prior_constants)
from edgemvp.deploy.devices import DeviceProfile, ReferenceModel, Runtime
from edgemvp.deploy.onnx import ExportConfig, export_raw
from edgemvp.errors import UsageError
from edgemvp.masks import random_masks
from edgemvp.models.factory import create_model
from edgemvp.paths import atomic_write_bytes, cache_dir
from edgemvp.shrink import shrink
from edgemvp.spec import IMAGENET_MEAN, IMAGENET_STD, InputSpec

logger = logging.getLogger(__name__)

_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "all": "ORT_ENABLE_ALL"}


@dataclass(frozen=True)
class LatencyReport:
    """A latency figure and how it was obtained.

    Attributes:
        model: The ONNX file.
        device: Profile name.
        value_ms: The figure at ``statistic``.
        statistic: ``p50``, ``p90``, ``p99`` or ``mean``.
        source: ``measured`` (onnxruntime on this machine) or ``estimated`` (the device's cost model).
        provider: Execution provider that ran it (measured) or that the device profile names first (estimated).
        threads: Intra-op threads (0: onnxruntime's default).
        stats: Every statistic available (measured: p50/p90/p99/mean in ms).
        runs: Timed runs (0 for estimates).
        precision: The precision the figure is for (an estimate: the device's deployed precision, e.g.
            TensorRT FP16 on a Jetson; a measurement here: what onnxruntime ran).
        note: How an estimate was converted to ``statistic`` from its references' statistic, if it was.
    """

    model: str
    device: str
    value_ms: float
    statistic: str
    source: Literal["measured", "estimated"]
    provider: str
    threads: int
    stats: dict[str, float] = field(default_factory=dict)
    runs: int = 0
    precision: str = "fp32"
    note: str | None = None

    def label(self) -> str:
        """``12.3 ms p90 (estimated, jetson-nano cost model)`` or ``(measured, CPUExecutionProvider, 1 thread)``."""
        if self.source == "estimated":
            how = f"estimated at {self.precision}, {self.device} cost model"
        else:
            how = f"measured, {self.provider}, {self.threads or 'default'} thread{'s' if self.threads != 1 else ''}"
        return f"{self.value_ms:.3f} ms {self.statistic} ({how})"

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def make_session(path: str | os.PathLike[str], runtime: Runtime, required: bool = False):
    """An onnxruntime session with a profile's providers (those available here, in order), threads and level.

    Args:
        path: ONNX file.
        runtime: The profile's runtime block.
        required: Refuse when none of the profile's providers is available (a real on-device measurement).

    Raises:
        UsageError: No usable provider, or a file onnxruntime cannot load.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    chosen = [(p.name, dict(p.options)) for p in runtime.providers if p.name in available]
    if not chosen:
        if required:
            raise UsageError(f"none of the profile's execution providers ({', '.join(p.name for p in runtime.providers)}) "
                             f"is available here; available: {', '.join(available)}")
        chosen = [("CPUExecutionProvider", {})]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = runtime.threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[runtime.graph_optimization])
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=[n for n, _ in chosen],
                                    provider_options=[o for _, o in chosen])
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        raise UsageError(f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0][:200]})") from exc


def batch1_input(session, seed: int = 0) -> dict[str, np.ndarray]:
    """A seeded batch-1 float input for every graph input (symbolic dimensions set to 1)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def percentiles(times_ms: np.ndarray) -> dict[str, float]:
    """p50/p90/p99/mean of run times."""
    p50, p90, p99 = np.percentile(times_ms, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(np.mean(times_ms))}


MAX_RUNS = 100_000


def measure(path: str | os.PathLike[str], profile: DeviceProfile, runs: int = 100, warmup: int = 10,
            statistic: str | None = None, required_providers: bool = False, min_seconds: float = 0.0
            ) -> LatencyReport:
    """Measure batch-1 latency with onnxruntime here, with the profile's providers and threads.

    Args:
        path: ONNX file.
        profile: The device (its runtime block is used).
        runs: Timed runs after ``warmup`` untimed ones (at least; see ``min_seconds``).
        statistic: Reported statistic (default: the profile budget's).
        required_providers: Refuse when none of the profile's providers exists here.
        min_seconds: Keep timing until this much time has passed too (at most :data:`MAX_RUNS` runs): a
            sub-millisecond model's 100 runs fit in a few ms, where one burst of load from another process
            moves its p90 by a third.
    """
    session = make_session(path, profile.runtime, required_providers)
    feeds = batch1_input(session)
    for _ in range(warmup):
        session.run(None, feeds)
    times: list[float] = []
    begin = time.perf_counter()
    while len(times) < runs or (time.perf_counter() - begin < min_seconds and len(times) < MAX_RUNS):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1e3)
    runs = len(times)
    stats = percentiles(np.asarray(times))
    stat = statistic or profile.budget.statistic
    provider = session.get_providers()[0]
    precision = profile.export.precision if provider == profile.runtime.providers[0].name else "fp32"
    return LatencyReport(str(path), profile.name, stats[stat], stat, "measured", provider,
                         profile.runtime.threads, stats, runs, precision)


def _cost_dir(cache: str | os.PathLike[str] | None) -> Path:
    return cache_dir(cache) / "costmodel"


def reference_table(ref: ReferenceModel, cache: str | os.PathLike[str] | None = None) -> OpTable:
    """The op table of a reference model: built (random weights, seeded random masks), exported, cached."""
    path = _cost_dir(cache) / f"ops-v{COST_MODEL_VERSION}-{ref.key()}.json"
    if path.is_file():
        return OpTable.from_json(path.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = build_reference_onnx(ref, Path(tmp) / "ref.onnx")
        table = op_table(onnx_path)
    atomic_write_bytes(path, table.to_json().encode())
    return table


def build_reference_onnx(ref: ReferenceModel, out: Path) -> Path:
    """Export a reference model to ``out`` with the default exporter (no parity check: weights are random)."""
    spec = InputSpec(ref.channels, ref.size, IMAGENET_MEAN[:ref.channels], IMAGENET_STD[:ref.channels])
    torch.manual_seed(ref.seed)
    model = create_model(ref.arch, ref.classes, spec)
    if ref.ratio > 0:
        model = shrink(model, random_masks(ref.arch, ref.ratio, ref.seed))
    export_raw(model.eval(), spec, out, ExportConfig())
    return out


def _fit_key(profile: DeviceProfile) -> str:
    data = {"v": COST_MODEL_VERSION, "hw": asdict(profile.hardware),
            "refs": [[r.model.key(), r.latency_ms, r.statistic] for r in profile.calibration.references]}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _fit_references(profile: DeviceProfile) -> list:
    """The references the cost model is fitted to: those at the precision the device deploys."""
    return [r for r in profile.calibration.references if r.precision == profile.export.precision]


def fit_profile(profile: DeviceProfile, cache: str | os.PathLike[str] | None = None) -> FitResult:
    """Fit a device's constants to its profile's reference latencies at its deployed precision."""
    refs = _fit_references(profile)
    if not refs:
        raise UsageError(f"device '{profile.name}' has no {profile.export.precision} calibration references to fit "
                         f"its cost model; run 'edgemvp devices calibrate {profile.name}' on the device")
    tables = [reference_table(r.model, cache) for r in refs]
    hw = profile.hardware
    return fit_constants(tables, [r.latency_ms for r in refs], prior_constants(hw), hw.channel_block)


def device_constants(profile: DeviceProfile, cache: str | os.PathLike[str] | None = None) -> CostConstants:
    """The device's cost-model constants: from the profile, else fitted to its references (cached)."""
    if profile.calibration.constants:
        try:
            return CostConstants.from_dict(dict(profile.calibration.constants), versioned=True)
        except UsageError as err:  # constants of another cost model: refit from the references if there are any
            if not _fit_references(profile):
                raise UsageError(f"device '{profile.name}': {err}") from None
            logger.warning("device '%s': %s; refitting them from its %d references", profile.name, err,
                           len(profile.calibration.references))
    path = _cost_dir(cache) / f"fit-{profile.name}-{_fit_key(profile)}.json"
    if path.is_file():
        return CostConstants.from_dict(json.loads(path.read_text()))
    constants = fit_profile(profile, cache).constants
    atomic_write_bytes(path, json.dumps(constants.to_dict(), indent=1).encode())
    return constants


def estimate(path: str | os.PathLike[str], profile: DeviceProfile, cache: str | os.PathLike[str] | None = None,
             table: OpTable | None = None, statistic: str | None = None) -> LatencyReport:
    """Estimate batch-1 latency on a device from its cost model, at its deployed precision.

    The cost model gives the figure at the statistic most of the device's references report (public figures
    are mostly medians or means); it is converted to ``statistic`` (default: the budget's) with the spread the
    profile states (:meth:`edgemvp.devices.Calibration.convert`), and the report says so.

    Raises:
        UsageError: The profile states no spread for the two statistics.
    """
    table = table if table is not None else op_table(path)
    constants = device_constants(profile, cache)
    value = estimate_ms(table, constants, profile.hardware.channel_block)
    stats = [r.statistic for r in _fit_references(profile)] or [r.statistic for r in profile.calibration.references]
    native = max(set(stats or ["p50"]), key=(stats or ["p50"]).count)
    want = statistic or profile.budget.statistic
    cal = profile.calibration
    converted = cal.convert(value, native, want, profile.name)
    note = None if want == native else (f"{value:.4g} ms {native} x {cal.spread[want] / cal.spread[native]:.3g} "
                                        f"({want}/{native} spread, source {cal.spread_source})")
    return LatencyReport(str(path), profile.name, converted, want, "estimated", profile.runtime.providers[0].name,
                         profile.runtime.threads, {native: value, want: converted}, 0, profile.export.precision,
                         note)


def latency(path: str | os.PathLike[str], profile: DeviceProfile, force_measure: bool = False,
            cache: str | os.PathLike[str] | None = None, runs: int = 100, min_seconds: float = 0.0) -> LatencyReport:
    """Measured when on the device (detected, or ``force_measure``; ``runs`` and ``min_seconds`` as in
    :func:`measure`), else estimated."""
    if force_measure or profile.is_current():
        return measure(path, profile, runs=runs, required_providers=force_measure and not profile.is_current(),
                       min_seconds=min_seconds)
    return estimate(path, profile, cache)
