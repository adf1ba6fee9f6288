"""Aggregates of a preset's runs: ID/OOD means, per-task scores and their levels, each noise ratio against clean
pre-training, claim 4's decomposition, the regulariser sensitivity and ablation, read by notebook 05 and ``claims``.

Every effect is computed *per seed* (a paired comparison: the same seed fixes the pre-training data order and the
head's initialisation across noise ratios and methods), then summarised as the mean over seeds ± the half-width of a
two-sided 95% Student-t interval (``verdicts.mean_ci``). Claim 4 is split into head capacity and regularisers:
NMTune − LP = (MLP − LP) + (NMTune − MLP) (``decomposition``); ``sensitivity`` gives NMTune − MLP per regulariser
scale and noise ratio. The claims themselves are judged in ``claims``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from ..reference import sensitivity_name
from ..results import combine_runs
from .verdicts import mean_ci, verdict

def load_results(study, kind: str) -> xr.Dataset:
    """Combine the ``kind`` result file (``"transfer"``, ``"spectrum"``) of every run of ``study``'s grid (a
    ``Study``) into one Dataset; only the grid's runs are read, and a run of the grid without the file raises."""
    return combine_runs(study.result_paths(kind), kind)


def task_scores(transfer: xr.Dataset, *, include_train_domain: bool = False) -> xr.DataArray:
    """Each task's score (…, task): an ID task's in-domain test accuracy; an OOD task's mean over its test domains
    (without the training domain unless ``include_train_domain``). ``id_ood_means`` averages these over tasks."""
    acc = transfer["accuracy"]
    if not include_train_domain:
        acc = acc.where((transfer["task_kind"] == "id") | (transfer["test_domain"] != transfer["train_domain"]))
    return acc.mean("test_domain", skipna=True)


def id_ood_means(transfer: xr.Dataset, *, include_train_domain: bool = False) -> xr.Dataset:
    """ID mean and OOD mean accuracy (noise_ratio, seed, method).

    ID mean: plain mean over ID tasks of their in-domain test accuracy (docs/paper.md). OOD mean: for each OOD task,
    the mean over its test domains (without the training domain unless ``include_train_domain``), then the mean over
    OOD tasks. Both are means of ``task_scores``.
    """
    scores = task_scores(transfer, include_train_domain=include_train_domain)
    kind = transfer["task_kind"]
    return xr.Dataset({"id_mean": scores.where(kind == "id").mean("task", skipna=True),
                       "ood_mean": scores.where(kind == "ood").mean("task", skipna=True)})


def slope(values: xr.DataArray) -> np.ndarray:
    """Least-squares slope of ``values`` against noise_ratio, one per seed (units: per unit noise ratio)."""
    x = values["noise_ratio"].values
    y = values.transpose("seed", "noise_ratio").values
    xc = x - x.mean()
    return (y - y.mean(1, keepdims=True)) @ xc / (xc @ xc)


def clean_ratio(ratios: Sequence[float]) -> float | None:
    """The grid's 0 (clean pre-training) as it is stored, or None when the grid has no clean run."""
    return next((float(r) for r in ratios if np.isclose(r, 0.0)), None)


def downstream_spectrum(transfer: xr.Dataset, centering: str) -> dict[str, xr.Dataset]:
    """The frozen features' spectrum metrics on the downstream tasks (``frozen_sve``, ``frozen_p1`` of notebook 04),
    averaged like the scores (``task_scores``: an ID task's test set, an OOD task's shifted test domains),
    then over the ID and over the OOD tasks: ``{"ID": Dataset(sve, p1), "OOD": …}``; empty when the runs lack them."""
    if "frozen_sve" not in transfer or centering not in transfer["centering"].values:
        return {}
    kind = transfer["task_kind"]
    out = {}
    for which in ("id", "ood"):
        metrics = {}
        for metric in ("sve", "p1"):
            per_task = task_scores(transfer.assign(accuracy=transfer[f"frozen_{metric}"].sel(centering=centering)))
            metrics[metric] = per_task.where(kind == which).mean("task", skipna=True)
        if np.isfinite(metrics["sve"]).any():
            out[which.upper()] = xr.Dataset(metrics)
    return out


def paired_effect(a: xr.DataArray, b: xr.DataArray) -> tuple[float, float, int]:
    """Mean and 95% half-width (points) of a − b over seeds, after averaging over the noise ratios present."""
    diff = (a - b) * 100
    diff = diff.mean("noise_ratio") if "noise_ratio" in diff.dims else diff
    values = diff.values
    mean, half = mean_ci(values)
    return mean, half, int(np.isfinite(values).sum())


DECOMPOSED = ("lp", "mlp", "nmtune")  # the heads claim 4's decomposition compares


def decomposition(transfer: xr.Dataset, *, setting: str = "base"):
    """NMTune − LP = (MLP − LP) + (NMTune − MLP), ID and OOD means, per protocol and noise ratio (and ``all``,
    the mean over noise ratios): mean over seeds ± 95% half-width, in points, paired by seed. Empty when the runs
    lack one of the three heads (``methods``)."""
    rows = []
    heads_run = set(DECOMPOSED) <= set(transfer["method"].values)
    for protocol in transfer["protocol"].values if heads_run else ():
        means = id_ood_means(transfer.sel(setting=setting, protocol=protocol))
        ratios = [("all", means)] + [(f"{r:g}", means.sel(noise_ratio=[r])) for r in means["noise_ratio"].values]
        for label, part in ratios:
            for which in ("id_mean", "ood_mean"):
                if not np.isfinite(means[which].sel({"method": "lp"})).any():
                    continue  # a suite without ID (or OOD) tasks, or a protocol without LP
                m = {k: part[which].sel({"method": k}) for k in DECOMPOSED}
                for term, (a, b) in {"nmtune-lp": ("nmtune", "lp"), "mlp-lp": ("mlp", "lp"),
                                     "nmtune-mlp": ("nmtune", "mlp")}.items():
                    mean, half, n = paired_effect(m[a], m[b])
                    rows.append(dict(protocol=str(protocol), noise_ratio=label, mean_of=which[:-5].upper(),
                                     term=term, mean_points=mean, half_width_points=half, n_seeds=n))
    return pd.DataFrame(rows, columns=["protocol", "noise_ratio", "mean_of", "term", "mean_points",
                                       "half_width_points", "n_seeds"])


EFFECTS_BY = ("mean", "task")  # noise_effects' and score_levels' rows: per ID/OOD mean, or per task


def _probe_scores(transfer: xr.Dataset, *, probe: str, setting: str, by: str):
    """For each protocol, ``(protocol, labels, scores)``: ``probe``'s ID and OOD means (``by="mean"``, labels
    ``mean_of``) or each task's score (``by="task"``, labels ``mean_of`` and ``task``), each (noise_ratio, seed);
    a group without finite scores (a suite without ID or OOD tasks, a protocol not run) is left out."""
    if by not in EFFECTS_BY:
        raise ValueError(f"by={by!r}; accepted: {', '.join(map(repr, EFFECTS_BY))}")
    for protocol in transfer["protocol"].values:
        part = transfer.sel(setting=setting, protocol=protocol)
        if by == "mean":
            means = id_ood_means(part).sel({"method": probe})
            groups = [({"mean_of": which[:-5].upper()}, means[which]) for which in ("id_mean", "ood_mean")]
        else:
            scores = task_scores(part).sel({"method": probe})
            groups = [({"mean_of": str(kind).upper(), "task": str(task)}, scores.sel(task=task))
                      for task, kind in zip(part["task"].values, part["task_kind"].values)]
        for labels, values in groups:
            if np.isfinite(values).any():
                yield str(protocol), labels, values


def _by_columns(by: str) -> list[str]:
    return ["protocol", "mean_of", *(["task"] if by == "task" else []), "noise_ratio"]


def noise_effects(transfer: xr.Dataset, *, probe: str = "lp", setting: str = "base", by: str = "mean"):
    """Claims 1a and 2a one noise ratio at a time (docs/paper.md §7 asks whether an optimal ratio exists): per
    protocol, test domain (ID mean, OOD mean) and noise ratio > 0, ``probe``'s accuracy minus that of the clean (0 %)
    pre-training of the same seed, mean over seeds ± 95% half-width, in points; ``ci`` says on which side of zero
    the interval lies (``spans 0`` when on neither). Empty when the grid has no clean run.

    ``by="task"``: the same comparison for each task's own score (``task_scores``) instead of the two means, with a
    ``task`` column after ``mean_of`` (the mean the task enters): which tasks carry a mean's effect and its spread.
    """
    rows = []
    ratios = [float(r) for r in transfer["noise_ratio"].values]
    zero = clean_ratio(ratios)
    for protocol, labels, values in _probe_scores(transfer, probe=probe, setting=setting, by=by):
        for r in ratios if zero is not None else ():  # no clean run: nothing to compare with
            if r == zero:
                continue
            mean, half, n = paired_effect(values.sel(noise_ratio=r), values.sel(noise_ratio=zero))
            side = {"supported": "above 0", "contradicted": "below 0"}.get(verdict(mean, half, +1), "spans 0")
            rows.append(dict(protocol=protocol, **labels, noise_ratio=f"{r:g}", mean_points=mean,
                             half_width_points=half, n_seeds=n, ci=side))
    return pd.DataFrame(rows, columns=[*_by_columns(by), "mean_points", "half_width_points", "n_seeds", "ci"])


def score_levels(transfer: xr.Dataset, *, methods: Sequence[str] = ("lp",), setting: str = "base",
                 by: str = "task"):
    """The levels ``noise_effects`` takes differences of (the linear probe's), and the same for the other heads in
    ``methods``: per method, protocol, task (or ID/OOD mean, ``by="mean"``) and noise ratio, the score, mean over
    seeds ± 95% half-width, in percent, then each seed's score (columns ``seed0``, ``seed1``, …). Two sets made
    alike but for one setting (``make caption-probe``) compare here at every ratio, 0 % included, and seed by seed
    (``report_tables.contrast_table``). A method the runs lack has no rows."""
    rows = []
    seeds = [f"seed{int(s)}" for s in transfer["seed"].values]
    for method in (m for m in methods if m in transfer["method"].values):
        for protocol, labels, values in _probe_scores(transfer, probe=method, setting=setting, by=by):
            for r in values["noise_ratio"].values:
                per_seed = values.sel(noise_ratio=r).transpose("seed").values * 100
                mean, half = mean_ci(per_seed)
                rows.append(dict(protocol=protocol, method=method, **labels, noise_ratio=f"{float(r):g}",
                                 mean_percent=mean, half_width_percent=half,
                                 n_seeds=int(np.isfinite(per_seed).sum()), **dict(zip(seeds, per_seed))))
    columns = ["protocol", "method", *_by_columns(by)[1:], "mean_percent", "half_width_percent", "n_seeds", *seeds]
    return pd.DataFrame(rows, columns=columns)


def effect_text(frame) -> list[str]:
    """``"+1.23 ± 0.45"`` for each row's ``mean_points`` and ``half_width_points`` (the tables' effect column)."""
    return [interval_text(m, h) for m, h in zip(frame["mean_points"], frame["half_width_points"])]


def interval_text(mean: float, half: float) -> str:
    """``"+1.23 ± 0.45"``: a signed mean and its half-width, two decimals; ``"+1.23 (one seed)"`` where there is no
    half-width (``mean_ci`` of one seed) and ``"n/a"`` where there is no value at all."""
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:+.2f} ± {half:.2f}" if np.isfinite(half) else f"{mean:+.2f} (one seed)"


def sensitivity(transfer: xr.Dataset, *, task: str, config) -> "pd.DataFrame":
    """NMTune − MLP (points, mean over seeds ± 95% half-width) on ``task`` for every regulariser scale and the
    single-λ variant, per noise ratio: on the task's training domain (``train_domain``) and its OOD mean (the
    other test domains); ``noise_ratio == "slope/10%"`` rows give the per-seed slope of that difference against
    the noise ratio (points per 10% noise): a positive slope means the regularisers help more as noise grows.
    Empty when the runs have no sensitivity heads (ablation off, ``task`` not among their tasks, or no reference
    protocol)."""
    if task not in transfer["task"].values or "reference" not in transfer["protocol"].values:
        return pd.DataFrame([])
    acc = transfer["accuracy"].sel(setting="base", protocol="reference", task=task)
    train = str(transfer["train_domain"].sel(task=task).values)
    parts = {"train_domain": acc.sel(test_domain=train),
             "ood_mean": acc.drop_sel(test_domain=train).mean("test_domain", skipna=True)}
    variants = [(sensitivity_name(s), s, "") for s in config.reg_scales]
    if config.single_lambda > 0:
        variants.append((f"nmtune_single{config.single_lambda:g}", float("nan"), f"{config.single_lambda:g}"))
    rows = []
    for name, scale, lam in variants:
        if name not in acc["method"].values:
            continue
        for metric, values in parts.items():
            diff = values.sel({"method": name}) - values.sel({"method": "mlp"})
            if not np.isfinite(diff).any():
                continue
            for r in diff["noise_ratio"].values:
                mean, half = mean_ci(diff.sel(noise_ratio=r).values * 100)
                rows.append(dict(variant=name, reg_scale=scale, single_lambda=lam, metric=metric,
                                 noise_ratio=f"{r:g}", mean_points=mean, half_width_points=half,
                                 n_seeds=int(np.isfinite(diff.sel(noise_ratio=r).values).sum())))
            if diff.sizes["noise_ratio"] > 1:
                mean, half = mean_ci(slope(diff) * 10)
                rows.append(dict(variant=name, reg_scale=scale, single_lambda=lam, metric=metric,
                                 noise_ratio="slope/10%", mean_points=mean, half_width_points=half,
                                 n_seeds=diff.sizes["seed"]))
    return pd.DataFrame(rows)


def ablation_table(transfer: xr.Dataset, *, task: str, mean_over: Sequence[str] = ()) -> "pd.DataFrame | None":
    """Accuracy (%) of every head but the linear probe on the ablation ``task`` (base setting, reference protocol):
    a row per head, a column per test domain, averaged over ``mean_over`` (e.g. ``("seed", "noise_ratio")``; the
    dimensions left must be method and test domain). None when the runs trained no such head on ``task`` (the task
    is not among their tasks, ``methods`` is the linear probe alone, or the runs left out the reference protocol)."""
    if task not in transfer["task"].values or "reference" not in transfer["protocol"].values:
        return None
    acc = transfer["accuracy"].sel(setting="base", protocol="reference", task=task)
    heads = [m for m in acc["method"].values if m != "lp" and bool(acc.sel({"method": m}).notnull().any())]
    if not heads:
        return None
    return (acc.sel({"method": heads}).mean(list(mean_over)).to_pandas() * 100).dropna(axis=1, how="all")


def robustness_means(transfer: xr.Dataset) -> pd.DataFrame | None:
    """ID and OOD means (%) of LP, MLP and NMTune under each head setting (reference protocol, the dataset's first
    run): a column per mean and head, a row per setting. None when the runs left out the reference protocol."""
    if "reference" not in transfer["protocol"].values:
        return None
    heads = [m for m in transfer["method"].values if m in ("lp", "mlp", "nmtune")]
    means = id_ood_means(transfer.sel(protocol="reference").isel(noise_ratio=0, seed=0).sel({"method": heads}))
    return (means.to_dataframe()[["id_mean", "ood_mean"]] * 100).unstack("method").round(2)


def means_table(transfer: xr.Dataset) -> pd.DataFrame:
    """ID mean and OOD mean (with and without the training domain) per method and noise ratio, mean over seeds, %."""
    rows = []
    for include in (False, True):
        means = id_ood_means(transfer, include_train_domain=include).mean("seed") * 100
        for var in ("id_mean", "ood_mean"):
            if var == "id_mean" and include:
                continue
            name = {"id_mean": "ID mean", "ood_mean": "OOD mean" + (" (with train domain)" if include else "")}[var]
            frame = means[var].to_pandas()
            frame = frame.T if frame.index.name != "method" else frame
            rows.append(frame.assign(metric=name).set_index("metric", append=True))
    return pd.concat(rows).round(2)


RUN_TABLE_METHODS = ("lp", "mlp", "nmtune", "ft")  # the heads whose scores runs.csv lists (not the ablation's)


def run_table(transfer: xr.Dataset, spectrum: xr.Dataset, *, centering: str = "column"):
    """``runs.csv``: one row per run (noise_ratio, seed) with the spectrum metrics of its backbone's features (SVE,
    p₁ under ``centering``; ``*_pretrain`` on the pre-training test split, ``*_id`` and ``*_ood`` averaged over the
    ID and the OOD tasks' frozen test features where the runs hold them) and every head's ID and OOD mean accuracy
    (%) under every protocol, base setting (columns ``<protocol>_<method>_id``, ``…_ood``): what the mechanism
    analysis regresses transfer on, run by run."""
    spec = spectrum.sel(centering=centering)
    if "dataset" in spec.dims:
        spec = spec.isel(dataset=0)
    columns = {f"{m}_pretrain": spec[m] for m in ("sve", "p1")}
    for which, metrics in downstream_spectrum(transfer, centering).items():
        columns.update({f"{m}_{which.lower()}": metrics[m] for m in ("sve", "p1")})
    for protocol in transfer["protocol"].values:
        means = id_ood_means(transfer.sel(setting="base", protocol=protocol)) * 100
        for method in [m for m in means["method"].values if m in RUN_TABLE_METHODS]:
            for which in ("id", "ood"):
                values = means[f"{which}_mean"].sel({"method": method})
                if np.isfinite(values).any():
                    columns[f"{protocol}_{method}_{which}"] = values
    frame = xr.Dataset({k: v.drop_vars([c for c in v.coords if c not in ("noise_ratio", "seed")])
                        for k, v in columns.items()}).to_dataframe().reset_index()
    return frame[["noise_ratio", "seed", *columns]].sort_values(["noise_ratio", "seed"])


# --- one run's tables (notebook 04) -------------------------------------------------------------------------------

MAIN_HEADS = ("lp", "mlp", "nmtune", "ft")  # the heads a run's tables show (the ablation's are shown apart)


def _one_run(transfer: xr.Dataset) -> xr.Dataset:
    """A run's base setting, its one noise ratio and seed, and its main heads."""
    base = transfer.sel(setting="base").isel(noise_ratio=0, seed=0)
    return base.sel({"method": [m for m in base["method"].values if m in MAIN_HEADS]})


def accuracy_table(transfer: xr.Dataset) -> pd.DataFrame:
    """A run's accuracy (%) per protocol and head (rows) and task / test domain (columns; the training domain of an
    OOD task marked ``*``)."""
    acc = _one_run(transfer)["accuracy"].to_dataframe().dropna(subset=["accuracy"]).reset_index()
    acc["column"] = [f"{t} / {d}{' *' if d == tr else ''}"
                     for t, d, tr in zip(acc["task"], acc["test_domain"], acc["train_domain"])]
    return acc.pivot_table(index=["protocol", "method"], columns="column", values="accuracy", sort=False) * 100


def means_by_protocol(transfer: xr.Dataset) -> pd.DataFrame:
    """A run's ID mean, OOD mean and OOD mean with the training domain per protocol and head (fractions)."""
    base = _one_run(transfer)
    rows = []
    for protocol in base["protocol"].values:
        part = base.sel(protocol=protocol)
        m, w = id_ood_means(part), id_ood_means(part, include_train_domain=True)
        rows.append(pd.DataFrame({"protocol": protocol, "ID mean": m["id_mean"].to_series(),
                                  "OOD mean": m["ood_mean"].to_series(),
                                  "OOD mean (with train domain)": w["ood_mean"].to_series()}))
    return pd.concat(rows).set_index("protocol", append=True).swaplevel().dropna(how="all")


def learning_rates(transfer: xr.Dataset) -> pd.DataFrame:
    """A run's learning rate per (protocol, head) and task (the matched protocol's chosen on held-out data)."""
    return _one_run(transfer)["lr"].to_dataframe()["lr"].unstack("task").dropna(how="all")


COST_VARIABLES = ("fit_seconds", "peak_memory_mb", "trained_params")  # transfer.nc: what a head cost


def cost_frame(transfer: xr.Dataset) -> pd.DataFrame:
    """``costs.csv``: every main head's fit time, peak memory and trained parameters per run, protocol and task
    (base setting); a head fitted once for several tasks (one training set) is listed under each."""
    present = [v for v in COST_VARIABLES if v in transfer]
    if not present:
        return pd.DataFrame(columns=["noise_ratio", "seed", "protocol", "method", "task", *COST_VARIABLES])
    base = transfer.sel(setting="base")
    base = base.sel({"method": [m for m in base["method"].values if m in MAIN_HEADS]})
    frame = base[present].to_dataframe().reset_index().dropna(subset=[present[0]])
    return frame[["noise_ratio", "seed", "protocol", "method", "task", *present]]


def run_costs(transfer: xr.Dataset) -> pd.DataFrame:
    """A run's cost per protocol and head, summed over its tasks' distinct fits (seconds) or at most (memory)."""
    frame = cost_frame(transfer)
    if frame.empty:
        return frame
    agg = {"fit_seconds": "sum", "peak_memory_mb": "max", "trained_params": "max"}
    return frame.groupby(["protocol", "method"], sort=False).agg({k: v for k, v in agg.items() if k in frame})


def tuned_spectrum_table(transfer: xr.Dataset) -> pd.DataFrame | None:
    """SVE, p₁ and σ₁ of the tuned features (f for LP, z for MLP and NMTune) per run and head, or None."""
    if "tuned_method" not in transfer.dims:
        return None
    names = [f"tuned_{m}" for m in ("sve", "p1", "sigma1") if f"tuned_{m}" in transfer]
    return transfer[names].mean("seed").to_dataframe().unstack("tuned_method").round(4)
