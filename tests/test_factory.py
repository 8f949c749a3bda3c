"""The timm factory for every arch at a small input, and safe weight loading."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from edgemvp.errors import UsageError
from edgemvp.models.factory import ARCHS, create_model
from edgemvp.models.weights import load_weights, save_weights
from edgemvp.spec import InputSpec
from tests.helpers import Payload

GREY32 = InputSpec(1, 32, (0.5,), (0.25,))


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_arch_at_small_input(arch: str) -> None:
    torch.manual_seed(0)
    model = create_model(arch, 5, GREY32).eval()
    x = torch.randn(2, 1, 32, 32)
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.sum().backward()
    if ARCHS[arch].family == "vit":
        assert model.patch_embed.grid_size == (8, 8)  # 4 px patches at 32 px


def test_rgb_224_vit_uses_16px_patches() -> None:
    model = create_model("deit_tiny", 3, InputSpec(3, 224, (0.5,) * 3, (0.5,) * 3))
    assert model.patch_embed.grid_size == (14, 14)


def test_unknown_arch_lists_valid() -> None:
    with pytest.raises(UsageError, match="unknown arch 'resnet19'; valid archs: deit_small, deit_tiny, efficientnet_lite0, resnet18"):
        create_model("resnet19", 5, GREY32)


def test_hub_weights_offline_is_a_clear_error() -> None:
    with pytest.raises(UsageError, match="hub weights"):
        create_model("resnet18", 5, GREY32, pretrained="hub")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_weights_give_identical_outputs(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(1)
    source = create_model("resnet18", 4, GREY32).eval()
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_weights(source.state_dict(), path)
    else:
        torch.save({"state_dict": source.state_dict()}, path)
    loaded = create_model("resnet18", 4, GREY32, checkpoint_path=path).eval()
    x = torch.randn(3, 1, 32, 32)
    assert torch.equal(source(x), loaded(x))


def test_pickled_checkpoint_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Payload()}, path)
    with pytest.raises(UsageError, match="refusing to unpickle"):
        load_weights(path)
    assert "pwned" not in capsys.readouterr().out
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(UsageError):
        load_weights(raw)


def test_corrupt_and_mismatching_weights_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    sha = save_weights(create_model("resnet18", 4, GREY32).state_dict(), path)
    with pytest.raises(UsageError, match="sha256 mismatch"):
        load_weights(path, expected_sha256="0" * 64)
    assert load_weights(path, expected_sha256=sha)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UsageError, match="corrupt safetensors"):
        load_weights(path)
    other = tmp_path / "other.safetensors"
    save_weights(create_model("resnet18", 7, GREY32).state_dict(), other)
    with pytest.raises(UsageError, match="do not fit.*shape: fc.weight"):
        create_model("resnet18", 4, GREY32, checkpoint_path=other)
    with pytest.raises(UsageError, match="not found"):
        load_weights(tmp_path / "missing.safetensors")
