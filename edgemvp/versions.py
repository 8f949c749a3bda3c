"""Versions of edgemvp and the libraries that shape its results, recorded in every manifest."""
from __future__ import annotations

from importlib import metadata

_PACKAGES = ("edgemvp", "torch", "timm", "torch-pruning", "onnx", "onnxruntime")


def tool_versions() -> dict[str, str]:
    """Installed versions of the packages that affect models and exports (``"missing"`` if absent)."""
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out
