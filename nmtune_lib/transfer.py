"""Transfer of a frozen backbone to a task suite: LP, MLP and NMTune heads on every task, as one xarray Dataset.

For each task the frozen features are extracted once (cached on disk, keyed by the checkpoint hash): eval features
of the training set (for LP), K weak views of it (for MLP and NMTune in ``cached`` mode) and eval features of every
test domain. Each head is fitted on the training set and scored on every test domain. ``online`` mode re-encodes
both views through the backbone at every step instead (the reference code's behaviour); the mode that produced
each number is stored with it.

Result Dataset dims: (noise_ratio, seed, method, task, test_domain); ``accuracy`` in [0, 1] (NaN where a task has no
such test domain), ``fit_seconds``, ``head_mode``; per-task coordinates ``task_kind`` (id/ood), ``train_domain`` and
``chance``; the spectrum of the tuned features z of each method on one reference test set.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

ABLATIONS: dict[str, dict[str, float]] = {  # method name → which regulariser weights stay on (others set to 0)
    "mse_only": {"w_mse": 1, "w_cov": 0, "w_svd": 0},
    "cov_only": {"w_mse": 0, "w_cov": 1, "w_svd": 0},
    "svd_only": {"w_mse": 0, "w_cov": 0, "w_svd": 1},
    "no_mse": {"w_mse": 0, "w_cov": 1, "w_svd": 1},
    "no_cov": {"w_mse": 1, "w_cov": 0, "w_svd": 1},
    "no_svd": {"w_mse": 1, "w_cov": 1, "w_svd": 0},
}


@dataclass(frozen=True)
class Score:
    """One fitted head scored on one test domain."""

    task: str
    method: str
    test_domain: str
    accuracy: float
    fit_seconds: float
    head_mode: str


def transfer_dataset(scores: Sequence[Score], tasks: Sequence[Any], *, noise_ratio: float, seed: int,
                     tuned_spectrum: dict[str, dict[str, float]] | None = None, attrs: dict[str, Any] | None = None
                     ) -> xr.Dataset:
    """Scores of one run → Dataset with dims (noise_ratio, seed, method, task, test_domain)."""
    methods = list(dict.fromkeys(s.method for s in scores))
    task_names = [t.name for t in tasks]
    domains = list(dict.fromkeys(d for t in tasks for d in t.tests))
    acc = np.full((1, 1, len(methods), len(task_names), len(domains)), np.nan)
    secs = np.full((1, 1, len(methods), len(task_names)), np.nan)
    mode = np.full((1, 1, len(methods), len(task_names)), "", dtype=object)
    for s in scores:
        m, t = methods.index(s.method), task_names.index(s.task)
        acc[0, 0, m, t, domains.index(s.test_domain)] = s.accuracy
        secs[0, 0, m, t], mode[0, 0, m, t] = s.fit_seconds, s.head_mode
    dims = ("noise_ratio", "seed", "method", "task", "test_domain")
    data = {
        "accuracy": (dims, acc, {"long_name": "test accuracy of the head", "units": "fraction correct"}),
        "fit_seconds": (dims[:4], secs, {"long_name": "wall time to fit the head (features cached)", "units": "s"}),
        "head_mode": (dims[:4], mode, {"long_name": "how the two views were produced: cached K-view features or "
                                                    "online re-encoding"}),
    }
    if tuned_spectrum:
        names = [m for m in methods if m in tuned_spectrum]
        for metric in ("sve", "p1", "sigma1"):
            data[f"tuned_{metric}"] = (("noise_ratio", "seed", "tuned_method"),
                                       np.array([[[tuned_spectrum[m][metric] for m in names]]]),
                                       {"long_name": f"{metric} of the tuned features z (f for LP), column centring"})
    coords = {
        "noise_ratio": ("noise_ratio", [float(noise_ratio)], {"units": "fraction of pre-training labels flipped"}),
        "seed": ("seed", np.array([seed], dtype=np.int64)),
        "method": ("method", np.array(methods, dtype=object)),
        "task": ("task", np.array(task_names, dtype=object)),
        "test_domain": ("test_domain", np.array(domains, dtype=object)),
        "task_kind": ("task", np.array([t.kind for t in tasks], dtype=object), {"long_name": "id or ood"}),
        "train_domain": ("task", np.array([t.train_domain for t in tasks], dtype=object)),
        "chance": ("task", np.array([t.chance for t in tasks]), {"long_name": "majority-class accuracy"}),
    }
    if tuned_spectrum:
        coords["tuned_method"] = ("tuned_method", np.array([m for m in methods if m in tuned_spectrum], dtype=object))
    return xr.Dataset(data, coords, attrs or {})


def head_hyperparameters(config, method: str) -> dict[str, Any]:
    """The fit_head keyword arguments of ``method`` (lp, mlp, nmtune or an ablation name) from the config."""
    base = dict(epochs=config.head_epochs, batch_size=config.head_batch_size, weight_decay=config.head_weight_decay,
                k=config.svd_top_k)
    if method == "lp":
        return dict(base, method="lp", lr=config.lp_lr)
    weights = dict(w_mse=config.w_mse, w_cov=config.w_cov, w_svd=config.w_svd)
    if method == "mlp":
        weights = dict(w_mse=0.0, w_cov=0.0, w_svd=0.0)
    elif method in ABLATIONS:
        weights = {k: weights[k] * on for k, on in ABLATIONS[method].items()}
    elif method != "nmtune":
        raise ValueError(f"unknown method {method!r}; accepted: lp, mlp, nmtune, {', '.join(ABLATIONS)}")
    return dict(base, method="nmtune" if method != "mlp" else "mlp", lr=config.mlp_lr, **weights)


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predictions == labels).float().mean())


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start
