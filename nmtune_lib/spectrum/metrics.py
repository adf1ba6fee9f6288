"""Singular-value spectrum of a frozen feature matrix and its scalar summaries (docs/paper.md §5).

Pipeline for F ∈ R^{N×D} (N samples, D feature dimension):

1. optional L2 normalisation of every row (on by default, as in the reference code);
2. one of three centring conventions, named in every output:

   - ``column``: subtract each column's mean over samples (the usual PCA centring);
   - ``row``:    subtract each row's mean over dimensions (the reference code's convention);
   - ``none``:   no centring;

3. the exact singular values σ₁ ≥ … ≥ σ_r, r = min(N, D), through the smaller Gram matrix (float64 ``eigvalsh``).

``spectrum_metrics`` turns σ into scalars (σ₁, SVE, p₁, −log p₁, top-k share, effective rank, participation ratio);
``spectrum_dataset`` stores spectra and metrics of one run as an xarray Dataset with dims
``(noise_ratio, seed, dataset, centering, component)``, so that runs combine with ``results.combine_runs``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr

from ..config import CENTERINGS
from ..results import provenance_attrs

CENTERING_DESCRIPTIONS = {
    "column": "after row L2 normalisation, each column's mean over samples is subtracted (standard PCA centring)",
    "row": "after row L2 normalisation, each row's mean over its D dimensions is subtracted (reference code)",
    "none": "no centring after row L2 normalisation",
}

# name → (long name, definition); units are "1" for all (σ of L2-normalised rows are dimensionless).
METRICS: dict[str, tuple[str, str]] = {
    "sigma1": ("largest singular value", "σ₁"),
    "sve": ("singular value entropy", "SVE = −Σ_i p_i log p_i, p_i = σ_i / Σ_j σ_j (natural log, 0 log 0 = 0)"),
    "p1": ("largest singular value ratio (LSVR as a ratio)", "p₁ = σ₁ / Σ_j σ_j"),
    "neg_log_p1": ("largest singular value ratio, negative log", "−log p₁"),
    "top_k_share": ("top-k share of the spectrum", "Σ_{i≤k} σ_i / Σ_j σ_j, k = the Dataset attr top_k"),
    "effective_rank": ("effective rank", "exp(SVE)"),
    "participation_ratio": ("participation ratio of the eigenvalues σ²",
                            "(Σ σ_i²)² / Σ σ_i⁴ = (Σλ)² / Σλ², λ_i = σ_i² the Gram eigenvalues"),
}


# --- preprocessing and singular values -----------------------------------------------------------------------

def _as_matrix(features: Any) -> np.ndarray:
    """A float64 copy of an N×D torch tensor or array-like; NaN/Inf, N < 2 and non-2-D input raise ``ValueError``."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu()
        # .numpy() shares memory; only dtypes numpy lacks (bfloat16, ...) need a torch-side cast first
        features = (features if features.dtype in (torch.float32, torch.float64) else features.double()).numpy()
    x = np.array(features, dtype=np.float64, copy=True)  # our own copy: preprocessing below works in place
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D N×D matrix, got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for a spectrum, got N={x.shape[0]}")
    if x.shape[1] < 1:
        raise ValueError("features have D=0 dimensions")
    if not math.isfinite(x.sum()) and not np.isfinite(x).all():  # the sum is a cheap first test (NaN/Inf propagate)
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise ValueError(f"features contain NaN or Inf in {bad} of {x.shape[0]} rows")
    return x


def preprocess(features: Any, *, l2_normalize: bool = True, centering: str = "column") -> np.ndarray:
    """F (N×D) → X (N×D, float64): optional row L2 normalisation x_n / max(‖x_n‖, 1e-12), then ``centering``:

    ``column``: X − 1 μᵀ with μ = mean over rows (N); ``row``: X − m 1ᵀ with m_n = mean of row n over D;
    ``none``: X unchanged.
    """
    if centering not in CENTERINGS:
        raise ValueError(f"unknown centering {centering!r}; accepted: {', '.join(CENTERINGS)}")
    x = _as_matrix(features)
    if l2_normalize:
        # einsum: row norms without an N×D temporary; a zero row stays zero
        x *= 1.0 / np.maximum(np.sqrt(np.einsum("nd,nd->n", x, x)), 1e-12)[:, None]
    if centering == "column":
        x -= x.mean(axis=0, keepdims=True)
    elif centering == "row":
        x -= x.mean(axis=1, keepdims=True)
    return x


def gram_singular_values(x: np.ndarray) -> np.ndarray:
    """Exact singular values of a float64 N×M matrix, descending, length r = min(N, M), via the smaller Gram matrix.

    σ_i = sqrt(λ_i(XᵀX)) if N ≥ M else sqrt(λ_i(XXᵀ)); numpy's ``X.T @ X`` runs as one BLAS ``syrk``. Squaring
    limits the resolution: eigenvalues below λ₁·r'·ε (r' = max(N, M), ε = float64 machine epsilon), i.e. σ below
    about σ₁·sqrt(r'·ε) ≈ 1e-8·sqrt(r')·σ₁, are rounding noise and returned as exactly 0 (so a rank-1 matrix
    has one non-zero singular value).
    """
    gram = x.T @ x if x.shape[0] >= x.shape[1] else x @ x.T
    eig = np.linalg.eigvalsh(gram)[::-1]
    eig[eig <= eig[0] * max(x.shape) * np.finfo(np.float64).eps] = 0.0
    return np.sqrt(eig)


def singular_values(features: Any, *, l2_normalize: bool = True, centering: str = "column") -> np.ndarray:
    """σ₁ ≥ … ≥ σ_r (float64, r = min(N, D)) of ``preprocess(features, l2_normalize=..., centering=...)``.

    ``features``: N×D torch tensor or array. Exact (no randomised SVD): through the D×D Gram matrix when N ≥ D,
    the N×N one when N < D (see ``gram_singular_values``).
    """
    return gram_singular_values(preprocess(features, l2_normalize=l2_normalize, centering=centering))


# --- scalar summaries ------------------------------------------------------------------------------------------

def spectrum_metrics(s: Any, k: int = 5) -> dict[str, float]:
    """Scalar summaries of singular values s (1-D, ≥ 0, any order; sorted descending here), with p_i = σ_i / Σσ:

    - ``sigma1``: σ₁;
    - ``sve``: singular value entropy −Σ p_i log p_i (natural log; 0 log 0 = 0), in [0, log r];
    - ``p1``: σ₁ / Σσ, the largest singular value ratio (LSVR) as a ratio; ``neg_log_p1``: −log p₁;
    - ``top_k_share``: Σ_{i≤k} p_i (all of them when k ≥ r);
    - ``effective_rank``: exp(SVE), in [1, r];
    - ``participation_ratio``: (Σσ²)² / Σσ⁴, i.e. (Σλ)²/Σλ² of the Gram eigenvalues λ = σ², in [1, r].
    """
    s = np.asarray(s.detach().cpu() if isinstance(s, torch.Tensor) else s, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"singular values must be a non-empty 1-D array, got shape {s.shape}")
    if not np.isfinite(s).all() or (s < 0).any():
        raise ValueError("singular values must be finite and >= 0")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    s = np.sort(s)[::-1]
    total = s.sum()
    if total <= 0:
        raise ValueError("all singular values are zero (constant features after centring): the spectrum is undefined")
    p = s / total
    nz = p[p > 0]
    sve = float(-(nz * np.log(nz)).sum())
    sq = s**2
    return {
        "sigma1": float(s[0]),
        "sve": sve,
        "p1": float(p[0]),
        "neg_log_p1": float(-math.log(p[0])),
        "top_k_share": float(p[:k].sum()),
        "effective_rank": math.exp(sve),
        "participation_ratio": float(sq.sum() ** 2 / (sq**2).sum()),
    }


# --- one run as an xarray Dataset ------------------------------------------------------------------------------

def spectrum_dataset(features: Mapping[str, Any], *, noise_ratio: float, seed: int,
                     centerings: Sequence[str] = CENTERINGS, l2_normalize: bool = True, top_k: int = 5,
                     config: Any = None, checkpoint_sha256: str = "", manifest_sha256: str = "") -> xr.Dataset:
    """Spectra and metrics of one run (one noise ratio, one seed) as a Dataset ready for ``results.save_dataset``.

    ``features`` maps a dataset name (``ImageSet.name``, e.g. ``"fashion_mnist/test"``) to its N×D features.
    Dims: ``noise_ratio`` (1), ``seed`` (1), ``dataset``, ``centering``, ``component`` (i = 1…r, padded with NaN
    where a dataset has fewer components). Variables: ``singular_values`` and ``normalized_singular_values``
    (p_i = σ_i/Σσ) over all five dims; each metric of ``METRICS`` over (noise_ratio, seed, dataset, centering);
    ``num_samples``, ``num_features`` over (noise_ratio, seed, dataset); ``checkpoint_sha256`` and
    ``manifest_sha256`` over (noise_ratio, seed) so they survive ``combine_runs``. Attrs: ``provenance_attrs``
    (config JSON, hashes, versions, time), ``l2_normalize`` (0/1), ``top_k``, the centring conventions.
    """
    if not features:
        raise ValueError("features is empty: pass {dataset name: N×D features}")
    for c in centerings:
        if c not in CENTERINGS:
            raise ValueError(f"unknown centering {c!r}; accepted: {', '.join(CENTERINGS)}")
    names, centerings = list(features), list(centerings)
    sv, metric = _spectra(features, names, centerings, l2_normalize=l2_normalize, top_k=top_k)
    shapes = np.array([np.shape(features[n]) for n in names], dtype=np.int64)

    spectrum_dims = ("noise_ratio", "seed", "dataset", "centering", "component")
    data_vars = {
        "singular_values": (spectrum_dims, sv, {"long_name": "singular value σ_i of the preprocessed features",
                                                "units": "1"}),
        "normalized_singular_values": (spectrum_dims, sv / np.nansum(sv, axis=-1, keepdims=True),
                                       {"long_name": "normalised singular value p_i = σ_i / Σ_j σ_j", "units": "1"}),
        **{m: (spectrum_dims[:-1], metric[m], {"long_name": METRICS[m][0], "definition": METRICS[m][1], "units": "1"})
           for m in METRICS},
        "num_samples": (spectrum_dims[:3], shapes[None, None, :, 0], {"long_name": "N, images in the feature matrix"}),
        "num_features": (spectrum_dims[:3], shapes[None, None, :, 1], {"long_name": "D, feature dimension"}),
        "checkpoint_sha256": (spectrum_dims[:2], np.array([[checkpoint_sha256]], dtype=object),
                              {"long_name": "sha256 of the pre-trained checkpoint"}),
        "manifest_sha256": (spectrum_dims[:2], np.array([[manifest_sha256]], dtype=object),
                            {"long_name": "sha256 of the noise manifest"}),
    }
    coords = _spectrum_coords(noise_ratio, seed, names, centerings, sv.shape[-1])
    attrs = {
        "title": "singular-value spectrum of frozen pre-logit features (docs/paper.md §5)",
        **provenance_attrs(config, checkpoint_sha256=checkpoint_sha256, manifest_sha256=manifest_sha256),
        "l2_normalize": int(bool(l2_normalize)),
        "top_k": int(top_k),
        "singular_values_method": "exact: eigvalsh of the smaller Gram matrix in float64",
    }
    return xr.Dataset(data_vars, coords, attrs)


def _spectra(features: Mapping[str, Any], names: list[str], centerings: list[str], *, l2_normalize: bool,
             top_k: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Singular values (1×1×datasets×centerings×r, NaN-padded) and each metric (1×1×datasets×centerings)."""
    spectra = {(name, c): singular_values(features[name], l2_normalize=l2_normalize, centering=c)
               for name in names for c in centerings}
    r = max(len(s) for s in spectra.values())
    sv = np.full((1, 1, len(names), len(centerings), r), np.nan)
    metric = {m: np.full((1, 1, len(names), len(centerings)), np.nan) for m in METRICS}
    for (name, c), s in spectra.items():
        i, j = names.index(name), centerings.index(c)
        sv[0, 0, i, j, :len(s)] = s
        for m, value in spectrum_metrics(s, top_k).items():
            metric[m][0, 0, i, j] = value
    return sv, metric


def _spectrum_coords(noise_ratio: float, seed: int, names: list[str], centerings: list[str],
                     r: int) -> dict[str, tuple]:
    """The coordinates of a run's spectrum Dataset, with their long names."""
    return {
        "noise_ratio": ("noise_ratio", [float(noise_ratio)], {"long_name": "pre-training label noise ratio",
                                                               "units": "fraction of training labels flipped"}),
        "seed": ("seed", np.array([seed], dtype=np.int64), {"long_name": "seed of the noise and pre-training run"}),
        "dataset": ("dataset", np.array(names, dtype=object),
                    {"long_name": "images whose features are analysed (dataset/split)"}),
        "centering": ("centering", np.array(centerings, dtype=object),
                      {"long_name": "centring convention before the SVD",
                       "description": "; ".join(f"{c}: {CENTERING_DESCRIPTIONS[c]}" for c in centerings)}),
        "component": ("component", np.arange(1, r + 1, dtype=np.int64),
                      {"long_name": "index i of σ_i, descending (1 = largest)"}),
    }


def metrics_frame(ds: xr.Dataset) -> pd.DataFrame:
    """The metrics of a spectrum Dataset as a tidy table: one row per (noise_ratio, seed, dataset, centering)."""
    return ds[list(METRICS)].to_dataframe().reset_index().dropna(subset=list(METRICS), how="all")
