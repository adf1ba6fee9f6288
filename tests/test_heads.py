"""Tests of the heads (nmtune_lib.transfer.heads), view sources (views), fit_head (tuning), NMTuneClassifier (estimator, with
sklearn's checks) and their bad inputs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.utils.estimator_checks import parametrize_with_checks

from nmtune_lib.transfer import tuning
from nmtune_lib.data.augment import to_float
from nmtune_lib.data.datasets import load_dataset
from nmtune_lib.transfer.estimator import NMTuneClassifier
from nmtune_lib.transfer.heads import LinearProbe, MLPHead, predict_logits
from nmtune_lib.transfer.losses import PARTS
from nmtune_lib.transfer.tuning import fit_head
from nmtune_lib.transfer.views import CachedViews, FeatureViews, OnlineViews


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class PixelBackbone(nn.Module):
    """A parameter-free frozen "backbone": 2×2-average-pooled pixels (D = 196), so the views are real augmented
    images whose features carry the digit (a random-init small ResNet's pre-logits at 28 px are near-constant)."""

    num_features = 196

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2).flatten(1)


@pytest.fixture(scope="module")
def digits():
    """sklearn's 8×8 digits, pixels in [0, 1] as features (N×64, 10 classes): a stratified 1297 / 500 split."""
    x, y = load_digits(return_X_y=True)
    return train_test_split((x / 16.0).astype(np.float32), y, test_size=500, stratify=y, random_state=0)


@pytest.fixture(scope="module")
def digit_views():
    """uci_digits images through PixelBackbone: 3 cached augmented views of the train split, eval features of both."""
    train, test = load_dataset("uci_digits", "train"), load_dataset("uci_digits", "test")
    source = OnlineViews(PixelBackbone(), train.images)
    generator = torch.Generator().manual_seed(0)
    views = torch.stack([source.encode(train.images, generator) for _ in range(3)], dim=1)
    backbone = PixelBackbone()
    return dict(train=train, test=test, views=views, source=source,
                eval_train=backbone.pre_logits(to_float(train.images)),
                eval_test=backbone.pre_logits(to_float(test.images)))


# --- modules ------------------------------------------------------------------------------------------------------

def test_linear_probe_init_is_kaiming_uniform_zero_bias_and_seeded():
    state = torch.random.get_rng_state()
    a = LinearProbe(64, 10, generator=torch.Generator().manual_seed(0))
    b = LinearProbe(64, 10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is never touched
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert a.classifier.weight.abs().max() <= math.sqrt(6 / 64)  # kaiming-uniform bound, gain √2
    assert a.classifier.weight.abs().max() > 0.9 * math.sqrt(6 / 64)
    assert torch.count_nonzero(a.classifier.bias) == 0
    f = torch.randn(5, 64)
    assert torch.equal(a.features(f), f) and torch.allclose(a(f), a.classifier(f))


def test_mlp_head_is_the_residual_mlp_of_the_paper():
    head = MLPHead(8, 3, generator=torch.Generator().manual_seed(0))
    linear1, norm, act, linear2 = head.mlp
    assert (linear1.in_features, linear1.out_features, norm.num_features, linear2.out_features) == (8, 32, 32, 8)
    assert isinstance(act, nn.ReLU) and torch.equal(head.scale.detach(), torch.ones(8))
    assert torch.count_nonzero(head.classifier.bias) == 0
    assert head.classifier.weight.abs().max() <= math.sqrt(6 / 8)
    head.eval()
    with torch.no_grad():
        head.scale.fill_(0.5)
        f = torch.randn(4, 8)
        z = head.features(f)
        assert torch.allclose(z, 0.5 * linear2(act(norm(linear1(f)))) + f)
        assert torch.allclose(head(f), head.classifier(z))


# --- view sources -------------------------------------------------------------------------------------------------

def test_cached_views_draw_two_different_views_covering_every_pair():
    n, k = 500, 4
    features = torch.arange(k, dtype=torch.float32).view(1, k, 1).expand(n, k, 2).clone()  # feature = view id
    f_w, f_s = CachedViews(features)(torch.arange(n), torch.Generator().manual_seed(0))
    first, second = f_w[:, 0].long(), f_s[:, 0].long()
    assert (first != second).all()
    assert len(set(zip(first.tolist(), second.tolist()))) == k * (k - 1)


def test_feature_views_identical_without_noise_and_seeded_with_noise():
    features = torch.randn(20, 5, generator=torch.Generator().manual_seed(0))
    f_w, f_s = FeatureViews(features)(torch.arange(20), torch.Generator().manual_seed(0))
    assert torch.equal(f_w, f_s) and torch.equal(f_w, features)
    noisy = FeatureViews(features, noise=0.1)
    a = noisy(torch.arange(20), torch.Generator().manual_seed(1))
    b = noisy(torch.arange(20), torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], a[1])


def test_online_views_reencode_through_a_real_frozen_backbone():
    from nmtune_lib.pretraining.models import create_backbone

    train = load_dataset("uci_digits", "train").subset(torch.arange(64))
    with torch.random.fork_rng():  # create_backbone initialises from the global RNG; keep the caller's state
        torch.manual_seed(0)
        backbone = create_backbone("resnet_tiny", num_classes=10)
    source = OnlineViews(backbone, train.images)
    f_w, f_s = source(torch.arange(8), torch.Generator().manual_seed(0))
    assert f_w.shape == f_s.shape == (8, backbone.num_features) and not torch.equal(f_w, f_s)
    assert not backbone.training and not any(p.requires_grad for p in backbone.parameters())
    fit = fit_head(source, train.labels, method="nmtune", epochs=1, batch_size=32, seed=0)
    assert fit.mode == "online" and len(fit.history) == 1 and math.isfinite(fit.history[0]["total"])


# --- fit_head -----------------------------------------------------------------------------------------------------

def test_fit_head_records_mode_history_schedule_and_eval_mode(digit_views):
    rows = []
    labels = digit_views["train"].labels[:100]
    fit = fit_head(digit_views["views"][:100], labels, method="nmtune", epochs=2, seed=0, log=rows.append,
                   eval_features=digit_views["eval_test"], eval_labels=digit_views["test"].labels)
    assert fit.mode == "cached" and fit.params["views"] == 3 and fit.params["lr"] == 1e-3
    assert rows == fit.history and [r["epoch"] for r in rows] == [1, 2]
    assert set(PARTS) | {"train_acc", "eval_acc", "lr", "seconds"} <= set(rows[0])
    assert all(math.isfinite(rows[-1][name]) for name in PARTS)
    steps = 2 * math.ceil(100 / 64)  # per-step cosine to 0, no warm-up: the last step's lr
    assert rows[-1]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * (steps - 1) / steps)))
    assert not fit.head.training  # BatchNorm on running statistics at test


def test_mlp_is_nmtune_with_zero_weights_and_lp_uses_eval_features(digit_views):
    views, labels = digit_views["views"][:100], digit_views["train"].labels[:100]
    mlp = fit_head(views, labels, method="mlp", epochs=1, seed=0)
    assert (mlp.params["w_mse"], mlp.params["w_cov"], mlp.params["w_svd"]) == (0.0, 0.0, 0.0)
    assert mlp.history[0]["total"] == pytest.approx(mlp.history[0]["ce"])
    assert math.isnan(mlp.history[0]["dominant_sv"])
    lp = fit_head(digit_views["eval_train"][:100], labels, method="lp", epochs=1, seed=0)
    assert lp.mode == "eval" and isinstance(lp.head, LinearProbe) and lp.params["lr"] == 1e-2


def test_learning_on_real_data_beats_chance(digits, digit_views):
    """Chance is 10 %; every method must clear 85 % on held-out digits (pixels as features, and real augmented
    views cached or re-encoded online)."""
    x_train, x_test, y_train, y_test = digits
    for method in ("lp", "nmtune"):
        clf = NMTuneClassifier(method, epochs=10, random_state=0).fit(x_train, y_train)
        assert clf.score(x_test, y_test) > 0.85, method
    eval_test, y_views = digit_views["eval_test"], digit_views["test"].labels
    cached = fit_head(digit_views["views"], digit_views["train"].labels, method="nmtune", epochs=5, seed=0)
    assert cached.mode == "cached" and cached.accuracy(eval_test, y_views) > 0.85
    online = fit_head(digit_views["source"], digit_views["train"].labels, method="nmtune", epochs=3, seed=0)
    assert online.mode == "online" and online.accuracy(eval_test, y_views) > 0.85


def test_same_seed_gives_identical_predictions(digits, digit_views):
    x_train, x_test, y_train, _ = digits
    state_torch, state_numpy = torch.random.get_rng_state(), np.random.get_state()[1].copy()
    runs = [NMTuneClassifier(epochs=2, random_state=seed).fit(x_train, y_train).predict_proba(x_test)
            for seed in (3, 3, 4)]
    assert np.array_equal(runs[0], runs[1]) and not np.array_equal(runs[0], runs[2])
    assert torch.equal(torch.random.get_rng_state(), state_torch)  # no global RNG is consumed
    assert np.array_equal(np.random.get_state()[1], state_numpy)
    views, labels = digit_views["views"][:200], digit_views["train"].labels[:200]
    a, b = (fit_head(views, labels, epochs=1, seed=0).logits(digit_views["eval_test"]) for _ in range(2))
    assert torch.equal(a, b)


def test_classifier_takes_cached_views_and_predicts_on_eval_features(digit_views):
    views, labels = digit_views["views"][:200].numpy(), digit_views["train"].labels[:200].numpy()
    clf = NMTuneClassifier(epochs=1, random_state=0).fit(views, labels)
    assert clf.mode_ == "cached" and clf.n_features_in_ == 196 and len(clf.history_) == 1
    assert clf.predict(digit_views["eval_test"].numpy()).shape == (len(digit_views["test"]),)
    with pytest.raises(ValueError):
        clf.predict(views)  # predict takes eval features N×D
    lp = NMTuneClassifier("lp", epochs=1, random_state=0).fit(views, labels)  # the matched protocol's LP
    assert lp.mode_ == "cached" and isinstance(lp.head_, LinearProbe)


def test_lp_on_two_views_is_cross_entropy_over_both_views(digit_views):
    """The matched protocol's LP: the MLP pipeline without the MLP (z = f), CE over the 2B rows of both views."""
    views, labels = digit_views["views"][:64], digit_views["train"].labels[:64]
    fit = fit_head(views, labels, method="lp", epochs=1, batch_size=64, lr=1e-2, seed=0)
    assert fit.mode == "cached" and (fit.params["w_mse"], fit.params["w_cov"], fit.params["w_svd"]) == (0, 0, 0)
    # one step from the same initialisation, by hand: the same views the seeded generator draws
    init_gen, order_gen, view_gen = (torch.Generator().manual_seed(int(s))
                                     for s in np.random.SeedSequence(0).generate_state(3))
    head = LinearProbe(196, 10, generator=init_gen)
    index = torch.randperm(64, generator=order_gen)
    f_w, f_s = CachedViews(views)(index, view_gen)
    loss = F.cross_entropy(head(torch.cat([f_w, f_s])), labels[index].repeat(2)).detach()
    assert fit.history[0]["ce"] == pytest.approx(loss.item(), rel=1e-5)


def test_progress_bar_switch(capsys):
    x, y = _features()
    fit_head(x, y, method="mlp", epochs=2, progress=True)
    assert "mlp head (features)" in capsys.readouterr().err
    fit_head(x, y, method="mlp", epochs=2, progress=False)
    assert capsys.readouterr().err == ""


def test_predict_logits_restores_training_mode():
    head = MLPHead(4, 2, generator=torch.Generator().manual_seed(0))
    head.train()
    predict_logits(head, torch.randn(3, 4))
    assert head.training


# --- bad inputs: ValueErrors naming the value and the accepted range, raised before any training -------------------

@pytest.fixture
def no_training(monkeypatch):
    """Building a head counts as starting to train: make it fail loudly, so only pre-training checks can raise."""
    def refuse(*args, **kwargs):
        raise AssertionError("training started before the input was validated")

    monkeypatch.setattr(tuning, "MLPHead", refuse)
    monkeypatch.setattr(tuning, "LinearProbe", refuse)


def _features(n=40, d=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=generator), torch.arange(n) % 3


@pytest.mark.parametrize("method", ["lp", "nmtune"])
def test_bad_inputs_raise_before_training(no_training, method):
    x, y = _features()
    with pytest.raises(ValueError, match="40 samples but labels have 39; accepted: equal lengths"):
        fit_head(x, y[:-1], method=method)
    with pytest.raises(ValueError, match=r"only one class \(2\); accepted: at least 2 distinct classes"):
        fit_head(x, torch.full((40,), 2), method=method)
    x_nan = x.clone()
    x_nan[7, 3] = math.nan
    with pytest.raises(ValueError, match=r"1 NaN or inf value\(s\) \(first in sample 7\); accepted: finite"):
        fit_head(x_nan, y, method=method)
    with pytest.raises(ValueError, match="method='svm' is not accepted; accepted: lp, mlp, nmtune"):
        fit_head(x, y, method="svm")
    with pytest.raises(ValueError, match="epochs=0; accepted: an integer >= 1"):
        fit_head(x, y, method=method, epochs=0)
    with pytest.raises(ValueError, match="svd_driver='gesvdx'; accepted: '' .* or one of gesvd, gesvdj, gesvda"):
        fit_head(x, y, method=method, svd_driver="gesvdx")


def test_the_svd_driver_reaches_the_loss_and_is_ignored_on_the_cpu(monkeypatch):
    """``svd_driver`` picks cuSOLVER's SVD on CUDA: every fitting path hands it to the dominant-singular-value term,
    and on the CPU (LAPACK) the numbers do not change."""
    from nmtune_lib.transfer import losses
    from nmtune_lib.transfer.tuning import fit_heads

    x, y = _features()
    plain = fit_head(x, y, method="nmtune", epochs=2)
    chosen = fit_head(x, y, method="nmtune", epochs=2, svd_driver="gesvda")
    assert chosen.params["svd_driver"] == "gesvda"
    assert all(torch.equal(a, b) for a, b in zip(plain.head.state_dict().values(), chosen.head.state_dict().values()))
    seen = []
    term = losses.dominant_singular_value_loss
    monkeypatch.setattr(losses, "dominant_singular_value_loss",
                        lambda z, k, *, driver="": seen.append(driver) or term(z, k, driver=driver))
    fit_head(x, y, method="nmtune", epochs=1, svd_driver="gesvd")
    for stacked in (False, True):
        fit_heads(x, y, [dict(method="nmtune"), dict(method="nmtune", w_cov=0.0)], epochs=1, svd_driver="gesvdj",
                  stacked=stacked)
    assert set(seen[:1]) == {"gesvd"} and set(seen[1:]) == {"gesvdj"} and len(seen) > 2


def test_svd_top_k_larger_than_the_batch_raises_before_training(no_training):
    x, y = _features()
    with pytest.raises(ValueError, match=r"svd_top_k=5 is outside the accepted range \[1, 4\].*batch_size=2"):
        fit_head(x, y, method="nmtune", batch_size=2, svd_top_k=5)
    with pytest.raises(ValueError, match=r"svd_top_k=7 is outside the accepted range \[1, 6\].*n_features=6"):
        fit_head(x, y, method="nmtune", svd_top_k=7)
    with pytest.raises(ValueError, match=r"K=1 is outside the accepted range K >= 2"):
        fit_head(x[:, None, :], y, method="nmtune")


def test_classifier_bad_inputs_raise_before_training(no_training):
    x, y = _features()
    with pytest.raises(ValueError, match="40 samples but labels have 39"):
        NMTuneClassifier().fit(x.numpy(), y[:-1].numpy())
    with pytest.raises(ValueError, match=r"only one class \('a'\); accepted: labels of at least 2 classes"):
        NMTuneClassifier().fit(x.numpy(), np.array(["a"] * 40))
    x_nan = x.numpy().copy()
    x_nan[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        NMTuneClassifier().fit(x_nan, y.numpy())
    with pytest.raises(ValueError, match=r"svd_top_k=9 is outside the accepted range \[1, 6\]"):
        NMTuneClassifier(svd_top_k=9).fit(x.numpy(), y.numpy())


# --- scikit-learn's estimator checks ------------------------------------------------------------------------------

# Few epochs keep the suite fast; lr 0.02 lets 10 epochs fit the checks' 2-D blobs (> 0.83 training accuracy), and
# svd_top_k=1 fits their 1-3 features (k must not exceed D).
CHECK_PARAMS = dict(epochs=10, lr=0.02, random_state=0)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")  # sklearn casts its NaN y
@parametrize_with_checks([NMTuneClassifier("nmtune", svd_top_k=1, **CHECK_PARAMS),
                          NMTuneClassifier("mlp", **CHECK_PARAMS), NMTuneClassifier("lp", **CHECK_PARAMS)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
