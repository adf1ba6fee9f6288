"""Making one experiment of ``experiments.yaml`` (``nmtune experiment NAME``): its sweep in its own run root
(resumable: a rerun skips what is done), its tables copied to its report folder with the run root's path made
relative, its memorisation table and HTML pages where it asks for them. A ``learning-curve`` entry runs the
learning curve instead; a ``record`` is refused. The command regenerates the findings after it (``cli``)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..analysis.mechanism import mechanism_table
from ..analysis.memorisation import write_memorisation
from ..config import PROJECT_ROOT
from ..files import atomic_write_text
from ..pretraining.learning_curve import learning_curve
from ..run import Study
from .experiments import Experiment, load_experiments
from .report import relocate, report
from .sweep import sweep


def absolute(root: str) -> Path:
    """A run root of ``experiments.yaml`` (relative paths are taken from the project root)."""
    path = Path(root)
    return path if path.is_absolute() else PROJECT_ROOT / path


def make_experiment(experiment: Experiment, *, jobs: int | None = None) -> Path:
    """Make ``experiment`` (see the module docstring); returns its report folder."""
    if experiment.kind == "record":
        raise ValueError(f"{experiment.name} is a record of a set made elsewhere ({experiment.description}); it is "
                         "kept as committed and not re-made (make its set again with its preset's experiment)")
    folder = PROJECT_ROOT / experiment.report
    folder.mkdir(parents=True, exist_ok=True)
    config = experiment.config().replace(run_root=str(absolute(experiment.root)))
    if experiment.kind == "mechanism":
        others = load_experiments()
        sets = {name: pd.read_csv(PROJECT_ROOT / others[name].report / "runs.csv") for name in experiment.reads}
        atomic_write_text(folder / "mechanism.csv", mechanism_table(sets).to_csv(index=False))
        return folder
    if experiment.kind == "learning-curve":
        learning_curve(config, list(experiment.epochs), list(config.noise_ratios), config.seeds[0], folder,
                       jobs=jobs or experiment.jobs)
        return folder
    study = Study(config)
    failures = sweep(study, dict(experiment.settings), jobs=jobs or experiment.jobs)
    if failures:
        raise RuntimeError(f"{experiment.name}: {failures} run(s) failed (see above); nothing was copied")
    for name in experiment.tables:  # text tables, with the run root's path made relative
        if study.path(name).exists():
            atomic_write_text(folder / name, relocate(study.path(name).read_text(), (str(config.run_root),)))
    if experiment.memorisation:
        write_memorisation(study, folder)
    if experiment.html:
        report(study, folder.parent)
    return folder
