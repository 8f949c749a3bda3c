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
