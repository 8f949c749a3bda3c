"""Pre-trained base models kept in the cache: ``<cache>/bases/<arch>--<dataset>/``.

Each folder holds ``model.safetensors`` and ``manifest.json`` (arch, dataset, input spec, classes, test
accuracy, weights sha256, training settings, tool versions). The manifest is written last, so a folder
without one is an unfinished pre-training and is ignored.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgemvp import checks
from edgemvp.data.datasets import canonical_name
from edgemvp.data.tasks import TaskSpec
from edgemvp.data.wordnet import wnid
from edgemvp.errors import EdgeMVPError, UsageError
from edgemvp.models.factory import create_model, get_arch, load_into
from edgemvp.models.weights import load_weights, save_weights, sha256_bytes
from edgemvp.paths import atomic_write_bytes, cache_dir
from edgemvp.safeload import read_text
from edgemvp.spec import InputSpec

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class BaseManifest:
    """What identifies and describes a pre-trained base model.

    ``dataset`` names the base: the dataset it was pre-trained on here, or the label space of a stock
    checkpoint (``imagenet-1k``, ``imagenet-1k-<size>px``); ``classes`` are that label space's classes.
    """

    @property
    def pretrained(self) -> bool:
        """A stock checkpoint (its own label space, not trained here)."""
        return bool(self.train.get("pretrained"))

    arch: str
    dataset: str
    input_spec: InputSpec
    classes: tuple[str, ...]
    test_acc: float | None  # None: a pre-trained checkpoint cached as it is (edgemvp.models.pretrained)
    weights_sha256: str
    train: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        """Serialise (stable key order)."""
        data = asdict(self)
        data["input_spec"] = self.input_spec.to_dict()
        data["classes"] = list(self.classes)
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "manifest") -> "BaseManifest":
        """Parse, refusing unknown schema versions and missing fields."""
        try:
            data = json.loads(text)
            checks.schema_version(data, SCHEMA_VERSION, source)
            data["input_spec"] = InputSpec.from_dict(data["input_spec"])
            data["classes"] = tuple(data["classes"])
            manifest = cls(**data)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise UsageError(f"{source}: invalid base-model manifest ({exc.__class__.__name__}: "
                             f"{str(exc)[:200]})") from exc
        manifest.check(source)
        return manifest

    def check(self, source: str) -> None:
        """Refuse fields of the wrong type (a manifest is read back from the cache and sent over the network).

        Raises:
            UsageError: Naming the first bad field.
        """
        texts = {"arch": self.arch, "dataset": self.dataset, "weights_sha256": self.weights_sha256}
        bad = [k for k, v in texts.items() if not isinstance(v, str)]
        if not all(isinstance(c, str) for c in self.classes) or len(self.classes) < 2:
            bad.append("classes")
        if self.test_acc is not None and not checks.in_range(self.test_acc, 0, 100):
            bad.append("test_acc")
        if not isinstance(self.train, dict) or not isinstance(self.versions, dict):
            bad.append("train" if not isinstance(self.train, dict) else "versions")
        if bad:
            raise UsageError(f"{source}: invalid base-model manifest (field '{bad[0]}')")
        try:
            get_arch(self.arch)
        except UsageError as exc:
            raise UsageError(f"{source}: {exc}") from exc


def base_folder(arch: str, dataset: str, cache: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder of the base model for (arch, dataset) (any spelling of an image folder's path).

    A name too long for a folder name (a deep image-folder path) is cut and completed by its hash.
    """
    name = canonical_name(dataset)
    slug = re.sub(r"[^0-9A-Za-z._-]+", "_", name)
    if len(arch) + len(slug) > 200:
        slug = f"{slug[:120]}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"
    return cache_dir(cache) / "bases" / f"{arch}--{slug}"


def save_base(model: nn.Module, manifest: BaseManifest, folder: Path) -> BaseManifest:
    """Write weights, then the manifest with their sha256 (the manifest marks a finished base).

    Raises:
        EdgeMVPError: Weights holding NaN or infinity (a diverged training run is never cached as a base).
    """
    bad = next((k for k, v in model.state_dict().items()
                if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise EdgeMVPError(f"refusing to cache the {manifest.arch} base of '{manifest.dataset}': tensor '{bad}' holds "
                           "NaN or infinity (training diverged; lower --lr)")
    folder.mkdir(parents=True, exist_ok=True)
    sha = save_weights(model.state_dict(), folder / WEIGHTS)
    final = BaseManifest(**{**asdict(manifest), "input_spec": manifest.input_spec,
                            "classes": manifest.classes, "weights_sha256": sha})
    atomic_write_bytes(folder / MANIFEST, final.to_json().encode())
    return final


def find_base(arch: str, dataset: str, cache: str | os.PathLike[str] | None = None) -> BaseManifest | None:
    """The manifest of a cached base model, or None when it has not been pre-trained."""
    get_arch(arch)
    path = base_folder(arch, dataset, cache) / MANIFEST
    if not path.is_file():
        return None
    return BaseManifest.from_json(read_text(path), str(path))


def base_files(arch: str, dataset: str, cache: str | os.PathLike[str] | None = None) -> tuple[bytes, bytes]:
    """A cached base's manifest and weights as bytes, their sha256 checked (what a Ray task carries)."""
    manifest = find_base(arch, dataset, cache)
    if manifest is None:
        raise UsageError(f"no cached {arch} base of '{dataset}'")
    folder = base_folder(arch, manifest.dataset, cache)
    weights = (folder / WEIGHTS).read_bytes()
    if sha256_bytes(weights) != manifest.weights_sha256:
        raise UsageError(f"{folder / WEIGHTS}: sha256 mismatch with its manifest")
    return manifest.to_json().encode(), weights


def install_base(manifest_json: bytes, weights: bytes, cache: str | os.PathLike[str]) -> BaseManifest:
    """Store a base received as bytes into ``cache`` (a worker's private cache), its sha256 checked first.

    Raises:
        UsageError: The weights do not match the manifest's sha256 (nothing is written).
    """
    manifest = BaseManifest.from_json(manifest_json.decode(), "the base sent by the driver")
    if sha256_bytes(weights) != manifest.weights_sha256:
        raise UsageError("the base sent by the driver does not match its sha256")
    existing = find_base(manifest.arch, manifest.dataset, cache)
    if existing is not None and existing.weights_sha256 == manifest.weights_sha256:
        return existing
    folder = base_folder(manifest.arch, manifest.dataset, cache)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / WEIGHTS, weights)
    atomic_write_bytes(folder / MANIFEST, manifest_json)  # the manifest last: it marks a finished base
    return manifest


def cached_bases(cache: str | os.PathLike[str] | None = None) -> list[BaseManifest]:
    """Every finished base model in the cache (folder order)."""
    paths = sorted((cache_dir(cache) / "bases").glob(f"*/{MANIFEST}"))
    return [BaseManifest.from_json(read_text(p), str(p)) for p in paths]


def load_base(arch: str, dataset: str, cache: str | os.PathLike[str] | None = None
              ) -> tuple[nn.Module, BaseManifest]:
    """Rebuild a cached base model: create(arch) → load_state_dict(strict=True), sha256 verified.

    Raises:
        UsageError: When it has not been pre-trained, or its files are corrupt.
    """
    manifest = find_base(arch, dataset, cache)
    if manifest is None:
        raise UsageError(f"no pre-trained {arch} base for dataset '{dataset}' in the cache; run "
                         f"'edgemvp pretrain --arch {arch} --dataset {dataset}'")
    folder = base_folder(arch, dataset, cache)
    model = create_model(arch, len(manifest.classes), manifest.input_spec)
    load_into(model, load_weights(folder / WEIGHTS, manifest.weights_sha256), str(folder / WEIGHTS))
    return model.eval(), manifest


def base_rows(base: BaseManifest, task: TaskSpec, cache: str | os.PathLike[str] | None = None) -> tuple[str, ...]:
    """Per target class, the base class whose classifier row it starts from (docs/design.md, decision 5).

    A base pre-trained here knows classes of its own dataset by name. A stock checkpoint (ImageNet-1k, whose
    classes are WordNet ids) knows a target class whose synset is one of its classes: a Pets breed, a sandal,
    a jersey. A name the base does not have gets default initialisation in :func:`task_model`.
    """
    if not base.pretrained:
        return task.classes if base.dataset == task.dataset else ("",) * len(task.classes)  # "": no base row
    known = set(base.classes)
    rows = []
    for cls, syn in zip(task.classes, task.synsets or (None,) * len(task.classes)):
        wid = wnid(syn, cache) if syn else None
        rows.append(wid if wid in known else cls)
    return tuple(rows)


def task_model(base: nn.Module, base_classes: tuple[str, ...], classes: tuple[str, ...],
               seed: int = 0) -> nn.Module:
    """A copy of ``base`` whose classifier predicts ``classes`` (docs/design.md, decision 5, single-parent case).

    A row for a class the base knows is copied from the base's row for that class (by identity, not position);
    other rows keep timm's default initialisation, seeded.
    """
    model = copy.deepcopy(base)
    old = model.get_classifier()
    torch.manual_seed(seed)
    model.reset_classifier(len(classes))
    new = model.get_classifier()
    _seeded_linear_init(new, seed)
    index = {c: i for i, c in enumerate(base_classes)}
    with torch.no_grad():
        for row, name in enumerate(classes):
            if name in index:
                new.weight[row] = old.weight[index[name]]
                if new.bias is not None and old.bias is not None:
                    new.bias[row] = old.bias[index[name]]
    return model


def _seeded_linear_init(layer: nn.Module, seed: int) -> None:
    """Redo ``nn.Linear``'s default initialisation from a private generator seeded with ``seed``.

    The values equal those ``torch.manual_seed(seed)`` then ``reset_classifier`` draw in a single thread; drawn
    from the process-wide generator they would depend on other threads (the zoo server votes in several).
    """
    if not isinstance(layer, nn.Linear):
        return
    gen = torch.Generator().manual_seed(seed)  # a CPU generator: drawn on the CPU, copied to the layer's device
    with torch.no_grad():
        weight = torch.empty(layer.weight.shape, dtype=layer.weight.dtype)
        layer.weight.copy_(nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=gen))
        if layer.bias is not None:
            fan_in = layer.weight.shape[1]
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            bias = torch.empty(layer.bias.shape, dtype=layer.bias.dtype)
            layer.bias.copy_(nn.init.uniform_(bias, -bound, bound, generator=gen))
