"""Notebook parameters, described once and checked strictly.

Each notebook declares its parameters in its first code cell (tagged ``parameters``), typed, one per line with a
help comment: ``noise_ratio: float = 0.1  # …``. Papermill reads the names, types and defaults from there
(``papermill --help-notebook``, ``papermill.inspect_notebook``) and only *warns* about a name the notebook does not
declare, so a mistyped ``-p noise_ration 0.2`` would run the notebook at its default. Hence the notebook's next
cell calls ``check_parameters(globals(), "<notebook>")``: before any import of data or any file is written, an
undeclared name or a value of the wrong type raises, naming it and listing the valid parameters.
"""
from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import Any

from .config import PROJECT_ROOT

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
# Every notebook parameter, described once: name → (type, default, help). A notebook's parameters cell holds the
# lines ``parameter_line`` renders for the names it uses, in this order (tests/test_notebooks.py checks that each
# cell and this table agree), so that adding a preset or rewording a help text is one edit here.
PARAMETERS: dict[str, tuple[str, Any, str]] = {
    "preset": ("str", "default", "smoke | default | converged | clip | asymmetric | instance | fine | gpu | paper"),
    "dataset": ("str", "", "pre-training dataset (fashion_mnist, mnist5k, uci_digits, imagenet); empty means the "
                           "preset's"),
    "noise_kind": ("str", "", "symmetric | asymmetric | instance | caption_swap; empty means the preset's"),
    "noise_ratio": ("float", 0.1, "fraction of the pre-training labels flipped (captions swapped), in [0, 1)"),
    "noise_ratios": ('"Optional[list]"', None, "the grid's noise ratios; None means the preset's"),
    "seed": ("int", 0, "seed of the run: fixes the noise, the pre-training and every head's draws"),
    "seeds": ('"Optional[list]"', None, "the grid's seeds; None means the preset's"),
    "run_root": ("str", "", "root of all run directories; \"\" means $NMTUNE_RUNS, else <project root>/runs"),
    "analysis_dataset": ("str", "", "analysed images, name or name/split; empty means the pre-training dataset's "
                                    "test split"),
    "probe": ("str", "lp", "head through which claims 1-3 read the pre-trained features"),
    "centering": ("str", "column", "centring of the spectrum claim 3 is judged on (column | row | none)"),
    "device": ("str", "", "auto | cpu | cuda | cuda:N | mps; empty means the preset's"),
    "progress": ("bool", True, "progress bars (True) or one printed line per step (False; the sweep's choice)"),
    "overrides": ("str", "{}", "JSON object of further StudyConfig fields, e.g. {\"head_epochs\": 5}"),
}


def parameter_line(name: str) -> str:
    """The parameters-cell line of ``name``: ``noise_ratio: float = 0.1  # …`` (from ``PARAMETERS``)."""
    kind, default, text = PARAMETERS[name]
    literal = '"' + default.replace('"', '\\"') + '"' if isinstance(default, str) else repr(default)
    return f"{name}: {kind} = {literal}  # {text}"


def parameters_cell(names: list[str]) -> str:
    """A notebook's parameters cell for the parameters ``names`` (in ``PARAMETERS``' order)."""
    unknown = sorted(set(names) - set(PARAMETERS))
    if unknown:
        raise ValueError(f"unknown notebook parameter(s) {unknown}; described: {', '.join(PARAMETERS)}")
    return "\n".join(parameter_line(name) for name in PARAMETERS if name in names)
_KERNEL_NAMES = {"In", "Out", "exit", "quit", "get_ipython", "open", "display"}  # what IPython puts in a namespace
_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
                                       "list": (list, tuple), "dict": (dict,)}


def declared_parameters(notebook: str | Path) -> dict[str, dict[str, Any]]:
    """papermill's view of a notebook's parameters cell: name → {inferred_type_name, default, help}.

    ``notebook``: a path, or the name of one of the study's notebooks (``"04_transfer"``)."""
    import papermill as pm

    path = Path(notebook)
    if path.suffix != ".ipynb":
        path = NOTEBOOK_DIR / f"{notebook}.ipynb"
    return pm.inspect_notebook(str(path))


def check_parameters(namespace: dict[str, Any], notebook: str | Path) -> dict[str, Any]:
    """Refuse names in ``namespace`` that ``notebook`` does not declare, and declared values of the wrong type;
    return the declared parameters and their values. Call it in the cell after the parameters cell."""
    declared = declared_parameters(notebook)
    names = sorted(declared)
    unknown = [k for k, v in namespace.items()  # parameters are plain values; imports (modules, functions) are not
               if not k.startswith("_") and k not in declared and k not in _KERNEL_NAMES and not callable(v)
               and not inspect.ismodule(v)]
    if unknown:
        hints = [f"{u!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(u, names, 1)) else repr(u)
                 for u in sorted(unknown)]
        raise ValueError(f"unknown notebook parameter(s) {', '.join(hints)}; this notebook takes: "
                         f"{', '.join(names)}")
    for name, spec in declared.items():
        _check_type(name, namespace.get(name), spec["inferred_type_name"])
    return {name: namespace.get(name) for name in names}


def _check_type(name: str, value: Any, type_name: str) -> None:
    """``str``, ``int``, ``float``, ``bool``, ``list``, ``dict``, or ``Optional[...]`` of one of them."""
    optional = type_name.startswith("Optional[")
    inner = type_name[len("Optional["):-1] if optional else type_name
    if value is None and optional:
        return
    accepted = _TYPES.get(inner)
    if accepted is None:
        return  # an annotation this check does not know: papermill shows it, nothing more to check
    if isinstance(value, bool) and bool not in accepted:
        ok = False  # True is an int to Python, never to a parameter
    else:
        ok = isinstance(value, accepted)
    if not ok:
        raise ValueError(f"notebook parameter {name}={value!r}: expected {type_name}")
