"""Single-task pruners: target sizes, importance order, exact progressive shrinking, score folding."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from edgemvp.data.datasets import get_dataset
from edgemvp.data.loader import eval_batches, train_batches
from edgemvp.data.tasks import TaskSpec, task_view
from edgemvp.errors import UsageError
from edgemvp.masks import Masks, full_masks, keep_count, random_masks
from edgemvp.models.base import load_base, task_model
from edgemvp.models.factory import create_model
from edgemvp.pruners import PruneConfig, get_pruner
from edgemvp.pruners.ahnp import _ScoreHook
from edgemvp.pruners.base import next_keep, pruning_events
from edgemvp.pruners.ifp import _IFPHook
from edgemvp.shrink import build_pruned, mask_dense, shrink
from edgemvp.spec import InputSpec
from edgemvp.train import accuracy
from edgemvp.units import unit_space
from tests.helpers import ONE_PER_FAMILY

TASK = TaskSpec("digits-012", "digits", ("0", "1", "2"))
SPEC = InputSpec(1, 16, (0.5,), (0.25,))


def _setup(cache, arch: str):
    base, manifest = load_base(arch, "digits", cache)
    ds = get_dataset("digits")
    model = task_model(base, manifest.classes, TASK.classes)
    batches = train_batches(task_view(TASK, ds, "train"), manifest.input_spec, 32, seed=0)
    return model, manifest, batches, task_view(TASK, ds, "test")


def _assert_target_sizes(masks: Masks, ratio: float) -> None:
    for unit in unit_space(masks.arch).units:
        assert len(masks.kept[unit.name]) == keep_count(unit.size, ratio), unit.name


@pytest.mark.parametrize("name", ["ifp-activation", "ifp-taylor"])
def test_ifp_reaches_target_and_learns(tiny_bases, name: str) -> None:
    model, manifest, batches, test = _setup(tiny_bases, "resnet18")
    cfg = PruneConfig(ratio=0.9, iters=40, batch_size=32, lr=0.05)
    out = get_pruner(name, "cnn")(model, "resnet18", batches, cfg, manifest.weights_sha256, None, None)
    _assert_target_sizes(out.masks, 0.9)
    assert out.events == pruning_events({u.name: u.size for u in unit_space("resnet18").units},
                                        {u.name: keep_count(u.size, 0.9) for u in unit_space("resnet18").units}, 0.2)
    assert out.masks.base_sha256 == manifest.weights_sha256
    # the trained model is exactly the shrunk layout: it loads into a fresh skeleton strictly
    skeleton = build_pruned("resnet18", 3, manifest.input_spec, out.masks)
    skeleton.load_state_dict(out.model.state_dict(), strict=True)
    assert accuracy(out.model, eval_batches(test, manifest.input_spec), torch.device("cpu")) > 60.0  # chance 33%


def test_ifp_prunes_the_least_important_channels() -> None:
    model = create_model("resnet18", 3, SPEC)
    hook = _IFPHook(model, full_masks("resnet18"), PruneConfig(ratio=0.5, iters=10, prune_fraction=0.25), "activation")
    unit = "layer1.0.conv1"  # 64 channels
    hook.scores = {unit: torch.arange(64, dtype=torch.float32).flip(0)}  # channel 0 most important
    hook.prune()
    hook.close()
    assert hook.masks.kept[unit] == tuple(range(next_keep(64, 32, 0.25)))  # the 48 highest scores
    assert model.layer1[0].conv1.out_channels == 48  # physically shrunk at the event


@pytest.mark.parametrize("arch", ONE_PER_FAMILY)
def test_progressive_shrinking_equals_shrinking_once(arch: str) -> None:
    torch.manual_seed(0)
    ref = create_model(arch, 3, SPEC).eval()
    first = random_masks(arch, 0.5, seed=1)
    space = unit_space(arch)
    rng = np.random.default_rng(2)  # a subset of the first masks
    second = Masks(arch, {u.name: tuple(sorted(rng.choice(first.kept[u.name], max(1, len(first.kept[u.name]) // 2),
                                                          replace=False).tolist())) for u in space.units})
    stepwise = shrink(shrink(copy.deepcopy(ref), first), second, current=first)
    once = shrink(copy.deepcopy(ref), second)
    a, b = stepwise.state_dict(), once.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(4, *SPEC.shape(1)[1:])
    torch.testing.assert_close(stepwise(x), mask_dense(copy.deepcopy(ref), second)(x), atol=1e-4, rtol=1e-4)
    with pytest.raises(UsageError, match="no longer has"):
        shrink(copy.deepcopy(once), first, current=second)


def test_ahnp_fold_keeps_the_function_and_scores_learn_faster() -> None:
    torch.manual_seed(0)
    model = create_model("vit_tiny", 3, SPEC).eval()
    cfg = PruneConfig(ratio=0.5, iters=10, score_lr=0.05, lr=1e-4)
    hook = _ScoreHook(model, "vit_tiny", cfg, phase_steps=5)
    with torch.no_grad():
        for p in hook.scores.values():
            p.copy_(torch.rand_like(p) + 0.5)
    hook.threshold()
    x = torch.randn(2, *SPEC.shape(1)[1:])
    with torch.no_grad():
        scored = model(x)
    hook.fold(model)
    with torch.no_grad():
        folded = model(x)
    torch.testing.assert_close(folded, scored, atol=1e-5, rtol=1e-5)  # scores now live in the weights
    masks = hook.masks("", "vit_tiny")
    shrunk = shrink(copy.deepcopy(model), masks)
    torch.testing.assert_close(shrunk(x), scored, atol=1e-4, rtol=1e-4)  # switched-off units removed exactly
    groups = hook.param_groups()
    assert groups[0]["lr"] == 0.05 > cfg.optim("vit").lr


def test_ahnp_reaches_target_on_a_vit(tiny_bases) -> None:
    model, manifest, batches, test = _setup(tiny_bases, "vit_tiny")
    cfg = PruneConfig(ratio=0.5, iters=24, batch_size=32)
    out = get_pruner("ahnp", "vit")(model, "vit_tiny", batches, cfg, manifest.weights_sha256, None, None)
    _assert_target_sizes(out.masks, 0.5)
    assert len(out.losses) == 24
    skeleton = build_pruned("vit_tiny", 3, manifest.input_spec, out.masks)
    skeleton.load_state_dict(out.model.state_dict(), strict=True)
    assert out.model.blocks[0].attn.num_heads == keep_count(3, 0.5)


def test_random_pruner_uses_seeded_random_masks(tiny_bases) -> None:
    model, manifest, batches, _ = _setup(tiny_bases, "resnet18")
    cfg = PruneConfig(ratio=0.9, iters=5, batch_size=32, seed=7)
    out = get_pruner("random")(model, "resnet18", batches, cfg, manifest.weights_sha256, None, None)
    assert out.masks == random_masks("resnet18", 0.9, 7, base_sha256=manifest.weights_sha256)


def test_bad_pruner_config_and_family() -> None:
    for kwargs in ({"ratio": 0.0}, {"ratio": 1.0}, {"ratio": 1.5}, {"iters": 0}, {"prune_fraction": 1.0}):
        with pytest.raises(UsageError):
            PruneConfig(**kwargs)
    with pytest.raises(UsageError, match="unknown pruner 'magic'"):
        get_pruner("magic")
    with pytest.raises(UsageError, match="does not prune VIT models; use one of: ahnp, random"):
        get_pruner("ifp-activation", "vit")
    with pytest.raises(UsageError, match="does not prune CNN models"):
        get_pruner("ahnp", "cnn")
