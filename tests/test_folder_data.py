"""Pre-training on an ImageNet-style folder and transfer to a DomainNet-style suite, from disk (data.py's
``imagenet``, tasks.py's ``domainnet``): folders of real images (Fashion-MNIST test images as PNG files; the four
DomainNet domains are the suite's own renderings of them) in a temporary directory, through the whole sweep."""
from __future__ import annotations

import pytest
import torch
import xarray as xr
from PIL import Image

from conftest import nmtune_sweep
from nmtune_lib.config import StudyConfig
from nmtune_lib.data import load_dataset
from nmtune_lib.tasks import render_domain, task_suite

CLASSES = ("0_tshirt", "1_trouser", "2_pullover")


def _write(folder, images: torch.Tensor) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image[0].numpy()).save(folder / f"{i:04d}.png")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    test = load_dataset("fashion_mnist", "test")
    for c, name in enumerate(CLASSES):
        images = test.images[test.labels == c][:140]
        _write(root / "imagenet" / "train" / name, images[:80])
        _write(root / "imagenet" / "val" / name, images[80:100])
        for domain in ("real", "sketch", "painting", "clipart"):
            _write(root / "domainnet" / domain / name, render_domain(images[100:140], domain))
    return root


def test_folder_dataset_and_suite_load_at_the_configured_size(data_root):
    train = load_dataset("imagenet", "train", data_root, img_size=32)
    assert train.images.shape == (240, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.classes == CLASSES and train.labels.bincount().tolist() == [80, 80, 80]
    tasks = task_suite("domainnet", data_root=str(data_root), img_size=32)
    assert [(t.name, t.kind, t.train_domain) for t in tasks] == [("domainnet_real", "ood", "real"),
                                                                  ("domainnet_sketch", "ood", "sketch")]
    assert set(tasks[0].tests) == {"real", "sketch", "painting", "clipart"}
    # a seeded per-class 80/20 split of each domain's 40 images per class: 32 train, 8 test
    assert len(tasks[0].train) == 96 and len(tasks[0].tests["clipart"]) == 24
    assert StudyConfig.from_preset("smoke", task_suite="domainnet").ablation_task == "domainnet_real"


def test_missing_folders_are_named_before_anything_is_decoded(data_root, tmp_path):
    (tmp_path / "domainnet" / "real").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="sketch.*painting.*clipart"):
        task_suite("domainnet", data_root=str(tmp_path), img_size=28)
    with pytest.raises(ValueError, match="set data_root"):
        load_dataset("imagenet", "train", None)
    with pytest.raises(FileNotFoundError, match="imagenet/train"):
        load_dataset("imagenet", "train", tmp_path)


def test_smoke_sweep_pretrains_on_imagenet_folders_and_transfers_to_domainnet(data_root, tmp_path):
    result = nmtune_sweep(tmp_path, "--noise-ratios", "0.2", "--set", "dataset=imagenet", "--set",
                          "task_suite=domainnet", "--set", f"data_root={data_root}", timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for run in ("symmetric-0.20/seed0",):  # one run of the grid keeps the test short; the summary runs on it
        ds = xr.load_dataset(tmp_path / "smoke" / "imagenet" / run / "transfer.nc")
        assert list(ds["task"].values) == ["domainnet_real", "domainnet_sketch"]
        acc = ds["accuracy"].sel({"setting": "base", "protocol": "reference", "method": "nmtune"})
        acc = acc.isel(noise_ratio=0, seed=0)
        assert float(acc.sel(task="domainnet_real", test_domain="real")) > 1 / 3  # above chance (3 classes)
    assert (tmp_path / "smoke" / "claims.csv").exists()
