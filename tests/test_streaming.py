"""Pre-training streamed from disk (``config.stream``, nmtune_lib.data.streaming) on an ImageNet-style folder of real
images: scanned not decoded, the file list in the manifest, exact replay whatever the workers, resume."""
from __future__ import annotations

import json

import pytest
import torch

from nmtune_lib.pretraining.checkpoints import load_pretrained
from nmtune_lib.config import StudyConfig
from nmtune_lib.data.datasets import pretraining_data, pretraining_split
from nmtune_lib.data.noise import noisy_labels_for_run
from nmtune_lib.pretraining.pretrain import pretrain
from nmtune_lib.run import Run


def _config(data_root, run_root, **changes) -> StudyConfig:
    fields = dict(dataset="imagenet", data_root=str(data_root), stream=True, img_size=24, train_subset=0,
                  batch_size=24, epochs=8, lr=0.1, noise_ratios=[0.2], seeds=[0], loader_workers=0, device="cpu",
                  num_threads=1, run_root=str(run_root))
    return StudyConfig.from_preset("smoke", **{**fields, **changes})


def _pretrain(config: StudyConfig, stop_after: int | None = None):
    run = Run.of(config, 0.2, 0)
    train, test = pretraining_data(config)
    return run, pretrain(run, train, noisy_labels_for_run(run, train), test, stop_after=stop_after)


def test_streamed_split_is_a_scanned_file_list_recorded_in_the_manifest(folder_data_root, tmp_path):
    config = _config(folder_data_root, tmp_path)
    train, test = pretraining_data(config)
    assert train.images is None and len(train) == 240 and len(test) == 60 and train.shape == (3, 24, 24)
    assert train.labels.bincount().tolist() == [80, 80, 80]
    run = Run.of(config, 0.2, 0)
    noisy = noisy_labels_for_run(run, train)
    assert int(noisy.flipped.sum()) == 48
    manifest = json.loads(run.manifest.read_text())
    assert manifest["file_list_sha256"] == train.file_list_sha256 and manifest["dataset"] == "imagenet/train"
    assert train.subset(torch.arange(10)).file_list_sha256 != train.file_list_sha256
    # the in-memory path records the same files' hash, and a subset's own
    in_memory, _ = pretraining_data(config.replace(stream=False))
    assert in_memory.images is not None and in_memory.file_list_sha256 == train.file_list_sha256
    subset, _ = pretraining_data(config.replace(stream=False, train_subset=30))
    assert subset.file_list_sha256 == pretraining_data(config.replace(train_subset=30))[0].file_list_sha256
    assert subset.file_list_sha256 != train.file_list_sha256
    # one split alone: the same files; the subset is of the training split only
    subset_config = config.replace(train_subset=30)
    assert pretraining_split(subset_config, "train").file_list_sha256 == subset.file_list_sha256
    assert pretraining_split(subset_config, "test").file_list_sha256 == test.file_list_sha256 and len(test) == 60


@pytest.mark.filterwarnings("ignore:This DataLoader will create 2 worker processes")  # on purpose, on a pinned core
def test_streamed_pretraining_learns_and_replays_exactly_with_workers_and_after_resume(folder_data_root, tmp_path):
    run, summary = _pretrain(_config(folder_data_root, tmp_path / "a"))
    assert summary["epochs"] == 8 and summary["final_test_acc"] > 0.5  # 3 classes: chance is 1/3
    assert run.config.pretrain_key()["stream"] is True
    # two DataLoader workers: the same weights, bit for bit (augmentation seeded per sample and epoch)
    _, with_workers = _pretrain(_config(folder_data_root, tmp_path / "b", loader_workers=2))
    assert with_workers["checkpoint_sha256"] == summary["checkpoint_sha256"]
    # interrupted after one epoch, then resumed: the same weights
    _, partial = _pretrain(_config(folder_data_root, tmp_path / "c"), stop_after=1)
    assert partial["finished"] is False
    resumed_run, resumed = _pretrain(_config(folder_data_root, tmp_path / "c"))
    assert resumed["checkpoint_sha256"] == summary["checkpoint_sha256"]
    backbone, _ = load_pretrained(resumed_run)
    assert backbone.in_chans == 3 and backbone.img_size == 24


def test_streaming_is_refused_where_it_cannot_apply(folder_data_root, tmp_path):
    with pytest.raises(ValueError, match="config stream=True: expected false unless dataset is a folder dataset"):
        StudyConfig.from_preset("smoke", stream=True)
    with pytest.raises(ValueError, match="noise_kind 'instance'"):
        _config(folder_data_root, tmp_path, noise_kind="instance")
