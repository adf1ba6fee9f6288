"""Shared fixtures: data availability, a papermill runner for the notebooks, the smoke sweep of the test session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nmtune_lib.data.datasets import fashion_mnist_search_path  # noqa: E402
from nmtune_lib.study.chains import execute_notebook  # noqa: E402

FMNIST_PRESENT = any((p / "train-images-idx3-ubyte.gz").is_file() for p in fashion_mnist_search_path())
needs_fmnist = pytest.mark.skipif(
    not FMNIST_PRESENT,
    reason="Fashion-MNIST idx files absent (searched $NMTUNE_DATA and /usr/share/datasets/fashion-mnist); "
           "install Debian's dataset-fashion-mnist (make data does it as root)")


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs two workers), pin each worker to its own share of the cores; the sweeps,
    kernels and other subprocesses it starts inherit the mask, and their thread counts follow it
    (``cores.usable_cores``). Unpinned, a worker's 2-thread torch beside the other busy worker waits on its own
    OpenMP threads: a smoke pre-training step took 57 ms so, against 24 ms on one thread and 15 ms on two idle cores."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker or not hasattr(os, "sched_setaffinity"):
        return
    import torch

    cores = sorted(os.sched_getaffinity(0))
    index, count = int(worker.removeprefix("gw")), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    share = cores[index::count] or [cores[index % len(cores)]]  # more workers than cores: they share them in turn
    os.sched_setaffinity(0, share)
    torch.set_num_threads(len(share))  # torch sized its pool when it was imported, before the pinning


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
    """Execute notebooks/<name>.ipynb with papermill as the sweep does (``sweep.execute_notebook``: kernel python3
    from this venv, started in ``cwd``) and return the output path."""
    os.environ["JUPYTER_PATH"] = str(Path(sys.prefix) / "share" / "jupyter")  # the venv's kernelspec first
    out = out_dir / f"{name}.ipynb"
    execute_notebook(name, out, parameters, cwd=cwd)
    return out


NMTUNE = [sys.executable, "-m", "nmtune_lib.study.cli"]
SMOKE_RUNS = ("symmetric-0.00/seed0", "symmetric-0.20/seed0")  # the smoke grid's run folders


def nmtune_sweep(run_root: Path, *extra: str, **kwargs) -> subprocess.CompletedProcess:
    """``nmtune sweep --preset smoke --run-root RUN_ROOT EXTRA…`` in a subprocess (output captured)."""
    return subprocess.run([*NMTUNE, "sweep", "--preset", "smoke", "--run-root", str(run_root), *extra], cwd=ROOT,
                          capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory):
    """The run root of one complete smoke sweep (notebooks 01-05), shared by the test session: read it, or copy it
    before changing anything in it. Under pytest-xdist (``make test`` runs two workers) the workers share one: the
    first to ask runs it, the others wait for it."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # xdist: <session>/popen-gwN
    root = shared / "smoke-sweep"
    with FileLock(str(shared / "smoke-sweep.lock")):
        if not (root / "smoke" / "05_summary.done").exists():
            result = nmtune_sweep(root, timeout=900)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root


FOLDER_CLASSES = ("0_tshirt", "1_trouser", "2_pullover")


@pytest.fixture(scope="session")
def folder_data_root(tmp_path_factory):
    """ImageNet-, DomainNet-, EuroSAT- and RESISC45-style folders of real images (Fashion-MNIST test images of three
    classes as PNG files; the DomainNet domains are the default suite's renderings of them)."""
    from PIL import Image

    from nmtune_lib.data.datasets import load_dataset
    from nmtune_lib.transfer.tasks import render_domain

    def write(folder, images):
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            Image.fromarray(image[0].numpy()).save(folder / f"{i:04d}.png")

    root = tmp_path_factory.mktemp("data")
    test = load_dataset("fashion_mnist", "test")
    for c, name in enumerate(FOLDER_CLASSES):
        images = test.images[test.labels == c][:140]
        write(root / "imagenet" / "train" / name, images[:80])
        write(root / "imagenet" / "val" / name, images[80:100])
        for domain in ("real", "sketch", "painting", "clipart"):
            write(root / "domainnet" / domain / name, render_domain(images[100:140], domain))
        for folder in ("eurosat/2750", "resisc45"):  # two of the paper's ID datasets with seeded 80/20 splits
            write(root / folder / name, images[:20])
    return root
