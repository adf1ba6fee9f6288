"""The study as one command: papermill runs per (noise ratio, seed), the summary, and HTML reports (``nmtune``).

``nmtune sweep`` executes notebooks 01–04 for every (noise ratio, seed) of a preset into the run directories, then
notebook 05 once for the grid. Completion of each notebook is marked by ``<NN_name>.done``, keyed by content
(markers.py), so a rerun after a crash or ``kill -9`` skips finished work and redoes stale work; the notebooks' own
steps resume from their checkpoints and caches, so the results equal those of an uninterrupted sweep. The workers
and their kernels die with the sweep, and one sweep at a time holds a run root (lock.py). ``nmtune report``
(report.py) renders the executed notebooks to HTML.
"""
from __future__ import annotations

import argparse
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
from typing import Any, Callable, Iterable, Sequence

from .config import PROJECT_ROOT as ROOT
from .config import PRESETS, StudyConfig, parse_assignments, resolve_run_root
from .cores import usable_cores
from .files import atomic_write_json, atomic_write_text
from .lock import RunRootBusy, run_root_lock
from .markers import is_done, mark_done, step_key
from .parameters import NOTEBOOK_DIR, declared_parameters
from .run import Run, Study

RUN_NOTEBOOKS = ("01_noise_injection", "02_pretrain", "03_spectrum", "04_transfer")
SUMMARY_NOTEBOOK = "05_summary"
# The kernel is killed once the last cell has run instead of being asked to exit: every cell has written its results
# (atomically) before it returns, and the interpreter's teardown of torch, timm (with sympy) and seaborn costs 2-3 s
# per notebook (a process importing them took 10.4 s to end normally, 6.8 s to end with os._exit). A failing cell
# still raises and leaves its partial notebook.
KERNEL_SHUTDOWN = "immediate"
KERNEL_START_TRIES = 3  # starts of a kernel that does not come up (execute_notebook)
KERNEL_START_ERRORS = ("Kernel didn't respond", "Kernel died before replying to kernel_info")  # jupyter_client's
MANAGED = ("preset", "dataset", "noise_ratio", "noise_ratios", "noise_kind", "seed", "seeds", "run_root", "progress",
           "overrides")


@dataclass(frozen=True)
class RunSpec:
    """One (noise ratio, seed) chain of notebooks and the parameters each receives."""

    run: Run
    parameters: dict[str, dict[str, Any]]  # notebook name -> parameters


def refuse_managed(overrides: Iterable[str]) -> None:
    """Raise if an override names a field the sweep passes to the notebooks itself: each notebook would get it twice
    (parameter and ``overrides``) and refuse it, run after run."""
    clash = sorted(set(overrides) & set(MANAGED))
    if clash:
        raise ValueError(f"--set {', '.join(clash)} (overrides {clash} in Python): the sweep sets "
                         f"{', '.join(MANAGED)} itself; give them with --preset, --run-root, --noise-ratios, --seeds, "
                         "--noise-kind or --dataset (in Python: the Study's config, e.g. "
                         "Study.from_parameters(preset, seeds=…)) instead")


def plan(study: Study, overrides: dict[str, Any], extra: dict[str, Any] | None = None) -> list[RunSpec]:
    """Every (ratio, seed) chain with per-notebook parameters, validated against each notebook before any compute.

    ``extra`` holds notebook parameters given with ``--param``: each must be declared by at least one notebook and
    must not be one the sweep sets itself.
    """
    declared = {name: declared_parameters(name) for name in (*RUN_NOTEBOOKS, SUMMARY_NOTEBOOK)}
    for name, params in declared.items():
        missing = [p for p in ("preset", "run_root", "overrides") if p not in params]
        if missing:
            raise ValueError(f"notebook {name} lacks the parameter(s) {missing} that the sweep sets")
    refuse_managed(overrides)
    extra = extra or {}
    valid = sorted({p for params in declared.values() for p in params} - set(MANAGED))
    bad = sorted(set(extra) - set(valid))
    if bad:
        raise ValueError(f"unknown notebook parameter(s) {bad}; valid --param names: {', '.join(valid)} "
                         f"(the sweep sets {', '.join(MANAGED)} itself; config fields go through --set)")
    config = study.config
    specs = []
    for run in study.runs():
        values = dict(preset=config.preset, dataset=config.dataset, noise_ratio=run.noise_ratio,
                      noise_kind=config.noise_kind, seed=run.seed, run_root=config.run_root, progress=False,
                      overrides=json.dumps(overrides), **extra)
        specs.append(RunSpec(run, {name: {k: v for k, v in values.items() if k in declared[name]}
                                   for name in RUN_NOTEBOOKS}))
    return specs


def effective_overrides(resolved: StudyConfig, overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` less those that set a field to its preset's own value, so that naming a default (``--set
    head_epochs=30`` on ``default``) keys the notebooks' markers as leaving it out does, and a rerun resumes instead
    of redoing every notebook. ``resolved`` is the configuration the overrides gave; it must come out unchanged."""
    preset = StudyConfig.from_preset(resolved.preset)
    kept = {k: v for k, v in overrides.items() if getattr(resolved, k) != getattr(preset, k)}
    return kept if StudyConfig.from_preset(resolved.preset, **{**_grid_fields(resolved), **kept}) == resolved \
        else overrides


def summary_parameters(study: Study, overrides: dict[str, Any]) -> dict[str, Any]:
    """Notebook 05's parameters: the grid it summarises (noise ratios and seeds) and the sweep's overrides."""
    config = study.config
    declared = declared_parameters(SUMMARY_NOTEBOOK)
    values = dict(preset=config.preset, dataset=config.dataset, noise_kind=config.noise_kind, run_root=config.run_root,
                  noise_ratios=list(config.noise_ratios), seeds=list(config.seeds), overrides=json.dumps(overrides))
    return {k: v for k, v in values.items() if k in declared}


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


def execute(name: str, out_dir: Path, parameters: dict[str, Any], files: tuple[dict[str, Path], dict[str, Path]]
            ) -> dict[str, Any]:
    """Run one notebook unless its marker says it is done (markers.py); return the marker (or raise on a failing cell).

    ``files``: the step's (inputs, outputs). The executed notebook is written to ``out_dir/<name>.ipynb`` (kept when
    a cell fails, for inspection).
    """
    inputs, outputs = files
    marker = out_dir / f"{name}.done"
    key = step_key(parameters, inputs)  # hashes the input files: once, for the check and the new marker
    done = is_done(marker, key, outputs)
    if done is not None:
        return {**done, "skipped": True}
    marker.unlink(missing_ok=True)  # stale: parameters, an input or an output changed; redo
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    execute_notebook(name, out_dir / f"{name}.ipynb", parameters)
    return mark_done(marker, key, outputs, notebook=name, seconds=round(time.perf_counter() - start, 2),
                     finished=time.strftime("%Y-%m-%dT%H:%M:%S"))


def step_done(name: str, out_dir: Path, parameters: dict[str, Any], files: tuple[dict[str, Path], dict[str, Path]]
              ) -> dict[str, Any] | None:
    """The marker of notebook ``name`` in ``out_dir`` if it is current (same parameters and inputs, outputs intact),
    else None."""
    inputs, outputs = files
    return is_done(out_dir / f"{name}.done", step_key(parameters, inputs), outputs)


def chain_done(spec: RunSpec) -> bool:
    """Whether every notebook of a run's chain is done and current (a rerun would skip them all)."""
    return all(step_done(name, spec.run.dir, spec.parameters[name], spec.run.step_files(name)) is not None
               for name in RUN_NOTEBOOKS)


def _run_chain(spec: RunSpec, threads: int) -> dict[str, Any]:
    """Worker: notebooks 01–04 of one run in order; stops the chain at the first failing notebook."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NMTUNE_NUM_THREADS"):
        os.environ[var] = str(threads)
    result: dict[str, Any] = {"run_dir": str(spec.run.dir), "seconds": {}, "skipped": [], "error": None}
    for name in RUN_NOTEBOOKS:
        try:
            done = execute(name, spec.run.dir, spec.parameters[name], spec.run.step_files(name))
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


# --- process hygiene: the workers and their kernels never outlive the sweep -------------------------------------

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:
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
    _kill_descendants()
    os._exit(128 + signal.SIGTERM)


def _kill_descendants() -> None:
    """SIGKILL every process below this one (kernels run in sessions of their own, so no group signal reaches them)."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child.kill()


def _pool(jobs: int) -> futures.ProcessPoolExecutor:
    """Workers forked from the sweep (so that the parent-death signal refers to it) that die with it."""
    return futures.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("fork"),
                                       initializer=_die_with_parent)


# --- the sweep --------------------------------------------------------------------------------------------------

def preflight(config: StudyConfig, extra: dict[str, Any]) -> None:
    """Checks that need no run folder, run before any is written: the device exists and the pre-training data is
    readable where the config says (a damaged or missing dataset file is named), and so are the user's
    pretrained weights, if any."""
    from .data import pretraining_data
    from .models import resolve_device
    from .pretrained import check_pretrained
    from .tasks import missing_data

    device = extra.get("device", config.device)
    try:
        resolve_device(str(device))
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"device {device!r}: {err}") from None
    try:
        check_pretrained(config)
        pretraining_data(config)
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(str(err)) from None
    missing = missing_data(config.task_suite, config.data_root, config.tasks)
    if missing:
        raise ValueError(f"task_suite {config.task_suite!r} lacks {len(missing)} dataset(s) (looked for): "
                         f"{'; '.join(missing)}")


def sweep(study: Study, overrides: dict[str, Any], *, jobs: int = 1, summary: bool = True,
          extra: dict[str, Any] | None = None, wait: bool = False, slurm=None) -> int:
    """Run every chain (``jobs`` worker processes, cores split between them; or, given ``slurm`` resources
    (``slurm.SlurmResources``), one Slurm job array), then the summary; return the number of failed runs. Holds the
    run root's lock throughout (a second sweep there is refused, or waits with ``wait``)."""
    config = study.config
    resolved = StudyConfig.from_preset(config.preset, **{**_grid_fields(config), **overrides})  # bad overrides raise
    overrides = effective_overrides(resolved, overrides)
    runs = plan(study, overrides, extra)
    preflight(resolved, extra or {})
    if slurm is not None:
        from .slurm import check_cluster, run_chains_on_slurm

        check_cluster()
    with run_root_lock(config.run_root, wait=wait):
        start = time.time()
        if slurm is None:  # the invocation's time is logged after every finished run: a killed sweep's counts too
            timings, skipped, failures = _run_chains(study, runs, jobs, on_run=lambda ran: record_timing(
                study, resolved, jobs=jobs, started=start, ran=ran))
        else:
            timings, skipped, failures = run_chains_on_slurm(study, runs, slurm)
        if summary and not failures:
            try:
                done = execute(SUMMARY_NOTEBOOK, study.dir, summary_parameters(study, overrides), study.summary_files())
                if done.get("skipped"):
                    skipped[SUMMARY_NOTEBOOK] = 1
                else:
                    timings[SUMMARY_NOTEBOOK] = done["seconds"]
            except Exception as err:
                failures.append(f"{SUMMARY_NOTEBOOK} failed: {err}; partial notebook: "
                                f"{study.path(SUMMARY_NOTEBOOK + '.ipynb')}")
        record_timing(study, resolved, jobs=jobs if slurm is None else f"slurm array, {slurm.cpus} CPU(s) per task",
                      started=start, ran=timings)
    print("seconds per notebook (this invocation, all runs): " +
          (", ".join(f"{k} {v:.0f}" for k, v in sorted(timings.items())) or "none run"))
    if skipped:
        print("skipped (already complete): " + ", ".join(f"{k} ×{v}" for k, v in sorted(skipped.items())))
    if failures:
        print(f"{len(failures)} failure(s):\n  " + "\n  ".join(failures), file=sys.stderr)
    return len(failures)


def _run_chains(study: Study, runs: list[RunSpec], jobs: int, on_run: Callable[[dict[str, float]], None] | None = None
                ) -> tuple[dict[str, float], dict[str, int], list[str]]:
    """Every run's chain in ``jobs`` workers; (seconds per notebook, skips per notebook, failure messages).
    ``on_run(seconds per notebook so far)`` is called after each finished run."""
    from tqdm.auto import tqdm

    jobs = max(1, min(jobs, len(runs)))
    threads = max(1, usable_cores() // jobs)
    timings: dict[str, float] = {}
    skipped: dict[str, int] = {}
    failures: list[str] = []
    bar = tqdm(total=len(runs), desc=f"sweep {study.config.preset}", unit="run", file=sys.stdout)
    pool = _pool(jobs)
    try:
        for future in futures.as_completed([pool.submit(_run_chain, run, threads) for run in runs]):
            result = future.result()
            bar.update(1)
            if tally(result, timings, skipped, failures):
                tqdm.write(f"FAILED {result['run_dir']}: {result['error']}", file=sys.stdout)
            if on_run is not None and result["seconds"]:
                on_run(dict(timings))
    except BaseException:  # Ctrl-C or a crash of the sweep itself: its workers and their kernels end with it
        _kill_descendants()
        raise
    finally:
        bar.close()
        pool.shutdown(cancel_futures=True)
    return timings, skipped, failures


def tally(result: dict[str, Any], timings: dict[str, float], skipped: dict[str, int], failures: list[str], *,
          where: str = "") -> bool:
    """Add one chain's result (``_run_chain``) to the sweep's seconds and skips per notebook and its failures;
    True if the chain failed (``where`` prefixes its message)."""
    for name, seconds in result["seconds"].items():
        timings[name] = timings.get(name, 0.0) + seconds
    for name in result["skipped"]:
        skipped[name] = skipped.get(name, 0) + 1
    if result["error"]:
        failures.append(where + result["error"])
    return bool(result["error"])


def record_timing(study: Study, resolved: StudyConfig, *, jobs: int | str, started: float, ran: dict[str, float]
                  ) -> None:
    """Write the study folder's ``config.yaml`` (the resolved config) and ``timing.csv``: per notebook the seconds
    its executions took, summed over the grid's runs (from their markers, so resumed work counts once), and a
    ``total`` row with the wall-clock seconds of the sweep invocations that ran notebooks (``sweeps.json`` keeps one
    entry per invocation: start, wall time, jobs, cores, seconds per notebook). Called again by the same invocation
    (same ``started``), it updates that invocation's entry."""
    from .markers import read_marker

    study.dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(study.path("config.yaml"), resolved.to_yaml())
    log_path = study.path("sweeps.json")
    entry = dict(started=time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)), pid=os.getpid(),
                 wall_seconds=round(time.time() - started, 1), jobs=jobs, cores=usable_cores(), ran=ran)
    log = [e for e in (json.loads(log_path.read_text()) if log_path.exists() else [])
           if (e["started"], e.get("pid")) != (entry["started"], entry["pid"])] + [entry]
    atomic_write_json(log_path, log)
    stages: dict[str, float] = {}
    markers = [(name, run.dir / f"{name}.done") for run in study.runs() for name in RUN_NOTEBOOKS]
    for name, marker in [*markers, (SUMMARY_NOTEBOOK, study.path(f"{SUMMARY_NOTEBOOK}.done"))]:
        done = read_marker(marker)
        if done is not None:
            stages[name] = stages.get(name, 0.0) + float(done.get("seconds", 0.0))
    total = sum(entry["wall_seconds"] for entry in log if entry["ran"])
    rows = [f"{name},{seconds:.1f}" for name, seconds in stages.items()] + [f"total,{total:.1f}"]
    atomic_write_text(study.path("timing.csv"), "stage,seconds\n" + "\n".join(rows) + "\n")


def _grid_fields(config: StudyConfig) -> dict[str, Any]:
    return dict(dataset=config.dataset, noise_ratios=config.noise_ratios, seeds=config.seeds,
                noise_kind=config.noise_kind, run_root=config.run_root)


# --- command line ----------------------------------------------------------------------------------------------------

GRID_FIELDS = ("dataset", "noise_kind", "noise_ratios", "seeds")  # config fields that have a sweep flag of their own


def _lift_grid_fields(args: argparse.Namespace) -> None:
    """``--set dataset=…`` (or noise_kind, noise_ratios, seeds) defines the grid like the flag of that name: move it
    out of the notebook overrides into ``args``; the flag and ``--set`` both given is an error."""
    kept = []
    for assignment in args.overrides:
        key = assignment.partition("=")[0].strip()
        if key not in GRID_FIELDS:
            kept.append(assignment)
            continue
        if getattr(args, key, None):
            raise ValueError(f"{key} given both as --{key.replace('_', '-')} and --set {key}=…; give it once")
        setattr(args, key, parse_assignments([assignment])[key])
    args.overrides = kept


def _study_from_args(args: argparse.Namespace) -> Study:
    grid: dict[str, Any] = {"run_root": args.run_root}
    if getattr(args, "noise_ratios", None):
        grid["noise_ratios"] = args.noise_ratios
    if getattr(args, "seeds", None):
        grid["seeds"] = args.seeds
    if getattr(args, "noise_kind", None):
        grid["noise_kind"] = args.noise_kind
    if getattr(args, "dataset", None):
        grid["dataset"] = args.dataset
    overrides = parse_assignments(getattr(args, "overrides", []))
    refuse_managed(overrides)
    # the overrides too: fields that must agree with a grid field (objective=clip with noise_kind=caption_swap)
    return Study(StudyConfig.from_preset(args.preset, **grid, **overrides))


def _preset_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="default", choices=list(PRESETS), help="(default: %(default)s)")


def _set_argument(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a StudyConfig field, e.g. --set {example}")


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    """--preset, --run-root and --out of the commands that read a finished sweep (report, memorisation)."""
    _preset_argument(parser)
    parser.add_argument("--run-root", default="", help="the sweep's run root (default: $NMTUNE_RUNS, else <project "
                        "root>/runs)")
    parser.add_argument("--out", default=str(ROOT / "reports"), help="report folder (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    """The ``nmtune`` command line (``main`` runs it; the tests parse the README's commands with it)."""
    from .config import NOISE_KINDS
    from .data import DATASETS

    parser = argparse.ArgumentParser(prog="nmtune", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sw = sub.add_parser("sweep", help="execute notebooks 01-04 per (noise ratio, seed), then 05")
    _preset_argument(sw)
    sw.add_argument("--noise-ratios", nargs="+", type=float, help="default: the preset's")
    sw.add_argument("--seeds", nargs="+", type=int, help="default: the preset's")
    sw.add_argument("--noise-kind", choices=list(NOISE_KINDS), help="default: the preset's")
    sw.add_argument("--dataset", choices=list(DATASETS), help="pre-training dataset; default: the preset's")
    sw.add_argument("--jobs", type=int, default=1, help="(ratio, seed) runs in parallel processes (default: %(default)s)")
    sw.add_argument("--run-root", default="", help="root of the run directories (default: $NMTUNE_RUNS, else "
                    "<project root>/runs; a relative path is taken from the project root)")
    _set_argument(sw, "epochs=3 (in every notebook)")
    sw.add_argument("--param", dest="params", action="append", default=[], metavar="NAME=VALUE",
                    help="a notebook parameter (e.g. device=cpu), passed to the notebooks that declare it")
    sw.add_argument("--no-summary", action="store_true", help="skip notebook 05")
    sw.add_argument("--wait", action="store_true", help="if another sweep holds the run root, wait for it instead "
                    "of stopping")
    sw.add_argument("--executor", choices=["local", "slurm"], default="local",
                    help="local worker processes (default), or one Slurm job array through submitit")
    sl = sw.add_argument_group("slurm executor (each task of the job array)")
    sl.add_argument("--partition", default="", help="(default: the cluster's default partition)")
    sl.add_argument("--cpus-per-job", type=int, default=1, help="CPUs, also the torch threads (default: %(default)s)")
    sl.add_argument("--gpus-per-job", type=int, default=0, help="(default: %(default)s)")
    sl.add_argument("--mem-gb", type=float, default=8.0, help="(default: %(default)s)")
    sl.add_argument("--time-min", type=int, default=240, help="time limit per run, minutes (default: %(default)s)")
    rp = sub.add_parser("report", help="render executed notebooks to HTML with an index")
    _report_arguments(rp)
    rp.add_argument("--all-seeds", action="store_true", help="render every seed, not only seed 0")
    lc = sub.add_parser("learning-curve", help="pre-train one seed for several schedule lengths at a clean and a "
                        "noisy ratio; write learning_curve.csv and .png (nmtune_lib.learning_curve)")
    _preset_argument(lc)
    lc.add_argument("--epochs", nargs="+", type=int, default=[2, 5, 10, 20, 40],
                    help="schedule lengths (default: %(default)s)")
    lc.add_argument("--noise-ratios", nargs="+", type=float, default=[0.0, 0.3], help="(default: %(default)s)")
    lc.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    lc.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default: %(default)s)")
    lc.add_argument("--run-root", default="runs/learning_curve", help="(default: %(default)s, below the project "
                    "root; one folder per schedule length)")
    _set_argument(lc, "train_subset=2000")
    lc.add_argument("--out", default=str(ROOT / "reports" / "converged"), help="(default: %(default)s)")
    cp = sub.add_parser("compare", help="the paper's claims side by side across report sets, as a Markdown table "
                        "(nmtune_lib.report_tables)")
    cp.add_argument("folders", nargs="+", help="report sets holding claims.csv, e.g. reports/default reports/clip")
    cp.add_argument("--labels", nargs="+", help="column labels, one per folder (default: the folders' names)")
    cp.add_argument("--protocols", nargs="+", default=["reference", "matched"], help="(default: %(default)s)")
    tm = sub.add_parser("timing", help="a report set's stage times as a Markdown table (nmtune_lib.report_tables)")
    tm.add_argument("folders", nargs=1, metavar="FOLDER", help="a report set holding timing.csv and config.yaml, "
                    "e.g. reports/default")
    ef = sub.add_parser("effects", help="a report set's noise ratios against clean pre-training as a Markdown "
                        "table (nmtune_lib.report_tables)")
    ef.add_argument("folders", nargs="+", metavar="FOLDER", help="report sets holding noise_effects.csv, e.g. "
                    "reports/default (several: one table, a row block per set)")
    ef.add_argument("--by-task", action="store_true", help="a row per task instead of per ID/OOD mean "
                    "(noise_effects_by_task.csv)")
    sc = sub.add_parser("scores", help="a report set's per-task scores at every noise ratio as a Markdown table "
                        "(task_scores.csv; nmtune_lib.report_tables)")
    sc.add_argument("folders", nargs="+", metavar="FOLDER", help="report sets holding task_scores.csv, e.g. "
                    "reports/clip/caption_probe/class (several: one table, a row block per set)")
    ct = sub.add_parser("contrast", help="report sets against a base set seed by seed: score differences and "
                        "changes of the noise effects as a Markdown table (task_scores.csv; nmtune_lib.report_tables)")
    ct.add_argument("folders", nargs="+", metavar="FOLDER", help="the base set, then the sets to compare with it, "
                    "e.g. reports/clip/caption_probe/class reports/clip/caption_probe/brightness")
    for scores_parser in (sc, ct):
        scores_parser.add_argument("--method", default="lp", help="the head whose scores to read: lp (default), mlp "
                                   "or nmtune, where the set's task_scores.csv has them, or a difference of two "
                                   "seed by seed, e.g. nmtune-mlp")
    fd = sub.add_parser("findings", help="write reports/README.md and the README's generated blocks from the "
                        "committed tables (nmtune_lib.findings)")
    fd.add_argument("--check", action="store_true", help="regenerate in memory and fail, naming the first differing "
                    "line, if the committed files differ")
    ex = sub.add_parser("experiment", help="make one experiment of experiments.yaml: its sweep in its own run root, "
                        "its tables copied, the findings regenerated (nmtune_lib.experiments)")
    ex.add_argument("name", nargs="?", help="an experiment of experiments.yaml")
    ex.add_argument("--list", action="store_true", help="list the experiments with their grid and last measured time")
    ex.add_argument("--jobs", type=int, default=None, help="(default: the experiment's, 2)")
    rj = sub.add_parser("rejudge", help="re-judge committed report sets from their tables: p-values, Holm-adjusted "
                        "verdicts, per-ratio claims, robustness over applicable settings (nmtune_lib.rejudge)")
    rj.add_argument("folders", nargs="+", metavar="FOLDER", help="report sets holding claims.csv, e.g. reports/fine")
    mm = sub.add_parser("memorisation", help="flipped labels predicted by each noisy run's backbone vs the clean "
                        "backbone of its seed; writes <out>/<preset>/memorisation.csv (nmtune_lib.memorisation)")
    _report_arguments(mm)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if (getattr(args, "jobs", 1) or 1) < 1:
            raise ValueError(f"--jobs {args.jobs}: expected an integer >= 1")
        if args.command == "memorisation":
            from .memorisation import memorisation_frame, memorisation_table

            study = _study_from_args(args)
            frame = memorisation_frame(study)
            out = Path(args.out) / study.config.preset
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "memorisation.csv", frame.to_csv(index=False))
            print(memorisation_table(frame))
            return 0
        if args.command == "findings":
            from .findings import check_findings, write_findings

            if args.check:
                problems = check_findings()
                for problem in problems:
                    print(f"nmtune findings --check: {problem}", file=sys.stderr)
                return 1 if problems else 0
            print(f"findings: {write_findings()}")
            return 0
        if args.command == "experiment":
            from .experiments import experiment_table, load_experiments, run_experiment

            experiments = load_experiments()
            if args.list or not args.name:
                print(experiment_table(experiments))
                return 0
            if args.name not in experiments:
                raise ValueError(f"experiment {args.name!r} is not in experiments.yaml; accepted: "
                                 f"{', '.join(experiments)}")
            print(f"{args.name}: tables in {run_experiment(experiments[args.name], jobs=args.jobs)}")
            from .findings import write_findings

            print(f"findings: {write_findings()}")
            return 0
        if args.command == "rejudge":
            from .rejudge import rejudge

            for folder in args.folders:
                print(f"{folder}: {'re-judged' if rejudge(folder) is not None else 'already in the new form'}")
            return 0
        if args.command in ("timing", "effects", "scores", "contrast"):
            from .report_tables import folder_table

            print(folder_table(args.command, *args.folders, by_task=getattr(args, "by_task", False),
                               method=getattr(args, "method", "lp")))
            return 0
        if args.command == "compare":
            from .report_tables import compare_claims, to_markdown

            if args.labels and len(args.labels) != len(args.folders):
                raise ValueError(f"--labels {args.labels}: expected one label per folder ({len(args.folders)})")
            print(to_markdown(compare_claims(args.folders, args.protocols, args.labels)))
            return 0
        if args.command == "learning-curve":
            from .learning_curve import learning_curve

            config = StudyConfig.from_preset(args.preset, **parse_assignments(args.overrides),
                                             run_root=str(resolve_run_root(args.run_root)))
            csv = learning_curve(config, args.epochs, args.noise_ratios, args.seed, Path(args.out), jobs=args.jobs)
            print(f"learning curve: {csv} and {csv.with_suffix('.png')}")
            return 0
        if args.command == "sweep":
            _lift_grid_fields(args)
        study = _study_from_args(args)
        if args.command == "sweep":
            slurm = None
            if args.executor == "slurm":
                from .slurm import SlurmResources

                slurm = SlurmResources(partition=args.partition, cpus=args.cpus_per_job, gpus=args.gpus_per_job,
                                       mem_gb=args.mem_gb, time_min=args.time_min)
            return 1 if sweep(study, parse_assignments(args.overrides), jobs=args.jobs, summary=not args.no_summary,
                              extra=parse_assignments(args.params), wait=args.wait, slurm=slurm) else 0
        from .report import report

        index = report(study, Path(args.out), all_seeds=args.all_seeds)
        print(f"report: {index}")
        return 0
    except (ValueError, RunRootBusy) as err:
        print(f"nmtune: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
