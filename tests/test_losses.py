"""Tests of nmtune_lib.transfer.losses: each term against a slow loop / numpy, the weighted sum, and finite gradients."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nmtune_lib.transfer.losses import (PARTS, consistency_loss, covariance_loss, dominant_singular_value_loss, nmtune_loss,
                               off_diagonal)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- each term against a hand computation -------------------------------------------------------------------------

def test_off_diagonal_matches_loop():
    x = torch.arange(16.0).reshape(4, 4)
    expected = [float(x[i, j]) for i in range(4) for j in range(4) if i != j]
    assert off_diagonal(x).tolist() == expected
    assert off_diagonal(torch.ones(1, 1)).numel() == 0
    with pytest.raises(ValueError, match="square"):
        off_diagonal(torch.ones(2, 3))


def test_consistency_loss_matches_loop():
    z_s, f_w = _randn(3, 4, seed=1), _randn(3, 4, seed=2)
    zs, fw = z_s.double().numpy(), f_w.double().numpy()
    total = 0.0
    for i in range(3):
        a = zs[i] / math.sqrt(sum(v * v for v in zs[i]))
        b = fw[i] / math.sqrt(sum(v * v for v in fw[i]))
        total += sum((a[j] - b[j]) ** 2 for j in range(4))
    assert consistency_loss(z_s, f_w).item() == pytest.approx(total / (3 * 4), rel=1e-5)


def test_consistency_loss_sends_no_gradient_to_the_frozen_view():
    z_s, f_w = _randn(3, 4, seed=1).requires_grad_(), _randn(3, 4, seed=2).requires_grad_()
    consistency_loss(z_s, f_w).backward()
    assert f_w.grad is None and torch.isfinite(z_s.grad).all() and z_s.grad.abs().sum() > 0


def test_covariance_loss_matches_loop():
    z = _randn(6, 3, seed=3)
    a = z.double().numpy()
    n, d = a.shape
    mean = [sum(a[r, j] for r in range(n)) / n for j in range(d)]
    total = 0.0
    for i in range(d):
        for j in range(d):
            if i != j:
                c_ij = sum((a[r, i] - mean[i]) * (a[r, j] - mean[j]) for r in range(n)) / (n - 1)
                total += c_ij ** 2
    assert covariance_loss(z).item() == pytest.approx(total / d, rel=1e-5)
    with pytest.raises(ValueError, match="n=1"):
        covariance_loss(z[:1])


def test_dominant_singular_value_loss_matches_numpy():
    z = _randn(8, 6, seed=4) + 0.5  # uncentred on purpose: the term must not centre
    s = np.linalg.svd(z.double().numpy(), compute_uv=False)
    p = s / s.sum()
    for k in (1, 3, 6):
        assert dominant_singular_value_loss(z, k).item() == pytest.approx(-p[:k].mean(), rel=1e-5)
    centred = z - z.mean(0)
    assert dominant_singular_value_loss(z, 1).item() != pytest.approx(dominant_singular_value_loss(centred, 1).item())


@pytest.mark.parametrize("k", [0, 7])
def test_dominant_singular_value_loss_rejects_k_outside_range(k):
    with pytest.raises(ValueError, match=rf"k={k} is outside the accepted range \[1, 6\]"):
        dominant_singular_value_loss(_randn(8, 6), k)


# --- the weighted sum ---------------------------------------------------------------------------------------------

def _batch(b=4, d=6, c=3, seed=0):
    logits, z, f = _randn(2 * b, c, seed=seed), _randn(2 * b, d, seed=seed + 1), _randn(2 * b, d, seed=seed + 2)
    labels = torch.randint(c, (b,), generator=torch.Generator().manual_seed(seed))
    return logits, labels, z, f


def test_nmtune_loss_is_the_weighted_sum_of_its_parts():
    logits, labels, z, f = _batch()
    b = len(labels)
    w_mse, w_cov, w_svd, k = 0.7, 0.2, 0.3, 2
    total, parts = nmtune_loss(logits, labels, z, f, w_mse=w_mse, w_cov=w_cov, w_svd=w_svd, k=k)
    ce = F.cross_entropy(logits, labels.repeat(2))
    mse = consistency_loss(z[b:], f[:b])
    cov = covariance_loss(z)
    svd = dominant_singular_value_loss(z, k)
    assert total.item() == pytest.approx((ce + w_mse * mse + w_cov * cov + w_svd * svd).item(), rel=1e-6)
    assert list(parts) == list(PARTS)
    for name, value in zip(PARTS, (ce, mse, cov, svd, total)):
        assert parts[name].item() == pytest.approx(value.item(), rel=1e-6)
    # labels given for both views (2B) are the same as B labels repeated
    total_2b, _ = nmtune_loss(logits, labels.repeat(2), z, f, w_mse=w_mse, w_cov=w_cov, w_svd=w_svd, k=k)
    assert total_2b.item() == total.item()


def test_nmtune_loss_defaults_are_the_reference_weights():
    logits, labels, z, f = _batch()
    total, parts = nmtune_loss(logits, labels, z, f)
    expected = parts["ce"] + 1.0 * parts["consistency"] + 0.04 * parts["covariance"] + 0.001 * parts["dominant_sv"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert parts["dominant_sv"].item() < 0  # the term enters with its minus sign already applied


@pytest.mark.parametrize("skip_zero", [True, False])
def test_total_equals_cross_entropy_when_all_weights_are_zero(skip_zero):
    logits, labels, z, f = _batch()
    total, parts = nmtune_loss(logits, labels, z, f, w_mse=0, w_cov=0, w_svd=0, skip_zero=skip_zero)
    assert total.item() == F.cross_entropy(logits, labels.repeat(2)).item()
    skipped = [parts[name].item() for name in ("consistency", "covariance", "dominant_sv")]
    assert all(math.isnan(v) for v in skipped) if skip_zero else all(math.isfinite(v) for v in skipped)


def test_nmtune_loss_rejects_misshaped_batches():
    logits, labels, z, f = _batch()
    with pytest.raises(ValueError, match="2B rows"):
        nmtune_loss(logits[:-1], labels, z[:-1], f[:-1])
    with pytest.raises(ValueError, match="labels must have B=4 or 2B=8"):
        nmtune_loss(logits, labels[:3], z, f)


# --- numerics: fp32 under autocast, finite gradients --------------------------------------------------------------

def _degenerate_batches():
    eye = torch.eye(8, 16)  # 8 equal singular values (all 1): maximally repeated
    repeated_rows = _randn(1, 16, seed=5).repeat(8, 1)  # rank 1: seven zero singular values
    low_rank = _randn(8, 2, seed=6) @ _randn(2, 16, seed=7)  # rank 2
    pairs = torch.cat([eye[:4], eye[:4]])  # every singular value repeated twice (√2, ×4), rank 4
    return {"identity": eye, "repeated_rows": repeated_rows, "low_rank": low_rank, "pairs": pairs,
            "zeros": torch.zeros(8, 16)}


@pytest.mark.parametrize("name", list(_degenerate_batches()))
def test_gradients_stay_finite_on_degenerate_batches(name):
    z = _degenerate_batches()[name].clone().requires_grad_()
    dominant_singular_value_loss(z, 5).backward()
    assert torch.isfinite(z.grad).all()

    z.grad = None
    f = _randn(8, 16, seed=8)
    logits = z @ _randn(16, 3, seed=9)
    total, parts = nmtune_loss(logits, torch.tensor([0, 1, 2, 0]), z, f)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(z.grad).all()
    assert all(math.isfinite(v.item()) for v in parts.values())


def test_svd_and_covariance_run_in_float32_under_autocast():
    z = (_randn(16, 8, seed=10) + 1).bfloat16()
    expected_svd = dominant_singular_value_loss(z.float(), 5)
    expected_cov = covariance_loss(z.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        svd = dominant_singular_value_loss(z, 5)
        cov = covariance_loss(z)
        logits = z @ _randn(8, 3, seed=11).bfloat16()
        total, _ = nmtune_loss(logits, torch.zeros(8, dtype=torch.long), z, z)
    assert svd.dtype == cov.dtype == total.dtype == torch.float32
    assert svd.item() == pytest.approx(expected_svd.item(), rel=1e-6)
    assert cov.item() == pytest.approx(expected_cov.item(), rel=1e-6)
