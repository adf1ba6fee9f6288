"""Tests of the learning curve (nmtune_lib.pretraining.learning_curve, ``nmtune learning-curve``): one pre-training run per
schedule length and noise ratio, through the real pre-training CLI, collected into a CSV and a figure."""
from __future__ import annotations

import subprocess

import pandas as pd
import pytest

from conftest import NMTUNE, ROOT
from nmtune_lib.config import StudyConfig
from nmtune_lib.pretraining.learning_curve import curve_runs


def test_learning_curve_runs_every_schedule_and_resumes(tmp_path):
    command = [*NMTUNE, "learning-curve", "--preset", "smoke", "--epochs", "2", "1", "--noise-ratios", "0", "0.3",
               "--jobs", "2", "--run-root", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    frame = pd.read_csv(tmp_path / "out" / "learning_curve.csv")
    assert (tmp_path / "out" / "learning_curve.png").stat().st_size > 10_000
    # one row per epoch of every (schedule, ratio) run: 1 + 2 epochs at each of the two ratios
    assert sorted(frame.groupby(["schedule_epochs", "noise_ratio"]).size().items()) == [
        ((1, 0.0), 1), ((1, 0.3), 1), ((2, 0.0), 2), ((2, 0.3), 2)]
    assert frame.loc[frame["noise_ratio"] == 0, "memo_noisy"].isna().all()  # nothing flipped, nothing to memorise
    noisy = frame[frame["noise_ratio"] > 0]
    assert noisy["memo_noisy"].between(0, 1).all() and (noisy["test_acc"] > 0.2).all()  # chance 0.1
    checkpoint = next((tmp_path / "runs" / "epochs-002").rglob("checkpoint.pt"))
    before = checkpoint.stat().st_mtime_ns
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and checkpoint.stat().st_mtime_ns == before  # finished runs are not retrained
    assert pd.read_csv(tmp_path / "out" / "learning_curve.csv").equals(frame)


def test_schedule_lengths_are_checked_before_anything_runs(tmp_path):
    config = StudyConfig.from_preset("smoke", run_root=str(tmp_path))
    runs = curve_runs(config, [5, 2, 5], [0.0, 0.3], seed=1)
    assert [(r.config.epochs, r.noise_ratio, r.seed) for r in runs] == [(2, 0.0, 1), (2, 0.3, 1), (5, 0.0, 1),
                                                                          (5, 0.3, 1)]
    assert runs[0].dir != runs[2].dir  # one run root per schedule length
    for bad in ([], [0], [2.5]):
        with pytest.raises(ValueError, match="schedule lengths"):
            curve_runs(config, bad, [0.0], seed=0)
