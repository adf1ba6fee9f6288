"""Batched head tuning: every head that shares a view source and a minibatch order trained in one pass.

Glossary: H heads, N samples, C classes, D feature width, B images per step (2B rows: two views).

One run of the study trains dozens of small heads on the same task with the same seed: LP, MLP and NMTune, the
ablation variants, the regulariser scales and the learning-rate candidates of the matched protocol. With one seed
they all see the same minibatches and the same views (``tuning.head_generators``), so one step serves all of them:
the two views are drawn once, ``StackedHeads`` runs the heads on them and stacks their z and logits (H×2B×D,
H×2B×C), ``nmtune_loss`` takes per-head weights (the SVD batched, and only for the heads that use it), one backward
pass reaches every head, and one fused AdamW steps them all (a parameter group per learning rate; the per-step
cosine is the same for all, since the heads of one batch have the same number of steps).

Each head runs its own layers (``F.linear``, BatchNorm: the kernels of the head alone) rather than one batched
product over stacked weights: a batched product picks its own kernel and rounding (measured here: it matches the
single-head product at D = 128 but not at D = 49), and then a head's numbers would depend on which other heads share
its batch. This way ``fit_heads`` returns, bit for bit, what ``fit_head`` returns for each head with the same seed
(tests/test_batched_tuning.py, and the whole transfer step in tests/test_protocols.py). On this 2-core CPU the
heads' arithmetic (the SVD above all) dominates a step, so batching saves the per-head overhead only;
``bench/head_tuning.py`` measures it. Each head's ``seconds`` is its share of the batch's wall time.

On a GPU a head's step is kernel launches, not arithmetic, and per-head kernels keep one launch per layer per head.
There (``stacked``, the default on CUDA) the heads of one kind and learning rate become one ``HeadStack``: each
parameter gets a leading head dimension, the first layer of all heads is one product on the shared f, BatchNorm one
call over the H·eD channels (per-head statistics), the other layers batched products. Those round differently from
a head alone, so stacked heads equal ``fit_head`` to rounding only (tests/test_batched_tuning.py). On an H200 the
stacked heads took 3.3 ms per head-step against 7.1 ms for a head alone, the SVD of the dominant-singular-value term
being most of the rest (README, "Benchmarks"; ``bench/head_step_profile.py``).
"""
from __future__ import annotations

import itertools
import math
from functools import partial
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import reference as ref
from .heads import MLPHead
from .losses import PARTS
from .models import resolve_device
from .tuning import (HeadFit, _as_labels, _check_hyperparameters, _epoch, _eval_step_loss, _two_view_step_loss,
                     _view_source, adamw, head_generators, new_head, train_epochs)

HEAD_KEYS = ("method", "lr", "w_mse", "w_cov", "w_svd", "svd_top_k")  # what may differ between batched heads


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


def fit_heads(views, labels, heads: Sequence[Mapping[str, Any]], *, num_classes: int | None = None,
              epochs: int = ref.EPOCHS, batch_size: int = ref.BATCH_SIZE, weight_decay: float = ref.WEIGHT_DECAY,
              feature_noise: float = 0.0, seed: int = 0, device: str | torch.device = "cpu",
              progress: bool = False, stacked: bool | None = None, svd_driver: str = "") -> list[HeadFit]:
    """Train the heads ``heads`` on ``views``/``labels`` together, as ``fit_head`` would train each one with the
    same seed, and return one ``HeadFit`` per head, in order.

    heads: one mapping per head of ``fit_head``'s per-head arguments (``HEAD_KEYS``: method, and optionally lr,
        w_mse, w_cov, w_svd, svd_top_k, with ``fit_head``'s defaults); ``mlp`` and ``lp`` force the regulariser
        weights to 0. The heads share everything else (the keywords here, as in ``fit_head``). With eval features
        N×D every head must be ``lp`` (single view) or none (views from the features); the svd_top_k of the heads
        that use the SVD term must agree.
    svd_driver: cuSOLVER's driver of the dominant-singular-value term on CUDA (as in ``fit_head``), for every head.
    stacked: stack the parameters of the heads of one kind and learning rate (``HeadStack``: a few batched kernels
        per step whatever the number of heads) instead of running each head's own layers; None (default): on CUDA,
        where a head's step is launch overhead, not arithmetic. Stacked heads equal the heads trained one by one to
        rounding (tests/test_batched_tuning.py), not bit for bit.
    Invalid inputs raise ``ValueError`` naming the head and the value, before any training.
    """
    if not heads:
        raise ValueError("fit_heads needs at least one head")
    device = resolve_device(str(device))
    labels = _as_labels(labels)
    heads = [_resolve_head(i, h) for i, h in enumerate(heads)]
    methods = {h["method"] for h in heads}
    source, mode, n, num_features = _view_source(views, heads[0]["method"], labels, feature_noise, device)
    if mode in ("eval", "features") and len({m == "lp" for m in methods}) > 1:
        raise ValueError(f"eval features N×D train lp on one view and {sorted(methods - {'lp'})} on two: heads "
                         "with different inputs cannot share a batch; accepted: all lp or no lp")
    num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    for h in heads:
        _check_hyperparameters(n=n, num_features=num_features, num_classes=num_classes, labels=labels, epochs=epochs,
                               batch_size=batch_size, weight_decay=weight_decay, feature_noise=feature_noise,
                               svd_driver=svd_driver, **h)
    svd_k = {h["svd_top_k"] for h in heads if h["w_svd"]}
    if len(svd_k) > 1:
        raise ValueError(f"svd_top_k differs between the heads that use the SVD term ({sorted(svd_k)}); accepted: "
                         "one value per batch")

    stack = device.type == "cuda" if stacked is None else bool(stacked)
    kind = lambda h: (h["method"] == "lp", float(h["lr"])) if stack else ()  # noqa: E731  (a stack's heads share it)
    order = sorted(range(len(heads)), key=lambda i: kind(heads[i]))  # stable: one by one, the order given
    heads = [heads[i] for i in order]
    _, order_gen, view_gen = head_generators(seed)
    modules = []
    for head in heads:  # every head initialised as fit_head would, from a fresh generator of the same seed
        modules.append(new_head(head["method"], num_features, num_classes, generator=head_generators(seed)[0],
                                device=device))
    runs = [len(list(run)) for _, run in itertools.groupby(heads, kind)]
    stacked = StackedHeads(modules, runs if stack else None)
    rates = sorted({float(h["lr"]) for h in heads})
    group_of = [rates.index(float(h["lr"])) for h in heads]
    units = list(stacked.stacks) if stack else modules  # what the optimizer steps: stacks, or the heads themselves
    unit_group = [group_of[modules.index(u.heads[0] if stack else u)] for u in units]  # a stack's heads share one
    optimizer = adamw([{"params": [p for u, g in zip(units, unit_group) if g == i for p in u.parameters()],
                        "lr": lr} for i, lr in enumerate(rates)], weight_decay=weight_decay, device=device)
    weights = {w: torch.tensor([h[w] for h in heads], device=device) for w in ("w_mse", "w_cov", "w_svd")}
    step_loss = (partial(_eval_step_loss, stacked, source) if mode == "eval" else
                 partial(_two_view_step_loss, stacked, source, view_gen, svd_top_k=min(svd_k or {ref.SVD_TOP_K}),
                         svd_driver=svd_driver, **weights))
    train = partial(_epoch, stacked, optimizer, step_loss, labels.to(device), order_gen, batch_size=batch_size,
                    total_steps=epochs * math.ceil(n / batch_size))
    history, seconds = train_epochs(stacked, train, desc=f"{len(heads)} heads ({mode})", epochs=epochs,
                                    device=device, progress=progress)
    stacked.unstack()
    common = dict(mode=mode, num_classes=num_classes, num_features=num_features, n=n, epochs=epochs,
                  batch_size=batch_size, weight_decay=weight_decay, feature_noise=feature_noise, seed=seed,
                  device=str(device), views=int(source.features.shape[1]) if mode == "cached" else None,
                  batched_with=len(heads), stacked=stack, svd_driver=svd_driver)
    fits = [HeadFit(module, head["method"], mode, _head_history(history, i, group_of[i], len(rates)),
                    {**common, **head}, seconds / len(heads), device)
            for i, (module, head) in enumerate(zip(modules, heads))]
    return [fit for _, fit in sorted(zip(order, fits), key=lambda pair: pair[0])]  # back to the order given


def _resolve_head(index: int, head: Mapping[str, Any]) -> dict[str, Any]:
    """One head's arguments with ``fit_head``'s defaults filled in (unknown keys and methods named)."""
    unknown = set(head) - set(HEAD_KEYS)
    if unknown or head.get("method") not in ref.METHODS:
        raise ValueError(f"head {index}: {dict(head)!r}; accepted: method in {', '.join(ref.METHODS)} and the keys "
                         f"{', '.join(HEAD_KEYS)}")
    lr = head.get("lr")
    out = dict(method=head["method"], lr=ref.default_lr(head["method"]) if lr is None else lr,
               w_mse=head.get("w_mse", ref.W_MSE), w_cov=head.get("w_cov", ref.W_COV),
               w_svd=head.get("w_svd", ref.W_SVD), svd_top_k=head.get("svd_top_k", ref.SVD_TOP_K))
    if out["method"] in ("mlp", "lp"):
        out.update(w_mse=0.0, w_cov=0.0, w_svd=0.0)
    return out


def _head_history(history: list[dict[str, Any]], position: int, group: int, groups: int) -> list[dict[str, float]]:
    """Head ``position``'s rows of a batch's history (its part values; the learning rate of its group)."""
    return [{"epoch": row["epoch"], "lr": row["lr"][group] if groups > 1 else row["lr"],
             **{name: row[name][position] for name in (*PARTS, "train_acc")}, "seconds": row["seconds"]}
            for row in history]
