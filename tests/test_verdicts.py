"""The claims' statistics (nmtune_lib.analysis.verdicts, claims.adjust, claims.robustness_table, rejudge): each checked against
a direct computation written here, on made-up numbers where the answer is known."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nmtune_lib.analysis.claims import adjust, from_interval, judge_claims, robustness_table
from nmtune_lib.analysis.rejudge import claims_from_tables, parse_effect, rejudge
from nmtune_lib.analysis.verdicts import (NOT_APPLICABLE, can_change, combine_every, decide, holm, mean_ci, p_value,
                                 two_sided, verdict)


def holm_by_hand(p):
    """Holm's step-down adjusted p-values, written out: sort ascending, multiply the i-th smallest (0-based) by
    m − i, carry the running maximum, cap at 1."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(p, kind="stable")
    out, running = np.empty_like(p), 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (len(p) - i) * p[j]))
        out[j] = running
    return out


@pytest.mark.parametrize("p", [[0.01, 0.04, 0.03, 0.005], [0.02, 0.02, 0.02, 0.5], [0.03], [0.2, 0.001, 0.001],
                               [0.0125, 0.0125, 0.9, 0.04, 0.011]])
def test_holm_is_the_step_down_adjustment_ties_and_a_family_of_one_included(p):
    assert holm(p) == pytest.approx(holm_by_hand(p))
    if len(p) == 1:
        assert holm(p)[0] == p[0]  # a family of one is not adjusted


def test_holm_leaves_missing_p_values_out_of_the_family():
    adjusted = holm([0.01, math.nan, 0.02])
    assert math.isnan(adjusted[1]) and adjusted[[0, 2]] == pytest.approx(holm_by_hand([0.01, 0.02]))


def test_the_p_value_is_the_one_sided_t_test_the_rule_implies():
    rng = np.random.default_rng(3)
    for _ in range(20):
        x = rng.normal(rng.normal(0, 1), 1, size=int(rng.integers(2, 8)))
        mean, half = mean_ci(x)
        for sign, alternative in ((+1, "greater"), (-1, "less")):
            expected = stats.ttest_1samp(x, 0.0, alternative=alternative).pvalue
            p = p_value(mean, half, len(x), sign)
            assert p == pytest.approx(expected, rel=1e-9)
            # the interval rule and the test decide alike: supported ⟺ p < 0.025, contradicted ⟺ p > 0.975
            raw = verdict(mean, half, sign)
            assert raw == decide(two_sided(p), mean, sign)
            assert (raw == "supported") == (p < 0.025) and (raw == "contradicted") == (p > 0.975)
    assert math.isnan(p_value(1.0, math.nan, 1, +1))


def test_adjusted_verdicts_are_holm_over_the_family_and_a_robustness_cell_is_adjusted_in_its_own_family():
    # five cells with known t statistics (n = 5): t = mean / (half / t.975(4))
    t975 = stats.t.ppf(0.975, 4)
    cells = [("4a", 10.0), ("4b", 4.0), ("4c", 3.0), ("4d", -3.5), ("2b", 0.5)]
    claims = [from_interval(cid, f"made-up {cid}", "paper", t, t975, 5, +1, "points", protocol="reference")
              for cid, t in cells]
    out = {c.id: c for c in adjust(claims)}
    p2 = [2 * stats.t.sf(abs(t), 4) for _, t in cells]
    expected = holm_by_hand(p2)
    for (cid, t), p in zip(cells, expected):
        assert out[cid].p_adjusted == pytest.approx(p) and out[cid].family_size == 5
        assert out[cid].verdict_adjusted == ("inconclusive" if p >= 0.05 else
                                             "supported" if t > 0 else "contradicted")
        assert out[cid].p_value == pytest.approx(stats.t.sf(t, 4))
    # raw verdicts: every |t| > t.975 is decisive; after adjustment the weakest of them (4c, t = 3) is not
    assert [out[c].verdict for c, _ in cells] == ["supported", "supported", "supported", "contradicted", "inconclusive"]
    assert out["4c"].verdict_adjusted == "inconclusive" and out["4a"].verdict_adjusted == "supported"
    # a robustness setting's cell replaces the base cell in the family it is adjusted in
    weak = from_interval("4a", "made-up 4a", "paper", 2.9, t975, 5, +1, "points", protocol="reference",
                         setting="head_epochs=10")
    again = {(c.setting, c.id): c for c in adjust([*claims, weak])}
    family = [2 * stats.t.sf(2.9, 4)] + p2[1:]
    assert again[("head_epochs=10", "4a")].p_adjusted == pytest.approx(holm_by_hand(family)[0])
    assert again[("base", "4a")].p_adjusted == pytest.approx(expected[0])  # the base family is unchanged


def test_claim_3_is_one_hypothesis_whatever_the_protocols():
    t975 = stats.t.ppf(0.975, 4)
    claims = [from_interval(cid, cid, "paper", t, t975, 5, +1, "", protocol=protocol)
              for protocol in ("reference", "matched") for cid, t in (("3a", 6.0), ("4a", 5.0))]
    out = adjust(claims)
    assert {c.family_size for c in out} == {3}  # 3a once, 4a under each protocol
    assert out[0].p_adjusted == out[2].p_adjusted


def test_every_ratio_is_supported_only_when_every_ratio_is():
    assert combine_every(["supported"] * 4, [0.001, 0.01, 0.02, 0.005]) == ("supported", 0.02, "4 of 4 ratios")
    assert combine_every(["supported", "inconclusive"], [0.001, 0.2]) == ("inconclusive", 0.2, "1 of 2 ratios")
    assert combine_every(["supported", "contradicted"], [0.001, 0.999])[::2] == ("contradicted",
                                                                                 "1 of 2 ratios (1 against)")


def _one_ratio_spared():
    """OOD means (noise_ratio, seed) where 5 %, 20 % and 30 % cost 10 points and 10 % costs nothing: the mean over
    noisy ratios is clearly negative, the claim 'at every ratio' is not supported."""
    import xarray as xr

    ratios = [0.0, 0.05, 0.1, 0.2, 0.3]
    cost = {0.0: 0.0, 0.05: -0.1, 0.1: 0.0, 0.2: -0.1, 0.3: -0.1}
    rng = np.random.default_rng(1)
    acc = np.array([[0.6 + cost[r] + rng.normal(0, 0.003) for _ in range(5)] for r in ratios])
    return xr.DataArray(acc, coords={"noise_ratio": ratios, "seed": range(5)}, dims=("noise_ratio", "seed"))


def test_2a_per_ratio_rule_when_the_mean_is_negative_but_one_ratio_is_not():
    from nmtune_lib.analysis.claims import TEXT_2A, _Grid, per_ratio_claims

    ood = _one_ratio_spared()
    claims = {c.id: c for c in per_ratio_claims("2a", TEXT_2A, ood, _Grid.of(ood["noise_ratio"].values),
                                                [0.05, 0.1, 0.2, 0.3], -1, "points", 100, "lp")}
    assert claims["2a-mean"].verdict == "supported" and claims["2a-mean"].mean == pytest.approx(-7.5, abs=0.3)
    assert claims["2a@10%"].verdict == "inconclusive"
    assert claims["2a"].verdict == "inconclusive" and claims["2a"].support == "3 of 4 ratios"
    assert claims["2a"].form == "paper" and claims["2a-mean"].form == "secondary"
    assert claims["2a"].parts == ("2a@5%", "2a@10%", "2a@20%", "2a@30%")
    assert claims["2a"].p_value == pytest.approx(max(claims[k].p_value for k in claims["2a"].parts))
    adjusted = {c.id: c for c in adjust(list(claims.values()))}
    assert adjusted["2a"].verdict_adjusted == "inconclusive" and adjusted["2a-mean"].verdict_adjusted == "supported"


def test_a_setting_that_cannot_change_a_claim_is_not_applicable_and_does_not_make_it_robust():
    assert not can_change("3a", "reference", "views=8") and not can_change("3a", "reference", "head_epochs=10")
    assert not can_change("3a", "matched", "base") and can_change("3a", "reference", "centering=row")
    assert not can_change("2a@5%", "reference", "views=8") and can_change("2a@5%", "reference", "head_epochs=10")
    assert can_change("4b", "reference", "views=8") and can_change("1b", "matched", "base")
    t975 = stats.t.ppf(0.975, 4)
    rows = [from_interval("3a", "3a", "paper", 6.0, t975, 5, +1, "", protocol=p, setting=s)
            for p, s in (("reference", "base"), ("matched", "base"), ("reference", "views=8"),
                         ("reference", "head_epochs=10"))]
    rows += [from_interval("4a", "4a", "paper", t, t975, 5, +1, "", protocol=p, setting=s)
             for p, s, t in (("reference", "base", 6.0), ("reference", "views=8", 0.5))]
    table = robustness_table(adjust(rows)).set_index(["claim", "setting"])
    assert (table.loc["3a", "applicable"] == ["yes", "no", "no", "no"]).all()
    assert table.loc[("3a", "reference, views=8"), "verdict"] == NOT_APPLICABLE
    assert table.loc[("3a", "reference"), "robust"] == "not assessed: 1 applicable setting"
    assert table.loc[("4a", "reference"), "robust"] == "no"  # views=8 can change NMTune − LP, and does


def test_downstream_spectrum_claims_read_the_frozen_features_of_the_tasks():
    from tests.test_summary import _grid, _reference

    transfer, spectrum = _grid(id_effect=0.02, ood_effect=-0.2, nmtune_gain=0.02, sve_slope=1.0)
    assert not [c for c in judge_claims(_reference(transfer), spectrum) if c.id.endswith(("-ID", "-OOD"))]
    # SVE rises with noise on the ID task's test features and falls on the OOD task's shifted domain
    sve = xr_frozen(transfer, {"a": +1.0, "b": -1.0})
    claims = {c.id: c for c in judge_claims(_reference(transfer.assign(frozen_sve=sve, frozen_p1=-sve / 100)),
                                            spectrum)}
    assert claims["3a-ID"].verdict == "supported" and claims["3a-OOD"].verdict == "contradicted"
    assert claims["3b-ID"].verdict == "supported" and "3c-ID" not in claims


def xr_frozen(transfer, slope_by_task):
    import xarray as xr

    rng = np.random.default_rng(2)
    ratios, seeds = transfer["noise_ratio"].values, transfer["seed"].values
    values = np.full((len(ratios), len(seeds), transfer.sizes["task"], transfer.sizes["test_domain"], 1), np.nan)
    for k, task in enumerate(transfer["task"].values):
        for d, domain in enumerate(transfer["test_domain"].values):
            if np.isfinite(transfer["accuracy"].sel(task=task, test_domain=domain)).any():
                values[:, :, k, d, 0] = (4 + slope_by_task[task] * ratios[:, None]
                                         + rng.normal(0, 0.001, (len(ratios), len(seeds))))
    return xr.DataArray(values, dims=("noise_ratio", "seed", "task", "test_domain", "centering"),
                        coords={"noise_ratio": ratios, "seed": seeds, "task": transfer["task"].values,
                                "test_domain": transfer["test_domain"].values, "centering": ["column"]})


OLD_CLAIMS = """protocol,claim,effect,verdict,rule
reference,"1a. Slight pre-training noise (5%, 10%) improves ID transfer (LP ID mean, noisy − clean)",-1.41 ± 1.2 points (n=5 seeds),contradicted,"supported if the 95% CI over seeds lies above 0, contradicted if below, else inconclusive"
reference,2a. Any pre-training noise hurts OOD transfer (LP OOD mean over noisy ratios − clean),-2.94 ± 3.3 points (n=5 seeds),inconclusive,"supported if the 95% CI over seeds lies below 0, contradicted if above, else inconclusive"
reference,3a. Noise flattens the spectrum: higher SVE (mean over noisy ratios − clean; column centring),+0.0387 ± 0.019 nats (n=5 seeds),supported,"supported if the 95% CI over seeds lies above 0, contradicted if below, else inconclusive"
reference,"4a. NMTune beats LP on ID (mean over noise ratios, NMTune − LP)",+4.92 ± 0.39 points (n=5 seeds),supported,"supported if the 95% CI over seeds lies above 0, contradicted if below, else inconclusive"
"""
OLD_EFFECTS = """protocol,mean_of,noise_ratio,mean_points,half_width_points,n_seeds,ci
reference,ID,0.05,-1.3,1.2,5,below 0
reference,ID,0.1,-1.5,1.4,5,below 0
reference,OOD,0.05,-1.4,3.6,5,spans 0
reference,OOD,0.1,-1.5,1.2,5,below 0
"""


def test_a_committed_set_is_rejudged_from_its_tables(tmp_path):
    (tmp_path / "claims.csv").write_text(OLD_CLAIMS)
    (tmp_path / "noise_effects.csv").write_text(OLD_EFFECTS)
    (tmp_path / "robustness.csv").write_text(
        "claim,setting,verdict,effect,robust\n4a,reference,supported,+4.92 ± 0.39 points (n=5 seeds),True\n"
        "4a,\"reference, views=8\",supported,+0.2 ± 0.39 points (n=5 seeds),False\n"
        "3a,\"reference, views=8\",supported,+0.0387 ± 0.019 nats (n=5 seeds),True\n")
    (tmp_path / "stability.csv").write_text("protocol,setting,claim,verdict,agreement\nreference,base,2a,"
                                            "inconclusive,0.489\n")
    assert parse_effect("-1.41 ± 1.2 points (n=5 seeds)") == (-1.41, 1.2, 5, "points")
    claims = {(c.setting, c.id): c for c in claims_from_tables(tmp_path)}
    assert claims[("base", "1a-mean")].form == "secondary" and claims[("base", "2a-mean")].form == "secondary"
    assert claims[("base", "2a")].support == "1 of 2 ratios" and claims[("base", "2a")].verdict == "inconclusive"
    assert claims[("base", "1a")].verdict == "contradicted"  # both slight ratios' intervals lie below 0
    assert claims[("base", "1a-mean")].verdict == "contradicted"  # as committed
    assert claims[("base", "4a")].p_value == pytest.approx(stats.t.sf(4.92 / (0.39 / stats.t.ppf(0.975, 4)), 4))
    family = [c for c in claims.values() if c.setting == "base" and not c.parts]
    assert {c.family_size for c in family} == {len(family)}
    assert rejudge(tmp_path) is not None and rejudge(tmp_path) is None  # once: then it is in the new form
    table = pd.read_csv(tmp_path / "claims.csv")
    assert {"p_value", "verdict_adjusted", "p_adjusted"} <= set(table.columns)
    robust = pd.read_csv(tmp_path / "robustness.csv").set_index(["claim", "setting"])
    assert robust.loc[("3a", "reference, views=8"), "verdict"] == NOT_APPLICABLE
    assert robust.loc[("4a", "reference, views=8"), "applicable"] == "yes"
    agreement = pd.read_csv(tmp_path / "resample_agreement.csv").set_index("claim")
    assert agreement.loc["2a-mean", "agreement_over_seed_resamples"] == 0.489
    assert math.isnan(agreement.loc["2a@5%", "agreement_over_seed_resamples"])
    assert not (tmp_path / "stability.csv").exists()
