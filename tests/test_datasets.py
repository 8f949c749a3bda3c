"""Dataset sources: offline loading, splits, class names, fitting, and clear errors."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import edgemvp.data.datasets as dsmod
from edgemvp.data.datasets import DEBIAN_FASHION_MNIST, get_dataset, load_imagefolder
from edgemvp.data.transforms import augment, fit_images, to_input
from edgemvp.errors import UsageError
from edgemvp.spec import InputSpec
from tests.helpers import write_fashion, write_imagefolder, write_omniglot_zip

# the real background sets (images_background_small1/2), when EDGEMVP_OMNIGLOT points at them
REAL_OMNIGLOT = Path(os.environ.get("EDGEMVP_OMNIGLOT", "/nonexistent"))


def test_fashion_from_data_folder(tmp_path: Path) -> None:
    train, test = write_fashion(tmp_path / "fashion-mnist")
    ds = get_dataset("fashion-mnist", tmp_path)
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot" and ds.channels == 1
    assert (len(ds.train), len(ds.test)) == (40, 20)
    x = ds.train.load(np.array([3]), 32)
    assert x.shape == (1, 1, 32, 32) and x.dtype == torch.uint8
    np.testing.assert_array_equal(x[0, 0, 2:30, 2:30].numpy(), train[3])  # centred, zero padded
    assert int(x[0, 0, :2].sum()) == 0


def test_fashion_missing_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dsmod, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(UsageError, match="apt-get install dataset-fashion-mnist"):
        get_dataset("fashion-mnist", tmp_path / "empty", download=False)


def test_corrupt_fashion_file_is_refused(tmp_path: Path) -> None:
    write_fashion(tmp_path / "fashion-mnist")
    path = tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(UsageError, match="t10k-labels"):
        get_dataset("fashion-mnist", tmp_path)


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_debian(tmp_path: Path) -> None:
    ds = get_dataset("fashion-mnist", tmp_path)
    assert (len(ds.train), len(ds.test)) == (60000, 10000)
    assert np.bincount(ds.test.labels).tolist() == [1000] * 10


def test_digits_split_is_fixed_and_stratified(tmp_path: Path) -> None:
    ds = get_dataset("digits", tmp_path)
    assert (len(ds.train), len(ds.test)) == (1437, 360)
    assert np.bincount(ds.test.labels).min() >= 35
    x = ds.test.load(np.arange(4), 32)
    assert x.shape == (4, 1, 32, 32) and int(x.max()) > 200


def test_omniglot_zip_layout_hierarchy_and_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "omni"
    write_omniglot_zip(root / "images_background_small1.zip", {"Greek": 2, "Latin": 1})
    write_omniglot_zip(root / "images_background_small2.zip", {"Greek": 2, "Tagalog": 3})
    monkeypatch.setenv("EDGEMVP_OMNIGLOT", str(root))
    ds = get_dataset("omniglot", tmp_path / "data")
    assert len(ds.classes) == 6  # Greek appears in both zips and is counted once
    assert ds.hierarchy == {"Greek": ("Greek/character01", "Greek/character02"), "Latin": ("Latin/character01",),
                            "Tagalog": tuple(f"Tagalog/character{i:02d}" for i in (1, 2, 3))}
    assert (len(ds.train), len(ds.test)) == (6 * 3, 6 * 1)  # 3 of 4 drawings train, 1 test


@pytest.mark.skipif(not REAL_OMNIGLOT.is_dir(), reason="EDGEMVP_OMNIGLOT does not name Omniglot's background sets")
def test_real_omniglot_has_242_characters_in_8_alphabets(tmp_path: Path) -> None:
    ds = get_dataset("omniglot", tmp_path)
    assert len(ds.classes) == 242 and len(ds.hierarchy or {}) == 8
    assert (len(ds.train), len(ds.test)) == (242 * 15, 242 * 5)


def test_imagefolder_split_and_rgb(tmp_path: Path) -> None:
    write_imagefolder(tmp_path / "tree", {"cat": 5, "dog": 10})
    ds = load_imagefolder(tmp_path / "tree")
    assert ds.classes == ("cat", "dog") and ds.channels == 3
    assert (len(ds.train), len(ds.test)) == (4 + 8, 1 + 2)
    x = ds.train.load(np.array([0, 11]), 16)
    assert x.shape == (2, 3, 16, 16)
    with pytest.raises(UsageError, match="not a folder"):
        get_dataset(f"imagefolder:{tmp_path / 'missing'}")


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(UsageError, match="valid datasets: .*cifar-100.*fashion-mnist.*imagefolder"):
        get_dataset("mnist-fashionable")


def test_online_dataset_offline_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="downloads are off"):
        get_dataset("oxford-pets", tmp_path, download=False)


def test_class_lookup_ignores_case_and_punctuation(tmp_path: Path) -> None:
    write_fashion(tmp_path / "fashion-mnist")
    ds = get_dataset("fashion-mnist", tmp_path)
    assert ds.class_index("ankle boot") == 9 and ds.class_index("t-shirt/top") == 0
    with pytest.raises(UsageError, match="'cat' is not in dataset"):
        ds.class_index("cat")


def test_fit_modes() -> None:
    x = torch.full((1, 1, 20, 40), 200, dtype=torch.uint8)
    assert fit_images(x, 32, "resize").shape == (1, 1, 32, 32)
    cropped = fit_images(x, 10, "resize-crop")
    assert cropped.shape == (1, 1, 10, 10) and int(cropped.min()) == 200


def test_to_input_channels_and_normalisation() -> None:
    grey = torch.full((2, 1, 8, 8), 255, dtype=torch.uint8)
    rgb_spec = InputSpec(3, 8, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert torch.allclose(to_input(grey, rgb_spec), torch.ones(2, 3, 8, 8))
    rgb = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    rgb[:, 1] = 255
    grey_spec = InputSpec(1, 8, (0.0,), (1.0,))
    assert torch.allclose(to_input(rgb, grey_spec), torch.full((1, 1, 8, 8), 0.587))


def test_augment_is_seeded_and_only_shifts() -> None:
    x = torch.randint(0, 255, (16, 1, 12, 12), dtype=torch.uint8)
    a = augment(x, torch.Generator().manual_seed(1), hflip=False, pad=2)
    b = augment(x, torch.Generator().manual_seed(1), hflip=False, pad=2)
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert torch.equal(augment(x, torch.Generator().manual_seed(1), hflip=False, pad=0), x)
    # every output is a translate of its input: its central 8x8 appears in the input padded by 2
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        found = any(torch.equal(a[i, 0, 2:10, 2:10], padded[i, 0, dy + 2:dy + 10, dx + 2:dx + 10])
                    for dy in range(5) for dx in range(5))
        assert found


def test_imagenet_layout_gives_wnid_classes_that_are_synsets(tmp_path: Path) -> None:
    from edgemvp.data.tasks import resolve_task
    from edgemvp.mvp.rank import rank_by_taxonomy

    for split, n in (("train", 4), ("val", 2)):
        write_imagefolder(tmp_path / "in1k" / split, {"n02085620": n, "n02123045": n, "n04133789": n})
    ds = get_dataset(f"imagenet:{tmp_path / 'in1k'}")
    assert ds.name == f"imagenet:{(tmp_path / 'in1k').resolve()}" and ds.classes[0] == "n02085620"
    assert (len(ds.train), len(ds.test)) == (12, 6)
    task = resolve_task(None, ds.name, "n02085620,n02123045")  # Chihuahua, tabby cat
    assert task.synsets == ("n02085620", "n02123045")
    dog_cat = rank_by_taxonomy(["a", "b"], [(ds.name, ("n02085620", "n04133789")), (ds.name, ("n04133789",))], task)
    assert dog_cat.scores[0] > dog_cat.scores[1]  # a task sharing the Chihuahua is nearer than a sandal alone
    (tmp_path / "bad" / "train" / "dog").mkdir(parents=True)
    (tmp_path / "bad" / "val").mkdir()
    write_imagefolder(tmp_path / "bad" / "train", {"dog": 2, "cat": 2})
    write_imagefolder(tmp_path / "bad" / "val", {"dog": 1, "cat": 1})
    with pytest.raises(UsageError, match="class folder 'cat' is not a WordNet id"):
        get_dataset(f"imagenet:{tmp_path / 'bad'}")


def test_crop_pct_and_bicubic_follow_the_input_spec(tmp_path: Path) -> None:
    x = torch.zeros(1, 1, 40, 60, dtype=torch.uint8)
    x[:, :, 10:30, 10:50] = 200  # a bright box in the middle
    plain = fit_images(x, 32, "resize-crop")
    cropped = fit_images(x, 32, "resize-crop", crop_pct=0.5)  # shorter side to 64, then the central 32
    assert plain.shape == cropped.shape == (1, 1, 32, 32)
    assert cropped.float().mean() > plain.float().mean()  # zoomed into the box
    assert not torch.equal(fit_images(x, 32, "resize", interpolation="bicubic"), fit_images(x, 32, "resize"))
    spec = InputSpec(3, 64, (0.5,) * 3, (0.25,) * 3)
    assert "crop_pct" not in spec.to_dict() and "interpolation" not in spec.to_dict()  # older ids unchanged
    timm_like = InputSpec(3, 64, (0.5,) * 3, (0.25,) * 3, 0.875, "bicubic")
    assert InputSpec.from_dict(timm_like.to_dict()) == timm_like
    with pytest.raises(ValueError, match="interpolation"):
        InputSpec(3, 64, (0.5,) * 3, (0.25,) * 3, 0.875, "lanczos")
