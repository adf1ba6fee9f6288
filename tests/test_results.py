"""Tests of nmtune_lib.results: attribute sanitising, atomic netCDF round trips, provenance, combining runs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from nmtune_lib.config import StudyConfig
from nmtune_lib.results import combine_runs, load_dataset, provenance_attrs, sanitize_attrs, save_dataset


def run(noise_ratio: float, seed: int, *, value: float | None = None, created: str = "t0") -> xr.Dataset:
    """A per-run result in the shape the notebooks write: length-1 noise_ratio and seed dims."""
    acc = np.array([[[value if value is not None else noise_ratio + seed / 10, 0.5]]])
    return xr.Dataset(
        {"accuracy": (("noise_ratio", "seed", "task"), acc, {"units": "fraction"}),
         "num_samples": (("noise_ratio", "seed"), np.array([[100]], dtype=np.int64)),
         "checkpoint_sha256": (("noise_ratio", "seed"), np.array([[f"ck{noise_ratio}-{seed}"]], dtype=object))},
        coords={"noise_ratio": [noise_ratio], "seed": np.array([seed], dtype=np.int64),
                "task": np.array(["cifar10", "dtd"], dtype=object)},
        attrs={"config": '{"preset": "smoke"}', "created": created, "title": "transfer"})


def test_sanitize_attrs():
    out = sanitize_attrs({"none": None, "flag": True, "np_flag": np.bool_(False), "cfg": {"b": 1, "a": [1, 2]},
                          "grid": [0.0, 0.1], "tuple": (1, 2), "path": Path("runs/x"), "text": "ok", "n": 3,
                          "x": 0.5, "other": object})
    assert out["none"] == "" and out["flag"] == 1 and out["np_flag"] == 0
    assert json.loads(out["cfg"]) == {"a": [1, 2], "b": 1} and out["cfg"].index('"a"') < out["cfg"].index('"b"')
    assert json.loads(out["grid"]) == [0.0, 0.1] and json.loads(out["tuple"]) == [1, 2]
    assert out["path"] == "runs/x" and out["text"] == "ok" and out["n"] == 3 and out["x"] == 0.5
    assert isinstance(out["other"], str)


def test_save_sanitises_a_copy_and_round_trips(tmp_path):
    ds = run(0.1, 0)
    ds.attrs.update(flag=True, nothing=None, cfg={"a": 1})
    ds["accuracy"].attrs["tuned"] = False
    path = save_dataset(ds, tmp_path / "sub" / "transfer.nc")
    assert ds.attrs["flag"] is True  # the caller's Dataset is not modified
    assert [p.name for p in path.parent.iterdir()] == ["transfer.nc"]  # no temp file left behind
    back = load_dataset(path)
    assert back.attrs["flag"] == 1 and back.attrs["nothing"] == "" and json.loads(back.attrs["cfg"]) == {"a": 1}
    assert back["accuracy"].attrs["tuned"] == 0
    xr.testing.assert_equal(back, ds)
    with xr.open_dataset(path, engine="h5netcdf") as opened:
        assert opened.identical(back)


def test_load_then_overwrite_same_file(tmp_path):
    path = save_dataset(run(0.1, 0), tmp_path / "r.nc")
    ds = load_dataset(path)  # eager: the file is closed, so it can be replaced
    save_dataset(ds.assign(accuracy=ds["accuracy"] * 2), path)
    assert float(load_dataset(path)["accuracy"][0, 0, 0]) == pytest.approx(0.2)


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    path = save_dataset(run(0.1, 0), tmp_path / "r.nc")
    bad = run(0.2, 0).assign(broken=(("noise_ratio",), np.array([{"a": 1}], dtype=object)))
    with pytest.raises(Exception):
        save_dataset(bad, path)
    assert [p.name for p in tmp_path.iterdir()] == ["r.nc"]
    assert float(load_dataset(path)["noise_ratio"][0]) == pytest.approx(0.1)


def test_provenance_attrs():
    config = StudyConfig.from_preset("smoke")
    attrs = provenance_attrs(config, checkpoint_sha256="ab", manifest_sha256="cd")
    assert StudyConfig.from_json(attrs["config"]) == config
    assert attrs["checkpoint_sha256"] == "ab" and attrs["manifest_sha256"] == "cd"
    for package in ("torch", "timm", "xarray", "numpy"):
        assert attrs[f"{package}_version"]
    assert attrs["created"].endswith("+00:00")
    assert provenance_attrs(None)["config"] == "" and json.loads(provenance_attrs({"a": 1})["config"]) == {"a": 1}
    assert sanitize_attrs(attrs) == attrs  # already storable


def test_combine_complete_grid(tmp_path):
    paths = [save_dataset(run(r, s, created=f"t{r}{s}"), tmp_path / f"{r}-{s}.nc") for r in (0.0, 0.1) for s in (0, 1)]
    combined = combine_runs(paths)
    assert dict(combined.sizes) == {"noise_ratio": 2, "seed": 2, "task": 2}
    assert combined["accuracy"].sel(noise_ratio=0.1, seed=1, task="cifar10").item() == pytest.approx(0.2)
    assert combined["checkpoint_sha256"].sel(noise_ratio=0.0, seed=1).item() == "ck0.0-1"
    assert combined.attrs["config"] == '{"preset": "smoke"}' and "created" not in combined.attrs
    per_run = json.loads(combined.attrs["run_attrs"])
    assert [r["created"] for r in per_run] == ["t0.00", "t0.01", "t0.10", "t0.11"]
    assert [r["path"] for r in per_run] == [str(p) for p in paths]


def test_combine_grid_with_a_hole_and_save(tmp_path):
    cells = [(0.0, 0), (0.0, 1), (0.1, 0)]  # (0.1, 1) missing: not a hypercube for combine_by_coords
    combined = combine_runs([save_dataset(run(r, s), tmp_path / f"{r}-{s}.nc") for r, s in cells])
    assert dict(combined.sizes) == {"noise_ratio": 2, "seed": 2, "task": 2}
    assert np.isnan(combined["accuracy"].sel(noise_ratio=0.1, seed=1)).all()
    assert np.isnan(combined["num_samples"].sel(noise_ratio=0.1, seed=1))  # not a garbage integer
    back = load_dataset(save_dataset(combined, tmp_path / "all.nc"))
    assert back["checkpoint_sha256"].sel(noise_ratio=0.1, seed=1).item() == ""
    xr.testing.assert_equal(back["accuracy"], combined["accuracy"])


def test_combine_conflicting_duplicates_raise(tmp_path):
    a = save_dataset(run(0.0, 0, value=0.1), tmp_path / "a.nc")
    b = save_dataset(run(0.0, 0, value=0.9), tmp_path / "b.nc")
    with pytest.raises(ValueError):
        combine_runs([a, b])
    with pytest.raises(ValueError):
        combine_runs([])
