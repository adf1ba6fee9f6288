"""Sweeps on a Slurm cluster (``nmtune sweep --executor slurm``).

Every unfinished (noise ratio, seed) chain of notebooks 01–04 becomes one task of a Slurm job array, submitted
through submitit (the same ``chains.run_chain`` a local worker runs, pickled with its parameters); the sweep waits
for the tasks, then runs the summary (notebook 05) itself. A chain whose four ``.done`` markers are current is not
submitted again, and a task that is requeued or resubmitted resumes where its notebooks stopped (markers,
checkpoints, caches), so a rerun after a failure or a cancelled job redoes only what is missing. submitit's files
(the pickled task, its stdout and stderr) go to ``<study dir>/slurm/<job id>/``.

The cluster must share the project's folder and Python environment with the submitting machine (the usual setup:
a shared file system). ``slurm/cluster.sh`` (``make slurm``) starts a real one-node cluster on this machine.
"""
from __future__ import annotations

import math
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from .chains import RUN_NOTEBOOKS, chain_done, run_chain, tally


@dataclass(frozen=True)
class SlurmResources:
    """What each task of the job array asks for. ``partition`` "" = the cluster's default partition; ``cpus`` also
    sets the task's torch threads (a local sweep with the same threads per run gives the same numbers)."""

    partition: str = ""
    cpus: int = 1
    gpus: int = 0
    mem_gb: float = 8.0
    time_min: int = 240

    def __post_init__(self) -> None:
        for name, low in (("cpus", 1), ("gpus", 0), ("time_min", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"slurm {name}={value!r}; accepted: an integer >= {low}")
        if not (isinstance(self.mem_gb, (int, float)) and math.isfinite(self.mem_gb) and self.mem_gb > 0):
            raise ValueError(f"slurm mem_gb={self.mem_gb!r}; accepted: a number of GB > 0")


def check_cluster() -> None:
    """Raise ``ValueError`` saying how to get a cluster when ``sbatch`` is missing or the controller does not
    answer: before anything is submitted or written."""
    if shutil.which("sbatch") is None or shutil.which("sacct") is None:
        raise ValueError("--executor slurm needs Slurm's sbatch and sacct on PATH; on a machine without a cluster, "
                         "'make slurm' starts a one-node cluster here (as root)")
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    if "UP" not in ping.stdout:
        raise ValueError(f"the Slurm controller does not answer (scontrol ping: {ping.stdout.strip() or ping.stderr.strip()}); "
                         "start it, e.g. 'make slurm' for the one-node cluster of this repository")


def run_chains_on_slurm(study, runs: Sequence[Any], resources: SlurmResources, *, log=print
                        ) -> tuple[dict[str, float], dict[str, int], list[str]]:
    """Submit the unfinished chains of ``runs`` (``chains.RunSpec``) as one job array, wait for every task and
    return (seconds per notebook, skips per notebook, failure messages), as the local workers do."""
    import submitit  # optional: only a Slurm sweep needs it

    pending = [spec for spec in runs if not chain_done(spec)]
    skipped = {name: len(runs) - len(pending) for name in RUN_NOTEBOOKS} if len(pending) < len(runs) else {}
    timings: dict[str, float] = {}
    failures: list[str] = []
    if not pending:
        log(f"slurm: all {len(runs)} runs are complete; nothing submitted")
        return timings, skipped, failures
    folder = study.dir / "slurm"
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    executor.update_parameters(name=f"nmtune-{study.config.preset}", timeout_min=resources.time_min,
                               cpus_per_task=resources.cpus, mem_gb=resources.mem_gb, tasks_per_node=1, nodes=1,
                               slurm_array_parallelism=len(pending),
                               **({"gpus_per_node": resources.gpus} if resources.gpus else {}),
                               **({"slurm_partition": resources.partition} if resources.partition else {}))
    with executor.batch():
        jobs = [executor.submit(run_chain, spec, resources.cpus) for spec in pending]
    log(f"slurm: submitted job array {jobs[0].job_id.split('_')[0]} with {len(jobs)} task(s) "
        f"({len(runs) - len(pending)} run(s) already complete); logs in {folder}")
    with tqdm(total=len(jobs), desc=f"slurm {study.config.preset}", unit="run", file=sys.stdout) as bar:
        for job, spec in zip(jobs, pending):
            try:
                tally(job.result(), timings, skipped, failures, where=f"slurm job {job.job_id}: ")
            except Exception as err:  # the task failed or was cancelled, timed out, preempted
                failures.append(f"slurm job {job.job_id} ({spec.run.dir}) did not finish: "
                                f"{str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}; "
                                f"see {Path(str(job.paths.stderr))}")
            bar.update(1)
    return timings, skipped, failures
