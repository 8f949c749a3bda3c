"""Prunable units of an architecture and where each unit lives in every parameter tensor.

Everything in MVP happens in the unpruned model's index space (docs/design.md, decision 1):

* CNN: a torch-pruning coupling group (residual-coupled channels form one group), named by the
  qualified name of its first out-channel-pruned module in model order (stable across copies and input sizes);
  kind ``channels``.
* ViT/DeiT: the attention heads of each block (``blocks.<i>.attn``, kind ``heads``, indices 0..H-1) and the MLP
  hidden nodes of each block (``blocks.<i>.mlp``, kind ``mlp``). The embedding width is not pruned.

:class:`UnitSpace` also records, for every parameter and buffer that a unit cuts through, which dimension it
cuts and how unit indices map to tensor indices (a head is ``head_dim`` rows in each of q, k and v). Masking,
shrinking and the expand/contract transforms all read that one map.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import edgemvp.models  # noqa: F401  (torchvision compatibility step before timm)
import torch
import torch.nn as nn
import torch_pruning as tp

from edgemvp.models.factory import create_model, get_arch
from edgemvp.spec import InputSpec

UnitKind = Literal["channels", "heads", "mlp"]
_TRACE_SPEC = InputSpec(3, 32, (0.0,) * 3, (1.0,) * 3)


@dataclass(frozen=True)
class Unit:
    """One prunable unit group.

    Attributes:
        name: Stable name (``layer1.0.conv1``, ``blocks.3.attn``, ``blocks.3.mlp``).
        kind: ``channels``, ``heads`` or ``mlp``.
        size: Number of units in the unpruned model.
        width: Tensor rows per unit (``head_dim`` for heads, else 1).
    """

    name: str
    kind: UnitKind
    size: int
    width: int = 1


@dataclass(frozen=True)
class Cut:
    """A unit cutting dimension ``dim`` of tensor ``key``; ``repeat`` blocks of ``size*width`` rows (qkv: 3)."""

    key: str
    dim: int
    unit: str
    repeat: int = 1


@dataclass(frozen=True)
class UnitSpace:
    """The units of an architecture and the cuts they make through its state dict."""

    arch: str
    units: tuple[Unit, ...]
    cuts: tuple[Cut, ...]

    @functools.cached_property
    def by_name(self) -> dict[str, Unit]:
        """Units by name."""
        return {u.name: u for u in self.units}

    @functools.cached_property
    def cuts_by_key(self) -> dict[str, tuple[Cut, ...]]:
        """Cuts per state-dict key."""
        out: dict[str, list[Cut]] = {}
        for cut in self.cuts:
            out.setdefault(cut.key, []).append(cut)
        return {k: tuple(v) for k, v in out.items()}

    def tensor_index(self, cut: Cut, kept: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Tensor indices along ``cut.dim`` that belong to the kept unit indices (sorted).

        Args:
            cut: Which tensor and dimension.
            kept: Unit positions.
            size: Units the tensor currently holds (default: the unpruned count; less in a shrunk model).
        """
        unit = self.by_name[cut.unit]
        # a unit spans `width` consecutive rows (a head: head_dim rows; a channel or MLP node: 1)
        rows = (kept[:, None] * unit.width + torch.arange(unit.width)).reshape(-1)  # (kept * width,)
        block = (unit.size if size is None else size) * unit.width  # rows of one repeat (q, k or v)
        return torch.cat([rows + r * block for r in range(cut.repeat)])  # (repeat * kept * width,)


def _is_out_fn(dg: tp.DependencyGraph, fn: object) -> bool:
    return bool(dg.is_out_channel_pruning_fn(fn))


def _cnn_space(arch: str, model: nn.Module) -> UnitSpace:
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(_TRACE_SPEC.shape(1)))
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    order = {m: i for i, m in enumerate(modules.values())}
    units, cuts = [], []
    for group in dg.get_all_groups(ignored_layers=[model.get_classifier()], root_module_types=[nn.Conv2d, nn.Linear]):
        members = [(dep.target.module, dep.handler, idxs) for dep, idxs in group if dep.target.module in order]
        name = names[min((m for m, fn, _ in members if _is_out_fn(dg, fn)), key=order.__getitem__)]
        size = len(group[0][1])
        units.append(Unit(name, "channels", size))
        for module, fn, idxs in members:  # graph-only nodes (add, relu) carry no tensors and are left out above
            if list(idxs) != list(range(size)):
                raise NotImplementedError(f"{arch}: {names[module]} maps channels of group {name} non-trivially")
            cuts.extend(_module_cuts(names[module], module, dim=0 if _is_out_fn(dg, fn) else 1, unit=name))
    return UnitSpace(arch, tuple(sorted(units, key=lambda u: order[modules[u.name]])), tuple(cuts))


def _module_cuts(prefix: str, module: nn.Module, dim: int, unit: str) -> list[Cut]:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        keys = ["weight", "bias", "running_mean", "running_var"]
    elif dim == 0:
        keys = ["weight"] + (["bias"] if getattr(module, "bias", None) is not None else [])
    else:
        keys = ["weight"]
    return [Cut(f"{prefix}.{k}", dim if k == "weight" else 0, unit) for k in keys]


def _vit_space(arch: str, model: nn.Module) -> UnitSpace:
    units, cuts = [], []
    for i, block in enumerate(model.blocks):
        attn, mlp = block.attn, block.mlp
        heads, mlp_name = f"blocks.{i}.attn", f"blocks.{i}.mlp"
        units.append(Unit(heads, "heads", attn.num_heads, attn.head_dim))
        units.append(Unit(mlp_name, "mlp", mlp.fc1.out_features))
        cuts += [Cut(f"{heads}.qkv.weight", 0, heads, repeat=3), Cut(f"{heads}.proj.weight", 1, heads)]
        if attn.qkv.bias is not None:
            cuts.append(Cut(f"{heads}.qkv.bias", 0, heads, repeat=3))
        cuts += [Cut(f"{mlp_name}.fc1.weight", 0, mlp_name), Cut(f"{mlp_name}.fc2.weight", 1, mlp_name)]
        if mlp.fc1.bias is not None:
            cuts.append(Cut(f"{mlp_name}.fc1.bias", 0, mlp_name))
    return UnitSpace(arch, tuple(units), tuple(cuts))


@functools.lru_cache(maxsize=None)
def unit_space(arch: str) -> UnitSpace:
    """The units of an architecture (independent of class count, channels and input size).

    Raises:
        UsageError: Unknown arch.
    """
    info = get_arch(arch)
    model = create_model(arch, 10, _TRACE_SPEC).eval()
    return _vit_space(arch, model) if info.family == "vit" else _cnn_space(arch, model)
