"""Claims judged from synthetic results with known effects: each verdict can come out either way."""
import numpy as np
import pytest
import xarray as xr

from nmtune_lib.config import StudyConfig
from nmtune_lib.analysis.claims import judge_all, judge_claims, resample_agreement, robustness_table
from nmtune_lib.analysis.aggregate import (ablation_table, decomposition, id_ood_means, interval_text, noise_effects, score_levels,
                                sensitivity, task_scores)
from nmtune_lib.analysis.verdicts import mean_ci, verdict
from nmtune_lib.transfer.downstream import Score, transfer_dataset

RATIOS = (0.0, 0.05, 0.1, 0.2, 0.3)


class _T:  # the fields of tasks.Task that transfer_dataset reads
    def __init__(self, name, kind, tests, train_domain="in_domain"):
        self.name, self.kind, self.tests, self.train_domain, self.chance = name, kind, dict.fromkeys(tests), \
            train_domain, 0.1
        self.flip = True


TASKS = [_T("a", "id", ["in_domain"]), _T("b", "ood", ["real", "sketch"], "real")]


def _grid(id_effect, ood_effect, nmtune_gain, sve_slope, noise=0.002, matched_gain=None, reg_growth=0.0):
    """Synthetic runs with known effects. ``matched_gain``: NMTune's gain over LP in the matched protocol (None: no
    matched protocol); ``reg_growth``: NMTune − MLP grows by this much per unit noise ratio for scaled variants."""
    rng = np.random.default_rng(0)
    runs = []
    protocols = {"reference": nmtune_gain} if matched_gain is None else {"reference": nmtune_gain,
                                                                         "matched": matched_gain}
    for r in RATIOS:
        for seed in range(3):
            scores = []
            for protocol, total in protocols.items():
                methods = [("lp", 0), ("mlp", total / 2), ("nmtune", total)]
                if protocol == "reference":
                    methods.append(("nmtune_x10", total / 2 + reg_growth * r))
                for m, gain in methods:
                    slight = 1.0 if r in (0.05, 0.1) else (-1.0 if r >= 0.2 else 0.0)
                    row = dict(setting="base", protocol=protocol, method=m, fit_seconds=1, head_mode="cached", lr=1e-3)
                    scores += [Score(task="a", test_domain="in_domain", **row,
                                     accuracy=0.8 + id_effect * slight + gain + rng.normal(0, noise)),
                               Score(task="b", test_domain="real", accuracy=0.9 + gain, **row),
                               Score(task="b", test_domain="sketch", **row,
                                     accuracy=0.5 + ood_effect * r + gain + rng.normal(0, noise))]
            runs.append(transfer_dataset(scores, TASKS, noise_ratio=r, seed=seed))
    transfer = xr.combine_by_coords(runs)
    sve = np.array([[3 + sve_slope * r + rng.normal(0, 0.001) for _ in range(3)] for r in RATIOS])
    spectrum = xr.Dataset({"sve": (("noise_ratio", "seed"), sve), "p1": (("noise_ratio", "seed"), -sve / 100)},
                          coords={"noise_ratio": list(RATIOS), "seed": [0, 1, 2]})
    spectrum = spectrum.expand_dims(centering=["column"])
    return transfer, spectrum


def _reference(transfer):
    return transfer.sel(setting="base", protocol="reference")


PAPER_IDS = ["1a", "1b", "2a", "2b", "3a", "3b", "3c", "3d", "4a", "4b", "4c", "4d"]


def _verdicts(claims):
    return {c.id: c.verdict for c in claims if c.id in PAPER_IDS}


def test_the_paper_pattern_is_supported():
    transfer, spectrum = _grid(id_effect=0.02, ood_effect=-0.2, nmtune_gain=0.02, sve_slope=1.0)
    claims = judge_claims(_reference(transfer), spectrum)
    v = _verdicts(claims)
    assert sorted(v) == PAPER_IDS and set(v.values()) == {"supported"}
    # 1a and 2a at every ratio they name, each ratio a cell of its own, and their averages beside them
    assert [c.id for c in claims if c.id[:2] in ("1a", "2a")] == [
        "1a", "1a@5%", "1a@10%", "1a-mean", "2a", "2a@5%", "2a@10%", "2a@20%", "2a@30%", "2a-mean"]
    assert {c.id: c.support for c in claims}["2a"] == "4 of 4 ratios"


def test_the_opposite_pattern_is_contradicted():
    transfer, spectrum = _grid(id_effect=-0.02, ood_effect=0.2, nmtune_gain=-0.02, sve_slope=-1.0)
    assert set(_verdicts(judge_claims(_reference(transfer), spectrum)).values()) == {"contradicted"}


def test_no_effect_is_inconclusive():
    transfer, spectrum = _grid(id_effect=0.0, ood_effect=0.0, nmtune_gain=0.0, sve_slope=0.0, noise=0.01)
    verdicts = _verdicts(judge_claims(_reference(transfer), spectrum))
    assert verdicts["1a"] == "inconclusive" and verdicts["4a"] == "inconclusive"


def test_ood_mean_excludes_the_training_domain_unless_asked():
    transfer, _ = _grid(0, 0, 0, 0, noise=0)
    m = id_ood_means(_reference(transfer)).sel({"method": "lp", "noise_ratio": 0.0, "seed": 0})
    assert float(m["ood_mean"]) == pytest.approx(0.5)
    m = id_ood_means(_reference(transfer), include_train_domain=True).sel({"method": "lp", "noise_ratio": 0.0, "seed": 0})
    assert float(m["ood_mean"]) == pytest.approx(0.7)
    assert float(m["id_mean"]) == pytest.approx(0.8)


def test_mean_ci_and_verdict_rules():
    mean, half = mean_ci(np.array([1.0, 2.0, 3.0]))
    assert mean == 2.0 and half == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-5)
    assert np.isnan(mean_ci(np.array([1.0]))[1])
    assert verdict(1.0, 0.5, +1) == "supported" and verdict(1.0, 0.5, -1) == "contradicted"
    assert verdict(0.1, 0.5, +1) == "inconclusive" and verdict(1.0, float("nan"), +1) == "inconclusive"


def test_interval_text_says_one_seed_instead_of_a_nan_half_width():
    assert interval_text(*mean_ci(np.array([1.0, 2.0, 3.0]))) == "+2.00 ± 2.48"
    assert interval_text(*mean_ci(np.array([-1.5]))) == "-1.50 (one seed)"
    assert interval_text(*mean_ci(np.array([np.nan, np.nan]))) == "n/a"


def test_claims_per_protocol_and_the_decomposition_adds_up():
    transfer, spectrum = _grid(id_effect=0.02, ood_effect=-0.2, nmtune_gain=-0.02, sve_slope=1.0, matched_gain=0.02)
    claims = judge_all(transfer, spectrum)
    v = {(c.protocol, c.id): c.verdict for c in claims if c.setting == "base"}
    assert v[("reference", "4a")] == "contradicted" and v[("matched", "4a")] == "supported"
    assert v[("reference", "2b")] == v[("matched", "2b")] == "supported"
    d = decomposition(transfer).set_index(["protocol", "noise_ratio", "mean_of", "term"])["mean_points"]
    for protocol, total in (("reference", -2.0), ("matched", 2.0)):
        for which in ("ID", "OOD"):
            parts = d[(protocol, "all", which, "mlp-lp")] + d[(protocol, "all", which, "nmtune-mlp")]
            assert d[(protocol, "all", which, "nmtune-lp")] == pytest.approx(parts)
            assert d[(protocol, "all", which, "nmtune-lp")] == pytest.approx(total, abs=0.2)
            assert d[(protocol, "all", which, "mlp-lp")] == pytest.approx(total / 2, abs=0.2)
    robust = robustness_table(claims).drop_duplicates("claim").set_index("claim")["robust"]
    assert robust["4a"] == "no" and robust["2b"] == "yes"
    # runs with the linear probe alone (methods=["lp"]): no decomposition, and the claims without claim 4
    lp_only = transfer.sel({"method": ["lp"]})
    assert decomposition(lp_only).empty
    assert list(decomposition(lp_only).columns) == list(decomposition(transfer).columns)
    assert not any(c.id.startswith("4") for c in judge_all(lp_only, spectrum))


def test_noise_effects_compare_each_ratio_with_clean_pretraining_of_the_same_seed():
    # ID: +2 points at 5 and 10 %, −2 points at 20 and 30 %; OOD: −20 points per unit of noise ratio
    transfer, _ = _grid(id_effect=0.02, ood_effect=-0.2, nmtune_gain=0.02, sve_slope=0.0, matched_gain=0.02,
                        noise=0.0005)
    e = noise_effects(transfer).set_index(["protocol", "mean_of", "noise_ratio"])
    assert sorted(set(e.index.get_level_values("noise_ratio"))) == ["0.05", "0.1", "0.2", "0.3"]  # no 0 row
    for protocol in ("reference", "matched"):
        for ratio, points, side in (("0.05", 2.0, "above 0"), ("0.1", 2.0, "above 0"), ("0.3", -2.0, "below 0")):
            assert e.loc[(protocol, "ID", ratio), "mean_points"] == pytest.approx(points, abs=0.2)
            assert e.loc[(protocol, "ID", ratio), "ci"] == side
        assert e.loc[(protocol, "OOD", "0.2"), "mean_points"] == pytest.approx(-0.2 * 0.2 * 100, abs=0.2)
    assert (e["n_seeds"] == 3).all()
    flat, _ = _grid(id_effect=0.0, ood_effect=0.0, nmtune_gain=0.0, sve_slope=0.0, noise=0.01)
    assert set(noise_effects(flat)["ci"]) <= {"spans 0", "above 0", "below 0"}
    assert (noise_effects(flat.sel(noise_ratio=[0.05, 0.1]))).empty  # no clean run: nothing to compare with


def test_noise_effects_by_task_split_each_mean_into_its_tasks():
    transfer, _ = _grid(id_effect=0.02, ood_effect=-0.2, nmtune_gain=0.02, sve_slope=0.0, matched_gain=0.02,
                        noise=0.0005)
    by_task = noise_effects(transfer, by="task")
    kinds = dict(zip(transfer["task"].values, transfer["task_kind"].values))
    assert list(by_task.columns[:4]) == ["protocol", "mean_of", "task", "noise_ratio"]
    assert set(by_task["task"]) == set(kinds) and all(by_task["mean_of"] == by_task["task"].map(kinds).str.upper())
    # each mean's effect is the mean of its tasks' effects (a mean of paired differences is linear)
    per_mean = noise_effects(transfer).set_index(["protocol", "mean_of", "noise_ratio"])["mean_points"]
    from_tasks = by_task.groupby(["protocol", "mean_of", "noise_ratio"])["mean_points"].mean()
    assert from_tasks.reindex(per_mean.index).to_numpy() == pytest.approx(per_mean.to_numpy(), abs=1e-9)
    # a task whose score moves alone shows up in its own row only
    shifted = transfer.copy(deep=True)
    task = next(t for t, k in kinds.items() if k == "ood")
    shifted["accuracy"].loc[{"task": task, "noise_ratio": 0.3}] -= 0.1
    moved = noise_effects(shifted, by="task").set_index(["protocol", "task", "noise_ratio"])["mean_points"]
    before = by_task.set_index(["protocol", "task", "noise_ratio"])["mean_points"]
    changed = (moved - before).abs() > 1e-9
    assert set(changed[changed].index) == {(p, task, "0.3") for p in ("reference", "matched")}
    assert (moved - before)[changed].to_numpy() == pytest.approx([-10.0, -10.0])
    with pytest.raises(ValueError, match=r"by='tasks'; accepted: 'mean', 'task'"):
        noise_effects(transfer, by="tasks")


def test_score_levels_are_what_the_noise_effects_take_differences_of():
    transfer, _ = _grid(id_effect=0.02, ood_effect=-0.2, nmtune_gain=0.02, sve_slope=0.0, matched_gain=0.02,
                        noise=0.005)
    levels = score_levels(transfer).set_index(["protocol", "task", "noise_ratio"])
    assert sorted(set(levels.index.get_level_values("noise_ratio"))) == ["0", "0.05", "0.1", "0.2", "0.3"]
    scores = task_scores(transfer.sel(setting="base", protocol="matched")).sel({"method": "lp"})
    expected = mean_ci(scores.sel(task="b", noise_ratio=0.2).values * 100)
    assert tuple(levels.loc[("matched", "b", "0.2"), ["mean_percent", "half_width_percent"]]) == pytest.approx(expected)
    seeds = [f"seed{s}" for s in transfer["seed"].values]  # then each seed's own score, for paired comparisons
    assert list(levels.columns[-len(seeds):]) == seeds and len(seeds) == 3
    assert levels.loc[("matched", "b", "0.2"), seeds].to_numpy(float) == pytest.approx(
        scores.sel(task="b", noise_ratio=0.2).transpose("seed").values * 100)
    # with every seed present, a paired effect's mean is the difference of the two levels' means
    effects = noise_effects(transfer, by="task").set_index(["protocol", "task", "noise_ratio"])["mean_points"]
    for (protocol, task, ratio), effect in effects.items():
        diff = levels.loc[(protocol, task, ratio), "mean_percent"] - levels.loc[(protocol, task, "0"), "mean_percent"]
        assert effect == pytest.approx(diff, abs=1e-9)
    means = score_levels(transfer, by="mean")
    assert set(means["mean_of"]) == {"ID", "OOD"} and "task" not in means.columns and (means["n_seeds"] == 3).all()
    # the other heads' levels too, each row naming its head; a head the runs lack has none
    heads = score_levels(transfer, methods=("lp", "mlp", "nmtune", "no_such_head"))
    assert list(dict.fromkeys(heads["method"])) == ["lp", "mlp", "nmtune"] and len(heads) == 3 * len(levels)
    assert heads[heads["method"] == "lp"].reset_index(drop=True).equals(score_levels(transfer))
    nmtune = heads[heads["method"] == "nmtune"].set_index(["protocol", "task", "noise_ratio"])
    expected = task_scores(transfer.sel(setting="base", protocol="reference")).sel({"method": "nmtune"})
    assert nmtune.loc[("reference", "b", "0.2"), seeds].to_numpy(float) == pytest.approx(
        expected.sel(task="b", noise_ratio=0.2).transpose("seed").values * 100)
    with pytest.raises(ValueError, match=r"by='tasks'; accepted: 'mean', 'task'"):
        score_levels(transfer, by="tasks")


def test_sensitivity_reports_the_growth_of_the_regularisers_effect_with_noise():
    config = StudyConfig.from_preset("smoke", reg_scales=[1.0, 10.0], single_lambda=0.0)
    for growth, sign in ((0.1, 1), (-0.1, -1)):
        transfer, _ = _grid(0, 0, 0.02, 0, noise=0.0001, reg_growth=growth)
        sens = sensitivity(transfer, task="b", config=config)
        assert set(sens["variant"]) == {"nmtune", "nmtune_x10"}
        slope = sens[(sens["variant"] == "nmtune_x10") & (sens["noise_ratio"] == "slope/10%")
                     & (sens["metric"] == "ood_mean")]
        assert float(slope["mean_points"].iloc[0]) == pytest.approx(sign * 1.0, abs=0.05)  # 0.1/unit = 1 pt/10%
        at_zero = sens[(sens["variant"] == "nmtune") & (sens["noise_ratio"] == "0") & (sens["metric"] == "train_domain")]
        assert float(at_zero["mean_points"].iloc[0]) == pytest.approx(1.0, abs=0.05)  # NMTune − MLP = 0.01
    # runs whose task list leaves the ablation task out (ablation=false): no sensitivity rows
    assert sensitivity(transfer.sel(task=["a"]), task="b", config=config).empty


def test_ablation_table_lists_every_head_but_the_probe_and_is_none_without_one():
    transfer, _ = _grid(0, 0, 0.02, 0, noise=0.0)
    table = ablation_table(transfer, task="b", mean_over=("seed", "noise_ratio"))
    assert set(table.index) == {"mlp", "nmtune", "nmtune_x10"} and list(table.columns) == ["real", "sketch"]
    assert table.loc["nmtune", "real"] == pytest.approx(92.0) and table.loc["mlp", "real"] == pytest.approx(91.0)
    # the linear probe alone (methods=["lp"]), or a task list without the ablation task: no table, not an error
    assert ablation_table(transfer.sel({"method": ["lp"]}), task="b", mean_over=("seed", "noise_ratio")) is None
    assert ablation_table(transfer.sel(task=["a"]), task="b") is None


def test_agreement_over_seed_resamples_is_full_for_a_clear_effect_and_not_for_a_marginal_one():
    transfer, spectrum = _grid(id_effect=0.02, ood_effect=-0.2, nmtune_gain=0.02, sve_slope=1.0, noise=0.0005)
    clear = resample_agreement(judge_claims(_reference(transfer), spectrum))
    assert (clear.set_index("claim")["agreement_over_seed_resamples"] == 1.0).all()
    transfer, spectrum = _grid(id_effect=0.0, ood_effect=0.0, nmtune_gain=0.002, sve_slope=0.0, noise=0.002)
    marginal = resample_agreement(judge_claims(_reference(transfer), spectrum)).set_index("claim")
    assert marginal.loc["1a-mean", "agreement_over_seed_resamples"] < 1.0


def test_task_effects_figure_has_a_panel_per_protocol_and_kind_and_a_line_per_task():
    import matplotlib

    matplotlib.use("Agg")
    from nmtune_lib.analysis import plotting

    transfer, _ = _grid(id_effect=0.02, ood_effect=-0.2, nmtune_gain=0.02, sve_slope=0.0, matched_gain=0.02,
                        noise=0.0005)
    by_task = noise_effects(transfer, by="task")
    fig = plotting.task_effects(by_task)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [f"{p}: {k} tasks" for p in ("reference", "matched") for k in ("ID", "OOD")]
    for ax in fig.axes:
        protocol, kind = ax.get_title().split(": ")[0], ax.get_title().split(": ")[1].split()[0]
        expected = by_task[(by_task["protocol"] == protocol) & (by_task["mean_of"] == kind)]
        assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == sorted(set(expected["task"]))
    matplotlib.pyplot.close(fig)
    no_clean = noise_effects(transfer.sel(noise_ratio=[0.05, 0.1]), by="task")
    assert no_clean.empty and "task" in no_clean.columns
    with pytest.raises(ValueError, match="without a clean"):
        plotting.task_effects(no_clean)
