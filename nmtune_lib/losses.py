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

from . import reference as ref

PARTS = ("ce", "consistency", "covariance", "dominant_sv", "total")  # keys of nmtune_loss's dict, in order


@contextlib.contextmanager
def _full_precision(x: torch.Tensor):
    """Switch autocast off on ``x``'s device: the Gram matrix and the SVD must not run in bf16/fp16."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        yield


def off_diagonal(x: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square n×n matrix as a flat vector of n² − n entries, in row-major order."""
    if x.ndim != 2 or x.shape[0] != x.shape[1]:
        raise ValueError(f"off_diagonal needs a square matrix, got shape {tuple(x.shape)}")
    keep = ~torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return x[keep]


def consistency_loss(z_s: torch.Tensor, f_w: torch.Tensor, *, eps: float = 1e-12) -> torch.Tensor:
    """L_mse = mean over the B·D entries of (normalize(z_s) − normalize(f_w).detach())², rows L2-normalised.

    z_s: B×D head features of view s; f_w: B×D frozen features of view w (cross-view, no gradient to f_w).
    ``eps`` guards the normalisation of an all-zero row. Returns a float32 scalar.
    """
    if z_s.shape != f_w.shape:
        raise ValueError(f"consistency_loss: z_s {tuple(z_s.shape)} and f_w {tuple(f_w.shape)} must have one shape")
    target = F.normalize(f_w.detach().float(), dim=1, eps=eps)
    return (F.normalize(z_s.float(), dim=1, eps=eps) - target).pow(2).mean()


def covariance_loss(z: torch.Tensor) -> torch.Tensor:
    """L_cov = Σ_{i≠j} C_ij² / D with C = z̄ᵀz̄ / (n − 1) and z̄ = z minus its mean over the n rows (n = 2B).

    z: n×D with n ≥ 2. Computed in float32 with autocast off. Returns a scalar.
    """
    n, d = z.shape
    if n < 2:
        raise ValueError(f"covariance_loss needs n >= 2 rows to estimate a covariance, got n={n}")
    with _full_precision(z):
        centred = z.float() - z.float().mean(dim=0)
        cov = centred.T @ centred / (n - 1)
        return off_diagonal(cov).pow(2).sum() / d


def dominant_singular_value_loss(z: torch.Tensor, k: int = ref.SVD_TOP_K, *, eps: float = 1e-12) -> torch.Tensor:
    """L_svd = −(1/k) Σ_{i≤k} σ_i / Σ_j σ_j: minus the mean of the top-k normalised singular values of z.

    z: n×D, *uncentred* (n = 2B rows of both views); σ_1 ≥ σ_2 ≥ … are its min(n, D) singular values; 1 ≤ k ≤
    min(n, D). The sign is already applied: the total adds ``w_svd · L_svd``, so a larger top-k share lowers the loss.
    The SVD runs in float32 with autocast off, and only the singular values are differentiated (``svdvals``), whose
    gradient U·diag(g)·Vᵀ stays finite when singular values repeat or vanish (rank-deficient batches); ``eps`` keeps
    the normalisation finite for an all-zero z. Returns a float32 scalar.
    """
    bound = min(z.shape)
    if not 1 <= k <= bound:
        raise ValueError(f"dominant_singular_value_loss: k={k} is outside the accepted range [1, {bound}] "
                         f"(min(n, D) singular values for z of shape {tuple(z.shape)})")
    with _full_precision(z):
        sv = torch.linalg.svdvals(z.float())
        share = sv / sv.sum().clamp_min(eps)
        return -share[:k].mean()


def nmtune_loss(logits: torch.Tensor, labels: torch.Tensor, z: torch.Tensor, f: torch.Tensor, *,
                w_mse: float = ref.W_MSE, w_cov: float = ref.W_COV, w_svd: float = ref.W_SVD, k: int = ref.SVD_TOP_K,
                skip_zero: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The NMTune objective ``ce + w_mse·consistency + w_cov·covariance + w_svd·dominant_sv`` and its parts.

    logits: 2B×C and z, f: 2B×D, rows ordered ``[view w; view s]``; labels: B (repeated for both views) or 2B.
    L_ce is the cross-entropy over the logits of both views. ``skip_zero`` skips a term whose weight is 0 (the MLP
    baseline pays for no SVD); its part is then reported as NaN ("not computed"), never 0.
    Returns ``(total, parts)``, parts a dict over ``PARTS`` of detached scalars.
    """
    n = len(z)
    if n % 2 or z.shape != f.shape or len(logits) != n:
        raise ValueError(f"nmtune_loss: need 2B rows [view w; view s] in logits, z and f alike; got logits "
                         f"{tuple(logits.shape)}, z {tuple(z.shape)}, f {tuple(f.shape)}")
    b = n // 2
    if len(labels) == b:
        labels = labels.repeat(2)
    elif len(labels) != n:
        raise ValueError(f"nmtune_loss: labels must have B={b} or 2B={n} entries, got {len(labels)}")

    def used(weight: float) -> bool:
        return weight != 0 or not skip_zero

    zero = logits.new_zeros((), dtype=torch.float32)
    ce = F.cross_entropy(logits.float(), labels)
    mse = consistency_loss(z[b:], f[:b]) if used(w_mse) else zero  # view s pulled to the frozen feature of view w
    cov = covariance_loss(z) if used(w_cov) else zero
    svd = dominant_singular_value_loss(z, k) if used(w_svd) else zero
    total = ce + w_mse * mse + w_cov * cov + w_svd * svd

    nan = torch.full_like(ce, math.nan).detach()
    parts = {"ce": ce, "consistency": mse if used(w_mse) else nan, "covariance": cov if used(w_cov) else nan,
             "dominant_sv": svd if used(w_svd) else nan, "total": total}
    return total, {name: value.detach() for name, value in parts.items()}
