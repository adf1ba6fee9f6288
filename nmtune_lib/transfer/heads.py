"""Heads on frozen features: the linear probe and NMTune's residual MLP, and their eval-mode logits.

Glossary: N samples, C classes, D feature width, H heads. Every head exposes ``features(f)`` (what the classifier
sees: f itself, or NMTune's z) and ``classifier``; ``tuning.fit_head`` trains one, ``tuning.fit_heads`` several at
once through ``StackedHeads`` (each head's own layers, bit for bit as alone) or ``HeadStack`` (their parameters
stacked into batched kernels, equal to rounding: the GPU path).
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import reference as ref


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


class StackedHeads(nn.Module):
    """H heads (``MLPHead``/``LinearProbe``) run on the same features: ``features(f)`` → z stacked H×n×D,
    ``classifier(z)`` → logits H×n×C, ``forward(f)`` both; ``heads`` are the modules themselves.

    ``stacks``: None runs each head's own layers (bit for bit what the head gives alone); else the sizes of
    consecutive runs of heads of one kind (and one learning rate) whose parameters are stacked (``HeadStack``): one
    batched kernel per layer for the run; its numbers round like a batched product, not like each head alone.
    """

    def __init__(self, heads: Sequence[nn.Module], stacks: Sequence[int] | None = None):
        super().__init__()
        self.heads = nn.ModuleList(heads) if stacks is None else list(heads)  # stacked: the stacks train
        bounds = [0, *itertools.accumulate(stacks or ())]
        self.stacks = nn.ModuleList(HeadStack(heads[a:b]) for a, b in zip(bounds, bounds[1:]))

    def features(self, f: torch.Tensor) -> torch.Tensor:
        if self.stacks:
            return torch.cat([stack.features(f) for stack in self.stacks])
        return torch.stack([head.features(f) for head in self.heads])

    def classifier(self, z: torch.Tensor) -> torch.Tensor:
        if self.stacks:
            return torch.cat([stack.classifier(zs) for stack, zs in zip(self.stacks, z.split(
                [len(stack.heads) for stack in self.stacks]))])
        return torch.stack([head.classifier(zh) for head, zh in zip(self.heads, z.unbind(0))])

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(f))

    def unstack(self) -> None:
        """Copy the stacks' trained parameters and BatchNorm statistics back into the heads (their train/eval
        mode too)."""
        for stack in self.stacks:
            stack.unstack()


BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")  # BatchNorm1d's, stacked by HeadStack


class HeadStack(nn.Module):
    """H heads of one kind (all ``MLPHead`` or all ``LinearProbe``, of one shape) as one module: each parameter
    and BatchNorm buffer stacked along a leading head dimension, the first layer one product on the shared f, the
    others batched products (``baddbmm``), BatchNorm one ``F.batch_norm`` over the H·eD channels (per-head
    statistics). Starts as copies of the heads (which it does not register: its parameters are the stacked ones);
    ``unstack`` writes the trained values back."""

    def __init__(self, heads: Sequence[nn.Module]):
        super().__init__()
        kinds = {(type(h), tuple(p.shape for p in h.parameters())) for h in heads}
        if len(kinds) != 1:
            raise ValueError(f"HeadStack needs heads of one kind and shape, got {len(kinds)} kinds")
        self.heads = list(heads)
        self.names = [name for name, _ in heads[0].named_parameters()]
        self.params = nn.ParameterList(nn.Parameter(torch.stack([dict(h.named_parameters())[name].detach()
                                                                 for h in heads])) for name in self.names)
        self.mlp = isinstance(heads[0], MLPHead)
        if self.mlp:
            bn = heads[0].mlp[1]
            self.bn_momentum, self.bn_eps = bn.momentum, bn.eps
            for name in BN_BUFFERS:
                self.register_buffer(name, torch.stack([getattr(h.mlp[1], name) for h in heads]))

    def _param(self, name: str) -> torch.Tensor:
        return self.params[self.names.index(name)]

    def features(self, f: torch.Tensor) -> torch.Tensor:
        if f.ndim != 2:
            raise ValueError(f"HeadStack takes the n×D features all its heads share, got shape {tuple(f.shape)}")
        h, n = len(self.heads), f.shape[-2]
        if not self.mlp:
            return f.expand(h, *f.shape[-2:])
        # f is shared: the first layers of all heads are one product, n×(H·eD), the channels BatchNorm wants
        w1 = self._param("mlp.0.weight")
        x = F.linear(f, w1.view(-1, w1.shape[-1]), self._param("mlp.0.bias").view(-1))
        if self.training:
            self.num_batches_tracked += 1
        x = F.batch_norm(x, self.running_mean.view(-1), self.running_var.view(-1), self._param("mlp.1.weight").view(-1),
                         self._param("mlp.1.bias").view(-1), self.training, self.bn_momentum, self.bn_eps)
        x = torch.baddbmm(self._param("mlp.3.bias").unsqueeze(1), x.view(n, h, -1).transpose(0, 1).relu(),
                          self._param("mlp.3.weight").transpose(1, 2))
        return self._param("scale").unsqueeze(1) * x + f

    def classifier(self, z: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self._param("classifier.bias").unsqueeze(1), z,
                             self._param("classifier.weight").transpose(1, 2))

    def unstack(self) -> None:
        with torch.no_grad():
            for i, head in enumerate(self.heads):
                own = dict(head.named_parameters())
                for name, value in zip(self.names, self.params):
                    own[name].copy_(value[i])
                if self.mlp:
                    for name in BN_BUFFERS:
                        getattr(head.mlp[1], name).copy_(getattr(self, name)[i])
                head.train(self.training)


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
