"""Stage times read from the executed notebooks under a run root, finished or not: for each notebook papermill's
duration (or, for one still running or cut off, the time from its start to its last finished cell), the cells run,
and whether it finished. A sweep's ``timing.csv`` counts only whole runs; this counts a sweep stopped midway too
(``bench/gpu_checks.sh`` reads the GPU grid with it when the grid outlasts its time limit).

Usage: python bench/stage_times.py RUN_ROOT [--csv OUT]   (prints a per-stage table, writes one row per notebook)
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nmtune_lib.files import atomic_write_text  # noqa: E402


def notebook_time(path: Path) -> dict:
    """One executed notebook: run folder, stage, seconds (whole or so far), cells finished, finished or not."""
    nb = json.loads(path.read_text())
    meta = nb["metadata"].get("papermill", {})
    cells = [c["metadata"].get("papermill", {}) for c in nb["cells"] if c["cell_type"] == "code"]
    done = [c for c in cells if c.get("status") == "completed"]
    seconds = meta.get("duration")
    finished = seconds is not None and meta.get("exception") is None and len(done) == len(cells)
    if seconds is None and done and meta.get("start_time"):
        seconds = (datetime.fromisoformat(max(c["end_time"] for c in done))
                   - datetime.fromisoformat(meta["start_time"])).total_seconds()
    return {"run": str(path.parent), "stage": path.stem, "seconds": round(seconds or 0.0, 1),
            "cells_done": len(done), "cells": len(cells), "finished": finished}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_root")
    p.add_argument("--csv", help="write one row per notebook here")
    args = p.parse_args(argv)
    rows = [notebook_time(path) for path in sorted(Path(args.run_root).rglob("0[1-5]_*.ipynb"))]
    frame = pd.DataFrame(rows, columns=["run", "stage", "seconds", "cells_done", "cells", "finished"])
    if args.csv:
        atomic_write_text(args.csv, frame.to_csv(index=False))
    print(f"{'stage':<20} {'finished':>8} {'started':>8} {'s per finished':>15} {'s so far (all)':>15}")
    for stage, items in frame.groupby("stage"):
        done = items.seconds[items.finished.astype(bool)]
        mean = f"{done.mean():.1f}" if len(done) else "-"
        print(f"{stage:<20} {len(done):>8} {len(items):>8} {mean:>15} {items.seconds.sum():>15.1f}")
    return rows


if __name__ == "__main__":
    main()
