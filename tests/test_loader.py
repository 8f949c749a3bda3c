"""The data pipeline (issue 24): a torch DataLoader whose batches do not depend on its worker count, array
data fitted per batch, folder data decoded lazily into a bounded, self-checking cache."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import edgemvp.data.datasets as dsmod
from edgemvp.data.datasets import ArraySplit, get_dataset, load_imagefolder
from edgemvp.data.loader import LabeledView, eval_batches, train_batches
from edgemvp.data.transforms import augment, fit_images, to_input
from edgemvp.spec import InputSpec


def _reference_batches(view: LabeledView, spec: InputSpec, batch_size: int, seed: int):
    """The loader as it was before it had workers: one generator, in the training thread, every image of the
    split fitted up front."""
    gen = torch.Generator().manual_seed(seed)
    raw = torch.from_numpy(view.split.images).permute(0, 3, 1, 2)
    fitted = fit_images(raw, spec.size, view.split.fit, spec.crop_pct, spec.interpolation)
    targets = torch.from_numpy(view.targets)
    n = len(view)
    while True:
        order = torch.randperm(n, generator=gen)
        for start in range(0, n - batch_size + 1, batch_size):
            pick = order[start:start + batch_size].numpy()
            x = augment(fitted[torch.as_tensor(view.indices[pick])], gen, view.hflip, pad=max(1, spec.size // 16))
            yield to_input(x, spec), targets[pick]


def _view(hflip: bool = True) -> LabeledView:
    ds = get_dataset("digits")
    keep = np.flatnonzero(ds.train.labels < 4)
    return LabeledView(ds.train, keep, ds.train.labels[keep], hflip)


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_equal_the_in_thread_loaders_whatever_the_workers(workers: int) -> None:
    """Same seed, same batches: with 0 or 2 worker processes, and as the loader gave before (so zoo entries
    built with the same seeds keep their ids). 3 epochs of a small view cross the reshuffles."""
    view, spec = _view(), InputSpec(1, 24, (0.5,), (0.25,))  # 8 px digits resized to 24: per-batch fitting
    steps = 3 * (len(view) // 100) + 1
    got = list(itertools.islice(train_batches(view, spec, 100, seed=3, workers=workers), steps))
    want = list(itertools.islice(_reference_batches(view, spec, 100, seed=3), steps))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, want))
    other = next(train_batches(view, spec, 100, seed=4, workers=workers))
    assert not torch.equal(other[0], got[0][0])


def test_eval_batches_are_ordered_and_complete_with_workers() -> None:
    view, spec = _view(hflip=False), InputSpec(1, 16, (0.5,), (0.25,))
    plain = list(eval_batches(view, spec, batch_size=64, workers=0))
    spread = list(eval_batches(view, spec, batch_size=64, workers=2))
    assert sum(len(y) for _, y in plain) == len(view)
    assert torch.equal(torch.cat([y for _, y in spread]), torch.from_numpy(view.targets))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(plain, spread))


def test_array_split_keeps_no_fitted_copy() -> None:
    """Array data is fitted per batch: nothing the size of the data set at the model's input size is kept."""
    split = get_dataset("digits").train
    assert isinstance(split, ArraySplit)
    before = {k: v for k, v in vars(split).items()}
    x = split.load(np.arange(10), 224)
    assert x.shape == (10, 1, 224, 224) and vars(split).keys() == before.keys()
    assert sum(getattr(v, "nbytes", 0) for v in vars(split).values()) < 2 * split.images.nbytes


def test_workers_must_be_a_count() -> None:
    from edgemvp.errors import UsageError

    with pytest.raises(UsageError, match="workers must be an integer"):
        train_batches(_view(), InputSpec(1, 16, (0.5,), (0.25,)), 8, 0, workers=-1)


def _folder(root: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_folder_images_are_decoded_once_into_a_checked_disk_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EDGEMVP_CACHE", str(tmp_path / "cache"))
    ds = load_imagefolder(_folder(tmp_path / "imgs"))
    split = ds.train
    decoded = []
    real = split._get
    split._get = lambda i: (decoded.append(i), real(i))[1]
    first = split.load(np.arange(len(split)), 16)
    assert sorted(decoded) == list(range(len(split)))
    again = split.load(np.arange(len(split)), 16)
    assert torch.equal(first, again) and len(decoded) == len(split)  # read back, not decoded again
    files = sorted((tmp_path / "cache" / "decoded").iterdir())
    data = next(f for f in files if f.suffix == ".u8")
    assert data.stat().st_size == len(split) * 3 * 16 * 16
    # a damaged slot fails its check and is decoded again, never returned
    raw = bytearray(data.read_bytes())
    raw[3 * 16 * 16 + 5] ^= 0xFF
    data.write_bytes(bytes(raw))
    fresh = load_imagefolder(tmp_path / "imgs").train  # a new process's view of the same files
    fresh_decoded = []
    fresh_real = fresh._get
    fresh._get = lambda i: (fresh_decoded.append(i), fresh_real(i))[1]
    assert torch.equal(fresh.load(np.arange(len(fresh)), 16), first) and fresh_decoded == [1]
    # another size, or changed files, is another cache file
    fresh.load(np.arange(2), 20)
    assert len(list((tmp_path / "cache" / "decoded").glob("*.u8"))) == 2


def test_folder_cache_unwritable_falls_back_to_a_bounded_memory(tmp_path: Path, monkeypatch) -> None:
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("x")
    monkeypatch.setenv("EDGEMVP_CACHE", str(tmp_path / "c"))
    monkeypatch.setattr(dsmod, "DECODED_MEMORY_BYTES", 3 * 16 * 16 * 3)  # three images
    ds = load_imagefolder(_folder(tmp_path / "imgs"))
    split = ds.train
    monkeypatch.setattr(dsmod, "cache_dir", lambda: blocker)  # mkdir under a file fails: OSError
    x = split.load(np.arange(len(split)), 16)
    assert x.shape == (len(split), 3, 16, 16)
    assert len(split._memo) == 3 and split._memo_bytes <= dsmod.DECODED_MEMORY_BYTES
    assert torch.equal(split.load(np.arange(len(split)), 16), x)


def test_folder_batches_with_workers_equal_those_without(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EDGEMVP_CACHE", str(tmp_path / "cache"))
    ds = load_imagefolder(_folder(tmp_path / "imgs", n=10))
    view = LabeledView(ds.train, np.arange(len(ds.train)), ds.train.labels, ds.hflip)
    spec = InputSpec(3, 16, (0.5,) * 3, (0.25,) * 3)
    a = list(itertools.islice(train_batches(view, spec, 4, seed=0, workers=0), 6))
    b = list(itertools.islice(train_batches(view, spec, 4, seed=0, workers=2), 6))
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))


def test_workers_send_uint8_batches_and_the_training_process_normalises(monkeypatch) -> None:
    """What crosses from a worker to the training process is the uint8 batch (a quarter of float32's bytes in
    shared memory and in flight); the float input is made on this side, equal to the in-thread loader's."""
    import edgemvp.data.loader as loader

    seen: list[torch.dtype] = []
    normalised = loader._normalised

    def spy(batches, spec, pin_memory):
        def record():
            for x, y in batches:
                seen.append(x.dtype)
                yield x, y
        return normalised(record(), spec, pin_memory)

    monkeypatch.setattr(loader, "_normalised", spy)
    view, spec = _view(), InputSpec(1, 24, (0.5,), (0.25,))
    got = list(itertools.islice(train_batches(view, spec, 100, seed=3, workers=2), 3))
    want = list(itertools.islice(_reference_batches(view, spec, 100, seed=3), 3))
    assert seen == [torch.uint8] * 3
    assert all(a[0].dtype == torch.float32 and torch.equal(a[0], b[0]) for a, b in zip(got, want))
