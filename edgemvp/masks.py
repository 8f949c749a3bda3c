"""Masks: which units of each group a pruned model keeps, in the unpruned model's index space.

JSON format (``masks.json``)::

    {"schema_version": 1, "arch": "resnet18", "base_sha256": "<hex or empty>",
     "kept": {"conv1": [0, 5, 17, ...], "layer1.0.conv1": [...], ...}}

Every unit group of the arch appears once with a sorted, duplicate-free, non-empty list of indices in
``[0, size)``. :func:`validate` refuses anything else with one clear line.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from edgemvp import checks
from edgemvp.errors import UsageError
from edgemvp.paths import atomic_write_bytes
from edgemvp.safeload import read_text
from edgemvp.units import Unit, unit_space

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Masks:
    """Kept unit indices per unit group (always validated against the arch's :class:`UnitSpace`)."""

    arch: str
    kept: Mapping[str, tuple[int, ...]]
    base_sha256: str = ""

    def __post_init__(self) -> None:
        validate(self.arch, self.kept)

    def index(self, unit: str) -> torch.Tensor:
        """Kept indices of a unit as an int64 tensor."""
        return torch.tensor(self.kept[unit], dtype=torch.long)

    def keep_ratio(self) -> float:
        """Fraction of all units kept."""
        space = unit_space(self.arch)
        return sum(len(self.kept[u.name]) for u in space.units) / sum(u.size for u in space.units)

    def to_json(self) -> str:
        """Serialise with stable ordering."""
        space = unit_space(self.arch)
        data = {"schema_version": SCHEMA_VERSION, "arch": self.arch, "base_sha256": self.base_sha256,
                "kept": {u.name: list(self.kept[u.name]) for u in space.units}}
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, source: str = "masks", arch: str | None = None) -> "Masks":
        """Parse and validate; ``arch`` (when given) must match the file's.

        Raises:
            UsageError: Malformed JSON, newer schema, wrong arch, or invalid indices.
        """
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise UsageError(f"{source}: not valid JSON ({exc.__class__.__name__})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("kept"), dict) or not isinstance(data.get("arch"), str):
            raise UsageError(f"{source}: not a masks file (needs 'arch' and 'kept')")
        checks.schema_version(data, SCHEMA_VERSION, source)
        if arch is not None and data["arch"] != arch:
            raise UsageError(f"{source}: masks are for arch '{data['arch']}', not '{arch}'")
        try:
            kept = {str(k): tuple(_ints(v, k)) for k, v in data["kept"].items()}
            return cls(str(data["arch"]), kept, str(data.get("base_sha256", "")))
        except UsageError as exc:
            raise UsageError(f"{source}: {exc}") from exc

    def save(self, path: Path) -> None:
        """Write ``masks.json`` atomically."""
        atomic_write_bytes(path, self.to_json().encode())

    @classmethod
    def load(cls, path: Path, arch: str | None = None) -> "Masks":
        """Read and validate a masks file."""
        if not Path(path).is_file():
            raise UsageError(f"masks file not found: {path}")
        return cls.from_json(read_text(path), str(path), arch)


def _ints(values: object, unit: str) -> list[int]:
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise UsageError(f"unit '{unit}': kept indices must be a list of integers")
    return values


def validate(arch: str, kept: Mapping[str, tuple[int, ...]]) -> None:
    """Check masks against an arch's units.

    Raises:
        UsageError: Unknown arch or unit, missing unit, empty unit, index out of range, duplicate, unsorted.
    """
    space = unit_space(arch)
    unknown_units = sorted(set(kept) - set(space.by_name))
    if unknown_units:
        raise UsageError(f"unknown unit '{unknown_units[0]}' for arch '{arch}'")
    for unit in space.units:
        if unit.name not in kept:
            raise UsageError(f"unit '{unit.name}' of arch '{arch}' is missing")
        idx = list(kept[unit.name])
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in idx):
            raise UsageError(f"unit '{unit.name}': kept indices must be integers")
        if not idx:
            raise UsageError(f"unit '{unit.name}' keeps nothing (at least one index is required)")
        if len(set(idx)) != len(idx):
            raise UsageError(f"unit '{unit.name}' lists an index twice")
        bad = [i for i in idx if not 0 <= i < unit.size]
        if bad:
            raise UsageError(f"unit '{unit.name}': index {bad[0]} out of range [0, {unit.size})")
        if idx != sorted(idx):
            raise UsageError(f"unit '{unit.name}': indices must be sorted")


def keep_count(n: int, ratio: float, round_to: int = 1) -> int:
    """Units kept of ``n`` when a fraction ``ratio`` is removed: max(1, round((1 - r) n)), optionally rounded to
    the nearest multiple of ``round_to`` (at least one multiple, at most ``n``; a group kept whole stays whole).

    Raises:
        UsageError: ``ratio`` outside [0, 1).
    """
    if not 0.0 <= ratio < 1.0:
        raise UsageError(f"ratio must be in [0, 1), got {ratio}")
    keep = max(1, round((1.0 - ratio) * n))
    if round_to > 1 and keep < n:
        keep = min(n, max(round_to, round_to * round(keep / round_to)))
    return keep


ALIGNED_KINDS = ("channels", "mlp")  # unit kinds whose kept count is a tensor width a kernel blocks over


def unit_keep(unit: Unit, ratio: float, round_to: int = 1) -> int:
    """Units a group keeps at ``ratio``: channel and MLP groups rounded to a multiple of ``round_to`` (a device's
    channel block, torch-pruning's ``round_to``), attention heads never (a head is ``head_dim`` rows already).
    """
    return keep_count(unit.size, ratio, round_to if unit.kind in ALIGNED_KINDS else 1)


def full_masks(arch: str, base_sha256: str = "") -> Masks:
    """Masks that keep every unit."""
    space = unit_space(arch)
    return Masks(arch, {u.name: tuple(range(u.size)) for u in space.units}, base_sha256)


def check_counts(arch: str, counts: Sequence[int]) -> tuple[int, ...]:
    """Per-group keep counts (unit-space order, a per-group allocation): one per group, each in 1..its size.

    Raises:
        UsageError: Another number of counts, or a count outside its group's range.
    """
    space = unit_space(arch)
    if len(counts) != len(space.units):
        raise UsageError(f"{arch} has {len(space.units)} unit groups; got {len(counts)} keep counts")
    out = []
    for unit, k in zip(space.units, counts):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= unit.size:
            raise UsageError(f"unit '{unit.name}' keeps 1..{unit.size} units, not {k!r}")
        out.append(int(k))
    return tuple(out)


def group_keep(arch: str, ratio: float, round_to: int = 1, counts: Sequence[int] | None = None) -> tuple[int, ...]:
    """Units each group keeps (unit-space order): ``counts`` when given (checked), else :func:`unit_keep` at the
    uniform ``ratio``."""
    if counts is not None:
        return check_counts(arch, counts)
    return tuple(unit_keep(u, ratio, round_to) for u in unit_space(arch).units)


def masks_from_scores(arch: str, scores: Mapping[str, torch.Tensor | np.ndarray], ratio: float,
                      round_to: int = 1, base_sha256: str = "", counts: Sequence[int] | None = None) -> Masks:
    """Keep the highest-scoring units of every group (ties broken by lower index).

    Args:
        arch: Architecture.
        scores: One score per unit, per unit group.
        ratio: Fraction removed in every group.
        round_to: Keep a multiple of this many channels (or MLP nodes) per group (:func:`unit_keep`).
        counts: Per group, the units to keep instead (a per-group allocation; ``ratio`` and ``round_to`` unused).
    """
    space = unit_space(arch)
    kept = {}
    for unit, k in zip(space.units, group_keep(arch, ratio, round_to, counts)):
        s = torch.as_tensor(np.asarray(scores[unit.name]), dtype=torch.float64).reshape(-1)
        if s.numel() != unit.size:
            raise UsageError(f"unit '{unit.name}': {s.numel()} scores for {unit.size} units")
        order = torch.argsort(-s, stable=True)[:k]
        kept[unit.name] = tuple(sorted(order.tolist()))
    return Masks(arch, kept, base_sha256)


def random_masks(arch: str, ratio: float, seed: int, round_to: int = 1, base_sha256: str = "",
                 counts: Sequence[int] | None = None) -> Masks:
    """Uniformly random masks at a ratio or per-group ``counts`` (the random-pruning baseline), reproducible from
    ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    space = unit_space(arch)
    scores = {u.name: torch.rand(u.size, generator=gen) for u in space.units}
    return masks_from_scores(arch, scores, ratio, round_to, base_sha256, counts)

