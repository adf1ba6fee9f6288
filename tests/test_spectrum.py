"""Tests of nmtune_lib.spectrum.metrics: exact singular values, metrics, the per-run Dataset, bad inputs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

from nmtune_lib.results import combine_runs, save_dataset
from nmtune_lib.spectrum.metrics import (CENTERINGS, METRICS, metrics_frame, preprocess, singular_values, spectrum_dataset,
                                 spectrum_metrics)


def reference_preprocess(f: np.ndarray, centering: str) -> np.ndarray:
    """The conventions written out with loops: L2-normalise each row, then centre."""
    x = np.array([row / np.sqrt(sum(v * v for v in row)) for row in f])
    if centering == "column":
        x = x - np.array([[x[:, j].mean() for j in range(x.shape[1])]])
    elif centering == "row":
        x = x - np.array([[x[i].mean()] for i in range(x.shape[0])])
    return x


# --- against a full SVD ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(300, 40), (25, 60)], ids=["N>D (DxD Gram)", "N<D (NxN Gram)"])
@pytest.mark.parametrize("centering", CENTERINGS)
def test_matches_numpy_svd(shape, centering):
    f = np.random.default_rng(1).standard_normal(shape) + 0.5
    expected = np.linalg.svd(reference_preprocess(f, centering), compute_uv=False)
    s = singular_values(f, centering=centering)
    assert s.shape == (min(shape),)
    np.testing.assert_allclose(s, expected, atol=1e-6, rtol=0)
    assert np.all(np.diff(s) <= 0)


def test_without_l2_normalisation_matches_svd():
    f = np.random.default_rng(2).standard_normal((80, 10)) * 3
    expected = np.linalg.svd(f - f.mean(0), compute_uv=False)
    np.testing.assert_allclose(singular_values(f, l2_normalize=False), expected, atol=1e-6, rtol=0)


def test_torch_float32_input_equals_numpy_input():
    f = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(singular_values(f), singular_values(f.numpy()), atol=1e-12)


def test_invariant_to_row_order():
    f = np.random.default_rng(3).standard_normal((100, 12))
    perm = np.random.default_rng(4).permutation(100)
    for centering in CENTERINGS:
        np.testing.assert_allclose(singular_values(f[perm], centering=centering),
                                   singular_values(f, centering=centering), atol=1e-10)


# --- hand-checked 3×2 case ---------------------------------------------------------------------------------------
# F = [[3, 4], [1, 0], [0, 2]]; L2-normalised rows X = [[0.6, 0.8], [1, 0], [0, 1]].
# none:   XᵀX = [[1.36, 0.48], [0.48, 1.64]], trace 3, det 2 → λ = 2, 1 → σ = (√2, 1).
# column: column means (8/15, 3/5) → X_c = (1/15)[[1, 3], [7, -9], [-8, 6]],
#         X_cᵀX_c = (1/225)[[114, -108], [-108, 126]] → λ = (4 ± √13)/7.5 → σ = (1.0070122, 0.2293320).
# row:    row means (0.7, 0.5, 0.5) → rows (-0.1, 0.1), (0.5, -0.5), (-0.5, 0.5), all multiples of (1, -1):
#         rank 1, σ₁ = ‖(-0.1, 0.5, -0.5)‖·‖(1, -1)‖ = √0.51·√2 = √1.02 = 1.0099505, σ₂ = 0.
HAND_F = [[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]]
HAND_EXPECTED = {
    "none": [math.sqrt(2.0), 1.0],
    "column": [math.sqrt((4 + math.sqrt(13)) / 7.5), math.sqrt((4 - math.sqrt(13)) / 7.5)],
    "row": [math.sqrt(1.02), 0.0],
}


@pytest.mark.parametrize("centering", CENTERINGS)
def test_hand_checked_3x2(centering):
    np.testing.assert_allclose(singular_values(HAND_F, centering=centering), HAND_EXPECTED[centering], atol=1e-12)


def test_hand_checked_preprocessing():
    np.testing.assert_allclose(preprocess(HAND_F, centering="column"),
                               np.array([[1, 3], [7, -9], [-8, 6]]) / 15, atol=1e-12)
    np.testing.assert_allclose(preprocess(HAND_F, centering="row"), [[-0.1, 0.1], [0.5, -0.5], [-0.5, 0.5]],
                               atol=1e-12)


# --- metrics -----------------------------------------------------------------------------------------------------

def test_metrics_by_hand():
    m = spectrum_metrics([1.0, 3.0], k=1)  # unsorted on purpose: p = (3/4, 1/4)
    sve = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert m["sigma1"] == 3.0
    assert m["p1"] == pytest.approx(0.75)
    assert m["neg_log_p1"] == pytest.approx(-math.log(0.75))
    assert m["sve"] == pytest.approx(sve)
    assert m["effective_rank"] == pytest.approx(math.exp(sve))
    assert m["top_k_share"] == pytest.approx(0.75)
    assert m["participation_ratio"] == pytest.approx((9 + 1) ** 2 / (81 + 1))
    assert set(m) == set(METRICS)


@pytest.mark.parametrize("centering", ["none", "column"])
def test_identity_like_features_give_a_uniform_spectrum(centering):
    d = 16
    # ±e_i: every row unit length, columns already mean-free, so both conventions see σ_i = √2 for all i
    f = np.vstack([np.eye(d), -np.eye(d)])
    s = singular_values(f, centering=centering)
    np.testing.assert_allclose(s, math.sqrt(2), atol=1e-12)
    m = spectrum_metrics(s)
    assert m["sve"] == pytest.approx(math.log(d))
    assert m["effective_rank"] == pytest.approx(d)
    assert m["participation_ratio"] == pytest.approx(d)
    assert m["p1"] == pytest.approx(1 / d)
    assert m["top_k_share"] == pytest.approx(5 / d)


def test_row_centring_of_identity_loses_one_direction():
    d = 16
    s = singular_values(np.eye(d), centering="row")  # rows e_i − 1/d: the all-ones direction is removed
    assert spectrum_metrics(s)["sve"] == pytest.approx(math.log(d - 1))


@pytest.mark.parametrize("centering", CENTERINGS)
def test_rank_one_features(centering):
    rng = np.random.default_rng(5)
    u = rng.standard_normal(200)  # mixed signs, so column centring leaves a rank-1 matrix, not zero
    f = np.outer(u, rng.standard_normal(32))
    m = spectrum_metrics(singular_values(f, centering=centering))
    assert m["sve"] == pytest.approx(0.0, abs=1e-12)
    assert m["p1"] == pytest.approx(1.0)
    assert m["effective_rank"] == pytest.approx(1.0)
    assert m["participation_ratio"] == pytest.approx(1.0)


# --- bad input ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, match", [
    (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN or Inf"),
    (np.array([[1.0, np.inf], [0.0, 1.0]]), "NaN or Inf"),
    (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "NaN or Inf"),
    (np.ones((1, 4)), "at least 2 samples"),
    (np.ones(4), "2-D"),
    (np.ones((2, 3, 4)), "2-D"),
])
def test_bad_features_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        singular_values(bad)


def test_bad_centering_and_singular_values_raise():
    with pytest.raises(ValueError, match="centering"):
        singular_values(np.eye(3), centering="columns")
    with pytest.raises(ValueError, match="1-D"):
        spectrum_metrics(np.ones((2, 2)))
    with pytest.raises(ValueError, match=">= 0"):
        spectrum_metrics([1.0, -0.5])
    with pytest.raises(ValueError, match="zero"):
        spectrum_metrics(singular_values(np.ones((5, 3))))  # identical rows: column centring leaves nothing


# --- the per-run Dataset -----------------------------------------------------------------------------------------

def run_dataset(noise_ratio: float, seed: int, datasets=("fmnist/test",)) -> xr.Dataset:
    rng = np.random.default_rng(int(noise_ratio * 100) + 10 * seed)
    return spectrum_dataset({name: rng.random((60, 12)) for name in datasets}, noise_ratio=noise_ratio, seed=seed,
                            config={"preset": "smoke", "seeds": [0, 1]}, checkpoint_sha256=f"ck{noise_ratio}{seed}",
                            manifest_sha256="man")


def test_dataset_layout():
    ds = run_dataset(0.1, 0, datasets=("a/test", "b/test"))
    assert dict(ds.sizes) == {"noise_ratio": 1, "seed": 1, "dataset": 2, "centering": 3, "component": 12}
    assert ds["sve"].dims == ("noise_ratio", "seed", "dataset", "centering")
    f = np.random.default_rng(10).random((60, 12))
    np.testing.assert_allclose(ds["singular_values"].sel(dataset="a/test", centering="row").squeeze(),
                               singular_values(f, centering="row"))
    assert ds["p1"].sel(dataset="a/test", centering="row").item() == pytest.approx(
        spectrum_metrics(singular_values(f, centering="row"))["p1"])
    np.testing.assert_allclose(ds["normalized_singular_values"].sum("component"), 1.0)
    assert ds.attrs["manifest_sha256"] == "man" and '"preset": "smoke"' in ds.attrs["config"]
    assert ds["noise_ratio"].attrs["units"] and ds["centering"].attrs["description"]
    assert len(metrics_frame(ds)) == 6


def test_netcdf_round_trip_is_identical(tmp_path):
    ds = run_dataset(0.2, 1)
    save_dataset(ds, tmp_path / "spectrum.nc")
    with xr.open_dataset(tmp_path / "spectrum.nc", engine="h5netcdf") as back:
        assert back.identical(ds)
        assert back.attrs == ds.attrs


def test_runs_combine_by_coords(tmp_path):
    paths = [save_dataset(run_dataset(r, s), tmp_path / f"{r}-{s}.nc") for r in (0.0, 0.2) for s in (0, 1)]
    combined = combine_runs(paths)
    assert dict(combined.sizes)["noise_ratio"] == 2 and dict(combined.sizes)["seed"] == 2
    assert combined["checkpoint_sha256"].dims == ("noise_ratio", "seed")
    assert combined["checkpoint_sha256"].sel(noise_ratio=0.2, seed=1).item() == "ck0.21"
    assert combined.attrs["manifest_sha256"] == "man" and "checkpoint_sha256" not in combined.attrs
    xr.testing.assert_identical(combined["sve"].sel(noise_ratio=[0.2], seed=[0]), run_dataset(0.2, 0)["sve"])


def test_spectrum_figures_build():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nmtune_lib.analysis import plotting

    one = run_dataset(0.0, 0)
    many = xr.combine_by_coords([run_dataset(r, s) for r in (0.0, 0.1) for s in (0, 1)], data_vars="minimal",
                                combine_attrs="drop_conflicts")
    figures = [plotting.spectrum_plot(one), plotting.spectra_by_noise(many), plotting.metrics_vs_noise(many)]
    for fig in figures:
        assert isinstance(fig, matplotlib.figure.Figure) and fig.axes
        plt.close(fig)
