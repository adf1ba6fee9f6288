"""NMTune's loss terms (docs/paper.md §6): consistency, covariance and dominant singular values, summed in one place.

Shapes: B images per step, each in two augmented views w and s, stacked as 2B rows ``[view w; view s]``; D the
feature width. ``f`` are the frozen backbone's features, ``z`` the head's features (``z = s ⊙ h(f) + f``).

    L = L_ce + w_mse · L_mse + w_cov · L_cov + w_svd · L_svd        (defaults: reference.W_MSE, W_COV, W_SVD)

where ``L_svd`` is returned already negated (``−mean of the top-k normalised singular values``), so every weight is
non-negative and the sum above is literally the code of ``nmtune_loss``.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from .. import reference as ref

PARTS = ("ce", "consistency", "covariance", "dominant_sv", "total")  # keys of nmtune_loss's dict, in order


@contextlib.contextmanager
def _full_precision(x: torch.Tensor):
    """Switch autocast off on ``x``'s device: the Gram matrix and the SVD must not run in bf16/fp16."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        yield


def off_diagonal(x: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of square n×n matrices as flat vectors of n² − n entries, in row-major order.

    x: n×n, or ...×n×n (one matrix per leading index, e.g. per head) → ...×(n² − n).
    """
    if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"off_diagonal needs square matrices, got shape {tuple(x.shape)}")
    keep = ~torch.eye(x.shape[-1], dtype=torch.bool, device=x.device)
    return x[..., keep]


def consistency_loss(z_s: torch.Tensor, f_w: torch.Tensor, *, eps: float = 1e-12) -> torch.Tensor:
    """L_mse = mean over the B·D entries of (normalize(z_s) − normalize(f_w).detach())², rows L2-normalised.

    z_s: B×D head features of view s (or H×B×D, one per head); f_w: B×D frozen features of view w (cross-view, no
    gradient to f_w), shared by the heads. ``eps`` guards the normalisation of an all-zero row. Returns a float32
    scalar (H values for H heads).
    """
    if z_s.shape[-2:] != f_w.shape[-2:] or f_w.ndim > z_s.ndim:
        raise ValueError(f"consistency_loss: z_s {tuple(z_s.shape)} and f_w {tuple(f_w.shape)} must have one shape")
    target = F.normalize(f_w.detach().float(), dim=-1, eps=eps)
    return (F.normalize(z_s.float(), dim=-1, eps=eps) - target).pow(2).mean(dim=(-2, -1))


def covariance_loss(z: torch.Tensor) -> torch.Tensor:
    """L_cov = Σ_{i≠j} C_ij² / D with C = z̄ᵀz̄ / (n − 1) and z̄ = z minus its mean over the n rows (n = 2B).

    z: n×D with n ≥ 2 (or H×n×D, one per head). Computed in float32 with autocast off. Returns a scalar (H values).
    """
    n, d = z.shape[-2:]
    if n < 2:
        raise ValueError(f"covariance_loss needs n >= 2 rows to estimate a covariance, got n={n}")
    with _full_precision(z):
        centred = z.float() - z.float().mean(dim=-2, keepdim=True)
        if centred.ndim == 2:
            cov = centred.T @ centred / (n - 1)
        else:  # one product per head: a batched product may round differently from a head's own
            cov = torch.stack([c.T @ c for c in centred.flatten(0, -3)]).view(*z.shape[:-2], d, d) / (n - 1)
        return off_diagonal(cov).pow(2).sum(dim=-1) / d


def dominant_singular_value_loss(z: torch.Tensor, k: int = ref.SVD_TOP_K, *, eps: float = 1e-12,
                                  driver: str = "") -> torch.Tensor:
    """L_svd = −(1/k) Σ_{i≤k} σ_i / Σ_j σ_j: minus the mean of the top-k normalised singular values of z.

    z: n×D (or H×n×D, one SVD per head), *uncentred* (n = 2B rows of both views); σ_1 ≥ σ_2 ≥ … are its min(n, D)
    singular values; 1 ≤ k ≤ min(n, D). The sign is already applied: the total adds ``w_svd · L_svd``, so a larger
    top-k share lowers the loss. The SVD runs in float32 with autocast off (batched over heads: one LAPACK call per
    head, so a head's value does not depend on the others), and only the singular values are differentiated
    (``svdvals``), whose gradient U·diag(g)·Vᵀ stays finite when singular values repeat or vanish (rank-deficient
    batches); ``eps`` keeps the normalisation finite for an all-zero z. ``driver``: cuSOLVER's SVD driver on CUDA
    (``reference.CUDA_SVD_DRIVERS``; "" PyTorch's default), ignored on the CPU (LAPACK). Returns a float32 scalar
    (H values).
    """
    bound = min(z.shape[-2:])
    if not 1 <= k <= bound:
        raise ValueError(f"dominant_singular_value_loss: k={k} is outside the accepted range [1, {bound}] "
                         f"(min(n, D) singular values for z of shape {tuple(z.shape)})")
    with _full_precision(z):
        sv = torch.linalg.svdvals(z.float(), driver=(driver or None) if z.is_cuda else None)
        share = sv / sv.sum(dim=-1, keepdim=True).clamp_min(eps)
        return -share[..., :k].mean(dim=-1)


def nmtune_loss(logits: torch.Tensor, labels: torch.Tensor, z: torch.Tensor, f: torch.Tensor, *,
                w_mse: float | torch.Tensor = ref.W_MSE, w_cov: float | torch.Tensor = ref.W_COV,
                w_svd: float | torch.Tensor = ref.W_SVD, k: int = ref.SVD_TOP_K, skip_zero: bool = True,
                svd_driver: str = "") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The NMTune objective ``ce + w_mse·consistency + w_cov·covariance + w_svd·dominant_sv`` and its parts.

    One head: logits 2B×C and z, f 2B×D, rows ordered ``[view w; view s]``; labels B (repeated for both views) or
    2B. L_ce is the cross-entropy over the logits of both views. ``skip_zero`` skips a term whose weight is 0 (the
    MLP baseline pays for no SVD); its part is then reported as NaN ("not computed"), never 0. ``svd_driver`` is
    ``dominant_singular_value_loss``'s ``driver``.
    Returns ``(total, parts)``, parts a dict over ``PARTS`` of detached scalars.

    H heads at once (``tuning.fit_heads``): logits H×2B×C and z H×2B×D with f 2B×D shared (or H×2B×D), and each
    weight a float or an H-vector; a term is computed only for the heads whose weight is non-zero. Returns H totals
    and H-vectors of parts; head h's values are those of ``nmtune_loss`` on head h alone.
    """
    if z.ndim == 2:
        total, parts = nmtune_loss(logits[None], labels, z[None], f, w_mse=w_mse, w_cov=w_cov, w_svd=w_svd, k=k,
                                   skip_zero=skip_zero, svd_driver=svd_driver)
        return total[0], {name: value[0] for name, value in parts.items()}
    heads, n = z.shape[:2]
    if n % 2 or z.shape[-2:] != f.shape[-2:] or logits.shape[:2] != z.shape[:2]:
        raise ValueError(f"nmtune_loss: need 2B rows [view w; view s] in logits, z and f alike; got logits "
                         f"{tuple(logits.shape)}, z {tuple(z.shape)}, f {tuple(f.shape)}")
    b = n // 2
    if len(labels) == b:
        labels = labels.repeat(2)
    elif len(labels) != n:
        raise ValueError(f"nmtune_loss: labels must have B={b} or 2B={n} entries, got {len(labels)}")

    ce = F.cross_entropy(logits.float().flatten(0, 1), labels.repeat(heads), reduction="none").view(heads, n).mean(1)
    f_w = f[..., :b, :]
    terms = {"consistency": (w_mse, lambda zz, ff: consistency_loss(zz[:, b:], ff)),  # view s to frozen view w
             "covariance": (w_cov, lambda zz, ff: covariance_loss(zz)),
             "dominant_sv": (w_svd, lambda zz, ff: dominant_singular_value_loss(zz, k, driver=svd_driver))}
    total, parts = ce, {"ce": ce}
    for name, (weight, term) in terms.items():
        weight = torch.as_tensor(weight, dtype=torch.float32, device=z.device).expand(heads)
        used = weight != 0 if skip_zero else torch.ones(heads, dtype=torch.bool, device=z.device)
        nan = torch.full((heads,), math.nan, device=z.device)
        if not bool(used.any()):
            value = nan
        elif name != "dominant_sv" or bool(used.all()):
            # cheap terms: every head once any head uses them; a weight of 0 adds exact zeros to a head's gradient,
            # so each head's numbers are those it gets alone (gathering the users first would reorder the additions)
            value = term(z, f_w)
            total = total + weight * value
            value = torch.where(used, value, nan)
        else:  # the SVD costs: only the heads that use it (one gradient tensor per head, so no reordering)
            value = nan.index_put((used,), term(z[used], f_w if f_w.ndim == 2 else f_w[used]))  # f shared or not
            total = total + torch.where(used, weight * value.nan_to_num(), 0.0)
        parts[name] = value
    parts["total"] = total
    return total, {name: value.detach() for name, value in parts.items()}
