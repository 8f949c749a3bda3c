"""Compatibility step that lets torchvision (and so timm) import on a CPU-only torch.

Why: torchvision wheels built for CUDA ship a ``_C`` extension that cannot load next to a CPU build of torch
(the situation of a pinned CPU ``torch`` with torchvision from PyPI). torchvision tolerates the missing
extension, but its ``_meta_registrations`` module then registers fake kernels for ``torchvision::nms`` and
``torchvision::qnms`` and fails with ``operator torchvision::nms does not exist``, so ``import torchvision``
and ``import timm`` raise. Image classification uses none of torchvision's compiled operators, so defining
the two missing operator *schemas* (no kernels) is enough for the import to succeed; calling them still
raises a clear "no kernel" error.

The step is active only when the operators are missing after torchvision's own extension failed to load,
and it must run before the first import of torchvision or timm: every edgemvp module that imports either
imports :mod:`edgemvp.models` (or this module) first.
"""
from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# The schemas torchvision's C++ extension would have defined (torchvision/csrc/ops/nms.cpp).
_MISSING_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library: torch.library.Library | None = None  # kept alive: dropping it would undefine the schemas


def _op_exists(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _extension_loads() -> bool:
    """Try to load torchvision's compiled extension the way torchvision itself does."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    for folder in spec.submodule_search_locations:
        for lib in sorted(Path(folder).glob("_C.*")):
            if lib.suffix in (".so", ".pyd", ".dylib"):
                try:
                    torch.ops.load_library(str(lib))
                    return True
                except (OSError, RuntimeError):
                    return False
    return False


def ensure_torchvision_importable() -> bool:
    """Define the torchvision operator schemas that a CPU-only torch lacks, if and only if they are missing.

    Returns:
        True when the compatibility schemas were defined by this call (or an earlier one), False when
        torchvision's own operators are present or torchvision is not installed.
    """
    global _library
    if _library is not None:
        return True
    if "torchvision" in sys.modules or _op_exists("nms"):
        return False
    if importlib.util.find_spec("torchvision") is None or _extension_loads():
        return False
    _library = torch.library.Library("torchvision", "DEF")  # noqa: TOR901 - schema only, no kernels
    for schema in _MISSING_SCHEMAS:
        _library.define(schema)
    logger.debug("torchvision C++ ops unavailable; defined schemas for %s", ", ".join(_MISSING_SCHEMAS))
    return True


def compat_active() -> bool:
    """Whether the compatibility schemas are in use in this process."""
    return _library is not None
