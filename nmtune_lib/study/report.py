"""HTML reports of a sweep (``nmtune report``): executed notebooks rendered by nbconvert, and an index with the
claims table, the summary's figures and its CSV tables on top."""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

from ..config import PROJECT_ROOT
from ..files import atomic_write, atomic_write_text
from ..markers import read_marker
from ..run import PROVENANCE, Study
from .chains import RUN_NOTEBOOKS, SUMMARY_NOTEBOOK
from .report_index import page_title, write_indexes

PAGE_STYLE = "<style>.jp-RenderedHTMLCommon table{display:block;max-width:100%;overflow-x:auto}</style>"


STYLESHEET = re.compile(r"<style[^>]*>(.*?)</style>\s*", re.S)


SHEET_NAME = "nbconvert-{}.css"  # the shared stylesheet's file name, {} its content's sha256[:12]
SHEET_PATTERN = re.escape(SHEET_NAME).replace(r"\{\}", "[0-9a-f]{12}")


def share_stylesheet(page: str, folder: Path, href_prefix: str = "") -> tuple[str, str]:
    """Move the ``<style>`` blocks of a page's ``<head>`` (nbconvert's lab theme, ≈ 260 kB, the same in every page)
    into ``folder/nbconvert-<sha256[:12]>.css`` and link it as ``href_prefix + name`` instead; styles inside the body
    (a pandas table's) stay. Returns (page, the stylesheet's file name)."""
    import hashlib

    head, sep, rest = page.partition("</head>")
    css = "\n".join(STYLESHEET.findall(head))
    name = SHEET_NAME.format(hashlib.sha256(css.encode()).hexdigest()[:12])
    if not (folder / name).exists():
        atomic_write_text(folder / name, css)
    link = f'<link rel="stylesheet" href="{href_prefix}{name}">\n'
    return STYLESHEET.sub("", head) + link + sep + rest, name


EMBEDDED_PNG = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")


def compact_png(raw: bytes) -> bytes:
    """A PNG re-encoded as a 256-colour PNG (Pillow: onto white, median-cut palette, no dithering, optimised), or
    ``raw`` itself where that is not smaller or it already is a palette image. Figures are most of a report's bytes.
    On the 45 figures of the default report's first 30 pages: 2.7× smaller, and a mean absolute pixel change of at
    most 0.12 of 255 (the antialiased edges lose a few of their thousands of shades)."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(raw))
    if image.mode == "P":
        return raw
    image = image.convert("RGBA")
    flat = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image).convert("RGB")
    out = io.BytesIO()
    flat.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, "PNG", optimize=True)
    return out.getvalue() if out.tell() < len(raw) else raw


def compact_figures(page: str) -> str:
    """Each figure embedded in a page re-encoded by ``compact_png``."""
    import base64

    def compact(match: re.Match) -> str:
        raw = base64.b64decode(match.group(1))
        small = compact_png(raw)
        return match.group(0) if small is raw else "data:image/png;base64," + base64.b64encode(small).decode()

    return EMBEDDED_PNG.sub(compact, page)


# nbconvert's lab template puts its mermaid.js loader (≈ 11.6 kB) into every page; it returns at once on a page
# without a diagram, which every page of the study is.
MERMAID_LOADER = re.compile(r'<script type="module">\s*document\.addEventListener\("DOMContentLoaded", async \(\) => \{'
                            r'\s*const diagrams = document\.querySelectorAll\("\.jp-Mermaid > pre\.mermaid"\);'
                            r'.*?</script>\s*', re.S)


def drop_idle_mermaid(page: str) -> str:
    """``page`` without nbconvert's mermaid loader when it has no diagram for it to draw (a page with one keeps it)."""
    rest = MERMAID_LOADER.sub("", page, count=1)
    return page if 'class="jp-Mermaid"' in rest else rest


# --- pages a reader can navigate, with no path of the machine that rendered them ----------------------------------

ABSOLUTE = re.compile(r"(?:/work|/tmp|/home|/root|/Users)/[^\s'\"<>&]*")  # what relocate leaves in no page


def relative_root(path: str) -> str:
    """A run root (or a path in one) as it reads in a report: from its ``runs`` folder on (``/x/runs/probe`` →
    ``runs/probe``), or ``runs`` for a root named otherwise."""
    head, sep, tail = path.partition("/runs")
    if sep and (not tail or tail.startswith("/")):
        return "runs" + tail
    return "runs"


def relocate(text: str, run_roots: tuple[str, ...] = ()) -> str:
    """``text`` with every absolute path of the rendering machine made relative: the run roots (``run_roots``, and
    any ``…/runs``) from their ``runs`` folder on, the project root as ``.``; any other absolute path under a home,
    /work or /tmp keeps only its name."""
    for root in sorted((r for r in run_roots if r), key=len, reverse=True):
        text = text.replace(root, relative_root(root))
    text = text.replace(f"{PROJECT_ROOT}/", "").replace(str(PROJECT_ROOT), ".")
    return ABSOLUTE.sub(lambda m: relative_root(m.group(0)) if "/runs" in m.group(0)
                        else "…/" + m.group(0).rstrip("/").rsplit("/", 1)[-1], text)


CONFIG_PRE = re.compile(r"(?<!</summary>)(<pre>)((?:(?!</pre>).)*?\n\s*'?run_root'?:(?:(?!</pre>).)*?</pre>)", re.S)


def fold_configuration(page: str) -> str:
    """Each printed configuration (a ``<pre>`` with a ``run_root`` line: the resolved config, or the notebook's
    parameters) folded into a ``<details>`` block a reader opens when needed."""
    def fold(match: re.Match) -> str:
        what = "notebook parameters" if match.group(2).lstrip().startswith("{") else "resolved configuration"
        return f"<details><summary>{what}</summary>{match.group(1)}{match.group(2)}</details>"

    return CONFIG_PRE.sub(fold, page)


NAV = re.compile(r'<p (?:class="nav"[^>]*|style="margin:1em 2em")>.*?</p>', re.S)
def finish_page(page: str, *, set_name: str, title: str, run_roots: tuple[str, ...] = ()) -> str:
    """A rendered page made navigable and portable: its ``<title>`` and a bar linking the set's index and every
    set (``reports/index.html``), its printed configurations folded (``fold_configuration``), no absolute path
    (``relocate``). Idempotent: a finished page comes out unchanged."""
    up = "../" * (set_name.count("/") + 1)
    bar = (f'<p class="nav" style="margin:1em 2em"><a href="index.html">← {html.escape(set_name)}</a> · '
           f'<a href="{up}index.html">all report sets</a> · <b>{html.escape(title)}</b></p>')
    page = re.sub(r"<title>.*?</title>", f"<title>{html.escape(title)}</title>", page, count=1, flags=re.S)
    page = NAV.sub(bar, page, count=1) if NAV.search(page) else re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + bar,
                                                                       page, count=1)
    return relocate(fold_configuration(page), run_roots)


def render_html(notebook: Path, out: Path, *, set_name: str, run_roots: tuple[str, ...] = ()) -> Path:
    """One executed notebook → one HTML file (lab template, no input cells, figures embedded and compacted by
    ``compact_figures``, no idle mermaid loader: ``drop_idle_mermaid``) whose stylesheet is shared with every page of
    every report set (``share_stylesheet`` into the reports root), finished by ``finish_page``; wide tables scroll
    inside the page."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True)
    title = page_title(set_name, out.name)
    body, _ = exporter.from_notebook_node(nbformat.read(str(notebook), as_version=4),
                                          resources={"metadata": {"name": title}})
    depth = set_name.count("/") + 1
    body, _ = share_stylesheet(body, _reports_root(out, depth), "../" * depth)
    body = drop_idle_mermaid(compact_figures(body))  # after: the theme's own tiny images stay as nbconvert wrote them
    body = body.replace("</head>", PAGE_STYLE + "</head>", 1)
    return atomic_write_text(out, finish_page(body, set_name=set_name, title=title, run_roots=run_roots))


def _reports_root(out: Path, depth: int) -> Path:
    root = out.parent
    for _ in range(depth):
        root = root.parent
    return root


def remove_stale_stylesheets(out_root: Path) -> None:
    """Delete every ``nbconvert-*.css`` in ``out_root`` or one of its report sets that no page links (pages of
    earlier versions link a copy in their own folder, and keep it)."""
    used = {(page.parent / href).resolve() for page in out_root.glob("*/*.html")
            for href in re.findall(f'href="((?:\\.\\./)?{SHEET_PATTERN})"', page.read_text())}
    for sheet in (*out_root.glob(SHEET_NAME.format("*")), *out_root.glob("*/" + SHEET_NAME.format("*"))):
        if sheet.resolve() not in used:
            sheet.unlink()


def report(study: Study, out_root: Path, *, all_seeds: bool = False) -> Path:
    """Render the summary and the executed run notebooks (seed 0 of each ratio unless ``all_seeds``) into
    ``out_root/<preset>/``, copy the summary's tables and figures there, and write the set's ``index.html`` and the
    index of every set (``out_root/index.html``)."""
    config = study.config
    if not study.dir.is_dir():
        raise ValueError(f"no runs of preset {config.preset!r} under {config.run_root}: run "
                         f"'nmtune sweep --preset {config.preset}' first, or pass the --run-root it used")
    check_code(study)
    out = out_root / config.preset
    out.mkdir(parents=True, exist_ok=True)
    roots = (str(config.run_root),)
    summary = study.path(f"{SUMMARY_NOTEBOOK}.ipynb")
    if summary.exists():
        render_html(summary, out / f"{SUMMARY_NOTEBOOK}.html", set_name=config.preset, run_roots=roots)
    for run in study.runs():
        if not all_seeds and run.seed != config.seeds[0]:
            continue
        for name in RUN_NOTEBOOKS:
            if run.notebook(name).exists():
                render_html(run.notebook(name), out / f"{run.dir.parent.name}_seed{run.seed}_{name}.html",
                            set_name=config.preset, run_roots=roots)
    for path in sorted(study.dir.glob("*.png")):  # the summary's key figures, compacted as the pages' figures are
        atomic_write(out / path.name, lambda fh, f=path: fh.write(compact_png(f.read_bytes())))
    for path in (*sorted(study.dir.glob("*.csv")), study.path("config.yaml"), study.path(PROVENANCE)):
        if path.exists():
            atomic_write_text(out / path.name, relocate(path.read_text(), roots))
    write_indexes(out_root, also=(config.preset,))
    remove_stale_stylesheets(out_root)
    return out / "index.html"


def check_code(study: Study) -> None:
    """Refuse a set whose runs were computed by different code: for every notebook, the code its runs' markers
    record (``keys.code_key``) must be one, and the study folder's ``provenance.json`` must say the same; a marker
    written before code was tracked is let through (nothing to compare)."""
    recorded = json.loads(study.path(PROVENANCE).read_text()) if study.path(PROVENANCE).exists() else {}
    for name in (*RUN_NOTEBOOKS, SUMMARY_NOTEBOOK):
        markers = ([(run.dir, read_marker(run.dir / f"{name}.done")) for run in study.runs()]
                   if name != SUMMARY_NOTEBOOK else [(study.dir, read_marker(study.path(f"{name}.done")))])
        codes = {where: json.dumps(m["key"]["code"], sort_keys=True) for where, m in markers
                 if m and "code" in m.get("key", {})}
        expected = json.dumps(recorded[name], sort_keys=True) if name in recorded else None
        common = expected or (max(set(codes.values()), key=list(codes.values()).count) if codes else None)
        odd = [str(where) for where, code in codes.items() if code != common]
        if odd:
            raise ValueError(f"{name} of {len(odd)} run(s) was computed by other code than the rest of the set "
                             f"({'the sweep recorded' if expected else 'the other runs'}): {', '.join(odd[:4])}"
                             f"{' …' if len(odd) > 4 else ''}; rerun the sweep, which recomputes them")


def refinish_pages(out_root: Path) -> list[Path]:
    """Every committed page of every report set under ``out_root`` finished again (``finish_page``: title, links,
    folded configuration, no absolute path), and every text table relocated; the files that changed."""
    changed = []
    for page in sorted(out_root.glob("*/*.html")):
        if page.name == "index.html":
            continue
        text = page.read_text()
        new = finish_page(text, set_name=page.parent.name, title=page_title(page.parent.name, page.name))
        if new != text:
            atomic_write_text(page, new)
            changed.append(page)
    for table in sorted((*out_root.rglob("*.csv"), *out_root.rglob("*.yaml"))):
        text = table.read_text()
        if ABSOLUTE.search(text):
            atomic_write_text(table, relocate(text))
            changed.append(table)
    return changed
