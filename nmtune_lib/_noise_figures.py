"""Figures of label noise (to be merged into plotting.py): class histograms, transition heatmap, sample grid."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns


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
    """Flipped samples (or any, if none flipped) with their clean and noisy labels."""
    pool = np.flatnonzero(noisy.flipped.numpy()) if bool(noisy.flipped.any()) else np.arange(len(images))
    pick = np.random.default_rng(seed).choice(pool, size=min(count, len(pool)), replace=False)
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
