"""Physical shrinking with torch-pruning, the masked-dense reference, and index-space transforms.

* :func:`shrink` removes the units a :class:`~edgemvp.masks.Masks` does not keep, giving a dense smaller
  model (CNN: one torch-pruning group per unit group; ViT: heads and MLP nodes with torch-pruning's
  linear pruning functions, then ``num_heads``/``attn_dim`` fixed so timm's attention reshapes right).
* :func:`mask_dense` zeroes the same units in place instead: same outputs, original shapes.
* :func:`contract_state` / :func:`expand_state` move state dicts between the full index space and a mask's
  shrunk layout; ``expand_state`` also says which elements are present (what weight averaging needs).
* :func:`save_pruned` / :func:`load_pruned`: ``masks.json`` + ``weights.safetensors``; rebuilding is
  create(arch) → shrink(masks) → load_state_dict(strict=True).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch_pruning as tp

from edgemvp.errors import UsageError
from edgemvp.masks import Masks
from edgemvp.models.factory import create_model, get_arch, load_into
from edgemvp.models.weights import StateDict, load_weights, save_weights
from edgemvp.spec import InputSpec
from edgemvp.units import UnitSpace, unit_space

MASKS_FILE = "masks.json"
WEIGHTS_FILE = "weights.safetensors"


def _removed(masks: Masks, unit: str, size: int) -> list[int]:
    keep = set(masks.kept[unit])
    return [i for i in range(size) if i not in keep]


def _positions(masks: Masks, current: Masks | None, unit: str, size: int) -> tuple[list[int], int]:
    """Positions to remove in the model's current layout of ``unit``, and the current unit count."""
    if current is None:
        return _removed(masks, unit, size), size
    have = current.kept[unit]
    keep = set(masks.kept[unit])
    if not keep <= set(have):
        raise UsageError(f"unit '{unit}': the new masks keep units the model no longer has")
    return [p for p, i in enumerate(have) if i not in keep], len(have)


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def _shrink_cnn(model: nn.Module, masks: Masks, space: UnitSpace, current: Masks | None) -> None:
    todo = {u.name: _positions(masks, current, u.name, u.size)[0] for u in space.units}
    if not any(todo.values()):
        return
    conv = _first_conv(model)  # the trace runs where the model is (IFP shrinks in place on the training device)
    example = torch.zeros(1, conv.in_channels, 32, 32, device=conv.weight.device)
    was_training = model.training
    model.eval()  # tracing in train mode would move BatchNorm running statistics
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    model.train(was_training)
    modules = dict(model.named_modules())
    for unit in space.units:
        removed = todo[unit.name]
        if removed:
            root = modules[unit.name]
            dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, removed).prune()


def _shrink_vit(model: nn.Module, masks: Masks, space: UnitSpace, current: Masks | None) -> None:
    for i, block in enumerate(model.blocks):
        attn, mlp = block.attn, block.mlp
        heads = space.by_name[f"blocks.{i}.attn"]
        pos, have = _positions(masks, current, heads.name, heads.size)
        removed = torch.tensor(pos, dtype=torch.long)
        if len(removed):
            qkv_cut = space.cuts_by_key[f"{heads.name}.qkv.weight"][0]
            proj_cut = space.cuts_by_key[f"{heads.name}.proj.weight"][0]
            # qkv.weight (3 * H * d, D) -> (3 * H' * d, D): rows of the removed heads in each of q, k, v
            tp.prune_linear_out_channels(attn.qkv, space.tensor_index(qkv_cut, removed, have).tolist())
            # proj.weight (D, H * d) -> (D, H' * d): the columns those heads wrote
            tp.prune_linear_in_channels(attn.proj, space.tensor_index(proj_cut, removed, have).tolist())
            attn.num_heads = len(masks.kept[heads.name])
            attn.attn_dim = attn.num_heads * attn.head_dim  # timm reshapes the attention output to attn_dim
        mlp_unit = space.by_name[f"blocks.{i}.mlp"]
        removed_nodes, _ = _positions(masks, current, mlp_unit.name, mlp_unit.size)
        if removed_nodes:
            tp.prune_linear_out_channels(mlp.fc1, removed_nodes)  # fc1.weight (M, D) -> (M', D)
            tp.prune_linear_in_channels(mlp.fc2, removed_nodes)  # fc2.weight (D, M) -> (D, M')


def shrink(model: nn.Module, masks: Masks, current: Masks | None = None) -> nn.Module:
    """Physically remove the units the masks do not keep (in place).

    Args:
        model: A model of ``masks.arch`` (any class count, channels and input size): unpruned, or already
            shrunk to ``current``.
        masks: Validated masks.
        current: The masks ``model`` is already shrunk to (``None``: unpruned). ``masks`` must keep a subset
            of them; this is how pruners shrink progressively.

    Returns:
        The same module object, now dense and smaller.
    """
    space = unit_space(masks.arch)
    if get_arch(masks.arch).family == "vit":
        with torch.no_grad():
            _shrink_vit(model, masks, space, current)
    else:
        with torch.enable_grad():  # the dependency graph traces with autograd
            _shrink_cnn(model, masks, space, current)
    return model


@torch.no_grad()
def mask_dense(model: nn.Module, masks: Masks) -> nn.Module:
    """Zero every weight, bias and norm statistic of the removed units (in place, shapes unchanged).

    For CNNs the zeroed BatchNorm affine parameters make removed channels exactly zero after each norm, so the
    outputs equal those of :func:`shrink` (the reference the tests compare against).
    """
    space = unit_space(masks.arch)
    state = dict(model.state_dict(keep_vars=True))
    for cut in space.cuts:
        unit = space.by_name[cut.unit]
        removed = torch.tensor(_removed(masks, unit.name, unit.size), dtype=torch.long)
        if len(removed):
            tensor = state[cut.key].data
            tensor.index_fill_(cut.dim, space.tensor_index(cut, removed).to(tensor.device), 0.0)
    return model


def contract_state(full: StateDict, masks: Masks) -> StateDict:
    """Select a mask's kept elements from a full-index-space state dict (the shrunk layout)."""
    space = unit_space(masks.arch)
    out = {}
    for key, tensor in full.items():
        for cut in sorted(space.cuts_by_key.get(key, ()), key=lambda c: c.dim):
            tensor = tensor.index_select(cut.dim, space.tensor_index(cut, masks.index(cut.unit)).to(tensor.device))
        out[key] = tensor
    return out


def expand_state(shrunk: StateDict, masks: Masks, full_shapes: dict[str, torch.Size]
                 ) -> tuple[StateDict, dict[str, torch.Tensor]]:
    """Place a shrunk state dict into the full index space.

    Args:
        shrunk: State dict in the masks' shrunk layout.
        masks: The masks it was shrunk with.
        full_shapes: Shapes of the unpruned model's state dict.

    Returns:
        The full-shape state dict (zeros where absent) and, per key, a bool tensor marking present elements.
    """
    space = unit_space(masks.arch)
    full, present = {}, {}
    for key, tensor in shrunk.items():
        mark = torch.ones(tensor.shape, dtype=torch.bool, device=tensor.device)
        for cut in sorted(space.cuts_by_key.get(key, ()), key=lambda c: c.dim):
            idx = space.tensor_index(cut, masks.index(cut.unit)).to(tensor.device)
            shape = list(tensor.shape)
            shape[cut.dim] = full_shapes[key][cut.dim]
            tensor = torch.zeros(shape, dtype=tensor.dtype, device=tensor.device).index_copy_(cut.dim, idx, tensor)
            mark = torch.zeros(shape, dtype=torch.bool, device=tensor.device).index_copy_(cut.dim, idx, mark)
        if tuple(tensor.shape) != tuple(full_shapes[key]):
            raise UsageError(f"{key}: shape {tuple(tensor.shape)} does not expand to {tuple(full_shapes[key])}")
        full[key], present[key] = tensor, mark
    return full, present


MAX_NUM_CLASSES = 100_000  # ImageNet-21k has 21,843 classes


def build_pruned(arch: str, num_classes: int, spec: InputSpec, masks: Masks, initialise: bool = True) -> nn.Module:
    """create(arch) → shrink(masks): the skeleton that pruned weights load into.

    ``initialise=False`` skips the full model's random initialisation (about 0.1 s for resnet18 on a CPU): it is
    built on the meta device and given uninitialised memory, so every parameter and buffer must then be loaded
    (``load_into`` is strict). Models with non-persistent buffers, which a state dict would not fill, are
    initialised anyway.
    """
    if masks.arch != arch:
        raise UsageError(f"masks are for arch '{masks.arch}', not '{arch}'")
    if initialise:
        return shrink(create_model(arch, num_classes, spec), masks)
    with torch.device("meta"):
        model = create_model(arch, num_classes, spec)
    if set(dict(model.named_buffers())) - set(model.state_dict()):
        return build_pruned(arch, num_classes, spec, masks, initialise=True)
    return shrink(model.to_empty(device="cpu"), masks)


def rebuild_pruned(arch: str, num_classes: int, spec: InputSpec, masks: Masks, state: dict[str, torch.Tensor],
                   source: str) -> nn.Module:
    """The one rebuild of a stored pruned model: create(arch) → shrink(masks) → strict load, in eval mode.

    Raises:
        UsageError: Masks of another arch, or weights that do not fit (the message names ``source``).
    """
    model = build_pruned(arch, num_classes, spec, masks, initialise=False)
    load_into(model, state, source)
    return model.eval()


def save_pruned(model: nn.Module, masks: Masks, spec: InputSpec, num_classes: int, folder: Path) -> str:
    """Write ``masks.json`` and ``weights.safetensors`` (with arch, classes and input spec in its header).

    Returns:
        The sha256 of the weights file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    masks.save(folder / MASKS_FILE)
    return save_weights(model.state_dict(), folder / WEIGHTS_FILE, metadata=pruned_metadata(masks, spec, num_classes))


def pruned_metadata(masks: Masks, spec: InputSpec, num_classes: int) -> dict[str, str]:
    """The safetensors header fields that make pruned weights self-describing."""
    return {"arch": masks.arch, "num_classes": str(num_classes), "input_spec": json.dumps(spec.to_dict())}


def load_pruned(folder: str | os.PathLike[str], expected_sha256: str | None = None) -> tuple[nn.Module, Masks]:
    """Rebuild a pruned model from ``masks.json`` + ``weights.safetensors`` (strict, no pickle).

    Raises:
        UsageError: Missing or invalid files, or weights that do not fit the masks.
    """
    from safetensors import safe_open

    folder = Path(folder)
    weights = folder / WEIGHTS_FILE
    state = load_weights(weights, expected_sha256)
    with safe_open(str(weights), framework="pt") as fh:
        meta = fh.metadata() or {}
    try:
        arch, num_classes = meta["arch"], int(meta["num_classes"])
        spec = InputSpec.from_dict(json.loads(meta["input_spec"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise UsageError(f"{weights}: header lacks arch/num_classes/input_spec metadata") from exc
    if not 1 <= num_classes <= MAX_NUM_CLASSES:  # the classifier is built before the weights are checked against it
        raise UsageError(f"{weights}: num_classes {num_classes} is outside [1, {MAX_NUM_CLASSES}]")
    masks = Masks.load(folder / MASKS_FILE, arch=arch)
    return rebuild_pruned(arch, num_classes, spec, masks, state, str(weights)), masks


def params_and_macs(model: nn.Module, spec: InputSpec) -> tuple[int, int]:
    """Parameter count and multiply-accumulates of one forward pass at batch 1 (torch-pruning's counter)."""
    example = torch.zeros(spec.shape(1), device=next(model.parameters()).device)
    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(params), int(macs)
