"""The benchmarks under bench/ start: every script imports and parses its arguments (a moved function breaks a
benchmark silently otherwise; their numbers are measured by running them, never asserted in tests)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = sorted((Path(__file__).resolve().parents[1] / "bench").glob("*.py"))


def test_there_are_benchmarks():
    assert {p.name for p in BENCH} >= {"head_tuning.py", "pretrain_throughput.py", "spectrum_speed.py"}


@pytest.mark.parametrize("script", BENCH, ids=lambda p: p.name)
def test_benchmark_starts(script):
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_stage_times_counts_a_notebook_cut_off_midway(tmp_path):
    """bench/stage_times.py: a finished notebook gives papermill's duration; one stopped after its second cell gives
    the time from its start to that cell's end and is not counted as finished."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("stage_times", BENCH[0].parent / "stage_times.py")
    stage_times = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage_times)

    def notebook(path, duration, ends):
        cells = [{"cell_type": "code", "metadata": {"papermill": (
            {"status": "completed", "end_time": f"2026-11-30T00:00:{end:02d}+00:00"} if end is not None
            else {"status": "pending"})}} for end in ends]
        meta = {"start_time": "2026-11-30T00:00:00+00:00", "duration": duration, "exception": None}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"metadata": {"papermill": meta}, "cells": cells}))

    run = tmp_path / "default" / "fashion_mnist" / "symmetric-0.10" / "seed0"
    notebook(run / "03_spectrum.ipynb", 12.5, [1, 5, 12])
    notebook(run / "04_transfer.ipynb", None, [2, 7, None, None])
    rows = {r["stage"]: r for r in stage_times.main([str(tmp_path), "--csv", str(tmp_path / "t.csv")])}
    assert rows["03_spectrum"] | {"run": ""} == {"run": "", "stage": "03_spectrum", "seconds": 12.5, "cells_done": 3,
                                                 "cells": 3, "finished": True}
    assert (rows["04_transfer"]["seconds"], rows["04_transfer"]["cells_done"], rows["04_transfer"]["finished"]) == \
        (7.0, 2, False)
    assert (tmp_path / "t.csv").read_text().count("\n") == 3
