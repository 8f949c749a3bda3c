"""The command line: one clear line and exit code 2 for bad input."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import Payload, edgemvp, write_fashion


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``edgemvp ARGS`` in process (see :func:`tests.helpers.edgemvp`), the environment extended by ``env``."""
    return edgemvp(*args, env={**os.environ, **(env or {})})


def test_the_entry_point_in_a_real_process() -> None:
    """The one subprocess of this file: ``python -m edgemvp`` keeps the contract the in-process calls test."""
    bad = subprocess.run([sys.executable, "-m", "edgemvp", "tasks", "show", "pets6"], capture_output=True,
                         text=True, timeout=300)
    assert_usage_error(bad, "unknown task 'pets6'")


def assert_usage_error(out: subprocess.CompletedProcess, *fragments: str) -> None:
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_listings() -> None:
    out = run("tasks", "list")
    assert out.returncode == 0 and "pets5" in out.stdout and "fashion5" in out.stdout
    assert "resnet50" in run("archs").stdout
    assert "omniglot" in run("datasets", "list").stdout
    assert run("wordnet", "similarity", "dog.n.01", "cat.n.01").stdout.strip() == "0.8571"
    units = run("units", "--arch", "deit_tiny").stdout.splitlines()
    assert units[0].split() == ["blocks.0.attn", "heads", "3"] and units[1].split() == ["blocks.0.mlp", "mlp", "768"]
    assert units[-1] == "24 unit groups, 9252 units"


@pytest.mark.parametrize("args, fragments", [
    (["pretrain", "--arch", "resnet19"], ["unknown arch 'resnet19'", "resnet18"]),
    (["units", "--arch", "vgg16"], ["unknown arch 'vgg16'", "deit_small"]),
    (["pretrain", "--dataset", "mnist2"], ["unknown dataset 'mnist2'", "fashion-mnist"]),
    (["tasks", "show", "pets6"], ["unknown task 'pets6'", "pets5"]),
    (["tasks", "show", "--dataset", "fashion-mnist", "--classes", "bag,kilt"], ["'kilt' is not in dataset"]),
    (["pretrain", "--dataset", "oxford-pets"], ["downloads are off"]),
    (["pretrain", "--epochs", "-1"], ["--epochs"]),
    (["pretrain", "--no-such-option"], ["No such option"]),
])
def test_bad_input_is_one_line_exit_2(args: list[str], fragments: list[str]) -> None:
    assert_usage_error(run(*args), *fragments)


def test_corrupt_idx_is_one_line_exit_2(tmp_path: Path) -> None:
    write_fashion(tmp_path / "fashion-mnist")
    (tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"garbage")
    assert_usage_error(run("--data-dir", str(tmp_path), "pretrain"), "train-images-idx3-ubyte.gz")


def test_pickled_or_corrupt_init_weights_are_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "opt": Payload()}, evil)
    assert_usage_error(run("pretrain", "--dataset", "digits", "--init", str(evil)), "refusing to unpickle")
    plain = tmp_path / "plain.pkl"  # a bare pickle of protocol 4: torch warns about the protocol before refusing
    plain.write_bytes(pickle.dumps({"w": Payload()}, protocol=4))
    assert_usage_error(run("pretrain", "--dataset", "digits", "--init", str(plain)), "refusing to unpickle")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    assert_usage_error(run("pretrain", "--dataset", "digits", "--init", str(bad)), "corrupt safetensors")


def test_pets5_without_data_says_how_to_get_it() -> None:
    out = run("tasks", "show", "pets5")
    assert out.returncode == 0 and "not available" in out.stdout and "Abyssinian" in out.stdout
