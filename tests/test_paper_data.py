"""Tests for nmtune_lib.data.paper_data, image_folders, image_sets on tiny folders in tmp_path (no network, no downloads)."""
from __future__ import annotations

import inspect
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from PIL import Image

from nmtune_lib.data import paper_data as pd
from nmtune_lib.data.datasets import ImageSet
from nmtune_lib.data.image_folders import FileListDataset, domainnet_classes, domainnet_folder, imagenet_folder
from nmtune_lib.data.image_sets import to_image_set

PAPER_14 = {"cifar10", "cifar100", "food101", "flowers102", "oxford_pets", "stanford_cars", "fgvc_aircraft", "dtd",
            "svhn", "caltech101", "eurosat", "pcam", "resisc45", "rendered_sst2"}


def _image(path: Path, size=(8, 8), color=(200, 10, 10), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(path)
    return path


def _class_tree(folder: Path, counts: dict[str, int], ext=".png", pattern="img_{i:03d}") -> None:
    for k, (cls, n) in enumerate(counts.items()):
        for i in range(n):
            _image(folder / cls / f"{pattern.format(i=i + 1)}{ext}", color=(20 * k, 5 * i, 100))


@pytest.fixture
def no_torchvision(monkeypatch):
    """Replace every torchvision class of the registry with one that fails if constructed at all."""
    def forbidden(*args, **kwargs):
        raise AssertionError(f"torchvision dataset constructed (download={kwargs.get('download')})")
    for spec in pd.PAPER_ID_DATASETS.values():
        monkeypatch.setattr(tvd, spec.tv_class, forbidden)


# --- registry -------------------------------------------------------------------------------------------------------

def test_registry_covers_exactly_the_14_paper_datasets():
    assert set(pd.PAPER_ID_DATASETS) == PAPER_14
    assert len(pd.PAPER_ID_DATASETS) == 14
    for name, spec in pd.PAPER_ID_DATASETS.items():
        assert spec.name == name
        tv_class = getattr(tvd, spec.tv_class)
        signature = inspect.signature(tv_class)
        for split in pd.SPLITS:
            signature.bind("root", **spec.split_kwargs[split])  # arguments valid for torchvision 0.29
            assert spec.required[split]
        assert spec.seeded_split == (name in {"caltech101", "eurosat", "resisc45"})


def test_registry_splits_and_class_counts():
    specs = pd.PAPER_ID_DATASETS
    assert specs["flowers102"].split_kwargs["train"] == {"split": "train"}
    assert specs["oxford_pets"].split_kwargs["train"]["split"] == "trainval"
    assert specs["fgvc_aircraft"].split_kwargs["train"] == {"split": "train", "annotation_level": "variant"}
    assert specs["dtd"].split_kwargs["test"] == {"split": "test", "partition": 1}
    assert specs["caltech101"].train_per_class == 30
    counts = {name: spec.num_classes for name, spec in specs.items()}
    assert counts == {"cifar10": 10, "cifar100": 100, "food101": 101, "flowers102": 102, "oxford_pets": 37,
                      "stanford_cars": 196, "fgvc_aircraft": 100, "dtd": 47, "svhn": 10, "caltech101": 101,
                      "eurosat": 10, "pcam": 2, "resisc45": 45, "rendered_sst2": 2}
    for name in PAPER_14:  # the module docstring's table lists every dataset
        assert f"\n{name} " in pd.__doc__


def test_unknown_name_and_split():
    with pytest.raises(ValueError, match="known: cifar10, .*rendered_sst2"):
        pd.load_paper_dataset("imagenet21k", "train", "/nonexistent")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        pd.load_paper_dataset("dtd", "val", "/nonexistent")


@pytest.mark.parametrize("name", sorted(PAPER_14))
def test_missing_dataset_raises_before_torchvision(name, tmp_path, no_torchvision):
    with pytest.raises(FileNotFoundError) as info:
        pd.load_paper_dataset(name, "test", tmp_path)
    message = str(info.value)
    assert str(tmp_path / pd.PAPER_ID_DATASETS[name].required["test"]) in message
    assert "download=True" in message or "manual download" in message
    assert list(tmp_path.iterdir()) == []  # nothing created


@pytest.mark.parametrize("name", ["stanford_cars", "resisc45"])
def test_download_true_on_undownloadable_raises(name, tmp_path, no_torchvision):
    with pytest.raises(FileNotFoundError, match="manual download"):
        pd.load_paper_dataset(name, "train", tmp_path, download=True)


def test_download_flag_reaches_torchvision_only_when_asked(tmp_path, monkeypatch):
    calls = []

    class FakeCIFAR10(torch.utils.data.Dataset):
        def __init__(self, root, train=True, download=False):
            calls.append((root, train, download))
            self.classes, self.targets = [f"c{i}" for i in range(10)], [0, 3]

        def __len__(self):
            return 2

    monkeypatch.setattr(tvd, "CIFAR10", FakeCIFAR10)
    with pytest.raises(FileNotFoundError):
        pd.load_paper_dataset("cifar10", "train", tmp_path)
    assert calls == []
    ds = pd.load_paper_dataset("cifar10", "test", tmp_path, download=True)
    assert calls == [(str(tmp_path), False, True)]
    assert ds.targets == [0, 3] and len(ds.classes) == 10 and ds.name == "cifar10/test"


def test_root_from_environment(tmp_path, monkeypatch, no_torchvision):
    monkeypatch.setenv("NMTUNE_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "dtd" / "dtd"))):
        pd.load_paper_dataset("dtd", "train", None)


# --- torchvision-backed entries on fake layouts ---------------------------------------------------------------------

def test_dtd_on_fake_layout(tmp_path):
    data = tmp_path / "dtd" / "dtd"
    lines = {"train": [], "test": []}
    for k, cls in enumerate(["banded", "zigzagged"]):
        for i in range(4):
            _image(data / "images" / cls / f"{cls}_{i:04d}.jpg", size=(10, 7), color=(50 * k, 0, 0))
            lines["train" if i < 2 else "test"].append(f"{cls}/{cls}_{i:04d}.jpg")
    (data / "labels").mkdir()
    for split, rows in lines.items():
        (data / "labels" / f"{split}1.txt").write_text("\n".join(rows) + "\n")
    with pytest.warns(UserWarning, match="found 2 classes .* expected 47"):
        train = pd.load_paper_dataset("dtd", "train", tmp_path, transform=np.asarray)
    assert len(train) == 4 and train.classes == ("banded", "zigzagged") and train.targets == [0, 0, 1, 1]
    image, label = train[2]
    assert image.shape == (7, 10, 3) and label == 1 and isinstance(label, int)


def test_caltech101_fake_layout_30_per_class_and_grayscale(tmp_path):
    cats = tmp_path / "caltech101" / "101_ObjectCategories"
    _class_tree(cats, {"BACKGROUND_Google": 2, "accordion": 32, "yin_yang": 31}, ext=".jpg",
                pattern="image_{i:04d}")
    _image(cats / "accordion" / "image_0001.jpg", mode="L", color=(90,))  # Caltech-101 has grayscale images
    with pytest.warns(UserWarning, match="expected 101"):
        train = pd.load_paper_dataset("caltech101", "train", tmp_path)
        test = pd.load_paper_dataset("caltech101", "test", tmp_path)
    assert train.classes == ("accordion", "yin_yang")
    assert np.bincount(train.targets).tolist() == [30, 30] and np.bincount(test.targets).tolist() == [2, 1]
    assert set(train.indices.tolist()).isdisjoint(test.indices.tolist())
    assert all(train[i][0].mode == "RGB" for i in range(len(train))) and test[0][0].mode == "RGB"


@pytest.mark.parametrize("name, folder", [("eurosat", "eurosat/2750"), ("resisc45", "resisc45")])
def test_seeded_80_20_split_on_fake_folder(name, folder, tmp_path):
    _class_tree(tmp_path / folder, {"AnnualCrop": 10, "Forest": 5, "River": 6})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer classes than the real dataset
        train, test, again = (pd.load_paper_dataset(name, s, tmp_path) for s in ("train", "test", "train"))
    assert np.bincount(train.targets).tolist() == [8, 4, 5] and np.bincount(test.targets).tolist() == [2, 1, 1]
    assert set(train.indices.tolist()).isdisjoint(test.indices.tolist())
    assert sorted(train.indices.tolist() + test.indices.tolist()) == list(range(21))
    assert np.array_equal(train.indices, again.indices)
    assert train.targets == [train.base.targets[i] for i in train.indices]
    images = to_image_set(train, img_size=4, max_samples=6, progress=False)
    assert images.name == f"{name}/train" and images.classes == ("AnnualCrop", "Forest", "River")
    assert images.images.shape == (6, 3, 4, 4) and torch.bincount(images.labels).tolist() == [3, 1, 2]  # proportional


def test_pcam_labels_read_from_h5_without_decoding(tmp_path):
    h5py = pytest.importorskip("h5py")
    folder = tmp_path / "pcam"
    folder.mkdir()
    x = np.random.default_rng(0).integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)
    with h5py.File(folder / "camelyonpatch_level_2_split_test_x.h5", "w") as fh:
        fh["x"] = x
    with h5py.File(folder / "camelyonpatch_level_2_split_test_y.h5", "w") as fh:
        fh["y"] = np.array([0, 1, 1, 0, 1], dtype=np.uint8).reshape(5, 1, 1, 1)
    test = pd.load_paper_dataset("pcam", "test", tmp_path)
    assert test.classes == ("normal", "metastatic") and test.targets == [0, 1, 1, 0, 1]
    image, label = test[1]
    assert np.array_equal(np.asarray(image), x[1]) and label == 1


# --- per-class split ------------------------------------------------------------------------------------------------

def test_per_class_split_sizes_determinism_and_seed():
    labels = np.repeat([0, 1, 2], [10, 3, 1])
    train, test = pd.per_class_split(labels, train_fraction=0.8, seed=0)
    assert np.bincount(labels[train], minlength=3).tolist() == [8, 2, 1]  # one image: kept in train
    assert np.bincount(labels[test], minlength=3).tolist() == [2, 1, 0]
    assert np.array_equal(np.sort(np.r_[train, test]), np.arange(14))
    again = pd.per_class_split(labels, train_fraction=0.8, seed=0)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    others = [pd.per_class_split(labels, train_fraction=0.8, seed=s)[0] for s in range(1, 6)]
    assert any(not np.array_equal(train, o) for o in others)
    train30, test30 = pd.per_class_split(labels, train_per_class=30)
    assert np.bincount(labels[test30], minlength=3).tolist() == [1, 1, 0]  # at least one test image a class
    with pytest.raises(ValueError, match="exactly one"):
        pd.per_class_split(labels)


# --- ImageNet-style folders -----------------------------------------------------------------------------------------

def test_imagenet_folder_classes_agree_across_splits(tmp_path):
    _class_tree(tmp_path / "train", {"n01": 3, "n02": 2, "n03": 2}, ext=".JPEG")
    _class_tree(tmp_path / "val", {"n01": 1, "n03": 2}, ext=".JPEG")  # val lacks n02
    train = imagenet_folder(tmp_path, "train")
    val = imagenet_folder(tmp_path, "test", transform=np.asarray)
    assert train.classes == val.classes == ("n01", "n02", "n03")
    assert train.targets == [0, 0, 0, 1, 1, 2, 2] and val.targets == [0, 2, 2]
    image, label = val[1]
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8 and label == 2
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere" / "val"))):
        imagenet_folder(tmp_path / "nowhere", "val")
    with pytest.raises(ValueError, match="unknown split"):
        imagenet_folder(tmp_path, "holdout")


# --- DomainNet-style folders ----------------------------------------------------------------------------------------

def _domainnet(root: Path) -> None:
    _class_tree(root / "real", {"cat": 5, "dog": 5}, ext=".jpg")
    _class_tree(root / "sketch", {"dog": 5, "zebra": 10}, ext=".jpg")


def test_domainnet_classes_aligned_across_domains_and_seeded_split(tmp_path):
    _domainnet(tmp_path)
    assert domainnet_classes(tmp_path) == ("cat", "dog", "zebra")
    real = {s: domainnet_folder(tmp_path, "real", s) for s in pd.SPLITS}
    sketch = {s: domainnet_folder(tmp_path, "sketch", s) for s in pd.SPLITS}
    for ds in (*real.values(), *sketch.values()):
        assert ds.classes == ("cat", "dog", "zebra")
    assert np.bincount(real["train"].targets).tolist() == [4, 4]
    assert np.bincount(sketch["train"].targets, minlength=3).tolist() == [0, 4, 8]
    assert np.bincount(sketch["test"].targets, minlength=3).tolist() == [0, 1, 2]
    for ds in (real["train"], sketch["train"]):
        assert all(ds.classes[y] == Path(p).parent.name for p, y in ds.samples)
    train_paths = {p for p, _ in sketch["train"].samples}
    assert train_paths.isdisjoint(p for p, _ in sketch["test"].samples)
    assert domainnet_folder(tmp_path, "sketch", "train").samples == sketch["train"].samples  # fixed split
    reseeded = [domainnet_folder(tmp_path, "sketch", "train", split_seed=s).samples for s in range(1, 4)]
    assert any(r != sketch["train"].samples for r in reseeded)
    image, label = sketch["test"][0]
    assert image.mode == "RGB" and image.size == (8, 8) and label == 1


def test_domainnet_split_files(tmp_path):
    _domainnet(tmp_path)
    # DomainNet's own files: paths relative to root, label = index in the full sorted class list
    (tmp_path / "real_train.txt").write_text("real/cat/img_001.jpg 0\nreal/dog/img_002.jpg 1\n"
                                             "real/dog/img_003.jpg 1\n")
    (tmp_path / "real_test.txt").write_text("real/cat/img_005.jpg 0\n\n")
    train = domainnet_folder(tmp_path, "real", "train", transform=np.asarray)
    test = domainnet_folder(tmp_path, "real", "test")
    assert [Path(p).name for p, _ in train.samples] == ["img_001.jpg", "img_002.jpg", "img_003.jpg"]
    assert train.targets == [0, 1, 1] and test.targets == [0] and len(test) == 1
    assert train[1][0].shape == (8, 8, 3)
    (tmp_path / "real_test.txt").write_text("real/dog/img_005.jpg 7\n")
    with pytest.warns(UserWarning, match="1 of 1 labels differ"):
        assert domainnet_folder(tmp_path, "real", "test").targets == [1]
    (tmp_path / "real_test.txt").write_text("real/lion/img_005.jpg 2\n")
    with pytest.raises(ValueError, match="class folder 'lion'"):
        domainnet_folder(tmp_path, "real", "test")
    (tmp_path / "real_test.txt").unlink()
    with pytest.raises(FileNotFoundError, match="real_test.txt does not"):
        domainnet_folder(tmp_path, "real", "train")


def test_domainnet_errors(tmp_path):
    _domainnet(tmp_path)
    with pytest.raises(ValueError, match="accepted: real, sketch, painting, clipart"):
        domainnet_folder(tmp_path, "photo", "train")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "painting"))):
        domainnet_folder(tmp_path, "painting", "test")
    with pytest.raises(ValueError, match="unknown split"):
        domainnet_folder(tmp_path, "real", "val")


# --- to_image_set ---------------------------------------------------------------------------------------------------

def test_to_image_set_resizes_and_centre_crops(tmp_path):
    # 16×8 image: red | green (middle 8 columns) | blue; a centre crop to 8×8 keeps only green
    stripes = np.zeros((8, 16, 3), dtype=np.uint8)
    stripes[:, :4, 0] = stripes[:, 4:12, 1] = stripes[:, 12:, 2] = 255
    (tmp_path / "a").mkdir()
    Image.fromarray(stripes).save(tmp_path / "a" / "wide.png")
    _image(tmp_path / "a" / "tall.png", size=(6, 13))
    _image(tmp_path / "b" / "gray.png", size=(20, 20), mode="L", color=(77,))
    ds = FileListDataset([(str(tmp_path / "a" / "wide.png"), 0), (str(tmp_path / "a" / "tall.png"), 0),
                          (str(tmp_path / "b" / "gray.png"), 1)], ("a", "b"), "toy")
    images = to_image_set(ds, img_size=8, progress=False)
    assert isinstance(images, ImageSet) and images.name == "toy" and images.classes == ("a", "b")
    assert images.images.dtype == torch.uint8 and images.images.shape == (3, 3, 8, 8)
    assert images.labels.dtype == torch.int64 and images.labels.tolist() == [0, 0, 1]
    assert (images.images[0, 1] == 255).all() and (images.images[0, [0, 2]] == 0).all()
    assert (images.images[2] == 77).all()


def test_to_image_set_subset_is_seeded_and_stratified(tmp_path):
    _class_tree(tmp_path, {"a": 6, "b": 6, "c": 6})
    samples = [(str(p), k) for k, c in enumerate("abc") for p in sorted((tmp_path / c).iterdir())]
    ds = FileListDataset(samples, ("a", "b", "c"), "toy")
    one = to_image_set(ds, img_size=4, max_samples=6, seed=3, name="sub", progress=False)
    two = to_image_set(ds, img_size=4, max_samples=6, seed=3, name="sub", progress=False, batch_size=4)
    assert one.images.shape == (6, 3, 4, 4) and one.name == "sub"
    assert torch.equal(one.images, two.images) and torch.equal(one.labels, two.labels)
    assert torch.bincount(one.labels).tolist() == [2, 2, 2]


def test_to_image_set_accepts_tensor_datasets():
    class Floats(torch.utils.data.Dataset):
        classes = ("x", "y")

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.full((1, 5, 7), i / 4), i % 2

    images = to_image_set(Floats(), img_size=4, progress=False, name="floats")
    assert images.images.shape == (4, 3, 4, 4) and images.images.dtype == torch.uint8
    assert images.images[2].unique().tolist() == [128] and images.labels.tolist() == [0, 1, 0, 1]
    few = to_image_set(Floats(), img_size=4, max_samples=3, seed=0, progress=False, name="few")
    assert len(few) == 3  # no targets attribute: a seeded uniform subset


def test_incomplete_folder_becomes_file_not_found(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()  # present but empty: torchvision's RuntimeError, re-raised
    with pytest.raises(FileNotFoundError, match="torchvision: Dataset not found"):
        pd.load_paper_dataset("cifar10", "train", tmp_path)
