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
