"""HTML reports of a sweep (``nmtune report``): executed notebooks rendered by nbconvert, and an index with the
claims table, the summary's figures and its CSV tables on top."""
from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

from .files import atomic_write, atomic_write_text
from .run import Study
from .sweep import RUN_NOTEBOOKS, SUMMARY_NOTEBOOK

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


def render_html(notebook: Path, out: Path, *, title: str = "") -> Path:
    """One executed notebook → one HTML file (lab template, no input cells, figures embedded and compacted by
    ``compact_figures``, no idle mermaid loader: ``drop_idle_mermaid``) whose stylesheet is shared with every page of
    every report set (``share_stylesheet`` into the folder above ``out``'s, the reports root), with ``title`` as its
    title, a link back to the report's ``index.html`` and wide tables scrolling inside the page."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True)
    title = title or notebook.stem
    body, _ = exporter.from_notebook_node(nbformat.read(str(notebook), as_version=4),
                                          resources={"metadata": {"name": title}})
    back = (f'<p style="margin:1em 2em"><a href="index.html">← nmtune-study report index</a> · '
            f'{html.escape(title)}</p>')
    body, _ = share_stylesheet(body, out.parent.parent, "../")
    body = drop_idle_mermaid(compact_figures(body))  # after: the theme's own tiny images stay as nbconvert wrote them
    body = body.replace("</head>", PAGE_STYLE + "</head>", 1)
    body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + back, body, count=1)
    return atomic_write_text(out, body)


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
    ``out_root/<preset>/`` and write ``index.html`` with the claims table on top."""
    config = study.config
    if not study.dir.is_dir():
        raise ValueError(f"no runs of preset {config.preset!r} under {config.run_root}: run "
                         f"'nmtune sweep --preset {config.preset}' first, or pass the --run-root it used")
    out = out_root / config.preset
    out.mkdir(parents=True, exist_ok=True)
    pages: list[tuple[str, str]] = []
    summary = study.path(f"{SUMMARY_NOTEBOOK}.ipynb")
    if summary.exists():
        render_html(summary, out / f"{SUMMARY_NOTEBOOK}.html", title=f"{config.preset}: summary")
        pages.append(("Summary: the paper's claims, figures and tables", f"{SUMMARY_NOTEBOOK}.html"))
    for run in study.runs():
        if not all_seeds and run.seed != config.seeds[0]:
            continue
        for name in RUN_NOTEBOOKS:
            if run.notebook(name).exists():
                target = f"{run.dir.parent.name}_seed{run.seed}_{name}.html"
                render_html(run.notebook(name), out / target, title=f"{config.preset}: {run.name}, {name}")
                pages.append((f"{run.name} · {name}", target))
    figures = sorted(study.dir.glob("*.png"))  # the summary's key figures, shown on the index
    tables = sorted(study.dir.glob("*.csv"))  # claims, decomposition, noise_effects, sensitivity, … timing
    extra = [study.path("config.yaml")] if study.path("config.yaml").exists() else []
    for path in figures:  # compacted as the pages' figures are
        atomic_write(out / path.name, lambda fh, f=path: fh.write(compact_png(f.read_bytes())))
    for path in (*tables, *extra):
        atomic_write(out / path.name, lambda fh, f=path: fh.write(f.read_bytes()))
    claims = study.path("claims.json")
    records = json.loads(claims.read_text()) if claims.exists() else None
    if isinstance(records, dict):  # summary.claims_document; run roots made before it hold the bare list
        records = records["claims"]
    table = _claims_html(records) if records else \
        "<p>No claims table yet: run <code>nmtune sweep</code> (notebook 05 writes it).</p>"
    links = "\n".join(f'<li><a href="{html.escape(href)}">{html.escape(title)}</a></li>' for title, href in pages)
    atomic_write_text(out / "index.html", f"""<!doctype html>
<html><head><meta charset="utf-8"><title>nmtune-study · {config.preset}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}
.supported{{background:#e6f4ea}}.contradicted{{background:#fce8e6}}.inconclusive{{background:#fef7e0}}</style>
</head><body>
<h1>nmtune-study · preset <code>{config.preset}</code></h1>
<p>Label noise in pre-training and NMTune (Chen et al., ICLR 2024), regenerated by <code>make study</code>.</p>
<h2>Claims of the paper, as measured here</h2>
{table}
{"".join(f'<p><img src="{html.escape(f.name)}" style="max-width:100%"></p>' for f in figures)}
<h2>Tables (CSV)</h2>
<ul>
{"".join(f'<li><a href="{html.escape(t.name)}">{html.escape(t.name)}</a></li>' for t in (*tables, *extra))}
</ul>
<h2>Notebooks</h2>
<ul>
{links}
</ul>
</body></html>
""")
    remove_stale_stylesheets(out_root)
    return out / "index.html"


def _claims_html(claims: list[dict[str, Any]]) -> str:
    head = "<tr><th>protocol</th><th>claim</th><th>measured effect (95% CI)</th><th>rule</th><th>verdict</th></tr>"
    rows = "\n".join(
        f'<tr class="{html.escape(c["verdict"])}"><td>{html.escape(c.get("protocol", ""))}</td>'
        f'<td>{html.escape(c["claim"])}</td>'
        f'<td>{html.escape(c["effect"])}</td><td>{html.escape(c["rule"])}</td>'
        f'<td>{html.escape(c["verdict"])}</td></tr>' for c in claims)
    return f"<table>{head}\n{rows}</table>"
