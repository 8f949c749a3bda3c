"""Pre-training stores a base that later commands rebuild exactly."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgemvp.data.datasets import get_dataset
from edgemvp.data.loader import LabeledView, eval_batches
from edgemvp.errors import UsageError
from edgemvp.models.base import MANIFEST, WEIGHTS, base_folder, find_base, load_base
from edgemvp.pretrain import PretrainConfig, pretrain
from edgemvp.train import OptimConfig, accuracy


@pytest.mark.slow  # over 15 s on 2 cores: make test-all
def test_pretrain_digits_then_rebuild(tmp_path: Path) -> None:
    cfg = PretrainConfig(epochs=4, batch_size=64, size=16, optim=OptimConfig(lr=0.05, warmup_steps=5))
    manifest = pretrain("resnet18", "digits", cfg, cache=tmp_path)
    assert manifest.test_acc > 50.0  # 10 classes: chance is 10%
    assert manifest.input_spec.channels == 1 and manifest.input_spec.size == 16
    folder = base_folder("resnet18", "digits", tmp_path)
    assert json.loads((folder / MANIFEST).read_text())["weights_sha256"] == manifest.weights_sha256
    model, again = load_base("resnet18", "digits", tmp_path)
    assert again == manifest
    ds = get_dataset("digits")
    test = LabeledView(ds.test, np.arange(len(ds.test)), ds.test.labels)
    assert accuracy(model, eval_batches(test, manifest.input_spec), torch.device("cpu")) == pytest.approx(
        manifest.test_acc, abs=1e-3)
    weights = folder / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(UsageError, match="sha256 mismatch"):
        load_base("resnet18", "digits", tmp_path)


def test_missing_base_says_how_to_make_it(tmp_path: Path) -> None:
    assert find_base("resnet18", "fashion-mnist", tmp_path) is None
    with pytest.raises(UsageError, match="edgemvp pretrain --arch resnet18 --dataset fashion-mnist"):
        load_base("resnet18", "fashion-mnist", tmp_path)


def test_newer_manifest_schema_is_refused(tmp_path: Path) -> None:
    folder = base_folder("resnet18", "digits", tmp_path)
    folder.mkdir(parents=True)
    (folder / MANIFEST).write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(UsageError, match="newer edgemvp"):
        find_base("resnet18", "digits", tmp_path)


# --- the CPU probe of precision and memory format (issue 24) ----------------------------------------------------
def _tiny_resnet():
    from edgemvp.models.factory import create_model
    from edgemvp.spec import InputSpec

    torch.manual_seed(0)
    return create_model("resnet18", 3, InputSpec(1, 16, (0.5,), (0.25,)))


def test_cpu_probe_times_every_candidate_caches_and_keeps_the_rng(tmp_path: Path) -> None:
    from edgemvp.train import choose_cpu_mode, cpu_supports_bf16

    model = _tiny_resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    mode = choose_cpu_mode(model, (8, 1, 16, 16), 3, tmp_path, warmup=1, steps=1)
    assert torch.equal(torch.get_rng_state(), rng)  # the probe does not shift the caller's random stream
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # copies were trained
    expected = {"fp32/channels-last", "fp32/contiguous"} | (
        {"bf16/channels-last", "bf16/contiguous"} if cpu_supports_bf16() else set())
    assert set(mode.seconds) == expected and all(v > 0 for v in mode.seconds.values())
    assert mode.seconds[mode.name] <= 1.05 * min(mode.seconds.values()) and not mode.cached
    assert mode.name in mode.describe() and "s/step" in mode.describe()
    files = list((tmp_path / "probes").glob("cpu-mode-*.json"))
    assert len(files) == 1
    again = choose_cpu_mode(model, (8, 1, 16, 16), 3, tmp_path, warmup=1, steps=1)
    assert again.cached and (again.name, again.seconds) == (mode.name, mode.seconds)
    assert len(list((tmp_path / "probes").glob("cpu-mode-*.json"))) == 1
    files[0].write_text("{not json")  # a damaged cache entry is measured again, not trusted or fatal
    third = choose_cpu_mode(model, (8, 1, 16, 16), 3, tmp_path, warmup=1, steps=1)
    assert not third.cached and json.loads(files[0].read_text())["seconds"] == third.seconds
    other = choose_cpu_mode(model, (4, 1, 16, 16), 3, tmp_path, warmup=1, steps=1)  # another batch shape
    assert not other.cached and len(list((tmp_path / "probes").glob("cpu-mode-*.json"))) == 2


def test_cpu_mode_fp32_trains_without_autocast() -> None:
    """The probe's fp32 choice must hold even where oneDNN reports bf16: the same weights as the bit-exact
    fp32 path."""
    import copy
    from edgemvp.train import CpuMode, train_steps

    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 1, 16, 16, generator=gen), torch.randint(0, 3, (8,), generator=gen)) for _ in range(2)]
    start = _tiny_resnet()
    a, b = copy.deepcopy(start), copy.deepcopy(start)
    cpu = torch.device("cpu")
    train_steps(a, iter(data), 2, OptimConfig(lr=0.05), cpu, deterministic=True)
    train_steps(b, iter(data), 2, OptimConfig(lr=0.05), cpu, amp=True, cpu_mode=CpuMode(False, True))
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_pretrain_says_and_records_the_probes_choice(tmp_path: Path) -> None:
    said: list[str] = []
    cfg = PretrainConfig(epochs=0.1, batch_size=32, size=16, optim=OptimConfig(lr=0.05))
    manifest = pretrain("resnet18", "digits", cfg, cache=tmp_path, say=said.append, device=torch.device("cpu"))
    assert len(said) == 1 and said[0].startswith("base: CPU probe: ")
    mode = manifest.train["cpu_mode"]
    assert mode["name"] in said[0] and mode["name"] in mode["seconds_per_step"]
    fp32 = pretrain("resnet18", "digits", PretrainConfig(epochs=0.1, batch_size=32, size=16, amp=False,
                                                         optim=OptimConfig(lr=0.05)), cache=tmp_path / "b",
                    say=said.append, device=torch.device("cpu"))
    assert "cpu_mode" not in fp32.train and len(said) == 1  # amp=False: bit-exact fp32, no probe
