"""Sweeps on the real one-node Slurm cluster that ``make slurm`` (slurm/cluster.sh) starts and .ci/run starts in
CI: a smoke sweep submitted as a job array equals the local sweep, every job COMPLETED in sacct, and a rerun submits
nothing. Without a cluster these tests are skipped, except in CI (CI=true), where they fail."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import xarray as xr

from conftest import NMTUNE, ROOT, SMOKE_RUNS, nmtune_sweep
from nmtune_lib.cores import usable_cores
from nmtune_lib.study.slurm import SlurmResources
from nmtune_lib.transfer.downstream import MEASURED


def _cluster_up() -> bool:
    if shutil.which("scontrol") is None:
        return False
    return "UP" in subprocess.run(["scontrol", "ping"], capture_output=True, text=True).stdout


needs_cluster = pytest.mark.skipif(not _cluster_up() and os.environ.get("CI") != "true",
                                   reason="no Slurm cluster answers here: 'make slurm' starts one (as root)")


@needs_cluster
def test_smoke_sweep_on_slurm_equals_the_local_sweep(smoke_sweep, tmp_path):
    assert _cluster_up(), "CI must start the cluster first (.ci/run: make slurm)"
    # the local fixture ran one worker with this process's cores' threads: each Slurm task gets as many; the grid's
    # 20 % run alone keeps the test short
    args = ("--executor", "slurm", "--cpus-per-job", str(usable_cores()), "--mem-gb", "4", "--time-min", "30",
            "--noise-ratios", "0.2", "--no-summary")
    result = nmtune_sweep(tmp_path, *args, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    array = re.search(r"submitted job array (\d+) with 1 task", result.stdout).group(1)
    states = subprocess.run(["sacct", "-n", "-X", "-P", "-j", array, "-o", "JobID,State"], capture_output=True,
                            text=True).stdout.split()
    assert len(states) == 1 and all(s.endswith("|COMPLETED") for s in states), states
    for run in SMOKE_RUNS[1:]:
        ours, local = (root / "smoke" / "fashion_mnist" / run for root in (tmp_path, smoke_sweep))
        assert (ours / "backbone.pt").read_bytes() == (local / "backbone.pt").read_bytes()
        for name in ("transfer.nc", "spectrum.nc"):
            a, b = xr.load_dataset(ours / name), xr.load_dataset(local / name)
            drop = [v for v in MEASURED if v in a]
            xr.testing.assert_equal(a.drop_vars(drop), b.drop_vars(drop))  # attributes (paths, times) aside
    again = nmtune_sweep(tmp_path, *args, timeout=300)
    assert again.returncode == 0 and "nothing submitted" in again.stdout  # finished runs are not resubmitted


def test_slurm_executor_without_slurm_fails_before_writing(tmp_path):
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}  # no sbatch, sacct or scontrol
    result = subprocess.run([*NMTUNE, "sweep", "--preset", "smoke", "--executor", "slurm", "--run-root",
                             str(tmp_path / "runs")], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and "sbatch" in result.stderr and "make slurm" in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("field, value", [("cpus", 0), ("gpus", -1), ("time_min", 0), ("mem_gb", 0.0),
                                          ("cpus", 1.5)])
def test_bad_slurm_resources_are_named(field, value):
    with pytest.raises(ValueError, match=f"slurm {field}="):
        SlurmResources(**{field: value})
