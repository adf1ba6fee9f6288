"""The study as one command: papermill runs per (noise ratio, seed), the summary, and HTML reports (``nmtune``).

``nmtune sweep`` executes notebooks 01–04 for every (noise ratio, seed) of a preset into the run directories, then
notebook 05 once for the preset. Completion of each notebook is marked by ``<NN_name>.done`` (JSON, written last and
atomically), so a rerun after a crash or ``kill -9`` skips finished work; the notebooks' own steps resume from their
checkpoints and caches, so the results equal those of an uninterrupted sweep. ``nmtune report`` renders executed
notebooks to HTML with nbconvert and writes an index with the claims table on top.
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import html
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .config import PROJECT_ROOT as ROOT
from .config import StudyConfig, parse_assignments
from .files import atomic_write, atomic_write_json, atomic_write_text
from .parameters import NOTEBOOK_DIR, declared_parameters

RUN_NOTEBOOKS = ("01_noise_injection", "02_pretrain", "03_spectrum", "04_transfer")
SUMMARY_NOTEBOOK = "05_summary"
MANAGED = ("preset", "dataset", "noise_ratio", "noise_kind", "seed", "run_root", "progress", "overrides")


@dataclass(frozen=True)
class RunSpec:
    """One (noise ratio, seed) chain of notebooks and the parameters each receives."""

    noise_ratio: float
    seed: int
    run_dir: Path
    parameters: dict[str, dict[str, Any]]  # notebook name -> parameters


def plan(config: StudyConfig, overrides: dict[str, Any], extra: dict[str, Any] | None = None) -> list[RunSpec]:
    """Every (ratio, seed) chain with per-notebook parameters, validated against each notebook before any compute.

    ``extra`` holds notebook parameters given with ``--param``: each must be declared by at least one notebook and
    must not be one the sweep sets itself.
    """
    declared = {name: declared_parameters(name) for name in (*RUN_NOTEBOOKS, SUMMARY_NOTEBOOK)}
    for name, params in declared.items():
        missing = [p for p in ("preset", "run_root", "overrides") if p not in params]
        if missing:
            raise ValueError(f"notebook {name} lacks the parameter(s) {missing} that the sweep sets")
    extra = extra or {}
    valid = sorted({p for params in declared.values() for p in params} - set(MANAGED))
    bad = sorted(set(extra) - set(valid))
    if bad:
        raise ValueError(f"unknown notebook parameter(s) {bad}; valid --param names: {', '.join(valid)} "
                         f"(the sweep sets {', '.join(MANAGED)} itself; config fields go through --set)")
    runs = []
    for ratio in config.noise_ratios:
        for seed in config.seeds:
            values = dict(preset=config.preset, dataset=config.dataset, noise_ratio=ratio, noise_kind=config.noise_kind,
                          seed=seed, run_root=config.run_root, progress=False, overrides=json.dumps(overrides),
                          **extra)
            parameters = {name: {k: v for k, v in values.items() if k in declared[name]} for name in RUN_NOTEBOOKS}
            runs.append(RunSpec(ratio, seed, config.run_dir(ratio, seed), parameters))
    return runs


def summary_parameters(config: StudyConfig, overrides: dict[str, Any]) -> dict[str, Any]:
    declared = declared_parameters(SUMMARY_NOTEBOOK)
    values = dict(preset=config.preset, dataset=config.dataset, noise_kind=config.noise_kind, run_root=config.run_root,
                  overrides=json.dumps(overrides))
    return {k: v for k, v in values.items() if k in declared}


def execute(name: str, out_dir: Path, parameters: dict[str, Any]) -> dict[str, Any]:
    """Run one notebook unless its ``.done`` marker matches; returns the marker (or raises on a failing cell).

    The executed notebook is written to ``out_dir/<name>.ipynb`` (kept when a cell fails, for inspection).
    """
    import papermill as pm

    marker = out_dir / f"{name}.done"
    if marker.exists():
        done = json.loads(marker.read_text())
        if done.get("parameters") == parameters:
            return {**done, "skipped": True}
        marker.unlink()  # other parameters: redo (the notebook's own steps refuse mismatched artefacts)
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("JUPYTER_PATH", str(Path(sys.prefix) / "share" / "jupyter"))  # the venv's kernel first
    start = time.perf_counter()
    pm.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(out_dir / f"{name}.ipynb"), parameters=parameters,
                        kernel_name="python3", cwd=str(ROOT), progress_bar=False, log_output=False)
    done = {"notebook": name, "parameters": parameters, "seconds": round(time.perf_counter() - start, 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_json(marker, done)
    return done


def _run_chain(run: RunSpec, threads: int) -> dict[str, Any]:
    """Worker: notebooks 01–04 of one run in order; stops the chain at the first failing notebook."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NMTUNE_NUM_THREADS"):
        os.environ[var] = str(threads)
    result: dict[str, Any] = {"run_dir": str(run.run_dir), "seconds": {}, "skipped": [], "error": None}
    for name in RUN_NOTEBOOKS:
        try:
            done = execute(name, run.run_dir, run.parameters[name])
        except Exception as err:  # papermill's PapermillExecutionError carries the failing cell
            cell = getattr(err, "exec_count", None)
            result["error"] = (f"{name} failed (cell [{cell}]: {getattr(err, 'ename', type(err).__name__)}: "
                               f"{getattr(err, 'evalue', err)}); partial notebook: {run.run_dir / (name + '.ipynb')}")
            break
        if done.get("skipped"):
            result["skipped"].append(name)
        else:
            result["seconds"][name] = done["seconds"]
    return result


def sweep(config: StudyConfig, overrides: dict[str, Any], *, jobs: int = 1, summary: bool = True,
          extra: dict[str, Any] | None = None) -> int:
    """Run every chain (``jobs`` in parallel processes, cores split between them), then the summary; return the
    number of failed runs."""
    from tqdm.auto import tqdm

    StudyConfig.from_preset(config.preset, **{**_grid_fields(config), **overrides})  # bad overrides raise now
    runs = plan(config, overrides, extra)
    cores = os.cpu_count() or 1
    jobs = max(1, min(jobs, len(runs)))
    threads = max(1, cores // jobs)
    failures: list[str] = []
    timings: dict[str, float] = {}
    skipped: dict[str, int] = {}
    bar = tqdm(total=len(runs), desc=f"sweep {config.preset}", unit="run", file=sys.stdout)
    if jobs == 1:
        results = (_run_chain(run, threads) for run in runs)
        pool = None
    else:
        pool = futures.ProcessPoolExecutor(max_workers=jobs)
        results = (f.result() for f in futures.as_completed([pool.submit(_run_chain, run, threads) for run in runs]))
    try:
        for result in results:
            bar.update(1)
            for name, seconds in result["seconds"].items():
                timings[name] = timings.get(name, 0.0) + seconds
            for name in result["skipped"]:
                skipped[name] = skipped.get(name, 0) + 1
            if result["error"]:
                failures.append(result["error"])
                tqdm.write(f"FAILED {result['run_dir']}: {result['error']}", file=sys.stdout)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown()
    if summary and not failures:
        try:
            done = execute(SUMMARY_NOTEBOOK, config.preset_dir(), summary_parameters(config, overrides))
            if done.get("skipped"):
                skipped[SUMMARY_NOTEBOOK] = 1
            else:
                timings[SUMMARY_NOTEBOOK] = done["seconds"]
        except Exception as err:
            failures.append(f"{SUMMARY_NOTEBOOK} failed: {err}; partial notebook: "
                            f"{config.preset_dir() / (SUMMARY_NOTEBOOK + '.ipynb')}")
    print("seconds per notebook (this invocation, all runs): " +
          (", ".join(f"{k} {v:.0f}" for k, v in sorted(timings.items())) or "none run"))
    if skipped:
        print("skipped (already complete): " + ", ".join(f"{k} ×{v}" for k, v in sorted(skipped.items())))
    if failures:
        print(f"{len(failures)} failure(s):\n  " + "\n  ".join(failures), file=sys.stderr)
    return len(failures)


def _grid_fields(config: StudyConfig) -> dict[str, Any]:
    return dict(dataset=config.dataset, noise_ratios=config.noise_ratios, seeds=config.seeds,
                noise_kind=config.noise_kind, run_root=config.run_root)


# --- reports ---------------------------------------------------------------------------------------------------------

PAGE_STYLE = "<style>.jp-RenderedHTMLCommon table{display:block;max-width:100%;overflow-x:auto}</style>"


def render_html(notebook: Path, out: Path, *, title: str = "") -> Path:
    """One executed notebook → one self-contained HTML file (lab template, no input cells, figures embedded), with
    ``title`` as its title, a link back to the report's ``index.html`` and wide tables scrolling inside the page."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True)
    title = title or notebook.stem
    body, _ = exporter.from_notebook_node(nbformat.read(str(notebook), as_version=4),
                                          resources={"metadata": {"name": title}})
    back = (f'<p style="margin:1em 2em"><a href="index.html">← nmtune-study report index</a> · '
            f'{html.escape(title)}</p>')
    body = body.replace("</head>", PAGE_STYLE + "</head>", 1)
    body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + back, body, count=1)
    return atomic_write_text(out, body)


def report(config: StudyConfig, out_root: Path, *, all_seeds: bool = False) -> Path:
    """Render the summary and the executed run notebooks (seed 0 of each ratio unless ``all_seeds``) into
    ``out_root/<preset>/`` and write ``index.html`` with the claims table on top."""
    if not config.preset_dir().is_dir():
        raise ValueError(f"no runs of preset {config.preset!r} under {config.run_root}: run "
                         f"'nmtune sweep --preset {config.preset}' first, or pass the --run-root it used")
    out = out_root / config.preset
    out.mkdir(parents=True, exist_ok=True)
    pages: list[tuple[str, str]] = []
    summary = config.preset_dir() / f"{SUMMARY_NOTEBOOK}.ipynb"
    if summary.exists():
        render_html(summary, out / f"{SUMMARY_NOTEBOOK}.html", title=f"{config.preset}: summary")
        pages.append(("Summary: the paper's claims, figures and tables", f"{SUMMARY_NOTEBOOK}.html"))
    seeds = config.seeds if all_seeds else config.seeds[:1]
    for ratio in config.noise_ratios:
        for seed in seeds:
            run_dir = config.run_dir(ratio, seed)
            for name in RUN_NOTEBOOKS:
                notebook = run_dir / f"{name}.ipynb"
                if notebook.exists():
                    target = f"{config.noise_kind}-{ratio:.2f}_seed{seed}_{name}.html"
                    render_html(notebook, out / target, title=f"{config.preset}: noise {ratio:.0%}, seed {seed}, {name}")
                    pages.append((f"noise {ratio:.0%} · seed {seed} · {name}", target))
    figures = sorted(config.preset_dir().glob("*.png"))  # the summary's key figures, shown on the index
    tables = sorted(config.preset_dir().glob("*.csv"))  # claims, decomposition, sensitivity, robustness, stability
    for path in (*figures, *tables):
        atomic_write(out / path.name, lambda fh, f=path: fh.write(f.read_bytes()))
    claims = config.preset_dir() / "claims.json"
    table = _claims_html(json.loads(claims.read_text())) if claims.exists() else \
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
{"".join(f'<li><a href="{html.escape(t.name)}">{html.escape(t.name)}</a></li>' for t in tables)}
</ul>
<h2>Notebooks</h2>
<ul>
{links}
</ul>
</body></html>
""")
    return out / "index.html"


def _claims_html(claims: list[dict[str, Any]]) -> str:
    head = "<tr><th>protocol</th><th>claim</th><th>measured effect (95% CI)</th><th>rule</th><th>verdict</th></tr>"
    rows = "\n".join(
        f'<tr class="{html.escape(c["verdict"])}"><td>{html.escape(c.get("protocol", ""))}</td>'
        f'<td>{html.escape(c["claim"])}</td>'
        f'<td>{html.escape(c["effect"])}</td><td>{html.escape(c["rule"])}</td>'
        f'<td>{html.escape(c["verdict"])}</td></tr>' for c in claims)
    return f"<table>{head}\n{rows}</table>"


# --- command line ----------------------------------------------------------------------------------------------------

def _config_from_args(args: argparse.Namespace) -> StudyConfig:
    grid: dict[str, Any] = {"run_root": args.run_root}
    if getattr(args, "noise_ratios", None):
        grid["noise_ratios"] = args.noise_ratios
    if getattr(args, "seeds", None):
        grid["seeds"] = args.seeds
    if getattr(args, "noise_kind", None):
        grid["noise_kind"] = args.noise_kind
    if getattr(args, "dataset", None):
        grid["dataset"] = args.dataset
    return StudyConfig.from_preset(args.preset, **grid)


def main(argv: Sequence[str] | None = None) -> int:
    from .config import NOISE_KINDS, PRESETS
    from .data import DATASETS

    parser = argparse.ArgumentParser(prog="nmtune", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sw = sub.add_parser("sweep", help="execute notebooks 01-04 per (noise ratio, seed), then 05")
    sw.add_argument("--preset", default="default", choices=list(PRESETS), help="(default: %(default)s)")
    sw.add_argument("--noise-ratios", nargs="+", type=float, help="default: the preset's")
    sw.add_argument("--seeds", nargs="+", type=int, help="default: the preset's")
    sw.add_argument("--noise-kind", choices=list(NOISE_KINDS), help="default: the preset's")
    sw.add_argument("--dataset", choices=list(DATASETS), help="pre-training dataset; default: the preset's")
    sw.add_argument("--jobs", type=int, default=1, help="(ratio, seed) runs in parallel processes (default: %(default)s)")
    sw.add_argument("--run-root", default="", help="root of the run directories (default: $NMTUNE_RUNS, else "
                    "<project root>/runs; a relative path is taken from the project root)")
    sw.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a StudyConfig field in every notebook, e.g. --set epochs=3")
    sw.add_argument("--param", dest="params", action="append", default=[], metavar="NAME=VALUE",
                    help="a notebook parameter (e.g. device=cpu), passed to the notebooks that declare it")
    sw.add_argument("--no-summary", action="store_true", help="skip notebook 05")
    rp = sub.add_parser("report", help="render executed notebooks to HTML with an index")
    rp.add_argument("--preset", default="default", choices=list(PRESETS), help="(default: %(default)s)")
    rp.add_argument("--run-root", default="", help="the sweep's run root (default: $NMTUNE_RUNS, else <project "
                    "root>/runs)")
    rp.add_argument("--out", default=str(ROOT / "reports"), help="report folder (default: %(default)s)")
    rp.add_argument("--all-seeds", action="store_true", help="render every seed, not only seed 0")
    args = parser.parse_args(argv)
    try:
        config = _config_from_args(args)
        if args.command == "sweep":
            if args.jobs < 1:
                raise ValueError(f"--jobs {args.jobs}: expected an integer >= 1")
            return 1 if sweep(config, parse_assignments(args.overrides), jobs=args.jobs, summary=not args.no_summary,
                              extra=parse_assignments(args.params)) else 0
        index = report(config, Path(args.out), all_seeds=args.all_seeds)
        print(f"report: {index}")
        return 0
    except ValueError as err:
        print(f"nmtune: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
