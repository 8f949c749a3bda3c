"""Everything the pipeline makes is made on the model's device (issue 24).

Without a GPU the ``meta`` device stands in for one: a tensor made on the CPU and mixed with a model's meta
tensors fails as it would on CUDA ("... is not on the expected device"), and shapes still propagate. Steps that
need values (a loss, an argsort of scores, BatchNorm's cumulative average) cannot run on meta; those are
checked on CUDA by the ``gpu`` tests, which are skipped where there is none.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from edgemvp.masks import Masks, full_masks, random_masks
from edgemvp.models.factory import create_model
from edgemvp.mvp.average import Contribution, average_state
from edgemvp.shrink import contract_state, mask_dense, params_and_macs, shrink
from edgemvp.spec import InputSpec
from edgemvp.units import unit_space

META = torch.device("meta")
GREY16 = InputSpec(1, 16, (0.5,), (0.25,))
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


def _on_meta(arch: str, spec: InputSpec = GREY16, classes: int = 3) -> nn.Module:
    with torch.device("meta"):
        return create_model(arch, classes, spec)


def _devices(model: nn.Module) -> set[str]:
    return {t.device.type for t in list(model.parameters()) + list(model.buffers())}


def test_vit_shrink_runs_on_the_models_device() -> None:
    space = unit_space("vit_tiny")
    masks = Masks("vit_tiny", {u.name: tuple(range(0, u.size, 2)) for u in space.units}, "0" * 64)
    model = shrink(_on_meta("vit_tiny", InputSpec(3, 32, (0.5,) * 3, (0.5,) * 3)), masks)
    assert _devices(model) == {"meta"}
    assert model.blocks[0].attn.qkv.weight.shape[0] == 3 * len(masks.kept["blocks.0.attn"]) * 64


def test_contract_and_average_run_on_the_targets_device() -> None:
    """The vote's initialisation: the base's state (here on meta) contracted to the target's masks and
    averaged with neighbours read from disk (on the CPU) stays on the base's device."""
    masks = random_masks("resnet18", 0.5, 0)
    fallback = contract_state(_on_meta("resnet18").state_dict(), masks)
    assert {v.device.type for v in fallback.values()} == {"meta"}
    cpu = shrink(create_model("resnet18", 3, GREY16), masks).state_dict()
    neighbour = Contribution(cpu, {k: torch.ones(v.shape, dtype=torch.bool) for k, v in cpu.items()}, {})
    out = average_state(fallback, [neighbour], ("fc.weight", "fc.bias"))
    assert {v.device.type for v in out.values()} == {"meta"}
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in cpu.items()}


def test_mask_dense_and_the_op_counter_run_on_the_models_device() -> None:
    model = mask_dense(_on_meta("resnet18"), random_masks("resnet18", 0.5, 0))
    assert _devices(model) == {"meta"}
    small = shrink(_on_meta("resnet18"), random_masks("resnet18", 0.9, 0))
    reference = shrink(create_model("resnet18", 3, GREY16), random_masks("resnet18", 0.9, 0))
    assert params_and_macs(small, GREY16)[0] == params_and_macs(reference, GREY16)[0]


def test_an_ifp_event_runs_on_the_models_device() -> None:
    """IFP's importance accumulates where the model trains (one host copy per event, not per forward), and
    the event shrinks the model there."""
    from edgemvp.pruners.base import PruneConfig
    from edgemvp.pruners.ifp import _IFPHook

    model = _on_meta("resnet18").train()
    hook = _IFPHook(model, full_masks("resnet18", "0" * 64), PruneConfig(ratio=0.5, iters=10), "taylor")
    try:
        model(torch.zeros(4, 1, 16, 16, device=META)).sum().backward()
        assert hook.scores and {s.device.type for s in hook.scores.values()} == {"meta"}
        # values cannot be read back from meta: give the event CPU scores of the accumulated shapes
        hook.scores = {u: torch.arange(s.numel(), dtype=torch.float32) for u, s in hook.scores.items()}
        hook.prune()
    finally:
        hook.close()
    assert _devices(model) == {"meta"} and hook.events == 1
    reference = shrink(create_model("resnet18", 3, GREY16), hook.masks)
    assert {k: v.shape for k, v in model.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}


def test_ahnp_scores_live_on_the_models_device() -> None:
    from edgemvp.pruners.ahnp import _ScoreHook
    from edgemvp.pruners.base import PruneConfig

    model = _on_meta("vit_tiny", InputSpec(3, 32, (0.5,) * 3, (0.5,) * 3))
    hook = _ScoreHook(model, "vit_tiny", PruneConfig(ratio=0.5, iters=10), 5)
    assert {p.device.type for p in hook.scores.values()} == {"meta"}
    assert {a.device.type for a in hook.alive.values()} == {"meta"}


def test_a_task_head_is_made_on_the_bases_device() -> None:
    from edgemvp.models.base import task_model

    model = task_model(_on_meta("resnet18"), (), ("a", "b"), seed=0)
    assert _devices(model) == {"meta"} and model.fc.out_features == 2


# --- on CUDA (skipped without one) -------------------------------------------------------------------------------
def _batches(spec: InputSpec, classes: int, n: int = 64, batch: int = 16):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, spec.channels, spec.size, spec.size, generator=gen), torch.randint(0, classes, (n,),
                                                                                             generator=gen)
    while True:
        for i in range(0, n, batch):
            yield x[i:i + batch], y[i:i + batch]


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("pruner", ["ifp-taylor", "random"])
def test_cnn_pruners_run_on_cuda(pruner: str) -> None:
    from edgemvp.pruners import get_pruner
    from edgemvp.pruners.base import PruneConfig

    torch.manual_seed(0)
    model = create_model("resnet18", 3, GREY16)
    out = get_pruner(pruner, "cnn")(model, "resnet18", _batches(GREY16, 3), PruneConfig(ratio=0.5, iters=8),
                                    "0" * 64, torch.device("cuda"), None)
    assert _devices(out.model) == {"cuda"} and len(out.losses) == 8
    reference = shrink(create_model("resnet18", 3, GREY16), out.masks)
    assert {k: v.shape for k, v in out.model.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}


@pytest.mark.gpu
@cuda
def test_ahnp_runs_on_cuda() -> None:
    from edgemvp.pruners import get_pruner
    from edgemvp.pruners.base import PruneConfig

    spec = InputSpec(3, 32, (0.5,) * 3, (0.5,) * 3)
    torch.manual_seed(0)
    out = get_pruner("ahnp", "vit")(create_model("vit_tiny", 3, spec), "vit_tiny", _batches(spec, 3),
                                    PruneConfig(ratio=0.5, iters=8), "0" * 64, torch.device("cuda"), None)
    assert _devices(out.model) == {"cuda"} and out.events >= 1


@pytest.mark.gpu
@cuda
def test_vote_initialisation_and_bn_reestimation_on_cuda_match_the_cpu() -> None:
    from edgemvp.mvp.average import averaged_model
    from edgemvp.train import reestimate_batchnorm

    torch.manual_seed(0)
    base = create_model("resnet18", 4, GREY16)
    masks = random_masks("resnet18", 0.5, 0)
    args = dict(base_classes=("a", "b", "c", "d"), base_dataset="d", arch="resnet18", spec=GREY16, masks=masks,
                neighbours=[], target_dataset="d", target_classes=("b", "x"), seed=0)
    on_cpu = averaged_model(base=base, **args)
    on_gpu = averaged_model(base=copy.deepcopy(base).cuda(), **args)
    assert _devices(on_gpu) == {"cuda"}
    assert all(torch.equal(v, on_gpu.state_dict()[k].cpu()) for k, v in on_cpu.state_dict().items())
    batches = list(zip(range(3), _batches(GREY16, 2)))
    reestimate_batchnorm(on_cpu, iter(b for _, b in batches), 3)
    reestimate_batchnorm(on_gpu, iter(b for _, b in batches), 3)
    for k, v in on_cpu.state_dict().items():
        if k.endswith(("running_mean", "running_var")):
            torch.testing.assert_close(on_gpu.state_dict()[k].cpu(), v, rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
@cuda
def test_leep_probabilities_on_cuda_match_the_cpu() -> None:
    from edgemvp.mvp.similarity import model_probs

    torch.manual_seed(0)
    model = create_model("resnet18", 5, GREY16).eval()
    x = torch.randn(20, 1, 16, 16)
    cpu = model_probs(model, x, batch=8)
    gpu = model_probs(copy.deepcopy(model).cuda(), x, batch=8)
    assert abs(cpu - gpu).max() < 1e-3
