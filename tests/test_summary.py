"""Claims judged from synthetic results with known effects: each verdict can come out either way."""
import numpy as np
import pytest
import xarray as xr

from nmtune_lib.summary import id_ood_means, judge_claims, mean_ci, verdict
from nmtune_lib.transfer import Score, transfer_dataset

RATIOS = (0.0, 0.05, 0.1, 0.2, 0.3)


class _T:  # the fields of tasks.Task that transfer_dataset reads
    def __init__(self, name, kind, tests, train_domain="in_domain"):
        self.name, self.kind, self.tests, self.train_domain, self.chance = name, kind, dict.fromkeys(tests), \
            train_domain, 0.1


TASKS = [_T("a", "id", ["in_domain"]), _T("b", "ood", ["real", "sketch"], "real")]


def _grid(id_effect, ood_effect, nmtune_gain, sve_slope, noise=0.002):
    rng = np.random.default_rng(0)
    runs = []
    for r in RATIOS:
        for seed in range(3):
            scores = []
            for m, gain in (("lp", 0), ("mlp", nmtune_gain / 2), ("nmtune", nmtune_gain)):
                slight = 1.0 if r in (0.05, 0.1) else (-1.0 if r >= 0.2 else 0.0)
                scores += [Score("a", m, "in_domain", 0.8 + id_effect * slight + gain + rng.normal(0, noise), 1, "cached"),
                           Score("b", m, "real", 0.9 + gain, 1, "cached"),
                           Score("b", m, "sketch", 0.5 + ood_effect * r + gain + rng.normal(0, noise), 1, "cached")]
            runs.append(transfer_dataset(scores, TASKS, noise_ratio=r, seed=seed))
    transfer = xr.combine_by_coords(runs)
    sve = np.array([[3 + sve_slope * r + rng.normal(0, 0.001) for _ in range(3)] for r in RATIOS])
    spectrum = xr.Dataset({"sve": (("noise_ratio", "seed"), sve), "p1": (("noise_ratio", "seed"), -sve / 100)},
                          coords={"noise_ratio": list(RATIOS), "seed": [0, 1, 2]})
    spectrum = spectrum.expand_dims(centering=["column"])
    return transfer, spectrum


def _verdicts(claims):
    return {c.claim.split(".")[0]: c.verdict for c in claims}


def test_the_paper_pattern_is_supported():
    transfer, spectrum = _grid(id_effect=0.02, ood_effect=-0.2, nmtune_gain=0.02, sve_slope=1.0)
    v = _verdicts(judge_claims(transfer, spectrum))
    assert sorted(v) == ["1a", "1b", "2a", "2b", "3a", "3b", "3c", "3d", "4a", "4b", "4c", "4d"]
    assert set(v.values()) == {"supported"}


def test_the_opposite_pattern_is_contradicted():
    transfer, spectrum = _grid(id_effect=-0.02, ood_effect=0.2, nmtune_gain=-0.02, sve_slope=-1.0)
    assert set(_verdicts(judge_claims(transfer, spectrum)).values()) == {"contradicted"}


def test_no_effect_is_inconclusive():
    transfer, spectrum = _grid(id_effect=0.0, ood_effect=0.0, nmtune_gain=0.0, sve_slope=0.0, noise=0.01)
    verdicts = _verdicts(judge_claims(transfer, spectrum))
    assert verdicts["1a"] == "inconclusive" and verdicts["4a"] == "inconclusive"


def test_ood_mean_excludes_the_training_domain_unless_asked():
    transfer, _ = _grid(0, 0, 0, 0, noise=0)
    m = id_ood_means(transfer).sel({"method": "lp", "noise_ratio": 0.0, "seed": 0})
    assert float(m["ood_mean"]) == pytest.approx(0.5)
    m = id_ood_means(transfer, include_train_domain=True).sel({"method": "lp", "noise_ratio": 0.0, "seed": 0})
    assert float(m["ood_mean"]) == pytest.approx(0.7)
    assert float(m["id_mean"]) == pytest.approx(0.8)


def test_mean_ci_and_verdict_rules():
    mean, half = mean_ci(np.array([1.0, 2.0, 3.0]))
    assert mean == 2.0 and half == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-5)
    assert np.isnan(mean_ci(np.array([1.0]))[1])
    assert verdict(1.0, 0.5, +1) == "supported" and verdict(1.0, 0.5, -1) == "contradicted"
    assert verdict(0.1, 0.5, +1) == "inconclusive" and verdict(1.0, float("nan"), +1) == "inconclusive"
