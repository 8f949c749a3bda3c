"""``edgemvp devices calibrate``: measure a device's calibration suite on the device itself, fit its cost model,
and write a calibrated copy of its profile.

The measured references are labelled :data:`MEASURED_SOURCE`; the profile is written to ``<cache>/profiles``
(:func:`edgemvp.deploy.devices.user_profile_dir`), where it overrides the packaged one by name.
"""
from __future__ import annotations

import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import yaml

from edgemvp.deploy.costmodel import FitResult, fit_constants, op_table, prior_constants
from edgemvp.deploy.devices import DeviceProfile, Reference, Source, profile_file, user_profile_dir
from edgemvp.deploy.latency import build_reference_onnx, measure
from edgemvp.errors import UsageError
from edgemvp.paths import atomic_write_bytes
from edgemvp.safeload import load_yaml

logger = logging.getLogger(__name__)

MEASURED_SOURCE = "measured-here"


def calibrate(profile: DeviceProfile, cache: str | os.PathLike[str] | None = None, runs: int = 50,
              force: bool = False) -> tuple[Path, FitResult]:
    """Measure the profile's calibration suite on this machine, fit the constants, write a user profile.

    Args:
        profile: The device; edgemvp must run on it (or ``force``).
        cache: Cache folder; the profile is written to ``<cache>/profiles/<name>.yaml``.
        runs: Timed runs per suite model (the median is kept).
        force: Measure even when the profile's ``detect`` block does not match this machine.

    Returns:
        The written profile file and the fit (its errors are on the suite itself).
    """
    if not (force or profile.is_current()):
        raise UsageError(f"device '{profile.name}' is not detected on this machine; calibrate measures on the device "
                         "itself (use --force to measure here anyway)")
    if not profile.calibration.suite:
        raise UsageError(f"{profile.path}: field 'calibration.suite' lists no models to measure")
    refs, tables, ratios = [], [], []
    for model in profile.calibration.suite:
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = build_reference_onnx(model, Path(tmp) / "ref.onnx")
            report = measure(onnx_path, profile, runs=runs, statistic="p50")
            tables.append(op_table(onnx_path))
        refs.append(Reference(model, report.value_ms, "p50", MEASURED_SOURCE, report.precision))
        ratios.append({k: v / report.value_ms for k, v in report.stats.items()})
        logger.info("%s: %.3f ms p50", model.key(), report.value_ms)
    spread = {k: round(float(np.median([r[k] for r in ratios])), 4) for k in ratios[0]}
    hw = profile.hardware
    fit = fit_constants(tables, [r.latency_ms for r in refs], prior_constants(hw), hw.channel_block)
    source = Source(MEASURED_SOURCE, f"measured by 'edgemvp devices calibrate {profile.name}' on {platform.node()} "
                    f"({platform.machine()}, {hw.cores} cores) on {time.strftime('%Y-%m-%d')}",
                    note=f"median of {runs} runs per model, batch 1, {profile.runtime.threads or 'default'} threads")
    path = write_calibrated(profile, refs, fit.constants.to_record(), source, user_profile_dir(cache), spread)
    return path, fit


def write_calibrated(profile: DeviceProfile, references: list[Reference], constants: dict[str, float],
                     source: Source, folder: Path, spread: Mapping[str, float] | None = None) -> Path:
    """Write a copy of ``profile`` with measured references, fitted constants (and the measured spread of the
    latency statistics) to ``folder``.

    The copy keeps every other field of the original file, so it overrides the packaged profile by name.

    Returns:
        The written file.
    """
    if profile.path is None:
        raise UsageError(f"profile '{profile.name}' has no file to copy")
    data = load_yaml(profile.path, f"device profile {profile.path}")
    cal = data.setdefault("calibration", {}) or {}
    cal["sources"] = {**(cal.get("sources") or {}),
                      source.key: {k: v for k, v in (("title", source.title), ("note", source.note)) if v}}
    cal["references"] = [{"model": {"arch": r.model.arch, "size": r.model.size, "channels": r.model.channels,
                                    "classes": r.model.classes, "ratio": r.model.ratio, "seed": r.model.seed},
                          "latency_ms": round(r.latency_ms, 5), "statistic": r.statistic, "source": r.source,
                          "precision": r.precision} for r in references]
    cal["constants"] = {k: float(v) for k, v in constants.items()}
    if spread:
        cal["spread"] = {**{k: float(v) for k, v in spread.items()}, "source": source.key}
    data["calibration"] = cal
    out = profile_file(folder, profile.name)
    atomic_write_bytes(out, yaml.safe_dump(data, sort_keys=False).encode())
    return out
