"""ImageNet- and DomainNet-style image folders on the user's disk, as ``(image, label)`` datasets.

``imagenet_folder`` reads ``root/train/<class>/*.JPEG`` and ``root/val/<class>/*``; ``domainnet_folder`` reads
``root/<domain>/<class>/*.jpg`` with DomainNet's optional ``root/<domain>_{train,test}.txt`` split files (without
them, a seeded per-class split from ``nmtune_lib.paper_data.per_class_split``). Their class index is the position in
the sorted union of class-folder names over the splits (ImageNet) or domains (DomainNet), so indices agree across
splits and domains even when one of them lacks a class. Both return a ``FileListDataset`` (PIL RGB images through
``transform``, ``int`` labels, with ``classes``, ``targets`` and ``name``); nothing is downloaded, a missing folder
raises ``FileNotFoundError`` saying where the data should go. ``nmtune_lib.image_sets.to_image_set`` turns one into
an in-memory ``ImageSet``.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from torch.utils.data import Dataset

from .paper_data import SPLIT_SEED, SPLITS, per_class_split

DOMAINNET_DOMAINS = ("real", "sketch", "painting", "clipart", "quickdraw", "infograph")
DOMAINNET_OOD_DOMAINS = ("real", "sketch", "painting", "clipart")  # docs/paper.md §4: the four used for OOD
DOMAINNET_URL = "https://ai.bu.edu/M3SDA/"
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


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


def folder_files(name: str, split: str, root):
    """The scanned (path, label) list of split ``split`` of the folder dataset ``<root>/<name>/`` (not decoded)."""
    if not root:
        raise ValueError(f"dataset {name!r} is read from <data_root>/{name}/ ({name}-style class folders): set "
                         "data_root, e.g. --set data_root=/data")
    return imagenet_folder(Path(root).expanduser() / name, split)


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
