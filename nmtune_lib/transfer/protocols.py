"""The two protocols of claim 4 and the heads each one fits (docs/paper.md, "Two protocols for claim 4").

- ``reference``: exactly the reference code. LP on cached eval features (AdamW lr 1e-2); MLP and NMTune on two
  augmented views (lr 1e-3); 30 epochs, batch 64, per-step cosine. LP and the MLP heads see different inputs and
  learning rates, so NMTune − LP mixes head capacity, inputs and learning rate.
- ``matched``: a fair comparison. Every head (LP included) trains on the same two views with the same budget, and
  each head's learning rate is chosen from ``config.lr_grid`` on a seeded, stratified held-out ``holdout_fraction``
  of its own training set (never the test split), then the head is refitted on the whole training set.

A head is described by a ``HeadSpec`` (the ``fit_head`` keyword arguments less the data); the regulariser variants
of the ablation and the sensitivity are NMTune specs with other weights.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from ..data.datasets import stratified_subset
from ..reference import sensitivity_name

ABLATIONS: dict[str, dict[str, float]] = {  # variant name → which regulariser weights stay on (others set to 0)
    "mse_only": {"w_mse": 1, "w_cov": 0, "w_svd": 0},
    "cov_only": {"w_mse": 0, "w_cov": 1, "w_svd": 0},
    "svd_only": {"w_mse": 0, "w_cov": 0, "w_svd": 1},
    "no_mse": {"w_mse": 0, "w_cov": 1, "w_svd": 1},
    "no_cov": {"w_mse": 1, "w_cov": 0, "w_svd": 1},
    "no_svd": {"w_mse": 1, "w_cov": 1, "w_svd": 0},
}


@dataclass(frozen=True)
class HeadSpec:
    """One head to fit: its method, learning rate, regulariser weights and input ("eval" features or "views")."""

    method: str  # lp | mlp | nmtune (ablation and sensitivity variants are nmtune with other weights)
    lr: float
    inputs: str  # "eval": single-view eval features; "views": two augmented views per step
    epochs: int
    batch_size: int
    weight_decay: float
    w_mse: float = 0.0
    w_cov: float = 0.0
    w_svd: float = 0.0
    svd_top_k: int = 5
    svd_driver: str = ""  # cuSOLVER's SVD driver on CUDA ("" = PyTorch's)

    def fit_kwargs(self) -> dict[str, Any]:
        return dict(method=self.method, lr=self.lr, epochs=self.epochs, batch_size=self.batch_size,
                    weight_decay=self.weight_decay, w_mse=self.w_mse, w_cov=self.w_cov, w_svd=self.w_svd,
                    svd_top_k=self.svd_top_k, svd_driver=self.svd_driver)


def head_spec(config, method: str, *, inputs: str | None = None, lr: float | None = None) -> HeadSpec:
    """The spec of ``method`` (lp, mlp, nmtune or an ablation name) from the config, as the reference code trains
    it unless ``inputs``/``lr`` say otherwise."""
    base = dict(epochs=config.head_epochs, batch_size=config.head_batch_size, weight_decay=config.head_weight_decay,
                svd_top_k=config.svd_top_k, svd_driver=config.svd_driver)
    if method == "lp":
        return HeadSpec("lp", config.lp_lr if lr is None else lr, inputs or "eval", **base)
    if method == "ft":  # full fine-tuning: the matched protocol's views, its own learning rate and epochs
        if lr is None:
            raise ValueError("ft has no reference learning rate: it is chosen on held-out data (matched protocol)")
        return HeadSpec("ft", lr, "views", **{**base, "epochs": config.ft_epochs})
    weights = dict(w_mse=config.w_mse, w_cov=config.w_cov, w_svd=config.w_svd)
    if method == "mlp":
        weights = dict(w_mse=0.0, w_cov=0.0, w_svd=0.0)
    elif method in ABLATIONS:
        weights = {k: weights[k] * on for k, on in ABLATIONS[method].items()}
    elif method != "nmtune":
        raise ValueError(f"unknown method {method!r}; accepted: lp, mlp, nmtune, ft, {', '.join(ABLATIONS)}")
    return HeadSpec("mlp" if method == "mlp" else "nmtune", config.mlp_lr if lr is None else lr, inputs or "views",
                    **base, **weights)


def sensitivity_specs(config) -> dict[str, HeadSpec]:
    """NMTune with the three regulariser weights scaled together by each of ``config.reg_scales`` (scale 1 is
    ``nmtune`` itself and is not repeated), plus one weight ``single_lambda`` on all three terms (0 = skipped)."""
    nmtune = head_spec(config, "nmtune")
    out = {}
    for scale in config.reg_scales:
        if scale != 1.0:
            out[sensitivity_name(scale)] = replace(nmtune, w_mse=nmtune.w_mse * scale, w_cov=nmtune.w_cov * scale,
                                                   w_svd=nmtune.w_svd * scale)
    if config.single_lambda > 0:
        lam = config.single_lambda
        out[f"nmtune_single{lam:g}"] = replace(nmtune, w_mse=lam, w_cov=lam, w_svd=lam)
    return out


def reference_specs(config, methods) -> dict[str, HeadSpec]:
    """The reference protocol: LP on eval features at ``lp_lr``, MLP/NMTune on views at ``mlp_lr``; full
    fine-tuning (``ft``), which the reference code lacks, only under the matched protocol."""
    return {m: head_spec(config, m) for m in methods if m != "ft"}


def holdout_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit index, held-out index): a seeded, class-stratified ``fraction`` of a training set held out."""
    n = len(labels)
    size = max(int(labels.unique().numel()), round(fraction * n))
    held = stratified_subset(labels, size, seed)
    keep = torch.ones(n, dtype=torch.bool)
    keep[held] = False
    return torch.nonzero(keep).squeeze(1), held


def candidate_specs(config, method: str) -> list[HeadSpec]:
    """The matched protocol's candidates for ``method``: two-view inputs, one spec per ``config.lr_grid`` entry."""
    return [head_spec(config, method, inputs="views", lr=float(lr)) for lr in config.lr_grid]


def select_lr(config, method: str, fit: Callable[[HeadSpec, torch.Tensor], Any],
              score: Callable[[Any, torch.Tensor], float], split: tuple[torch.Tensor, torch.Tensor]
              ) -> tuple[float, dict[float, float]]:
    """The matched protocol's choice of learning rate for ``method`` on two-view inputs.

    ``split`` is (fit index, held-out index) of the training set (``holdout_split``); ``fit(spec, index)`` trains a
    head on the training samples ``index``; ``score(head, index)`` is its accuracy on the samples ``index`` (eval
    features). Returns the best learning rate of ``config.lr_grid`` on the held-out part (ties go to the earlier
    candidate) and every candidate's held-out accuracy.
    """
    fit_index, held = split
    accuracy = {}
    for spec in candidate_specs(config, method):
        accuracy[spec.lr] = score(fit(spec, fit_index), held)
    best = max(accuracy, key=lambda lr: (accuracy[lr], -list(accuracy).index(lr)))
    return best, accuracy

