"""Units, masks and exact physical shrinking (small inputs; the 224 px cases are marked slow)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from edgemvp.errors import UsageError
from edgemvp.masks import Masks, full_masks, keep_count, masks_from_scores, random_masks
from edgemvp.models.factory import create_model
from edgemvp.shrink import (contract_state, expand_state, load_pruned, mask_dense, params_and_macs, save_pruned,
                            shrink)
from edgemvp.spec import InputSpec
from edgemvp.units import unit_space
from tests.helpers import ALL_ARCHS, ONE_PER_FAMILY

SMALL = InputSpec(1, 32, (0.5,), (0.25,))
BIG = InputSpec(3, 224, (0.5,) * 3, (0.25,) * 3)
ARCH_LIST = ALL_ARCHS


def _randomised(arch: str, spec: InputSpec, seed: int = 0) -> torch.nn.Module:
    """A model with non-trivial BatchNorm statistics and affine parameters, in eval mode."""
    torch.manual_seed(seed)
    model = create_model(arch, 7, spec)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _check_exact(arch: str, spec: InputSpec, ratio: float, tmp_path: Path) -> None:
    model = _randomised(arch, spec)
    masks = random_masks(arch, ratio, seed=1)
    dense = mask_dense(copy.deepcopy(model), masks)
    small = shrink(copy.deepcopy(model), masks).eval()
    x = torch.randn(2, *spec.shape()[1:])
    with torch.no_grad():
        diff = (dense(x) - small(x)).abs().max().item()
    assert diff <= 1e-4, f"{arch} r={ratio}: max abs diff {diff}"
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    small.train()
    small(x).sum().backward()
    assert all(p.grad is not None for p in small.parameters() if p.requires_grad)
    small.eval()
    path = tmp_path / f"{arch}.onnx"
    torch.onnx.export(small, (x,), str(path), dynamo=False, opset_version=18, input_names=["x"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        assert abs(out - small(x).numpy()).max() <= 1e-4


@pytest.mark.parametrize("ratio", [0.5, 0.9])
@pytest.mark.parametrize("arch", ARCH_LIST)
def test_shrunk_equals_masked_dense_small(arch: str, ratio: float, tmp_path: Path) -> None:
    _check_exact(arch, SMALL, ratio, tmp_path)


@pytest.mark.parametrize("ratio", [0.5, 0.9])
@pytest.mark.parametrize("arch", ARCH_LIST)
def test_shrunk_equals_masked_dense_224(arch: str, ratio: float, tmp_path: Path) -> None:
    _check_exact(arch, BIG, ratio, tmp_path)


@pytest.mark.parametrize("arch", ARCH_LIST)
def test_keep_all_gives_original_outputs(arch: str) -> None:
    model = _randomised(arch, SMALL)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(shrink(copy.deepcopy(model), full_masks(arch)).eval()(x), ref)
        assert torch.equal(mask_dense(copy.deepcopy(model), full_masks(arch))(x), ref)


def test_unit_names_stable_across_copies_and_sizes() -> None:
    space = unit_space("resnet18")
    names = [u.name for u in space.units]
    assert names[0] == "conv1" and "layer4.0.conv2" in names and len(names) == 12
    assert {u.size for u in space.units} == {64, 128, 256, 512}
    unit_space.cache_clear()
    assert [u.name for u in unit_space("resnet18").units] == names
    vit = unit_space("deit_small")
    assert [(u.name, u.size) for u in vit.units[:2]] == [("blocks.0.attn", 6), ("blocks.0.mlp", 1536)]
    # a shrink traced on a 224 px RGB model accepts the same names
    shrink(create_model("resnet18", 3, BIG), random_masks("resnet18", 0.5, seed=0))


def test_expand_contract_round_trip_and_presence() -> None:
    model = _randomised("resnet18", SMALL)
    masks = random_masks("resnet18", 0.7, seed=3)
    full = model.state_dict()
    shrunk_model = shrink(copy.deepcopy(model), masks)
    shrunk = contract_state(full, masks)
    assert all(torch.equal(shrunk[k], v) for k, v in shrunk_model.state_dict().items())
    expanded, present = expand_state(shrunk, masks, {k: v.shape for k, v in full.items()})
    again = contract_state(expanded, masks)
    assert all(torch.equal(again[k], shrunk[k]) for k in shrunk)
    for key in full:
        assert torch.equal(expanded[key][present[key]], full[key][present[key]])
        assert int(expanded[key][~present[key]].abs().sum()) == 0
    w = present["layer1.0.conv2.weight"]  # out: the stem group, in: layer1.0.conv1's group
    out_kept, in_kept = len(masks.kept["conv1"]), len(masks.kept["layer1.0.conv1"])
    assert int(w.sum()) == out_kept * in_kept * 9


def test_vit_head_index_space() -> None:
    space = unit_space("vit_tiny")
    masks = masks_from_scores("vit_tiny", {u.name: torch.arange(u.size, dtype=torch.float) for u in space.units}, 0.5)
    assert masks.kept["blocks.0.attn"] == (1, 2)  # keep = round(0.5 * 3) = 2 highest scores
    model = create_model("vit_tiny", 4, SMALL)
    full = {k: v.shape for k, v in model.state_dict().items()}
    shrunk = shrink(copy.deepcopy(model), masks)
    assert shrunk.blocks[0].attn.qkv.out_features == 3 * 2 * 64 and shrunk.blocks[0].attn.attn_dim == 128
    _, present = expand_state(shrunk.state_dict(), masks, full)
    rows = present["blocks.0.attn.qkv.weight"][:, 0]
    assert rows.view(3, 3, 64)[:, 0].sum() == 0 and bool(rows.view(3, 3, 64)[:, 1:].all())


def test_rebuild_from_files_is_identical(tmp_path: Path) -> None:
    for arch in ONE_PER_FAMILY:
        masks = random_masks(arch, 0.9, seed=2)
        model = shrink(_randomised(arch, SMALL), masks).eval()
        save_pruned(model, masks, SMALL, 7, tmp_path / arch)
        again, masks2 = load_pruned(tmp_path / arch)
        assert masks2 == masks
        x = torch.randn(3, 1, 32, 32)
        with torch.no_grad():
            assert torch.equal(model(x), again(x))


def test_pickle_in_place_of_weights_is_refused(tmp_path: Path) -> None:
    masks = random_masks("resnet18", 0.9, seed=2)
    save_pruned(shrink(create_model("resnet18", 3, SMALL), masks), masks, SMALL, 3, tmp_path)
    torch.save({"a": torch.zeros(1)}, tmp_path / "weights.safetensors")
    with pytest.raises(UsageError, match="corrupt safetensors"):
        load_pruned(tmp_path)


def test_keep_count_rule() -> None:
    assert keep_count(64, 0.9) == 6 and keep_count(3, 0.9) == 1 and keep_count(512, 0.9) == 51
    assert keep_count(64, 0.9, round_to=8) == 8 and keep_count(64, 0.0) == 64
    with pytest.raises(UsageError, match="ratio"):
        keep_count(64, 1.0)


def _masks_json(**change: object) -> str:
    data = json.loads(random_masks("resnet18", 0.5, seed=0).to_json())
    data.update(change)
    return json.dumps(data)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["kept"].__setitem__("layer9.conv", [0]), "unknown unit 'layer9.conv'"),
    (lambda d: d["kept"].__setitem__("conv1", [0, 64]), "index 64 out of range"),
    (lambda d: d["kept"].__setitem__("conv1", [1, 1]), "twice"),
    (lambda d: d["kept"].__setitem__("conv1", []), "keeps nothing"),
    (lambda d: d["kept"].__setitem__("conv1", [3, 1]), "sorted"),
    (lambda d: d["kept"].__setitem__("conv1", ["a"]), "integers"),
    (lambda d: d["kept"].pop("conv1"), "missing"),
    (lambda d: d.__setitem__("arch", "resnet50"), "not 'resnet18'"),
    (lambda d: d.__setitem__("schema_version", 7), "newer edgemvp"),
])
def test_bad_masks_are_refused(mutate, message: str, tmp_path: Path) -> None:
    data = json.loads(_masks_json())
    mutate(data)
    path = tmp_path / "masks.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError, match=message):
        Masks.load(path, arch="resnet18")


def test_not_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        Masks.load(tmp_path / "m.json")


def test_params_and_macs_at_90_percent() -> None:
    masks = random_masks("resnet18", 0.9, seed=0)
    model = shrink(create_model("resnet18", 1000, BIG), masks).eval()
    params, macs = params_and_macs(model, BIG)
    # 10% of every group: ~0.11 M params without the 1000-class head's share, ~28 M MACs at 224 px
    head = model.fc.weight.numel() + model.fc.bias.numel()
    assert 0.09e6 < params - head < 0.14e6, params - head
    assert 22e6 < macs < 34e6, macs


@pytest.mark.parametrize("arch", ONE_PER_FAMILY)
def test_uninitialised_skeleton_has_the_same_layout_and_computes_the_same_after_loading(arch: str) -> None:
    from edgemvp.models.factory import load_into
    from edgemvp.shrink import build_pruned

    spec = InputSpec(1, 16, (0.5,), (0.25,))
    masks = random_masks(arch, 0.75, 3)
    torch.manual_seed(0)
    initialised = build_pruned(arch, 4, spec, masks).eval()
    skeleton = build_pruned(arch, 4, spec, masks, initialise=False)
    a, b = initialised.state_dict(), skeleton.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)
    assert all(p.device.type == "cpu" for p in skeleton.parameters())
    load_into(skeleton, a, "test")
    x = torch.randn(3, 1, 16, 16)
    assert torch.equal(initialised(x), skeleton.eval()(x))


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_lite0"])
def test_shrink_traces_on_the_models_device(arch: str) -> None:
    """IFP shrinks in place on the training device (issue 24): the trace must run there, not on the CPU.

    The ``meta`` device stands in for CUDA: a CPU-made example tensor fails exactly as it does on a GPU.
    """
    spec = InputSpec(3, 32, (0.5,) * 3, (0.5,) * 3)
    space = unit_space(arch)
    masks = Masks(arch, {u.name: tuple(range(0, u.size, 2)) for u in space.units}, "0" * 64)
    with torch.device("meta"):
        model = create_model(arch, 5, spec)
    shrink(model, masks)
    assert all(p.device.type == "meta" for p in model.parameters())
    with torch.device("cpu"):
        reference = shrink(create_model(arch, 5, spec), masks)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in reference.state_dict().items()}


def test_expand_state_keeps_the_tensors_device() -> None:
    spec = InputSpec(3, 32, (0.5,) * 3, (0.5,) * 3)
    full = create_model("resnet18", 5, spec)
    masks = random_masks("resnet18", 0.5, 0)
    small = shrink(create_model("resnet18", 5, spec), masks)
    shapes = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    meta = {k: torch.empty_like(v, device="meta") for k, v in small.state_dict().items()}
    out, present = expand_state(meta, masks, shapes)
    assert all(v.device.type == "meta" for v in out.values()) and all(v.device.type == "meta" for v in present.values())
