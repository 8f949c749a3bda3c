"""Dataset sources: class names, train/test splits and images fitted to a model's input size.

A source is registered with :func:`register_dataset`; :func:`get_dataset` resolves a name (or
``imagefolder:<path>``) to a :class:`Dataset`. Offline sources: ``fashion-mnist`` (Debian's
``dataset-fashion-mnist`` IDX files, or a torchvision download in the data folder), ``digits``
(scikit-learn's bundled set) and ``omniglot`` (torchvision's layout, folders or zips). Online sources
download through torchvision into the data folder: ``oxford-pets``, ``flowers-102``, ``cifar-100``,
``cifar-10``.

The data folder is ``<cache>/data`` unless ``EDGEMVP_DATA`` or an explicit argument says otherwise.
Downloads are skipped when ``EDGEMVP_OFFLINE`` or ``HF_HUB_OFFLINE`` is set.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import socket
import stat
import unicodedata
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image

from edgemvp._compat import ensure_torchvision_importable
from edgemvp.data.idx import read_idx
from edgemvp.data.transforms import Fit, fit_images
from edgemvp.errors import UsageError, unknown
from edgemvp.paths import cache_dir, read_regular

logger = logging.getLogger(__name__)

ENV_DATA = "EDGEMVP_DATA"
ENV_OMNIGLOT = "EDGEMVP_OMNIGLOT"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The folder where datasets are looked for and downloaded to.

    Args:
        explicit: Overrides ``EDGEMVP_DATA`` and the default ``<cache>/data``.
    """
    if explicit is not None:
        return Path(explicit).expanduser().resolve()
    if os.environ.get(ENV_DATA):
        return Path(os.environ[ENV_DATA]).expanduser().resolve()
    return cache_dir() / "data"


def online_allowed() -> bool:
    """False when the environment asks edgemvp to stay offline."""
    return not any(os.environ.get(var, "") not in ("", "0") for var in ("EDGEMVP_OFFLINE", "HF_HUB_OFFLINE"))


def class_key(name: str) -> str:
    """Normalise a class name for matching user input: case and punctuation are ignored."""
    return re.sub(r"[^0-9a-z]+", "", name.lower())


class ImageSplit(ABC):
    """One split of a dataset: labels in memory, images fetched on demand at a given size."""

    labels: np.ndarray  # (N,) int64 dataset labels

    def __len__(self) -> int:
        return len(self.labels)

    @abstractmethod
    def load(self, idx: np.ndarray, size: int, crop_pct: float = 1.0, interpolation: str = "bilinear"
             ) -> torch.Tensor:
        """Images ``idx`` as uint8 ``(B, C, size, size)`` (see :func:`edgemvp.data.transforms.fit_images`)."""


class ArraySplit(ImageSplit):
    """Images held as one uint8 array ``(N, H, W, C)``, fitted to the model's input size batch by batch (a
    whole fitted copy per size would not fit: CIFAR-size data at 224 px is about 7.5 GB)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, fit: Fit) -> None:
        if images.ndim == 3:
            images = images[..., None]
        if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError("images must be uint8 (N, H, W[, C]) with one label per image")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.fit = fit

    def load(self, idx: np.ndarray, size: int, crop_pct: float = 1.0, interpolation: str = "bilinear"
             ) -> torch.Tensor:
        raw = torch.from_numpy(self.images[np.asarray(idx, dtype=np.int64)]).permute(0, 3, 1, 2)
        return fit_images(raw, size, self.fit, crop_pct, interpolation).contiguous()


DECODED_MEMORY_BYTES = 256 << 20  # per process, for splits without an on-disk cache


class DecodedCache:
    """Fitted uint8 images of a file split on disk, one fixed-size slot per image (``<cache>/decoded/``).

    Decoding a 500 x 375 JPEG and fitting it to 224 px costs ~14 ms a thread; reading its 150 KB slot back
    costs a fraction of that. Slots are read and written with ``pread``/``pwrite`` (never memory-mapped), so
    loader processes share the file through the page cache and their resident memory stays bounded however
    large the data set. Every slot has a tag, ``crc32 | 1 << 32``, written after its bytes: a slot is used only
    when its tag matches its bytes, so a write cut short is decoded again, never trusted. The file is named by
    the images' identity (``source``) and the fitted size, so changed files or another size get another file.
    """

    def __init__(self, folder: Path, source: str, count: int, shape: tuple[int, int, int]) -> None:
        self.count, self.shape = count, shape
        self.slot = shape[0] * shape[1] * shape[2]
        name = hashlib.sha256(f"{source}|{shape}|{count}".encode()).hexdigest()[:24]
        self.data_path, self.tag_path = folder / f"{name}.u8", folder / f"{name}.tag"
        self._fds: tuple[int, int, int] | None = None  # (pid, data, tags): opened again in a forked worker

    def _open(self) -> tuple[int, int]:
        if self._fds is None or self._fds[0] != os.getpid():
            self.data_path.parent.mkdir(parents=True, exist_ok=True)
            data = os.open(self.data_path, os.O_RDWR | os.O_CREAT, 0o644)
            tags = os.open(self.tag_path, os.O_RDWR | os.O_CREAT, 0o644)
            if os.fstat(data).st_size != self.count * self.slot:  # new, or from an interrupted creation
                os.ftruncate(data, self.count * self.slot)  # sparse: disk is used as slots fill
            if os.fstat(tags).st_size != self.count * 8:
                os.ftruncate(tags, self.count * 8)
            self._fds = (os.getpid(), data, tags)
        return self._fds[1], self._fds[2]

    def get(self, i: int) -> torch.Tensor | None:
        data, tags = self._open()
        tag = int.from_bytes(os.pread(tags, 8, 8 * i), "little")
        if not tag >> 32:
            return None
        raw = os.pread(data, self.slot, self.slot * i)
        if len(raw) != self.slot or zlib.crc32(raw) != tag & 0xFFFFFFFF:
            return None
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(self.shape)

    def put(self, i: int, image: torch.Tensor) -> None:
        data, tags = self._open()
        raw = image.contiguous().numpy().tobytes()
        os.pwrite(data, raw, self.slot * i)
        os.pwrite(tags, (zlib.crc32(raw) | 1 << 32).to_bytes(8, "little"), 8 * i)

    def __getstate__(self) -> dict:  # file descriptors do not travel to spawned workers
        return {**self.__dict__, "_fds": None}


class FileSplit(ImageSplit):
    """Images decoded one by one (files, or a torchvision dataset), lazily, at the size asked for.

    Fitted images are kept on disk (:class:`DecodedCache`) when the split names its ``source`` (what identifies
    its images: paths, sizes and modification times) and a cache folder is writable; otherwise in a per-process
    LRU bounded by :data:`DECODED_MEMORY_BYTES`. Either way resident memory does not grow with the data set.
    """

    def __init__(self, get: Callable[[int], Image.Image], labels: np.ndarray, channels: int, fit: Fit,
                 source: str | None = None) -> None:
        self._get = get
        self.labels = np.asarray(labels, dtype=np.int64)
        self._mode = "L" if channels == 1 else "RGB"
        self.channels = channels
        self.fit = fit
        self.source = source
        self._disk: dict[tuple[int, float, str], DecodedCache | None] = {}
        self._memo: OrderedDict[tuple[int, float, str, int], torch.Tensor] = OrderedDict()
        self._memo_bytes = 0

    def _decode(self, i: int, size: int, crop_pct: float, interpolation: str) -> torch.Tensor:
        img = np.asarray(self._get(i).convert(self._mode), dtype=np.uint8)
        img = img[None] if img.ndim == 2 else img.transpose(2, 0, 1)
        return fit_images(torch.from_numpy(img.copy())[None], size, self.fit, crop_pct, interpolation)[0]

    def _cache(self, size: int, crop_pct: float, interpolation: str) -> DecodedCache | None:
        key = (size, crop_pct, interpolation)
        if key not in self._disk:
            cache = None
            if self.source is not None:
                folder = cache_dir() / "decoded"
                try:
                    cache = DecodedCache(folder, f"{self.source}|{self.fit}|{crop_pct}|{interpolation}",
                                         len(self.labels), (self.channels, size, size))
                    cache._open()
                except OSError as exc:  # read-only or full cache: decode every time, in a bounded memory
                    logger.warning("decoded-image cache unavailable (%s); decoding in memory", exc)
                    cache = None
            self._disk[key] = cache
        return self._disk[key]

    def _one(self, i: int, size: int, crop_pct: float, interpolation: str) -> torch.Tensor:
        disk = self._cache(size, crop_pct, interpolation)
        if disk is not None:
            image = disk.get(i)
            if image is None:
                image = self._decode(i, size, crop_pct, interpolation)
                try:
                    disk.put(i, image)
                except OSError as exc:
                    logger.warning("decoded-image cache not written (%s)", exc)
            return image
        key = (size, crop_pct, interpolation, i)
        if key in self._memo:
            self._memo.move_to_end(key)
            return self._memo[key]
        image = self._decode(i, size, crop_pct, interpolation)
        self._memo[key] = image
        self._memo_bytes += image.numel()
        while self._memo_bytes > DECODED_MEMORY_BYTES and len(self._memo) > 1:
            _, old = self._memo.popitem(last=False)
            self._memo_bytes -= old.numel()
        return image

    def load(self, idx: np.ndarray, size: int, crop_pct: float = 1.0, interpolation: str = "bilinear"
             ) -> torch.Tensor:
        return torch.stack([self._one(int(i), size, crop_pct, interpolation) for i in np.asarray(idx)])

    def __getstate__(self) -> dict:  # a worker starts with an empty memory LRU
        return {**self.__dict__, "_memo": OrderedDict(), "_memo_bytes": 0}


@dataclass
class Dataset:
    """A labelled image dataset with a fixed train/test split.

    Attributes:
        name: The registry name (or ``imagefolder:<path>``).
        classes: Class names in label order.
        train: Training split.
        test: Test split.
        channels: Native channels (1 grey, 3 RGB).
        hflip: Whether a mirrored image keeps its label (used by augmentation).
        hierarchy: Optional parent → classes tree (e.g. Omniglot alphabet → characters).
    """

    name: str
    classes: tuple[str, ...]
    train: ImageSplit
    test: ImageSplit
    channels: int
    hflip: bool
    hierarchy: dict[str, tuple[str, ...]] | None = None
    _keys: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._keys = {class_key(c): i for i, c in enumerate(self.classes)}

    def class_index(self, name: str) -> int:
        """Label of a class given by name (case and punctuation ignored) or by number.

        Raises:
            UsageError: When the dataset has no such class.
        """
        odd = next((ch for ch in name if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn")), None)
        if odd is not None:  # an invisible or direction-changing character would make a name read as another
            raise UsageError(f"class {name[:60]!r} holds the control or format character U+{ord(odd):04X}")
        key = class_key(name)
        if key in self._keys:
            return self._keys[key]
        shown = ", ".join(self.classes[:12]) + (", ..." if len(self.classes) > 12 else "")
        raise UsageError(f"class '{name}' is not in dataset '{self.name}'; its classes: {shown}")


@dataclass(frozen=True)
class DatasetSource:
    """A registered dataset: how to load it and a one-line summary for ``edgemvp datasets``."""

    name: str
    summary: str
    needs_network: bool
    loader: Callable[[Path, bool], Dataset]


_SOURCES: dict[str, DatasetSource] = {}


def register_dataset(name: str, summary: str, needs_network: bool = False) -> Callable:
    """Decorator that registers ``loader(data_dir, download) -> Dataset`` under ``name``."""

    def wrap(loader: Callable[[Path, bool], Dataset]) -> Callable[[Path, bool], Dataset]:
        _SOURCES[name] = DatasetSource(name, summary, needs_network, loader)
        return loader

    return wrap


def list_datasets() -> list[DatasetSource]:
    """All registered sources (``imagefolder:<path>`` is accepted too)."""
    return sorted(_SOURCES.values(), key=lambda s: s.name)


_LOADED: dict[tuple[str, str], Dataset] = {}
IMAGEFOLDER = "imagefolder:"
IMAGENET = "imagenet:"  # an ImageNet-layout tree: train/ and val/ with one folder per wnid (torchvision, timm)
FOLDER_PREFIXES = (IMAGEFOLDER, IMAGENET)


def canonical_name(name: str) -> str:
    """The one spelling of a dataset name: ``imagefolder:<path>`` with the path absolute and normalised
    (``~`` expanded, no trailing slash, symlinks resolved), so that every spelling of a folder finds the same
    cached base, zoo and task; other names unchanged.

    Raises:
        UsageError: ``imagefolder:`` without a path.
    """
    prefix = next((p for p in FOLDER_PREFIXES if name.startswith(p)), None)
    if prefix is None:
        return name
    raw = name[len(prefix):].strip()
    if not raw:
        raise UsageError(f"{prefix} needs a path ({prefix}/data/my-images)")
    try:
        return prefix + str(Path(raw).expanduser().resolve())
    except (OSError, RuntimeError, ValueError) as exc:  # ValueError: an embedded NUL
        shown = repr(raw[:120])
        raise UsageError(f"{prefix} {shown}: not a usable path ({exc})") from exc


def get_dataset(name: str, root: str | os.PathLike[str] | None = None, download: bool | None = None) -> Dataset:
    """Load a dataset by name, memoised per (name, data folder).

    Args:
        name: A registered name or ``imagefolder:<path>``.
        root: The data folder (see :func:`data_dir`).
        download: Allow downloads; defaults to :func:`online_allowed`.

    Returns:
        The dataset.

    Raises:
        UsageError: Unknown name, missing or corrupt files (with how to get them).
    """
    folder = data_dir(root)
    name = canonical_name(name)
    key = (name, str(folder))
    if key not in _LOADED:
        allow = online_allowed() if download is None else download
        if name.startswith(IMAGEFOLDER):
            _LOADED[key] = load_imagefolder(Path(name[len(IMAGEFOLDER):]))
        elif name.startswith(IMAGENET):
            _LOADED[key] = load_imagenet(Path(name[len(IMAGENET):]))
        elif name in _SOURCES:
            _LOADED[key] = _SOURCES[name].loader(folder, allow)
        else:
            raise unknown("dataset", name, [*_SOURCES, "imagefolder:<path>", "imagenet:<path>"])
    return _LOADED[key]


@contextmanager
def _network_timeout(seconds: float = 30.0) -> Iterator[None]:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _torchvision_download(factory: Callable[[], Any], what: str, how: str) -> Any:
    """Run a torchvision dataset constructor with ``download=True``; network failures become one line."""
    try:
        with _network_timeout():
            return factory()
    except (OSError, RuntimeError) as exc:
        raise UsageError(f"{what} could not be downloaded ({exc.__class__.__name__}: {exc}); {how}") from exc


def _torchvision_datasets() -> Any:
    ensure_torchvision_importable()
    import torchvision.datasets as tvd

    return tvd


# --- Fashion-MNIST ---------------------------------------------------------------------------------

def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_fashion(folder: Path) -> Dataset:
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(_find_idx(folder, f"{prefix}-images-idx3-ubyte"))  # type: ignore[arg-type]
        labels = read_idx(_find_idx(folder, f"{prefix}-labels-idx1-ubyte"))  # type: ignore[arg-type]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or images.dtype != np.uint8:
            raise UsageError(f"{folder}: Fashion-MNIST {split} files disagree (images {images.shape}, "
                             f"labels {labels.shape})")
        if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
            raise UsageError(f"{folder}: Fashion-MNIST {split} labels out of range (max {int(labels.max())})")
        arrays[split] = ArraySplit(images, labels.astype(np.int64), fit="pad")
    return Dataset("fashion-mnist", FASHION_MNIST_CLASSES, arrays["train"], arrays["test"], channels=1, hflip=True)


def _fashion_folders(root: Path) -> list[Path]:
    return [root / "fashion-mnist", root / "FashionMNIST" / "raw", DEBIAN_FASHION_MNIST]


def _has_fashion(folder: Path) -> bool:
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
    return all(_find_idx(folder, stem) for stem in stems)


@register_dataset("fashion-mnist", "Fashion-MNIST, 10 clothing classes, 28 px grey (offline: Debian package)")
def load_fashion_mnist(root: Path, download: bool) -> Dataset:
    """Fashion-MNIST from the data folder, Debian's package, or a torchvision download."""
    folders = _fashion_folders(root)
    for folder in folders:
        if _has_fashion(folder):
            return _read_fashion(folder)
    how = ("install it: 'apt-get install dataset-fashion-mnist' on Debian (or 'make setup'), or put the four "
           f"IDX files in {folders[0]}, or run online to download it")
    if not download:
        raise UsageError(f"Fashion-MNIST not found in {', '.join(map(str, folders))}; {how}")
    tvd = _torchvision_datasets()
    for train in (True, False):
        _torchvision_download(lambda: tvd.FashionMNIST(str(root), train=train, download=True), "Fashion-MNIST", how)
    return _read_fashion(root / "FashionMNIST" / "raw")


# --- scikit-learn digits -------------------------------------------------------------------------

@register_dataset("digits", "scikit-learn's bundled 8x8 digits, 10 classes, 1,797 images (offline)")
def load_digits(root: Path, download: bool) -> Dataset:
    """scikit-learn's digits with a fixed, stratified 80/20 split (seed 0)."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    tr, te = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=0, stratify=labels)
    classes = tuple(str(c) for c in bunch.target_names)
    return Dataset("digits", classes, ArraySplit(images[tr], labels[tr], "resize"),
                   ArraySplit(images[te], labels[te], "resize"), channels=1, hflip=False)


# --- Omniglot --------------------------------------------------------------------------------------

def _omniglot_roots(root: Path) -> list[Path]:
    roots = [Path(os.environ[ENV_OMNIGLOT])] if os.environ.get(ENV_OMNIGLOT) else []
    return roots + [root / "omniglot-py", root / "omniglot"]


def _omniglot_members(root: Path) -> Iterator[tuple[str, str, str, Callable[[], bytes]]]:
    """Yield (alphabet, character, drawing file name, reader) from folders and zips named images_*."""
    for entry in sorted(root.glob("images_*")):
        if entry.is_dir():
            for png in sorted(entry.glob("*/*/*.png")):
                yield png.parts[-3], png.parts[-2], png.name, png.read_bytes
        elif entry.suffix == ".zip":
            archive = zipfile.ZipFile(entry)
            for member in sorted(archive.namelist()):
                parts = member.split("/")
                if len(parts) == 4 and parts[-1].endswith(".png"):
                    yield parts[1], parts[2], parts[3], (lambda m=member, a=archive: a.read(m))


def _read_omniglot(root: Path) -> Dataset:
    drawings: dict[str, dict[str, Callable[[], bytes]]] = {}
    for alphabet, character, name, read in _omniglot_members(root):
        drawings.setdefault(f"{alphabet}/{character}", {})[name] = read
    if not drawings:
        raise UsageError(f"{root}: no Omniglot drawings (expected images_*/<alphabet>/<character>/*.png)")
    classes = tuple(sorted(drawings))
    split: dict[str, tuple[list[np.ndarray], list[int]]] = {"train": ([], []), "test": ([], [])}
    for label, cls in enumerate(classes):
        names = sorted(drawings[cls])
        n_train = max(1, round(0.75 * len(names)))  # 15 of the 20 drawings for training, 5 for test
        for j, name in enumerate(names):
            img = np.asarray(Image.open(io.BytesIO(drawings[cls][name]())).convert("L"), dtype=np.uint8)
            images, labels = split["train" if j < n_train else "test"]
            images.append(img)
            labels.append(label)
    hierarchy: dict[str, list[str]] = {}
    for cls in classes:
        hierarchy.setdefault(cls.split("/")[0], []).append(cls)
    parts = {k: ArraySplit(np.stack(v[0]), np.array(v[1]), "resize") for k, v in split.items()}
    return Dataset("omniglot", classes, parts["train"], parts["test"], channels=1, hflip=False,
                   hierarchy={k: tuple(v) for k, v in hierarchy.items()})


@register_dataset("omniglot", "Omniglot characters (alphabet → character), 105 px grey (offline: local root)")
def load_omniglot(root: Path, download: bool) -> Dataset:
    """Omniglot in torchvision's layout: ``images_background*`` folders or zips under a root."""
    for candidate in _omniglot_roots(root):
        if candidate.is_dir() and any(candidate.glob("images_*")):
            return _read_omniglot(candidate)
    how = (f"set {ENV_OMNIGLOT} to a folder holding images_background*.zip or extracted folders, "
           "or run online to download it")
    if not download:
        raise UsageError(f"Omniglot not found in {', '.join(map(str, _omniglot_roots(root)))}; {how}")
    tvd = _torchvision_datasets()
    _torchvision_download(lambda: tvd.Omniglot(str(root), background=True, download=True), "Omniglot", how)
    return _read_omniglot(root / "omniglot-py")


# --- torchvision datasets for online users ---------------------------------------------------------

def _tv_split(ds: Any, labels: Any, channels: int) -> FileSplit:
    return FileSplit(lambda i: ds[i][0], np.asarray(labels), channels, "resize-crop")


def _online_only(name: str, download: bool, root: Path) -> None:
    if not download:
        raise UsageError(f"{name} is not in {root} and downloads are off (EDGEMVP_OFFLINE/HF_HUB_OFFLINE is set): "
                         f"run once online (torchvision downloads it there), or copy a torchvision copy of it into "
                         f"{root}, or pass --data-dir")


@register_dataset("oxford-pets", "Oxford-IIIT Pets, 37 cat and dog breeds (online: torchvision)", True)
def load_pets(root: Path, download: bool) -> Dataset:
    """Oxford-IIIT Pets: trainval for training, test for testing."""
    tvd = _torchvision_datasets()
    how = f"download it online into {root} (torchvision OxfordIIITPet)"
    make = lambda split: tvd.OxfordIIITPet(str(root), split=split, download=download)  # noqa: E731
    try:
        train, test = make("trainval"), make("test")
    except RuntimeError as exc:
        _online_only("Oxford-IIIT Pets", download, root)
        raise UsageError(f"Oxford-IIIT Pets not found in {root}; {how} ({exc})") from exc
    except OSError as exc:
        raise UsageError(f"Oxford-IIIT Pets could not be downloaded ({exc}); {how}") from exc
    return Dataset("oxford-pets", tuple(train.classes), _tv_split(train, train._labels, 3),
                   _tv_split(test, test._labels, 3), channels=3, hflip=True)


@register_dataset("flowers-102", "Oxford Flowers-102, 102 flower species (online: torchvision)", True)
def load_flowers(root: Path, download: bool) -> Dataset:
    """Flowers-102: train + val for training, test for testing."""
    tvd = _torchvision_datasets()
    how = f"download it online into {root} (torchvision Flowers102)"
    try:
        parts = {s: tvd.Flowers102(str(root), split=s, download=download) for s in ("train", "val", "test")}
    except RuntimeError as exc:
        _online_only("Flowers-102", download, root)
        raise UsageError(f"Flowers-102 not found in {root}; {how} ({exc})") from exc
    except OSError as exc:
        raise UsageError(f"Flowers-102 could not be downloaded ({exc}); {how}") from exc
    train_ds = torch.utils.data.ConcatDataset([parts["train"], parts["val"]])
    train_labels = list(parts["train"]._labels) + list(parts["val"]._labels)
    return Dataset("flowers-102", tuple(parts["test"].classes), _tv_split(train_ds, train_labels, 3),
                   _tv_split(parts["test"], parts["test"]._labels, 3), channels=3, hflip=True)


def _load_cifar(name: str, cls_name: str, root: Path, download: bool) -> Dataset:
    tvd = _torchvision_datasets()
    factory = getattr(tvd, cls_name)
    how = f"download it online into {root} (torchvision {cls_name})"
    try:
        train, test = factory(str(root), train=True, download=download), factory(str(root), train=False, download=download)
    except RuntimeError as exc:
        _online_only(name, download, root)
        raise UsageError(f"{name} not found in {root}; {how} ({exc})") from exc
    except OSError as exc:
        raise UsageError(f"{name} could not be downloaded ({exc}); {how}") from exc
    return Dataset(name, tuple(train.classes), ArraySplit(train.data, np.array(train.targets), "resize"),
                   ArraySplit(test.data, np.array(test.targets), "resize"), channels=3, hflip=True)


@register_dataset("cifar-100", "CIFAR-100, 100 classes, 32 px RGB (online: torchvision)", True)
def load_cifar100(root: Path, download: bool) -> Dataset:
    """CIFAR-100 fine labels."""
    return _load_cifar("cifar-100", "CIFAR100", root, download)


@register_dataset("cifar-10", "CIFAR-10, 10 classes, 32 px RGB (online: torchvision)", True)
def load_cifar10(root: Path, download: bool) -> Dataset:
    """CIFAR-10."""
    return _load_cifar("cifar-10", "CIFAR10", root, download)


# --- ImageFolder ------------------------------------------------------------------------------------

def _scan_tree(folder: Path) -> dict[str, list[Path]]:
    """Class folder -> its image files; a file that cannot be an image (not regular, empty, over the size
    bound) is refused here, before any training, by one ``stat`` each."""
    tree = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(f for f in sub.rglob("*") if f.suffix.lower() in _IMAGE_SUFFIXES)
        for f in files:
            try:
                st = f.stat()
            except OSError as exc:
                raise UsageError(f"image {f}: unreadable ({exc.strerror or exc})") from exc
            if not stat.S_ISREG(st.st_mode) or not 0 < st.st_size <= MAX_IMAGE_BYTES:
                what = ("not a regular file" if not stat.S_ISREG(st.st_mode) else "empty" if not st.st_size
                        else f"over {MAX_IMAGE_BYTES >> 20} MiB")
                raise UsageError(f"image {f} is {what}")
        if files:
            tree[sub.name] = files
    return tree


MAX_IMAGE_BYTES = 256 << 20


def _open_image(path: Path) -> Image.Image:
    """Decode one image file of a folder dataset (a regular file, or a link to one; bounded in bytes and pixels).

    Raises:
        UsageError: Not a regular file (a FIFO, a device), too large, or not an image PIL can decode.
    """
    try:
        raw = read_regular(path, MAX_IMAGE_BYTES, follow_symlinks=True)
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            return img
    except UsageError as exc:
        raise UsageError(f"image {exc}") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        why = exc.__class__.__name__ if isinstance(exc, Image.UnidentifiedImageError) else str(exc)[:160]
        raise UsageError(f"{path}: cannot decode image ({why})") from exc


class _FolderImages:
    """Decodes image ``i`` of a list of files (a picklable callable: loader workers may be spawned)."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __call__(self, i: int) -> Image.Image:
        return _open_image(self.files[i])


def _files_identity(files: list[Path]) -> str:
    """What identifies a file split's images: every path with its size and modification time."""
    digest = hashlib.sha256()
    for f in files:
        try:
            st = f.stat()
            digest.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        except OSError:
            digest.update(f"{f}\0missing\n".encode("utf-8", "surrogateescape"))
    return "files:" + digest.hexdigest()


def load_imagefolder(folder: Path, seed: int = 0) -> Dataset:
    """An ImageFolder tree: ``<folder>/<class>/*.jpg``, or ``train/`` and ``test/`` (or ``val/``) subtrees.

    A single tree is split per class 80/20 with a fixed seed.

    Raises:
        UsageError: When the folder is missing, has no class folders, or its splits disagree on classes.
    """
    folder = Path(canonical_name(IMAGEFOLDER + str(folder))[len(IMAGEFOLDER):])
    try:
        return _load_imagefolder(folder, seed)
    except OSError as exc:  # a name too long, a folder not readable: one line, not a traceback
        shown = str(folder) if len(str(folder)) <= 120 else str(folder)[:117] + "..."
        raise UsageError(f"imagefolder: {shown}: cannot be read ({exc.strerror or exc})") from exc


def load_imagenet(folder: Path) -> Dataset:
    """An ImageNet-layout tree (``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``, torchvision's and timm's):
    an image folder whose class names are WordNet ids, so every class is a synset (:class:`TaskSpec`).

    Raises:
        UsageError: Not that layout (no train/ and val/, or a class folder not named by a wnid).
    """
    folder = Path(canonical_name(IMAGENET + str(folder))[len(IMAGENET):])
    if not ((folder / "train").is_dir() and (folder / "val").is_dir()):
        raise UsageError(f"imagenet: {folder} needs train/ and val/ folders of wnid-named class folders")
    ds = load_imagefolder(folder)
    bad = next((c for c in ds.classes if not WNID.fullmatch(c)), None)
    if bad is not None:
        raise UsageError(f"imagenet: {folder}: class folder '{bad[:40]}' is not a WordNet id (n + 8 digits)")
    return Dataset(IMAGENET + str(folder), ds.classes, ds.train, ds.test, ds.channels, ds.hflip)


WNID = re.compile(r"n\d{8}")


def _load_imagefolder(folder: Path, seed: int) -> Dataset:
    if not folder.is_dir():
        raise UsageError(f"imagefolder: {folder} is not a folder")
    test_dir = next((folder / n for n in ("test", "val") if (folder / n).is_dir()), None)
    if (folder / "train").is_dir() and test_dir is not None:
        train_tree, test_tree = _scan_tree(folder / "train"), _scan_tree(test_dir)
        if set(train_tree) != set(test_tree):
            raise UsageError(f"imagefolder: {folder}/train and {test_dir} have different class folders")
    else:
        rng = np.random.default_rng(seed)
        train_tree, test_tree = {}, {}
        for cls, files in _scan_tree(folder).items():
            order = rng.permutation(len(files))
            n_test = max(1, round(0.2 * len(files))) if len(files) > 1 else 0
            test_tree[cls] = [files[i] for i in order[:n_test]]
            train_tree[cls] = [files[i] for i in order[n_test:]]
    if len(train_tree) < 2:
        raise UsageError(f"imagefolder: {folder} has {len(train_tree) or 'no'} class folder(s) with images; a "
                         "dataset needs at least 2 classes")
    classes = tuple(sorted(train_tree))

    def split(tree: dict[str, list[Path]]) -> FileSplit:
        files = [(f, classes.index(c)) for c in classes for f in tree.get(c, [])]
        return FileSplit(_FolderImages([f for f, _ in files]), np.array([y for _, y in files]), 3, "resize-crop",
                         source=_files_identity([f for f, _ in files]))

    return Dataset(f"imagefolder:{folder}", classes, split(train_tree), split(test_tree), channels=3, hflip=True)
