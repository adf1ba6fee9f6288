"""Benchmark: NMTune head tuning on cached K-view features vs online re-encoding through the frozen backbone, and
the heads of one default run trained together (``tuning.fit_heads``) vs one by one.

One run fits NMTune on one task (default: MNIST-5k train → test, frozen ``resnet_narrow``) both ways, paired by head
seed (same initialisation and batch order; ``--seeds`` repeats the pair), and prints, for every K in ``--views``, the
time ratio online / cached and the test-accuracy difference cached − online, mean ± std over seeds (target: ≥ 20×
faster at ≤ 0.5 points).

Time accounting. online = ``fit_head`` on ``OnlineViews`` (two fresh augmented views re-encoded per step: 2B backbone
passes). cached(K) = ``extract_features(transform=VIEWS, views=K)`` of the training set once + ``fit_head`` on the
N×K×D tensor. The test set's eval features serve both and are timed apart (``eval_features_seconds``). ``ratio``
includes the K-view extraction; ``ratio_fit_only`` leaves it out (the limit when many heads — MLP, NMTune, ablations
— share one extraction). With the backbone's cost e per image and the head's cost h per step, ratio ≈
E·S·(2B·e + h) / (K·N·e + E·S·h) ≤ min(2E/K, 1 + 2B·e/h): with E = 30 epochs, ≥ 20× needs K ≤ 3 *and* a backbone
that costs ≥ 19× the head per step (true for paper-scale backbones on a GPU, not for a 28-px ResNet on a CPU core).

Backbone. ``--checkpoint`` loads pre-trained weights. Without it the bench first pre-trains the backbone for
``--warmup-steps`` SGD steps on Fashion-MNIST (if present, else on the task's own training split), because the
pre-logits of a randomly initialised small timm ResNet at 28 px are nearly constant (every head scores at chance,
which would make the accuracy comparison empty). That warm-up is timed apart and belongs to neither mode.

Measured before the views took the reference crop scale (0.35-1.0 then, with flips; ``--seeds 0,1,2 --views
2,4,8,16``, defaults otherwise: 30 epochs, 1 CPU thread of the shared 2-core box):
online 79 ms/step vs cached 17 ms/step (ratio_fit_only 4.7×); cached − online accuracy −4.8 ± 1.4 / −1.7 ± 1.0 /
−0.3 ± 0.7 / +0.3 ± 0.3 points and ratio 4.1 / 3.6 / 2.8 / 2.1× for K = 2 / 4 / 8 / 16 (online 80.0 %). The accuracy
target holds from K = 8; the 20× target is out of reach here (bounded by 1 + 2B·e/h ≈ 4.7 on this CPU).

Batched vs one by one. ``run_transfer`` on one task built from the bench's dataset, with the ``default`` preset's
heads for a run whose ablation task it is (reference LP/MLP/NMTune, the matched protocol's candidates and refits, the
six ablation variants, the regulariser scales, and the robustness settings ``views=8`` and ``head_epochs`` = a third
of ``--epochs``), once with ``batched=False`` (``fit_head`` per head), once batched with each head's own kernels
and once batched with the heads stacked (``fit_heads(stacked=True)``, the default on CUDA), on the same features.
``batched_speedup`` = one-by-one ÷ batched head-fitting seconds (from the transfer log; feature extraction left
out), ``batched_max_acc_diff_points`` = the largest test-accuracy difference between the two over every head and
test domain (the two are bit-for-bit equal by construction, so 0 is expected), ``stacked_speedup`` and
``stacked_max_acc_diff_points`` the same for the stacked heads (equal to rounding), next to the heads' count and
the per-step times. Issue 10's bar: speed-up ≥ 5 at ≤ 0.1 points.

What batching can win here. The batched run's ``fit_heads`` calls are replayed under ``torch.profiler``: the self
time of the heads' arithmetic (the SVDs of the dominant-singular-value term, the matrix products, the fused AdamW
step), which any batching keeps, bounds the speed-up from above (Amdahl, every other cost taken to zero):
``batched_speedup_ceiling`` = one-by-one seconds ÷ those kernels' seconds as they run, and
``batched_speedup_ceiling_at_peak`` the same with the products counted at the best rate a stacked ``bmm`` reaches on
this core (what stacking every product into one batched product could give at most). What is sampled: every call is
replayed whole, but only one training step in ``PROFILE_EVERY`` (5) is recorded (a ``torch.profiler.schedule``
stepped by an optimiser-step hook), each recorded step summed per op and its events dropped before the next; a
call's kernel seconds and FLOPs are its recorded steps' scaled by its steps ÷ its recorded steps, and
``kernel_share`` is the recorded steps' kernel seconds ÷ their wall time (``arithmetic`` in the JSON has the counts).
Recording every event of every call instead held 16.3 GB of resident memory on the quick run.

Memory. The JSON records the process's peak resident memory (``peak_rss_mib``, ``getrusage``'s ``ru_maxrss``), the
running peak after each stage (``peak_rss_mib_after``: setup, cached_vs_online, heads_fitted, batched = after the
profiled replay) and the largest child's (``peak_rss_children_mib``). The only children are ``ldconfig -p`` probes
that imports start (``ctypes.util.find_library``, from cuda.pathfinder and trio); a child forked before its exec is
charged the parent's resident pages it shares, so that figure is this process's size at the import (~720 MiB on
the quick run), not memory of its own. ``--quick`` peaked at 1371 MiB (``/usr/bin/time -v``: 1,403,808 kB).

``--quick`` (a few minutes on 2 cores): 3 head epochs, K = 4 only, one seed, a 150-step warm-up. ``--json OUT``
writes the result there (default ``bench/results/head_tuning.json``, ignored by git). A benchmark, not a test: it
passes or fails nothing.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import statistics
import sys
import time
import warnings
from functools import partial
from pathlib import Path
from unittest import mock

os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # quiet: the "no GPU" error (4), each sampled step's start/stop (5)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nmtune_lib.transfer import downstream as batched_tuning  # noqa: E402  (where run_transfer finds fit_heads)
from nmtune_lib.data.augment import ViewAugment, random_crop_flip, to_float  # noqa: E402
from nmtune_lib.data.datasets import load_dataset  # noqa: E402
from nmtune_lib.spectrum.features import extract_features  # noqa: E402
from nmtune_lib.files import atomic_write_json, file_sha256  # noqa: E402
from nmtune_lib.pretraining.models import create_backbone, freeze, resolve_device  # noqa: E402
from nmtune_lib.reference import BATCH_SIZE, EPOCHS, EXPANSION  # noqa: E402
from nmtune_lib.transfer.tuning import fit_head  # noqa: E402
from nmtune_lib.transfer.views import OnlineViews  # noqa: E402

TARGET_RATIO, TARGET_ACC_POINTS = 20.0, 0.5
BATCHED_BAR, BATCHED_GOAL, BATCHED_ACC_POINTS = 5.0, 10.0, 0.1  # issue 10: speed-up bar and goal, accuracy bound
MATMUL = ("aten::mm", "aten::addmm", "aten::bmm")
ARITHMETIC = ("aten::_linalg_svd", *MATMUL, "aten::_fused_adamw_")  # what any batching of the heads keeps
PROFILE_EVERY = 5  # the replay profiles one optimiser step in this many (coprime with the 63 steps of an epoch)
RESULTS = Path(__file__).resolve().parent / "results" / "head_tuning.json"
VIEWS = ViewAugment(flip=False)  # the reference crop (scale 0.8-1.0); no flips: the bench's tasks are digits


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist5k", help="offline task dataset (nmtune_lib.data.datasets)")
    p.add_argument("--backbone", default="resnet_narrow", help="timm model name for create_backbone")
    p.add_argument("--checkpoint", default=None, help="pre-trained backbone weights; none = a short warm-up")
    p.add_argument("--warmup-steps", type=int, default=300,
                   help="SGD steps of warm-up pre-training when no --checkpoint is given")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="head epochs (30 = the paper's)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--views", default="2,4,8", help="comma-separated K values for the cached mode")
    p.add_argument("--train-subset", type=int, default=0, help="0 = the whole training split")
    p.add_argument("--seed", type=int, default=0, help="seed of the backbone (init, warm-up) and the test set")
    p.add_argument("--seeds", default="0", help="comma-separated head seeds (init, batch order, views): paired runs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core CPU)")
    p.add_argument("--progress", action="store_true", help="tqdm bars")
    p.add_argument("--json", "--out", dest="out", default=str(RESULTS), help="where to write the result JSON")
    p.add_argument("--quick", action="store_true",
                   help="a few minutes: 3 head epochs, K=4, one seed, 150 warm-up steps (explicit flags still win)")
    p.add_argument("--skip-batched", action="store_true", help="leave out the batched vs one-by-one comparison")
    p.add_argument("--svd-driver", default="", help="cuSOLVER's SVD driver for the batched comparison on CUDA "
                   "(config svd_driver; default: PyTorch's)")
    args = p.parse_args(argv)
    if args.quick:
        given = set(argv if argv is not None else sys.argv[1:])
        for flag, value in (("--epochs", 3), ("--views", "4"), ("--seeds", "0"), ("--warmup-steps", 150)):
            if flag not in given:
                setattr(args, flag[2:].replace("-", "_"), value)
    return args


def warm_up(backbone, image_set, *, steps: int, batch_size: int, seed: int, device, lr: float = 0.05) -> float:
    """A few SGD steps of supervised pre-training (crop + flip) so that the frozen features carry information."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(backbone.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    backbone.to(device).train()
    start = time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:  # linear decay: a short run still settles
            group["lr"] = lr * (1 - step / steps)
        index = torch.randint(len(image_set), (batch_size,), generator=generator)
        x = random_crop_flip(to_float(image_set.images[index]), generator).to(device)
        loss = F.cross_entropy(backbone(x), image_set.labels[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    """The peak resident memory so far of this process (``RUSAGE_SELF``) or of its waited-for children
    (``RUSAGE_CHILDREN``: the largest one's), in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    return resource.getrusage(who).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def arithmetic_ceiling(calls: list, one_by_one_seconds: float, every: int = PROFILE_EVERY) -> dict:
    """Replay the batched run's ``fit_heads`` calls under ``torch.profiler`` and bound the speed-up any batching
    can reach on this machine (Amdahl: every cost but the heads' arithmetic taken to zero).

    The arithmetic is the SVDs, the matrix products and the fused AdamW step (``ARITHMETIC``): any batching keeps
    it, per head or stacked. ``ceiling`` = one-by-one seconds ÷ those kernels' self time as they run here (one
    product per head); ``ceiling_at_peak`` counts the products instead at this core's best stacked-product rate
    (``peak_gflops``: the best of ``bmm`` on a few head-shaped stacks and one 1024³ product), the bound for a
    batching that stacks every product into one ``bmm`` and leaves the SVD and the optimiser as they are.

    Sampled, not traced whole: every call is replayed in full, but the profiler records one training step
    (optimiser step to optimiser step) in ``every`` (a ``torch.profiler.schedule``: ``every - 2`` steps idle, one
    warm-up, one recorded), and each recorded step is summed per op (``key_averages()``) and its events dropped
    before the next, so the trace holds one step at a time. Keeping every event of every call held ~16 GB on the
    quick run. A call's kernel seconds and FLOPs are its recorded steps' × (its steps ÷ its recorded steps);
    ``kernel_share`` = the recorded steps' kernel seconds ÷ their wall time (profiled, as before, but without each
    call's set-up and tail)."""
    import inspect

    from torch.optim.optimizer import register_optimizer_step_post_hook
    from torch.profiler import ProfilerAction, ProfilerActivity, profile, schedule

    recording = (ProfilerAction.RECORD, ProfilerAction.RECORD_AND_SAVE)
    per_op: dict[str, float] = dict.fromkeys(ARITHMETIC, 0.0)  # self seconds, extrapolated to every step
    flops = sampled_kernel = sampled_seconds = 0.0
    steps = sampled = 0
    signature = inspect.signature(batched_tuning.fit_heads)
    start = time.perf_counter()
    for call in calls:
        bound = signature.bind(*call.args, **call.kwargs)
        bound.apply_defaults()
        a = bound.arguments
        period = min(every, a["epochs"] * -(-len(a["labels"]) // a["batch_size"]))  # a short call: its last step
        sample = schedule(wait=period - 2, warmup=1, active=1) if period > 1 else (
            lambda step: ProfilerAction.RECORD_AND_SAVE)
        state = {"ops": {}, "flops": 0.0, "steps": 0, "sampled": 0, "seconds": 0.0, "open": True}

        def summarise(prof, state=state):  # on_trace_ready: one recorded step's events, summed, then dropped
            if not state["open"]:
                return  # the tail after the last optimiser step (unstacking, the HeadFits) is no step
            for event in prof.key_averages():
                if event.key in ARITHMETIC:
                    state["ops"][event.key] = state["ops"].get(event.key, 0.0) + event.self_cpu_time_total / 1e6
                    if event.key in MATMUL:
                        state["flops"] += event.flops

        with warnings.catch_warnings(), profile(activities=[ProfilerActivity.CPU], with_flops=True,
                                                schedule=sample, on_trace_ready=summarise) as prof:
            warnings.filterwarnings("ignore", "Warning: Profiler clears events")  # it does, on purpose

            def step_hook(optimizer, args, kwargs, state=state, prof=prof):  # after each training step
                now = time.perf_counter()
                state["steps"] += 1
                if prof.current_action in recording:
                    state["sampled"] += 1
                    state["seconds"] += now - state["last"]
                prof.step()
                state["last"] = time.perf_counter()  # the profiler's own switching left out of the steps' time

            handle = register_optimizer_step_post_hook(step_hook)
            try:
                state["last"] = time.perf_counter()
                batched_tuning.fit_heads(*call.args, **call.kwargs)
            finally:
                handle.remove()
                state["open"] = False
        scale = state["steps"] / state["sampled"]
        for key, seconds in state["ops"].items():
            per_op[key] += seconds * scale
        flops += state["flops"] * scale
        sampled_kernel += sum(state["ops"].values())
        sampled_seconds += state["seconds"]
        steps += state["steps"]
        sampled += state["sampled"]
    seconds = time.perf_counter() - start
    per_op = {key: value for key, value in per_op.items() if value}
    matmul_seconds = sum(per_op.get(key, 0.0) for key in MATMUL)
    views = calls[0].args[0]
    peak = peak_gflops(int(getattr(views, "num_features", None) or views.shape[-1]))
    kernel = sum(per_op.values())
    at_peak = kernel - matmul_seconds + flops / (peak * 1e9)
    return {"ceiling": one_by_one_seconds / kernel, "ceiling_at_peak": one_by_one_seconds / at_peak,
            "kernel_seconds": kernel, "kernel_seconds_at_peak": at_peak, "per_op_seconds": per_op,
            "matmul_gflop": flops / 1e9, "matmul_gflops": flops / 1e9 / matmul_seconds,
            "peak_gflops": peak, "profiled_fit_seconds": seconds, "kernel_share": sampled_kernel / sampled_seconds,
            "profile_every": every, "steps": steps, "sampled_steps": sampled, "sampled_seconds": sampled_seconds}


def peak_gflops(d: int, heads: int = 30, rows: int = 2 * BATCH_SIZE, repeats: int = 10) -> float:
    """The best single-thread GFLOP/s of ``torch.bmm`` here: head-shaped stacks (rows × D × eD and back, the
    weight gradient; e = ``EXPANSION``, the MLP head's) and one 1024³ product."""
    best, hidden = 0.0, EXPANSION * d
    shapes = ((heads, rows, d, hidden), (heads, rows, hidden, d), (heads, hidden, rows, d), (1, 1024, 1024, 1024))
    for h, n, k, m in shapes:
        a, b = torch.randn(h, n, k), torch.randn(h, k, m)
        torch.bmm(a, b)
        start = time.perf_counter()
        for _ in range(repeats):
            torch.bmm(a, b)
        best = max(best, 2 * h * n * k * m * repeats / (time.perf_counter() - start) / 1e9)
    return best


def batched_vs_one_by_one(backbone, train, test, args, device) -> dict:
    """The heads of one default run on one task, fitted one by one and batched (see the module docstring)."""
    import tempfile

    from nmtune_lib.config import StudyConfig
    from nmtune_lib.run import Run
    from nmtune_lib.transfer.tasks import IN_DOMAIN, Task
    from nmtune_lib.transfer.downstream import run_transfer

    task = Task(args.dataset, "id", train, {IN_DOMAIN: test}, flip=False)  # digit tasks: no mirrored views
    config = StudyConfig.from_preset("default", head_epochs=args.epochs, ablation_task=task.name,
                                     robustness=[f"head_epochs={max(1, args.epochs // 3)}", "views=8"],
                                     run_root=tempfile.mkdtemp(prefix="nmtune-bench-"), progress=False,
                                     svd_driver=args.svd_driver)
    run = Run.of(config, 0.0, int(args.seeds.split(",")[0]))
    out = {}
    for mode, batched, stacked in (("one_by_one", False, None), ("batched", True, False), ("stacked", True, True)):
        lines: list[str] = []
        wrapped = partial(batched_tuning.fit_heads, stacked=stacked)
        with mock.patch.object(batched_tuning, "fit_heads", wraps=wrapped) as fit_heads:
            ds, seconds = timed(lambda: run_transfer(run, backbone, [task], checkpoint_hash="bench", device=device,
                                                     cache=False, batched=batched, log=lines.append))
        if mode == "batched":
            calls = fit_heads.call_args_list  # replayed under the profiler for the arithmetic floor
        heads = [int(line.split()[1]) for line in lines]  # "<task> <H> heads × <E> epochs (…): <s> s  […]"
        fit = sum(float(re.search(r": ([0-9.]+) s  \[", line).group(1)) for line in lines)
        out[mode] = {"ds": ds, "transfer_seconds": seconds, "fit_seconds": fit, "heads": sum(heads),
                     "batches": len(lines) if batched else sum(heads)}
        print(f"{mode:>10}: {sum(heads)} heads in {out[mode]['batches']} fit(s), {fit:.1f} s fitting "
              f"({seconds:.1f} s with feature extraction)")
    rss_before_replay = peak_rss_mib()
    # The ceiling bounds CPU arithmetic; on an accelerator the profiler's CPU self time is launch time, not arithmetic.
    ceiling = arithmetic_ceiling(calls, out["one_by_one"]["fit_seconds"]) if device.type == "cpu" else None

    def against_one_by_one(mode: str, prefix: str) -> dict:
        """A batched mode's speed-up, largest accuracy difference and verdict on the bar, keys led by ``prefix``."""
        diff = 100 * float(abs(out[mode]["ds"]["accuracy"] - out["one_by_one"]["ds"]["accuracy"]).max(skipna=True))
        speedup = out["one_by_one"]["fit_seconds"] / out[mode]["fit_seconds"]
        return {f"{prefix}speedup": speedup, f"{prefix}max_acc_diff_points": diff,
                f"{prefix}meets_bar": speedup >= BATCHED_BAR and diff <= BATCHED_ACC_POINTS}

    result = {**against_one_by_one("batched", ""), **against_one_by_one("stacked", "stacked_"),
              "transfer_speedup": out["one_by_one"]["transfer_seconds"] / out["batched"]["transfer_seconds"],
              "identical": bool(np.array_equal(out["batched"]["ds"]["accuracy"].values,
                                               out["one_by_one"]["ds"]["accuracy"].values, equal_nan=True)),
              "arithmetic": ceiling, "peak_rss_mib_before_replay": rss_before_replay,
              "heads": out["batched"]["heads"], "batches": out["batched"]["batches"],
              "epochs": args.epochs, "task": task.name, "train": len(train),
              **{f"{m}_{k}": out[m][k] for m in out for k in ("fit_seconds", "transfer_seconds")},
              "target": {"bar": BATCHED_BAR, "goal": BATCHED_GOAL, "accuracy_points": BATCHED_ACC_POINTS}}
    print(f"batched_speedup {result['speedup']:.2f}x (transfer step {result['transfer_speedup']:.2f}x), "
          f"batched_max_acc_diff_points {result['max_acc_diff_points']:.3f}, bar met: {result['meets_bar']}"
          + ("" if ceiling is None else
             f"; the heads' arithmetic alone takes {ceiling['kernel_seconds']:.1f} s "
             f"({ceiling['kernel_seconds_at_peak']:.1f} s with every product at {ceiling['peak_gflops']:.0f} GFLOP/s), "
             f"so no batching of it can beat {ceiling['ceiling']:.2f}x ({ceiling['ceiling_at_peak']:.2f}x) here"))
    print(f"stacked_speedup {result['stacked_speedup']:.2f}x, stacked_max_acc_diff_points "
          f"{result['stacked_max_acc_diff_points']:.3f}, bar met: {result['stacked_meets_bar']}")
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # the one global seed: create_backbone initialises from the global RNG
    device = resolve_device(args.device)
    views_list = sorted({int(k) for k in args.views.split(",")})
    seeds = [int(v) for v in args.seeds.split(",")]
    train, test = load_dataset(args.dataset, "train"), load_dataset(args.dataset, "test")
    if args.train_subset:
        from nmtune_lib.data.datasets import stratified_subset

        train = train.subset(stratified_subset(train.labels, args.train_subset, args.seed))

    backbone = create_backbone(args.backbone, num_classes=10, in_chans=train.shape[0], img_size=train.shape[1],
                               checkpoint=args.checkpoint)
    warmup = {"checkpoint": args.checkpoint, "checkpoint_sha256": file_sha256(args.checkpoint) if args.checkpoint
              else None}
    if args.checkpoint is None and args.warmup_steps > 0:
        try:
            source = load_dataset("fashion_mnist", "train")
        except FileNotFoundError:
            source = train
        seconds = warm_up(backbone, source, steps=args.warmup_steps, batch_size=128, seed=args.seed, device=device)
        warmup.update(dataset=source.name, steps=args.warmup_steps, seconds=seconds)
        print(f"warm-up pre-training on {source.name}: {args.warmup_steps} steps in {seconds:.1f} s")
    freeze(backbone).to(device)

    def features(image_set, transform="eval", views=1, seed=args.seed):
        return extract_features(backbone, image_set, transform=transform, views=views, seed=seed,
                                device=device, batch_size=1024, progress=args.progress)

    eval_test, eval_seconds = timed(lambda: features(test))
    rss = {"setup": peak_rss_mib()}  # the running peak after each stage: which one raised it
    print(f"{args.dataset}: {len(train)} train / {len(test)} test, {args.backbone} D={backbone.num_features}, "
          f"{args.epochs} epochs, batch {args.batch_size}, {args.threads} thread(s), device {device}, "
          f"seeds {seeds}")

    runs = []  # one row per (seed, mode, K); the seed fixes the head init, batch order and view draws
    for seed in seeds:
        hyper = dict(method="nmtune", epochs=args.epochs, batch_size=args.batch_size, seed=seed, device=device,
                     progress=args.progress)
        fit = fit_head(OnlineViews(backbone, train.images, device=device, augment=VIEWS), train.labels, **hyper)
        online = {"seed": seed, "mode": fit.mode, "views": None, "extract_seconds": 0.0, "fit_seconds": fit.seconds,
                  "seconds": fit.seconds, "accuracy": fit.accuracy(eval_test, test.labels),
                  "last_epoch": fit.history[-1]}
        runs.append(online)
        print(f"seed {seed} online      : {online['seconds']:7.1f} s, test accuracy {100 * online['accuracy']:.2f} %, "
              f"train CE {online['last_epoch']['ce']:.3f}")
        for k in views_list:
            views, extract_seconds = timed(lambda k=k: features(train, VIEWS, k, seed))
            fit = fit_head(views, train.labels, **hyper)
            row = {"seed": seed, "mode": fit.mode, "views": k, "extract_seconds": extract_seconds,
                   "fit_seconds": fit.seconds, "seconds": extract_seconds + fit.seconds,
                   "accuracy": fit.accuracy(eval_test, test.labels), "last_epoch": fit.history[-1]}
            row["ratio"] = online["seconds"] / row["seconds"]
            row["ratio_fit_only"] = online["fit_seconds"] / row["fit_seconds"]
            row["accuracy_diff_points"] = 100 * (row["accuracy"] - online["accuracy"])
            runs.append(row)
            print(f"seed {seed} cached K={k:<3}: {row['seconds']:7.1f} s (extract {extract_seconds:.1f} + fit "
                  f"{fit.seconds:.1f}), test accuracy {100 * row['accuracy']:.2f} %, train CE "
                  f"{row['last_epoch']['ce']:.3f} | ratio {row['ratio']:.1f}x, diff {row['accuracy_diff_points']:+.2f}")

    summary = []
    print(f"\nover {len(seeds)} seed(s): time ratio online/cached (with extraction; fit only) and test-accuracy "
          "difference cached - online (mean ± std over seeds, points)")
    for k in views_list:
        rows = [r for r in runs if r["views"] == k]
        ratio = statistics.fmean(r["ratio"] for r in rows)
        diffs = [r["accuracy_diff_points"] for r in rows]
        spread = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
        item = {"views": k, "ratio": ratio, "ratio_fit_only": statistics.fmean(r["ratio_fit_only"] for r in rows),
                "accuracy_diff_points": statistics.fmean(diffs), "accuracy_diff_std": spread,
                "meets_target": ratio >= TARGET_RATIO and abs(statistics.fmean(diffs)) <= TARGET_ACC_POINTS}
        summary.append(item)
        print(f"  K={k:<3} ratio {ratio:5.1f}x (fit only {item['ratio_fit_only']:.1f}x), accuracy diff "
              f"{item['accuracy_diff_points']:+.2f} ± {spread:.2f} points, target met: {item['meets_target']}")

    rss["cached_vs_online"] = peak_rss_mib()
    batched = None if args.skip_batched else batched_vs_one_by_one(backbone, train, test, args, device)
    if batched is not None:
        rss.update(heads_fitted=batched.pop("peak_rss_mib_before_replay"), batched=peak_rss_mib())
    online_rows = [r for r in runs if r["mode"] == "online"]
    steps = args.epochs * -(-len(train) // args.batch_size)
    result = {
        "task": {"dataset": args.dataset, "train": len(train), "test": len(test), "classes": train.num_classes},
        "backbone": {"name": args.backbone, "num_features": backbone.num_features, **warmup},
        "epochs": args.epochs, "batch_size": args.batch_size, "steps": steps, "seeds": seeds,
        "device": str(device), "svd_driver": args.svd_driver, "threads": args.threads,
        "eval_features_seconds": eval_seconds,
        "online_accuracy_mean": statistics.fmean(r["accuracy"] for r in online_rows),
        "summary": summary, "runs": runs, "target": {"ratio": TARGET_RATIO, "accuracy_points": TARGET_ACC_POINTS},
        "per_step_ms": {"online": 1000 * statistics.fmean(r["fit_seconds"] for r in online_rows) / steps,
                        "cached": 1000 * statistics.fmean(r["fit_seconds"] for r in runs if r["views"]) / steps},
        **({} if batched is None else {"batched_speedup": batched["speedup"],
                                       "batched_max_acc_diff_points": batched["max_acc_diff_points"],
                                       "stacked_speedup": batched["stacked_speedup"],
                                       "stacked_max_acc_diff_points": batched["stacked_max_acc_diff_points"],
                                       **({} if batched["arithmetic"] is None else {
                                           "batched_speedup_ceiling": batched["arithmetic"]["ceiling"],
                                           "batched_speedup_ceiling_at_peak": batched["arithmetic"]["ceiling_at_peak"]}),
                                       "batched": batched}),
        "versions": {"python": platform.python_version(), "torch": torch.__version__}, "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "peak_rss_mib": peak_rss_mib(), "peak_rss_children_mib": peak_rss_mib(resource.RUSAGE_CHILDREN),
        "peak_rss_mib_after": rss,
    }
    atomic_write_json(args.out, result)
    print(f"peak resident memory {result['peak_rss_mib']:.0f} MiB (after each stage: "
          + ", ".join(f"{k} {v:.0f}" for k, v in rss.items()) + f"); wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
