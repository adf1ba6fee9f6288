"""The paper's 14 in-domain downstream datasets, built from torchvision with the paper's splits.

Nothing here downloads unless ``download=True`` is passed to ``load_paper_dataset``; a missing dataset raises
``FileNotFoundError`` naming the folder searched and the two ways to fill it. ``load_paper_dataset`` returns a torch
``Dataset`` of ``(image, label)`` pairs (a PIL RGB image unless a ``transform`` says otherwise, an ``int`` label) with
``classes``, ``targets`` and ``name``; ``nmtune_lib.image_sets.to_image_set`` turns one (or a seeded subset of one)
into the in-memory ``nmtune_lib.data.ImageSet`` so the in-memory pipeline runs on it. ``per_class_split`` is the
seeded per-class split used here (and by ``nmtune_lib.data.image_folders`` for DomainNet without split files).

The 14 in-domain datasets of docs/paper.md §4 (``PAPER_ID_DATASETS``; C = number of classes; the on-disk folder is
relative to ``root``):

============== ========================= =========================================== ==== =============== ==================================
name           torchvision class         our "train" / "test"                        C    N train / test  folder under ``root``
============== ========================= =========================================== ==== =============== ==================================
cifar10        CIFAR10                   train=True / train=False                    10   50,000 / 10,000 cifar-10-batches-py/
cifar100       CIFAR100                  train=True / train=False                    100  50,000 / 10,000 cifar-100-python/
food101        Food101                   split="train" / "test"                      101  75,750 / 25,250 food-101/
flowers102     Flowers102                split="train" / "test" (train only, no val) 102  1,020 / 6,149   flowers-102/
oxford_pets    OxfordIIITPet             split="trainval" / "test"                   37   3,680 / 3,669   oxford-iiit-pet/
stanford_cars  StanfordCars              split="train" / "test"                      196  8,144 / 8,041   stanford_cars/ (no download)
fgvc_aircraft  FGVCAircraft              split="train" / "test", variant level       100  3,334 / 3,333   fgvc-aircraft-2013b/
dtd            DTD                       split="train" / "test", partition=1         47   1,880 / 1,880   dtd/dtd/
svhn           SVHN                      split="train" / "test"                      10   73,257 / 26,032 svhn/{train,test}_32x32.mat
caltech101     Caltech101                no official split: seeded, 30 a class train 101  3,030 / 5,647   caltech101/101_ObjectCategories/
eurosat        EuroSAT                   no split: seeded stratified 80 / 20         10   21,600 / 5,400  eurosat/2750/
pcam           PCAM                      split="train" / "test"                      2    262,144/32,768  pcam/*.h5
resisc45       ImageFolder (not in tv)   seeded stratified 80 / 20                   45   25,200 / 6,300  resisc45/<class>/*.jpg
rendered_sst2  RenderedSST2              split="train" / "test"                      2    6,920 / 1,821   rendered-sst2/
============== ========================= =========================================== ==== =============== ==================================

Differences from the reference code, which took caltech101, eurosat, svhn, resisc45 and pcam from VTAB (TFDS) with
its "trainval" / "test" splits [code]: VTAB's Caltech-101 keeps the background class (102 classes, 30 a class
= 3,060 train) where torchvision drops ``BACKGROUND_Google``; VTAB's EuroSAT and RESISC45 80 / 20 splits follow TFDS
file order rather than our seeded stratified draw (same sizes); VTAB's PCAM "trainval" adds the 32,768 validation
patches to the training set. Our seeded splits use ``SPLIT_SEED`` (fixed: part of the dataset definition) and are
drawn per class in the sorted file order, so the same files always give the same split.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from .image_sets import to_rgb

SPLITS = ("train", "test")
SPLIT_SEED = 0  # fixed: the seeded splits below are part of the dataset definitions


@dataclass(frozen=True)
class PaperDatasetSpec:
    """How one in-domain dataset is built from torchvision.

    ``split_kwargs[split]`` are the constructor arguments of ``torchvision.datasets.<tv_class>`` for our split; the
    torchvision root is ``root / subdir``. Datasets without an official split are loaded whole and split per class
    with ``SPLIT_SEED``: ``train_per_class`` images a class for training (Caltech-101), or a ``train_fraction`` of
    each class (EuroSAT, RESISC45). ``required[split]`` is the path under ``root`` that must exist before anything is
    constructed (so that a missing dataset never triggers a download or creates folders).
    """

    name: str
    tv_class: str
    num_classes: int
    split_kwargs: Mapping[str, Mapping[str, Any]]
    required: Mapping[str, str]
    subdir: str = ""
    train_per_class: int | None = None
    train_fraction: float | None = None
    downloadable: bool = True
    class_names: tuple[str, ...] | None = None
    note: str = ""

    @property
    def seeded_split(self) -> bool:
        return self.train_per_class is not None or self.train_fraction is not None


def _spec(name, tv_class, num_classes, train, test, required, **extra) -> PaperDatasetSpec:
    req = required if isinstance(required, dict) else {"train": required, "test": required}
    return PaperDatasetSpec(name, tv_class, num_classes, {"train": train, "test": test}, req, **extra)


PAPER_ID_DATASETS: dict[str, PaperDatasetSpec] = {s.name: s for s in (
    _spec("cifar10", "CIFAR10", 10, {"train": True}, {"train": False}, "cifar-10-batches-py"),
    _spec("cifar100", "CIFAR100", 100, {"train": True}, {"train": False}, "cifar-100-python"),
    _spec("food101", "Food101", 101, {"split": "train"}, {"split": "test"}, "food-101"),
    _spec("flowers102", "Flowers102", 102, {"split": "train"}, {"split": "test"}, "flowers-102",
          note="train split only (1,020 images), not train+val [code]"),
    _spec("oxford_pets", "OxfordIIITPet", 37, {"split": "trainval", "target_types": "category"},
          {"split": "test", "target_types": "category"}, "oxford-iiit-pet"),
    _spec("stanford_cars", "StanfordCars", 196, {"split": "train"}, {"split": "test"},
          {"train": "stanford_cars/devkit", "test": "stanford_cars/cars_test_annos_withlabels.mat"},
          downloadable=False,
          note="torchvision cannot download it (broken URL): place stanford_cars/{devkit,cars_train,cars_test,"
               "cars_test_annos_withlabels.mat} under root, e.g. from the Kaggle mirror"),
    _spec("fgvc_aircraft", "FGVCAircraft", 100, {"split": "train", "annotation_level": "variant"},
          {"split": "test", "annotation_level": "variant"}, "fgvc-aircraft-2013b",
          note="train split only (3,334 images), 100 variants [code]"),
    _spec("dtd", "DTD", 47, {"split": "train", "partition": 1}, {"split": "test", "partition": 1}, "dtd/dtd",
          note="partition 1 [code]"),
    _spec("svhn", "SVHN", 10, {"split": "train"}, {"split": "test"},
          {"train": "svhn/train_32x32.mat", "test": "svhn/test_32x32.mat"}, subdir="svhn",
          class_names=tuple(str(i) for i in range(10)), note="cropped digits; no 'extra' split"),
    _spec("caltech101", "Caltech101", 101, {"target_type": "category"}, {"target_type": "category"},
          "caltech101/101_ObjectCategories", train_per_class=30,
          note="no official split: seeded 30 images a class for train, the rest for test; BACKGROUND_Google "
               "dropped by torchvision (VTAB keeps it: 102 classes); download needs gdown"),
    _spec("eurosat", "EuroSAT", 10, {}, {}, "eurosat/2750", train_fraction=0.8,
          note="no split in torchvision: seeded stratified 80 / 20 (VTAB's sizes)"),
    _spec("pcam", "PCAM", 2, {"split": "train"}, {"split": "test"},
          {"train": "pcam/camelyonpatch_level_2_split_train_x.h5",
           "test": "pcam/camelyonpatch_level_2_split_test_x.h5"},
          class_names=("normal", "metastatic"),
          note="torchvision's train split (VTAB's trainval adds the validation patches); needs h5py, download "
               "needs gdown"),
    _spec("resisc45", "ImageFolder", 45, {}, {}, "resisc45", subdir="resisc45", train_fraction=0.8,
          downloadable=False,
          note="not in torchvision: extract NWPU-RESISC45 so that root/resisc45/<class>/*.jpg (45 class folders, "
               "700 images each); seeded stratified 80 / 20 (VTAB's sizes)"),
    _spec("rendered_sst2", "RenderedSST2", 2, {"split": "train"}, {"split": "test"},
          {"train": "rendered-sst2/train", "test": "rendered-sst2/test"}),
)}


# --- datasets -----------------------------------------------------------------------------------------------------

class SplitDataset(Dataset):
    """``(image, label)`` pairs of a torchvision dataset, restricted to ``indices`` where the split is ours.

    Images pass through ``to_rgb`` and then ``transform``; ``targets`` (a list of int labels) is read from the base
    dataset's label attributes without decoding images where torchvision keeps them.
    """

    def __init__(self, base: Dataset, classes: Sequence[str], name: str, indices: np.ndarray | None = None,
                 transform: Callable | None = None) -> None:
        self.base = base
        self.classes = tuple(str(c) for c in classes)
        self.name = name
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self._targets: list[int] | None = None

    def __len__(self) -> int:
        return len(self.base) if self.indices is None else len(self.indices)

    def __getitem__(self, i: int):
        j = i if self.indices is None else int(self.indices[i])
        image, label = self.base[j]
        image = to_rgb(image)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(label)

    @property
    def targets(self) -> list[int]:
        if self._targets is None:
            labels = _base_labels(self.base)
            if labels is None:  # no label attribute: read them item by item (decodes every image once)
                labels = [int(self.base[j][1]) for j in range(len(self.base))]
            self._targets = labels if self.indices is None else [labels[j] for j in self.indices]
        return self._targets


def _base_labels(base) -> list[int] | None:
    """Labels of a torchvision dataset from its attributes (public or not), or None where it keeps none."""
    for attr in ("targets", "labels", "_labels", "y"):
        values = getattr(base, attr, None)
        if values is not None:
            return [int(v) for v in values]
    samples = getattr(base, "_samples", None)
    if samples is not None:
        return [int(s[1]) for s in samples]
    if type(base).__name__ == "PCAM":  # labels live in their own small h5 file
        try:
            import h5py

            targets_file = base._base_folder / base._FILES[base._split]["targets"][0]
            with h5py.File(targets_file) as fh:
                return [int(v) for v in np.asarray(fh["y"]).reshape(-1)]
        except (AttributeError, KeyError, OSError):
            return None
    return None


def per_class_split(labels: Sequence[int] | np.ndarray, *, train_per_class: int | None = None,
                    train_fraction: float | None = None, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split of sample indices into (train, test), each sorted.

    Each class's indices are permuted by one ``numpy`` generator seeded with ``seed`` (classes in ascending order);
    the first ``train_per_class`` of them, or ``round(train_fraction · n_class)`` of them, go to train and the rest
    to test. A class of two or more images always keeps at least one test image.
    """
    if (train_per_class is None) == (train_fraction is None):
        raise ValueError("give exactly one of train_per_class and train_fraction")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, test = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for c in np.unique(labels):
        index = np.flatnonzero(labels == c)
        index = index[rng.permutation(len(index))]
        k = train_per_class if train_per_class is not None else int(np.floor(train_fraction * len(index) + 0.5))
        k = min(k, len(index) - 1) if len(index) > 1 else len(index)
        train.append(index[:k])
        test.append(index[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _resolve_root(root) -> Path:
    if root is None:
        if not os.environ.get("NMTUNE_DATA"):
            raise ValueError("give root (the folder holding the datasets) or set $NMTUNE_DATA")
        root = os.environ["NMTUNE_DATA"]
    return Path(root).expanduser()


def _missing_message(spec: PaperDatasetSpec, split: str, root: Path, path: Path) -> str:
    how = (f"load_paper_dataset({spec.name!r}, {split!r}, root={str(root)!r}, download=True) with internet access"
           if spec.downloadable else "a manual download (torchvision cannot fetch it)")
    return (f"{spec.name} ({split}) not found: {path} does not exist (searched root {root}). Get it with {how}, or "
            f"place the files yourself in torchvision's layout so that {path} exists."
            + (f" Note: {spec.note}." if spec.note else ""))


def load_paper_dataset(name: str, split: str, root: str | os.PathLike | None, *, transform: Callable | None = None,
                       download: bool = False) -> SplitDataset:
    """Split ``split`` ("train" or "test") of the in-domain dataset ``name`` (a key of ``PAPER_ID_DATASETS``).

    ``root`` is the folder holding the datasets (``None``: ``$NMTUNE_DATA``); see the module table for the folder
    each dataset expects under it. Returns a ``SplitDataset`` of ``(image, int label)``; images are PIL RGB passed
    through ``transform``. Downloads only with ``download=True`` (torchvision's downloader, into ``root``); otherwise
    a missing dataset raises ``FileNotFoundError`` naming the path searched, before torchvision is touched.
    """
    if name not in PAPER_ID_DATASETS:
        raise ValueError(f"unknown paper dataset {name!r}; known: {', '.join(PAPER_ID_DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for {name}; accepted: {', '.join(SPLITS)}")
    import torchvision.datasets as tvd

    spec = PAPER_ID_DATASETS[name]
    root = _resolve_root(root)
    required = root / spec.required[split]
    tv_root = root / spec.subdir if spec.subdir else root
    if not required.exists():
        if not download or not spec.downloadable:
            raise FileNotFoundError(_missing_message(spec, split, root, required))
        tv_root.mkdir(parents=True, exist_ok=True)
    tv_class = getattr(tvd, spec.tv_class)  # looked up at call time, so tests can replace it
    kwargs = dict(spec.split_kwargs[split])
    if spec.tv_class == "ImageFolder":
        base = tv_class(str(tv_root), **kwargs)
    else:
        try:
            base = tv_class(str(tv_root), download=download and spec.downloadable, **kwargs)
        except RuntimeError as err:  # torchvision's "Dataset not found or corrupted": an incomplete folder
            raise FileNotFoundError(_missing_message(spec, split, root, required) + f" (torchvision: {err})") from err

    classes = getattr(base, "classes", None) or getattr(base, "categories", None) or spec.class_names \
        or tuple(str(i) for i in range(spec.num_classes))
    if len(classes) != spec.num_classes:
        warnings.warn(f"{name}: found {len(classes)} classes under {tv_root}, expected {spec.num_classes} "
                      "(an incomplete copy?)", stacklevel=2)
    indices = None
    if spec.seeded_split:
        labels = _base_labels(base)
        if labels is None:
            labels = [int(base[j][1]) for j in range(len(base))]
        train, test = per_class_split(labels, train_per_class=spec.train_per_class,
                                      train_fraction=spec.train_fraction, seed=SPLIT_SEED)
        indices = train if split == "train" else test
    return SplitDataset(base, classes, f"{name}/{split}", indices, transform)
