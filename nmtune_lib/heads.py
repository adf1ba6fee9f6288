"""Heads on frozen features (linear probe, NMTune's residual MLP), their training, and a scikit-learn estimator.

Glossary: N samples, C classes, D feature width, K cached augmented views per image, B images per step.

Three methods (docs/paper.md, "Downstream protocol" and "NMTune"), all trained by ``fit_head`` with AdamW, a
per-step cosine schedule to 0 without warm-up, and the last epoch reported (no model selection):

- ``lp``: ``LinearProbe`` on eval (single-view) features N×D, plain cross-entropy, lr 1e-2 (the reference
  protocol); given two-view inputs instead (cached views, a view source) it trains on both views with cross-entropy
  over the 2B rows, exactly like ``mlp`` without the MLP (the matched protocol).
- ``nmtune``: ``MLPHead`` on two augmented views per image, ``nmtune_loss`` (CE on both views + consistency +
  covariance + dominant singular values), lr 1e-3.
- ``mlp``: the same module and pipeline as ``nmtune`` with the three regulariser weights at 0.

Where the two views of a step come from is a *view source*, a callable ``(index, generator) -> (f_w, f_s)``:

- ``CachedViews`` (mode ``"cached"``): K augmented views of every image encoded once (N×K×D); each step draws two
  *different* views per image with the seeded generator. K bounds the augmentation diversity and sets the one-off
  encoding cost (``StudyConfig.views``); ``bench/head_tuning.py`` measures the accuracy/time trade-off against online.
  Measured there with the earlier 0.35-1.0 crops (MNIST-5k, warmed-up resnet_narrow, 30 epochs, 3 seeds, CPU):
  cached − online test accuracy was −4.8 / −1.7 / −0.3 / +0.3 points for K = 2 / 4 / 8 / 16 — with few views the
  head memorises them (train CE 0.03 at K = 2 vs 0.70 online) — so K ≥ 8 reproduced the online numbers then.
- ``OnlineViews`` (mode ``"online"``): re-encodes two fresh augmentations of each image at every step through the
  frozen backbone, exactly as the reference code does (the GPU path).
- a plain N×D matrix (mode ``"features"``): both views are the features themselves, optionally perturbed by Gaussian
  noise (``feature_noise`` × the per-dimension standard deviation, drawn independently per view). With
  ``feature_noise=0`` (default) the views are identical, so the consistency term pulls normalize(z) towards
  normalize(f) of the same sample — NMTune without augmentation, for embeddings from any model or API.

``fit_head`` returns a ``HeadFit`` that records the mode, so every number says how it was produced.
``NMTuneClassifier`` wraps all of this as a scikit-learn estimator over a feature matrix (N×D, or N×K×D for cached
views).
"""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data
from tqdm.auto import tqdm

from .augment import ViewAugment, to_float
from .losses import PARTS, nmtune_loss
from .models import freeze, resolve_device

METHODS = ("lp", "mlp", "nmtune")
# The reference defaults (docs/paper.md); they become the keyword defaults below.
HEAD_DEFAULTS: dict[str, Any] = dict(
    epochs=30, batch_size=64, lp_lr=1e-2, mlp_lr=1e-3, weight_decay=1e-4,
    w_mse=1.0, w_cov=0.04, w_svd=0.001, svd_top_k=5, expansion=4, scale_init=1.0,
)


# --- modules ------------------------------------------------------------------------------------------------------

def _linear(d_in: int, d_out: int, generator: torch.Generator | None, *, classifier: bool) -> nn.Linear:
    """A Linear layer initialised from ``generator`` (never the global RNG).

    classifier=True: kaiming-uniform weight (gain √2, bound √(6/d_in)) and zero bias, the reference's head.
    classifier=False: PyTorch's default Linear init (kaiming-uniform with a=√5, bias U(±1/√d_in)), which the
    reference's hidden layers get.
    """
    layer = nn.utils.skip_init(nn.Linear, d_in, d_out)  # no init from the global RNG; we init below
    with torch.no_grad():
        if classifier:
            nn.init.kaiming_uniform_(layer.weight, generator=generator)
            layer.bias.zero_()
        else:
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
            bound = 1 / math.sqrt(d_in)
            layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


class LinearProbe(nn.Module):
    """logits = Linear(D, C)(f): kaiming-uniform weight, zero bias. Its ``features`` are f itself."""

    def __init__(self, num_features: int, num_classes: int, *, generator: torch.Generator | None = None):
        super().__init__()
        self.classifier = _linear(num_features, num_classes, generator, classifier=True)

    def features(self, f: torch.Tensor) -> torch.Tensor:
        return f

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.classifier(f)


class MLPHead(nn.Module):
    """NMTune's residual MLP (docs/paper.md) on frozen features f (N×D):

        h = Linear(D, eD) → BatchNorm1d(eD) → ReLU → Linear(eD, D)      (e = ``expansion``, 4)
        z = s ⊙ h + f                                                   (s ∈ R^D learnable, init ``scale_init``)
        logits = Linear(D, C)(z)                                        (kaiming-uniform weight, zero bias)

    ``features(f)`` returns z (N×D); ``forward(f)`` the logits. BatchNorm uses batch statistics in train mode and
    running statistics in eval mode.
    """

    def __init__(self, num_features: int, num_classes: int, *, expansion: int = HEAD_DEFAULTS["expansion"],
                 scale_init: float = HEAD_DEFAULTS["scale_init"], generator: torch.Generator | None = None):
        super().__init__()
        hidden = expansion * num_features
        self.mlp = nn.Sequential(_linear(num_features, hidden, generator, classifier=False), nn.BatchNorm1d(hidden),
                                 nn.ReLU(), _linear(hidden, num_features, generator, classifier=False))
        self.scale = nn.Parameter(torch.full((num_features,), float(scale_init)))
        self.classifier = _linear(num_features, num_classes, generator, classifier=True)

    def features(self, f: torch.Tensor) -> torch.Tensor:
        return self.scale * self.mlp(f) + f

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(f))


# --- view sources -------------------------------------------------------------------------------------------------

class ViewSource(Protocol):
    """Two views per step: ``(index int64 B, generator) -> (f_w, f_s)``, each B×D float32 on the training device."""

    def __call__(self, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]: ...


class CachedViews:
    """K pre-encoded augmented views per image (N×K×D); each call draws two different views of every image.

    The pair is uniform over the K·(K−1) ordered pairs of distinct views, so either view may play w or s.
    """

    mode = "cached"

    def __init__(self, features: torch.Tensor, *, device: str | torch.device = "cpu"):
        if features.ndim != 3 or features.shape[1] < 2:
            raise ValueError(f"CachedViews needs N×K×D features with K >= 2 views, got shape {tuple(features.shape)}")
        self.device = torch.device(device)
        self.features = features.to(self.device, torch.float32)
        self.num_features = features.shape[2]

    def __len__(self) -> int:
        return len(self.features)

    def subset(self, index: torch.Tensor) -> "CachedViews":
        """The views of the samples ``index`` only (e.g. the part of a training set that trains, not the held-out)."""
        return CachedViews(self.features[torch.as_tensor(index).to(self.device)], device=self.device)

    def __call__(self, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.features.shape[1]
        first = torch.randint(k, (len(index),), generator=generator, device=generator.device)
        other = torch.randint(k - 1, (len(index),), generator=generator, device=generator.device)
        second = other + (other >= first)  # skip the first view's slot: always a different view
        index, first, second = (t.to(self.device) for t in (index, first, second))
        return self.features[index, first], self.features[index, second]


class FeatureViews:
    """Both views from one N×D feature matrix: identical, or each plus independent Gaussian noise of standard
    deviation ``noise`` × the per-dimension standard deviation of the features (feature-space augmentation)."""

    mode = "features"

    def __init__(self, features: torch.Tensor, *, noise: float = 0.0, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.features = features.to(self.device, torch.float32)
        self.noise = float(noise)
        self.num_features = features.shape[1]
        self.scale = self.noise * self.features.std(dim=0) if self.noise > 0 else None

    def __len__(self) -> int:
        return len(self.features)

    def __call__(self, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features[index.to(self.device)]
        if self.scale is None:
            return f, f
        noise = torch.randn((2, *f.shape), generator=generator, device=generator.device).to(self.device)
        return f + self.scale * noise[0], f + self.scale * noise[1]


class OnlineViews:
    """The reference's way: each call augments every image twice and re-encodes both views through the frozen
    backbone (``backbone.pre_logits``, no gradient). Exact but costly: 2B backbone passes per step.

    ``images``: uint8 or float N×C×H×W (moved to ``device`` once); ``augment(x, generator)``: the weak view
    augmentation (a ``ViewAugment``; the reference settings by default). The backbone itself is frozen (eval mode,
    no grads) and moved to ``device`` ("auto" resolves to the best available device).
    """

    mode = "online"

    def __init__(self, backbone: nn.Module, images: torch.Tensor, *, device: str | torch.device = "cpu",
                 augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] = ViewAugment()):
        self.device = resolve_device(str(device))
        self.backbone = freeze(backbone).to(self.device)
        self.images = images.to(self.device)
        self.augment = augment
        self.num_features = int(backbone.num_features)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: torch.Tensor) -> "OnlineViews":
        """The same backbone and augmentation over the images ``index`` only."""
        return OnlineViews(self.backbone, self.images[torch.as_tensor(index).to(self.device)], device=self.device,
                           augment=self.augment)

    def encode(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Features (N×D float32) of one augmented view of the images ``x``; the same path as a training step."""
        with torch.no_grad():
            return self.backbone.pre_logits(self.augment(to_float(x.to(self.device)), generator)).float()

    def __call__(self, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_float(self.images[index.to(self.device)])
        both = torch.cat([self.augment(x, generator), self.augment(x, generator)])
        with torch.no_grad():  # one backbone pass over the 2B views; no_grad (not inference_mode): f enters autograd
            f = self.backbone.pre_logits(both).float()
        return f[: len(x)], f[len(x):]


# --- training -----------------------------------------------------------------------------------------------------

@dataclass
class HeadFit:
    """A trained head (in eval mode) and how it was trained.

    ``mode``: where the training views came from: ``"eval"`` (LP on eval features), ``"cached"`` (K views),
    ``"online"`` (re-encoded every step), ``"features"`` (views from an N×D matrix) or a custom source's ``mode``.
    ``history``: one dict per epoch (epoch, lr, the loss parts of ``losses.PARTS`` averaged over the epoch's samples,
    train_acc over the training views, seconds, and eval_acc when an eval set was given).
    """

    head: nn.Module
    method: str
    mode: str
    history: list[dict[str, float]]
    params: dict[str, Any]
    seconds: float
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def logits(self, features: torch.Tensor, *, batch_size: int = 4096) -> torch.Tensor:
        return predict_logits(self.head, features, device=self.device, batch_size=batch_size)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits(features).argmax(dim=1)

    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        return float((self.predict(features) == torch.as_tensor(labels)).float().mean())

    def summary(self) -> dict[str, Any]:
        """JSON-ready: method, mode, resolved parameters, seconds, the last epoch's row and the whole history."""
        return {"method": self.method, "mode": self.mode, "params": self.params, "seconds": self.seconds,
                "last_epoch": self.history[-1] if self.history else {}, "history": self.history}


def predict_logits(head: nn.Module, features: torch.Tensor, *, device: str | torch.device = "cpu",
                   batch_size: int = 4096) -> torch.Tensor:
    """Logits (N×C, on the CPU) of ``head`` in eval mode (BatchNorm running statistics) on eval features N×D."""
    device = torch.device(device)
    dtype = next(head.parameters()).dtype
    was_training = head.training
    head.eval()
    try:
        with torch.no_grad():
            out = [head(chunk.to(device, dtype)).cpu() for chunk in torch.as_tensor(features).split(batch_size)]
    finally:
        head.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


def fit_head(views: torch.Tensor | np.ndarray | ViewSource, labels: torch.Tensor | np.ndarray, *,
             method: str = "nmtune", num_classes: int | None = None,
             epochs: int = HEAD_DEFAULTS["epochs"], batch_size: int = HEAD_DEFAULTS["batch_size"],
             lr: float | None = None, weight_decay: float = HEAD_DEFAULTS["weight_decay"],
             w_mse: float = HEAD_DEFAULTS["w_mse"], w_cov: float = HEAD_DEFAULTS["w_cov"],
             w_svd: float = HEAD_DEFAULTS["w_svd"], svd_top_k: int = HEAD_DEFAULTS["svd_top_k"],
             feature_noise: float = 0.0, seed: int = 0, device: str | torch.device = "cpu",
             progress: bool = False, log: Callable[[dict[str, float]], Any] | None = None,
             eval_features: torch.Tensor | None = None, eval_labels: torch.Tensor | None = None) -> HeadFit:
    """Train one head on frozen features and return it (eval mode) with its per-epoch history.

    views: eval features N×D (``lp``; for ``mlp``/``nmtune`` both views come from it, see ``FeatureViews``), cached
        views N×K×D (K ≥ 2), or a view source ``(index, generator) -> (f_w, f_s)`` such as ``OnlineViews``.
    labels: int64 N in [0, C). ``num_classes`` defaults to max(labels) + 1.
    method: ``lp`` | ``mlp`` | ``nmtune``. ``mlp`` and ``lp`` force w_mse = w_cov = w_svd = 0. ``lr`` defaults to
        1e-2 (lp) or 1e-3 (mlp, nmtune). ``lp`` on eval features N×D trains on one view with plain cross-entropy;
        on two-view inputs it takes the same two-view cross-entropy as ``mlp`` (z = f).
    svd_top_k: k of the dominant-singular-value term, in [1, min(2B, D)]; a shorter last batch of an epoch uses
        min(k, 2b, D) (it has fewer singular values).
    seed: one integer fixes the head's initialisation, the batch order and the view draws (three independent
        generators, so the batch order is the same in every mode). ``log(row)`` is called after every epoch (e.g. to
        print one JSON line in batch runs); ``progress`` shows a tqdm bar over epochs.
    eval_features / eval_labels: optional eval set scored (``eval_acc``) after every epoch, for curves only.
    Invalid inputs raise ``ValueError`` before any training.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not accepted; accepted: {', '.join(METHODS)}")
    device = resolve_device(str(device))
    labels = _as_labels(labels)
    source, mode, n, num_features = _view_source(views, method, labels, feature_noise, device)
    num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if method in ("mlp", "lp"):
        w_mse = w_cov = w_svd = 0.0
    lr = (HEAD_DEFAULTS["lp_lr"] if method == "lp" else HEAD_DEFAULTS["mlp_lr"]) if lr is None else float(lr)
    _check_hyperparameters(method=method, n=n, num_features=num_features, num_classes=num_classes, labels=labels,
                           epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, w_mse=w_mse,
                           w_cov=w_cov, w_svd=w_svd, svd_top_k=svd_top_k, feature_noise=feature_noise)
    params = dict(method=method, mode=mode, num_classes=num_classes, num_features=num_features, n=n, epochs=epochs,
                  batch_size=batch_size, lr=lr, weight_decay=weight_decay, w_mse=w_mse, w_cov=w_cov, w_svd=w_svd,
                  svd_top_k=svd_top_k, feature_noise=feature_noise, seed=seed, device=str(device),
                  views=int(source.features.shape[1]) if mode == "cached" else None)

    init_gen, order_gen, view_gen = (torch.Generator().manual_seed(int(s))
                                     for s in np.random.SeedSequence(seed).generate_state(3))
    head_cls = LinearProbe if method == "lp" else MLPHead
    head = head_cls(num_features, num_classes, generator=init_gen).to(device)
    # fused AdamW: one kernel per step instead of ~10 elementwise passes (the same update; ~0.5 ms a step on a CPU)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay,
                                  fused=device.type in ("cpu", "cuda") or None)
    labels_dev = labels.to(device)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch
    history: list[dict[str, float]] = []
    start = time.perf_counter()

    bar = tqdm(range(epochs), desc=f"{method} head ({mode})", disable=not progress, leave=False)
    for epoch in bar:
        head.train()  # BatchNorm on batch statistics while tuning
        epoch_start = time.perf_counter()
        sums = torch.zeros(len(PARTS), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        order = torch.randperm(n, generator=order_gen)
        for step_in_epoch, index in enumerate(order.split(batch_size)):
            step = epoch * steps_per_epoch + step_in_epoch
            step_lr = lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))  # per-step cosine to 0, no warm-up
            for group in optimizer.param_groups:
                group["lr"] = step_lr
            y = labels_dev[index.to(device)]
            if mode == "eval":
                logits = head(source[index.to(device)])
                loss = F.cross_entropy(logits, y)
                nan = torch.full_like(loss, math.nan).detach()  # LP has no regulariser terms: "not computed"
                parts = torch.stack([loss.detach(), nan, nan, nan, loss.detach()])
                y_all = y
            else:
                f_w, f_s = source(index, view_gen)
                f = torch.cat([f_w, f_s])
                z = head.features(f)
                logits = head.classifier(z)
                k = min(svd_top_k, len(z), num_features)  # a short last batch has fewer singular values
                loss, part_dict = nmtune_loss(logits, y, z, f, w_mse=w_mse, w_cov=w_cov, w_svd=w_svd, k=k)
                parts = torch.stack([part_dict[name] for name in PARTS])
                y_all = y.repeat(2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += parts * len(index)
            correct += (logits.detach().argmax(dim=1) == y_all).float().mean() * len(index)
            seen += len(index)
        row = {"epoch": epoch + 1, "lr": step_lr, **dict(zip(PARTS, (sums / seen).tolist())),
               "train_acc": float(correct) / seen, "seconds": time.perf_counter() - epoch_start}
        if eval_features is not None and eval_labels is not None:
            row["eval_acc"] = float((predict_logits(head, eval_features, device=device).argmax(1)
                                     == torch.as_tensor(eval_labels)).float().mean())
        history.append(row)
        bar.set_postfix(loss=f"{row['total']:.3f}", acc=f"{row['train_acc']:.3f}")
        if log is not None:
            log(row)
    bar.close()
    head.eval()  # running statistics at test
    return HeadFit(head, method, mode, history, params, time.perf_counter() - start, device)


def _as_labels(labels: torch.Tensor | np.ndarray) -> torch.Tensor:
    labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"labels must be a 1-D integer vector of class indices, got {labels.dtype} "
                         f"of shape {tuple(labels.shape)}")
    return labels.long().cpu()


def _view_source(views, method: str, labels: torch.Tensor, feature_noise: float,
                 device: torch.device) -> tuple[Any, str, int, int]:
    """Validate ``views`` against ``method`` and the labels; return (source, mode, N, D)."""
    if callable(views) and not isinstance(views, (torch.Tensor, np.ndarray)):
        n = len(views) if hasattr(views, "__len__") else len(labels)
        _check_lengths(n, len(labels))
        if hasattr(views, "num_features"):
            num_features = int(views.num_features)
        else:  # probe one pair with a throwaway generator so the training stream is untouched
            num_features = int(views(torch.arange(min(2, n)), torch.Generator().manual_seed(0))[0].shape[1])
        return views, getattr(views, "mode", "callable"), n, num_features

    features = torch.as_tensor(np.asarray(views) if isinstance(views, np.ndarray) else views)
    if not features.is_floating_point():
        features = features.float()
    if features.ndim not in (2, 3):
        raise ValueError(f"features must be N×D (eval features) or N×K×D (K cached views), got shape "
                         f"{tuple(features.shape)}")
    _check_lengths(len(features), len(labels))
    bad = ~torch.isfinite(features)
    if bad.any():
        first = int(bad.reshape(len(features), -1).any(dim=1).nonzero()[0])
        raise ValueError(f"features contain {int(bad.sum())} NaN or inf value(s) (first in sample {first}); "
                         "accepted: finite real numbers")
    n, num_features = len(features), features.shape[-1]
    if features.ndim == 3:
        if features.shape[1] < 2:
            raise ValueError(f"cached views: K={features.shape[1]} is outside the accepted range K >= 2 (two "
                             "different views per step)")
        return CachedViews(features, device=device), "cached", n, num_features
    if method == "lp":
        return features.to(device, torch.float32), "eval", n, num_features
    return FeatureViews(features, noise=feature_noise, device=device), "features", n, num_features


def _check_lengths(n_features: int, n_labels: int) -> None:
    if n_features != n_labels:
        raise ValueError(f"features have {n_features} samples but labels have {n_labels}; accepted: equal lengths")


def _check_hyperparameters(*, method: str, n: int, num_features: int, num_classes: int, labels: torch.Tensor,
                           epochs: int, batch_size: int, lr: float, weight_decay: float, w_mse: float, w_cov: float,
                           w_svd: float, svd_top_k: int, feature_noise: float) -> None:
    """Every check that can fail before training, each naming the value and the accepted range."""
    if n == 0 or num_features == 0:
        raise ValueError(f"features have {n} sample(s) and n_features={num_features}; accepted: at least 1 of each")
    present = torch.unique(labels)
    if len(present) < 2:
        raise ValueError(f"labels hold only one class ({int(present[0])}); accepted: at least 2 distinct classes")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels span [{int(labels.min())}, {int(labels.max())}]; accepted: [0, num_classes) = "
                         f"[0, {num_classes})")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name}={value!r}; accepted: an integer >= 1")
    if not (isinstance(lr, numbers.Real) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr={lr!r}; accepted: a finite float > 0")
    for name, value in (("weight_decay", weight_decay), ("w_mse", w_mse), ("w_cov", w_cov), ("w_svd", w_svd),
                        ("feature_noise", feature_noise)):
        if not (isinstance(value, numbers.Real) and value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name}={value!r}; accepted: a finite float >= 0")
    if method == "nmtune" and w_svd != 0:
        b = min(batch_size, n)
        bound = min(2 * b, num_features)
        if not (isinstance(svd_top_k, numbers.Integral) and 1 <= svd_top_k <= bound):
            raise ValueError(f"svd_top_k={svd_top_k!r} is outside the accepted range [1, {bound}]: a step's z is "
                             f"2B×D = {2 * b}×{num_features}, so it has min(2B, D) = {bound} singular values "
                             f"(batch_size={b}, n_features={num_features})")


# --- scikit-learn estimator ---------------------------------------------------------------------------------------

class NMTuneClassifier(ClassifierMixin, BaseEstimator):
    """A head tuned on frozen embeddings of any model or API, as a scikit-learn classifier.

    ``fit(X, y)``: X is N×D (eval features) or N×K×D (K cached augmented views per sample, the paper's two-view
    NMTune with two different views drawn per step). With N×D, ``nmtune`` and ``mlp`` take both views from X itself:
    identical views when ``feature_noise`` = 0 (default), else each view plus independent Gaussian noise of
    ``feature_noise`` × the per-feature standard deviation. ``lp`` on N×K×D trains on two views (the matched
    protocol).
    ``predict``/``predict_proba``/``score`` take eval features N×D; they run in float64 (except on MPS) so that a
    sample's output does not depend on the other rows of its batch.

    Parameters mirror ``fit_head`` (the reference defaults: 30 epochs, batch 64, AdamW, lr 1e-2 for ``lp`` and 1e-3
    otherwise, weight decay 1e-4, w_mse 1.0, w_cov 0.04, w_svd 0.001, k = 5). ``random_state``: an int fixes the
    initialisation, batch order and view draws (same int → identical predictions); None draws fresh entropy.
    ``device``: "cpu", "cuda", "mps" or "auto". Fitted attributes: ``classes_``, ``n_features_in_``, ``head_``,
    ``history_`` (per-epoch losses), ``mode_`` (where the views came from).
    """

    def __init__(self, method: str = "nmtune", *, epochs: int = HEAD_DEFAULTS["epochs"],
                 batch_size: int = HEAD_DEFAULTS["batch_size"], lr: float | None = None,
                 weight_decay: float = HEAD_DEFAULTS["weight_decay"], w_mse: float = HEAD_DEFAULTS["w_mse"],
                 w_cov: float = HEAD_DEFAULTS["w_cov"], w_svd: float = HEAD_DEFAULTS["w_svd"],
                 svd_top_k: int = HEAD_DEFAULTS["svd_top_k"], feature_noise: float = 0.0,
                 random_state: int | np.random.RandomState | None = None, device: str = "cpu",
                 progress: bool = False):
        self.method = method
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.w_mse = w_mse
        self.w_cov = w_cov
        self.w_svd = w_svd
        self.svd_top_k = svd_top_k
        self.feature_noise = feature_noise
        self.random_state = random_state
        self.device = device
        self.progress = progress

    def fit(self, X, y) -> "NMTuneClassifier":
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        X = validate_data(self, X, reset=True, allow_nd=True, dtype=(np.float64, np.float32),
                          ensure_all_finite=False)
        if X.ndim not in (2, 3):
            raise ValueError(f"X must be N×D (features) or N×K×D (K cached views), got shape {X.shape}")
        if X.ndim == 3:
            self.n_features_in_ = X.shape[2]  # D, what predict's eval features must have
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        _check_lengths(len(X), len(y))
        classes, y_index = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"y holds only one class ({classes[:1].tolist()[0]!r}); accepted: labels of at least 2 "
                             "classes")
        fit = fit_head(torch.tensor(X, dtype=torch.float32), torch.as_tensor(y_index, dtype=torch.int64),
                       method=self.method, num_classes=len(classes), epochs=self.epochs, batch_size=self.batch_size,
                       lr=self.lr, weight_decay=self.weight_decay, w_mse=self.w_mse, w_cov=self.w_cov,
                       w_svd=self.w_svd, svd_top_k=self.svd_top_k, feature_noise=self.feature_noise,
                       seed=self._seed(), device=self.device, progress=self.progress)
        self.classes_ = classes
        self.head_ = fit.head if fit.device.type == "mps" else fit.head.double()  # MPS has no float64
        self.device_ = fit.device
        self.history_ = fit.history
        self.mode_ = fit.mode
        return self

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32), ensure_all_finite=False)
        bad = ~np.isfinite(X)
        if bad.any():
            raise ValueError(f"X contains {int(bad.sum())} NaN or inf value(s) (first in sample "
                             f"{int(np.nonzero(bad.any(axis=1))[0][0])}); accepted: finite real numbers")
        logits = predict_logits(self.head_, torch.tensor(X), device=self.device_)
        return torch.softmax(logits.double(), dim=1).numpy()

    def predict(self, X) -> np.ndarray:
        proba = self.predict_proba(X)  # checks fitted-ness first
        return self.classes_[proba.argmax(axis=1)]

    def _seed(self) -> int:
        if isinstance(self.random_state, numbers.Integral):
            return int(self.random_state)
        if self.random_state is None:  # fresh entropy, without touching numpy's global RNG
            return int(np.random.SeedSequence().generate_state(1)[0])
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
