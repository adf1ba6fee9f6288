"""View sources: where the two views of each training step of a head come from.

Glossary: N samples, D feature width, K cached augmented views per image, B images per step.

A view source is a callable ``(index, generator) -> (f_w, f_s)``, each B×D float32 on the training device, with a
``mode`` naming it (``tuning.HeadFit.mode`` records it):

- ``CachedViews`` (mode ``"cached"``): K augmented views of every image encoded once (N×K×D); each step draws two
  *different* views per image with the seeded generator. K bounds the augmentation diversity and sets the one-off
  encoding cost (``StudyConfig.views``); ``bench/head_tuning.py`` measures the accuracy/time trade-off against online.
  Measured there with the earlier 0.35-1.0 crops (MNIST-5k, warmed-up resnet_narrow, 30 epochs, 3 seeds, CPU):
  cached − online test accuracy was −4.8 / −1.7 / −0.3 / +0.3 points for K = 2 / 4 / 8 / 16 — with few views the
  head memorises them (train CE 0.03 at K = 2 vs 0.70 online) — so K ≥ 8 reproduced the online numbers then.
- ``OnlineViews`` (mode ``"online"``): re-encodes two fresh augmentations of each image at every step through the
  frozen backbone, exactly as the reference code does (the GPU path).
- ``FeatureViews`` (mode ``"features"``, from a plain N×D matrix): both views are the features themselves, optionally
  perturbed by Gaussian noise (``noise`` × the per-dimension standard deviation, drawn independently per view). With
  ``noise=0`` (default) the views are identical, so the consistency term pulls normalize(z) towards normalize(f) of
  the same sample — NMTune without augmentation, for embeddings from any model or API.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

import numpy as np

import torch
import torch.nn as nn

from ..data.augment import ViewAugment, to_float
from ..pretraining.models import freeze, resolve_device


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


def as_labels(labels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``labels`` as an int64 CPU vector of class indices (anything else raises, naming what it got)."""
    labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"labels must be a 1-D integer vector of class indices, got {labels.dtype} "
                         f"of shape {tuple(labels.shape)}")
    return labels.long().cpu()


def view_source(views, method: str, labels: torch.Tensor, feature_noise: float,
                 device: torch.device) -> tuple[Any, str, int, int]:
    """What a head trains on: validate ``views`` against ``method`` and the labels; return (source, mode, N, D)."""
    if callable(views) and not isinstance(views, (torch.Tensor, np.ndarray)):
        n = len(views) if hasattr(views, "__len__") else len(labels)
        check_lengths(n, len(labels))
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
    check_lengths(len(features), len(labels))
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


def check_lengths(n_features: int, n_labels: int) -> None:
    if n_features != n_labels:
        raise ValueError(f"features have {n_features} samples but labels have {n_labels}; accepted: equal lengths")
