"""Notebook parameters, declared once and checked strictly.

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
