"""The unit of work: a ``Run`` is one (noise ratio, seed) of a study config; a ``Study`` is the grid of its runs.

Both own their folders and every artefact path in them; nothing else in the package formats or parses a run
directory's name. Layout (docs/CONTRACTS.md)::

    <run_root>/<preset>/                                         Study.dir: the summary (05) and its tables, figures
    <run_root>/<preset>/<dataset>/<noise_kind>-<ratio>/seed<k>/  Run.dir: one run's artefacts (01-04)

Notebooks build their run from their parameters with one call::

    run = Run.from_parameters(preset, noise_ratio=noise_ratio, seed=seed, run_root=run_root, overrides=overrides)
    config = run.config  # the validated StudyConfig, narrowed to this run's noise ratio and seed

and the library takes the run (``pretrain(run, ...)``, ``run_transfer(run, ...)``) instead of a config plus a
directory plus a ratio plus a seed.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import StudyConfig, ratio_label, ratio_percent
from .files import file_sha256
from .markers import read_marker
from .parameters import check_parameters

# --- artefacts of a run directory (the one home of these names) -------------------------------------------------
MANIFEST = "noise_manifest.json"  # 01: the noise, written last
NOISY_LABELS = "noisy_labels.npy"  # 01
CHECKPOINT = "checkpoint.pt"  # 02: after every epoch
BACKBONE = "backbone.pt"  # 02: final weights (objective=clip: the image tower)
CLIP_MODEL = "clip.pt"  # 02, objective=clip: both towers and the logit scale
CAPTIONS = "captions.json"  # 01, noise_kind=caption_swap: every training image's own caption
HISTORY_CSV, HISTORY_NC = "history.csv", "history.nc"  # 02: per-epoch metrics
PRETRAIN_SUMMARY = "pretrain.json"  # 02: written last
FEATURES = "features"  # 03/04: feature cache folder
SPECTRUM = "spectrum.nc"  # 03
TRANSFER = "transfer.nc"  # 04
RESULTS = {"spectrum": SPECTRUM, "transfer": TRANSFER, "history": HISTORY_NC}  # per-run result files by kind
WRITTEN_BY = {"spectrum": "03_spectrum", "transfer": "04_transfer", "history": "02_pretrain"}  # their notebooks
PROVENANCE = "provenance.json"  # the sweep, in the study folder: the code and packages every step ran with
CLAIMS = "claims.json"  # 05, in the study folder: the claims, the grid and the sha256 of every result read
TASK_EFFECTS = "noise_effects_by_task.csv"  # 05: each noise ratio against clean pre-training, task by task
TASK_SCORES = "task_scores.csv"  # 05: every head's per-task scores, every ratio and seed
# The summary's files (analysis.summary writes every one; notebook 05's marker covers every one), by table or figure.
SUMMARY_TABLES = {"claims": "claims.csv", "decomposition": "decomposition.csv", "sensitivity": "sensitivity.csv",
                  "robustness": "robustness.csv", "agreement": "resample_agreement.csv",
                  "noise_effects": "noise_effects.csv", "task_effects": TASK_EFFECTS, "task_scores": TASK_SCORES,
                  "runs": "runs.csv", "costs": "costs.csv", "heads": "heads.csv", "pairs": "pairs.csv"}
SUMMARY_FIGURES = {"decomposition": "claim4_decomposition.png", "sensitivity": "sensitivity.png",
                   "task_effects": "noise_effects_by_task.png", "accuracy": "accuracy_vs_noise.png",
                   "spectrum": "spectrum_vs_noise.png"}
# What each notebook of a run reads and writes (its completion marker is keyed by their content: markers.py).
STEPS = {
    "01_noise_injection": ((), (MANIFEST, NOISY_LABELS)),
    "02_pretrain": ((MANIFEST, NOISY_LABELS), (BACKBONE, PRETRAIN_SUMMARY, HISTORY_NC)),
    "03_spectrum": ((BACKBONE, PRETRAIN_SUMMARY), (SPECTRUM,)),
    "04_transfer": ((BACKBONE, PRETRAIN_SUMMARY), (TRANSFER,)),
}

_RUN_DIR = re.compile(r"(?P<kind>[a-z_]+)-(?P<ratio>\d+\.\d+)/seed(?P<seed>\d+)$")


def show_configuration(config: StudyConfig, where: str) -> None:
    """The resolved configuration in a folded ``<details>`` block (in a notebook; printed elsewhere), then ``where``:
    the run directory or study folder, one line."""
    import html

    text = config.to_yaml()
    try:
        from IPython.display import HTML, display  # optional: a notebook's kernel has it
    except ImportError:
        print(text)
    else:
        display(HTML(f"<details><summary>resolved configuration</summary><pre>{html.escape(text)}</pre></details>"))
    print(where)


def parse_overrides(overrides: str | dict[str, Any]) -> dict[str, Any]:
    """A notebook's ``overrides`` parameter (a JSON object, or a dict) as a dict; anything else raises."""
    if isinstance(overrides, dict):
        return dict(overrides)
    try:
        value = json.loads(overrides or "{}")
    except json.JSONDecodeError as err:
        raise ValueError(f"overrides={overrides!r} is not valid JSON ({err.msg}); expected a JSON object such as "
                         '\'{"epochs": 1}\'') from None
    if not isinstance(value, dict):
        raise ValueError(f"overrides={overrides!r}: expected a JSON object of StudyConfig fields, got "
                         f"{type(value).__name__}")
    return value


def config_from_parameters(preset: str, overrides: str | dict[str, Any] = "{}", **fields: Any) -> StudyConfig:
    """The config of a notebook's parameters: named fields (``None`` or ``""`` = the preset's) plus the JSON
    ``overrides``.

    A field given both ways raises, so there is one value for each field and no silent precedence."""
    extra = parse_overrides(overrides)
    fields = {k: v for k, v in fields.items() if v is not None and v != ""}
    both = sorted(set(fields) & set(extra))
    if both:
        raise ValueError(f"{', '.join(both)} given both as notebook parameter(s) and in overrides; give each once")
    return StudyConfig.from_preset(preset, **fields, **extra)


def _verify_against_marker(path: Path, marker: Path) -> None:
    """Raise if the completion marker of the notebook that wrote ``path`` records another sha256 for it (files of
    notebooks run by hand, without a marker, are not checked)."""
    recorded = (read_marker(marker) or {}).get("outputs", {}).get(path.name)
    if recorded and file_sha256(path) != recorded:
        raise ValueError(f"{path} is not the file {marker.stem} wrote (its sha256 differs from {marker.name}): it was "
                         "changed or damaged since; rerun the sweep, which recomputes it")


@dataclass(frozen=True)
class Study:
    """The grid of a config (noise ratios × seeds) and the preset folder that holds its summary."""

    config: StudyConfig

    @classmethod
    def from_parameters(cls, preset: str, overrides: str | dict[str, Any] = "{}", **fields: Any) -> "Study":
        return cls(config_from_parameters(preset, overrides, **fields))

    @property
    def dir(self) -> Path:
        return Path(self.config.run_root) / self.config.preset

    @property
    def runs_dir(self) -> Path:
        """The folder holding this dataset's and noise kind's run folders."""
        return self.dir / self.config.dataset

    def runs(self) -> list["Run"]:
        """Every run of the grid, noise ratio major."""
        return [Run.of(self.config, r, s) for r in self.config.noise_ratios for s in self.config.seeds]

    def result_paths(self, kind: str) -> list[Path]:
        """The per-run result files (``"spectrum"``, ``"transfer"``, ``"history"``) of the grid's runs, in grid order.

        A run without that file raises, naming the missing runs; so does a file whose sha256 is not the one its
        notebook's completion marker recorded (changed or damaged since it was written)."""
        paths = [run.result(kind) for run in self.runs()]
        missing = [p for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {len(paths)} run(s) of the grid lack {RESULTS[kind]}: "
                                    f"{', '.join(str(p.parent) for p in missing[:4])}"
                                    f"{' …' if len(missing) > 4 else ''}; run the sweep for this grid first "
                                    "(nmtune sweep)")
        for path in paths:
            _verify_against_marker(path, path.parent / f"{WRITTEN_BY[kind]}.done")
        return paths

    def finished_runs(self, kind: str) -> list["Run"]:
        """Runs of this preset, dataset and noise kind (any noise ratio or seed, in the grid or not) that have the
        result file ``kind`` on disk: what a per-run notebook can compare itself with so far."""
        found = []
        for path in sorted(self.runs_dir.glob(f"*/seed*/{RESULTS[kind]}")):
            run = Run.parse(self.config, path.parent)
            if run is not None:
                found.append(run)
        return found

    def path(self, name: str) -> Path:
        """A file of the summary: ``claims.json``, ``05_summary.ipynb``, ``timing.csv`` …"""
        return self.dir / name

    def summary_files(self) -> tuple[dict[str, Path], dict[str, Path]]:
        """(inputs, outputs) of the summary: the grid's spectrum and transfer files, named relative to the study
        folder (so that a moved run root keeps its names), and every table and figure it writes."""
        inputs = {p.relative_to(self.dir).as_posix(): p for run in self.runs() for p in (run.spectrum, run.transfer)}
        names = (CLAIMS, *SUMMARY_TABLES.values(), *SUMMARY_FIGURES.values())
        return inputs, {name: self.path(name) for name in names}

    @classmethod
    def from_notebook(cls, namespace: dict[str, Any], notebook: str) -> "Study":
        """The grid notebook 05's parameters describe: checked first (``parameters.check_parameters``: an unknown
        name or a wrong type stops here), then built; its configuration is shown folded."""
        values = check_parameters(namespace, notebook)
        fields = {k: values[k] for k in ("dataset", "noise_kind", "noise_ratios", "seeds", "run_root") if k in values}
        study = cls.from_parameters(values["preset"], overrides=values.get("overrides", "{}"), **fields)
        show_configuration(study.config, f"study folder: {study.dir}")
        return study


@dataclass(frozen=True)
class Run:
    """One (noise ratio, seed) of a study: ``config`` is narrowed to them (``noise_ratios=(r,)``, ``seeds=(s,)``)."""

    config: StudyConfig

    def __post_init__(self) -> None:
        if len(self.config.noise_ratios) != 1 or len(self.config.seeds) != 1:
            raise ValueError(f"a Run needs a config with one noise ratio and one seed, got noise_ratios="
                             f"{list(self.config.noise_ratios)} and seeds={list(self.config.seeds)}; use Run.of(config, "
                             "noise_ratio, seed)")

    @classmethod
    def of(cls, config: StudyConfig, noise_ratio: float, seed: int) -> "Run":
        return cls(config.replace(noise_ratios=(noise_ratio,), seeds=(seed,)))

    @classmethod
    def from_parameters(cls, preset: str, *, noise_ratio: float, seed: int, overrides: str | dict[str, Any] = "{}",
                        **fields: Any) -> "Run":
        """The run a notebook's parameters describe; validated once, by ``StudyConfig``."""
        return cls(config_from_parameters(preset, overrides, noise_ratios=[noise_ratio], seeds=[seed], **fields))

    @classmethod
    def from_notebook(cls, namespace: dict[str, Any], notebook: str) -> "Run":
        """The run a notebook's parameters describe: checked first (``parameters.check_parameters``: an unknown name
        or a wrong type stops here, before any data is read), then built; its configuration is shown folded."""
        values = check_parameters(namespace, notebook)
        fields = {k: values[k] for k in ("dataset", "noise_kind", "run_root", "device", "progress") if k in values}
        run = cls.from_parameters(values["preset"], noise_ratio=values["noise_ratio"], seed=values["seed"],
                                  overrides=values.get("overrides", "{}"), **fields)
        show_configuration(run.config, f"run directory: {run.dir}")
        return run

    @classmethod
    def parse(cls, config: StudyConfig, run_dir: str | Path) -> "Run | None":
        """The run whose directory is ``run_dir`` (same preset, dataset and noise kind as ``config``), else None."""
        match = _RUN_DIR.search(Path(run_dir).as_posix())
        if match is None or match["kind"] != config.noise_kind:
            return None
        run = cls.of(config, float(match["ratio"]), int(match["seed"]))
        return run if run.dir == Path(run_dir) else None

    # --- identity -------------------------------------------------------------------------------------------------
    @property
    def noise_ratio(self) -> float:
        return self.config.noise_ratios[0]

    @property
    def seed(self) -> int:
        return self.config.seeds[0]

    @property
    def study(self) -> Study:
        return Study(self.config)

    @property
    def name(self) -> str:
        return f"{self.config.noise_kind} {ratio_percent(self.noise_ratio)}, seed {self.seed}"

    def __str__(self) -> str:
        return str(self.dir)

    # --- paths --------------------------------------------------------------------------------------------------------
    @property
    def dir(self) -> Path:
        return self.study.runs_dir / f"{self.config.noise_kind}-{ratio_label(self.noise_ratio)}" / f"seed{self.seed}"

    manifest = property(lambda self: self.dir / MANIFEST)
    noisy_labels = property(lambda self: self.dir / NOISY_LABELS)
    checkpoint = property(lambda self: self.dir / CHECKPOINT)
    backbone = property(lambda self: self.dir / BACKBONE)
    history_csv = property(lambda self: self.dir / HISTORY_CSV)
    history_nc = property(lambda self: self.dir / HISTORY_NC)
    pretrain_summary = property(lambda self: self.dir / PRETRAIN_SUMMARY)
    features = property(lambda self: self.dir / FEATURES)
    spectrum = property(lambda self: self.dir / SPECTRUM)
    transfer = property(lambda self: self.dir / TRANSFER)

    def result(self, kind: str) -> Path:
        if kind not in RESULTS:
            raise ValueError(f"unknown result kind {kind!r}; accepted: {', '.join(RESULTS)}")
        return self.dir / RESULTS[kind]

    def notebook(self, name: str) -> Path:
        """The executed copy of notebook ``name`` (e.g. ``"02_pretrain"``) in this run."""
        return self.dir / f"{name}.ipynb"

    def step_files(self, name: str) -> tuple[dict[str, Path], dict[str, Path]]:
        """(inputs, outputs) of the run's notebook ``name``, file name → path (``STEPS``)."""
        inputs, outputs = STEPS[name]
        return {f: self.dir / f for f in inputs}, {f: self.dir / f for f in outputs}
