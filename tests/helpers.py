"""Tiny on-disk datasets for tests."""
from __future__ import annotations

import gzip
import os
import struct
import subprocess
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from edgemvp.models.factory import ARCHS, FAMILIES

# Tests run over the arch registry (timm-style): a newly registered arch is tested without editing a test.
ALL_ARCHS = sorted(ARCHS)
ONE_PER_FAMILY = [next(name for name, spec in ARCHS.items() if spec.family == family) for family in FAMILIES
                  if any(spec.family == family for spec in ARCHS.values())]  # the first registered of each
# the fast suite's set where every arch costs tens of seconds: one per family and the depthwise (mobile) CNN;
# the other archs run in `make test-all`
TYPICAL_ARCHS = ONE_PER_FAMILY + [name for name in ARCHS if name.startswith("efficientnet")][:1]


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX (type 0x08)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion(folder: Path, n_train: int = 40, n_test: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Write a tiny Fashion-MNIST (gzip IDX) whose class c images have mean brightness ~ 20 c."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = (labels[:, None, None] * 20 + rng.integers(0, 20, (n, 28, 28))).astype(np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels.astype(np.uint8))))
        out.append(images)
    return out[0], out[1]


def write_omniglot_zip(path: Path, alphabets: dict[str, int], drawings: int = 4, size: int = 21) -> None:
    """A zip in torchvision's Omniglot layout: images_background/<alphabet>/characterNN/<id>.png."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for alphabet, n_chars in alphabets.items():
            for c in range(1, n_chars + 1):
                for d in range(drawings):
                    img = Image.fromarray(np.full((size, size), (c * 40 + d) % 256, np.uint8))
                    member = f"images_background/{alphabet}/character{c:02d}/{c:04d}_{d + 1:02d}.png"
                    with zf.open(member, "w") as fh:
                        img.save(fh, format="PNG")


def write_imagefolder(root: Path, classes: dict[str, int], size: int = 12) -> None:
    """An ImageFolder tree of solid-colour RGB PNGs."""
    for k, (cls, n) in enumerate(classes.items()):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (size, size + 4), (k * 60, i * 10, 0)).save(root / cls / f"{i}.png")


class Payload:
    """An object whose unpickling would run code (prints 'pwned')."""

    def __reduce__(self):  # noqa: D105
        return (print, ("pwned",))


def make_entry(arch: str = "resnet18", seed: int = 0, classes: tuple[str, ...] = ("0", "1", "2"),
               ratio: float = 0.9, dataset: str = "digits", base_sha256: str = "b" * 64, spec=None,
               base_dataset: str | None = None):
    """A zoo entry (manifest + weights bytes) from random masks and random weights, without training.

    ``spec`` and ``base_dataset`` describe the base (default: a 16 px grey input, the task's dataset).
    """
    import torch

    from edgemvp.data.tasks import TaskSpec, task_name
    from edgemvp.masks import random_masks
    from edgemvp.models.weights import sha256_bytes, weights_bytes
    from edgemvp.shrink import build_pruned, pruned_metadata
    from edgemvp.spec import InputSpec
    from edgemvp.manifest import BaseRef, EntryManifest

    spec = spec or InputSpec(1, 16, (0.5,), (0.25,))
    masks = random_masks(arch, ratio, seed, base_sha256=base_sha256)
    torch.manual_seed(seed)
    model = build_pruned(arch, len(classes), spec, masks)
    weights = weights_bytes(model.state_dict(), pruned_metadata(masks, spec, len(classes)))
    task = TaskSpec(task_name(dataset, classes), dataset, classes)
    manifest = EntryManifest(task, BaseRef(arch, base_dataset or dataset, base_sha256, spec), masks, "random", {"seed": seed},
                             {"test_acc": 50.0 + seed, "params": 1, "macs": 1, "keep_ratio": 0.1},
                             sha256_bytes(weights), job_key=f"job-{arch}-{seed}-{'-'.join(classes)}")
    return manifest, weights


def edgemvp(*args: str, env: dict[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
            timeout: float | None = None) -> subprocess.CompletedProcess:
    """``edgemvp ARGS`` run in this process, as :func:`subprocess.run` would report it.

    Starting a Python that imports torch, timm and onnx costs 6-8 s per command on 2 cores; the CLI's error
    and exit-code contract is the same in process (``edgemvp.cli.main``, ``SystemExit``), so tests of it run
    here, with ``env`` as the whole environment (like ``subprocess.run(env=...)``) and the process-wide state a
    command may change (torch threads, oneDNN and determinism flags, logging handlers, cwd) restored after.
    ``tests/test_cli.py`` keeps real subprocesses for the entry point itself. ``timeout`` is accepted and
    ignored (kept for the call sites written for ``subprocess.run``).
    """
    import contextlib
    import io
    import logging
    import sys
    import warnings

    import torch

    from edgemvp.cli import main

    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv
    saved_threads, saved_mkldnn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    saved_det = torch.are_deterministic_algorithms_enabled()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        if cwd is not None:
            os.chdir(cwd)
        root.handlers = []  # the command's logging.basicConfig writes to this call's stderr
        sys.argv = ["edgemvp", *map(str, args)]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            # warnings print to the command's stderr as in a fresh interpreter (pytest would collect them)
            warnings.resetwarnings()
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: err.write(
                warnings.formatwarning(message, category, filename, lineno, line))
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        root.handlers, root.level = saved_handlers, saved_level
        torch.set_num_threads(saved_threads)
        torch.backends.mkldnn.enabled = saved_mkldnn
        torch.use_deterministic_algorithms(saved_det)
    return subprocess.CompletedProcess(["edgemvp", *map(str, args)], code, out.getvalue(), err.getvalue())
