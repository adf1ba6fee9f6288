"""Does the spectrum explain transfer, or only move with the noise ratio? The paper's mechanism (claim 3) says noise
changes the spectrum and the spectrum's shape explains transfer; both moving with the noise ratio does not test that.

Across the runs of one report set (its ``runs.csv``: one row per noise ratio and seed), each spectrum metric is
related to the linear probe's ID and OOD accuracy *within* noise ratios: an ordinary least-squares regression of the
accuracy (points) on the metric with a fixed effect per noise ratio (statsmodels' formula API,
``accuracy ~ metric + C(noise_ratio)``), so only the runs of one ratio are compared with each other (different
seeds). The metric is scaled by its within-ratio standard deviation (its residual after the ratio means), so a
coefficient reads "points of accuracy per within-ratio SD of the metric", comparable across metrics and sets; its
95 % interval and two-sided p-value are the regression's (t with n − k degrees of freedom), and ``p_adjusted`` is
Holm's over the set's rows (``verdicts.holm``). A coefficient whose interval spans 0 says the spectrum carries no
detectable information about transfer beyond the noise ratio in that set.

``between_slope`` is what the mechanism predicts for that coefficient: the slope of the ratio means of the accuracy
on the ratio means of the metric (a least-squares line through one point per noise ratio), in the same units. If the
spectrum carried the whole effect of noise on transfer, seeds of one ratio would follow that slope too; an interval
that excludes it rules the full mechanism out, one that holds both it and 0 cannot tell the two apart.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .verdicts import holm

METRICS = {"sve_pretrain": "SVE, pre-training test split", "p1_pretrain": "p₁, pre-training test split",
           "sve_id": "SVE, ID tasks' features", "p1_id": "p₁, ID tasks' features",
           "sve_ood": "SVE, OOD tasks' features", "p1_ood": "p₁, OOD tasks' features"}
OUTCOMES = {"ID": "reference_lp_id", "OOD": "reference_lp_ood"}  # runs.csv columns: the reference linear probe
COLUMNS = ["set", "metric", "data", "outcome", "coefficient", "ci_low", "ci_high", "p_value", "p_adjusted",
           "n_runs", "df_resid", "within_sd", "between_slope"]


def within_ratio(values: pd.Series, ratios: pd.Series) -> pd.Series:
    """``values`` less the mean of their noise ratio: the variation a ratio fixed effect leaves."""
    return values - values.groupby(ratios).transform("mean")


def association(runs: pd.DataFrame, metric: str, outcome: str) -> dict[str, float]:
    """The within-ratio association of ``metric`` with ``outcome`` (see the module docstring): coefficient per
    within-ratio SD, its 95 % interval and p-value, the runs used and the residual degrees of freedom."""
    import statsmodels.formula.api as smf  # heavy: deferred until an association is fitted

    data = runs[["noise_ratio", metric, outcome]].dropna()
    sd = float(within_ratio(data[metric], data["noise_ratio"]).std(ddof=1)) if len(data) > 1 else math.nan
    nan = dict(coefficient=math.nan, ci_low=math.nan, ci_high=math.nan, p_value=math.nan, n_runs=len(data),
               df_resid=math.nan, within_sd=sd, between_slope=math.nan)
    if not (math.isfinite(sd) and sd > 0) or len(data) <= data["noise_ratio"].nunique() + 1:
        return nan  # no variation within ratios, or no degree of freedom left
    frame = pd.DataFrame({"y": data[outcome].astype(float), "x": data[metric].astype(float) / sd,
                          "ratio": data["noise_ratio"].astype(str)})
    fit = smf.ols("y ~ x + C(ratio)", data=frame).fit()
    low, high = fit.conf_int(alpha=0.05).loc["x"]
    means = frame.groupby("ratio")[["x", "y"]].mean()
    between = float(np.polyfit(means["x"], means["y"], 1)[0]) if means["x"].nunique() > 1 else math.nan
    return dict(coefficient=float(fit.params["x"]), ci_low=float(low), ci_high=float(high),
                p_value=float(fit.pvalues["x"]), n_runs=int(fit.nobs), df_resid=float(fit.df_resid), within_sd=sd,
                between_slope=between)


def mechanism_table(sets: Mapping[str, pd.DataFrame], *, metrics: Sequence[str] = tuple(METRICS),
                    outcomes: Mapping[str, str] = OUTCOMES) -> pd.DataFrame:
    """metric × set × ID/OOD: the within-ratio association of each spectrum metric with the linear probe's accuracy
    (``association``), ``sets`` mapping a set's name to its ``runs.csv``; metrics a set lacks are left out."""
    rows = []
    for name, runs in sets.items():
        part = []
        for metric in (m for m in metrics if m in runs.columns):
            for which, column in outcomes.items():
                if column in runs.columns:
                    part.append(dict(set=name, metric=metric, data=METRICS.get(metric, metric), outcome=which,
                                     **association(runs, metric, column)))
        adjusted = holm([r["p_value"] for r in part])
        rows += [{**r, "p_adjusted": float(p)} for r, p in zip(part, adjusted)]
    return pd.DataFrame(rows, columns=COLUMNS)


def planted_runs(effect: float, *, ratios: Sequence[float] = (0.0, 0.05, 0.1, 0.2, 0.3), seeds: int = 5,
                 noise: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """Made-up runs for tests: a spectrum metric that moves with the noise ratio and varies across seeds, and an
    accuracy that moves with the ratio too and with the metric's within-ratio part by ``effect`` points per unit."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in ratios:
        for s in range(seeds):
            metric = 4.0 + 0.5 * r + rng.normal(0, 0.1)
            rows.append(dict(noise_ratio=r, seed=s, sve_pretrain=metric))
    frame = pd.DataFrame(rows)
    wobble = within_ratio(frame["sve_pretrain"], frame["noise_ratio"])
    frame["reference_lp_id"] = 80 - 20 * frame["noise_ratio"] + effect * wobble + rng.normal(0, noise, len(frame))
    return frame
