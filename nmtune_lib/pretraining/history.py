"""The per-epoch history of a pre-training run: its table, ``history.nc`` (with provenance), learning curves.

One row per epoch, columns ``HISTORY_FIELDS``: ``train_loss`` (mean cross-entropy on the noisy labels, augmented
batches), ``train_acc_noisy`` (noisy-label fit), ``test_acc`` (clean test accuracy), ``memo_noisy`` / ``memo_clean``
(flipped training samples, un-augmented, predicted as their noisy / clean label; NaN when nothing was flipped),
``lr``, ``seconds`` since the run started and ``images_per_s``.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from ..results import load_dataset, provenance_attrs
from ..run import HISTORY_NC, Run

HISTORY_FIELDS = ("epoch", "train_loss", "train_acc_noisy", "test_acc", "memo_noisy", "memo_clean", "lr", "seconds",
                  "images_per_s")
DESCRIPTIONS = dict(
    train_loss="mean cross-entropy on the noisy training labels (augmented batches)",
    train_acc_noisy="fraction of augmented training predictions equal to the noisy label (noisy-label fit)",
    test_acc="accuracy on the clean test split", lr="learning rate after the epoch's last step",
    memo_noisy="flipped training samples (un-augmented) predicted as their noisy label",
    memo_clean="flipped training samples (un-augmented) predicted as their clean label",
    seconds="wall-clock seconds since the run started (evaluation included)",
    images_per_s="training images per second in this epoch",
    zero_shot_acc="objective=clip: zero-shot accuracy on the clean test split (class prompts over templates)",
    retrieval_r1="objective=clip: image→text recall@1 over the clean test captions")
CLIP_DESCRIPTIONS = dict(  # what memo_* mean in a CLIP run (clip.caption_memorisation)
    memo_noisy="objective=clip: swapped training images (un-augmented) closer to their swapped caption than to their "
               "own (pairs with identical texts left out)",
    memo_clean="objective=clip: swapped training images (un-augmented) closer to their own caption than to their "
               "swapped one (pairs with identical texts left out)")
CLIP_FIELDS = ("zero_shot_acc", "retrieval_r1")  # only in the history of a CLIP run (clip.HISTORY_EXTRA)


def is_clip(columns) -> bool:
    """Whether a history (its rows' keys, a DataFrame's or a Dataset's names) is a CLIP run's: it has CLIP_FIELDS."""
    return CLIP_FIELDS[0] in columns


def history_frame(history: list[dict[str, Any]]):
    """The per-epoch history as a pandas DataFrame (one row per epoch, columns ``HISTORY_FIELDS``)."""
    import pandas as pd

    columns = list(HISTORY_FIELDS) + [k for k in CLIP_FIELDS if history and k in history[0]]
    frame = pd.DataFrame(history, columns=columns)
    return frame if len(frame) else frame.astype({"epoch": "int64"} | {k: "float64" for k in columns[1:]})


def history_dataset(history: list[dict[str, Any]], summary: dict[str, Any] | None = None):
    """The history as an xarray Dataset over ``epoch``, each variable with a ``description``.

    With the run's ``summary`` (the dict written to ``pretrain.json``), the Dataset carries the provenance attributes
    of every result (``results.provenance_attrs``: config JSON, checkpoint and manifest hashes, package versions,
    creation time) and the run's own: ``run_key`` (JSON), ``seed``, ``noise_ratio``, ``noise_kind``, ``device`` and
    ``memo_samples`` (the size of the scored subset of flipped samples, from the run key's recipe).
    """
    import xarray as xr

    ds = xr.Dataset.from_dataframe(history_frame(history).set_index("epoch"))
    for name, text in (DESCRIPTIONS | (CLIP_DESCRIPTIONS if is_clip(ds) else {})).items():
        if name in ds:
            ds[name].attrs["description"] = text
    if summary is not None:
        ds.attrs.update(provenance_attrs(summary["config"], checkpoint_sha256=summary["checkpoint_sha256"],
                                         manifest_sha256=summary["manifest_sha256"]))
        ds.attrs.update(run_key=json.dumps(summary["run_key"]), seed=int(summary["seed"]),
                        noise_ratio=float(summary["noise_ratio"]), noise_kind=summary["noise_kind"],
                        device=summary["device"], memo_samples=int(summary["run_key"]["recipe"]["memo_samples"]))
    return ds


def load_history(run_or_dir: Run | str | os.PathLike):
    """``history.nc`` of a run (a ``Run`` or its directory) as an in-memory xarray Dataset, checked against its
    schema (``results.SCHEMAS["history"]``)."""
    run_dir = run_or_dir.dir if isinstance(run_or_dir, Run) else Path(run_or_dir)
    return load_dataset(run_dir / HISTORY_NC, kind="history")


def plot_history(history):
    """Learning curves (seaborn): clean test accuracy, noisy-label fit and memorisation of flipped samples per epoch
    (for a CLIP run: zero-shot accuracy, in-batch matching and the memorisation of swapped captions).

    ``history``: a list of per-epoch dicts, a DataFrame of ``HISTORY_FIELDS``, or the Dataset of ``history.nc``.
    Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    if isinstance(history, list):
        frame = history_frame(history)
    elif isinstance(history, pd.DataFrame):
        frame = history
    else:
        frame = history.to_dataframe().reset_index()
    long = frame.melt(id_vars="epoch", value_vars=["test_acc", "train_acc_noisy", "memo_noisy", "memo_clean"],
                      var_name="curve", value_name="fraction")
    if is_clip(frame):  # captions, not labels (clip.caption_memorisation)
        names = {"test_acc": "zero-shot accuracy (clean test)", "train_acc_noisy": "in-batch image→caption top-1",
                 "memo_noisy": "swapped: closer to the swapped caption",
                 "memo_clean": "swapped: closer to its own caption"}
        memo_panel, loss_title, loss_label = "memorisation of swapped captions", "training loss", "InfoNCE"
    else:
        names = {"test_acc": "clean test accuracy", "train_acc_noisy": "fit of noisy training labels",
                 "memo_noisy": "flipped: predicted noisy label", "memo_clean": "flipped: predicted clean label"}
        memo_panel, loss_title, loss_label = ("memorisation of flipped labels", "training loss on noisy labels",
                                              "cross-entropy")
    long["panel"] = long["curve"].map(lambda c: memo_panel if c.startswith("memo") else "accuracy")
    long["curve"] = long["curve"].map(names)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    for ax, panel in zip(axes[:2], ("accuracy", memo_panel)):
        sns.lineplot(long[long["panel"] == panel], x="epoch", y="fraction", hue="curve", marker="o", ax=ax)
        ax.set(title=panel, ylim=(0, 1), xlabel="epoch")
        ax.legend(fontsize=8, title=None)
    sns.lineplot(frame, x="epoch", y="train_loss", marker="o", ax=axes[2])
    axes[2].set(title=loss_title, ylabel=loss_label)
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def say(config, text: str) -> None:
    """One printed line; with progress bars on, printed through tqdm so that bars are not broken."""
    if config.progress:
        from tqdm.auto import tqdm

        tqdm.write(text, file=sys.stdout)
    else:
        print(text, flush=True)
