"""Device-aligned channels (issue 25): kept counts rounded to a device's channel block, masks still valid."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgemvp.errors import UsageError
from edgemvp.masks import Masks, keep_count, masks_from_scores, random_masks, unit_keep
from edgemvp.mvp.vote import vote
from edgemvp.pruners import PruneConfig, get_pruner
from edgemvp.pruners.base import final_keep
from edgemvp.shrink import build_pruned, shrink
from edgemvp.spec import InputSpec
from edgemvp.units import unit_space
from edgemvp.models.factory import create_model
from tests.test_pruners import _setup

SPEC = InputSpec(3, 32, (0.5,) * 3, (0.25,) * 3)


def _bits(masks: Masks) -> np.ndarray:
    return np.concatenate([np.isin(np.arange(u.size), masks.kept[u.name]) for u in unit_space(masks.arch).units])


def _assert_aligned(masks: Masks, ratio: float, block: int) -> None:
    for unit in unit_space(masks.arch).units:
        kept = len(masks.kept[unit.name])
        if unit.kind == "heads":
            assert kept == keep_count(unit.size, ratio), unit.name  # heads are never rounded
        else:
            assert kept == unit.size or kept % block == 0, (unit.name, kept)


def test_unit_keep_rounds_channels_and_mlp_nodes_not_heads() -> None:
    space = unit_space("vit_tiny")
    heads = next(u for u in space.units if u.kind == "heads")
    mlp = next(u for u in space.units if u.kind == "mlp")
    assert unit_keep(heads, 0.5, 8) == keep_count(heads.size, 0.5)
    assert unit_keep(mlp, 0.9, 8) % 8 == 0 and unit_keep(mlp, 0.9, 8) != keep_count(mlp.size, 0.9)
    conv1 = unit_space("resnet18").by_name["conv1"]
    # 64 channels at 90%: 6 kept; rounded to the nearest multiple, never below one block, never above the group
    assert [unit_keep(conv1, 0.9, b) for b in (1, 4, 8, 16)] == [6, 8, 8, 16]
    assert unit_keep(conv1, 0.0, 48) == 64


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny"])
def test_aligned_vote_keeps_multiples_and_the_shrunk_model_loads_strictly(arch: str) -> None:
    rows = np.stack([_bits(random_masks(arch, 0.9, s)) for s in range(3)])
    aligned = vote(arch, rows, 0.9, 0.25, seed=3, round_to=8).masks
    plain = vote(arch, rows, 0.9, 0.25, seed=3).masks
    _assert_aligned(aligned, 0.9, 8)
    assert aligned != plain
    # the same Gumbel draw: a group whose count did not change keeps the very same units
    for unit in unit_space(arch).units:
        if len(aligned.kept[unit.name]) == len(plain.kept[unit.name]):
            assert aligned.kept[unit.name] == plain.kept[unit.name]
    assert Masks.from_json(aligned.to_json(), arch=arch) == aligned  # valid in the unpruned index space
    model = shrink(create_model(arch, 5, SPEC), aligned)
    skeleton = build_pruned(arch, 5, SPEC, aligned)
    skeleton.load_state_dict(model.state_dict(), strict=True)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


def test_scores_and_random_masks_round_the_same_way() -> None:
    space = unit_space("resnet18")
    scores = {u.name: np.arange(u.size, dtype=float) for u in space.units}
    masks = masks_from_scores("resnet18", scores, 0.9, round_to=16)
    _assert_aligned(masks, 0.9, 16)
    assert masks.kept["conv1"] == tuple(range(48, 64))  # the 16 highest scores
    _assert_aligned(random_masks("resnet18", 0.8, 0, round_to=8), 0.8, 8)


def test_ifp_reaches_the_aligned_target(tiny_bases) -> None:
    model, manifest, batches, _ = _setup(tiny_bases, "resnet18")
    cfg = PruneConfig(ratio=0.9, iters=20, batch_size=32, round_to=8)
    out = get_pruner("ifp-activation", "cnn")(model, "resnet18", batches, cfg, manifest.weights_sha256, None, None)
    finals = final_keep("resnet18", 0.9, 8)
    assert {u: len(k) for u, k in out.masks.kept.items()} == finals
    _assert_aligned(out.masks, 0.9, 8)
    skeleton = build_pruned("resnet18", 3, manifest.input_spec, out.masks)
    skeleton.load_state_dict(out.model.state_dict(), strict=True)


def test_round_to_one_leaves_zoo_job_keys_as_they_were() -> None:
    assert "round_to" not in PruneConfig().to_dict()  # job keys hash to_dict(): unaligned builds keep their ids
    assert PruneConfig(round_to=8).to_dict()["round_to"] == 8
    with pytest.raises(UsageError, match="round-to"):
        PruneConfig(round_to=0)
