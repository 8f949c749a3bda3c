"""Small models, ONNX files and profiles for the export / latency / devices tests."""
from __future__ import annotations

from pathlib import Path

import torch
import yaml

from edgemvp.deploy.devices import PACKAGED
from edgemvp.deploy.onnx import ExportConfig, export_raw
from edgemvp.masks import random_masks
from edgemvp.models.factory import create_model
from edgemvp.shrink import shrink
from edgemvp.spec import InputSpec

SMALL = InputSpec(1, 32, (0.5,), (0.25,))


def tiny_model(arch: str = "resnet18", ratio: float = 0.9, classes: int = 5, seed: int = 0) -> torch.nn.Module:
    """A 32 px grey model with non-trivial BatchNorm statistics, optionally pruned, in eval mode."""
    torch.manual_seed(seed)
    model = create_model(arch, classes, SMALL)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)  # timm zero-initialises the last norm of each block
    if ratio > 0:
        model = shrink(model, random_masks(arch, ratio, seed))
    return model.eval()


def tiny_onnx(path: Path, arch: str = "resnet18", ratio: float = 0.9) -> Path:
    """A quickly exported (legacy exporter) tiny model."""
    export_raw(tiny_model(arch, ratio), SMALL, path, ExportConfig(exporter="torchscript"))
    return path


def profile_data(packaged: str = "host", **changes: object) -> dict:
    """A packaged profile's YAML data with top-level fields replaced."""
    data = yaml.safe_load((PACKAGED / f"{packaged}.yaml").read_text())
    data.update(changes)
    return data


def write_profile(folder: Path, data: dict, file: str | None = None) -> Path:
    """Write profile data as YAML into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (file or f"{data['name']}.yaml")
    path.write_text(yaml.safe_dump(data))
    return path
