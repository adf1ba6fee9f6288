"""The reports' index pages: ``reports/index.html`` (every set and experiment, their claims side by side) and each
report set's ``index.html`` (the rule once, the claims as a claim × protocol table, figures, tables, pages), built
from the committed files alone, so that ``nmtune report`` rewrites them for sets whose runs are long gone.
"""
from __future__ import annotations

import html
import re
from pathlib import Path

import pandas as pd

from ..analysis.claims import claim_order
from ..analysis.tables import PROTOCOLS, claim_cell, compare_claims, short_claim
from ..files import atomic_write_text
from .experiments import MAIN_SETS, load_experiments

STYLE = """<style>body{font-family:system-ui,sans-serif;max-width:78em;margin:2em auto;padding:0 1em;line-height:1.4}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;
vertical-align:top}.supported{background:#e6f4ea}.contradicted{background:#fce8e6}.inconclusive{background:#fef7e0}
.raw{color:#666;font-size:85%}nav{margin-bottom:1em}img{max-width:100%}</style>"""
RULE = ("An effect is paired by seed and summarised as mean ± the half-width of its 95 % Student-t interval over "
        "seeds: <b>supported</b> when the interval lies wholly on the claimed side of 0, <b>contradicted</b> when "
        "wholly on the other side, <b>inconclusive</b> otherwise. The verdict shown is the one left after Holm's "
        "adjustment over every judged cell of the set; the raw verdict and the claimed direction's one-sided "
        "p-value are in grey. 1a and 2a are judged at every noise ratio they name (k of m ratios), their averages "
        "in the <code>-mean</code> rows; 3c and 3d are the study's extension (docs/paper.md §1a).")
CELL = re.compile(r"^(.*?)\s*\*\*(.+)\*\*$")
PAGE_NAME = re.compile(r"(?P<kind>[a-z_]+)-(?P<ratio>\d+\.\d+)_seed(?P<seed>\d+)_(?P<notebook>\d\d_[a-z_]+)\.html$")


def page_title(set_name: str, page: str) -> str:
    """``"default · symmetric 10 % noise · seed 0 · 04 transfer"`` of a run page's file name, or of the summary."""
    match = PAGE_NAME.search(page)
    if not match:
        return f"{set_name} · summary of the claims"
    ratio = float(match["ratio"])
    return (f"{set_name} · {match['kind']} {ratio * 100:g} % noise · seed {match['seed']} · "
            f"{match['notebook'].replace('_', ' ', 1).replace('_', ' ')}")



def _page(title: str, nav: str, body: str) -> str:
    return (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>{STYLE}</head>'
            f"<body>\n<nav>{nav}</nav>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def _cell(text: str) -> str:
    """A Markdown matrix cell (``"+1.2 ± 0.4 **supported**"``) as a coloured HTML cell."""
    match = CELL.match(text)
    if not match:
        return f"<td>{html.escape(text)}</td>"
    effect, verdict = match.groups()
    return f'<td class="{html.escape(verdict)}">{html.escape(effect)} <b>{html.escape(verdict)}</b></td>'


def matrix_html(table: pd.DataFrame) -> str:
    """A ``report_tables.compare_claims`` frame as an HTML table with coloured verdicts."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in [table.index.name or "claim", *table.columns])
    rows = "\n".join(f"<tr><td>{html.escape(str(i))}</td>{''.join(_cell(str(v)) for v in row)}</tr>"
                     for i, row in zip(table.index, table.values))
    return f"<table><tr>{head}</tr>\n{rows}</table>"


def claims_html(claims: pd.DataFrame) -> str:
    """A set's claims as claim × protocol: effect and adjusted verdict, the raw verdict and p-value in grey; the
    per-ratio cells of 1a and 2a folded below."""

    protocols = list(dict.fromkeys(claims["protocol"]))
    ids = sorted(dict.fromkeys(claims["id"]), key=claim_order)

    def row(cid: str) -> str:
        cells = []
        for protocol in protocols:
            part = claims[(claims["protocol"] == protocol) & (claims["id"] == cid)]
            if part.empty:
                cells.append("<td>(absent)</td>")
                continue
            r = part.iloc[0]
            p = f", p = {float(r['p_value']):.2g}" if pd.notna(r.get("p_value")) else ""
            cells.append(_cell(claim_cell(r, "verdict_adjusted"))[:-5] +
                         f'<br><span class="raw">raw: {html.escape(str(r["verdict"]))}{p}</span></td>')
        text = claims.loc[claims["id"] == cid, "claim"].iloc[0]
        return f"<tr><td>{html.escape(short_claim(text))}</td>{''.join(cells)}</tr>"

    head = "<tr><th>claim</th>" + "".join(f"<th>{html.escape(p)}</th>" for p in protocols) + "</tr>"
    forms = dict(zip(claims["id"], claims["form"]))
    main = "\n".join(row(i) for i in ids if forms[i] != "component")
    parts = "\n".join(row(i) for i in ids if forms[i] == "component")
    folded = (f"<details><summary>each noise ratio of 1a and 2a</summary><table>{head}\n{parts}</table></details>"
              if parts else "")
    return f"<table>{head}\n{main}</table>\n{folded}"


def set_index(folder: Path, name: str, description: str, related: list[tuple[str, Path]]) -> str:
    """A report set's ``index.html``."""
    claims = folder / "claims.csv"
    body = [f"<p>{html.escape(description)}</p>"] if description else []
    if claims.exists():
        body += ["<h2>The paper's claims, as measured here</h2>", f"<p>{RULE}</p>",
                 claims_html(pd.read_csv(claims, keep_default_na=False, na_values=[""]))]
    body += [f'<p><img src="{html.escape(f.name)}" alt="{html.escape(f.stem)}"></p>'
             for f in sorted(folder.glob("*.png"))]
    tables = sorted((*folder.glob("*.csv"), *folder.glob("*.yaml")))
    body.append("<h2>Tables</h2><ul>" + "".join(f'<li><a href="{html.escape(t.name)}">{html.escape(t.name)}</a></li>'
                                                 for t in tables) + "</ul>")
    pages = sorted(p for p in folder.glob("*.html") if p.name != "index.html")
    if pages:
        pages.sort(key=lambda p: (not p.name.startswith("05_"), p.name))
        body.append("<h2>Notebooks, rendered</h2><ul>" + "".join(
            f'<li><a href="{html.escape(p.name)}">{html.escape(page_title(name, p.name))}</a></li>' for p in pages)
            + "</ul>")
    if related:
        body.append("<h2>Experiments beside this set</h2><ul>" + "".join(
            f'<li><a href="{html.escape(link.as_posix())}">{html.escape(label)}</a></li>' for label, link in related)
            + "</ul>")
    nav = '<a href="../index.html">← all report sets</a> · <a href="../README.md">findings</a>'
    return _page(f"nmtune-study · {name}", nav, "\n".join(body))


def _first_table(folder: Path) -> Path | None:
    for name in ("claims.csv", "task_scores.csv", "learning_curve.csv"):
        if (folder / name).exists():
            return folder / name
    tables = sorted(folder.glob("*.csv"))
    return tables[0] if tables else None


def write_indexes(out_root: Path, also: tuple[str, ...] = ()) -> Path:
    """The ``index.html`` of every report set under ``out_root`` (the experiments of ``experiments.yaml`` that
    render notebooks, ``html``, whose folder exists, and the folders ``also``, e.g. a preset just rendered) and
    ``out_root/index.html``; returns the latter."""

    experiments = load_experiments()
    folder_of = {name: out_root / Path(e.report).relative_to("reports") for name, e in experiments.items()}
    sets = [e for e in experiments.values() if e.html and folder_of[e.name].is_dir()]
    others = [e for e in experiments.values() if not e.html and folder_of[e.name].is_dir()]
    for name, folder, description in [*((e.name, folder_of[e.name], e.description) for e in sets),
                                      *((a, out_root / a, "") for a in also if a not in experiments)]:
        related = [(f"{o.name}: {o.description or o.question}", table.relative_to(folder)) for o in others
                   for table in [_first_table(folder_of[o.name])]
                   if table is not None and folder_of[o.name].is_relative_to(folder)]
        atomic_write_text(folder / "index.html", set_index(folder, name, description, related))
    body = ['<p>Label noise in pre-training and NMTune (Chen et al., ICLR 2024), regenerated by one command per '
            'set. The findings, with a question and an answer per experiment: <a href="README.md">README.md</a>.</p>']
    main = [s for s in MAIN_SETS if s in folder_of and (folder_of[s] / "claims.csv").exists()]
    if main:
        body += ["<h2>The paper's claims across the report sets</h2>", f"<p>{RULE}</p>"]
    for protocol in PROTOCOLS if main else ():
        table = compare_claims([folder_of[s] for s in main], [protocol], main)
        table.columns = [c.rsplit(", ", 1)[0] for c in table.columns]
        body += [f"<h3>{protocol} protocol</h3>", matrix_html(table)]
    listed = [(e.name, folder_of[e.name], e.description) for e in sets] + [(a, out_root / a, "") for a in also
                                                                          if a not in experiments]
    body.append("<h2>Report sets</h2><table><tr><th>set</th><th>what it is</th></tr>" + "".join(
        f'<tr><td><a href="{html.escape(folder.relative_to(out_root).as_posix())}/index.html">{html.escape(name)}'
        f"</a></td><td>{html.escape(description)}</td></tr>" for name, folder, description in listed) + "</table>")
    rows = []
    for e in others:
        table = _first_table(folder_of[e.name])
        link = (f'<a href="{html.escape(table.relative_to(out_root).as_posix())}">{html.escape(e.name)}</a>'
                if table is not None else html.escape(e.name))
        rows.append(f"<tr><td>{link}</td><td>{html.escape(e.description or e.question)}</td></tr>")
    if rows:
        body.append("<h2>Reruns and probes</h2><table><tr><th>experiment</th><th>what it asks</th></tr>"
                    + "".join(rows) + "</table>")
    nav = '<a href="../README.md">← README</a> · <a href="README.md">findings</a>'
    return atomic_write_text(out_root / "index.html", _page("nmtune-study · reports", nav, "\n".join(body)))
