"""Full fine-tuning (``ft``): the baseline the paper leaves open, the backbone itself trained beside a linear head.

Glossary: N samples, C classes, D feature width, K cached augmented views per image, B images per step.

``fit_finetune`` copies the frozen backbone (the run's own weights are never touched, in memory or on disk) and
trains it with a ``Linear(D, C)`` head initialised as the linear probe's (kaiming-uniform weight, zero bias), on two
views per step with cross-entropy over both, exactly as the matched protocol trains its heads: the same seeded
minibatch order, the same view draws (``ImageViews``: the K augmented *images* from which the cached views' features
were extracted, drawn as ``views.CachedViews`` draws them; or fresh augmentations, ``online``), AdamW with a per-step
cosine to 0, the backbone at ``lr × backbone_lr_scale`` and the head at ``lr``. BatchNorm of the backbone trains on
batch statistics and tests on its running ones. Its learning rate is chosen like the matched heads' (held-out part
of the training set; ``transfer.downstream``); ``ft_epochs`` epochs of the heads' schedule (docs/paper.md,
"Deviations").
"""
from __future__ import annotations

import copy
import math
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.augment import to_float
from ..pretraining.models import resolve_device
from ..spectrum.features import AUG_BLOCK, view_generator
from .tuning import HeadFit, adamw, head_generators, new_head, run_epoch, train_epochs


class FineTuneHead(nn.Module):
    """A backbone and a linear classifier trained together: ``features(x)`` = the backbone's pre-logits of images
    ``x`` (float N×C×H×W in [0, 1]), ``classifier`` the linear head; ``forward(x)`` the logits."""

    def __init__(self, backbone: nn.Module, classifier: nn.Module):
        super().__init__()
        self.backbone, self.classifier = backbone, classifier

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.pre_logits(x).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def view_images(images: torch.Tensor, augment, views: int, seed: int) -> torch.Tensor:
    """The K augmented views (float N×K×C×H×W in [0, 1]) of uint8 ``images`` that ``extract_features`` encodes for
    the same ``augment``, ``views`` and ``seed``: view k of block b drawn from ``view_generator(seed, k, b)``."""
    x = to_float(images)
    out = torch.empty((len(x), views, *x.shape[1:]), dtype=torch.float32)
    for k in range(views):
        for b0 in range(0, len(x), AUG_BLOCK):
            out[b0:b0 + AUG_BLOCK, k] = augment(x[b0:b0 + AUG_BLOCK], view_generator(seed, k, b0 // AUG_BLOCK))
    return out


class ImageViews:
    """Two views of images per step, drawn as ``views.CachedViews`` draws its features (two different of the K
    cached views, uniform over ordered pairs), or augmented afresh when ``augment`` is given (``online``)."""

    mode = "finetune"

    def __init__(self, images: torch.Tensor, *, augment=None, device: str | torch.device = "cpu"):
        self.images, self.augment, self.device = images, augment, torch.device(device)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: torch.Tensor) -> "ImageViews":
        return ImageViews(self.images[torch.as_tensor(index)], augment=self.augment, device=self.device)

    def __call__(self, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.augment is not None:
            x = to_float(self.images[index].to(self.device))
            return self.augment(x, generator), self.augment(x, generator)
        k = self.images.shape[1]
        first = torch.randint(k, (len(index),), generator=generator, device=generator.device)
        other = torch.randint(k - 1, (len(index),), generator=generator, device=generator.device)
        second = other + (other >= first)
        return (self.images[index, first].to(self.device), self.images[index, second].to(self.device))


def _step_loss(model: FineTuneHead, views: ImageViews, generator: torch.Generator, index: torch.Tensor,
               y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy over both views of the B images ``index`` (2B rows ``[view w; view s]``), as the matched
    protocol's linear probe takes it; the regulariser parts are "not computed" (NaN)."""
    x_w, x_s = views(index, generator)
    logits = model(torch.cat([x_w, x_s]))
    labels = y.repeat(2)
    loss = F.cross_entropy(logits.float(), labels)
    nan = torch.full_like(loss, math.nan).detach()
    return loss, torch.stack([loss.detach(), nan, nan, nan, loss.detach()]), logits, labels


def fit_finetune(backbone: nn.Module, views: ImageViews, labels: torch.Tensor, *, num_classes: int, epochs: int,
                 batch_size: int, lr: float, backbone_lr_scale: float, weight_decay: float, seed: int = 0,
                 device: str | torch.device = "cpu", progress: bool = False) -> HeadFit:
    """Fine-tune a copy of ``backbone`` with a linear head on ``views``/``labels`` (see the module docstring) and
    return it as a ``HeadFit`` (method ``ft``, mode ``finetune``; its ``head`` is the ``FineTuneHead``, whose
    ``accuracy`` takes float images)."""
    if not (lr > 0 and backbone_lr_scale > 0 and epochs >= 1 and batch_size >= 1):
        raise ValueError(f"fit_finetune: lr={lr}, backbone_lr_scale={backbone_lr_scale}, epochs={epochs}, "
                         f"batch_size={batch_size}; accepted: positive values")
    device = resolve_device(str(device))
    init_gen, order_gen, view_gen = head_generators(seed)
    tuned = copy.deepcopy(backbone).to(device)
    for p in tuned.parameters():
        p.requires_grad_(True)
    num_features = int(backbone.num_features)
    model = FineTuneHead(tuned, new_head("lp", num_features, num_classes, generator=init_gen, device=device))
    optimizer = adamw([{"params": list(tuned.parameters()), "lr": lr * backbone_lr_scale},
                       {"params": list(model.classifier.parameters()), "lr": lr}],
                      weight_decay=weight_decay, device=device)
    step_loss = partial(_step_loss, model, views, view_gen)
    labels = torch.as_tensor(labels).long()
    train = partial(run_epoch, model, optimizer, step_loss, labels.to(device), order_gen, batch_size=batch_size,
                    total_steps=epochs * math.ceil(len(labels) / batch_size))
    history, seconds = train_epochs(model, train, desc="ft (backbone and head)", epochs=epochs, device=device,
                                    progress=progress)
    history = [{**row, "lr": row["lr"][1]} for row in history]  # the head's rate; the backbone's is its scale of it
    params = dict(method="ft", mode=views.mode, num_classes=num_classes, num_features=num_features, n=len(labels),
                  epochs=epochs, batch_size=batch_size, lr=lr, backbone_lr_scale=backbone_lr_scale,
                  weight_decay=weight_decay, seed=seed, device=str(device))
    return HeadFit(model, "ft", views.mode, history, params, seconds, device)
