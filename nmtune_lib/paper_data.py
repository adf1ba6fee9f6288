"""Paper-scale datasets on the user's disk: the 14 in-domain datasets, ImageNet- and DomainNet-style folders.

Nothing here downloads unless ``download=True`` is passed to ``load_paper_dataset``; a missing dataset raises
``FileNotFoundError`` naming the folder searched and the two ways to fill it. Every loader returns a torch
``Dataset`` of ``(image, label)`` pairs (a PIL RGB image unless a ``transform`` says otherwise, an ``int`` label) with
``classes``, ``targets`` and ``name``; ``to_image_set`` turns one (or a seeded subset of one) into the in-memory
``nmtune_lib.data.ImageSet`` so the in-memory pipeline runs on it.

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

Folder loaders: ``imagenet_folder`` (``root/train/<class>/*.JPEG``, ``root/val/<class>/*``) and ``domainnet_folder``
(``root/<domain>/<class>/*.jpg`` with DomainNet's optional ``root/<domain>_{train,test}.txt`` split files). Their class
index is the position in the sorted union of class-folder names over the splits (ImageNet) or domains (DomainNet),
so indices agree across splits and domains even when one of them lacks a class.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from nmtune_lib.data import ImageSet, stratified_subset

SPLITS = ("train", "test")
SPLIT_SEED = 0  # fixed: the seeded splits below are part of the dataset definitions
DOMAINNET_DOMAINS = ("real", "sketch", "painting", "clipart", "quickdraw", "infograph")
DOMAINNET_OOD_DOMAINS = ("real", "sketch", "painting", "clipart")  # docs/paper.md §4: the four used for OOD
DOMAINNET_URL = "https://ai.bu.edu/M3SDA/"
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


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

def _to_rgb(image):
    """PIL images to RGB (Caltech-101 has grayscale ones; torchvision returns them as they are); others unchanged."""
    if hasattr(image, "convert") and getattr(image, "mode", "RGB") != "RGB":
        return image.convert("RGB")
    return image


class SplitDataset(Dataset):
    """``(image, label)`` pairs of a torchvision dataset, restricted to ``indices`` where the split is ours.

    Images pass through ``_to_rgb`` and then ``transform``; ``targets`` (a list of int labels) is read from the base
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
        image = _to_rgb(image)
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


class FileListDataset(Dataset):
    """``(image, label)`` pairs from a list of ``(path, label)``: PIL RGB images through ``transform``."""

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str], name: str,
                 transform: Callable | None = None) -> None:
        self.samples = list(samples)
        self.classes = tuple(classes)
        self.name = name
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from torchvision.datasets.folder import default_loader

        path, label = self.samples[i]
        image = default_loader(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]


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


# --- image folders ------------------------------------------------------------------------------------------------

def _class_dirs(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else set()


def _scan(folder: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    from torchvision.datasets.folder import make_dataset

    return make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)


def imagenet_folder(root: str | os.PathLike, split: str, transform: Callable | None = None) -> FileListDataset:
    """An ImageNet-style tree: ``root/train/<class>/*.JPEG`` and ``root/val/<class>/*`` ("test" reads ``val``).

    The class index is the position in the sorted union of the class folders of ``train`` and ``val``, so both
    splits agree even if one lacks a class. Raises ``FileNotFoundError`` if the split's folder or its images are
    missing (the validation images must be sorted into class folders first).
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; accepted: train, val, test (= val)")
    root = Path(root).expanduser()
    folder = root / ("train" if split == "train" else "val")
    if not folder.is_dir():
        raise FileNotFoundError(f"ImageNet-style {split} folder {folder} not found. Expected layout: "
                                f"{root}/train/<class>/*.JPEG and {root}/val/<class>/*.JPEG (ImageNet's flat val "
                                "folder sorted into class folders, e.g. with its devkit labels).")
    classes = sorted(_class_dirs(root / "train") | _class_dirs(root / "val"))
    samples = _scan(folder, {c: i for i, c in enumerate(classes)})
    if not samples:
        raise FileNotFoundError(f"no images ({', '.join(IMG_EXTENSIONS)}) in the class folders of {folder}")
    return FileListDataset(samples, classes, f"{root.name}/{split}", transform)


def domainnet_classes(root: str | os.PathLike) -> tuple[str, ...]:
    """The sorted union of class-folder names over the DomainNet domains present under ``root``."""
    root = Path(root).expanduser()
    return tuple(sorted(set().union(*(_class_dirs(root / d) for d in DOMAINNET_DOMAINS))))


def domainnet_folder(root: str | os.PathLike, domain: str, split: str, transform: Callable | None = None, *,
                     test_fraction: float = 0.2, split_seed: int = SPLIT_SEED) -> FileListDataset:
    """Split ``split`` ("train"/"test") of one DomainNet-style domain: ``root/<domain>/<class>/*.jpg``.

    With both of DomainNet's split files ``root/<domain>_train.txt`` and ``root/<domain>_test.txt`` (lines
    ``<domain>/<class>/<file> <label>``, paths relative to ``root``) the split is theirs; without them, a fixed
    per-class seeded split keeps ``1 - test_fraction`` of each class for train (``per_class_split``). Labels are the
    position of the image's class folder in ``domainnet_classes(root)``, shared by all domains; a split file whose
    label column disagrees with that index gets a warning (the folder name wins).
    """
    if domain not in DOMAINNET_DOMAINS:
        raise ValueError(f"unknown DomainNet domain {domain!r}; accepted: {', '.join(DOMAINNET_DOMAINS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; accepted: {', '.join(SPLITS)}")
    root = Path(root).expanduser()
    folder = root / domain
    if not folder.is_dir():
        raise FileNotFoundError(f"DomainNet domain folder {folder} not found. Download {domain}.zip (and the "
                                f"{domain}_train.txt / {domain}_test.txt split files) from {DOMAINNET_URL} and "
                                f"extract it under {root}, so that {folder}/<class>/*.jpg exists.")
    classes = domainnet_classes(root)
    class_to_idx = {c: i for i, c in enumerate(classes)}
    split_files = {s: root / f"{domain}_{s}.txt" for s in SPLITS}
    present = [s for s, p in split_files.items() if p.is_file()]
    name = f"domainnet_{domain}/{split}"
    if len(present) == 1:
        missing = split_files["test" if present == ["train"] else "train"]
        raise FileNotFoundError(f"{split_files[present[0]]} exists but {missing} does not: give both split files "
                                "or neither (then a seeded 80/20 split is drawn)")
    if present:
        samples = _read_split_file(split_files[split], root, class_to_idx)
    else:
        all_samples = _scan(folder, class_to_idx)
        if not all_samples:
            raise FileNotFoundError(f"no images ({', '.join(IMG_EXTENSIONS)}) in the class folders of {folder}")
        train, test = per_class_split([y for _, y in all_samples], train_fraction=1.0 - test_fraction,
                                      seed=split_seed)
        samples = [all_samples[i] for i in (train if split == "train" else test)]
    return FileListDataset(samples, classes, name, transform)


def _read_split_file(path: Path, root: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    samples, disagree = [], 0
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{line_no}: expected 'relative/path label', got {line!r}")
        rel, file_label = parts
        class_name = Path(rel).parent.name
        if class_name not in class_to_idx:
            raise ValueError(f"{path}:{line_no}: class folder {class_name!r} of {rel} not found under {root}")
        label = class_to_idx[class_name]
        disagree += int(file_label) != label
        samples.append((str(root / rel), label))
    if disagree:
        warnings.warn(f"{path}: {disagree} of {len(samples)} labels differ from the sorted class-folder index; "
                      "using the class-folder index (shared by all domains)", stacklevel=3)
    return samples


# --- in-memory image sets -----------------------------------------------------------------------------------------

class _Resized(Dataset):
    """Item ``indices[i]`` of ``dataset`` as a uint8 3×S×S tensor (shorter side resized to S, centre crop)."""

    def __init__(self, dataset: Dataset, indices: torch.Tensor, img_size: int) -> None:
        self.dataset, self.indices, self.img_size = dataset, indices, img_size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, label = self.dataset[int(self.indices[i])]
        return _square_uint8(image, self.img_size), int(label)


def _square_uint8(image, img_size: int) -> torch.Tensor:
    """A PIL image or a C×H×W tensor (uint8, or float in [0, 1]) → uint8 3×S×S: resize shorter side, centre crop."""
    import torchvision.transforms.functional as TF

    if isinstance(image, torch.Tensor):
        if image.ndim == 2:
            image = image.unsqueeze(0)
        if image.dtype != torch.uint8:
            image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
    else:
        image = _to_rgb(image)
    image = TF.resize(image, img_size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    image = TF.center_crop(image, [img_size, img_size])
    if not isinstance(image, torch.Tensor):
        image = TF.pil_to_tensor(image)
    return image.contiguous()


def to_image_set(dataset: Dataset, *, img_size: int, max_samples: int | None = None, seed: int = 0,
                 name: str | None = None, classes: Sequence[str] | None = None, num_workers: int = 0,
                 batch_size: int = 256, progress: bool = True) -> ImageSet:
    """Materialise ``dataset`` (or a seeded subset of at most ``max_samples``) as an in-memory ``ImageSet``.

    Images (PIL, or tensors in uint8 or float [0, 1]) become uint8 3×``img_size``×``img_size``: the shorter side is
    resized to ``img_size`` (bilinear, antialiased) and the centre cropped. The subset is class-stratified when the
    dataset exposes ``targets`` (``nmtune_lib.data.stratified_subset``), otherwise uniform, both seeded by ``seed``
    and kept in dataset order. ``classes`` defaults to ``dataset.classes``. ``num_workers`` > 0 decodes in
    ``DataLoader`` worker processes; ``progress`` shows a tqdm.auto bar.
    """
    from tqdm.auto import tqdm

    n = len(dataset)
    index = torch.arange(n)
    if max_samples is not None and max_samples < n:
        index = _subset_index(dataset, max_samples, seed)
    loader = DataLoader(_Resized(dataset, index, img_size), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers)
    name = name or getattr(dataset, "name", type(dataset).__name__)
    images, labels = [], []
    for x, y in tqdm(loader, desc=f"to_image_set {name}", total=len(loader), disable=not progress):
        images.append(x)
        labels.append(y)
    images_t = torch.cat(images) if images else torch.zeros(0, 3, img_size, img_size, dtype=torch.uint8)
    labels_t = torch.cat(labels).to(torch.int64) if labels else torch.zeros(0, dtype=torch.int64)
    if classes is None:
        classes = getattr(dataset, "classes", None)
    if classes is None:
        classes = [str(i) for i in range(int(labels_t.max()) + 1 if len(labels_t) else 0)]
    return ImageSet(images_t, labels_t, tuple(str(c) for c in classes), name)


def _subset_index(dataset: Dataset, size: int, seed: int) -> torch.Tensor:
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        try:
            return stratified_subset(torch.as_tensor(list(targets)), size, seed)
        except ValueError:  # a class too small to stratify, or fewer samples than classes
            pass
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(len(dataset), generator=generator)[:size].sort().values
