"""Pre-training on an ImageNet-style folder and transfer to a DomainNet-style suite, from disk (data.py's
``imagenet``, tasks.py's ``domainnet``): folders of real images (Fashion-MNIST test images as PNG files; the four
DomainNet domains are the suite's own renderings of them) in a temporary directory, through the whole sweep."""
from __future__ import annotations

import pytest
import torch
import xarray as xr

from conftest import FOLDER_CLASSES as CLASSES, nmtune_sweep
from nmtune_lib.config import StudyConfig
from nmtune_lib.data.datasets import load_dataset
from nmtune_lib.data.paper_data import PAPER_ID_DATASETS
from nmtune_lib.study.sweep import preflight
from nmtune_lib.transfer.tasks import IN_DOMAIN, task_suite


@pytest.fixture(scope="module")
def data_root(folder_data_root):
    return folder_data_root


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


@pytest.mark.filterwarnings("ignore:.*found 3 classes")  # fewer classes than the real datasets
def test_paper_suite_builds_the_chosen_id_and_ood_tasks_at_the_backbone_resolution(data_root):
    tasks = task_suite("paper", data_root=str(data_root), img_size=24,
                       include=("eurosat", "resisc45", "domainnet_sketch"))
    assert [(t.name, t.kind, t.train_domain) for t in tasks] == [
        ("eurosat", "id", IN_DOMAIN), ("resisc45", "id", IN_DOMAIN), ("domainnet_sketch", "ood", "sketch")]
    eurosat = tasks[0]
    assert eurosat.train.images.shape == (48, 3, 24, 24) and len(eurosat.tests[IN_DOMAIN]) == 12  # 80/20 of 60
    assert eurosat.train.classes == CLASSES and all(t.flip for t in tasks)  # flips everywhere, as the reference
    assert set(tasks[2].tests) == {"real", "sketch", "painting", "clipart"}


def test_missing_folders_are_named_before_anything_is_decoded(data_root, tmp_path):
    (tmp_path / "domainnet" / "real").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="(?s)sketch.*painting.*clipart"):
        task_suite("domainnet", data_root=str(tmp_path), img_size=28)
    with pytest.raises(ValueError, match="set data_root"):
        load_dataset("imagenet", "train", None)
    with pytest.raises(FileNotFoundError) as err:  # every missing dataset of the paper suite, with its path
        task_suite("paper", data_root=str(tmp_path), img_size=28)
    for name in PAPER_ID_DATASETS:
        assert f"\n  {name}: {tmp_path}/" in str(err.value), name
    assert str(tmp_path / "domainnet" / "clipart") in str(err.value)
    config = StudyConfig.from_preset("smoke", task_suite="paper", data_root=str(tmp_path), dataset="mnist5k",
                                     tasks=["eurosat", "domainnet_real"])
    with pytest.raises(ValueError, match=r"lacks 4 dataset\(s\).*eurosat: .*domainnet sketch") as err:
        preflight(config, {})  # what the sweep checks before any run folder is written
    assert "resisc45" not in str(err.value)
    with pytest.raises(ValueError, match="config tasks=.*names of task_suite 'paper'"):
        StudyConfig.from_preset("smoke", task_suite="paper", tasks=["cifar11"])
    with pytest.raises(ValueError, match="ablation_task='domainnet_real' is not among tasks"):
        StudyConfig.from_preset("smoke", task_suite="paper", tasks=["eurosat"])
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
