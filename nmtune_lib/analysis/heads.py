"""The heads side by side: each head's ID and OOD accuracy and what it cost (``heads.csv``), and paired differences
between heads at each noise ratio and how noise changes them (``pairs.csv``): the answer to "is black-box tuning
worth it against full fine-tuning?" (docs/paper.md §8) and to whether noise changes the heads' ranking.

Every difference is paired by seed (the same backbone and the same head seed), summarised as mean ± the 95 %
half-width over seeds (``verdicts.mean_ci``). A pair's ``noise_ratio`` row ``"30%−0%"`` (the grid's largest ratio
against clean) is the seed-paired change of the difference with noise: an interval that excludes 0 says noise
changes the gap between the two heads.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from ..config import ratio_percent
from .aggregate import cost_frame, id_ood_means
from .verdicts import mean_ci

PAIRS = (("ft", "nmtune"), ("ft", "lp"), ("ft", "mlp"), ("nmtune", "lp"), ("nmtune", "mlp"), ("mlp", "lp"))
HEADS = ("lp", "mlp", "nmtune", "ft")


def _means(transfer: xr.Dataset, protocol: str) -> xr.Dataset:
    return id_ood_means(transfer.sel(setting="base", protocol=protocol)) * 100


def run_cost(transfer: xr.Dataset) -> pd.DataFrame:
    """Per run, protocol and head: its fits' wall time summed over the run's distinct fits (tasks that share a
    training set share one fit), its largest peak memory and its trained parameters."""
    frame = cost_frame(transfer)
    if frame.empty:
        return frame
    unique = frame.drop_duplicates(["noise_ratio", "seed", "protocol", "method", "fit_seconds"])
    agg = {"fit_seconds": "sum", "peak_memory_mb": "max", "trained_params": "max"}
    return unique.groupby(["noise_ratio", "seed", "protocol", "method"]).agg(
        {k: v for k, v in agg.items() if k in unique}).reset_index()


def heads_table(transfer: xr.Dataset) -> pd.DataFrame:
    """``heads.csv``: per protocol, head and noise ratio, the ID and OOD means (%, mean ± 95 % half-width over
    seeds) and the cost per run (mean over seeds: seconds, MiB, trained parameters)."""
    costs = run_cost(transfer)
    rows = []
    for protocol in transfer["protocol"].values:
        means = _means(transfer, protocol)
        for method in (m for m in HEADS if m in means["method"].values):
            for r in means["noise_ratio"].values:
                row = dict(protocol=str(protocol), method=method, noise_ratio=f"{float(r):g}")
                for which in ("id", "ood"):
                    values = means[f"{which}_mean"].sel({"method": method, "noise_ratio": r}).values
                    row[f"{which}_mean"], row[f"{which}_half_width"] = mean_ci(values)
                if len(costs):
                    part = costs[(costs["protocol"] == protocol) & (costs["method"] == method)
                                 & np.isclose(costs["noise_ratio"], float(r))]
                    row.update({k: float(part[k].mean()) if len(part) else np.nan
                                for k in ("fit_seconds", "peak_memory_mb", "trained_params") if k in part})
                if np.isfinite(row["id_mean"]) or np.isfinite(row["ood_mean"]):
                    rows.append(row)
    return pd.DataFrame(rows)


def pairs_table(transfer: xr.Dataset, pairs=PAIRS) -> pd.DataFrame:
    """``pairs.csv``: per protocol, pair of heads (``a-b``, both trained) and ID/OOD mean, a − b at each noise ratio
    and the change of a − b from clean to the largest ratio, points, mean ± 95 % half-width over seeds (paired)."""
    rows = []
    for protocol in transfer["protocol"].values:
        means = _means(transfer, protocol)
        ratios = [float(r) for r in means["noise_ratio"].values]
        for a, b in pairs:
            if not {a, b} <= set(means["method"].values):
                continue
            for which in ("id", "ood"):
                diff = means[f"{which}_mean"].sel({"method": a}) - means[f"{which}_mean"].sel({"method": b})
                if not np.isfinite(diff).any():
                    continue
                labelled = [(f"{r:g}", diff.sel(noise_ratio=r).values) for r in ratios]
                if len(ratios) > 1 and min(ratios) == 0:
                    change = diff.sel(noise_ratio=max(ratios)) - diff.sel(noise_ratio=0.0)
                    labelled.append((f"{ratio_percent(max(ratios))}−0%", change.values))
                for label, values in labelled:
                    mean, half = mean_ci(values)
                    rows.append(dict(protocol=str(protocol), pair=f"{a}-{b}", mean_of=which.upper(),
                                     noise_ratio=label, mean_points=mean, half_width_points=half,
                                     n_seeds=int(np.isfinite(values).sum())))
    return pd.DataFrame(rows, columns=["protocol", "pair", "mean_of", "noise_ratio", "mean_points",
                                       "half_width_points", "n_seeds"])
