"""From a trained model on disk to deployable ONNX files with a report (``edgemvp export``).

:func:`load_source` accepts a pruned run folder (``masks.json`` + ``weights.safetensors``), its weights file, or
a base-model folder (``manifest.json`` + ``model.safetensors``). :func:`deploy` exports it with parity
(:mod:`edgemvp.deploy.onnx`), optionally quantizes it to int8, measures or estimates latency on the target device
(:mod:`edgemvp.deploy.latency`), and writes ``model.onnx`` (+ ``model.int8.onnx``) and ``export.json``.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch.nn as nn

from edgemvp.data.tasks import TaskSpec
from edgemvp.deploy.devices import DeviceProfile
from edgemvp.errors import UsageError
from edgemvp.deploy.onnx import ExportConfig, check_onnx, export_model, quantize_model, run_onnx
from edgemvp.models.factory import get_arch
from edgemvp.paths import atomic_write_bytes
from edgemvp.safeload import load_json, read_text
from edgemvp.spec import InputSpec

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
    from edgemvp.models.base import MANIFEST, WEIGHTS, BaseManifest
    from edgemvp.shrink import MASKS_FILE, WEIGHTS_FILE, load_pruned

    path = Path(path)
    folder = path.parent if path.is_file() else path
    if (folder / MASKS_FILE).is_file() and (folder / WEIGHTS_FILE).is_file():
        from safetensors import safe_open

        model, masks = load_pruned(folder)  # validates the header; the spec is read from it below
        with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as fh:
            spec = InputSpec.from_dict(json.loads(fh.metadata()["input_spec"]))
        report = folder / "report.json"
        data = load_json(report, f"run report {report}") if report.exists() else {}
        if not isinstance(data, dict):
            raise UsageError(f"run report {report}: not a JSON object (not an edgemvp report)")
        return ExportSource(model, masks.arch, spec, folder, None, _report_task(data))
    if (folder / MANIFEST).is_file() and (folder / WEIGHTS).is_file():
        from edgemvp.models.factory import create_model, load_into
        from edgemvp.models.weights import load_weights

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
    from edgemvp.data.tasks import NAMED_TASKS, task_name

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
    import torch

    from edgemvp.data.datasets import get_dataset
    from edgemvp.data.loader import eval_batches
    from edgemvp.data.tasks import task_view

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


def deploy(src: ExportSource, profile: DeviceProfile, out_dir: Path, int8: bool = False, task: TaskSpec | None = None,
           cfg: ExportConfig = ExportConfig(), cache: str | os.PathLike[str] | None = None,
           data_root: str | os.PathLike[str] | None = None, runs: int = 100, force_measure: bool = False) -> dict:
    """Export (with parity), optionally quantize, and report latency (and accuracy when the task is known).

    Returns:
        The report, also written to ``<out_dir>/export.json``.
    """
    from edgemvp.deploy.latency import latency, make_session
    from edgemvp.versions import tool_versions

    if profile.export.input_size not in (None, src.spec.size):
        raise UsageError(f"wrong input shape: the model takes {src.spec.size} px, device '{profile.name}' expects "
                         f"{profile.export.input_size} px")
    result = export_model(src.model, src.arch, src.spec, out_dir / "model.onnx", replace(cfg, opset=profile.export.opset))
    report: dict = {"source": str(src.folder), "arch": src.arch, "device": profile.name, "export": result.to_dict(),
                    "task": task.name if task else None, "versions": tool_versions()}
    report["latency"] = {"fp32": latency(result.path, profile, force_measure, cache, runs).to_dict()}
    data = task_data(src, task, data_root, profile.quantization.calibration_samples) if task else None
    if data is not None:
        report["accuracy"] = {"fp32": task_accuracy(make_session(result.path, profile.runtime), data)[0]}
    if int8:
        report.update(_int8(src, profile, Path(result.path), out_dir / "model.int8.onnx", data, cache, runs, report,
                            force_measure))
    atomic_write_bytes(out_dir / REPORT, json.dumps(report, indent=1).encode())
    return report


def _int8(src: ExportSource, profile: DeviceProfile, fp32: Path, out: Path, data: TaskData | None,
          cache: str | os.PathLike[str] | None, runs: int, report: dict, force_measure: bool = False) -> dict:
    from edgemvp.deploy.latency import latency, make_session
    from edgemvp.models.weights import sha256_file

    preset = profile.quantization
    mode = preset.cnn if get_arch(src.arch).family == "cnn" else preset.vit
    if mode == "none":
        raise UsageError(f"device '{profile.name}' has int8 quantization off for {src.arch}")
    quantize_model(fp32, out, mode, preset.per_channel, data.calibration if data else None)
    check_onnx(out)
    extra = {"int8": {"path": str(out), "mode": mode, "file_bytes": out.stat().st_size, "sha256": sha256_file(out)}}
    report["latency"]["int8"] = latency(out, profile, force_measure, cache, runs).to_dict()
    if data is not None:
        acc8, pred8 = task_accuracy(make_session(out, profile.runtime), data)
        _, pred32 = task_accuracy(make_session(fp32, profile.runtime), data)
        report["accuracy"]["int8"] = acc8
        report["accuracy"]["top1_agreement"] = 100.0 * float((pred8 == pred32).mean())
    return extra
