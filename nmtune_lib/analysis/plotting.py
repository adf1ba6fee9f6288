"""Seaborn figure builders: each takes results (xarray Datasets) and returns a matplotlib Figure.

Organised by section, one per notebook (01 noise, 03 spectrum, 05 summary): shared helpers first, then one section per
analysis. Functions draw on figures made with ``plt.subplots`` and return them; a notebook shows each once (end the cell
with ``;``), a batch caller closes them with ``plt.close(fig)``. """
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
import xarray as xr

from ..config import ratio_label, ratio_percent
from .aggregate import MAIN_HEADS, id_ood_means, mean_ci

# --- shared helpers --------------------------------------------------------------------------------------------


def select_dataset(ds: xr.Dataset, dataset: str | None = None) -> xr.Dataset:
    """``ds`` at one value of its ``dataset`` dim: ``dataset``, or the only one when None (several → ValueError)."""
    if "dataset" not in ds.dims:
        return ds
    names = [str(n) for n in ds["dataset"].values]
    if dataset is None:
        if len(names) != 1:
            raise ValueError(f"several datasets in the results ({', '.join(names)}): pass dataset=")
        dataset = names[0]
    if dataset not in names:
        raise ValueError(f"dataset {dataset!r} not in the results; present: {', '.join(names)}")
    return ds.sel(dataset=dataset)


def tidy(ds: xr.Dataset, variables: Sequence[str]) -> pd.DataFrame:
    """Long table of ``variables`` with one column per dim coordinate; rows where all are NaN (padding) dropped."""
    return ds[list(variables)].to_dataframe().reset_index().dropna(subset=list(variables), how="all")


def positive(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Rows with ``column`` > 0: exact zeros (rank deficiency) have no place on a log axis."""
    return frame[frame[column] > 0]


def noise_palette(ratios: Sequence[float]) -> tuple[list[str], dict[str, tuple]]:
    """Hue order and a sequential palette for noise ratios shown as labels ``"0.05"``: darker = noisier."""
    order = [ratio_label(r) for r in sorted(set(ratios))]
    return order, dict(zip(order, sns.color_palette("viridis_r", len(order))))


# --- spectrum (notebook 03) ------------------------------------------------------------------------------------

METRIC_LABELS = {"sigma1": "σ₁", "sve": "SVE (nats)", "p1": "p₁ = σ₁ / Σσ", "neg_log_p1": "−log p₁",
                 "top_k_share": "top-k share", "effective_rank": "effective rank exp(SVE)",
                 "participation_ratio": "participation ratio"}


def spectrum_plot(ds: xr.Dataset, *, dataset: str | None = None, centerings: Sequence[str] | None = None,
                  log_x: bool = False) -> plt.Figure:
    """Normalised spectrum p_i = σ_i / Σσ against i (log y; exact zeros left out), one line per centring convention.

    Meant for one run; with several noise ratios or seeds the line is their mean and the band their range.
    """
    sel = select_dataset(ds, dataset)
    if centerings is not None:
        sel = sel.sel(centering=list(centerings))
    frame = positive(tidy(sel, ["normalized_singular_values"]), "normalized_singular_values")
    fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
    sns.lineplot(frame, x="component", y="normalized_singular_values", hue="centering", errorbar=("pi", 100), ax=ax)
    ax.set(yscale="log", xscale="log" if log_x else "linear", xlabel="component i (descending σ)",
           ylabel="p_i = σ_i / Σσ", title=f"normalised spectrum · {_describe(sel)}")
    return fig


def spectra_by_noise(ds: xr.Dataset, *, dataset: str | None = None,
                     centerings: Sequence[str] = ("column", "row"), log_x: bool = False) -> plt.Figure:
    """Normalised spectra per noise ratio (mean over seeds, band = seed range; exact zeros left out), one panel per
    centring."""
    sel = select_dataset(ds, dataset).sel(centering=list(centerings))
    frame = positive(tidy(sel, ["normalized_singular_values"]), "normalized_singular_values")
    order, palette = noise_palette(frame["noise_ratio"])
    frame["noise ratio"] = frame["noise_ratio"].map(ratio_label)
    fig, axes = plt.subplots(1, len(centerings), figsize=(5.5 * len(centerings), 4), layout="constrained",
                             squeeze=False, sharey=True)
    for ax, centering in zip(axes[0], centerings):
        sns.lineplot(frame[frame["centering"] == centering], x="component", y="normalized_singular_values",
                     hue="noise ratio", hue_order=order, palette=palette, errorbar=("pi", 100), ax=ax)
        ax.set(yscale="log", xscale="log" if log_x else "linear", title=f"centering = {centering}",
               xlabel="component i (descending σ)", ylabel="p_i = σ_i / Σσ")
    fig.suptitle(f"normalised spectra by pre-training noise ratio · {_describe(sel, runs=False)}")
    return fig


def metrics_vs_noise(ds: xr.Dataset, *, dataset: str | None = None, metrics: Sequence[str] = ("sve", "p1", "sigma1"),
                     centerings: Sequence[str] = ("column", "row")) -> plt.Figure:
    """Each metric against the noise ratio: mean over seeds (line, band = seed range) and every seed (dots);
    rows = centring conventions, columns = metrics."""
    sel = select_dataset(ds, dataset).sel(centering=list(centerings))
    frame = tidy(sel, list(metrics))
    fig, axes = plt.subplots(len(centerings), len(metrics), figsize=(3.8 * len(metrics), 3.2 * len(centerings)),
                             layout="constrained", squeeze=False, sharex=True)
    for row, centering in zip(axes, centerings):
        part = frame[frame["centering"] == centering]
        for ax, metric in zip(row, metrics):
            sns.lineplot(part, x="noise_ratio", y=metric, errorbar=("pi", 100), marker="o", ax=ax)
            sns.scatterplot(part, x="noise_ratio", y=metric, color="0.3", s=14, alpha=0.7, ax=ax)
            label = METRIC_LABELS.get(metric, metric)
            ax.set(title=f"{label} · {centering} centring", xlabel="pre-training noise ratio", ylabel=label)
    fig.suptitle(f"spectrum metrics vs noise ratio (dots: seeds) · {_describe(sel, runs=False)}")
    return fig


def _describe(ds: xr.Dataset, runs: bool = True) -> str:
    """Short title part: the dataset and, for one run, its noise ratio and seed."""
    parts = [str(ds["dataset"].values)] if "dataset" in ds.coords and ds["dataset"].ndim == 0 else []
    if runs and ds.sizes.get("noise_ratio", 1) == 1 and ds.sizes.get("seed", 1) == 1:
        if "noise_ratio" in ds.coords:
            parts.append(f"noise {ratio_label(float(ds['noise_ratio'].values.ravel()[0]))}")
        if "seed" in ds.coords:
            parts.append(f"seed {int(ds['seed'].values.ravel()[0])}")
    return ", ".join(parts)


# --- label noise (notebook 01) ---------------------------------------------------------------------------------

def class_histograms(noisy, classes) -> plt.Figure:
    """Counts per class of the clean and the noisy labels, side by side."""
    frame = pd.concat([
        pd.DataFrame({"class": [classes[i] for i in noisy.clean.tolist()], "labels": "clean"}),
        pd.DataFrame({"class": [classes[i] for i in noisy.labels.tolist()], "labels": "noisy"}),
    ])
    fig, ax = plt.subplots(figsize=(9, 3.5), layout="constrained")
    sns.countplot(frame, x="class", hue="labels", order=list(classes), ax=ax)
    ax.set(title=f"{noisy.kind} noise, realised ratio {noisy.ratio:.3f}", xlabel="", ylabel="samples")
    ax.tick_params(axis="x", rotation=30)
    return fig


def transition_heatmap(noisy, classes) -> plt.Figure:
    """The realised transition matrix as row-normalised percentages (rows = clean class, columns = noisy class)."""
    counts = noisy.transition
    share = 100 * counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7, 6), layout="constrained")
    sns.heatmap(pd.DataFrame(share, index=classes, columns=classes), annot=True, fmt=".1f", cmap="rocket_r",
                cbar_kws={"label": "% of the clean class"}, ax=ax)
    ax.set(xlabel="noisy label", ylabel="clean label", title="realised transition matrix (row %)")
    return fig


def sample_grid(images, noisy, classes, *, count: int = 16, seed: int = 0) -> plt.Figure:
    """Flipped samples (or any, if none flipped) with their clean and noisy labels. ``images``: uint8 N×C×H×W, or a
    training set (an ``ImageSet``, or a streamed split whose picked images are then read from disk)."""
    pool = np.flatnonzero(noisy.flipped.numpy()) if bool(noisy.flipped.any()) else np.arange(len(noisy.labels))
    pick = np.random.default_rng(seed).choice(pool, size=min(count, len(pool)), replace=False)
    if not isinstance(images, torch.Tensor):
        if images.images is None:  # streamed: decode the picked files only
            decoded = images.decode(torch.as_tensor(pick))
            images = dict(zip(pick.tolist(), decoded))
        else:
            images = images.images
    cols = 8
    rows = int(np.ceil(len(pick) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), layout="constrained", squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, pick):
        ax.imshow(images[i].permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray")
        ax.set_title(f"{classes[int(noisy.clean[i])]}\n→ {classes[int(noisy.labels[i])]}", fontsize=7,
                     color="crimson" if noisy.flipped[i] else "black")
    return fig


# --- summary (notebooks 04, 05) --------------------------------------------------------------------------------

METHOD_ORDER = ["lp", "mlp", "nmtune"]
METHOD_LABELS = {"lp": "LP", "mlp": "MLP", "nmtune": "NMTune"}


def _ci_frame(da: xr.DataArray, by: list[str]) -> pd.DataFrame:
    """Mean and 95% t half-width over seeds for every combination of ``by``."""
    rows = []
    stacked = da.stack(_k=by) if len(by) > 1 else da.rename({by[0]: "_k"})
    for key in stacked["_k"].values:
        mean, half = mean_ci(stacked.sel(_k=key).values)
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), "mean": mean, "half": half})
    return pd.DataFrame(rows)


def _line_with_ci(ax, frame: pd.DataFrame, x: str, hue: str, order, scale: float = 1.0) -> None:
    palette = dict(zip(order, sns.color_palette(n_colors=len(order))))
    for name in order:
        part = frame[frame[hue] == name].sort_values(x)
        if part.empty:
            continue
        label = METHOD_LABELS.get(name, name)
        ax.plot(part[x] * 100, part["mean"] * scale, marker="o", color=palette[name], label=label)
        ax.fill_between(part[x] * 100, (part["mean"] - part["half"].fillna(0)) * scale,
                        (part["mean"] + part["half"].fillna(0)) * scale, color=palette[name], alpha=0.2)


def accuracy_vs_noise(transfer: xr.Dataset) -> plt.Figure:
    """ID mean and OOD mean (without the training domain) vs pre-training noise, mean ± 95% CI over seeds."""
    means = id_ood_means(transfer)
    methods = [m for m in METHOD_ORDER if m in transfer["method"].values]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for ax, which, title in zip(axes, ("id_mean", "ood_mean"), ("in-domain (ID) mean", "out-of-domain (OOD) mean")):
        frame = _ci_frame(means[which].sel({"method": methods}), ["noise_ratio", "method"])
        _line_with_ci(ax, frame, "noise_ratio", "method", methods, scale=100)
        ax.set(xlabel="pre-training label noise (%)", ylabel="accuracy (%)", title=title)
        ax.legend(title="head")
    return fig


def spectrum_vs_accuracy(transfer: xr.Dataset, spectrum: xr.Dataset, *, probe: str = "lp",
                         centering: str = "column", dataset: str | None = None) -> plt.Figure:
    """Per run: SVE vs ID accuracy and p₁ vs OOD accuracy of the linear probe, coloured by noise ratio."""
    means = id_ood_means(transfer).sel({"method": probe})
    spec = select_dataset(spectrum, dataset).sel(centering=centering)
    frame = xr.merge([means, spec[["sve", "p1"]]], join="inner").to_dataframe().reset_index()
    frame["noise"] = frame["noise_ratio"].map(ratio_percent)
    hue = dict(hue="noise", hue_order=[ratio_percent(r) for r in sorted(set(frame["noise_ratio"]))], palette="flare")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    sns.scatterplot(frame, x="sve", y=frame["id_mean"] * 100, **hue, ax=axes[0], s=60)
    axes[0].set(xlabel="singular value entropy", ylabel=f"ID mean accuracy, {probe.upper()} (%)")
    sns.scatterplot(frame, x="p1", y=frame["ood_mean"] * 100, **hue, ax=axes[1], s=60)
    axes[1].set(xlabel="p₁ (largest singular value ratio)", ylabel=f"OOD mean accuracy, {probe.upper()} (%)")
    return fig


def methods_by_task(transfer: xr.Dataset) -> plt.Figure:
    """Accuracy of every method on every (task, test domain), mean over seeds, one panel per noise ratio."""
    methods = [m for m in transfer["method"].values]
    acc = transfer["accuracy"].mean("seed").sel({"method": methods})
    frame = acc.to_dataframe().reset_index().dropna(subset=["accuracy"])
    frame["task / test domain"] = frame["task"] + " / " + frame["test_domain"]
    frame["accuracy (%)"] = frame["accuracy"] * 100
    frame["noise"] = frame["noise_ratio"].map(ratio_percent)
    panels = frame["noise"].nunique()
    # legend inside the panels: outside, a lone narrow panel leaves no room for it (one noise ratio in the grid)
    grid = sns.catplot(frame, kind="bar", x="accuracy (%)", y="task / test domain", hue="method", col="noise",
                       height=4.5, aspect=0.7 if panels > 1 else 1.2, hue_order=methods, orient="h",
                       legend_out=panels > 1)
    return grid.figure


def heads_by_task(transfer: xr.Dataset) -> plt.Figure:
    """One run's main heads on every (task, test domain), one panel per protocol (accuracy, %)."""
    base = transfer.sel(setting="base").isel(noise_ratio=0, seed=0)
    heads = [m for m in base["method"].values if m in MAIN_HEADS]
    frame = base["accuracy"].sel({"method": heads}).to_dataframe().dropna(subset=["accuracy"]).reset_index()
    frame["task / test domain"] = [f"{t} / {d}{' *' if d == tr else ''}" for t, d, tr in
                                   zip(frame["task"], frame["test_domain"], frame["train_domain"])]
    frame["accuracy (%)"] = frame["accuracy"] * 100
    grid = sns.catplot(frame, kind="bar", x="accuracy (%)", y="task / test domain", hue="method", hue_order=heads,
                       col="protocol", height=5, aspect=1.0, orient="h")
    ratio = ratio_percent(float(base["noise_ratio"]))
    grid.figure.suptitle(f"heads on the frozen backbone pre-trained with {ratio} label noise", y=1.02)
    return grid.figure


def empty_figure(text: str) -> plt.Figure:
    """A small figure that says why there is nothing to draw (an empty table's figure)."""
    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=10)
    return fig


def decomposition(decomp: pd.DataFrame) -> plt.Figure:
    """Claim 4 decomposed (``summary.decomposition``): NMTune − LP, MLP − LP and NMTune − MLP in points, mean over
    noise ratios ± 95% CI over seeds, one panel for the ID mean and one for the OOD mean, bars per protocol."""
    terms = ["nmtune-lp", "mlp-lp", "nmtune-mlp"]
    frame = decomp[decomp["noise_ratio"] == "all"]
    protocols = list(dict.fromkeys(frame["protocol"]))
    colours = sns.color_palette(n_colors=len(protocols))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained", sharey=True)
    width = 0.8 / max(1, len(protocols))
    for ax, which in zip(axes, ("ID", "OOD")):
        if not (frame["mean_of"] == which).any():  # a suite without ID (or OOD) tasks
            ax.text(0.5, 0.5, f"no {which} tasks in this suite", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        for i, protocol in enumerate(protocols):
            part = frame[(frame["protocol"] == protocol) & (frame["mean_of"] == which)].set_index("term").loc[terms]
            x = np.arange(len(terms)) + (i - (len(protocols) - 1) / 2) * width
            ax.bar(x, part["mean_points"], width, yerr=part["half_width_points"].fillna(0), capsize=3,
                   color=colours[i], label=protocol)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(np.arange(len(terms)), ["NMTune − LP", "MLP − LP\n(head capacity)", "NMTune − MLP\n(regularisers)"])
        ax.set(title=f"{which} mean, averaged over noise ratios", ylabel="difference (points)")
        ax.legend(title="protocol")
    return fig


def sensitivity(sens: pd.DataFrame) -> plt.Figure:
    """NMTune − MLP (points, mean ± 95% CI over seeds) vs pre-training noise for every regulariser scale, on the
    ablation task's training domain and OOD mean (``summary.sensitivity``)."""
    frame = sens[sens["noise_ratio"] != "slope/10%"].assign(noise=lambda f: f["noise_ratio"].astype(float))
    variants = list(dict.fromkeys(frame["variant"]))
    colours = dict(zip(variants, sns.color_palette("viridis", n_colors=len(variants))))
    metrics = list(dict.fromkeys(frame["metric"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.8), layout="constrained", squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for name in variants:
            part = frame[(frame["metric"] == metric) & (frame["variant"] == name)].sort_values("noise")
            ax.errorbar(part["noise"] * 100, part["mean_points"], yerr=part["half_width_points"].fillna(0),
                        marker="o", capsize=3, color=colours[name], label=name)
        ax.axhline(0, color="black", lw=0.8)
        ax.set(xlabel="pre-training label noise (%)", ylabel="NMTune − MLP (points)", title=metric.replace("_", " "))
    axes[0][-1].legend(title="variant", fontsize="small")
    return fig


def task_effects(effects: pd.DataFrame) -> plt.Figure:
    """Each task's accuracy against clean pre-training of the same seed (``summary.noise_effects(by="task")``):
    points, mean ± 95% CI over seeds vs pre-training noise, a panel per (protocol, ID/OOD) and a line per task,
    on one y scale, so that a task whose interval dwarfs the others' is seen as the one that widens its mean's."""
    if effects.empty:
        raise ValueError("task_effects: no rows; noise_effects(by=\"task\") is empty for a grid without a clean (0 %) "
                         "run, so there is nothing to plot")
    frame = effects.assign(noise=effects["noise_ratio"].astype(float) * 100)
    protocols, kinds = list(dict.fromkeys(frame["protocol"])), list(dict.fromkeys(frame["mean_of"]))
    tasks = list(dict.fromkeys(frame["task"]))
    colours = dict(zip(tasks, sns.color_palette(n_colors=len(tasks))))
    fig, axes = plt.subplots(len(protocols), len(kinds), figsize=(4.5 * len(kinds), 2.8 * len(protocols)),
                             layout="constrained", squeeze=False, sharex=True, sharey=True)
    step = np.diff(sorted(set(frame["noise"]))).min(initial=10) * 0.08  # side by side, not on top of each other
    for row, protocol in zip(axes, protocols):
        for ax, kind in zip(row, kinds):
            part = frame[(frame["protocol"] == protocol) & (frame["mean_of"] == kind)]
            names = list(dict.fromkeys(part["task"]))
            for i, name in enumerate(names):
                line = part[part["task"] == name].sort_values("noise")
                ax.errorbar(line["noise"] + (i - (len(names) - 1) / 2) * step, line["mean_points"],
                            yerr=line["half_width_points"].fillna(0), marker="o", ms=4, capsize=2,
                            color=colours[name], label=name)
            ax.axhline(0, color="black", lw=0.8)
            ax.set(title=f"{protocol}: {kind} tasks", xlabel="pre-training label noise (%)",
                   ylabel="noisy − clean (points)")
            ax.legend(fontsize="x-small")
            ax.label_outer()  # the x label once under each column, the y label once beside each row
    return fig
