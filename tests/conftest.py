"""Shared fixtures: data availability, a papermill runner for the notebooks."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nmtune_lib.data import fashion_mnist_search_path  # noqa: E402

FMNIST_PRESENT = any((p / "train-images-idx3-ubyte.gz").is_file() for p in fashion_mnist_search_path())
needs_fmnist = pytest.mark.skipif(
    not FMNIST_PRESENT,
    reason="Fashion-MNIST idx files absent (searched $NMTUNE_DATA and /usr/share/datasets/fashion-mnist); "
           "install Debian's dataset-fashion-mnist (make data does it as root)")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Single-threaded torch for a test module: its ops are tiny, and on a shared 2-core machine OpenMP threads that
    wait on each other make them tens of times slower. The caller's setting is restored."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def run_notebook(name: str, out_dir: Path, *, cwd: Path = ROOT, **parameters):
    """Execute notebooks/<name>.ipynb with papermill (kernel python3 from this venv, started in ``cwd``) and return
    the output path."""
    import papermill as pm

    os.environ["JUPYTER_PATH"] = str(Path(sys.prefix) / "share" / "jupyter")  # the venv's kernelspec first
    out = out_dir / f"{name}.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"), str(out), parameters=parameters,
                        kernel_name="python3", cwd=str(cwd), progress_bar=False)
    return out
