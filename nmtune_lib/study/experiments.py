"""Experiments declared once: every report set, rerun and probe of the study is an entry of ``experiments.yaml``
(its fields are documented at the top of that file), and ``nmtune experiment NAME`` makes it.

Making one: a sweep of its preset, grid and settings in a run root of its own (resumable: a rerun skips what is
done), its tables copied to its report folder, its HTML pages rendered (``html``), its memorisation table written
(``memorisation``), then the findings regenerated (``findings.write_findings``). A ``learning-curve`` entry runs
``nmtune learning-curve`` instead, a ``mechanism`` entry the mechanism analysis over the ``runs.csv`` of the
experiments it ``reads``; a ``record`` is a set made elsewhere and kept as committed, which nothing re-makes.
Every entry is checked when the file is read, before anything runs: an unknown field, kind, preset or config
setting is named with the accepted ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..analysis.tables import seconds_text
from ..config import PRESETS, PROJECT_ROOT, StudyConfig

EXPERIMENTS_FILE = PROJECT_ROOT / "experiments.yaml"
KINDS = ("sweep", "learning-curve", "mechanism", "record")
SUMMARY_TABLES = ("config.yaml", "provenance.json", "timing.csv", "claims.csv", "decomposition.csv",
                  "noise_effects.csv", "noise_effects_by_task.csv", "task_scores.csv", "sensitivity.csv",
                  "robustness.csv", "resample_agreement.csv", "runs.csv", "costs.csv", "heads.csv",
                  "pairs.csv")  # what notebook 05 and the sweep write to the study folder
MAIN_SETS = ("default", "converged", "asymmetric", "instance", "fine", "clip")  # the report sets of the verdict matrix
FIELDS = ("question", "description", "kind", "preset", "noise_ratios", "seeds", "settings", "jobs", "run_root",
          "report", "tables", "html", "memorisation", "epochs", "reads")


@dataclass(frozen=True)
class Experiment:
    """One entry of ``experiments.yaml``."""

    name: str
    question: str
    report: str
    preset: str = "default"
    kind: str = "sweep"
    description: str = ""
    noise_ratios: tuple[float, ...] = ()
    seeds: tuple[int, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)
    jobs: int = 2
    run_root: str = ""
    tables: tuple[str, ...] = SUMMARY_TABLES
    html: bool = False
    memorisation: bool = False
    epochs: tuple[int, ...] = ()
    reads: tuple[str, ...] = ()  # mechanism: the experiments whose runs.csv it reads

    @property
    def root(self) -> str:
        """The run root (relative paths are taken from the project root)."""
        return self.run_root or f"runs/experiments/{self.name}"

    def config(self) -> StudyConfig:
        """The resolved configuration of its sweep (validated: a bad setting raises here)."""
        grid = {k: v for k, v in (("noise_ratios", self.noise_ratios), ("seeds", self.seeds)) if v}
        return StudyConfig.from_preset(self.preset, **grid, **self.settings, run_root=self.root)

    def command(self) -> str:
        return f"nmtune experiment {self.name}"

    def grid(self) -> str:
        """``"5 ratios × 5 seeds"`` (the grid it sweeps)."""
        config = self.config()
        return f"{len(config.noise_ratios)} ratios × {len(config.seeds)} seeds"

    def measured_seconds(self) -> float | None:
        """The wall clock of the sweeps that made its committed tables (its ``timing.csv``' total), if any."""
        import pandas as pd

        path = PROJECT_ROOT / self.report / "timing.csv"
        if not path.is_file():
            return None
        rows = pd.read_csv(path).set_index("stage")["seconds"]
        return float(rows["total"]) if "total" in rows else None


def _check(name: str, entry: dict[str, Any]) -> Experiment:
    bad = sorted(set(entry) - set(FIELDS))
    if bad:
        raise ValueError(f"experiments.yaml, {name}: unknown field(s) {bad}; accepted: {', '.join(FIELDS)}")
    for required in ("question", "report"):
        if not entry.get(required):
            raise ValueError(f"experiments.yaml, {name}: '{required}' is missing")
    if entry.get("kind", "sweep") not in KINDS:
        raise ValueError(f"experiments.yaml, {name}: kind {entry['kind']!r}; accepted: {', '.join(KINDS)}")
    if entry.get("preset", "default") not in PRESETS:
        raise ValueError(f"experiments.yaml, {name}: preset {entry['preset']!r}; accepted: {', '.join(PRESETS)}")
    tuples = {k: tuple(entry[k]) for k in ("noise_ratios", "seeds", "tables", "epochs", "reads") if k in entry}
    experiment = Experiment(name=name, **{**entry, **tuples})
    try:
        experiment.config()
    except (TypeError, ValueError) as err:
        raise ValueError(f"experiments.yaml, {name}: {err}") from None
    return experiment


def load_experiments(path: Path = EXPERIMENTS_FILE) -> dict[str, Experiment]:
    """Every entry of ``experiments.yaml``, checked (``ValueError`` naming the entry and what is wrong)."""
    entries = yaml.safe_load(Path(path).read_text())["experiments"]
    return {name: _check(name, dict(entry)) for name, entry in entries.items()}


def experiment_table(experiments: dict[str, Experiment]) -> str:
    """``nmtune experiment --list``: name, kind, grid, report folder and the last measured wall clock."""
    rows = ["| experiment | kind | grid | report | last measured |", "|---|---|---|---|---|"]
    for e in experiments.values():
        seconds = e.measured_seconds()
        rows.append(f"| {e.name} | {e.kind} | {e.grid() if e.kind == 'sweep' else '—'} | {e.report} | "
                    f"{seconds_text(seconds) if seconds and e.kind == 'sweep' else '—'} |")
    return "\n".join(rows)
