"""Notebook 05's work, done by the library: every table and figure of a grid's summary, computed from its runs and
written into the study folder under the names ``run.SUMMARY_FILES`` owns (atomically; the completion marker of 05
covers every one of them). The notebook then only displays what ``summarise`` returns.

A table that has nothing to say for this grid (no decomposition without the MLP and NMTune heads, no sensitivity
without its heads, no per-ratio effects without a clean run) is written with its header alone, and its figure says
why there is none, so that the set of files is the same for every grid and a stale file never survives.
"""
from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import pandas as pd
import xarray as xr

from ..config import ratio_percent
from ..files import atomic_write, atomic_write_json, atomic_write_text
from ..run import CLAIMS, SUMMARY_FIGURES, SUMMARY_TABLES, Study
from . import plotting
from .aggregate import (DECOMPOSED, ablation_table, cost_frame, decomposition, effect_text, load_results,
                        means_table, noise_effects, run_table, score_levels, sensitivity, tuned_spectrum_table)
from .claims import Claim, claims_document, claims_table, judge_all, resample_agreement, robustness_table
from .heads import heads_table, pairs_table


@dataclass
class Summary:
    """What notebook 05 shows: the runs combined, the claims and every table written beside them."""

    study: Study
    transfer: xr.Dataset
    spectrum: xr.Dataset
    claims: list[Claim]  # every setting and protocol (the base setting's are claims.csv)
    tables: dict[str, pd.DataFrame]  # SUMMARY_TABLES' keys

    @property
    def heads(self) -> list[str]:
        """The main heads these runs trained (``methods``)."""
        return [m for m in (*DECOMPOSED, "ft") if m in self.transfer["method"].values]

    @property
    def reference(self) -> xr.Dataset:
        return self.transfer.sel(setting="base", protocol=str(self.transfer["protocol"].values[0]))

    def grid_text(self) -> str:
        """``"5 noise ratios × 5 seeds: 0%, 5%, …; protocols …; settings …"``."""
        t = self.transfer
        return (f"{t.sizes['noise_ratio']} noise ratios × {t.sizes['seed']} seeds: "
                f"{', '.join(ratio_percent(r) for r in t['noise_ratio'].values)}; protocols "
                f"{', '.join(t['protocol'].values)}; settings {', '.join(t['setting'].values)}")

    def view(self, key: str):
        """A table for reading (``claims``, ``decomposition``, ``sensitivity``, ``robustness``, ``agreement``,
        ``noise_effects``, ``means``, ``ablation``, ``tuned_spectrum``), or a sentence where there is none."""
        return VIEWS[key](self)

    def figure(self, key: str):
        """The figure ``key`` of ``run.SUMMARY_FIGURES`` as written, for display in a notebook."""
        from IPython.display import Image  # optional: a notebook's kernel has it

        return Image(filename=str(self.study.path(SUMMARY_FIGURES[key])))


def _effects(frame: pd.DataFrame, index: list[str], columns: str, empty: str):
    if frame.empty:
        return empty
    return frame.assign(effect=effect_text(frame)).pivot_table(index=index, columns=columns, values="effect",
                                                               aggfunc="first", sort=False)


def _claims_view(s: Summary):
    from .claims import claim_order

    table = s.tables["claims"][["protocol", "id", "form", "effect", "verdict", "p_value", "verdict_adjusted"]]
    table = table.iloc[sorted(range(len(table)), key=lambda i: (table["protocol"].iloc[i] != "reference",
                                                                claim_order(table["id"].iloc[i])))]
    colour = {"supported": "background-color:#e6f4ea", "contradicted": "background-color:#fce8e6",
              "inconclusive": "background-color:#fef7e0"}
    return (table.style.hide(axis="index").map(lambda v: colour.get(v, ""), subset=["verdict", "verdict_adjusted"])
            .format({"p_value": "{:.2g}"}))


VIEWS = {
    "claims": _claims_view,
    "decomposition": lambda s: _effects(s.tables["decomposition"], ["protocol", "mean_of", "noise_ratio"], "term",
                                        f"no decomposition: it compares {', '.join(DECOMPOSED)}; these runs "
                                        f"trained {', '.join(s.heads)}"),
    "sensitivity": lambda s: _effects(s.tables["sensitivity"], ["metric", "variant"], "noise_ratio",
                                      "no sensitivity heads in these runs (ablation off)"),
    "robustness": lambda s: s.tables["robustness"].pivot_table(index=["claim", "robust"], columns="setting",
                                                               values="verdict_adjusted", aggfunc="first", sort=False),
    "agreement": lambda s: s.tables["agreement"].query("setting == 'base'").pivot_table(
        index="claim", columns="protocol", values="agreement_over_seed_resamples", sort=False).round(2),
    "noise_effects": lambda s: _effects(s.tables["noise_effects"], ["protocol", "mean_of"], "noise_ratio",
                                        "no clean (0 %) run in this grid"),
    "means": lambda s: pd.concat({p: means_table(s.transfer.sel(setting="base", protocol=p).sel({"method": s.heads}))
                                  for p in s.transfer["protocol"].values}, names=["protocol"]),
    "ablation": lambda s: (lambda t: t.round(2) if t is not None else
                           f"no ablation table: no head but the linear probe was trained on ablation_task "
                           f"{s.study.config.ablation_task!r}")(
        ablation_table(s.transfer, task=s.study.config.ablation_task, mean_over=("seed", "noise_ratio"))),
    "tuned_spectrum": lambda s: tuned_spectrum_table(s.transfer),
}


def summary_tables(transfer: xr.Dataset, spectrum: xr.Dataset, claims: list[Claim], *, config, probe: str,
                   centering: str) -> dict[str, pd.DataFrame]:
    """Every table of the summary, by its key in ``run.SUMMARY_TABLES``."""
    heads = [m for m in (*DECOMPOSED, "ft") if m in transfer["method"].values]
    return {"claims": claims_table([c for c in claims if c.setting == "base"]),
            "decomposition": decomposition(transfer),
            "sensitivity": sensitivity(transfer, task=config.ablation_task, config=config),
            "robustness": robustness_table(claims),
            "agreement": resample_agreement(claims),
            "noise_effects": noise_effects(transfer, probe=probe),
            "task_effects": noise_effects(transfer, probe=probe, by="task"),
            "task_scores": score_levels(transfer, methods=heads).round(4),  # every head; 1e-4 points is plenty
            "runs": run_table(transfer, spectrum, centering=centering).round(6),
            "costs": cost_frame(transfer), "heads": heads_table(transfer), "pairs": pairs_table(transfer)}


def summary_figures(summary: Summary, *, probe: str, centering: str) -> dict[str, plt.Figure]:
    """Every figure of the summary, by its key in ``run.SUMMARY_FIGURES`` (a figure saying why, where its table
    is empty)."""
    t = summary.tables
    why = {"decomposition": f"no decomposition: it compares {', '.join(DECOMPOSED)}; these runs trained "
                            f"{', '.join(summary.heads)}",
           "sensitivity": "no sensitivity heads in these runs (ablation off, or its task not among the tasks)",
           "task_effects": "no clean (0 %) run in this grid: nothing to compare each noise ratio with"}
    draw = {"decomposition": plotting.decomposition, "sensitivity": plotting.sensitivity,
            "task_effects": plotting.task_effects}
    figures = {key: draw[key](t[key]) if len(t[key]) else plotting.empty_figure(why[key]) for key in draw}
    figures["accuracy"] = plotting.accuracy_vs_noise(summary.reference)
    figures["spectrum"] = plotting.metrics_vs_noise(summary.spectrum)
    return figures


def summarise(study: Study, *, probe: str = "lp", centering: str = "column") -> Summary:
    """Combine the grid's runs, judge the claims, and write every table and figure of the summary (``claims.json``
    last of the claims' files: it records the inputs' hashes)."""
    transfer, spectrum = load_results(study, "transfer"), load_results(study, "spectrum")
    claims = judge_all(transfer, spectrum, probe=probe, centering=centering)
    tables = summary_tables(transfer, spectrum, claims, config=study.config, probe=probe, centering=centering)
    summary = Summary(study, transfer, spectrum, claims, tables)
    for key, frame in tables.items():
        atomic_write_text(study.path(SUMMARY_TABLES[key]), frame.to_csv(index=False))
    for key, figure in summary_figures(summary, probe=probe, centering=centering).items():
        atomic_write(study.path(SUMMARY_FIGURES[key]), lambda fh, f=figure: f.savefig(fh, format="png", dpi=110))
        plt.close(figure)
    atomic_write_json(study.path(CLAIMS), claims_document([c for c in claims if c.setting == "base"], study))
    return summary
