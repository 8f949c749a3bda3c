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
