"""Full fine-tuning (nmtune_lib.transfer.finetune) and the mechanism analysis (nmtune_lib.analysis.mechanism): each
checked against what it must do on made-up data where the answer is known."""
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from conftest import nmtune_sweep

from nmtune_lib.analysis.mechanism import mechanism_table, planted_runs
from nmtune_lib.data.augment import ViewAugment, to_float
from nmtune_lib.files import atomic_torch_save, file_sha256
from nmtune_lib.pretraining.models import create_backbone
from nmtune_lib.spectrum.features import extract_features
from nmtune_lib.transfer.cost import trained_parameters
from nmtune_lib.transfer.finetune import ImageViews, fit_finetune, view_images
from nmtune_lib.transfer.views import CachedViews


class _Images:  # the fields of data.ImageSet that extract_features reads
    def __init__(self, images, name="toy"):
        self.images, self.name = images, name

    def __len__(self):
        return len(self.images)


def _separable(n=96, seed=0):
    """Two classes a small ResNet can tell apart at once: bright squares in the left or the right half."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(2, (n,), generator=gen)
    images = torch.randint(0, 40, (n, 1, 28, 28), generator=gen, dtype=torch.uint8)
    for i, y in enumerate(labels.tolist()):
        images[i, :, 8:20, (2 if y == 0 else 16):(12 if y == 0 else 26)] = 255
    return images, labels


@pytest.fixture(scope="module")
def backbone(one_torch_thread):
    torch.manual_seed(0)
    return create_backbone("resnet_tiny", num_classes=10).eval()


def test_fine_tuning_changes_the_backbone_in_memory_not_on_disk_and_learns(backbone, tmp_path):
    path = tmp_path / "backbone.pt"
    atomic_torch_save(path, {"model": backbone.state_dict()})
    before, digest = {k: v.clone() for k, v in backbone.state_dict().items()}, file_sha256(path)
    images, labels = _separable(n=192)
    augment = ViewAugment(flip=False)
    views = ImageViews(view_images(images, augment, views=2, seed=0))
    fit = fit_finetune(backbone, views, labels, num_classes=2, epochs=6, batch_size=16, lr=1e-2,
                       backbone_lr_scale=0.1, weight_decay=1e-4, seed=0)
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in before.items())  # the run's backbone: untouched
    assert file_sha256(path) == digest
    tuned = fit.head.backbone.state_dict()
    assert any(not torch.equal(tuned[k], v) for k, v in before.items() if v.is_floating_point())  # its copy: trained
    test_images, test_labels = _separable(n=200, seed=1)
    assert fit.accuracy(to_float(test_images), test_labels) >= 0.9
    assert trained_parameters(fit.head) == trained_parameters(backbone) + backbone.num_features * 2 + 2
    assert fit.method == "ft" and fit.mode == "finetune" and len(fit.history) == 6
    again = fit_finetune(backbone, views, labels, num_classes=2, epochs=6, batch_size=16, lr=1e-2,
                         backbone_lr_scale=0.1, weight_decay=1e-4, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(fit.head.state_dict().values(), again.head.state_dict().values()))
    assert [r["total"] for r in fit.history] == [r["total"] for r in again.history]  # bit for bit on a rerun


def test_fine_tuning_sees_the_views_and_minibatches_of_the_matched_heads(backbone):
    """The view images are those whose features the matched heads train on, drawn in the same order."""
    images, _ = _separable(n=300)
    augment = ViewAugment()
    imgs = view_images(images, augment, views=3, seed=5)
    feats = extract_features(backbone, _Images(images), transform=augment, views=3, seed=5, progress=False)
    with torch.inference_mode():
        again = torch.stack([backbone.pre_logits(imgs[:, k]) for k in range(3)], dim=1)
    assert torch.allclose(again, feats, atol=1e-5)
    index = torch.arange(0, 300, 7)
    a, b = ImageViews(imgs), CachedViews(feats)
    xw, xs = a(index, torch.Generator().manual_seed(3))
    fw, fs = b(index, torch.Generator().manual_seed(3))
    with torch.inference_mode():
        assert torch.allclose(backbone.pre_logits(xw), fw, atol=1e-5)
        assert torch.allclose(backbone.pre_logits(xs), fs, atol=1e-5)


def test_bad_fine_tuning_settings_are_named_before_any_training(backbone):
    images, labels = _separable(n=8)
    views = ImageViews(view_images(images, ViewAugment(), views=2, seed=0))
    with pytest.raises(ValueError, match="backbone_lr_scale=0"):
        fit_finetune(backbone, views, labels, num_classes=2, epochs=1, batch_size=4, lr=1e-2, backbone_lr_scale=0,
                     weight_decay=0.0)


def test_the_mechanism_analysis_recovers_a_planted_association_and_finds_none_where_none_was_planted():
    planted = mechanism_table({"planted": planted_runs(20.0, noise=0.5)}).iloc[0]
    expected = 20.0 * planted["within_sd"]  # points per within-ratio SD
    assert planted["ci_low"] <= expected <= planted["ci_high"] and planted["ci_low"] > 0 and planted["p_value"] < 1e-3
    null = mechanism_table({"null": planted_runs(0.0, noise=0.5)}).iloc[0]
    assert null["ci_low"] < 0 < null["ci_high"]
    # over many made-up sets without an association, the test rejects at about its level, no more
    rejected = [mechanism_table({"n": planted_runs(0.0, noise=0.5, seed=s)}).iloc[0]["p_value"] < 0.05
                for s in range(60)]
    assert np.mean(rejected) <= 0.12
    # the noise ratio's own effect on both is not an association: a metric and an accuracy that only move with the
    # ratio (no within-ratio relation) give none
    runs = planted_runs(0.0, noise=0.5)
    runs["reference_lp_id"] = 80 - 50 * runs["noise_ratio"] + np.random.default_rng(1).normal(0, 0.5, len(runs))
    confounded = mechanism_table({"c": runs}).iloc[0]
    assert confounded["ci_low"] < 0 < confounded["ci_high"]


def test_the_between_ratio_slope_is_the_slope_a_full_mechanism_predicts():
    # made-up runs in which the metric moves 0.5 per unit of noise ratio and the accuracy −20: the ratio means lie on
    # a line of −40 points per unit of the metric, whatever the seeds do within a ratio
    runs = planted_runs(0.0, noise=0.01)
    means = runs.groupby("noise_ratio")["sve_pretrain"].mean()
    runs["reference_lp_id"] = 80 - 40 * (runs["noise_ratio"].map(means) - 4.0)
    row = mechanism_table({"m": runs}).iloc[0]
    assert row["between_slope"] == pytest.approx(-40 * row["within_sd"], rel=1e-6)
    # and where the seeds follow that line too (the spectrum carries the whole effect), the within-ratio interval
    # holds it
    runs["reference_lp_id"] = 80 - 40 * (runs["sve_pretrain"] - 4.0)
    row = mechanism_table({"m": runs}).iloc[0]
    assert row["ci_low"] <= row["between_slope"] <= row["ci_high"]
    assert row["coefficient"] == pytest.approx(row["between_slope"], rel=1e-6)


def test_the_sweep_fine_tunes_under_the_matched_protocol_alone_and_records_the_cost(smoke_sweep, tmp_path):
    # the fine-tuning experiment's settings on the smoke preset: no reference protocol, no ablation, no robustness
    root = tmp_path / "runs"
    shutil.copytree(smoke_sweep, root)
    result = nmtune_sweep(root, "--set", 'methods=["lp","mlp","nmtune","ft"]', "--set", 'protocols=["matched"]',
                          "--set", "ablation=false", "--set", "robustness=[]", timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "02_pretrain ×2" in result.stdout  # the backbones are reused, not re-trained
    transfer = xr.load_dataset(root / "smoke/fashion_mnist/symmetric-0.20/seed0/transfer.nc", engine="h5netcdf")
    assert list(transfer["protocol"].values) == ["matched"]
    ft = transfer.sel({"method": "ft", "protocol": "matched", "setting": "base"})
    assert bool(ft["accuracy"].notnull().any("test_domain").all())
    for cost in ("fit_seconds", "peak_memory_mb", "trained_params"):
        assert bool((ft[cost] > 0).all()), cost
    nmtune = transfer.sel({"method": "nmtune", "protocol": "matched", "setting": "base"})
    assert bool((ft["trained_params"] > nmtune["trained_params"]).all())  # the backbone's weights are trained too
    heads = pd.read_csv(root / "smoke/heads.csv")
    assert set(heads["method"]) == {"lp", "mlp", "nmtune", "ft"} and set(heads["protocol"]) == {"matched"}
    assert {"ft-nmtune", "ft-lp"} <= set(pd.read_csv(root / "smoke/pairs.csv")["pair"])
