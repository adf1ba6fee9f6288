"""Memorisation net of the clean network's confusion (nmtune_lib.analysis.memorisation), on the shared smoke sweep."""
import pandas as pd
import pytest
import xarray as xr

from conftest import needs_fmnist
from nmtune_lib.config import StudyConfig
from nmtune_lib.analysis.memorisation import memorisation_frame, memorisation_table
from nmtune_lib.run import Run, Study
from nmtune_lib.study.cli import main


@needs_fmnist
def test_own_share_is_the_histories_memo_noisy_and_excess_is_paired(smoke_sweep, tmp_path, capsys):
    config = StudyConfig.from_preset("smoke", run_root=str(smoke_sweep))
    frame = memorisation_frame(Study(config))
    assert list(frame["noise_ratio"]) == [0.2] and list(frame["seed"]) == [0]  # the clean run is the baseline
    row = frame.iloc[0]
    history = xr.load_dataset(Run.of(config, 0.2, 0).dir / "history.nc").isel(epoch=-1)
    assert row["own"] == pytest.approx(float(history["memo_noisy"]), abs=1e-12)  # what pre-training recorded
    assert 0 <= row["clean_net"] < 0.5 and row["excess"] == pytest.approx(row["own"] - row["clean_net"])
    assert row["scored"] == round(0.2 * config.train_subset)  # every flipped sample (fewer than 4,096)
    assert memorisation_table(frame).splitlines()[2].startswith("| 20% | 1 | ")

    assert main(["memorisation", "--preset", "smoke", "--run-root", str(smoke_sweep), "--out", str(tmp_path)]) == 0
    written = pd.read_csv(tmp_path / "smoke" / "memorisation.csv")
    assert written[["own", "clean_net"]].to_numpy().tolist() == frame[["own", "clean_net"]].to_numpy().tolist()
    assert "excess (memorised)" in capsys.readouterr().out


def test_a_study_without_clean_runs_or_of_clip_is_refused_before_loading_data(tmp_path):
    with pytest.raises(ValueError, match="no finished noisy run with a finished clean"):
        memorisation_frame(Study(StudyConfig.from_preset("smoke", run_root=str(tmp_path))))
    clip = StudyConfig.from_preset("smoke", run_root=str(tmp_path), objective="clip", noise_kind="caption_swap")
    with pytest.raises(ValueError, match="needs objective=supervised, got 'clip'"):
        memorisation_frame(Study(clip))
