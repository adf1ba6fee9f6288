"""One run's chain of notebooks, and each notebook's execution with papermill behind its completion marker.

``execute`` runs a notebook unless its ``.done`` marker (``markers``) says it finished with the same key and its
outputs are intact; ``run_chain`` runs notebooks 01–04 of one (noise ratio, seed) in order, in a worker process of
the sweep (``sweep``) or a task of a Slurm job array (``slurm``). The workers and their kernels never outlive the
sweep (process hygiene below).
"""
from __future__ import annotations

import concurrent.futures as futures
import contextlib
import json
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import PROJECT_ROOT as ROOT
from ..config import StudyConfig
from ..markers import changed_outputs, is_done, mark_done, read_marker, step_key, stored_key
from ..parameters import NOTEBOOK_DIR
from ..run import Run
from .keys import code_key, config_key, reasons

RUN_NOTEBOOKS = ("01_noise_injection", "02_pretrain", "03_spectrum", "04_transfer")
SUMMARY_NOTEBOOK = "05_summary"
# The kernel is killed once the last cell has run instead of being asked to exit: every cell has written its results
# (atomically) before it returns, and the interpreter's teardown of torch, timm (with sympy) and seaborn costs 2-3 s
# per notebook (a process importing them took 10.4 s to end normally, 6.8 s to end with os._exit). A failing cell
# still raises and leaves its partial notebook.
KERNEL_SHUTDOWN = "immediate"
KERNEL_START_TRIES = 3  # starts of a kernel that does not come up (execute_notebook)
KERNEL_START_ERRORS = ("Kernel didn't respond", "Kernel died before replying to kernel_info")  # jupyter_client's
@dataclass(frozen=True)
class RunSpec:
    """One (noise ratio, seed) chain of notebooks and the parameters each receives."""

    run: Run
    parameters: dict[str, dict[str, Any]]  # notebook name -> parameters


def execute_notebook(name: str, out: Path, parameters: dict[str, Any], *, cwd: Path = ROOT) -> None:
    """Execute notebooks/<name>.ipynb into ``out`` with papermill: the venv's python3 kernel, started in ``cwd`` and
    killed after its last cell (``KERNEL_SHUTDOWN``); a failing cell raises and leaves the partial notebook.

    A kernel that does not start is started again, up to ``KERNEL_START_TRIES`` times: jupyter_client picks free TCP
    ports before the kernel binds them, so kernels started side by side can draw the same port (seen with 13 runs at
    a time on a 16-core GPU machine: ``ZMQError: Address already in use``, then "Kernel didn't respond"). No cell has
    run then, so starting again is safe; a failing cell is never retried."""
    import papermill as pm

    os.environ.setdefault("JUPYTER_PATH", str(Path(sys.prefix) / "share" / "jupyter"))  # the venv's kernel first
    for attempt in range(1, KERNEL_START_TRIES + 1):
        try:
            pm.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(out), parameters=parameters,
                                kernel_name="python3", cwd=str(cwd), progress_bar=False, log_output=False,
                                shutdown_kernel=KERNEL_SHUTDOWN)
            return
        except RuntimeError as err:
            if not str(err).startswith(KERNEL_START_ERRORS) or attempt == KERNEL_START_TRIES:
                raise
            print(f"{out}: the kernel did not start ({err}); starting it again ({attempt + 1} of "
                  f"{KERNEL_START_TRIES})", file=sys.stderr, flush=True)


Files = tuple[dict[str, Path], dict[str, Path]]  # a step's (inputs, outputs), file name → path


def step_status(name: str, out_dir: Path, parameters: dict[str, Any], files: Files, config: StudyConfig
                ) -> tuple[dict[str, Any], dict[str, Any] | None, list[str]]:
    """(key, the marker if the step is done and current else None, why it is not): the key is what notebook
    ``name`` computes with (``study.keys``: its parameters, configuration fields, code, packages and inputs)."""
    inputs, outputs = files
    key = step_key(parameters, inputs, config=config_key(config, name), code=code_key(name))
    marker = out_dir / f"{name}.done"
    done = is_done(marker, key, outputs)
    if done is not None:
        return key, done, []
    stored = read_marker(marker)
    why = reasons(stored_key(stored), json.loads(json.dumps(key)))
    if not why:
        why = [f"output {', '.join(changed_outputs(stored, outputs))} changed, damaged or missing"]
    return key, None, why


def _say(text: str) -> None:
    """One whole line at once on stdout (workers of a sweep write beside each other and beside its bar)."""
    sys.stdout.write(text)
    sys.stdout.flush()


def execute(name: str, out_dir: Path, parameters: dict[str, Any], files: Files, config: StudyConfig,
            *, log=_say) -> dict[str, Any]:
    """Run one notebook unless its marker says it is done and current (``step_status``); return the marker (or raise
    on a failing cell). A step that runs says why (``log``). The executed notebook is written to
    ``out_dir/<name>.ipynb`` (kept when a cell fails, for inspection)."""
    key, done, why = step_status(name, out_dir, parameters, files, config)
    if done is not None:
        return {**done, "skipped": True}
    (out_dir / f"{name}.done").unlink(missing_ok=True)  # stale: redo
    log(f"{out_dir}: running {name} ({'; '.join(why)})\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    execute_notebook(name, out_dir / f"{name}.ipynb", parameters)
    return mark_done(out_dir / f"{name}.done", key, files[1], notebook=name,
                     seconds=round(time.perf_counter() - start, 2), finished=time.strftime("%Y-%m-%dT%H:%M:%S"))


def chain_status(spec: RunSpec) -> dict[str, list[str]]:
    """Notebook → why it would run ([] = done and current), for every notebook of a run's chain; a notebook after
    one that would run would run too (its inputs are about to change)."""
    out, earlier = {}, None
    for name in RUN_NOTEBOOKS:
        why = step_status(name, spec.run.dir, spec.parameters[name], spec.run.step_files(name), spec.run.config)[2]
        out[name] = why or ([f"an earlier step reruns ({earlier})"] if earlier else [])
        earlier = earlier or (name if why else None)
    return out


def chain_done(spec: RunSpec) -> bool:
    """Whether every notebook of a run's chain is done and current (a rerun would skip them all)."""
    return not any(chain_status(spec).values())


def run_chain(spec: RunSpec, threads: int) -> dict[str, Any]:
    """Worker: notebooks 01–04 of one run in order; stops the chain at the first failing notebook."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NMTUNE_NUM_THREADS"):
        os.environ[var] = str(threads)
    result: dict[str, Any] = {"run_dir": str(spec.run.dir), "seconds": {}, "skipped": [], "error": None}
    for name in RUN_NOTEBOOKS:
        try:
            done = execute(name, spec.run.dir, spec.parameters[name], spec.run.step_files(name), spec.run.config)
        except Exception as err:  # papermill's PapermillExecutionError carries the failing cell
            cell = getattr(err, "exec_count", None)
            result["error"] = (f"{name} failed (cell [{cell}]: {getattr(err, 'ename', type(err).__name__)}: "
                               f"{getattr(err, 'evalue', err)}); partial notebook: {spec.run.notebook(name)}")
            break
        if done.get("skipped"):
            result["skipped"].append(name)
        else:
            result["seconds"][name] = done["seconds"]
    return result


def tally(result: dict[str, Any], timings: dict[str, float], skipped: dict[str, int], failures: list[str], *,
          where: str = "") -> bool:
    """Add one chain's result (``run_chain``) to the sweep's seconds and skips per notebook and its failures;
    True if the chain failed (``where`` prefixes its message)."""
    for name, seconds in result["seconds"].items():
        timings[name] = timings.get(name, 0.0) + seconds
    for name in result["skipped"]:
        skipped[name] = skipped.get(name, 0) + 1
    if result["error"]:
        failures.append(where + result["error"])
    return bool(result["error"])


# --- process hygiene: the workers and their kernels never outlive the sweep -------------------------------------

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """Worker initializer: when the sweep dies (even by SIGKILL), Linux sends this worker SIGTERM (prctl
    PR_SET_PDEATHSIG), on which it kills its kernels and exits. Elsewhere ipykernel's own parent poller remains."""
    parent = os.getppid()
    signal.signal(signal.SIGTERM, _end_kernels_and_exit)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the sweep, which ends the workers itself
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the sweep died before prctl took effect
        _end_kernels_and_exit()


def _end_kernels_and_exit(*_: Any) -> None:
    kill_descendants()
    os._exit(128 + signal.SIGTERM)


def kill_descendants() -> None:
    """SIGKILL every process below this one (kernels run in sessions of their own, so no group signal reaches them)."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child.kill()


def pool(jobs: int) -> futures.ProcessPoolExecutor:
    """Workers forked from the sweep (so that the parent-death signal refers to it) that die with it."""
    return futures.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("fork"),
                                       initializer=die_with_parent)


