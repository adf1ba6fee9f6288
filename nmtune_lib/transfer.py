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

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from .config import METHODS

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
                svd_top_k=config.svd_top_k)
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


def run_transfer(backbone, tasks: Sequence[Any], config, *, noise_ratio: float, seed: int, checkpoint_hash: str,
                 cache_dir=None, device: str = "cpu", methods: Sequence[str] | None = None,
                 ablation_tasks: Sequence[str] = (), spectrum_task: str | None = None, progress: bool = False,
                 log=print, attrs: dict[str, Any] | None = None) -> xr.Dataset:
    """Fit every method on every task (and the ablation variants on ``ablation_tasks``) and score every test domain.

    A head depends only on its training set and method, so tasks sharing a training set (e.g. the ID task and the
    ``real``-trained OOD task, or MNIST-5k and the digit shift) share one fitted head. ``spectrum_task`` names the
    task whose in-training-domain test set gives the spectrum of the tuned features z (default: the first task).
    """
    from .features import extract_features
    from .heads import OnlineViews, fit_head
    from .spectrum import singular_values, spectrum_metrics

    methods = list(methods or config.methods)
    features = lambda image_set, transform="eval", views=1: extract_features(  # noqa: E731
        backbone, image_set, transform=transform, views=views, seed=seed, device=device,
        batch_size=config.feature_batch_size, cache_dir=cache_dir, checkpoint_hash=checkpoint_hash,
        progress=progress)
    fitted: dict[tuple[str, str], Any] = {}
    scores: list[Score] = []
    tuned: dict[str, dict[str, float]] = {}
    spectrum_task = spectrum_task or tasks[0].name
    for task in tasks:
        variants = methods + (list(ABLATIONS) if task.name in ablation_tasks else [])
        train_key = _content_key(task.train)
        for method in variants:
            if (train_key, method) not in fitted:
                hyper = head_hyperparameters(config, method)
                if hyper["method"] == "lp":
                    views = features(task.train)
                elif config.head_mode == "cached":
                    views = features(task.train, "weak", config.views)
                else:
                    views = OnlineViews(backbone, task.train.images, device=device)
                fit = fit_head(views, task.train.labels, num_classes=task.num_classes, seed=seed, device=device,
                               progress=progress, **hyper)
                fitted[(train_key, method)] = fit
                log(f"{task.name:>22} {method:>8} ({fit.mode}): fitted in {fit.seconds:.1f} s")
            fit = fitted[(train_key, method)]
            for domain, test in task.tests.items():
                acc = fit.accuracy(features(test), test.labels)
                scores.append(Score(task.name, method, domain, acc, fit.seconds, fit.mode))
            if task.name == spectrum_task and method in METHODS:
                f = features(task.tests[task.train_domain])
                z = f if method == "lp" else _tuned_features(fit, f)
                tuned[method] = spectrum_metrics(singular_values(z, centering="column"), config.spectrum_top_k)
    return transfer_dataset(scores, tasks, noise_ratio=noise_ratio, seed=seed, tuned_spectrum=tuned, attrs=attrs)


def _tuned_features(fit, f: torch.Tensor) -> torch.Tensor:
    """z = s·h(f) + f of a fitted MLP/NMTune head, in eval mode."""
    with torch.no_grad():
        return torch.cat([fit.head.features(chunk.to(fit.device)).cpu() for chunk in f.split(4096)])


def _content_key(image_set) -> str:
    """Identity of a training set by content (the ``real`` rendering equals the original images)."""
    from .features import images_sha256
    from .noise import labels_sha256

    return images_sha256(image_set.images) + labels_sha256(image_set.labels)
