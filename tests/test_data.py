"""Offline datasets: shapes, dtypes, label ranges, class counts, fixed splits, errors."""
import pytest
import torch

from conftest import needs_fmnist
from nmtune_lib.data.datasets import DATASETS, ImageSet, load_dataset, stratified_subset

EXPECTED = {  # name: (train N, test N, classes)
    "fashion_mnist": (60000, 10000, 10),
    "mnist5k": (4000, 1000, 10),
    "uci_digits": (1257, 540, 10),
}


@pytest.mark.parametrize("name", [pytest.param("fashion_mnist", marks=needs_fmnist), "mnist5k", "uci_digits"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_offline_dataset_shapes_and_labels(name, split):
    data = load_dataset(name, split)
    n = EXPECTED[name][0 if split == "train" else 1]
    assert data.images.shape == (n, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.labels.shape == (n,) and data.labels.dtype == torch.int64
    assert data.num_classes == EXPECTED[name][2] == len(data.labels.unique())
    assert int(data.labels.min()) == 0 and int(data.labels.max()) == 9
    counts = data.labels.bincount()
    assert counts.max() - counts.min() <= max(2, 0.15 * counts.float().mean())  # balanced (stratified) splits
    assert data.images.float().std() > 20  # real pictures, not blanks


def test_digit_splits_are_fixed_and_disjoint():
    a, b = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "train")
    assert torch.equal(a.images, b.images)
    test = load_dataset("mnist5k", "test")
    train_keys = {bytes(x.numpy()) for x in a.images[:500]}
    assert not train_keys & {bytes(x.numpy()) for x in test.images}


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError, match=", ".join(DATASETS)):
        load_dataset("cifar10", "train")
    with pytest.raises(ValueError, match="train, test"):
        load_dataset("mnist5k", "val")


def test_missing_fashion_mnist_names_every_searched_path_and_two_ways(tmp_path, monkeypatch):
    import nmtune_lib.data.datasets as data

    monkeypatch.setattr(data, "DEBIAN_FMNIST", tmp_path / "debian")
    monkeypatch.setenv("NMTUNE_DATA", str(tmp_path / "env"))
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("fashion_mnist", "train")
    message = str(err.value)
    for folder in ("env", "debian"):
        assert str(tmp_path / folder) in message
    assert "apt-get install dataset-fashion-mnist" in message and "download=True" in message


@needs_fmnist
def test_a_given_data_root_without_the_files_is_an_error_not_a_fallback(tmp_path):
    """The system copy exists (needs_fmnist), yet a data root that lacks the files must not fall back to it."""
    with pytest.raises(FileNotFoundError, match=f"data_root {tmp_path / 'nowhere'} holds neither"):
        load_dataset("fashion_mnist", "test", root=tmp_path / "nowhere")


@needs_fmnist
@pytest.mark.parametrize("damage", ["truncate", "garbage", "short_data"])
def test_a_damaged_idx_file_is_named(tmp_path, damage):
    import gzip
    import shutil

    from nmtune_lib.data.datasets import FMNIST_FILES, fashion_mnist_search_path

    source = next(p for p in fashion_mnist_search_path() if (p / FMNIST_FILES["test"][0]).is_file())
    for name in FMNIST_FILES["test"]:
        shutil.copy(source / name, tmp_path / name)
    target = tmp_path / FMNIST_FILES["test"][0]
    raw = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        target.write_bytes(b"not a gzip file at all")
    else:
        target.write_bytes(gzip.compress(gzip.decompress(raw)[:-100]))
    with pytest.raises(ValueError, match=str(target)):
        load_dataset("fashion_mnist", "test", root=tmp_path)


def test_failed_download_leaves_nothing_in_the_data_root(tmp_path, monkeypatch):
    import torchvision.datasets

    import nmtune_lib.data.datasets as data

    def broken(root, train, download):  # a network failure midway: a partial file exists
        (tmp_path / "partial.gz").parent.mkdir(exist_ok=True)
        open(f"{root}/partial.gz", "wb").write(b"xx")
        raise RuntimeError("network down")

    monkeypatch.setattr(data, "DEBIAN_FMNIST", tmp_path / "nowhere")
    monkeypatch.delenv("NMTUNE_DATA", raising=False)
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", broken)
    with pytest.raises(RuntimeError, match="network down"):
        load_dataset("fashion_mnist", "train", root=tmp_path / "root", download=True)
    assert list((tmp_path / "root").iterdir()) == []


@needs_fmnist
def test_fashion_mnist_reads_from_an_explicit_root(tmp_path):
    import shutil

    from nmtune_lib.data.datasets import DEBIAN_FMNIST, FMNIST_FILES

    for name in FMNIST_FILES["test"]:
        shutil.copy(DEBIAN_FMNIST / name, tmp_path / name)
    data = load_dataset("fashion_mnist", "test", root=tmp_path)
    assert len(data) == 10000


def test_image_set_validates_its_fields():
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64), ("a",), "x")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        ImageSet(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ("a",), "x")


def test_stratified_subset_is_balanced_and_seeded():
    labels = torch.arange(1000) % 10
    index = stratified_subset(labels, 200, seed=0)
    assert len(index) == 200 and torch.equal(labels[index].bincount(), torch.full((10,), 20))
    assert torch.equal(index, stratified_subset(labels, 200, seed=0))
