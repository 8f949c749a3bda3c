"""Shared test set-up: offline, a private cache per session, small thread count."""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["EDGEMVP_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test run gets its own cache, so nothing depends on (or touches) the user's."""
    os.environ["EDGEMVP_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.pop("EDGEMVP_DATA", None)


@pytest.fixture(scope="session")
def tiny_bases(tmp_path_factory: pytest.TempPathFactory):
    """A cache with tiny digits bases (16 px grey): resnet18 and vit_tiny, briefly trained.

    fp32 (``amp=False``): bf16 autocast on this CPU is not bit-reproducible, and tests that compare runs or
    fine-tune from these bases must see the same base in every session.
    """
    from edgemvp.pretrain import PretrainConfig, pretrain
    from edgemvp.train import OptimConfig

    cache = tmp_path_factory.mktemp("bases")
    pretrain("resnet18", "digits", PretrainConfig(epochs=2, batch_size=64, size=16, amp=False,
                                                  optim=OptimConfig(lr=0.05, warmup_steps=5)), cache=cache)
    pretrain("vit_tiny", "digits", PretrainConfig(epochs=1, batch_size=64, size=16, amp=False,
                                                  optim=OptimConfig("adamw", lr=1e-3, weight_decay=0.05,
                                                                    warmup_steps=5)), cache=cache)
    return cache
