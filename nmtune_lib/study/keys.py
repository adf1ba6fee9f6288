"""What a step of the sweep computes with, as its completion marker's key: the configuration fields it reads, its
notebook's code, the library modules it runs, the versions of the packages that change numbers, and (``markers``)
its parameters and input files. A step reruns when any of them changed (``reasons`` names which), and so do the
steps that read its outputs: their inputs' hashes change with them.

- **configuration**: the resolved ``StudyConfig`` fields the step reads (``STEP_FIELDS``). Notebooks 01–03 read a
  few (noise, pre-training, spectrum); 04 reads every field but those only the earlier steps read, and 05 every
  field: a field no list names reruns 04 and 05, never silently nothing.
- **notebook code**: the sha256 of the notebook's code cells, each stripped of trailing whitespace and blank lines
  (markdown, outputs and metadata excluded: editing prose reruns nothing).
- **library**: the sha256 of every ``nmtune_lib`` module the notebook's code imports, followed through their own
  imports (function-local ones included): the step's stage and what it uses of the stages before it.
- **packages**: the versions of torch, timm and numpy.
"""
from __future__ import annotations

import ast
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..config import PROJECT_ROOT, StudyConfig
from ..parameters import NOTEBOOK_DIR

PACKAGE = PROJECT_ROOT / "nmtune_lib"
PACKAGES = ("torch", "timm", "numpy")  # the versions that change numbers
NEUTRAL = ("progress", "run_root", "preset")  # say how or where, not what (the preset's values are the fields)
NOISE_FIELDS = ("dataset", "data_root", "img_size", "train_subset", "noise_kind", "objective", "caption_attributes",
                "stream")
PRETRAIN_FIELDS = (*NOISE_FIELDS, "model", "small_stem", "epochs", "batch_size", "lr", "momentum", "weight_decay",
                   "label_smoothing", "clip_lr", "clip_weight_decay", "pretrained", "compile", "device",
                   "num_threads", "loader_workers")
SPECTRUM_FIELDS = ("spectrum_split", "spectrum_samples", "spectrum_top_k", "feature_batch_size", "device")
ONLY_BEFORE_04 = ("train_subset", "noise_kind", "objective", "caption_attributes", "stream", "small_stem", "epochs",
                  "batch_size", "lr", "momentum", "weight_decay", "label_smoothing", "clip_lr", "clip_weight_decay",
                  "compile", "loader_workers", "spectrum_split", "spectrum_samples", "spectrum_top_k")


def step_fields(name: str) -> tuple[str, ...]:
    """The configuration fields notebook ``name`` reads (see the module docstring)."""
    every = tuple(f for f in StudyConfig.__dataclass_fields__ if f not in NEUTRAL)
    return {"01_noise_injection": NOISE_FIELDS, "02_pretrain": PRETRAIN_FIELDS, "03_spectrum": SPECTRUM_FIELDS,
            "04_transfer": tuple(f for f in every if f not in ONLY_BEFORE_04)}.get(name, every)


def code_cells(name: str) -> list[str]:
    """The code cells of notebook ``name``, each without trailing whitespace or blank lines."""
    cells = json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text())["cells"]
    return ["\n".join(line.rstrip() for line in "".join(c["source"]).strip().splitlines() if line.strip())
            for c in cells if c["cell_type"] == "code"]


def _module_file(module: str) -> Path | None:
    path = PROJECT_ROOT / (module.replace(".", "/") + ".py")
    init = PROJECT_ROOT / module.replace(".", "/") / "__init__.py"
    return path if path.is_file() else init if init.is_file() else None


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """The ``nmtune_lib`` modules a syntax tree imports, at any depth, resolved to dotted names."""
    out = set()
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                target = ".".join(base[:len(base) - node.level + 1] + ([target] if target else []))
            if target.split(".")[0] != "nmtune_lib":
                continue
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names if _module_file(f"{target}.{a.name}"))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "nmtune_lib")
    return {m for m in out if _module_file(m)}


@lru_cache(maxsize=None)
def library_closure(name: str) -> tuple[str, ...]:
    """Every ``nmtune_lib`` module notebook ``name``'s code imports, followed through their imports, with the
    packages above each module (their ``__init__`` runs first)."""
    todo = _imports(ast.parse("\n".join(code_cells(name))), "__notebook__", False)
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo.update(".".join(parts[:i]) for i in range(1, len(parts)))
        path = _module_file(module)
        todo.update(_imports(ast.parse(path.read_text()), module, path.name == "__init__.py") - seen)
    return tuple(sorted(seen))


DATA_MODULES = ("nmtune_lib.presets",)  # values, not code: they enter a key through the configuration fields


def module_text(module: str) -> str:
    """The text of a module as its hash sees it (a module of ``DATA_MODULES``: none; see ``presets``)."""
    return "" if module in DATA_MODULES else _module_file(module).read_text()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def package_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in PACKAGES}


def code_key(name: str) -> dict[str, Any]:
    """The code half of notebook ``name``'s key: its code cells' hash, its library modules' hashes, the packages."""
    return {"notebook": _sha256("\n\n".join(code_cells(name))),
            "library": {m: _sha256(module_text(m)) for m in library_closure(name)},
            "packages": package_versions()}


def config_key(config: StudyConfig, name: str) -> dict[str, Any]:
    """The configuration fields notebook ``name`` reads, with their resolved values (JSON-ready)."""
    values = json.loads(config.to_json())
    return {f: values[f] for f in step_fields(name)}


def reasons(stored: dict[str, Any] | None, key: dict[str, Any]) -> list[str]:
    """Why a marker's key is not ``key``: one phrase per part that changed (empty when they agree)."""
    if stored is None:
        return ["not run yet"]
    if "code" not in stored or "config" not in stored:
        return ["written before code was tracked"]
    out = []
    changed = sorted(f for f in {*stored["config"], *key["config"]} if stored["config"].get(f) != key["config"].get(f))
    if changed:
        out.append(f"configuration field {', '.join(changed)}")
    if stored.get("parameters") != key.get("parameters"):
        out.append("notebook parameters")
    code, now = stored["code"], key["code"]
    if code.get("notebook") != now["notebook"]:
        out.append("notebook code")
    modules = sorted(m for m in {*code.get("library", {}), *now["library"]}
                     if code.get("library", {}).get(m) != now["library"].get(m))
    if modules:
        out.append(f"library module {', '.join(modules)}")
    versions = now["packages"]
    packages = [f"{p} {versions[p]}" for p in sorted(versions) if code.get("packages", {}).get(p) != versions[p]]
    if packages:
        out.append(f"package version {', '.join(packages)}")
    inputs = sorted(f for f in {*stored.get("inputs", {}), *key["inputs"]}
                    if stored.get("inputs", {}).get(f) != key["inputs"].get(f))
    if inputs:
        out.append(f"input file {', '.join(inputs)}")
    return out
