"""Benchmark: spectrum metrics of a 60,000×512 feature matrix (target: under 2 s on the 2-core CPU).

Times ``singular_values`` + ``spectrum_metrics`` for each centring on float32 ReLU-like features with a decaying
spectrum, checks the Gram path against ``numpy.linalg.svd`` on the same matrix once, prints the figures and writes
them to ``bench/results/spectrum_speed.json``. A benchmark, not a test: it passes or fails nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nmtune_lib.spectrum.metrics import CENTERINGS, preprocess, singular_values, spectrum_metrics  # noqa: E402

N, D, REPEATS, TARGET_S = 60_000, 512, 3, 2.0


def synthetic_features(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Non-negative float32 N×D features with a power-law spectrum, like pooled ReLU pre-logits."""
    gen = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, d, generator=gen))[0]
    scales = torch.arange(1, d + 1, dtype=torch.float32) ** -0.8
    return torch.relu(torch.randn(n, d, generator=gen) * scales @ basis.T + 0.05)


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "spectrum_speed.json"),
                        help="where to write the result JSON")
    args = parser.parse_args(argv)
    features = synthetic_features(N, D)
    seconds = {c: best_time(lambda c=c: spectrum_metrics(singular_values(features, centering=c)), REPEATS)
               for c in CENTERINGS}
    # the same with one BLAS thread: on a shared, oversubscribed CPU spinning BLAS threads can cost more than they give
    with threadpool_limits(limits=1, user_api="blas"):
        seconds_1 = {c: best_time(lambda c=c: spectrum_metrics(singular_values(features, centering=c)), REPEATS)
                     for c in CENTERINGS}
    # correctness at full size: the Gram path against a full SVD of the same preprocessed matrix
    x = preprocess(features, centering="column")
    t0 = time.perf_counter()
    reference = np.linalg.svd(x, compute_uv=False)
    svd_s = time.perf_counter() - t0
    max_err = float(np.abs(reference - singular_values(features, centering="column")).max())
    result = {
        "shape": [N, D], "dtype": "float32", "seconds_per_centering": seconds, "target_s": TARGET_S,
        "under_target": all(s < TARGET_S for s in seconds.values()),
        "seconds_per_centering_1_blas_thread": seconds_1, "numpy_svd_s": svd_s,
        "speedup_vs_numpy_svd": svd_s / seconds["column"], "max_abs_error_vs_svd": max_err,
        "torch_threads": torch.get_num_threads(), "numpy": np.__version__, "machine": platform.machine(),
        "python": platform.python_version(), "cpu_count": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
    }
    for c, s in seconds.items():
        print(f"spectrum metrics, {N}×{D} float32, centering={c}: {s:.3f} s (target < {TARGET_S} s; "
              f"{seconds_1[c]:.3f} s with 1 BLAS thread)")
    print(f"numpy.linalg.svd of the same matrix: {svd_s:.3f} s ({result['speedup_vs_numpy_svd']:.1f}× slower); "
          f"max |Δσ| = {max_err:.2e}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"load average {result['load_average_1min']:.2f} on {os.cpu_count()} cores; wrote {out}")


if __name__ == "__main__":
    main()
