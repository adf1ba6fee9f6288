"""The two protocols of claim 4: head specs, the held-out split, the learning-rate choice, sensitivity variants, and
run_transfer end to end on a tiny frozen backbone (every protocol, setting, ablation and sensitivity head)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import xarray as xr

from nmtune_lib.config import StudyConfig
from nmtune_lib.data.datasets import load_dataset
from nmtune_lib.transfer.protocols import ABLATIONS, head_spec, holdout_split, select_lr, sensitivity_specs
from nmtune_lib.transfer.tasks import IN_DOMAIN, Task
from nmtune_lib.run import Run
from nmtune_lib.transfer.downstream import run_transfer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_reference_specs_are_the_reference_codes():
    cfg = StudyConfig.from_preset("default")
    lp, mlp, nmtune = (head_spec(cfg, m) for m in ("lp", "mlp", "nmtune"))
    assert (lp.inputs, lp.lr, lp.epochs, lp.batch_size) == ("eval", 1e-2, 30, 64)
    assert (mlp.inputs, mlp.lr, mlp.w_mse, mlp.w_cov, mlp.w_svd) == ("views", 1e-3, 0, 0, 0)
    assert (nmtune.w_mse, nmtune.w_cov, nmtune.w_svd) == (1.0, 0.04, 0.001)
    assert head_spec(cfg, "lp", inputs="views", lr=3e-3).inputs == "views"
    assert head_spec(cfg, "cov_only").w_cov == 0.04 and head_spec(cfg, "cov_only").w_mse == 0
    with pytest.raises(ValueError, match="unknown method 'svm'"):
        head_spec(cfg, "svm")


def test_sensitivity_scales_the_three_weights_together_and_adds_the_single_lambda():
    cfg = StudyConfig.from_preset("default")
    specs = sensitivity_specs(cfg)
    assert set(specs) == {"nmtune_x0.1", "nmtune_x10", "nmtune_x100", "nmtune_single0.01"}  # x1 is nmtune itself
    x10 = specs["nmtune_x10"]
    assert (x10.w_mse, x10.w_cov, x10.w_svd) == pytest.approx((10.0, 0.4, 0.01))
    single = specs["nmtune_single0.01"]
    assert (single.w_mse, single.w_cov, single.w_svd) == (0.01, 0.01, 0.01)


def test_holdout_split_is_disjoint_stratified_and_seeded():
    labels = torch.arange(10).repeat_interleave(50)
    fit, held = holdout_split(labels, 0.1, seed=3)
    assert len(held) == 50 and len(fit) == 450 and not set(fit.tolist()) & set(held.tolist())
    assert torch.equal(labels[held].bincount(), torch.full((10,), 5))
    assert torch.equal(holdout_split(labels, 0.1, seed=3)[1], held)
    assert not torch.equal(holdout_split(labels, 0.1, seed=4)[1], held)


@pytest.mark.parametrize("best", [1e-3, 1e-2])
def test_select_lr_fits_on_the_rest_and_scores_on_the_held_out_part(best):
    cfg = StudyConfig.from_preset("default")
    labels = torch.arange(5).repeat_interleave(20)
    seen = []

    def fit(spec, index):
        seen.append((spec.lr, spec.inputs, set(index.tolist())))
        return spec.lr

    def score(lr, index):
        assert not set(index.tolist()) & seen[-1][2]  # scored on samples the head never trained on
        return 1.0 if lr == best else 0.5

    chosen, accuracy = select_lr(cfg, "nmtune", fit, score, holdout_split(labels, 0.1, 0))
    assert chosen == best and sorted(accuracy) == [1e-3, 3e-3, 1e-2]
    assert [s[0] for s in seen] == [1e-3, 3e-3, 1e-2] and {s[1] for s in seen} == {"views"}
    tie, _ = select_lr(cfg, "nmtune", fit, lambda lr, index: 0.7, holdout_split(labels, 0.1, 0))
    assert tie == 1e-3  # ties go to the first candidate


class PixelBackbone(nn.Module):
    """A frozen, parameter-free backbone: 4×4-average-pooled pixels (D = 49)."""

    num_features = 49

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 4).flatten(1)


def _digit_tasks_and_config(tmp_path):
    """Two tasks sharing 400 uci_digits training images, and a smoke config with every kind of head switched on."""
    train, test = load_dataset("uci_digits", "train"), load_dataset("uci_digits", "test")
    gen = torch.Generator().manual_seed(0)
    train, test = (s.subset(torch.randperm(len(s), generator=gen)[:n]) for s, n in ((train, 400), (test, 200)))
    tasks = [Task("digits", "id", train, {IN_DOMAIN: test}, flip=False),
             Task("digits_ood", "ood", train, {"a": test, "b": test}, train_domain="a", flip=False)]
    cfg = StudyConfig.from_preset("smoke", ablation=True, ablation_task="digits_ood", robustness=["head_epochs=1"],
                                  reg_scales=[1.0, 10.0], lr_grid=[1e-3, 1e-2], head_epochs=5, run_root=str(tmp_path))
    return tasks, cfg


def test_the_config_svd_driver_reaches_every_head_and_is_checked_first(tmp_path, monkeypatch):
    from nmtune_lib.transfer import downstream as batched_tuning  # where run_transfer finds fit_heads

    with pytest.raises(ValueError, match="svd_driver='gesvdx': expected '' .*or one of gesvd, gesvdj, gesvda"):
        StudyConfig.from_preset("smoke", svd_driver="gesvdx")
    tasks, cfg = _digit_tasks_and_config(tmp_path)
    cfg = cfg.replace(svd_driver="gesvda", robustness=[])
    assert head_spec(cfg, "nmtune").fit_kwargs()["svd_driver"] == "gesvda"
    drivers = []
    fit = batched_tuning.fit_heads
    monkeypatch.setattr(batched_tuning, "fit_heads",
                        lambda *args, **kwargs: drivers.append(kwargs["svd_driver"]) or fit(*args, **kwargs))
    run_transfer(Run.of(cfg, 0.1, 0), PixelBackbone(), tasks, checkpoint_hash="x", log=lambda line: None,
                 cache=False)
    assert drivers and set(drivers) == {"gesvda"}


def test_run_transfer_fits_every_protocol_setting_and_variant(tmp_path):
    tasks, cfg = _digit_tasks_and_config(tmp_path)
    lines = []
    ds = run_transfer(Run.of(cfg, 0.1, 0), PixelBackbone(), tasks, checkpoint_hash="x", log=lines.append, cache=False)
    assert list(ds["setting"].values) == ["base", "head_epochs=1"]
    assert list(ds["protocol"].values) == ["reference", "matched"]
    acc = ds["accuracy"].isel(noise_ratio=0, seed=0)
    main = ["lp", "mlp", "nmtune"]
    assert np.isfinite(acc.sel({"setting": "base", "method": main}).sel(test_domain=IN_DOMAIN, task="digits")).all()
    assert acc.sel({"setting": "base", "method": main}).sel(task="digits", test_domain=IN_DOMAIN).min() > 0.2  # chance 0.1
    # robustness settings rerun the reference protocol only
    assert np.isnan(acc.sel({"setting": "head_epochs=1", "protocol": "matched"})).all()
    # the ablation and sensitivity heads: base setting, reference protocol, the ablation task only
    extra = [*ABLATIONS, "nmtune_x10", "nmtune_single0.01"]
    variants = acc.sel({"method": extra})
    assert np.isfinite(variants.sel(setting="base", protocol="reference", task="digits_ood", test_domain="b")).all()
    assert np.isnan(variants.sel(task="digits")).all() and np.isnan(variants.sel(protocol="matched")).all()
    lr = ds["lr"].isel(noise_ratio=0, seed=0).sel(setting="base")
    assert lr.sel({"protocol": "reference", "method": "lp"}).values.tolist() == [1e-2, 1e-2]
    assert set(lr.sel({"protocol": "matched", "method": main}).values.ravel()) <= {1e-3, 1e-2}
    modes = ds["head_mode"].isel(noise_ratio=0, seed=0).sel(setting="base", task="digits")
    assert modes.sel({"protocol": "reference", "method": "lp"}) == "eval"
    assert modes.sel({"protocol": "matched", "method": "lp"}) == "cached"
    assert ds["selection_accuracy"].sizes["candidate_lr"] == 2
    # tasks sharing a training set share their heads: nothing is fitted twice
    # one line per batch: "<task> <H> heads × <epochs> epochs (<mode>, <samples>): <s> s  [<name> <lr>, …]"
    fits = [(line.split(":")[0].split("heads", 1)[1], head) for line in lines
            for head in line.rsplit("[", 1)[1].rstrip("]").split(", ")]
    assert len(fits) == len(set(fits)) and all(line.split()[0] == "digits" for line in lines)
    assert sum(int(line.split()[1]) for line in lines) == len(fits)
    # 3 reference + 2×3 selection + ≤3 matched refits + 6 ablation + 2 sensitivity + 3 for head_epochs=1
    assert 20 <= len(fits) <= 23
    # batches: eval LP (×2 settings), the 2×3 candidates, the views of base (reference + refits + variants),
    # and head_epochs=1's views
    assert len(lines) == 5
    assert list(ds["view_flip"].values) == [0, 0]


def test_the_linear_probe_alone_scores_as_beside_every_other_head(tmp_path):
    """`make rerun-lp` trains the linear probe alone (methods=["lp"], no ablation): its numbers must be those it gets
    beside the MLP, NMTune and the ablation heads, under both protocols and every robustness setting."""
    tasks, cfg = _digit_tasks_and_config(tmp_path)
    ds = {name: run_transfer(Run.of(c, 0.1, 0), PixelBackbone(), tasks, checkpoint_hash="x", log=lambda line: None,
                             cache=False)
          for name, c in (("all", cfg), ("lp", cfg.replace(methods=["lp"], ablation=False)))}
    assert list(ds["lp"]["method"].values) == ["lp"] and len(ds["all"]["method"]) > 5
    for name, dim in (("accuracy", "method"), ("lr", "method"), ("head_mode", "method"),
                      ("selection_accuracy", "selection_method")):  # bit for bit, NaN for NaN
        xr.testing.assert_equal(ds["lp"][name], ds["all"][name].sel({dim: ["lp"]}))
    assert np.isfinite(ds["lp"]["accuracy"].sel(setting="head_epochs=1", protocol="reference")).any()


def test_batched_transfer_equals_one_by_one_bit_for_bit(tmp_path):
    tasks, cfg = _digit_tasks_and_config(tmp_path)
    run = Run.of(cfg, 0.1, 0)
    ds = {batched: run_transfer(run, PixelBackbone(), tasks, checkpoint_hash="x", log=lambda line: None,
                                cache=False, batched=batched) for batched in (True, False)}
    for name in ("accuracy", "lr", "selection_accuracy", "tuned_sve", "tuned_p1", "tuned_sigma1", "head_mode"):
        xr.testing.assert_equal(ds[True][name], ds[False][name])  # NaN where NaN, every value bit for bit
