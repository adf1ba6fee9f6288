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
