"""The run object: one (noise ratio, seed) of a study, its directory and artefact paths, built from notebook
parameters in one call; the study's grid and the summary's inputs."""
from pathlib import Path

import pytest

from nmtune_lib.config import StudyConfig, ratio_label, ratio_percent
from nmtune_lib.run import Run, Study


def test_run_directory_layout_and_artefact_paths():
    run = Run.of(StudyConfig.from_preset("smoke", run_root="/tmp/r"), 0.05, 2)
    assert run.dir == Path("/tmp/r/smoke/fashion_mnist/symmetric-0.05/seed2")
    assert (run.noise_ratio, run.seed) == (0.05, 2)
    assert run.config.noise_ratios == (0.05,) and run.config.seeds == (2,)
    assert run.checkpoint == run.dir / "checkpoint.pt" and run.transfer == run.dir / "transfer.nc"
    assert run.result("spectrum") == run.spectrum and run.notebook("02_pretrain") == run.dir / "02_pretrain.ipynb"
    assert run.study.dir == Path("/tmp/r/smoke")
    with pytest.raises(ValueError, match="unknown result kind 'spectra'; accepted: spectrum, transfer, history"):
        run.result("spectra")


def test_a_run_needs_one_ratio_and_one_seed():
    with pytest.raises(ValueError, match=r"one noise ratio and one seed, got noise_ratios=\[0.0, 0.2\]"):
        Run(StudyConfig.from_preset("smoke"))


def test_parse_inverts_the_directory_name():
    config = StudyConfig.from_preset("smoke", run_root="/tmp/r")
    for run in Study(config).runs():
        assert Run.parse(config, run.dir) == run
    assert Run.parse(config, "/tmp/r/smoke/fashion_mnist/asymmetric-0.20/seed0") is None  # another noise kind
    assert Run.parse(config, "/elsewhere/smoke/fashion_mnist/symmetric-0.20/seed0") is None  # another root


def test_ratios_finer_than_a_percent_keep_their_own_folders_and_labels():
    # the fine grid's 2.5 % and a 3 % run must not share symmetric-0.03/ (two decimals used to round them together)
    assert [ratio_label(r) for r in (0.0, 0.025, 0.03, 0.1, 0.15)] == ["0.00", "0.025", "0.03", "0.10", "0.15"]
    assert [ratio_percent(r) for r in (0.0, 0.025, 0.075, 0.1, 0.15)] == ["0%", "2.5%", "7.5%", "10%", "15%"]
    config = StudyConfig.from_preset("smoke", run_root="/tmp/r", noise_ratios=(0.0, 0.025, 0.03, 0.075))
    runs = list(Study(config).runs())
    assert len({run.dir for run in runs}) == 4 and len({run.name for run in runs}) == 4
    assert [Run.parse(config, run.dir) for run in runs] == runs
    assert runs[1].dir.parent.name == "symmetric-0.025" and runs[1].name == "symmetric 2.5%, seed 0"
    with pytest.raises(ValueError, match=r"noise_ratios=\(0.1, 0.1000000001\): expected fractions with at most 6 d"):
        StudyConfig.from_preset("smoke", noise_ratios=(0.1, 0.1000000001))
    with pytest.raises(ValueError, match=r"noise_ratios=\(0.1, 0.1\): expected distinct ratios"):
        StudyConfig.from_preset("smoke", noise_ratios=(0.1, 0.1))


def test_from_parameters_validates_once_and_refuses_a_field_given_twice():
    run = Run.from_parameters("smoke", noise_ratio="0.2", seed="3", overrides='{"epochs": 1}', device=None)
    assert (run.noise_ratio, run.seed, run.config.epochs, run.config.device) == (0.2, 3, 1, "auto")
    with pytest.raises(ValueError, match="epochs given both as notebook parameter"):
        Run.from_parameters("smoke", noise_ratio=0.2, seed=0, overrides='{"epochs": 1}', epochs=2)
    with pytest.raises(ValueError, match="is not valid JSON"):
        Run.from_parameters("smoke", noise_ratio=0.2, seed=0, overrides="{epochs: 1}")
    with pytest.raises(ValueError, match="expected a JSON object"):
        Run.from_parameters("smoke", noise_ratio=0.2, seed=0, overrides="[1]")
    with pytest.raises(ValueError, match="noise_ratios"):
        Run.from_parameters("smoke", noise_ratio=1.5, seed=0)


def test_a_study_reads_only_its_grid_and_names_missing_runs(tmp_path):
    config = StudyConfig.from_preset("smoke", run_root=str(tmp_path), noise_ratios=[0.0, 0.2, 0.3], seeds=[0])
    study = Study(config)
    for run in study.runs()[:2]:
        run.dir.mkdir(parents=True)
        run.spectrum.write_text("x")
    outside = Run.of(config, 0.1, 5)  # a run of the same preset outside the grid
    outside.dir.mkdir(parents=True)
    outside.spectrum.write_text("x")
    with pytest.raises(FileNotFoundError, match=r"1 of 3 run\(s\) of the grid lack spectrum.nc: .*symmetric-0.30"):
        study.result_paths("spectrum")
    small = Study(config.replace(noise_ratios=(0.0, 0.2)))
    assert small.result_paths("spectrum") == [r.spectrum for r in small.runs()]
    assert {(r.noise_ratio, r.seed) for r in study.finished_runs("spectrum")} == {(0.0, 0), (0.2, 0), (0.1, 5)}


def test_a_result_changed_after_its_notebook_finished_is_refused(tmp_path):
    import json

    from nmtune_lib.files import file_sha256

    study = Study(StudyConfig.from_preset("smoke", run_root=str(tmp_path), noise_ratios=[0.2], seeds=[0]))
    (run,) = study.runs()
    run.dir.mkdir(parents=True)
    run.transfer.write_text("as written")
    marker = run.dir / "04_transfer.done"
    marker.write_text(json.dumps({"outputs": {"transfer.nc": file_sha256(run.transfer)}}))
    assert study.result_paths("transfer") == [run.transfer]
    run.transfer.write_text("as written, then changed")
    with pytest.raises(ValueError, match=f"{run.transfer} is not the file 04_transfer wrote"):
        study.result_paths("transfer")
    marker.unlink()  # a notebook run by hand leaves no marker: nothing to check against
    assert study.result_paths("transfer") == [run.transfer]
