"""Training one head on frozen features: ``fit_head`` and the ``HeadFit`` it returns.

Glossary: N samples, C classes, D feature width, K cached augmented views per image, B images per step.

Three methods (docs/paper.md, "Downstream protocol" and "NMTune"), all trained with AdamW, a per-step cosine
schedule to 0 without warm-up, and the last epoch reported (no model selection); the defaults are ``reference``'s:

- ``lp``: ``LinearProbe`` on eval (single-view) features N×D, plain cross-entropy, lr ``LP_LR`` (the reference
  protocol); given two-view inputs instead (cached views, a view source) it trains on both views with cross-entropy
  over the 2B rows, exactly like ``mlp`` without the MLP (the matched protocol).
- ``nmtune``: ``MLPHead`` on two augmented views per image (from a view source, see ``views``), ``nmtune_loss`` (CE
  on both views + consistency + covariance + dominant singular values), lr ``MLP_LR``.
- ``mlp``: the same module and pipeline as ``nmtune`` with the three regulariser weights at 0.

``HeadFit.mode`` records where the training views came from, so every number says how it was produced.
"""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import reference as ref
from .heads import LinearProbe, MLPHead, predict_logits
from .losses import PARTS, nmtune_loss
from .models import resolve_device
from .views import CachedViews, FeatureViews, ViewSource

# One training step's loss: (index int64 B, labels y of those B) -> (loss, PARTS stacked, logits, their labels).
StepLoss = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


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


def fit_head(views: torch.Tensor | np.ndarray | ViewSource, labels: torch.Tensor | np.ndarray, *,
             method: str = "nmtune", num_classes: int | None = None, epochs: int = ref.EPOCHS,
             batch_size: int = ref.BATCH_SIZE, lr: float | None = None, weight_decay: float = ref.WEIGHT_DECAY,
             w_mse: float = ref.W_MSE, w_cov: float = ref.W_COV, w_svd: float = ref.W_SVD,
             svd_top_k: int = ref.SVD_TOP_K, svd_driver: str = "", feature_noise: float = 0.0, seed: int = 0,
             device: str | torch.device = "cpu", progress: bool = False,
             log: Callable[[dict[str, float]], Any] | None = None,
             eval_features: torch.Tensor | None = None, eval_labels: torch.Tensor | None = None) -> HeadFit:
    """Train one head on frozen features and return it (eval mode) with its per-epoch history.

    views: eval features N×D (``lp``; for ``mlp``/``nmtune`` both views come from it, see ``FeatureViews``), cached
        views N×K×D (K ≥ 2), or a view source ``(index, generator) -> (f_w, f_s)`` such as ``OnlineViews``.
    labels: int64 N in [0, C). ``num_classes`` defaults to max(labels) + 1.
    method: ``lp`` | ``mlp`` | ``nmtune``. ``mlp`` and ``lp`` force w_mse = w_cov = w_svd = 0. ``lr`` defaults to
        ``reference.default_lr(method)``. ``lp`` on eval features N×D trains on one view with plain cross-entropy;
        on two-view inputs it takes the same two-view cross-entropy as ``mlp`` (z = f).
    svd_top_k: k of the dominant-singular-value term, in [1, min(2B, D)]; a shorter last batch of an epoch uses
        min(k, 2b, D) (it has fewer singular values). ``svd_driver``: cuSOLVER's driver of that term's SVD on CUDA
        (``reference.CUDA_SVD_DRIVERS``; "" PyTorch's default); ignored on the CPU.
    seed: one integer fixes the head's initialisation, the batch order and the view draws (three independent
        generators, so the batch order is the same in every mode). ``log(row)`` is called after every epoch (e.g. to
        print one JSON line in batch runs); ``progress`` shows a tqdm bar over epochs.
    eval_features / eval_labels: optional eval set scored (``eval_acc``) after every epoch, for curves only.
    Invalid inputs raise ``ValueError`` before any training.
    """
    if method not in ref.METHODS:
        raise ValueError(f"method={method!r} is not accepted; accepted: {', '.join(ref.METHODS)}")
    device = resolve_device(str(device))
    labels = _as_labels(labels)
    source, mode, n, num_features = _view_source(views, method, labels, feature_noise, device)
    num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if method in ("mlp", "lp"):
        w_mse = w_cov = w_svd = 0.0
    lr = ref.default_lr(method) if lr is None else float(lr)
    _check_hyperparameters(method=method, n=n, num_features=num_features, num_classes=num_classes, labels=labels,
                           epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, w_mse=w_mse,
                           w_cov=w_cov, w_svd=w_svd, svd_top_k=svd_top_k, feature_noise=feature_noise,
                           svd_driver=svd_driver)
    params = dict(method=method, mode=mode, num_classes=num_classes, num_features=num_features, n=n, epochs=epochs,
                  batch_size=batch_size, lr=lr, weight_decay=weight_decay, w_mse=w_mse, w_cov=w_cov, w_svd=w_svd,
                  svd_top_k=svd_top_k, svd_driver=svd_driver, feature_noise=feature_noise, seed=seed,
                  device=str(device),
                  views=int(source.features.shape[1]) if mode == "cached" else None)

    init_gen, order_gen, view_gen = head_generators(seed)
    head = new_head(method, num_features, num_classes, generator=init_gen, device=device)
    optimizer = adamw([{"params": list(head.parameters()), "lr": lr}], weight_decay=weight_decay, device=device)
    step_loss = (partial(_eval_step_loss, head, source) if mode == "eval" else
                 partial(_two_view_step_loss, head, source, view_gen, w_mse=w_mse, w_cov=w_cov, w_svd=w_svd,
                         svd_top_k=svd_top_k, svd_driver=svd_driver))
    train = partial(_epoch, head, optimizer, step_loss, labels.to(device), order_gen, batch_size=batch_size,
                    total_steps=epochs * math.ceil(n / batch_size))
    history, seconds = train_epochs(head, train, desc=f"{method} head ({mode})", epochs=epochs, device=device,
                                    progress=progress, log=log, eval_features=eval_features, eval_labels=eval_labels)
    return HeadFit(head, method, mode, history, params, seconds, device)


def adamw(groups: list[dict[str, Any]], *, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over parameter groups (each with its own ``lr``, the schedule's base: ``initial_lr``). Fused: one
    kernel per step for all parameters instead of ~10 elementwise passes (the same update; ~0.5 ms a step on a
    CPU)."""
    optimizer = torch.optim.AdamW(groups, weight_decay=weight_decay, fused=device.type in ("cpu", "cuda") or None)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    return optimizer


def new_head(method: str, num_features: int, num_classes: int, *, generator: torch.Generator,
             device: torch.device) -> nn.Module:
    """The head of ``method`` (``LinearProbe`` for lp, else ``MLPHead``) initialised from ``generator``, on
    ``device``."""
    head_cls = LinearProbe if method == "lp" else MLPHead
    return head_cls(num_features, num_classes, generator=generator).to(device)


def head_generators(seed: int) -> tuple[torch.Generator, torch.Generator, torch.Generator]:
    """(init, order, view) generators of a head seed: three independent streams, so the batch order and the view
    draws are the same whatever the head (every head of one seed sees the same minibatches and views)."""
    return tuple(torch.Generator().manual_seed(int(s)) for s in np.random.SeedSequence(seed).generate_state(3))


def train_epochs(head: nn.Module, train: Callable[[int], dict[str, Any]], *, desc: str, epochs: int,
                 device: torch.device, progress: bool, log: Callable[[dict[str, Any]], Any] | None = None,
                 eval_features: torch.Tensor | None = None, eval_labels: torch.Tensor | None = None
                 ) -> tuple[list[dict[str, Any]], float]:
    """Run ``train(epoch)`` for every epoch (scoring the eval set after each, if given), leave ``head`` in eval
    mode and return (history, seconds). ``head`` may be one head or a ``StackedHeads`` (rows then hold H values)."""
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        row = train(epoch)
        if eval_features is not None and eval_labels is not None:
            row["eval_acc"] = float((predict_logits(head, eval_features, device=device).argmax(1)
                                     == torch.as_tensor(eval_labels)).float().mean())
        history.append(row)
        bar.set_postfix(loss=f"{np.mean(row['total']):.3f}", acc=f"{np.mean(row['train_acc']):.3f}")
        if log is not None:
            log(row)
    bar.close()
    head.eval()  # running statistics at test
    return history, time.perf_counter() - start


def _epoch(head: nn.Module, optimizer: torch.optim.Optimizer, step_loss: StepLoss, labels: torch.Tensor,
           order_gen: torch.Generator, epoch: int, *, batch_size: int, total_steps: int) -> dict[str, Any]:
    """One pass over the N samples in an order drawn from ``order_gen``; returns the epoch's history row.

    ``labels``: int64 N on the training device. Every step sets the per-step cosine lr of every parameter group
    (from its ``initial_lr``), then takes one AdamW step. For H grouped heads the step loss returns H losses and
    parts, and the row holds H values per part and one ``lr`` per parameter group.
    """
    device, n = labels.device, len(labels)
    steps_per_epoch = math.ceil(n / batch_size)
    head.train()  # BatchNorm on batch statistics while tuning
    epoch_start = time.perf_counter()
    sums = correct = 0.0
    seen = 0
    order = torch.randperm(n, generator=order_gen)
    for step_in_epoch, index in enumerate(order.split(batch_size)):
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(group["initial_lr"], epoch * steps_per_epoch + step_in_epoch, total_steps)
        loss, parts, logits, y_all = step_loss(index, labels[index.to(device)])
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()  # H heads: their parameters are disjoint, so each gets its own loss's gradient
        optimizer.step()
        sums = sums + parts * len(index)
        correct = correct + (logits.detach().argmax(dim=-1) == y_all).float().mean(dim=-1) * len(index)
        seen += len(index)
    rates = [group["lr"] for group in optimizer.param_groups]
    return {"epoch": epoch + 1, "lr": rates[0] if len(rates) == 1 else rates, **dict(zip(PARTS, (sums / seen).tolist())),
            "train_acc": (correct / seen).tolist(), "seconds": time.perf_counter() - epoch_start}


def _cosine_lr(lr: float, step: int, total_steps: int) -> float:
    """The per-step cosine schedule to 0 without warm-up: lr · ½ · (1 + cos(π · step / total_steps))."""
    return lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))


def _eval_step_loss(head: nn.Module, features: torch.Tensor, index: torch.Tensor,
                    y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """LP on eval features (N×D on the device): plain cross-entropy over the B rows of ``index``."""
    logits = head(features[index.to(features.device)])  # B×C, or H×B×C for stacked heads
    loss = F.cross_entropy(logits.flatten(0, -2), y.repeat(logits[..., 0].numel() // len(y)),
                           reduction="none").view(logits.shape[:-1]).mean(dim=-1)
    nan = torch.full_like(loss, math.nan).detach()  # LP has no regulariser terms: "not computed"
    parts = torch.stack([loss.detach(), nan, nan, nan, loss.detach()])
    return loss, parts, logits, y


def _two_view_step_loss(head: nn.Module, source: ViewSource, generator: torch.Generator, index: torch.Tensor,
                        y: torch.Tensor, *, w_mse: float, w_cov: float, w_svd: float, svd_top_k: int,
                        svd_driver: str = "") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two views of the B images ``index`` from ``source``, stacked as 2B rows ``[view w; view s]``: ``nmtune_loss``
    on the head's z and logits (cross-entropy over both views when every weight is 0)."""
    f_w, f_s = source(index, generator)
    f = torch.cat([f_w, f_s])
    z = head.features(f)
    logits = head.classifier(z)
    k = min(svd_top_k, *z.shape[-2:])  # a short last batch has fewer singular values
    loss, part_dict = nmtune_loss(logits, y, z, f, w_mse=w_mse, w_cov=w_cov, w_svd=w_svd, k=k,
                                  svd_driver=svd_driver)
    return loss, torch.stack([part_dict[name] for name in PARTS]), logits, y.repeat(2)


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
                           w_svd: float, svd_top_k: int, feature_noise: float, svd_driver: str = "") -> None:
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
    if svd_driver not in ("", *ref.CUDA_SVD_DRIVERS):
        raise ValueError(f"svd_driver={svd_driver!r}; accepted: '' (PyTorch's default) or one of "
                         f"{', '.join(ref.CUDA_SVD_DRIVERS)}")
    if method == "nmtune" and w_svd != 0:
        b = min(batch_size, n)
        bound = min(2 * b, num_features)
        if not (isinstance(svd_top_k, numbers.Integral) and 1 <= svd_top_k <= bound):
            raise ValueError(f"svd_top_k={svd_top_k!r} is outside the accepted range [1, {bound}]: a step's z is "
                             f"2B×D = {2 * b}×{num_features}, so it has min(2B, D) = {bound} singular values "
                             f"(batch_size={b}, n_features={num_features})")
