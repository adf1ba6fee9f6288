"""The findings, generated: ``reports/README.md`` and the README's generated blocks, from the committed tables
(``nmtune findings``; ``--check`` regenerates them in memory and names the first line that differs).

``reports/README.md`` holds the verdict matrix (claim × report set, each protocol; the effect, its 95 % interval and
the Holm-adjusted verdict in each cell), then one section per entry of ``findings`` in ``experiments.yaml``: the
question, the commands that made it, its tables and a one-paragraph answer, then where every set lives and the
sha256 of every table read. An answer is a Jinja template whose numbers come from the tables through the helpers of
``Tables`` (``verdict``, ``effect``, ``iv``, ``num``, ``count``): no number is typed by hand, so a changed table
changes the text, and ``--check`` fails until the findings are regenerated.

``docs/CONTRACTS.md`` is written and checked alongside (``contracts``). The README carries two generated blocks
between ``<!-- findings:NAME -->`` and ``<!-- /findings -->``: ``headline``
(the default set's verdicts, the same cells as the matrix's default column, and whether its reruns agree) and
``time`` (the measured time of the two commands).
"""
from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import yaml

from ..analysis.tables import (PROTOCOLS, claim_cell, compare_claims, folder_table, format_effect, seconds_text,
                               short_claim, to_markdown)
from ..config import PROJECT_ROOT, ratio_percent
from ..files import atomic_write_text
from .contracts import CONTRACTS, contracts_document
from .experiments import EXPERIMENTS_FILE, MAIN_SETS, Experiment, load_experiments
from .report_index import write_indexes

FINDINGS = PROJECT_ROOT / "reports" / "README.md"
README = PROJECT_ROOT / "README.md"
BLOCK = re.compile(r"(<!-- findings:(?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /findings -->)", re.S)


class Tables:
    """The committed tables an answer or a table of the findings reads, each read once and recorded (``read``:
    path → sha256, listed under "Sources")."""

    def __init__(self, experiments: dict[str, Experiment], root: Path = PROJECT_ROOT):
        self.experiments, self.root = experiments, root
        self.read: dict[str, str] = {}
        self._frames: dict[str, pd.DataFrame] = {}

    def path(self, name: str) -> Path:
        """``"default"`` (an experiment: its report folder) or ``"default/claims.csv"`` or a path under reports/."""
        head, _, rest = name.partition("/")
        if head in self.experiments:
            folder = self.root / self.experiments[head].report
            return folder / rest if rest else folder
        return self.root / name

    def note(self, path: Path) -> Path:
        if not path.is_file():
            raise ValueError(f"findings: {path.relative_to(self.root)} does not exist (an answer or table reads it)")
        self.read[path.relative_to(self.root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
        return path

    def frame(self, name: str) -> pd.DataFrame:
        path = self.note(self.path(name))
        key = path.as_posix()
        if key not in self._frames:
            self._frames[key] = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"noise_ratio": str})
        return self._frames[key]

    def select(self, name: str, **where: Any) -> pd.DataFrame:
        """The rows of a table matching ``where`` (column → value, compared as text)."""
        frame = self.frame(name)
        for column, value in where.items():
            frame = frame[frame[column].astype(str) == str(value)]
        return frame

    def row(self, name: str, **where: Any) -> pd.Series:
        frame = self.select(name, **where)
        if len(frame) != 1:
            raise ValueError(f"findings: {name} has {len(frame)} rows where {where} (an answer needs one)")
        return frame.iloc[0]

    # --- the helpers answers call --------------------------------------------------------------------------------
    def claim(self, experiment: str, cid: str, protocol: str = "reference") -> pd.Series:
        return self.row(f"{experiment}/claims.csv", protocol=protocol, id=cid)

    def verdict(self, experiment: str, cid: str, protocol: str = "reference", adjusted: bool = True) -> str:
        """A claim's verdict in a set, Holm-adjusted unless not ``adjusted``."""
        return str(self.claim(experiment, cid, protocol)["verdict_adjusted" if adjusted else "verdict"])

    def effect(self, experiment: str, cid: str, protocol: str = "reference") -> str:
        """A claim's effect as the matrix writes it (``report_tables.format_effect`` without the verdict)."""
        return format_effect(str(self.claim(experiment, cid, protocol)["effect"]), "").replace(" ****", "")

    def iv(self, name: str, digits: int = 2, **where: Any) -> str:
        """``"+1.23 ± 0.45"``: a row's mean and 95 % half-width (``mean_points``/``half_width_points``,
        ``mean_percent``/``…``, or ``mean``/``half_width``)."""
        row = self.row(name, **where)
        for mean, half in (("mean_points", "half_width_points"), ("mean_percent", "half_width_percent"),
                           ("mean", "half_width")):
            if mean in row.index:
                return f"{float(row[mean]):+.{digits}f} ± {float(row[half]):.{digits}f}".replace("-", "−")
        raise ValueError(f"findings: {name} has no mean and half-width columns")

    def rows(self, name: str, **where: Any) -> list[dict[str, Any]]:
        """Every row of a table matching ``where`` (``select``), as dicts: for answers that count or list rows."""
        return self.select(name, **where).to_dict("records")

    def seed_difference(self, a: str, b: str) -> float:
        """The largest absolute difference between two sets' per-seed scores (their ``task_scores.csv``, rows
        matched on protocol, method, task and noise ratio): 0 when one reproduces the other bit for bit."""
        keys = ["protocol", "method", "mean_of", "task", "noise_ratio"]
        x, y = self.frame(f"{a}/task_scores.csv"), self.frame(f"{b}/task_scores.csv")
        seeds = [c for c in x.columns if c.startswith("seed") and c in y.columns]
        both = x.merge(y, on=[k for k in keys if k in x and k in y], suffixes=("", "_b"))
        if both.empty or not seeds:
            raise ValueError(f"findings: {a} and {b} share no per-seed scores")
        return float(max((both[s] - both[f"{s}_b"]).abs().max() for s in seeds))

    def num(self, name: str, column: str, fmt: str = "{:.2f}", **where: Any) -> str:
        return fmt.format(float(self.row(name, **where)[column])).replace("-", "−")

    def count(self, experiment: str, verdict: str, protocol: str | None = None,
              forms: Sequence[str] = ("paper",)) -> int:
        """How many claims of a set have this adjusted verdict (claim 3 once: it is the same under every
        protocol)."""
        frame = self.frame(f"{experiment}/claims.csv")
        frame = frame[frame["form"].isin(forms) & (frame["verdict_adjusted"] == verdict)]
        if protocol is not None:
            frame = frame[(frame["protocol"] == protocol)]
        return int(len(frame.drop_duplicates(["id"] if protocol is None else ["protocol", "id"])))


# --- tables ---------------------------------------------------------------------------------------------------------

def matrix(tables: Tables, sets: Sequence[str], protocol: str, *, labels: Sequence[str] | None = None,
           ids: Sequence[str] | None = None) -> str:
    """Claim × set under ``protocol``: each cell the effect ± 95 % half-width and the adjusted verdict (the claims
    ``ids`` only, if given)."""
    folders = [tables.path(s) for s in sets]
    for folder in folders:
        tables.note(folder / "claims.csv")
    table = compare_claims(folders, [protocol], labels or list(sets))
    table.columns = [c.rsplit(", ", 1)[0] for c in table.columns]
    if ids is not None:
        table = table[[name.split(".")[0] in ids for name in table.index]]
    return to_markdown(table)


def csv_table(tables: Tables, spec: dict[str, Any]) -> str:
    """A committed CSV as a Markdown table: ``file``; ``columns`` (name → header, in order); ``where`` (column →
    value or list of values); ``round`` (digits of floats, 2); ``percent`` (columns × 100)."""
    frame = tables.frame(spec["file"])
    for column, value in (spec.get("where") or {}).items():
        values = [str(v) for v in (value if isinstance(value, list) else [value])]
        frame = frame[frame[column].astype(str).isin(values)]
    columns = spec.get("columns") or {c: c for c in frame.columns}
    frame = frame[list(columns)].copy()
    for column in spec.get("percent", []):
        frame[column] = frame[column] * 100
    digits = spec.get("round", 2)
    frame = frame.map(lambda v: (f"{v:.{digits}f}" if math.isfinite(v) else "n/a") if isinstance(v, float) else v)
    frame.columns = list(columns.values())
    return to_markdown(frame.set_index(frame.columns[0]))


def set_table(tables: Tables, spec: dict[str, Any]) -> str:
    """``nmtune timing|effects|scores|contrast`` on experiments' report folders (``analysis.tables.folder_table``)."""
    kind = spec["kind"]
    reads = {"timing": ("timing.csv", "config.yaml"), "scores": ("task_scores.csv",),
             "contrast": ("task_scores.csv",),
             "effects": ("noise_effects_by_task.csv",) if spec.get("by_task") else ("noise_effects.csv",)}[kind]
    folders = [tables.path(s) for s in spec["sets"]]
    for folder in folders:
        for name in reads:
            tables.note(folder / name)
    out = folder_table(kind, *folders, by_task=spec.get("by_task", False), method=spec.get("method", "lp"))
    for s, folder in zip(spec["sets"], folders):  # rows name a set by its folder's name; say which experiment
        out = out.replace(f"| {folder.name} |", f"| {s} |")
    return out


TABLE_KINDS: dict[str, Callable[[Tables, dict[str, Any]], str]] = {
    "matrix": lambda t, s: matrix(t, s["sets"], s.get("protocol", "reference"), labels=s.get("labels"),
                                  ids=s.get("ids")),
    "csv": csv_table,
    **{kind: set_table for kind in ("timing", "effects", "scores", "contrast")},
}


def table(tables: Tables, spec: dict[str, Any]) -> str:
    if spec.get("kind") not in TABLE_KINDS:
        raise ValueError(f"findings: table kind {spec.get('kind')!r}; accepted: {', '.join(TABLE_KINDS)}")
    caption = f"*{spec['caption']}*\n\n" if spec.get("caption") else ""
    return caption + TABLE_KINDS[spec["kind"]](tables, spec)


# --- the document --------------------------------------------------------------------------------------------------

def render_answer(template: str, tables: Tables) -> str:
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False)
    helpers = {name: getattr(tables, name)
               for name in ("verdict", "effect", "iv", "num", "count", "claim", "rows", "seed_difference")}
    return " ".join(env.from_string(template).render(**helpers, pct=ratio_percent).split())


def section(tables: Tables, spec: dict[str, Any]) -> str:
    experiments = [tables.experiments[name] for name in spec.get("experiments", [])]
    commands = "\n".join(e.command() for e in experiments if e.kind != "record")
    parts = [f"## {spec['title']}", f"**Question.** {spec['question']}"]
    if commands:
        parts.append(f"```bash\n{commands}\n```")
    parts += [table(tables, t) for t in spec.get("tables", [])]
    parts.append(f"**Answer.** {render_answer(spec['answer'], tables)}")
    return "\n\n".join(parts)


INTRO = """# Findings

Generated by `nmtune findings` from the committed tables (every number below is read from a file listed under
[Sources](#sources)); `nmtune findings --check` fails when this file and the tables disagree. How to read a verdict:
an effect is paired by seed and summarised as mean ± the half-width of its 95 % Student-t interval over seeds;
**supported** when the interval lies wholly on the claimed side of 0, **contradicted** when wholly on the other,
**inconclusive** otherwise, and every verdict here is the one left after Holm's adjustment over all the judged cells
of its set (docs/paper.md §1a). 1a and 2a are judged as the paper states them, at every noise ratio they name ("k of
m ratios"); `1a-mean` and `2a-mean` are the averages over those ratios, and 3c/3d the study's own extension.
`reference` is the reference code's protocol; `matched` gives every head the same views, budget and a tuned learning
rate, which handicaps the linear probe (it trains on crops and is tested on uncropped images)."""


def sources(tables: Tables) -> str:
    rows = ["| table | sha256 |", "|---|---|"]
    rows += [f"| [`{p}`]({Path(p).relative_to('reports').as_posix() if p.startswith('reports/') else '../' + p}) | "
             f"`{digest[:12]}` |" for p, digest in sorted(tables.read.items())]
    return "## Sources\n\n" + "\n".join(rows)


def where(tables: Tables) -> str:
    """Every experiment: what it is, its folder, how it is made, and its adjusted verdicts counted (a set with a
    claims.csv), so that every committed claims table is read."""
    rows = ["| experiment | what it is | tables | adjusted verdicts | made by |", "|---|---|---|---|---|"]
    for e in tables.experiments.values():
        link = Path(e.report).relative_to("reports").as_posix()
        made = "kept as committed" if e.kind == "record" else f"`{e.command()}`"
        counts = "—"
        if (tables.path(e.name) / "claims.csv").is_file():
            frame = tables.frame(f"{e.name}/claims.csv")
            judged = frame[frame["form"] != "component"]["verdict_adjusted"].value_counts()
            counts = ", ".join(f"{int(judged[v])} {v}" for v in ("supported", "contradicted", "inconclusive")
                               if v in judged)
        rows.append(f"| {e.name} | {e.description or e.question} | [{link}/]({link}/) | {counts} | {made} |")
    return "## Where the results live\n\n" + "\n".join(rows)


def findings_document(root: Path = PROJECT_ROOT) -> tuple[str, dict[str, str], Tables]:
    """(reports/README.md, the README's blocks by name, the tables read) of the project at ``root``."""
    path = root / EXPERIMENTS_FILE.name
    experiments = load_experiments(path)
    spec = yaml.safe_load(path.read_text()).get("findings", [])
    tables = Tables(experiments, root)
    sets = [s for s in MAIN_SETS if s in experiments]
    body = [INTRO, "## The paper's claims across the report sets"]
    for protocol in PROTOCOLS:
        body.append(f"**{protocol} protocol** (claim 3 reads the features, the same under both: its rows under "
                    f"`reference` only)\n\n" if protocol == "reference" else f"**{protocol} protocol**\n\n")
        body[-1] += matrix(tables, sets, protocol)
    body += [section(tables, s) for s in spec]
    blocks = {"headline": headline(tables), "time": time_block(tables)}
    body += [where(tables), sources(tables)]
    return "\n\n".join(body) + "\n", blocks, tables


def headline(tables: Tables) -> str:
    """The default set's claims (paper form), both protocols, and whether its make on another machine
    (``default_earlier``) gives the same adjusted verdicts under both."""
    table = pd.concat([_protocol_column(tables, p) for p in PROTOCOLS], axis=1)
    if "default_earlier" in tables.experiments:
        agree = []
        for cid in table.index.get_level_values("id"):
            theirs = [_verdict_or_none(tables, "default_earlier", cid, p) for p in PROTOCOLS]
            mine = [tables.verdict("default", cid, p) for p in PROTOCOLS]
            agree.append("(not judged there)" if theirs[0] is None else "yes" if theirs == mine else "no")
        table["same on another machine"] = agree
    table.index = table.index.get_level_values("claim")
    return to_markdown(table) + "\n"


def _protocol_column(tables: Tables, protocol: str) -> pd.DataFrame:
    frame = tables.frame("default/claims.csv")
    frame = frame[(frame["protocol"] == protocol) & (frame["form"] == "paper")]
    cells = ["(same features)" if protocol != PROTOCOLS[0] and cid.startswith("3") else
             claim_cell(row, "verdict_adjusted") for cid, (_, row) in zip(frame["id"], frame.iterrows())]
    index = pd.MultiIndex.from_arrays([frame["id"], [short_claim(c) for c in frame["claim"]]], names=["id", "claim"])
    return pd.DataFrame({protocol: cells}, index=index)


def _verdict_or_none(tables: Tables, experiment: str, cid: str, protocol: str) -> str | None:
    rows = tables.select(f"{experiment}/claims.csv", protocol=protocol, id=cid)
    return str(rows["verdict_adjusted"].iloc[0]) if len(rows) else None


def time_block(tables: Tables) -> str:
    """The measured time of the two commands on the project's kind of machine (``bench/cpu_results``): the quietest
    fresh-clone ``make study`` and the latest fresh-clone ``make test`` (with the quickest beside it when the latest
    shared the machine)."""
    study = tables.frame("bench/cpu_results/make_study.csv")
    quiet = study.loc[study["sweep_seconds"].astype(float).idxmin()]
    tests = tables.frame("bench/cpu_results/make_test.csv")
    test, quick = tests.iloc[-1], tests.loc[tests["seconds"].astype(float).idxmin()]
    alone = str(test.get("conditions", "")) == "the machine to itself"
    detail = (f"{int(test['tests_passed'])} tests" if alone else
              f"{int(test['tests_passed'])} tests, {test['conditions']}; {seconds_text(float(quick['seconds']))} for "
              f"{int(quick['tests_passed'])} tests at {quick['commit']}, {quick['conditions']}")
    return (f"Measured from a fresh clone on a {quiet['machine']}: `make study` "
            f"{seconds_text(float(quiet['sweep_seconds']))} ({float(quiet['sweep_seconds']) / 3600:.1f} h) for the "
            f"default set's sweep with the machine to itself, `make test` {seconds_text(float(test['seconds']))} "
            f"({detail}; [make study](bench/cpu_results/make_study.csv), [make test](bench/cpu_results/make_test.csv))."
            "\n")


def apply_blocks(readme: str, blocks: dict[str, str]) -> str:
    """``readme`` with each generated block's body replaced; a block the README lacks, or one it has that is not
    generated, is an error."""
    found = {m["name"] for m in BLOCK.finditer(readme)}
    if found != set(blocks):
        raise ValueError(f"README.md has the generated blocks {sorted(found)}; expected {sorted(blocks)}")
    return BLOCK.sub(lambda m: m.group(1) + blocks[m["name"]] + m.group(4), readme)


def write_findings(root: Path = PROJECT_ROOT) -> Path:
    """Write ``reports/README.md``, the README's blocks and the reports' indexes (so that every committed table is
    linked from ``reports/index.html``)."""
    document, blocks, _ = findings_document(root)
    readme = root / README.name
    atomic_write_text(root / FINDINGS.relative_to(PROJECT_ROOT), document)
    atomic_write_text(readme, apply_blocks(readme.read_text(), blocks))
    atomic_write_text(root / CONTRACTS.relative_to(PROJECT_ROOT), contracts_document())
    write_indexes(root / "reports")
    return root / FINDINGS.relative_to(PROJECT_ROOT)


def check_findings(root: Path = PROJECT_ROOT) -> list[str]:
    """What differs between the committed findings (and README blocks) and their regeneration: one message per
    file, naming its first differing line; empty when both agree."""
    document, blocks, _ = findings_document(root)
    problems = []
    readme, findings = root / README.name, root / FINDINGS.relative_to(PROJECT_ROOT)
    contracts = root / CONTRACTS.relative_to(PROJECT_ROOT)
    for path, expected in ((findings, document), (readme, apply_blocks(readme.read_text(), blocks)),
                           (contracts, contracts_document())):
        have = path.read_text() if path.exists() else ""
        if have != expected:
            a, b = have.splitlines(), expected.splitlines()
            line = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            problems.append(f"{path.relative_to(root)}: line {line + 1} differs from the regenerated "
                            f"findings:\n  committed:   {a[line] if line < len(a) else '(end of file)'}\n  "
                            f"regenerated: {b[line] if line < len(b) else '(end of file)'}\n(run nmtune findings)")
    return problems
