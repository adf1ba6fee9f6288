"""Training heads on frozen features: ``fit_head`` (one) and ``fit_heads`` (several in one pass), and the
``HeadFit`` each returns.

Glossary: N samples, C classes, D feature width, K cached augmented views per image, B images per step, H heads.

Three methods (docs/paper.md, "Downstream protocol" and "NMTune"), all trained with AdamW, a per-step cosine
schedule to 0 without warm-up, and the last epoch reported (no model selection); the defaults are ``reference``'s:

- ``lp``: ``LinearProbe`` on eval (single-view) features N×D, plain cross-entropy, lr ``LP_LR`` (the reference
  protocol); given two-view inputs instead (cached views, a view source) it trains on both views with cross-entropy
  over the 2B rows, exactly like ``mlp`` without the MLP (the matched protocol).
- ``nmtune``: ``MLPHead`` on two augmented views per image (from a view source, see ``views``), ``nmtune_loss`` (CE
  on both views + consistency + covariance + dominant singular values), lr ``MLP_LR``.
- ``mlp``: the same module and pipeline as ``nmtune`` with the three regulariser weights at 0.

``HeadFit.mode`` records where the training views came from, so every number says how it was produced.

**Several heads at once** (``fit_heads``). One run of the study trains dozens of small heads on the same task with the
same seed: LP, MLP and NMTune, the ablation variants, the regulariser scales and the learning-rate candidates of the
matched protocol. With one seed they all see the same minibatches and the same views (``head_generators``), so one step
serves all of them: the two views are drawn once, ``StackedHeads`` runs the heads on them and stacks their z and logits
(H×2B×D, H×2B×C), ``nmtune_loss`` takes per-head weights (the SVD batched, and only for the heads that use it), one
backward pass reaches every head, and one fused AdamW steps them all (a parameter group per learning rate; the per-step
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
being most of the rest (bench/README.md; ``bench/head_step_profile.py``).
"""
from __future__ import annotations

import itertools
import math
import numbers
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import reference as ref
from ..pretraining.models import resolve_device
from .heads import LinearProbe, MLPHead, StackedHeads, predict_logits
from .losses import PARTS, nmtune_loss
from .views import ViewSource, as_labels, view_source

# One training step's loss: (index int64 B, labels y of those B) -> (loss, PARTS stacked, logits, their labels).
HEAD_KEYS = ("method", "lr", "w_mse", "w_cov", "w_svd", "svd_top_k")  # what may differ between batched heads
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
    labels = as_labels(labels)
    source, mode, n, num_features = view_source(views, method, labels, feature_noise, device)
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
    train = partial(run_epoch, head, optimizer, step_loss, labels.to(device), order_gen, batch_size=batch_size,
                    total_steps=epochs * math.ceil(n / batch_size))
    history, seconds = train_epochs(head, train, desc=f"{method} head ({mode})", epochs=epochs, device=device,
                                    progress=progress, log=log, eval_features=eval_features, eval_labels=eval_labels)
    return HeadFit(head, method, mode, history, params, seconds, device)


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
    device = resolve_device(str(device))
    labels = as_labels(labels)
    heads = [_resolve_head(i, h) for i, h in enumerate(heads)]
    source, mode, n, num_features, num_classes, svd_k = _check_batch(views, labels, heads, num_classes=num_classes,
                                                                     epochs=epochs, batch_size=batch_size,
                                                                     weight_decay=weight_decay,
                                                                     feature_noise=feature_noise,
                                                                     svd_driver=svd_driver, device=device)
    stack = device.type == "cuda" if stacked is None else bool(stacked)
    order, heads, modules, stacked, rates, group_of, optimizer = _batch(heads, stack, num_features, num_classes,
                                                                        seed=seed, weight_decay=weight_decay,
                                                                        device=device)
    _, order_gen, view_gen = head_generators(seed)
    weights = {w: torch.tensor([h[w] for h in heads], device=device) for w in ("w_mse", "w_cov", "w_svd")}
    step_loss = (partial(_eval_step_loss, stacked, source) if mode == "eval" else
                 partial(_two_view_step_loss, stacked, source, view_gen, svd_top_k=min(svd_k or {ref.SVD_TOP_K}),
                         svd_driver=svd_driver, **weights))
    train = partial(run_epoch, stacked, optimizer, step_loss, labels.to(device), order_gen, batch_size=batch_size,
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


def _batch(heads: list[dict[str, Any]], stack: bool, num_features: int, num_classes: int, *, seed: int,
           weight_decay: float, device: torch.device):
    """The heads of one ``fit_heads`` call as modules (in the order they are stacked), the ``StackedHeads`` that
    runs them, their learning rates and the AdamW over them (a parameter group per learning rate)."""
    kind = lambda h: (h["method"] == "lp", float(h["lr"])) if stack else ()  # noqa: E731  (a stack's heads share it)
    order = sorted(range(len(heads)), key=lambda i: kind(heads[i]))  # stable: one by one, the order given
    heads = [heads[i] for i in order]
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
    return order, heads, modules, stacked, rates, group_of, optimizer


def _check_batch(views, labels: torch.Tensor, heads: list[dict[str, Any]], *, num_classes: int | None, epochs: int,
                 batch_size: int, weight_decay: float, feature_noise: float, svd_driver: str, device: torch.device):
    """``fit_heads``' checks before any training: (view source, mode, N, D, C, the svd_top_k values in use)."""
    if not heads:
        raise ValueError("fit_heads needs at least one head")
    methods = {h["method"] for h in heads}
    source, mode, n, num_features = view_source(views, heads[0]["method"], labels, feature_noise, device)
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
    return source, mode, n, num_features, num_classes, svd_k


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


def run_epoch(head: nn.Module, optimizer: torch.optim.Optimizer, step_loss: StepLoss, labels: torch.Tensor,
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
