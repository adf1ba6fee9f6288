"""Result files: their schemas, one set of provenance attributes, netCDF save/load through h5netcdf, combining runs.

The one home of every per-run result's schema (``SCHEMAS``: ``history.nc``, ``spectrum.nc``, ``transfer.nc``: their
dims, variables and the provenance attributes all of them carry). Every result Dataset is written with
``save_dataset`` (atomic, explicit engine; checked against its schema when ``kind`` is given) and read with
``load_dataset`` (eager, so a file can be rewritten in place; an unreadable file or one that breaks its schema raises
naming the file). h5netcdf cannot store ``None``, dicts, lists or bools as attributes:
``sanitize_attrs`` turns them into ``""``, JSON strings and 0/1 before writing, so a saved Dataset reopens identical.
"""
from __future__ import annotations

import json
import os
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from . import __version__
from .files import atomic_target

ENGINE = "h5netcdf"
PROVENANCE = ("config", "checkpoint_sha256", "manifest_sha256", "python_version", "torch_version", "timm_version",
              "xarray_version", "numpy_version", "nmtune_lib_version", "created")  # keys of provenance_attrs


@dataclass(frozen=True)
class Schema:
    """What a result file must hold: its dims, its variables, and the provenance attributes (``PROVENANCE``)."""

    kind: str
    dims: tuple[str, ...]
    variables: tuple[str, ...]
    written_by: str  # the step that recomputes it

    def check(self, ds: xr.Dataset, path: str | os.PathLike = "") -> xr.Dataset:
        """``ds`` unchanged if it follows the schema, else ``ValueError`` naming the file and what is missing."""
        missing = [f"dim {d!r}" for d in self.dims if d not in ds.dims]
        missing += [f"variable {v!r}" for v in self.variables if v not in ds.variables]
        missing += [f"attribute {a!r}" for a in PROVENANCE if a not in ds.attrs]
        if missing:
            where = f"{path} " if path else ""
            raise ValueError(f"{where}is not a valid {self.kind} result: it lacks {', '.join(missing)}; recompute it "
                             f"({self.written_by})")
        return ds


RUN_DIMS = ("noise_ratio", "seed")
SCHEMAS = {
    "history": Schema("history", ("epoch",), ("train_loss", "train_acc_noisy", "test_acc", "memo_noisy", "memo_clean",
                                              "lr", "seconds", "images_per_s"), "notebook 02, pretraining.pretrain"),
    "spectrum": Schema("spectrum", (*RUN_DIMS, "dataset", "centering", "component"),
                       ("singular_values", "normalized_singular_values", "sve", "p1", "sigma1", "num_samples",
                        "num_features", "checkpoint_sha256", "manifest_sha256"), "notebook 03"),
    "transfer": Schema("transfer", (*RUN_DIMS, "setting", "protocol", "method", "task", "test_domain"),
                       ("accuracy", "fit_seconds", "lr", "head_mode", "task_kind", "train_domain", "chance",
                        "view_flip"), "notebook 04"),
}


# --- attributes ------------------------------------------------------------------------------------------------

def sanitize_attr(value: Any) -> Any:
    """One attribute value in a form h5netcdf stores and returns unchanged.

    None → ``""``; bool → 0/1; dict, list, tuple, set → a JSON string (keys sorted); Path → str; str and numeric
    scalars/arrays as they are (bool arrays → int8); anything else → ``str(value)``.
    """
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (dict, list, tuple, set)):
        return json.dumps(sorted(value) if isinstance(value, set) else value, sort_keys=True, default=str)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.ndarray):
        return value.astype(np.int8) if value.dtype == bool else value
    if isinstance(value, str):
        return str(value)  # plain str: h5py rejects str subclasses such as torch's TorchVersion
    if isinstance(value, (int, float, np.integer, np.floating)):
        return value
    return str(value)


def sanitize_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``sanitize_attr`` applied to every value (keys become str)."""
    return {str(k): sanitize_attr(v) for k, v in attrs.items()}


def provenance_attrs(config: Any = None, *, checkpoint_sha256: str = "", manifest_sha256: str = "") -> dict[str, Any]:
    """Attributes every result carries: the resolved config as JSON, the checkpoint and noise-manifest hashes,
    package versions (python, torch, timm, xarray, numpy, nmtune_lib) and the UTC creation time.

    ``config``: a ``StudyConfig`` (its ``to_json()``), a dict (dumped to JSON), a JSON string, or None (``""``).
    """
    import timm
    import torch

    if config is None:
        config_json = ""
    elif isinstance(config, str):
        config_json = config
    elif hasattr(config, "to_json"):
        config_json = config.to_json()
    else:
        config_json = json.dumps(dict(config), sort_keys=True, default=str)
    return {
        "config": config_json,
        "checkpoint_sha256": checkpoint_sha256 or "",
        "manifest_sha256": manifest_sha256 or "",
        "python_version": platform.python_version(),
        "torch_version": str(torch.__version__),
        "timm_version": timm.__version__,
        "xarray_version": xr.__version__,
        "numpy_version": np.__version__,
        "nmtune_lib_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# --- files -----------------------------------------------------------------------------------------------------

def _writable(ds: xr.Dataset) -> xr.Dataset:
    """A shallow copy with sanitised attrs on the Dataset and every variable, and missing entries of string
    (object) variables — NaN or None left by an outer join — stored as ``""`` (h5netcdf needs all-str arrays)."""
    out = ds.copy(deep=False)
    out.attrs = sanitize_attrs(ds.attrs)
    for name, var in out.variables.items():
        var.attrs = sanitize_attrs(var.attrs)
        if var.dtype == object:
            values = var.values
            missing = np.array([v is None or (isinstance(v, float) and v != v) for v in values.ravel()],
                               dtype=bool).reshape(values.shape)
            if missing.any():
                filled = values.copy()
                filled[missing] = ""
                if name in out.data_vars:
                    out[name] = var.copy(data=filled)
                else:
                    out = out.assign_coords({name: var.copy(data=filled)})
    return out


def save_dataset(ds: xr.Dataset, path: str | os.PathLike, kind: str | None = None) -> Path:
    """Write ``ds`` to netCDF (engine h5netcdf) atomically: a temp file in the same folder, then ``os.replace``.

    ``kind`` (a key of ``SCHEMAS``) checks ``ds`` against its schema first. Attributes are sanitised
    (``sanitize_attrs``); ``ds`` itself is left unchanged.
    """
    if kind is not None:
        SCHEMAS[kind].check(ds, path)
    with atomic_target(path) as tmp:
        _writable(ds).to_netcdf(tmp, engine=ENGINE)
    return Path(path)


def load_dataset(path: str | os.PathLike, kind: str | None = None) -> xr.Dataset:
    """Read a netCDF file eagerly (``xr.load_dataset``, engine h5netcdf): the file is closed on return.

    A file that is not readable netCDF (truncated, damaged) raises ``ValueError`` naming it; ``kind`` (a key of
    ``SCHEMAS``) also checks the schema."""
    try:
        ds = xr.load_dataset(path, engine=ENGINE)
    except FileNotFoundError:
        raise
    except Exception as err:  # h5py/h5netcdf raise OSError, KeyError, ValueError … for a damaged file
        step = f"; recompute it ({SCHEMAS[kind].written_by})" if kind else ""
        raise ValueError(f"{path} is not a readable netCDF file (truncated or damaged: {type(err).__name__}: "
                         f"{str(err)[:200]}){step}") from None
    return SCHEMAS[kind].check(ds, path) if kind else ds


def combine_runs(paths: Iterable[str | os.PathLike], kind: str | None = None) -> xr.Dataset:
    """One Dataset from the per-run files at ``paths`` (each with length-1 dims such as noise_ratio and seed).

    ``xr.combine_by_coords`` for a complete grid of runs; ``xr.merge`` (outer join, missing runs are NaN) when the
    grid has holes. Attributes equal in every run are kept; those that differ (creation time, hashes) are dropped
    from the top level and kept per run in the attribute ``run_attrs``, a JSON list of ``{"path": ..., attr: value}``.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("combine_runs needs at least one file")
    runs = [load_dataset(p, kind) for p in paths]
    try:
        # data_vars="minimal": a per-run variable such as checkpoint_sha256 (noise_ratio, seed) must not gain the
        # other concatenated dims (e.g. dataset when runs analysed different datasets)
        combined = xr.combine_by_coords(runs, compat="no_conflicts", data_vars="minimal", coords="different",
                                        join="outer", combine_attrs="drop_conflicts")
    except ValueError:
        # combine_by_coords wants a full hypercube of tiles; merge aligns any set of disjoint runs
        combined = xr.merge(runs, compat="no_conflicts", join="outer", combine_attrs="drop_conflicts")
    # the files' on-disk encodings (int64 without _FillValue) would cast the NaN of missing runs to garbage ints
    combined = combined.drop_encoding()
    dropped = sorted({k for ds in runs for k in ds.attrs} - set(combined.attrs))
    combined.attrs["run_attrs"] = json.dumps(
        [{"path": str(p), **{k: _plain(ds.attrs[k]) for k in dropped if k in ds.attrs}} for p, ds in zip(paths, runs)],
        sort_keys=True)
    return combined


def _plain(value: Any) -> Any:
    """A netCDF attribute value as a JSON-serialisable Python value."""
    return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value


# --- what produced a result ---------------------------------------------------------------------------------------

def device_name(device) -> str:
    """The device a run used, as its summary records it: ``cuda:0 (NVIDIA H100 …)`` or ``cpu (x86_64, 16 cores)``."""
    import torch  # heavy: deferred so that reading and writing result files imports no torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def package_versions() -> dict[str, str]:
    """torch, timm, nmtune_lib and Python versions, as a pre-training summary records them."""
    import timm  # heavy: deferred, as in provenance_attrs
    import torch

    return dict(torch=torch.__version__, timm=timm.__version__, nmtune_lib=__version__,
                python=platform.python_version())
