"""Benchmark: routes to the singular values of the dominant-singular-value term, timed forward + backward and checked
against a float64 reference, on CPU or CUDA.

NMTune's L_svd needs every singular value of each head's z (2B×D per step; ``losses.dominant_singular_value_loss``
takes ``torch.linalg.svdvals``). On an H200 that SVD took 2.6 ms per 128×128 matrix, most of a head step
(bench/gpu_results/h200/head_profile*.json): cuSOLVER's Jacobi SVD launches some 220 kernels per matrix. This
compares, for H matrices of rows×width: ``svdvals`` with the default driver and, on CUDA, each of cuSOLVER's
(``gesvd``, ``gesvdj``, ``gesvda``); the square roots of the eigenvalues of the smaller Gram matrix in float64
(``gram_float64``); and ``svdvals`` on the CPU after a copy. For each: milliseconds per call (forward and backward of
L_svd's share term), the largest singular-value error relative to σ₁ and the largest gradient error relative to the
largest gradient entry, both against float64 ``svdvals`` on the CPU, for three kinds of matrix (``CASES``): random
non-negative (well conditioned), graded (singular values from 1 down to 1e-6: ill conditioned) and rank-deficient
(rank 16, the rest zero), since the PyTorch documentation warns that the fast drivers may lose accuracy on
ill-conditioned inputs. (With a rank-deficient z the gradient's part along the null space is arbitrary for any
route, float64 included: there, compare the singular values.)

Usage: python bench/svd_routes.py [--device cuda] [--heads 1,8,30] [--out FILE]   (seconds)
A benchmark, not a test: it passes or fails nothing.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

K = 5  # reference.SVD_TOP_K


def gram_float64(z: torch.Tensor, floor: float = 1e-12) -> torch.Tensor:
    """Singular values as square roots of the eigenvalues of the smaller Gram matrix, in float64 (eigenvalues below
    ``floor`` × the largest raised to it, so their square roots' gradients stay finite); descending, float32."""
    x = z.double()
    eig = torch.linalg.eigvalsh(x @ x.mT if x.shape[-2] <= x.shape[-1] else x.mT @ x).flip(-1)
    return eig.clamp_min(floor * eig[..., :1].detach().clamp_min(torch.finfo(eig.dtype).tiny)).sqrt().float()


def routes(device: torch.device) -> dict:
    out = {"svdvals": torch.linalg.svdvals, "gram_float64": gram_float64,
           "svdvals_cpu_after_copy": lambda z: torch.linalg.svdvals(z.cpu())}
    if device.type == "cuda":
        for driver in ("gesvd", "gesvdj", "gesvda"):
            out[f"svdvals_{driver}"] = lambda z, d=driver: torch.linalg.svdvals(z, driver=d)
    return out


def share_loss(sv: torch.Tensor) -> torch.Tensor:
    """L_svd summed over heads: minus the mean of the top-K normalised singular values."""
    return -(sv / sv.sum(-1, keepdim=True))[..., :K].mean(-1).sum()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CASES = ("random", "graded", "rank16")


def matrices(case: str, heads: int, rows: int, width: int, seed: int = 0) -> torch.Tensor:
    """H rows×width matrices of one ``CASES`` kind (float32, on the CPU)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(heads, rows, width, generator=gen, dtype=torch.float64)
    if case == "random":
        return z.relu().float()
    u, _, vh = torch.linalg.svd(z, full_matrices=False)
    k = min(rows, width)
    sv = (torch.logspace(0, -6, k, dtype=torch.float64) if case == "graded" else
          torch.cat([torch.linspace(1, 0.1, 16, dtype=torch.float64), torch.zeros(k - 16, dtype=torch.float64)]))
    return (u * sv) @ vh


def measure(heads: int, rows: int, width: int, device: torch.device, repeats: int = 20, seed: int = 0,
            case: str = "random") -> dict:
    """{route: {ms, sv_rel_err, grad_rel_err}} for H rows×width matrices of kind ``case`` (a head's z)."""
    if case not in CASES:
        raise ValueError(f"case={case!r}; accepted: {', '.join(CASES)}")
    z = matrices(case, heads, rows, width, seed).float()
    ref_z = z.double().requires_grad_()
    ref_sv = torch.linalg.svdvals(ref_z)
    share_loss(ref_sv).backward()
    z = z.to(device)
    out = {}
    for name, fn in routes(device).items():
        try:
            x = z.clone().requires_grad_()
            sv = fn(x)
            share_loss(sv).backward()
            errors = {"sv_rel_err": float(((sv.detach().cpu().double() - ref_sv.detach()).abs().max()
                                           / ref_sv.detach().max())),
                      "grad_rel_err": float((x.grad.cpu().double() - ref_z.grad).abs().max()
                                            / ref_z.grad.abs().max())}
            sync(device)
            start = time.perf_counter()
            for _ in range(repeats):
                share_loss(fn(z.detach().requires_grad_())).backward()
            sync(device)
            out[name] = {"ms": 1e3 * (time.perf_counter() - start) / repeats, **errors}
        except Exception as error:  # a driver this build or device lacks: say so, measure the rest
            out[name] = {"error": f"{type(error).__name__}: {error}"[:200]}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--heads", default="1,8,30", help="comma-separated numbers of matrices per call")
    p.add_argument("--rows", type=int, default=128, help="2B: rows of z (batch 64, two views)")
    p.add_argument("--width", type=int, default=128, help="D (resnet_tiny: 128, resnet_narrow: 256)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON file for the result")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cases = args.cases.split(",")
    bad = [c for c in cases if c not in CASES]
    if bad:
        p.error(f"--cases {','.join(bad)}: accepted {', '.join(CASES)}")
    result = {"device": str(device), "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "rows": args.rows, "width": args.width, "cases": {}}
    for case in cases:
        result["cases"][case] = {}
        for h in (int(x) for x in args.heads.split(",")):
            result["cases"][case][h] = measure(h, args.rows, args.width, device, case=case)
            for name, row in result["cases"][case][h].items():
                print(f"{case:<7} H={h:<3} {name:<24} " + (row["error"] if "error" in row else
                      f"{row['ms']:8.2f} ms  σ err {row['sv_rel_err']:.1e}  grad err {row['grad_rel_err']:.1e}"))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
