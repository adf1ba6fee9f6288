"""The study under kills, stale state, bad data, full disks and two users at once (smoke preset, scratch roots).

Every test breaks something for real: SIGKILL of a two-worker sweep, a second sweep on a held run root, a grid
narrowed to one noise ratio and extended again after the summary, a copied run root, a flipped byte in a feature
cache, a truncated spectrum, a data root that does not exist, a GPU that is not there, a full and a read-only file
system (tmpfs, where this machine lets us mount one).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xarray as xr

from conftest import NMTUNE, ROOT, SMOKE_RUNS, needs_fmnist, nmtune_sweep, run_notebook
from nmtune_lib.config import PRESETS

pytestmark = [needs_fmnist, pytest.mark.slow]


def _descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _cmdline(proc) -> str:
    """The command line of a process, or "" once it has exited (a child can end between listing and reading)."""
    import psutil

    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def _alive(procs) -> list:
    import psutil

    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _latest_mtime(root: Path) -> float:
    return max((p.stat().st_mtime for p in root.rglob("*") if p.is_file()), default=0.0)


# --- process hygiene --------------------------------------------------------------------------------------------

def test_sigkill_of_a_two_job_sweep_leaves_nothing_working(tmp_path):
    proc = subprocess.Popen([*NMTUNE, "sweep", "--preset", "smoke", "--run-root", str(tmp_path), "--jobs", "2",
                             "--no-summary"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 120  # two workers, each with a kernel running a notebook
        while time.time() < deadline and proc.poll() is None:
            kernels = [p for p in _descendants(proc.pid) if "ipykernel" in _cmdline(p)]
            if len(kernels) >= 2:
                break
            time.sleep(0.5)
        assert len(kernels) >= 2, "the sweep never ran two kernels at once"
        time.sleep(2)
        family = _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 30
        while _alive(family) and time.time() < deadline:
            time.sleep(0.5)
        assert not _alive(family), f"still running after the sweep was killed: {[_cmdline(p) for p in _alive(family)]}"
        before = _latest_mtime(tmp_path)
        time.sleep(5)
        assert _latest_mtime(tmp_path) == before, "something kept writing into the run root"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


# --- the run-root lock ------------------------------------------------------------------------------------------

def test_a_second_sweep_on_a_held_run_root_is_refused_naming_the_holder(tmp_path):
    first = subprocess.Popen([*NMTUNE, "sweep", "--preset", "smoke", "--run-root", str(tmp_path), "--noise-ratios",
                              "0.2", "--no-summary"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        lock = tmp_path / ".nmtune.lock"
        deadline = time.time() + 120
        while time.time() < deadline and not (lock.exists() and lock.read_text()):
            time.sleep(0.2)
        holder = json.loads(lock.read_text())
        assert holder["pid"] == first.pid
        second = nmtune_sweep(tmp_path, "--noise-ratios", "0.2", "--no-summary", timeout=120)
        assert second.returncode == 2
        assert f"in use by pid {first.pid} on {holder['host']}, started {holder['started']}" in second.stderr
        assert "--wait" in second.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


def test_a_stale_lock_is_taken_over_and_wait_queues(tmp_path):
    from nmtune_lib.study.lock import RunRootBusy, run_root_lock

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from nmtune_lib.study.lock import run_root_lock\n"
                               f"with run_root_lock({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(60)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunRootBusy, match=f"pid {holder.pid}"):
        with run_root_lock(tmp_path):
            pass
    holder.kill()  # SIGKILL: no clean-up ran, the lock file still names the dead holder
    holder.wait()
    with run_root_lock(tmp_path):  # taken over at once
        assert json.loads((tmp_path / ".nmtune.lock").read_text())["pid"] == os.getpid()
    # --wait: queue behind a holder that finishes
    holder = subprocess.Popen([sys.executable, "-c", "import time; from nmtune_lib.study.lock import run_root_lock\n"
                               f"with run_root_lock({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(3)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    start = time.time()
    with run_root_lock(tmp_path, wait=True):
        assert time.time() - start > 1  # got it only once the holder let go (it slept 3 s holding it)
        assert json.loads((tmp_path / ".nmtune.lock").read_text())["pid"] == os.getpid()
    holder.wait(timeout=30)


# --- fresh summaries, portable markers, checked artefacts -------------------------------------------------------

@pytest.fixture(scope="module")
def copied_root(smoke_sweep, tmp_path_factory):
    """A copy of the session's smoke sweep in another folder: its markers must stay valid there."""
    root = tmp_path_factory.mktemp("copied") / "runs"
    shutil.copytree(smoke_sweep, root, ignore=shutil.ignore_patterns(".nmtune.lock"))
    return root


def _skipped(stdout: str) -> str:
    return next((line for line in stdout.splitlines() if line.startswith("skipped")), "")


def test_a_copied_run_root_reruns_nothing_and_a_changed_grid_redoes_the_summary(copied_root):
    same = nmtune_sweep(copied_root, timeout=300)
    assert same.returncode == 0, same.stderr[-3000:]
    assert "none run" in same.stdout and "05_summary ×1" in _skipped(same.stdout)
    # a preset's own value named explicitly changes nothing, so it redoes nothing either
    default = nmtune_sweep(copied_root, "--set", f"head_epochs={PRESETS['smoke']['head_epochs']}", timeout=300)
    assert default.returncode == 0 and "none run" in default.stdout, default.stdout[-3000:] + default.stderr[-3000:]
    # a grid of one noise ratio: the summary is redone, reads only that run, and says what it cannot judge
    old_figure = (copied_root / "smoke" / "noise_effects_by_task.png").read_bytes()
    single = nmtune_sweep(copied_root, "--noise-ratios", "0.2", timeout=600)
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
    assert "04_transfer ×1" in _skipped(single.stdout) and "05_summary" not in _skipped(single.stdout)
    claims = json.loads((copied_root / "smoke" / "claims.json").read_text())
    assert claims["grid"]["noise_ratios"] == [0.2] and not any("0.00" in n for n in claims["inputs"])
    unjudged = [c for c in claims["claims"] if c["verdict"] == "not judged"]
    assert unjudged and all("noise ratio" in c["effect"] for c in unjudged)
    # no clean run to compare each task with: an empty per-task table, and the old grid's figure is gone
    assert (copied_root / "smoke" / "noise_effects_by_task.csv").read_text().count("\n") == 1  # the header
    assert (copied_root / "smoke" / "noise_effects_by_task.png").read_bytes() != old_figure  # now says why none
    # extended again after that summary: the finished runs are skipped, the summary is redone over the whole grid
    # (a new run in an extended grid is any other run of a sweep; its cost is left to the tests that need one)
    extended = nmtune_sweep(copied_root, "--noise-ratios", "0", "0.2", timeout=600)
    assert extended.returncode == 0, extended.stdout[-3000:] + extended.stderr[-3000:]
    assert "01_noise_injection ×2" in _skipped(extended.stdout) and "05_summary" not in _skipped(extended.stdout)
    claims = json.loads((copied_root / "smoke" / "claims.json").read_text())
    assert claims["grid"]["noise_ratios"] == [0.0, 0.2]
    assert any("symmetric-0.00" in name for name in claims["inputs"])


def test_a_marker_keys_the_overrides_by_content_so_the_order_of_set_flags_does_not_matter(tmp_path):
    from nmtune_lib.markers import is_done, mark_done, step_key

    (tmp_path / "in.txt").write_text("input")
    (tmp_path / "out.txt").write_text("output")
    inputs, outputs, marker = {"in": tmp_path / "in.txt"}, {"out": tmp_path / "out.txt"}, tmp_path / "step.done"

    def key(overrides: dict, run_root: str = "/a") -> dict:
        return step_key(dict(preset="smoke", seed=0, run_root=run_root, overrides=json.dumps(overrides)), inputs)

    mark_done(marker, key({"ablation": False, "head_epochs": 3}), outputs)
    assert is_done(marker, key({"head_epochs": 3, "ablation": False}, "/b"), outputs)  # --set flags the other way
    assert is_done(marker, key({"head_epochs": 4, "ablation": False}), outputs) is None  # another value: redo
    # a marker written before this keyed the text itself; it holds for the same overrides in either order
    legacy = json.loads(marker.read_text())
    legacy["key"]["parameters"]["overrides"] = json.dumps({"ablation": False, "head_epochs": 3})
    marker.write_text(json.dumps(legacy))
    assert is_done(marker, key({"head_epochs": 3, "ablation": False}), outputs)
    assert is_done(marker, key({"ablation": True, "head_epochs": 3}), outputs) is None
    legacy["key"]["parameters"]["overrides"] = "{not json"  # damaged: redo, no traceback
    marker.write_text(json.dumps(legacy))
    assert is_done(marker, key({"ablation": False, "head_epochs": 3}), outputs) is None


@pytest.mark.parametrize("errors, calls, raised", [
    (["Kernel didn't respond in 60 seconds"], 2, None),  # a port drawn twice: started again, then runs
    (["Kernel died before replying to kernel_info"] * 2, 3, None),
    (["Kernel didn't respond in 60 seconds"] * 3, 3, "didn't respond"),  # KERNEL_START_TRIES, then the error
    (["cell [3]: ValueError"], 1, "cell"),  # anything else (a failing cell): never started again
])
def test_a_kernel_that_does_not_start_is_started_again(tmp_path, monkeypatch, capsys, errors, calls, raised):
    import papermill

    from nmtune_lib.study import chains as sweep

    left, seen = list(errors), []

    def fake_execute(*args, **kwargs):
        seen.append(kwargs["kernel_name"])
        if left:
            raise RuntimeError(left.pop(0))

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    if raised:
        with pytest.raises(RuntimeError, match=raised):
            sweep.execute_notebook("01_noise_injection", tmp_path / "out.ipynb", {})
    else:
        sweep.execute_notebook("01_noise_injection", tmp_path / "out.ipynb", {})
    assert len(seen) == calls
    assert capsys.readouterr().err.count("the kernel did not start") == calls - 1  # one line per new start


def test_a_flipped_byte_in_cached_features_is_caught_and_the_result_is_unchanged(copied_root):
    run = copied_root / "smoke" / "fashion_mnist" / SMOKE_RUNS[1]
    clean = xr.load_dataset(run / "transfer.nc", engine="h5netcdf")
    for cache in sorted((run / "features").glob("*.pt")):  # flip one byte inside every stored feature tensor
        raw = bytearray(cache.read_bytes())
        raw[len(raw) // 2] ^= 0x40
        cache.write_bytes(bytes(raw))
    (run / "transfer.nc").unlink()  # 04 must run again and read the damaged caches
    result = nmtune_sweep(copied_root, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    executed = (run / "04_transfer.ipynb").read_text()
    assert "does not match its content hash" in executed or "is unreadable" in executed
    again = xr.load_dataset(run / "transfer.nc", engine="h5netcdf")
    from nmtune_lib.transfer.downstream import MEASURED

    timing = list(MEASURED)  # wall time and memory, the things allowed to differ
    xr.testing.assert_identical(again.drop_vars(timing).drop_attrs(), clean.drop_vars(timing).drop_attrs())


def test_a_truncated_spectrum_is_named_and_recomputed(copied_root):
    from nmtune_lib.results import load_dataset

    path = copied_root / "smoke" / "fashion_mnist" / SMOKE_RUNS[0] / "spectrum.nc"
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ValueError, match=f"{path} is not a readable netCDF file .*recompute it \\(notebook 03\\)"):
        load_dataset(path, "spectrum")
    result = nmtune_sweep(copied_root, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "03_spectrum" in result.stdout.split("skipped")[0]  # 03 ran again for the damaged run
    load_dataset(path, "spectrum")


# --- strict data and devices: errors before any run folder ---------------------------------------------------------

def test_a_missing_data_root_fails_before_any_run_folder(tmp_path):
    missing = tmp_path / "no-data"
    result = nmtune_sweep(tmp_path / "runs", "--set", f"data_root={missing}", timeout=120)
    assert result.returncode == 2 and str(missing) in result.stderr
    assert not (tmp_path / "runs").exists()


def test_an_absent_gpu_fails_before_anything_is_written(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = nmtune_sweep(tmp_path / "runs", "--param", "device=cuda", timeout=120)
    assert result.returncode == 2 and "cuda" in result.stderr
    assert not (tmp_path / "runs").exists()
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError, match="CUDA"):
        run_notebook("02_pretrain", tmp_path, preset="smoke", device="cuda", run_root=str(tmp_path / "nb-runs"))
    assert not (tmp_path / "nb-runs").exists()


# --- full and read-only file systems ----------------------------------------------------------------------------

@pytest.fixture
def tmpfs(tmp_path):
    """A 1 MiB tmpfs (root only): mounts and unmounts it, or skips with the reason."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()

    def mount_it(*options: str) -> Path:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=1m", *options)), "tmpfs", str(mount)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}): needs root")
        return mount

    yield mount_it
    subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_full_disk_is_reported_as_such_naming_the_file(tmpfs):
    import numpy as np
    import torch

    from nmtune_lib.files import atomic_torch_save
    from nmtune_lib.results import save_dataset

    root = tmpfs()
    with pytest.raises(OSError, match=f"no space left to write {root / 'checkpoint.pt'}"):
        atomic_torch_save(root / "checkpoint.pt", {"model": torch.zeros(1 << 20)})
    with pytest.raises(OSError, match=f"no space left to write {root / 'spectrum.nc'}"):
        save_dataset(xr.Dataset({"x": ("i", np.zeros(1 << 18))}), root / "spectrum.nc")
    assert not [p for p in root.iterdir()], "no temporary file may be left behind"


def test_a_read_only_run_root_is_reported_as_such(tmpfs):
    from nmtune_lib.files import atomic_write_json

    root = tmpfs("ro")
    with pytest.raises(OSError, match=f"cannot write {root / 'x.json'}: {root} is read-only"):
        atomic_write_json(root / "x.json", {"a": 1})
