"""From a trained model on disk to deployable ONNX files with a report (``edgemvp export``).

:func:`load_source` accepts a pruned run folder (``masks.json`` + ``weights.safetensors``), its weights file, or
a base-model folder (``manifest.json`` + ``model.safetensors``). :func:`deploy` exports it with parity
(:mod:`edgemvp.deploy.onnx`), optionally quantizes it to int8 (:mod:`edgemvp.deploy.quantize`), measures or
estimates latency on the target device (:mod:`edgemvp.deploy.latency`), and writes ``model.onnx``
(+ ``model.int8.onnx``) and ``export.json``; it returns the same report typed, as an :class:`ExportReport`.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn
from safetensors import safe_open

from edgemvp.data.datasets import get_dataset
from edgemvp.data.loader import eval_batches
from edgemvp.data.tasks import NAMED_TASKS, TaskSpec, task_name, task_view
from edgemvp.deploy.devices import DeviceProfile
from edgemvp.deploy.latency import LatencyReport, latency, make_session
from edgemvp.deploy.onnx import ExportConfig, ExportResult, check_onnx, export_model, run_onnx
from edgemvp.deploy.quantize import quantize_model
from edgemvp.errors import UsageError
from edgemvp.models.base import MANIFEST, WEIGHTS, BaseManifest
from edgemvp.models.factory import create_model, get_arch, load_into
from edgemvp.models.weights import load_weights, sha256_file
from edgemvp.paths import atomic_write_bytes
from edgemvp.safeload import load_json, read_text
from edgemvp.shrink import MASKS_FILE, WEIGHTS_FILE, load_pruned
from edgemvp.spec import InputSpec
from edgemvp.versions import tool_versions

logger = logging.getLogger(__name__)

REPORT = "export.json"


@dataclass(frozen=True)
class ExportSource:
    """A model to export and what is known about its classes.

    Attributes:
        model: The PyTorch model (eval mode).
        arch: Its architecture.
        spec: Its input spec.
        folder: Where it was read from (default output folder).
        classes: Class names of its outputs, when known (base models; run reports).
        task: The task of the folder's report, when there is one.
    """

    model: nn.Module
    arch: str
    spec: InputSpec
    folder: Path
    classes: tuple[str, ...] | None = None
    task: TaskSpec | None = None


def load_source(path: str | os.PathLike[str]) -> ExportSource:
    """Load a run folder, a weights file in one, or a base-model folder.

    Raises:
        UsageError: Anything else, or invalid files.
    """
    path = Path(path)
    folder = path.parent if path.is_file() else path
    if (folder / MASKS_FILE).is_file() and (folder / WEIGHTS_FILE).is_file():
        model, masks = load_pruned(folder)  # validates the header; the spec is read from it below
        with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as fh:
            spec = InputSpec.from_dict(json.loads(fh.metadata()["input_spec"]))
        report = folder / "report.json"
        data = load_json(report, f"run report {report}") if report.exists() else {}
        if not isinstance(data, dict):
            raise UsageError(f"run report {report}: not a JSON object (not an edgemvp report)")
        return ExportSource(model, masks.arch, spec, folder, None, _report_task(data))
    if (folder / MANIFEST).is_file() and (folder / WEIGHTS).is_file():
        manifest = BaseManifest.from_json(read_text(folder / MANIFEST), str(folder / MANIFEST))
        model = create_model(manifest.arch, len(manifest.classes), manifest.input_spec)
        load_into(model, load_weights(folder / WEIGHTS, manifest.weights_sha256), str(folder / WEIGHTS))
        return ExportSource(model.eval(), manifest.arch, manifest.input_spec, folder, manifest.classes)
    if not path.exists():
        raise UsageError(f"not found: {path}")
    raise UsageError(f"{path}: not a run folder (masks.json + weights.safetensors) or a base-model folder "
                     "(manifest.json + model.safetensors)")


def _report_task(data: dict) -> TaskSpec | None:
    """The task a run report names: its dataset and classes (any task, named or ad hoc), else a named task."""
    name, dataset, classes = data.get("task"), data.get("dataset"), data.get("classes")
    if (isinstance(dataset, str) and isinstance(classes, list) and classes
            and all(isinstance(c, str) for c in classes)):
        return TaskSpec(name if isinstance(name, str) else task_name(dataset, tuple(classes)), dataset, tuple(classes))
    return NAMED_TASKS.get(name) if isinstance(name, str) else None


@dataclass(frozen=True)
class TaskData:
    """Images of a task for int8 calibration and accuracy.

    Attributes:
        calibration: Training inputs ``(N, C, S, S)`` for static quantization.
        test_x: Test inputs.
        test_y: Test labels in the task's class order.
        columns: The model output of each task class (a base model has all the dataset's classes).
    """

    calibration: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    columns: tuple[int, ...]


def task_data(src: ExportSource, task: TaskSpec, data_root: str | os.PathLike[str] | None = None,
              calibration_samples: int = 256) -> TaskData:
    """Load a task's calibration and test images at the model's input spec.

    Raises:
        UsageError: The model's outputs do not cover the task's classes, or the data is missing.
    """
    if src.classes is None:
        columns = tuple(range(len(task.classes)))
    else:
        missing = [c for c in task.classes if c not in src.classes]
        if missing:
            raise UsageError(f"the model has no output for class '{missing[0]}' of task '{task.name}'")
        columns = tuple(src.classes.index(c) for c in task.classes)
    ds = get_dataset(task.dataset, data_root)
    per_class = -(-calibration_samples // len(task.classes))
    train = task_view(task, ds, "train", per_class=per_class, seed=0)
    calib = torch.cat([x for x, _ in eval_batches(train, src.spec)])[:calibration_samples]
    xs, ys = zip(*eval_batches(task_view(task, ds, "test"), src.spec))
    return TaskData(calib.numpy(), torch.cat(xs).numpy(), torch.cat(ys).numpy(), columns)


def task_accuracy(session, data: TaskData) -> tuple[float, np.ndarray]:
    """Top-1 accuracy (%) over the task's classes and the predictions."""
    pred = run_onnx(session, data.test_x)[:, list(data.columns)].argmax(1)
    return 100.0 * float((pred == data.test_y).mean()), pred


@dataclass(frozen=True)
class Int8File:
    """The int8 copy of an export: its file, quantization mode, size and digest."""

    path: str
    mode: str
    file_bytes: int
    sha256: str


@dataclass(frozen=True)
class ExportReport:
    """What :func:`deploy` made, as written to ``export.json`` (:meth:`to_dict` is that file's content).

    Attributes:
        source: The folder the model was read from.
        arch: Its architecture.
        device: The device profile's name.
        export: The fp32 export: file, exporter, opset, input shape, parity, size, digest.
        task: The task's name, when one was given.
        versions: Installed versions of the packages that affect models and exports.
        latency: A figure per precision: ``fp32``, and ``int8`` when an int8 copy was made.
        accuracy: With a task: top-1 accuracy (%) per precision and, with int8, the int8 model's top-1 agreement
            with fp32 (``top1_agreement``, %); None without a task.
        int8: The int8 copy, when one was made.
    """

    source: str
    arch: str
    device: str
    export: ExportResult
    task: str | None
    versions: Mapping[str, str]
    latency: Mapping[str, LatencyReport]
    accuracy: Mapping[str, float] | None = None
    int8: Int8File | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the content of ``export.json`` (``accuracy`` and ``int8`` only when there are any)."""
        data: dict[str, Any] = {"source": self.source, "arch": self.arch, "device": self.device,
                                "export": self.export.to_dict(), "task": self.task, "versions": dict(self.versions),
                                "latency": {k: v.to_dict() for k, v in self.latency.items()}}
        if self.accuracy is not None:
            data["accuracy"] = dict(self.accuracy)
        if self.int8 is not None:
            data["int8"] = asdict(self.int8)
        return data

    def to_json(self) -> bytes:
        """The bytes of ``export.json``."""
        return json.dumps(self.to_dict(), indent=1).encode()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExportReport:
        """Inverse of :meth:`to_dict`."""
        return cls(data["source"], data["arch"], data["device"], ExportResult.from_dict(data["export"]), data["task"],
                   dict(data["versions"]), {k: LatencyReport(**v) for k, v in data["latency"].items()},
                   dict(data["accuracy"]) if "accuracy" in data else None,
                   Int8File(**data["int8"]) if "int8" in data else None)

    def relocated(self, old: str | os.PathLike[str], new: str | os.PathLike[str]) -> ExportReport:
        """The same report naming ``new`` wherever it names ``old`` (files exported in a staging folder).

        The text of ``export.json`` is rewritten, so every path under ``old`` is renamed, whichever field holds it.
        """
        return ExportReport.from_dict(json.loads(json.dumps(self.to_dict(), indent=1).replace(str(old), str(new))))

    def summary_lines(self) -> list[str]:
        """What ``edgemvp export`` prints: the export and its parity, then latency (and accuracy) per precision."""
        exp, parity, accuracy = self.export, self.export.parity, self.accuracy or {}
        lines = [f"{exp.path}: {exp.exporter} opset {exp.opset}, {exp.file_bytes / 2**20:.2f} MB, parity "
                 f"max abs diff {parity.max_abs_diff:.2g}, top-1 {100 * parity.top1_agreement:.1f}%"]
        for precision, lat in self.latency.items():
            acc = accuracy.get(precision)
            lines.append(f"  {precision:5s} {lat.value_ms:.3f} ms {lat.statistic} ({lat.source})"
                         + (f", accuracy {acc:.2f}%" if acc is not None else ""))
        if "top1_agreement" in accuracy:
            lines.append(f"  int8 top-1 agreement with fp32: {accuracy['top1_agreement']:.2f}%")
        return lines


MEASURE_SECONDS_PER_RUN = 0.005  # a measured figure of an exported model: --runs runs, and at least 5 ms per run


def deploy(src: ExportSource, profile: DeviceProfile, out_dir: Path, int8: bool = False, task: TaskSpec | None = None,
           cfg: ExportConfig = ExportConfig(), cache: str | os.PathLike[str] | None = None,
           data_root: str | os.PathLike[str] | None = None, runs: int = 100,
           force_measure: bool = False) -> ExportReport:
    """Export (with parity), optionally quantize, and report latency (and accuracy when the task is known).

    Returns:
        The report, also written to ``<out_dir>/export.json``.
    """
    if profile.export.input_size not in (None, src.spec.size):
        raise UsageError(f"wrong input shape: the model takes {src.spec.size} px, device '{profile.name}' expects "
                         f"{profile.export.input_size} px")
    result = export_model(src.model, src.arch, src.spec, out_dir / "model.onnx", replace(cfg, opset=profile.export.opset))
    versions = tool_versions()
    lat = {"fp32": latency(result.path, profile, force_measure, cache, runs, MEASURE_SECONDS_PER_RUN * runs)}
    data = task_data(src, task, data_root, profile.quantization.calibration_samples) if task else None
    accuracy = None
    if data is not None:
        accuracy = {"fp32": task_accuracy(make_session(result.path, profile.runtime), data)[0]}
    int8_file = None
    if int8:
        int8_file, lat["int8"], int8_accuracy = _int8(src, profile, Path(result.path), out_dir / "model.int8.onnx",
                                                      data, cache, runs, force_measure)
        if accuracy is not None:
            accuracy.update(int8_accuracy)
    report = ExportReport(str(src.folder), src.arch, profile.name, result, task.name if task else None, versions, lat,
                          accuracy, int8_file)
    atomic_write_bytes(out_dir / REPORT, report.to_json())
    return report


def _int8(src: ExportSource, profile: DeviceProfile, fp32: Path, out: Path, data: TaskData | None,
          cache: str | os.PathLike[str] | None, runs: int, force_measure: bool = False
          ) -> tuple[Int8File, LatencyReport, dict[str, float]]:
    """Quantize and check the int8 copy; its file, latency and (with task data) accuracy and agreement with fp32."""
    preset = profile.quantization
    mode = preset.cnn if get_arch(src.arch).family == "cnn" else preset.vit
    if mode == "none":
        raise UsageError(f"device '{profile.name}' has int8 quantization off for {src.arch}")
    quantize_model(fp32, out, mode, preset.per_channel, data.calibration if data else None)
    check_onnx(out)
    file = Int8File(str(out), mode, out.stat().st_size, sha256_file(out))
    lat = latency(out, profile, force_measure, cache, runs, MEASURE_SECONDS_PER_RUN * runs)
    accuracy: dict[str, float] = {}
    if data is not None:
        acc8, pred8 = task_accuracy(make_session(out, profile.runtime), data)
        _, pred32 = task_accuracy(make_session(fp32, profile.runtime), data)
        accuracy = {"int8": acc8, "top1_agreement": 100.0 * float((pred8 == pred32).mean())}
    return file, lat, accuracy
