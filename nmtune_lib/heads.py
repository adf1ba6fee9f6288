"""Heads on frozen features: the linear probe and NMTune's residual MLP, and their eval-mode logits.

Glossary: N samples, C classes, D feature width. Every head exposes ``features(f)`` (what the classifier sees: f
itself, or NMTune's z) and ``classifier``; ``tuning.fit_head`` trains them.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from . import reference as ref


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

        h = Linear(D, eD) → BatchNorm1d(eD) → ReLU → Linear(eD, D)      (e = ``expansion``)
        z = s ⊙ h + f                                                   (s ∈ R^D learnable, init ``scale_init``)
        logits = Linear(D, C)(z)                                        (kaiming-uniform weight, zero bias)

    ``features(f)`` returns z (N×D); ``forward(f)`` the logits. BatchNorm uses batch statistics in train mode and
    running statistics in eval mode.
    """

    def __init__(self, num_features: int, num_classes: int, *, expansion: int = ref.EXPANSION,
                 scale_init: float = ref.SCALE_INIT, generator: torch.Generator | None = None):
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
