"""Benchmark: where one head-tuning step's time goes, one head alone vs H heads batched (each head's own kernels)
vs H heads stacked (``HeadStack``: one batched kernel per layer), on CPU or CUDA.

The heads are NMTune heads at the reference settings (D = ``--width``, batch 64 → 2B = 128 rows of two cached
views, the default regulariser weights, so every step pays the SVD of the dominant-singular-value term), trained
by ``batched_tuning.fit_heads`` on random non-negative cached features of N = ``--samples`` images. For each mode it
prints the milliseconds per step (per head, too) after a warm-up fit, and the ``torch.profiler`` table of the
ops that took the most time (self CPU time: on CUDA, the host's launch and sync time; self device time: the
kernels), so a GPU session can see whether a step is arithmetic, launches, or the SVD. Last, the singular values
alone (``svd_ms``: forward and backward of H×2B×D by the routes of ``bench/svd_routes.py``).

Usage: python bench/head_step_profile.py [--device cuda] [--heads 8] [--out FILE]   (a minute or two)
A benchmark, not a test: it passes or fails nothing.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's start/stop lines

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # svd_routes

from nmtune_lib.transfer.tuning import fit_heads  # noqa: E402
from nmtune_lib.pretraining.models import resolve_device  # noqa: E402
from nmtune_lib.reference import BATCH_SIZE  # noqa: E402
from svd_routes import measure as svd_routes, sync  # noqa: E402

MODES = {"alone": (1, False), "batched": (None, False), "stacked": (None, True)}  # (heads, stacked)


def fit_seconds(features, labels, heads: int, stacked: bool, device, epochs: int, svd_driver: str = "") -> float:
    sync(device)
    start = time.perf_counter()
    fit_heads(features, labels, [dict(method="nmtune")] * heads, epochs=epochs, device=device, stacked=stacked,
              svd_driver=svd_driver)
    sync(device)
    return time.perf_counter() - start


def profile_table(features, labels, heads: int, stacked: bool, device, rows: int = 12, svd_driver: str = "") -> dict:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fit_heads(features, labels, [dict(method="nmtune")] * heads, epochs=1, device=device, stacked=stacked,
                  svd_driver=svd_driver)
        sync(device)
    events = prof.key_averages()
    device_time = (lambda e: getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)))
    top = lambda key: [{"op": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3,  # noqa: E731
                        "self_device_ms": device_time(e) / 1e3}
                       for e in sorted(events, key=key, reverse=True)[:rows]]
    return {"by_cpu": top(lambda e: e.self_cpu_time_total), "by_device": top(device_time),
            "total_cpu_ms": sum(e.self_cpu_time_total for e in events) / 1e3,
            "total_device_ms": sum(device_time(e) for e in events) / 1e3}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--heads", type=int, default=8, help="heads in the batched and stacked fits")
    p.add_argument("--width", type=int, default=128, help="feature width D (resnet_tiny: 128)")
    p.add_argument("--samples", type=int, default=2048, help="training images N (32 steps an epoch at batch 64)")
    p.add_argument("--epochs", type=int, default=3, help="epochs of each timed fit")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--svd-driver", default="", help="cuSOLVER's SVD driver on CUDA (fit_heads' svd_driver)")
    p.add_argument("--out", default=None, help="JSON file for the result")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(args.samples, 4, args.width, generator=gen).relu()
    labels = torch.randint(10, (args.samples,), generator=gen)
    steps = args.epochs * math.ceil(args.samples / BATCH_SIZE)
    result = {"device": str(device), "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "heads": args.heads, "width": args.width, "steps": steps,
              "svd_driver": args.svd_driver, "modes": {}}
    for mode, (heads, stacked) in MODES.items():
        heads = heads or args.heads
        fit_seconds(features, labels, heads, stacked, device, 1, args.svd_driver)  # warm-up: allocator, kernels
        seconds = fit_seconds(features, labels, heads, stacked, device, args.epochs, args.svd_driver)
        table = profile_table(features, labels, heads, stacked, device, svd_driver=args.svd_driver)
        result["modes"][mode] = {"heads": heads, "ms_per_step": 1e3 * seconds / steps,
                                 "ms_per_head_step": 1e3 * seconds / steps / heads, "profile": table}
        print(f"{mode:>8}: {heads} head(s), {1e3 * seconds / steps:.2f} ms/step, "
              f"{1e3 * seconds / steps / heads:.2f} ms per head-step")
        for row in table["by_cpu" if device.type == "cpu" else "by_device"][:8]:
            print(f"          {row['op'][:48]:<48} x{row['calls']:<6} cpu {row['self_cpu_ms']:8.1f} ms  "
                  f"device {row['self_device_ms']:8.1f} ms")
    alone = result["modes"]["alone"]["ms_per_head_step"]
    for mode in ("batched", "stacked"):
        result[f"{mode}_speedup"] = alone / result["modes"][mode]["ms_per_head_step"]
    result["svd_ms"] = {h: {name: row.get("ms") for name, row in svd_routes(h, 2 * BATCH_SIZE, args.width,
                                                                             device).items()}
                        for h in (1, args.heads)}
    print(f"speed-up per head-step over one head alone: batched {result['batched_speedup']:.2f}x, "
          f"stacked {result['stacked_speedup']:.2f}x")
    for h, ways in result["svd_ms"].items():
        print(f"singular values of {h}×{2 * BATCH_SIZE}×{args.width}, forward + backward (ms): "
              + ", ".join(f"{name} {ms:.2f}" for name, ms in ways.items()))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
