"""Where zoos live in the cache, and the default zoo the offline default votes from."""
from __future__ import annotations

import os
import re
from pathlib import Path

from edgemvp.paths import cache_dir
from edgemvp.pruners import PruneConfig
from edgemvp.zoo.build import BuildReport, BuildSpec, build

DEFAULT_ARCH = "resnet18"
DEFAULT_DATASET = "fashion-mnist"
# A small zoo that builds in minutes on a 2-core CPU; held-out named tasks (fashion5) are never drawn.
# IFP@300 since issue 24 (IFP@500 before), for the 15-minute cold start.
DEFAULT_ZOO = BuildSpec(DEFAULT_ARCH, DEFAULT_DATASET, tasks=10, classes_per_task=5, pruner="ifp-activation",
                        config=PruneConfig(ratio=0.9, iters=300), seed=0)
# The folder names the recipe, so that a cache holding the zoo of an earlier default recipe is not mixed into
# this one's (its entries would have other job keys, and the build would add ten more beside them).
DEFAULT_ZOO_NAME = "default-ifp300"


def zoo_path(arch: str, dataset: str, cache: str | os.PathLike[str] | None = None, name: str = "zoo") -> Path:
    """The cache folder of a zoo for (arch, dataset): ``<cache>/zoos/<arch>--<dataset>[-<name>]``."""
    slug = re.sub(r"[^0-9A-Za-z._-]+", "_", dataset)
    suffix = "" if name == "zoo" else f"-{name}"
    return cache_dir(cache) / "zoos" / f"{arch}--{slug}{suffix}"


def default_zoo_path(cache: str | os.PathLike[str] | None = None) -> Path:
    """Folder of the default zoo."""
    return zoo_path(DEFAULT_ZOO.arch, DEFAULT_ZOO.dataset, cache, DEFAULT_ZOO_NAME)


def ensure_default_zoo(cache: str | os.PathLike[str] | None = None, data_root: str | os.PathLike[str] | None = None,
                       **progress: object) -> BuildReport:
    """Build the default zoo from the cached base, or finish it (a finished one returns at once).

    Keyword arguments are passed to :func:`edgemvp.zoo.build.build` (``overall``, ``task_progress``).
    """
    return build(DEFAULT_ZOO, default_zoo_path(cache), cache, data_root, **progress)  # type: ignore[arg-type]
