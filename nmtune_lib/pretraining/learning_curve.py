"""The learning curve that chooses a pre-training schedule: clean test accuracy and memorisation of the flipped
labels against the schedule's length, at a clean and a noisy ratio, one seed.

The pre-training schedule is one-cycle (warm-up, then a linear decay to 0 at the last epoch: ``recipe.one_cycle``),
so a run of E epochs is not the first E epochs of a longer one: every length is its own run, and the curve's points
are the ends of whole schedules. Each run also keeps its per-epoch history.

``nmtune learning-curve`` runs them through the pre-training CLI (``python -m nmtune_lib.pretraining.pretrain``: noise
injection, checkpoints and resume as in a sweep; finished runs are skipped), ``--jobs`` at a time with the cores shared,
and writes ``learning_curve.csv`` (every epoch of every run) and ``learning_curve.png`` to ``--out``. """
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from ..config import ratio_label, ratio_percent
from ..cores import usable_cores
from ..files import atomic_target, atomic_write_text
from ..run import Run
from .history import load_history

COLUMNS = ("schedule_epochs", "noise_ratio", "seed", "epoch", "test_acc", "memo_noisy", "memo_clean",
           "train_acc_noisy", "seconds")


def curve_runs(config, schedules: Sequence[int], noise_ratios: Sequence[float], seed: int) -> list[Run]:
    """One run per (schedule length, noise ratio): ``config`` with that many ``epochs``, each length under its own
    run root ``<run_root>/epochs-<E>`` (a run directory is keyed by ratio and seed, not by schedule)."""
    bad = [e for e in schedules if not isinstance(e, int) or e < 1]
    if bad or not schedules:
        raise ValueError(f"schedule lengths {list(schedules)!r}; accepted: one or more integers >= 1 (epochs)")
    root = Path(config.run_root)
    return [Run(config.replace(epochs=e, noise_ratios=(float(r),), seeds=(seed,),
                               run_root=str(root / f"epochs-{e:03d}")))
            for e in sorted(set(schedules)) for r in noise_ratios]


def pretrain_all(runs: Sequence[Run], *, jobs: int = 1, log=print) -> None:
    """Pre-train every run (noise injection included) through ``python -m nmtune_lib.pretraining.pretrain``, ``jobs`` at
    once, each with ``cores // jobs`` threads; a finished run returns at once. A failed run is named with its log
    file."""
    from tqdm.auto import tqdm

    threads = max(1, usable_cores() // jobs)

    def one(run: Run) -> None:
        c = run.config
        command = [sys.executable, "-m", "nmtune_lib.pretraining.pretrain", "--preset", c.preset, "--noise-ratio",
                   str(run.noise_ratio), "--seed", str(run.seed), "--run-root", c.run_root, "--no-progress",
                   "--set", *(f"{k}={v}" for k, v in c.pretrain_key().items()), f"device={c.device}"]
        env = {**os.environ, "NMTUNE_NUM_THREADS": str(threads)}
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        logfile = Path(c.run_root) / f"pretrain-{ratio_label(run.noise_ratio)}-seed{run.seed}.log"
        logfile.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(logfile, done.stdout + done.stderr)
        if done.returncode:
            raise RuntimeError(f"pre-training {c.epochs} epochs at noise {run.noise_ratio} failed "
                               f"(exit {done.returncode}); see {logfile}")

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for _ in tqdm(pool.map(one, runs), total=len(runs), desc="learning curve", disable=log is None):
            pass


def learning_curve_frame(runs: Sequence[Run]):
    """Every epoch of every run as one DataFrame (``COLUMNS``), ordered by schedule, noise ratio and epoch."""
    import pandas as pd

    rows = []
    for run in runs:
        frame = load_history(run).to_dataframe().reset_index()
        frame = frame.assign(schedule_epochs=run.config.epochs, noise_ratio=run.noise_ratio, seed=run.seed)
        rows.append(frame[list(COLUMNS)])
    return pd.concat(rows).sort_values(["schedule_epochs", "noise_ratio", "epoch"]).reset_index(drop=True)


def plot_learning_curve(frame):
    """Three panels (seaborn): clean test accuracy and memorisation at the end of each schedule against its length,
    and the per-epoch curves of the longest schedule. Returns the matplotlib Figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    ends = frame[frame["epoch"] == frame["schedule_epochs"]].copy()
    ends["noise"] = ends["noise_ratio"].map(ratio_percent)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), constrained_layout=True)
    sns.lineplot(ends, x="schedule_epochs", y="test_acc", hue="noise", marker="o", ax=axes[0])
    axes[0].set(title="clean test accuracy at the end of the schedule", xlabel="pre-training epochs (schedule)",
                ylabel="accuracy", xscale="log")
    noisy = ends[ends["noise_ratio"] > 0].melt(id_vars=["schedule_epochs", "noise"],
                                              value_vars=["memo_noisy", "memo_clean"], var_name="predicted",
                                              value_name="fraction")
    noisy["predicted"] = noisy["predicted"].map({"memo_noisy": "its flipped label", "memo_clean": "its clean label"})
    sns.lineplot(noisy, x="schedule_epochs", y="fraction", hue="predicted", marker="o", ax=axes[1])
    axes[1].set(title="flipped training samples predicted as …", xlabel="pre-training epochs (schedule)",
                ylim=(0, 1), xscale="log")
    schedules = sorted(int(e) for e in ends["schedule_epochs"].unique())
    for ax in axes[:2]:  # the schedule lengths themselves as ticks, not powers of ten
        ax.set_xticks(schedules, [str(e) for e in schedules])
        ax.xaxis.set_minor_locator(plt.NullLocator())
    longest = frame[frame["schedule_epochs"] == frame["schedule_epochs"].max()].copy()
    longest["noise"] = longest["noise_ratio"].map(ratio_percent)
    long = longest.melt(id_vars=["epoch", "noise"], value_vars=["test_acc", "memo_noisy"], var_name="curve",
                        value_name="fraction")
    sns.lineplot(long, x="epoch", y="fraction", hue="noise", style="curve", marker=".", ax=axes[2])
    axes[2].set(title=f"per epoch, {int(frame['schedule_epochs'].max())}-epoch schedule", ylim=(0, 1))
    for ax in axes:
        ax.legend(fontsize=8)
    return fig


def learning_curve(config, schedules: Sequence[int], noise_ratios: Sequence[float], seed: int, out: Path, *,
                   jobs: int = 1) -> Path:
    """Run (or resume) every schedule and write ``learning_curve.csv`` and ``learning_curve.png`` to ``out``;
    returns the CSV's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = curve_runs(config, schedules, noise_ratios, seed)
    pretrain_all(runs, jobs=jobs)
    frame = learning_curve_frame(runs)
    atomic_write_text(out / "learning_curve.csv", frame.to_csv(index=False, float_format="%.6g"))
    fig = plot_learning_curve(frame)
    with atomic_target(out / "learning_curve.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out / "learning_curve.csv"
