"""Markdown tables of committed report sets, as the README quotes them: every number in them from the set's files.

- ``nmtune compare reports/default reports/asymmetric``: the paper's claims side by side across report sets
  (regimes, noise kinds), from their ``claims.csv``. A row per claim, a column per (set, protocol), each cell the
  effect and the verdict in bold. The effect is the mean ± the 95 % half-width over seeds, the mean rounded to the
  half-width's last digit (one digit further if that leaves it under two significant digits). The spectrum claims
  (3a–3d) are judged on the backbone's features, which every protocol shares, so they are written once, under the
  first protocol.
- ``nmtune timing reports/default``: the stage times of the sweep that made the set (``timing.csv``), per run and
  over the grid's runs (``config.yaml``), and its wall clock.
- ``nmtune effects reports/instance``: each noise ratio against clean pre-training of the same seed
  (``noise_effects.csv``): a row per (protocol, ID/OOD mean), a column per ratio, each cell mean ± 95 % half-width
  in points; ``--by-task``: a row per (protocol, task) instead (``noise_effects_by_task.csv``).
- ``nmtune scores reports/clip/caption_probe/class``: the levels those effects are differences of
  (``task_scores.csv``): a row per (protocol, task), a column per ratio, each cell mean ± 95 % half-width in %.
- ``nmtune contrast reports/clip/caption_probe/class reports/clip/caption_probe/brightness``: sets made alike but
  for one setting, seed by seed against the first (``task_scores.csv``' seed columns): each score's difference, and
  how much the set changes each noise effect, in points.

``scores`` and ``contrast`` read one head's rows, the linear probe's unless ``--method mlp`` or ``nmtune``, or a
difference of two heads seed by seed, ``--method nmtune-mlp`` (``task_scores.csv`` has a ``method`` column since
notebook 05 lists every head; an older file is the probe's alone).
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

import pandas as pd
import yaml

from ..config import ratio_percent
from ..run import TASK_EFFECTS, TASK_SCORES
from .aggregate import effect_text, interval_text, mean_ci
from .claims import claim_order

PROTOCOLS = ("reference", "matched")
SPECTRUM_FAMILY = "3"  # claims 3a–3d: on the features, the same under every protocol
SCORES_MADE_BY = (f"whose summary wrote {TASK_SCORES} (notebook 05 writes it since the caption probe; earlier "
                  "sets lack it)")
SEED_COLUMN = re.compile(r"seed\d+")  # task_scores.csv: one seed's score (summary.score_levels)
PROBE = "lp"  # the head task_scores.csv' tables show unless told otherwise (the one the noise effects read)
SUPPORT = re.compile(r"^(\d+ of \d+ ratios(?: \(\d+ against\))?):")  # claims.every's effect
EFFECT = re.compile(r"^\s*([+-]?\d[\d.]*(?:e[+-]?\d+)?)(?: ± (\d[\d.]*(?:e[+-]?\d+)?))?")  # mean [± half]


def short_claim(text: str) -> str:
    """``"1a. Slight … transfer (LP ID mean, noisy − clean)"`` → ``"1a. Slight … transfer"``: the claim without its
    final parenthesis (how it is measured); a claim that continues the one before it ("3c. … and more so") keeps the
    parenthesis' first part ("slope of SVE vs noise ratio"), which says what it is about."""
    match = re.match(r"^(.*?)\s*\(([^()]*(?:\([^()]*\)[^()]*)*)\)\s*$", text)
    if not match:
        return text
    claim, measure = match.groups()
    return f"{claim} ({measure.split(',')[0]})" if "…" in claim else claim


def format_effect(effect: str, verdict: str) -> str:
    """``"-0.484 ± 2.1 points (n=3 seeds)"``, ``"inconclusive"`` → ``"−0.48 ± 2.1 **inconclusive**"`` (one seed,
    no half-width: the mean as written); an "at every ratio" row's ``"3 of 4 ratios: …"`` → ``"3 of 4 ratios
    **inconclusive**"``."""
    support = SUPPORT.match(effect)
    if support:
        return f"{support.group(1)} **{verdict}**"
    match = EFFECT.match(effect)
    if not match:  # "not judged: the grid lacks …"
        return f"**{verdict}**"
    mean, half = float(match.group(1)), match.group(2)
    if half is None:
        return match.group(1).replace("-", "−") + f" **{verdict}**"
    decimals = len(half.split(".")[1]) if "." in half else 0
    if mean:  # a mean much smaller than its half-width: one digit more than the half-width's, not zero
        decimals = max(decimals, min(decimals + 1, 1 - math.floor(math.log10(abs(mean)))))
    return f"{mean:+.{decimals}f}".replace("-", "−") + f" ± {half} **{verdict}**"


def read_claims(folder: str | Path) -> pd.DataFrame:
    """A report set's ``claims.csv`` (claims.CLAIM_COLUMNS). A set written before the claims carried an ``id`` and
    an adjusted verdict is refused, naming the command that re-judges it."""
    path = Path(folder) / "claims.csv"
    if not path.is_file():
        raise ValueError(f"{path} does not exist: pass report folders written by 'nmtune report' (a folder holding "
                         "claims.csv, e.g. reports/default)")
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    if "verdict_adjusted" not in frame.columns:
        raise ValueError(f"{path} predates adjusted verdicts: re-judge it from its tables first (nmtune rejudge "
                         f"{Path(folder)})")
    return frame


MATRIX_FORMS = ("paper", "secondary", "extension")  # the rows of a verdict matrix; the per-ratio cells have their own


def compare_claims(folders: Sequence[str | Path], protocols: Sequence[str] = PROTOCOLS,
                   labels: Sequence[str] | None = None, *, forms: Sequence[str] = MATRIX_FORMS,
                   adjusted: bool = True) -> pd.DataFrame:
    """claim × "<label>, <protocol>" → formatted cell (the effect and the verdict, Holm-adjusted unless not
    ``adjusted``), columns ordered protocol-major (every set under the first protocol, then the next); rows: the
    claims of the ``forms`` in any set, in the first set's order. ``labels`` default to the folders' names. A
    protocol a set lacks is an error."""
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown or not protocols or not folders:
        raise ValueError(f"compare_claims: folders {list(map(str, folders))}, protocols {list(protocols)}; accepted: "
                         f"one folder or more, protocols among {', '.join(PROTOCOLS)}")
    labels = [Path(f).name for f in folders] if labels is None else list(labels)
    sets = {label: read_claims(folder) for label, folder in zip(labels, folders)}
    rows = pd.concat(sets.values())

    rows = rows[rows["form"].isin(forms)].drop_duplicates("id")
    rows = rows.iloc[sorted(range(len(rows)), key=lambda i: claim_order(rows["id"].iloc[i]))]
    order = list(rows["id"])
    names = [short_claim(text) for text in rows["claim"]]
    column = "verdict_adjusted" if adjusted else "verdict"
    table = pd.DataFrame(index=pd.Index(names, name="claim"))
    for protocol in protocols:
        for label, frame in sets.items():
            part = frame[frame["protocol"] == protocol].set_index("id")
            if part.empty:
                raise ValueError(f"{label}: claims.csv has no protocol {protocol!r}; it has "
                                 f"{sorted(frame['protocol'].unique())}")
            table[f"{label}, {protocol}"] = [
                "(same features)" if i.startswith(SPECTRUM_FAMILY) and protocol != protocols[0]
                else claim_cell(part.loc[i], column) if i in part.index else "(absent)"
                for i in order]
    return table


def claim_cell(row: pd.Series, column: str) -> str:
    """A claim's cell: its effect (or, for an "at every ratio" row, how many ratios support it, after adjustment
    where the verdict is the adjusted one) and its verdict in bold."""
    support = row.get("support_adjusted" if column == "verdict_adjusted" else "support")
    if isinstance(support, str) and support:
        return f"{support} **{row[column]}**"
    return format_effect(row["effect"], row[column])


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (pandas' ``to_markdown`` needs ``tabulate``, which the study does not otherwise use)."""
    header = [table.index.name or "", *table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([str(index), *map(str, row)]) + " |" for index, row in zip(table.index, table.values)]
    return "\n".join(lines)


def time_table(folder: str | Path) -> str:
    """A report set's ``timing.csv`` as a Markdown table: per notebook the seconds per (noise ratio, seed) run and
    over all runs (``05_summary`` runs once), then the sweep's wall clock (the ``total`` row)."""
    paths = _report_files(folder, "timing.csv", "config.yaml", made_by="written by 'nmtune report' after a sweep "
                          "(it holds timing.csv and config.yaml)")
    seconds = pd.read_csv(paths[0]).set_index("stage")["seconds"]
    config = yaml.safe_load(paths[1].read_text())
    runs = len(config["noise_ratios"]) * len(config["seeds"])
    lines = ["| stage | per run (1 core) | all runs |", "|---|---|---|"]
    for stage, value in seconds.drop("total").items():
        per_run = "" if stage == "05_summary" else seconds_text(value / runs)
        lines.append(f"| `{stage}` | {per_run} | {seconds_text(value)} |")
    lines.append(f"| sweep, wall clock ({runs} runs) | | **{seconds_text(seconds['total'])}** |")
    return "\n".join(lines)


def effects_table(*folders: str | Path, by_task: bool = False) -> str:
    """A report set's ``noise_effects.csv`` as a Markdown table: rows (protocol, mean of), columns the noise ratios,
    cells ``−1.68 ± 1.37`` (points, two decimals, the CSV's row order). ``by_task``: ``noise_effects_by_task.csv``,
    a row per (protocol, task), the mean (ID, OOD) each task enters beside it. Several sets: one table, their rows
    one after another under a first column ``set`` (each folder's name)."""
    name = TASK_EFFECTS if by_task else "noise_effects.csv"  # notebook 05 writes both
    frame = _read_sets(folders, name, made_by=f"whose summary wrote {name} (a set summarised before notebook 05 "
                       "wrote it lacks it: 'make study PRESET=<preset>' runs only 05 again where its runs are kept)")

    return _ratio_table(frame, effect_text(frame), by_task=by_task)


def scores_table(*folders: str | Path, method: str = PROBE) -> str:
    """A report set's ``task_scores.csv`` as a Markdown table, ``method``'s rows: rows (protocol, task), the mean
    each task enters beside it, columns the noise ratios (0 % included), cells ``45.21 ± 3.10`` (%, two decimals;
    ``+1.20 ± 0.45`` points for a difference of heads); several sets as in ``effects_table``."""
    frame = _read_sets(folders, TASK_SCORES, made_by=SCORES_MADE_BY, method=method)
    cells = [interval_text(m, h) if "-" in method else f"{m:.2f} ± {h:.2f}"  # a difference of heads: signed
             for m, h in zip(frame["mean_percent"], frame["half_width_percent"])]
    return _ratio_table(frame, cells, by_task=True)


def contrast_table(base: str | Path, *folders: str | Path, method: str = PROBE) -> str:
    """Each set's task scores (``method``'s) minus those of the set ``base`` on the same seed (the seed columns of
    their ``task_scores.csv``), in points: a row per (set, protocol, task), a column per noise ratio, then per ratio
    beyond the clean one ``effect <ratio>``, the set's noise effect there (that ratio − 0 %) minus the base's. Each
    cell is the mean ± 95 % half-width over the seeds both sets ran. Pairing by seed compares runs that share their
    seed's initial weights, data order and noise draws, so it sees differences that the sets' own intervals hide."""
    if not folders:
        raise ValueError(f"nmtune contrast {base}: pass the base set, then one or more sets to compare with it")
    keys = ["protocol", "mean_of", "task", "noise_ratio"]
    ref = _seed_scores(base, method).set_index(keys)
    rows = []
    for folder in folders:
        other = _seed_scores(folder, method).set_index(keys)
        seeds = [c for c in other.columns if SEED_COLUMN.fullmatch(c) and c in ref.columns]
        common = other.index.intersection(ref.index, sort=False)
        if not seeds or common.empty:
            raise ValueError(f"{folder} and {base} share no seed columns or no (protocol, task, noise ratio) row: "
                             "contrast sets made alike (same seeds, tasks and ratios)")
        diff = other.loc[common, seeds] - ref.loc[common, seeds]
        for (protocol, mean_of, task), group in diff.groupby(level=[0, 1, 2], sort=False):
            by_ratio = group.droplevel([0, 1, 2])
            cells = {ratio_percent(r): _paired_cell(by_ratio.loc[r]) for r in by_ratio.index}
            if 0 in by_ratio.index:
                cells |= {f"effect {ratio_percent(r)}": _paired_cell(by_ratio.loc[r] - by_ratio.loc[0])
                          for r in by_ratio.index if r != 0}
            rows.append(dict(set=Path(folder).name, protocol=protocol, **{"mean of": mean_of}, task=task, **cells))
    return to_markdown(pd.DataFrame(rows).set_index("set").fillna(""))


def _seed_scores(folder: str | Path, method: str) -> pd.DataFrame:
    """A report set's ``task_scores.csv`` (``method``'s rows); a ValueError when it lacks the per-seed columns
    ``contrast_table`` pairs."""
    frame = _method_rows(pd.read_csv(_report_files(folder, TASK_SCORES, made_by=SCORES_MADE_BY)[0]), method, folder)
    if not any(SEED_COLUMN.fullmatch(c) for c in frame.columns):
        raise ValueError(f"{Path(folder) / TASK_SCORES} has no per-seed columns (seed0, seed1, …): notebook 05 "
                         "writes them since 'nmtune contrast' exists; where the set's runs are kept, remove its "
                         "study folder's 05_summary.done and run the same sweep again (it redoes only 05)")
    return frame


def _paired_cell(per_seed: pd.Series) -> str:
    """``"−1.23 ± 0.45"``: mean ± 95 % half-width over the seeds of a paired difference."""
    return interval_text(*mean_ci(per_seed.to_numpy(dtype=float))).replace("-", "−")


def _method_rows(frame: pd.DataFrame, method: str, folder: str | Path) -> pd.DataFrame:
    """The rows of one head of a ``task_scores.csv`` (without its ``method`` column), or of a difference of two
    heads, ``nmtune-mlp`` (claim 4's terms, named as in ``decomposition.csv``): seed by seed the first head's score
    minus the second's, then their mean ± 95 % half-width. A file without ``method`` holds the linear probe's alone.
    A ValueError names what the file can give when ``method`` is not one of them."""
    methods = list(dict.fromkeys(frame["method"])) if "method" in frame.columns else [PROBE]
    first, _, second = method.partition("-")
    if method not in methods and not (first in methods and second in methods and first != second):
        raise ValueError(f"--method {method!r}: {Path(folder) / TASK_SCORES} has the scores of {', '.join(methods)} "
                         f"only; accepted: one of them, or two as 'a-b' (e.g. 'nmtune-mlp')" + (
                             "" if "method" in frame.columns else " (written before notebook 05 listed every head)"))
    if "method" not in frame.columns:
        return frame

    def head(name: str) -> pd.DataFrame:
        return frame[frame["method"] == name].drop(columns="method").reset_index(drop=True)

    if method in methods:
        return head(method)
    seeds = [c for c in frame.columns if SEED_COLUMN.fullmatch(c)]
    if not seeds:
        raise ValueError(f"--method {method!r}: {Path(folder) / TASK_SCORES} has no per-seed columns to subtract")
    keys = [c for c in ("protocol", "mean_of", "task", "noise_ratio") if c in frame.columns]
    minuend, subtrahend = head(first).set_index(keys), head(second).set_index(keys)
    diff = (minuend[seeds] - subtrahend[seeds]).reindex(minuend.index)  # the first head's row order
    mean, half = zip(*(mean_ci(row) for row in diff.to_numpy(dtype=float)))
    out = diff.assign(mean_percent=mean, half_width_percent=half, n_seeds=diff.notna().sum(axis=1)).reset_index()
    return out[[*keys, *(c for c in minuend.columns if c in out.columns)]]


def _read_sets(folders: Sequence[str | Path], name: str, *, made_by: str, method: str | None = None
               ) -> pd.DataFrame:
    """The file ``name`` of each report set, stacked, with a ``set`` column (the folder's name) when more than one;
    ``method``: one head's rows of each (``_method_rows``)."""
    if not folders:
        raise ValueError(f"no report folder given: pass one or more, each holding {name}")
    frames = [pd.read_csv(_report_files(folder, name, made_by=made_by)[0]) for folder in folders]
    if method is not None:
        frames = [_method_rows(frame, method, folder) for frame, folder in zip(frames, folders)]
    if len(frames) == 1:
        return frames[0]
    return pd.concat([f.assign(set=Path(folder).name) for f, folder in zip(frames, folders)], ignore_index=True)


def _ratio_table(frame: pd.DataFrame, cells: list[str], *, by_task: bool) -> str:
    """Rows ([set,] protocol, mean of[, task]) in the files' order, a column per noise ratio, ``cells`` in them."""
    frame = frame.assign(cell=[text.replace("-", "−") for text in cells])
    rows = [*(["set"] if "set" in frame.columns else []), "protocol", "mean_of", *(["task"] if by_task else [])]
    table = frame.pivot_table(index=rows, columns="noise_ratio", values="cell", aggfunc="first",
                              sort=False).rename(columns=ratio_percent).fillna("")  # a ratio a row lacks
    return to_markdown(table.reset_index(rows[1:]).rename(columns={"mean_of": "mean of"}))


def folder_table(command: str, *folders: str | Path, by_task: bool = False, method: str = PROBE) -> str:
    """What ``nmtune <command> FOLDER…`` prints: ``timing`` (``time_table``, one folder), ``effects``
    [``--by-task``] (``effects_table``), ``scores`` [``--method``] (``scores_table``), ``contrast`` [``--method``]
    (``contrast_table``: the first folder is the base)."""
    if command == "timing":
        if len(folders) != 1:
            raise ValueError(f"nmtune timing: one report folder, got {len(folders)}")
        return time_table(folders[0])
    if command == "effects":
        return effects_table(*folders, by_task=by_task)
    if command == "scores":
        return scores_table(*folders, method=method)
    if command == "contrast":
        return contrast_table(*folders, method=method)
    raise ValueError(f"folder_table: command {command!r}; accepted: 'timing', 'effects', 'scores', 'contrast'")


def _report_files(folder: str | Path, *names: str, made_by: str) -> list[Path]:
    """The files ``names`` of the report set ``folder``; a ValueError naming the missing ones and what writes them."""
    paths = [Path(folder) / name for name in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"{', '.join(missing)} missing: pass a report folder {made_by}")
    return paths


def seconds_text(value: float) -> str:
    """7.2 s, 44 s, 1,109 s."""
    return f"{value:.1f} s" if value < 10 else f"{value:,.0f} s"
