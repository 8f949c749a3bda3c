"""A zoo entry's manifest: what was pruned for which task, how, and how well it did.

The manifest is canonical JSON (sorted keys, no spaces); the entry id is its sha256, and it names the weights
by their sha256, so an entry is immutable and content-addressed (docs/design.md, decision 3). Nothing in it depends
on the machine or the clock: the same build with the same seeds gives the same id.
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgemvp import checks
from edgemvp.data.tasks import TaskSpec
from edgemvp.errors import EdgeMVPError, UsageError
from edgemvp.masks import Masks
from edgemvp.models.factory import create_model
from edgemvp.models.weights import parse_safetensors, sha256_bytes
from edgemvp.paths import UnsafeFile, read_regular
from edgemvp.shrink import rebuild_pruned
from edgemvp.spec import InputSpec

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"  # an entry folder: manifest.json + weights.safetensors
WEIGHTS = "weights.safetensors"


class CorruptEntry(EdgeMVPError):
    """A stored entry whose files do not match their sha256 (bit flips, truncation, tampering)."""



@dataclass(frozen=True)
class BaseRef:
    """The pre-trained base model an entry was pruned from."""

    arch: str
    dataset: str
    weights_sha256: str
    input_spec: InputSpec

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "dataset": self.dataset, "weights_sha256": self.weights_sha256,
                "input_spec": self.input_spec.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BaseRef":
        return cls(str(data["arch"]), str(data["dataset"]), str(data["weights_sha256"]),
                   InputSpec.from_dict(data["input_spec"]))


@dataclass(frozen=True)
class EntryManifest:
    """Everything about one zoo entry except its weights (which it names by sha256).

    Attributes:
        task: The task's dataset and classes (label order = head row order).
        base: The base model.
        masks: Kept units in the unpruned index space.
        pruner: Pruner name (``ifp-activation``, ``ahnp``, ``random``, ``mvp`` ...).
        config: The pruner's hyper-parameters.
        metrics: ``test_acc`` (%), ``train_loss``, ``params``, ``macs``, ``keep_ratio``.
        weights_sha256: sha256 of ``weights.safetensors`` (shrunk layout).
        job_key: Identifies the build job (base, task, pruner, config, seed); a resumed build skips it.
        parents: Ids of the entries this one was derived from (MVP neighbours), if any.
        versions: Tool versions.
    """

    task: TaskSpec
    base: BaseRef
    masks: Masks
    pruner: str
    config: dict[str, Any]
    metrics: dict[str, float]
    weights_sha256: str
    job_key: str
    parents: tuple[str, ...] = ()
    versions: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def arch(self) -> str:
        return self.base.arch

    def to_bytes(self) -> bytes:
        """Canonical JSON bytes (the entry id is their sha256)."""
        data = {
            "schema_version": self.schema_version,
            "task": {"name": self.task.name, "dataset": self.task.dataset, "classes": list(self.task.classes),
                     "synsets": list(self.task.synsets)},
            "base": self.base.to_dict(),
            "masks": json.loads(self.masks.to_json())["kept"],
            "pruner": self.pruner, "config": self.config, "metrics": self.metrics,
            "weights_sha256": self.weights_sha256, "job_key": self.job_key,
            "parents": list(self.parents), "versions": self.versions,
        }
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    def entry_id(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, raw: bytes, source: str) -> "EntryManifest":
        """Parse a manifest, refusing newer schemas and malformed content.

        Raises:
            UsageError: Not a manifest, or one written by a newer edgemvp.
        """
        try:
            data = json.loads(raw)
            version = checks.schema_version(data, SCHEMA_VERSION, source, default=None)
            base = BaseRef.from_dict(data["base"])
            task = data["task"]
            spec = TaskSpec(str(task["name"]), str(task["dataset"]), tuple(task["classes"]),
                            tuple(task.get("synsets") or ()))
            masks = Masks(base.arch, {k: tuple(v) for k, v in data["masks"].items()}, base.weights_sha256)
            return cls(spec, base, masks, str(data["pruner"]), dict(data["config"]), dict(data["metrics"]),
                       str(data["weights_sha256"]), str(data["job_key"]), tuple(data.get("parents", ())),
                       dict(data.get("versions", {})), version)
        except UsageError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise UsageError(f"{source}: not a valid zoo manifest ({exc.__class__.__name__}: {exc})") from exc


@dataclass(frozen=True)
class ZooEntry:
    """A stored entry: its id, manifest and folder."""

    id: str
    manifest: EntryManifest
    folder: Path

    def read_weights(self) -> bytes:
        """The weights' bytes, read with the bound the manifest sets and checked against its sha256.

        Raises:
            CorruptEntry: Missing, not a regular file, larger than the bound, or not matching the sha256.
        """
        path = self.folder / WEIGHTS
        try:
            raw = read_regular(path, weights_limit(self.manifest))
        except UnsafeFile as exc:
            raise CorruptEntry(f"zoo entry {self.id[:12]}: {WEIGHTS} refused ({exc})") from exc
        except OSError as exc:
            raise CorruptEntry(f"zoo entry {self.id[:12]}: {WEIGHTS} is missing ({exc.strerror})") from exc
        if sha256_bytes(raw) != self.manifest.weights_sha256:
            raise CorruptEntry(f"zoo entry {self.id[:12]}: {WEIGHTS} refused (corrupt: sha256 does not match the "
                               "manifest)")
        return raw

    def load_model(self) -> nn.Module:
        """Rebuild the pruned model: create(arch) → shrink(masks) → load_state_dict(strict), sha256 verified."""
        m = self.manifest
        try:
            state, _ = parse_safetensors(self.read_weights(), f"zoo entry {self.id[:12]}: {WEIGHTS}")
        except CorruptEntry:
            raise
        except UsageError as exc:
            raise CorruptEntry(str(exc)) from exc
        return rebuild_pruned(m.arch, len(m.task.classes), m.base.input_spec, m.masks, state,
                              f"zoo entry {self.id[:12]}")


@functools.lru_cache(maxsize=64)
def _dense_elements(arch: str, num_classes: int, spec: InputSpec) -> int:
    """Elements of every tensor of the unpruned model's state dict (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = create_model(arch, num_classes, spec)
    return sum(t.numel() for t in model.state_dict().values())


def weights_limit(manifest: EntryManifest) -> int:
    """The most bytes an entry's weights file may take: the dense model's tensors at 8 bytes per element (a
    pruned model is smaller, and weights are float32) plus 1 MiB for the safetensors header."""
    return 8 * _dense_elements(manifest.arch, len(manifest.task.classes), manifest.base.input_spec) + (1 << 20)
