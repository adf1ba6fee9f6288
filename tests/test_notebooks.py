"""Notebooks: committed clean (no outputs, cell ids, one tagged parameters cell first); notebook 01 under papermill."""
import json
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT, needs_fmnist, run_notebook

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_the_five_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == ["01_noise_injection", "02_pretrain", "03_spectrum", "04_transfer",
                                           "05_summary"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs_with_ids_and_a_parameters_cell(path):
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    assert (nb.nbformat, nb.nbformat_minor) >= (4, 5) and all("id" in c for c in nb.cells)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert tagged == [code[0]], "the first code cell, and only it, is tagged 'parameters'"
    for line in code[0].source.splitlines():
        assert "#" in line, f"parameter line without a help comment: {line!r}"


@needs_fmnist
def test_notebook_01_writes_a_manifest_with_the_exact_ratio(tmp_path):
    run_notebook("01_noise_injection", tmp_path, preset="smoke", noise_ratio=0.2, seed=1, run_root=str(tmp_path))
    manifest = json.loads(next(Path(tmp_path).glob("smoke/**/noise_manifest.json")).read_text())
    assert manifest["realised_ratio"] == 0.2 and manifest["num_flipped"] == 400 and manifest["seed"] == 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_parameter_is_declared_once_with_a_type_and_checked_next(path):
    from nmtune_lib.parameters import declared_parameters

    nb = nbformat.read(str(path), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    declared = declared_parameters(path)
    assert len(declared) == len(code[0].source.splitlines())  # papermill parsed every line
    assert all(p["inferred_type_name"] not in ("None", "") for p in declared.values())  # typed for --help-notebook
    assert f'from_notebook(globals(), "{path.stem}")' in code[1].source  # the strict check comes next


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_parameters_cell_is_the_librarys_description_of_the_parameters_it_uses(path):
    """One description per parameter, in nmtune_lib.parameters: a cell that words one otherwise, orders them
    otherwise or declares one the library does not describe fails."""
    from nmtune_lib.parameters import PARAMETERS, parameters_cell

    cell = [c for c in nbformat.read(str(path), as_version=4).cells if c.cell_type == "code"][0].source
    names = [line.split(":")[0] for line in cell.splitlines()]
    assert set(names) <= set(PARAMETERS), sorted(set(names) - set(PARAMETERS))
    assert cell == parameters_cell(names)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_notebook_is_parameters_and_calls(path):
    """After the parameters cell one preamble cell of at most five lines of code (the run or study from the
    parameters), then the analysis cells; and no file written under a literal name: the library owns every name."""
    import re

    cells = nbformat.read(str(path), as_version=4).cells
    code_cells = [c for c in cells if c.cell_type == "code"]
    preamble = [line for line in code_cells[1].source.splitlines() if line.strip()]
    assert len(preamble) <= 5 and "from_notebook(globals()" in code_cells[1].source, preamble
    code = "\n".join(c.source for c in cells if c.cell_type == "code")
    literals = re.findall(r"[\"'][\w./-]+\.(?:csv|json|png|nc|yaml|pt|npy)[\"']", code)
    assert not literals, f"{path.stem} names files itself: {literals}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_config_field_left_at_its_notebook_default_can_come_from_overrides(path):
    """``nmtune sweep --set device=cuda`` sends the field in ``overrides`` and leaves the notebook's own ``device``
    parameter at its default; a non-empty default (it was "auto") made every run fail with "given both"."""
    import ast

    from nmtune_lib.config import StudyConfig
    from nmtune_lib.parameters import declared_parameters
    from nmtune_lib.run import config_from_parameters
    from nmtune_lib.study.sweep import MANAGED

    fields = set(StudyConfig.__dataclass_fields__) - set(MANAGED)  # those the sweep sets refuse --set up front
    declared = {name: ast.literal_eval(p["default"]) for name, p in declared_parameters(path).items() if name in fields}
    samples = {"device": "cpu"}
    for name, default in declared.items():
        assert default in ("", None), f"{path.stem}: {name} defaults to {default!r}, which hides --set {name}=…"
        config = config_from_parameters("smoke", {name: samples[name]}, **declared)
        assert getattr(config, name) == samples[name]


def test_check_parameters_names_the_unknown_and_the_mistyped():
    from nmtune_lib.parameters import check_parameters

    good = dict(preset="smoke", dataset="fashion_mnist", noise_ratio=0, noise_kind="symmetric", seed=1, run_root="",
                overrides="{}", In=[], get_ipython=None, _i1="")
    assert check_parameters(good, "01_noise_injection")["noise_ratio"] == 0
    with pytest.raises(ValueError, match=r"'noise_ration' \(did you mean 'noise_ratio'\?\); this notebook takes: "):
        check_parameters({**good, "noise_ration": 0.2}, "01_noise_injection")
    with pytest.raises(ValueError, match="seed='1': expected int"):
        check_parameters({**good, "seed": "1"}, "01_noise_injection")
    with pytest.raises(ValueError, match="seed=True: expected int"):
        check_parameters({**good, "seed": True}, "01_noise_injection")


@needs_fmnist
def test_a_mistyped_papermill_parameter_fails_before_anything_is_written(tmp_path):
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError, match="noise_ration"):
        run_notebook("01_noise_injection", tmp_path, preset="smoke", noise_ration=0.2, run_root=str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()


@needs_fmnist
def test_notebooks_write_under_the_projects_runs_whatever_the_working_directory(tmp_path, monkeypatch):
    import shutil

    monkeypatch.delenv("NMTUNE_RUNS", raising=False)
    run_dir = ROOT / "runs" / "smoke" / "fashion_mnist" / "symmetric-0.20" / "seed917"
    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        run_notebook("01_noise_injection", tmp_path, cwd=ROOT / "notebooks", preset="smoke", noise_ratio=0.2,
                     seed=917)
        assert (run_dir / "noise_manifest.json").is_file()
        assert not (ROOT / "notebooks" / "runs").exists()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
