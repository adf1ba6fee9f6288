"""The study as one command: papermill runs per (noise ratio, seed), the summary, and HTML reports (``nmtune``).

``nmtune sweep`` executes notebooks 01–04 for every (noise ratio, seed) of a preset into the run directories, then
notebook 05 once for the grid. Completion of each notebook is marked by ``<NN_name>.done``, keyed by content
(markers.py), so a rerun after a crash or ``kill -9`` skips finished work and redoes stale work; the notebooks' own
steps resume from their checkpoints and caches, so the results equal those of an uninterrupted sweep. The workers
and their kernels die with the sweep, and one sweep at a time holds a run root (lock.py). ``nmtune report``
(report.py) renders the executed notebooks to HTML.
"""
from __future__ import annotations

import concurrent.futures as futures
import json
import os
import sys
import time
from typing import Any, Callable, Iterable

from ..config import TASK_SUITES, StudyConfig
from ..cores import usable_cores
from ..data.datasets import pretraining_data
from ..files import atomic_write_json, atomic_write_text
from ..markers import read_marker
from ..parameters import declared_parameters
from ..pretraining.models import check_model, feature_width, resolve_device
from ..pretraining.pretrained import check_pretrained
from ..run import PROVENANCE, Study
from ..transfer.tasks import missing_data
from .chains import (RUN_NOTEBOOKS, RunSpec, SUMMARY_NOTEBOOK, chain_status, execute, kill_descendants, pool,
                     run_chain, step_status, tally)
from .keys import code_key
from .lock import run_root_lock
from .slurm import check_cluster, run_chains_on_slurm

MANAGED = ("preset", "dataset", "noise_ratio", "noise_ratios", "noise_kind", "seed", "seeds", "run_root", "progress",
           "overrides")


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


# --- the sweep --------------------------------------------------------------------------------------------------

def preflight(config: StudyConfig, extra: dict[str, Any]) -> None:
    """Checks that need no run folder, run before any is written: the device exists, the model is a timm model
    whose feature width admits ``svd_top_k``, and the pre-training data is readable where the config says (a damaged
    or missing dataset file is named), and so are the user's pretrained weights and the task suite's data."""
    device = extra.get("device", config.device)
    suite = TASK_SUITES[config.task_suite]
    if config.ablation and config.ablation_task not in suite:
        raise ValueError(f"config ablation_task={config.ablation_task!r}: expected a task of task_suite "
                         f"{config.task_suite!r} ({', '.join(suite)}), or ablation=false")
    check_model(config.model)
    width = feature_width(config.model, small_stem=config.small_stem)
    bound = min(width, 2 * config.head_batch_size)
    if "nmtune" in config.methods and config.svd_top_k > bound:
        raise ValueError(f"config svd_top_k={config.svd_top_k}: expected at most {bound}, the singular values of a "
                         f"step's 2B×D matrix z (head_batch_size={config.head_batch_size}, D={width} of "
                         f"{config.model})")
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


def validate(study: Study, overrides: dict[str, Any], extra: dict[str, Any] | None = None
             ) -> tuple[StudyConfig, dict[str, Any], list[RunSpec]]:
    """Every check the sweep makes before anything is written: the overrides resolve to a valid configuration,
    every notebook parameter is declared, and ``preflight`` passes. Returns (resolved config, the overrides that
    differ from the preset, every run's chain)."""
    resolved = StudyConfig.from_preset(study.config.preset, **{**_grid_fields(study.config), **overrides})
    overrides = effective_overrides(resolved, overrides)
    runs = plan(study, overrides, extra)
    preflight(resolved, extra or {})
    return resolved, overrides, runs


def sweep(study: Study, overrides: dict[str, Any], *, jobs: int = 1, summary: bool = True,
          extra: dict[str, Any] | None = None, wait: bool = False, slurm=None, dry_run: bool = False) -> int:
    """Run every chain (``jobs`` worker processes, cores split between them; or, given ``slurm`` resources
    (``slurm.SlurmResources``), one Slurm job array), then the summary; return the number of failed runs. Holds the
    run root's lock throughout (a second sweep there is refused, or waits with ``wait``)."""
    config = study.config
    resolved, overrides, runs = validate(study, overrides, extra)
    if dry_run:
        return dry_run_report(study, runs, summary_parameters(study, overrides), resolved, summary=summary)
    if slurm is not None:
        check_cluster()
    with run_root_lock(config.run_root, wait=wait):
        start = time.time()
        if slurm is None:  # the invocation's time is logged after every finished run: a killed sweep's counts too
            timings, skipped, failures = run_chains(study, runs, jobs, on_run=lambda ran: record_timing(
                study, resolved, jobs=jobs, started=start, ran=ran))
        else:
            timings, skipped, failures = run_chains_on_slurm(study, runs, slurm)
        if summary and not failures:
            try:
                done = execute(SUMMARY_NOTEBOOK, study.dir, summary_parameters(study, overrides),
                               study.summary_files(), resolved)
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


def dry_run_report(study: Study, runs: list[RunSpec], summary_params: dict[str, Any], resolved: StudyConfig, *,
                   summary: bool = True, log=print) -> int:
    """``nmtune sweep --dry-run``: per run and notebook, done or would run and why (``chains.chain_status``), then
    the summary, as ``snakemake -n`` and ``dvc status`` do; runs nothing, writes nothing. Returns 0."""
    counts: dict[str, int] = {}
    for spec in runs:
        where = spec.run.dir.relative_to(study.runs_dir).as_posix()
        for name, why in chain_status(spec).items():
            counts[name] = counts.get(name, 0) + bool(why)
            log(f"{where:<28} {name:<20} {'would run: ' + '; '.join(why) if why else 'done'}")
    if summary:
        why = step_status(SUMMARY_NOTEBOOK, study.dir, summary_params, study.summary_files(), resolved)[2]
        if any(counts.values()):
            why = ["runs of its grid rerun", *why]
        counts[SUMMARY_NOTEBOOK] = int(bool(why))
        log(f"{'(summary)':<28} {SUMMARY_NOTEBOOK:<20} {'would run: ' + '; '.join(why) if why else 'done'}")
    log("would run: " + ", ".join(f"{name} ×{n}" for name, n in counts.items()))
    return 0


def run_chains(study: Study, runs: list[RunSpec], jobs: int, on_run: Callable[[dict[str, float]], None] | None = None
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
    workers = pool(jobs)
    try:
        for future in futures.as_completed([workers.submit(run_chain, run, threads) for run in runs]):
            result = future.result()
            bar.update(1)
            if tally(result, timings, skipped, failures):
                tqdm.write(f"FAILED {result['run_dir']}: {result['error']}", file=sys.stdout)
            if on_run is not None and result["seconds"]:
                on_run(dict(timings))
    except BaseException:  # Ctrl-C or a crash of the sweep itself: its workers and their kernels end with it
        kill_descendants()
        raise
    finally:
        bar.close()
        workers.shutdown(cancel_futures=True)
    return timings, skipped, failures


def record_timing(study: Study, resolved: StudyConfig, *, jobs: int | str, started: float, ran: dict[str, float]
                  ) -> None:
    """Write the study folder's ``config.yaml`` (the resolved config), ``provenance.json`` (the code and package
    versions of every step: ``keys.code_key``) and ``timing.csv``: per notebook the seconds
    its executions took, summed over the grid's runs (from their markers, so resumed work counts once), and a
    ``total`` row with the wall-clock seconds of the sweep invocations that ran notebooks (``sweeps.json`` keeps one
    entry per invocation: start, wall time, jobs, cores, seconds per notebook). Called again by the same invocation
    (same ``started``), it updates that invocation's entry."""
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
    atomic_write_json(study.path(PROVENANCE), {name: code_key(name) for name in (*RUN_NOTEBOOKS, SUMMARY_NOTEBOOK)})


def _grid_fields(config: StudyConfig) -> dict[str, Any]:
    return dict(dataset=config.dataset, noise_ratios=config.noise_ratios, seeds=config.seeds,
                noise_kind=config.noise_kind, run_root=config.run_root)


