"""The ``nmtune`` command line: one small function per subcommand (``COMMANDS``), each parser built by its own
``_<command>_parser``. Errors a user can fix (a bad value, a busy run root) print ``nmtune: error: …`` and exit 2.

Each command imports what it runs when it runs (function-local imports, each deferring torch, papermill or xarray),
so that ``nmtune --help`` and the table commands start in a fraction of a second.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from ..analysis.rejudge import rejudge
from ..analysis.tables import compare_claims, folder_table, to_markdown
from ..config import DATASETS, NOISE_KINDS, PRESETS, PROJECT_ROOT, StudyConfig, parse_assignments, resolve_run_root
from ..pretraining.learning_curve import learning_curve
from ..run import Study
from .experiments import experiment_table, load_experiments
from .findings import check_findings, write_findings
from .lock import RunRootBusy
from .report import refinish_pages, report
from .report_index import write_indexes
from .slurm import SlurmResources

GRID_FIELDS = ("dataset", "noise_kind", "noise_ratios", "seeds")  # config fields that have a sweep flag of their own
TABLES = ("timing", "effects", "scores", "contrast")  # analysis.tables.folder_table's commands


# --- arguments shared by several commands --------------------------------------------------------------------------

def _preset(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="default", choices=list(PRESETS), help="(default: %(default)s)")


def _set(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a StudyConfig field, e.g. --set {example}")


def _run_root_and_out(parser: argparse.ArgumentParser) -> None:
    """--preset, --run-root and --out of the commands that read a finished sweep (report, memorisation)."""
    _preset(parser)
    parser.add_argument("--run-root", default="", help="the sweep's run root (default: $NMTUNE_RUNS, else <project "
                        "root>/runs)")
    parser.add_argument("--out", default=str(PROJECT_ROOT / "reports"), help="report folder (default: %(default)s)")


def lift_grid_fields(args: argparse.Namespace) -> None:
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


def study_from_args(args: argparse.Namespace) -> Study:
    """The Study of ``--preset``, the grid flags, ``--run-root`` and ``--set`` (a managed field in ``--set`` is
    refused, naming the flag to use)."""
    from .sweep import refuse_managed  # torch: the sweep's preflight imports the stages

    grid: dict[str, Any] = {"run_root": args.run_root}
    grid.update({f: getattr(args, f) for f in GRID_FIELDS if getattr(args, f, None)})
    overrides = parse_assignments(getattr(args, "overrides", []))
    refuse_managed(overrides)
    # the overrides too: fields that must agree with a grid field (objective=clip with noise_kind=caption_swap)
    return Study(StudyConfig.from_preset(args.preset, **grid, **overrides))


# --- the parsers ---------------------------------------------------------------------------------------------------

def _sweep_parser(sub) -> None:
    sw = sub.add_parser("sweep", help="execute notebooks 01-04 per (noise ratio, seed), then 05")
    _preset(sw)
    sw.add_argument("--noise-ratios", nargs="+", type=float, help="default: the preset's")
    sw.add_argument("--seeds", nargs="+", type=int, help="default: the preset's")
    sw.add_argument("--noise-kind", choices=list(NOISE_KINDS), help="default: the preset's")
    sw.add_argument("--dataset", choices=list(DATASETS), help="pre-training dataset; default: the preset's")
    sw.add_argument("--jobs", type=int, default=1,
                    help="(ratio, seed) runs in parallel processes (default: %(default)s)")
    sw.add_argument("--run-root", default="", help="root of the run directories (default: $NMTUNE_RUNS, else "
                    "<project root>/runs; a relative path is taken from the project root)")
    _set(sw, "epochs=3 (in every notebook)")
    sw.add_argument("--param", dest="params", action="append", default=[], metavar="NAME=VALUE",
                    help="a notebook parameter (e.g. device=cpu), passed to the notebooks that declare it")
    sw.add_argument("--no-summary", action="store_true", help="skip notebook 05")
    sw.add_argument("--dry-run", action="store_true", help="say, per run and notebook, whether it is done or would "
                    "run and why (what changed in its key); run nothing")
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


def _report_parsers(sub) -> None:
    rp = sub.add_parser("report", help="render executed notebooks to HTML; write every set's index")
    _run_root_and_out(rp)
    rp.add_argument("--all-seeds", action="store_true", help="render every seed, not only seed 0")
    rp.add_argument("--relocate", action="store_true", help="re-finish every committed page and table under --out "
                    "(titles, links, folded configuration, no absolute path) and rewrite the indexes; render nothing")
    mm = sub.add_parser("memorisation", help="flipped labels predicted by each noisy run's backbone vs the clean "
                        "backbone of its seed; writes <out>/<preset>/memorisation.csv (analysis.memorisation)")
    _run_root_and_out(mm)
    lc = sub.add_parser("learning-curve", help="pre-train one seed for several schedule lengths at a clean and a "
                        "noisy ratio; write learning_curve.csv and .png (pretraining.learning_curve)")
    _preset(lc)
    lc.add_argument("--epochs", nargs="+", type=int, default=[2, 5, 10, 20, 40],
                    help="schedule lengths (default: %(default)s)")
    lc.add_argument("--noise-ratios", nargs="+", type=float, default=[0.0, 0.3], help="(default: %(default)s)")
    lc.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    lc.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default: %(default)s)")
    lc.add_argument("--run-root", default="runs/learning_curve", help="(default: %(default)s, below the project "
                    "root; one folder per schedule length)")
    _set(lc, "train_subset=2000")
    lc.add_argument("--out", default=str(PROJECT_ROOT / "reports" / "converged"), help="(default: %(default)s)")


def _table_parsers(sub) -> None:
    cp = sub.add_parser("compare", help="the paper's claims side by side across report sets (analysis.tables)")
    cp.add_argument("folders", nargs="+", help="report sets holding claims.csv, e.g. reports/default reports/clip")
    cp.add_argument("--labels", nargs="+", help="column labels, one per folder (default: the folders' names)")
    cp.add_argument("--protocols", nargs="+", default=["reference", "matched"], help="(default: %(default)s)")
    cp.add_argument("--raw", action="store_true", help="the raw verdicts instead of the Holm-adjusted ones")
    helps = {"timing": ("a report set's stage times", "a report set holding timing.csv and config.yaml"),
             "effects": ("each noise ratio against clean pre-training", "report sets holding noise_effects.csv"),
             "scores": ("per-task scores at every noise ratio", "report sets holding task_scores.csv"),
             "contrast": ("report sets against a base set, seed by seed", "the base set, then the sets to compare")}
    for name, (what, folders) in helps.items():
        p = sub.add_parser(name, help=f"{what}, as a Markdown table (analysis.tables)")
        p.add_argument("folders", nargs=1 if name == "timing" else "+", metavar="FOLDER", help=folders)
        if name == "effects":
            p.add_argument("--by-task", action="store_true", help="a row per task (noise_effects_by_task.csv)")
        if name in ("scores", "contrast"):
            p.add_argument("--method", default="lp", help="the head whose scores to read (lp, mlp, nmtune, …), or a "
                           "difference of two seed by seed, e.g. nmtune-mlp")


def _study_parsers(sub) -> None:
    fd = sub.add_parser("findings", help="write reports/README.md and the README's generated blocks from the "
                        "committed tables (study.findings)")
    fd.add_argument("--check", action="store_true", help="regenerate in memory and fail, naming the first differing "
                    "line, if the committed files differ")
    ex = sub.add_parser("experiment", help="make one experiment of experiments.yaml: its sweep in its own run root, "
                        "its tables copied, the findings regenerated (study.make)")
    ex.add_argument("name", nargs="?", help="an experiment of experiments.yaml")
    ex.add_argument("--list", action="store_true", help="list the experiments with their grid and last measured time")
    ex.add_argument("--jobs", type=int, default=None, help="(default: the experiment's, 2)")
    rj = sub.add_parser("rejudge", help="re-judge committed report sets from their tables: p-values, adjusted "
                        "verdicts, per-ratio claims, robustness over applicable settings (analysis.rejudge)")
    rj.add_argument("folders", nargs="+", metavar="FOLDER", help="report sets holding claims.csv, e.g. reports/fine")


def build_parser() -> argparse.ArgumentParser:
    """The ``nmtune`` command line (``main`` runs it)."""
    parser = argparse.ArgumentParser(prog="nmtune", description="the nmtune-study: sweeps, reports, experiments and "
                                     "findings of label noise in pre-training and NMTune")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_sweep_parser, _report_parsers, _table_parsers, _study_parsers):
        add(sub)
    return parser


# --- the commands --------------------------------------------------------------------------------------------------

def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import sweep  # torch: deferred (nmtune --help and the tables need none)

    lift_grid_fields(args)
    study = study_from_args(args)
    slurm = None if args.executor == "local" else SlurmResources(
        partition=args.partition, cpus=args.cpus_per_job, gpus=args.gpus_per_job, mem_gb=args.mem_gb,
        time_min=args.time_min)
    return 1 if sweep(study, parse_assignments(args.overrides), jobs=args.jobs, summary=not args.no_summary,
                      extra=parse_assignments(args.params), wait=args.wait, slurm=slurm, dry_run=args.dry_run) else 0


def cmd_report(args: argparse.Namespace) -> int:
    if args.relocate:
        changed = refinish_pages(Path(args.out))
        print(f"report: {len(changed)} file(s) re-finished; index: {write_indexes(Path(args.out))}")
        return 0
    print(f"report: {report(study_from_args(args), Path(args.out), all_seeds=args.all_seeds)}")
    return 0


def cmd_memorisation(args: argparse.Namespace) -> int:
    # torch: deferred (nmtune --help and the tables need none)
    from ..analysis.memorisation import memorisation_frame, memorisation_table, write_memorisation

    study = study_from_args(args)
    write_memorisation(study, Path(args.out) / study.config.preset)
    print(memorisation_table(memorisation_frame(study)))
    return 0


def cmd_learning_curve(args: argparse.Namespace) -> int:
    config = StudyConfig.from_preset(args.preset, **parse_assignments(args.overrides),
                                     run_root=str(resolve_run_root(args.run_root)))
    csv = learning_curve(config, args.epochs, args.noise_ratios, args.seed, Path(args.out), jobs=args.jobs)
    print(f"learning curve: {csv} and {csv.with_suffix('.png')}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    if args.labels and len(args.labels) != len(args.folders):
        raise ValueError(f"--labels {args.labels}: expected one label per folder ({len(args.folders)})")
    print(to_markdown(compare_claims(args.folders, args.protocols, args.labels, adjusted=not args.raw)))
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    print(folder_table(args.command, *args.folders, by_task=getattr(args, "by_task", False),
                       method=getattr(args, "method", "lp")))
    return 0


def cmd_findings(args: argparse.Namespace) -> int:
    if not args.check:
        print(f"findings: {write_findings()}")
        return 0
    problems = check_findings()
    for problem in problems:
        print(f"nmtune findings --check: {problem}", file=sys.stderr)
    return 1 if problems else 0


def cmd_experiment(args: argparse.Namespace) -> int:
    experiments = load_experiments()
    if args.list or not args.name:
        print(experiment_table(experiments))
        return 0
    if args.name not in experiments:
        raise ValueError(f"experiment {args.name!r} is not in experiments.yaml; accepted: {', '.join(experiments)}")
    from .make import make_experiment  # torch: deferred (nmtune --help and the tables need none)

    print(f"{args.name}: tables in {make_experiment(experiments[args.name], jobs=args.jobs)}")
    print(f"findings: {write_findings()}")
    return 0


def cmd_rejudge(args: argparse.Namespace) -> int:
    for folder in args.folders:
        print(f"{folder}: {'re-judged' if rejudge(folder) is not None else 'already in the new form'}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "sweep": cmd_sweep, "report": cmd_report, "memorisation": cmd_memorisation, "learning-curve": cmd_learning_curve,
    "compare": cmd_compare, **dict.fromkeys(TABLES, cmd_table), "findings": cmd_findings,
    "experiment": cmd_experiment, "rejudge": cmd_rejudge}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "jobs", None) is not None and args.jobs < 1:
            raise ValueError(f"--jobs {args.jobs}: expected an integer >= 1")
        return COMMANDS[args.command](args)
    except (ValueError, RunRootBusy) as err:
        print(f"nmtune: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
