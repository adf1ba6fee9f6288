"""One supervised pre-training run on noisy labels: device-resident data, checkpoints, resume, DDP.

``pretrain(config, train_set, noisy, test_set, out_dir, seed=k)`` trains ``config.model`` on the *noisy* training
labels and evaluates on the *clean* test split after every epoch. The recipe, chosen from measurements on the project's
2-core CPU (table below; throughput in bench/pretrain_throughput.py):

- Data: the whole split lives as one uint8 tensor on the device; each step gathers a batch, converts it to float and
  augments it in batch with ``nmtune_lib.augment.random_crop_flip`` (random translation by up to ``PAD`` pixels with
  zero padding; horizontal flip only where the dataset allows it: not for digits). No DataLoader, no workers.
- Optimiser: SGD with Nesterov momentum ``config.momentum``; weight decay ``config.weight_decay`` on conv/linear
  weights only (BatchNorm and biases undecayed); plain cross-entropy (``config.label_smoothing`` = 0: smoothing
  would blur the memorisation of flipped labels the study measures).
- Schedule: one-cycle per step, lr(t) = lr · t / w for t < w, then lr · (1 − t) / (1 − w), with t the fraction of
  all steps done and w = ``WARMUP``; it ends at 0, so the last epoch's weights are the result (no model selection).
- Per-step batch ``config.batch_size`` (global: under DDP each of R ranks takes B / R); the last partial batch of an
  epoch is dropped.
- CUDA: bf16 autocast, channels_last, ``torch.backends.cudnn.benchmark``, ``torch.compile`` when ``config.compile``.
  CPU: channels_last too (oneDNN convs, measured 1.6× faster), ``torch.set_num_threads`` = ``config.num_threads``,
  else ``$NMTUNE_NUM_THREADS`` (set by the sweep), else all cores (divided among local DDP ranks); restored after.

Randomness: initial weights come from torch's global RNG inside ``torch.random.fork_rng`` seeded with ``seed`` (the
caller's RNG state is untouched); the data order and augmentation of epoch e come from a ``torch.Generator`` seeded
from (seed, e, rank). Hence an epoch can be replayed from a checkpoint, and on CPU a resumed run ends with weights
bit-identical to an uninterrupted one.

Run directory (docs/CONTRACTS.md): ``checkpoint.pt`` after every epoch (model, optimiser, scheduler, the next
epoch's generator state, history, run key, manifest hash); at the end ``backbone.pt``, ``history.csv``,
``history.nc`` and, written last, ``pretrain.json``. Every file is written atomically; under DDP rank 0 alone writes.

History per epoch: ``train_loss`` (mean cross-entropy on the noisy labels, augmented batches), ``train_acc_noisy``
(fraction of augmented training predictions equal to the noisy label: the noisy-label fit), ``test_acc`` (clean test
accuracy), and the memorisation rates on flipped training samples (un-augmented): ``memo_noisy`` = fraction predicted
as their noisy label, ``memo_clean`` = fraction predicted as their clean label (NaN when nothing was flipped).

Entry point for ``torchrun --nproc_per_node=N -m nmtune_lib.pretrain --preset default --noise-ratio 0.1 --seed 0``.

Measurements behind the ``default`` preset (Fashion-MNIST, all 60k training images, noise 0, seed 0, 2 CPU cores
shared with other work; clean test accuracy after the last epoch; seconds end to end, evaluation included; ``1T`` =
one thread, so no wall time comparable with the 2-thread default):

=====================================  ======  =====  =====  ===  ========  =========================
model (stem)                           epochs  batch  lr     pad  test acc  seconds (img/s)
=====================================  ======  =====  =====  ===  ========  =========================
resnet_tiny (3×3 s2, no pool)          2       256    0.6    1    89.61 %   33.0 (3,833), load 1.8
resnet_tiny (3×3 s2)                   2       256    0.4    2    88.96 %   1T
resnet_tiny (3×3 s2)                   3       256    0.2    2    88.86 %   1T
resnet_tiny (3×3 s2)                   3       256    0.2    1    89.93 %   1T
resnet_tiny (3×3 s2)                   3       256    0.4    2    89.97 %   1T
resnet_tiny (3×3 s2)                   3       128    0.2    2    89.90 %   1T (batch 128: ~25 % slower)
resnet_tiny (3×3 s2)                   3       512    0.4    2    89.02 %   1T
resnet_tiny (timm 7×7 s2 + max-pool)   3       256    0.6    1    89.27 %   60.9 (3,083), load 1.8
resnet_narrow (timm 7×7 s2 + max-pool) 2       256    0.6    1    89.41 %   53.6 (2,347), load 2.0
resnet_narrow (3×3 s2)                 1       256    0.2    2    85.58 %   1T (~1/3 the speed of tiny)
=====================================  ======  =====  =====  ===  ========  =========================

The chosen first row with seeds 1 and 2: 90.11 % in 32.3 s and 89.85 % in 32.1 s; at noise 0.3 (seed 0): 87.05 % in
31.5 s. Schedules on that row (seed 0): cosine after the same warm-up 89.34 % (30.2 s), one-cycle with 10 % warm-up
89.74 %, one-cycle at peak lr 0.8 90.13 %: all within the seed-to-seed spread (±0.25 points), so the plain one-cycle
stays. A 3×3 stride-1 stem (28 px kept) measured 3-4× slower per image than the stride-2 one for both widths, so it
was not trained within the one-minute budget. ``channels_last`` on CPU: 1.6× the images/s of NCHW. Under heavy load from
other processes two threads can fall to a few hundred images/s (OpenMP threads waiting for a descheduled sibling):
timings above were taken when the load average was below 2.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .augment import random_crop_flip, to_float
from .files import atomic_torch_save, atomic_write_json, atomic_write_text
from .models import Backbone, create_backbone, file_sha256, resolve_device
from .results import save_dataset

# The recipe's fixed parts (the rest is in StudyConfig); part of every run's identity (``run_key``).
PAD = 1  # translation range in pixels: ±1 px beat ±2 px on 28 px Fashion-MNIST (89.9 vs 88.9 %, docstring table)
WARMUP = 0.2  # fraction of all steps spent ramping the learning rate up
FLIP = {"fashion_mnist": True, "mnist5k": False, "uci_digits": False}  # mirrored digits are other glyphs
EVAL_BATCH = 1024
MEMO_SAMPLES = 4096  # flipped training samples (a fixed seeded subset) scored for memorisation each epoch
MEMO_STREAM = 2**31 - 1  # the 'epoch' slot of the memorisation subset's seed: no real epoch reaches it
RECIPE = dict(pad=PAD, warmup=WARMUP, nesterov=True, decay="weights only", schedule="one-cycle linear, per step",
              data_order="randperm from Generator(seed, epoch, rank)", memo_samples=MEMO_SAMPLES)

CHECKPOINT, BACKBONE, SUMMARY = "checkpoint.pt", "backbone.pt", "pretrain.json"
HISTORY_CSV, HISTORY_NC = "history.csv", "history.nc"
HISTORY_FIELDS = ("epoch", "train_loss", "train_acc_noisy", "test_acc", "memo_noisy", "memo_clean", "lr", "seconds",
                  "images_per_s")


# --- identity of a run --------------------------------------------------------------------------------------------

def run_key(config, seed: int) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed: ``config.pretrain_key()``, the seed and the fixed recipe."""
    return {**config.pretrain_key(), "seed": int(seed), "recipe": RECIPE}


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of epoch ``epoch``'s generator on ``rank``: independent streams via numpy's SeedSequence."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(rank)]).generate_state(1, np.uint64)[0])


def one_cycle(step: int, total: int, warmup: float = WARMUP) -> float:
    """Learning-rate factor at ``step`` of ``total``: linear 0 → 1 over the first ``warmup`` fraction, then 1 → 0."""
    t = step / total
    return t / warmup if t < warmup else max(0.0, (1.0 - t) / (1.0 - warmup))


# --- distributed context --------------------------------------------------------------------------------------------

class _Dist:
    """Rank/world of this process; initialises (and later destroys) a process group when torchrun asked for one."""

    def __init__(self, device_type: str):
        import torch.distributed as dist

        self.owned = False
        if device_type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # NCCL collectives use the current GPU
        if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
            self.owned = True
        self.on = dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank)) if self.on else 0
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.world)) if self.on else 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.on:
            torch.distributed.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.on:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def all_sum(self, values: list[float]) -> list[float]:
        if not self.on:
            return values
        nccl = torch.distributed.get_backend() == "nccl"
        t = torch.tensor(values, dtype=torch.float64, device="cuda" if nccl else "cpu")
        torch.distributed.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        if self.owned:
            torch.distributed.destroy_process_group()


@contextlib.contextmanager
def _threads(device: torch.device, config, local_world: int):
    """CPU: use ``config.num_threads`` (0 = ``$NMTUNE_NUM_THREADS`` or all cores, shared among local ranks)."""
    before = torch.get_num_threads()
    if device.type == "cpu":
        wanted = config.num_threads or int(os.environ.get("NMTUNE_NUM_THREADS", "0") or 0) or \
            max(1, (os.cpu_count() or 1) // local_world)
        torch.set_num_threads(wanted)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


# --- input checks -------------------------------------------------------------------------------------------------

def check_inputs(config, train_set, noisy, test_set, *, world: int = 1) -> None:
    """Raise ``ValueError`` naming the bad value and the accepted ones, before anything is built or trained."""
    resolve_device(config.device)  # an absent cuda/mps raises here
    n = len(train_set)
    if not isinstance(config.epochs, int) or config.epochs <= 0:
        raise ValueError(f"epochs={config.epochs!r}: expected a positive integer")
    if config.batch_size <= 0 or config.batch_size > n:
        raise ValueError(f"batch_size={config.batch_size} does not fit the {n} training samples; accepted: 1 to {n}")
    if config.batch_size % world:
        raise ValueError(f"batch_size={config.batch_size} is not divisible by the world size {world}; accepted: "
                         f"a multiple of {world}")
    if config.batch_size // world > n // world:
        raise ValueError(f"batch_size={config.batch_size} over {world} ranks exceeds the per-rank shard of "
                         f"{n // world} samples; accepted: at most {world * (n // world)}")
    labels = noisy.labels
    if labels.ndim != 1 or len(labels) != n:
        raise ValueError(f"noisy labels have shape {tuple(labels.shape)} but the training set {train_set.name!r} has "
                         f"{n} samples; accepted: a vector of length {n} (labels of this very training set)")
    if labels.dtype != torch.int64 or int(labels.min()) < 0 or int(labels.max()) >= train_set.num_classes:
        raise ValueError(f"noisy labels must be int64 in [0, {train_set.num_classes}); got {labels.dtype} in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    clean = getattr(noisy, "clean", None)
    if clean is not None and not torch.equal(clean.cpu(), train_set.labels):
        raise ValueError(f"the noisy labels' clean labels differ from those of {train_set.name!r}: they were made for "
                         "another training set (or another train_subset)")
    if test_set.shape[0] != train_set.shape[0] or test_set.num_classes != train_set.num_classes:
        raise ValueError(f"test set {test_set.name!r} (C×H×W {test_set.shape}, {test_set.num_classes} classes) does "
                         f"not match the training set {train_set.name!r} ({train_set.shape}, "
                         f"{train_set.num_classes} classes)")


# --- checkpoints and finished runs -----------------------------------------------------------------------------------

def _same(a: Any, b: Any) -> bool:
    """Equality after a JSON round trip (tuples vs lists, ints vs floats as JSON writes them)."""
    return json.loads(json.dumps(a, sort_keys=True, default=str)) == json.loads(json.dumps(b, sort_keys=True,
                                                                                         default=str))


def _finished(out_dir: Path, key: dict[str, Any], manifest_hash: str) -> dict[str, Any] | None:
    """The summary of a finished run that matches (key, manifest, backbone file hash), else None.

    A summary that does not match raises: the directory belongs to another run and is never overwritten.
    """
    path = out_dir / SUMMARY
    if not path.exists():
        return None
    info = json.loads(path.read_text())
    if not _same(info.get("run_key"), key) or info.get("manifest_sha256") != manifest_hash:
        raise ValueError(f"{path} belongs to another run: its run key {json.dumps(info.get('run_key'))} / manifest "
                         f"{str(info.get('manifest_sha256'))[:12]} vs this run's {json.dumps(key)} / manifest "
                         f"{manifest_hash[:12]}; use another run_root or remove {out_dir}")
    backbone = out_dir / BACKBONE
    if not backbone.exists() or file_sha256(backbone) != info.get("checkpoint_sha256"):
        raise ValueError(f"{backbone} is missing or differs from the checkpoint_sha256 in {path}; remove {out_dir} "
                         "to redo the run")
    return info


def load_checkpoint(out_dir: str | os.PathLike, key: dict[str, Any], manifest_hash: str) -> dict[str, Any] | None:
    """The run's ``checkpoint.pt`` if it exists; a checkpoint of another run (key or manifest) raises."""
    path = Path(out_dir) / CHECKPOINT
    if not path.exists():
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not _same(ckpt.get("run_key"), key) or ckpt.get("manifest_sha256") != manifest_hash:
        raise ValueError(
            f"refusing to resume from {path}: it was written for run key "
            f"{json.dumps(ckpt.get('run_key'), sort_keys=True)} with noise manifest {ckpt.get('manifest_sha256')}, "
            f"but this run has run key {json.dumps(key, sort_keys=True)} with noise manifest {manifest_hash}. "
            f"Use another run_root or remove {path} to start over.")
    return ckpt


# --- evaluation -----------------------------------------------------------------------------------------------------

@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, *, batch_size: int = EVAL_BATCH,
            autocast: bool = False) -> torch.Tensor:
    """Arg-max class of each image (uint8 N×C×H×W on the model's device), in eval mode; returns int64 N."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = to_float(images[i:i + batch_size]).contiguous(memory_format=torch.channels_last)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=autocast):
            out.append(model(x).argmax(1))
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64, device=images.device)


def _memo_index(flipped: torch.Tensor, seed: int) -> torch.Tensor:
    """A fixed seeded subset (at most MEMO_SAMPLES) of the flipped samples' indices."""
    index = torch.nonzero(flipped.cpu(), as_tuple=True)[0]
    if len(index) > MEMO_SAMPLES:
        gen = torch.Generator().manual_seed(epoch_seed(seed, MEMO_STREAM))
        index = index[torch.randperm(len(index), generator=gen)[:MEMO_SAMPLES]].sort().values
    return index


# --- one training step (shared with bench/pretrain_throughput.py) ---------------------------------------------------

def augment_batch(images: torch.Tensor, idx: torch.Tensor, gen: torch.Generator, *, flip: bool,
                  padding: int | None = None) -> torch.Tensor:
    """Gather ``images[idx]`` (uint8 B×C×H×W, on the device), scale to [0, 1], random crop by up to ``padding``
    (default ``PAD``) pixels, flip when ``flip``; returned float B×C×H×W in channels_last."""
    x = random_crop_flip(to_float(images[idx]), gen, padding=PAD if padding is None else padding, flip=flip)
    return x.contiguous(memory_format=torch.channels_last)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
               autocast: bool = False, label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on cross-entropy(model(x), y); bf16 autocast on CUDA (loss in fp32). Returns detached
    (loss, logits) without syncing the device."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), logits.detach()


def make_optimizer(model: nn.Module, config, total_steps: int):
    """SGD-Nesterov (decay on conv/linear weights only) and the per-step one-cycle schedule over ``total_steps``."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([dict(params=decay, weight_decay=config.weight_decay),
                           dict(params=no_decay, weight_decay=0.0)],
                          lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: one_cycle(s, total_steps))


# --- the run --------------------------------------------------------------------------------------------------------

def pretrain(config, train_set, noisy, test_set, out_dir: str | os.PathLike, *, seed: int,
             stop_after: int | None = None) -> dict[str, Any]:
    """Train ``config.model`` on ``noisy.labels`` of ``train_set``; evaluate on the clean ``test_set`` every epoch.

    ``noisy`` is a ``nmtune_lib.noise.NoisyLabels`` (``labels`` int64 N, ``clean``, ``flipped`` bool N, ``ratio``,
    ``manifest_hash``). Resumes from ``out_dir/checkpoint.pt``, returns at once when ``pretrain.json`` matches, and
    refuses a checkpoint or summary of another run. ``stop_after`` ends the call after that many epochs in total
    (as an interruption would; for tests and time-sliced runs) and returns ``{"finished": False, ...}``.
    Returns the summary written to ``pretrain.json``, on every DDP rank (DDP ranks must share ``out_dir``).
    """
    out_dir = Path(out_dir)
    start_wall = time.perf_counter()
    device = _device_for(config)
    dist = _Dist(device.type)
    try:
        check_inputs(config, train_set, noisy, test_set, world=dist.world)
        key, manifest_hash = run_key(config, seed), noisy.manifest_hash
        done = _finished(out_dir, key, manifest_hash)
        if dist.broadcast(done is not None) != (done is not None):
            raise RuntimeError(f"rank {dist.rank} and rank 0 disagree on whether {out_dir} is finished")
        if done is not None:
            if dist.main:
                _say(config, f"{out_dir}: finished run found (clean test acc {done['final_test_acc']:.4f}); skipped")
            return done
        ckpt = load_checkpoint(out_dir, key, manifest_hash)
        start = ckpt["epoch"] if ckpt else 0
        if dist.broadcast(start) != start:
            raise RuntimeError(f"rank {dist.rank} sees checkpoint epoch {start}, rank 0 another: the ranks must share "
                               f"{out_dir}")
        with _threads(device, config, dist.local_world) as threads:
            return _train(config, train_set, noisy, test_set, out_dir, seed=seed, stop_after=stop_after,
                          device=device, dist=dist, key=key, ckpt=ckpt, threads=threads, start_wall=start_wall)
    finally:
        dist.close()


def _train(config, train_set, noisy, test_set, out_dir: Path, *, seed, stop_after, device, dist, key, ckpt, threads,
           start_wall) -> dict[str, Any]:
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        backbone = create_backbone(config.model, num_classes=train_set.num_classes, in_chans=train_set.shape[0],
                                   img_size=config.img_size, small_stem=config.small_stem)
    backbone = backbone.to(device, memory_format=torch.channels_last)

    # This rank's shard of the in-memory training tensor (every ``world``-th sample), on the device.
    n_local = len(train_set) // dist.world
    shard = slice(dist.rank, dist.rank + dist.world * n_local, dist.world)
    images, labels = train_set.images[shard].to(device), noisy.labels[shard].to(device)
    batch = config.batch_size // dist.world
    steps = n_local // batch
    total = config.epochs * steps
    flip = FLIP.get(config.dataset, True)

    opt, sched = make_optimizer(backbone, config, total)
    state = dict(history=[], epoch=0, seconds=0.0, train_seconds=0.0, images_seen=0)
    if ckpt is not None:
        backbone.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        state = {k: ckpt[k] for k in state}
    history = state["history"]

    model: nn.Module = backbone
    if dist.on:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(backbone, device_ids=[device.index] if cuda else None)
    if cuda and config.compile:
        model = torch.compile(model)

    # Rank 0 evaluates (its weights are the ones written): the clean test split and the flipped-sample subset.
    if dist.main:
        test_images, test_labels = test_set.images.to(device), test_set.labels.to(device)
        memo = _memo_index(noisy.flipped, seed)
        memo_images = train_set.images[memo].to(device)
        memo_noisy, memo_clean = noisy.labels[memo].to(device), train_set.labels[memo].to(device)
        if state["epoch"]:
            _say(config, f"{out_dir}: resuming after epoch {state['epoch']}/{config.epochs}")

    bar_on = config.progress and dist.main
    last = config.epochs if stop_after is None else min(config.epochs, stop_after)
    for epoch in range(state["epoch"], last):
        t0 = time.perf_counter()
        gen = torch.Generator(device=device if cuda else "cpu").manual_seed(epoch_seed(seed, epoch, dist.rank))
        perm = torch.randperm(n_local, generator=gen, device=gen.device).to(device)
        model.train()
        loss_sum = torch.zeros((), device=device)
        hit_sum = torch.zeros((), device=device)
        bar = _bar(bar_on, steps, f"epoch {epoch + 1}/{config.epochs}")
        for step in range(steps):
            idx = perm[step * batch:(step + 1) * batch]
            x, y = augment_batch(images, idx, gen, flip=flip), labels[idx]
            loss, logits = train_step(model, opt, x, y, autocast=cuda, label_smoothing=config.label_smoothing)
            sched.step()
            loss_sum += loss
            hit_sum += (logits.argmax(1) == y).sum()
            if bar is not None and (step % 10 == 9 or step == steps - 1):  # .item() syncs: not every step
                rate = (step + 1) * batch * dist.world / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{loss_sum.item() / (step + 1):.3f}", img_s=f"{rate:.0f}", refresh=False)
                bar.update(step + 1 - bar.n)
        if cuda:
            torch.cuda.synchronize(device)
        train_time = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        loss_total, hits = dist.all_sum([loss_sum.item(), hit_sum.item()])
        seen = steps * batch * dist.world
        row = dict(epoch=epoch + 1, train_loss=loss_total / (steps * dist.world), train_acc_noisy=hits / seen,
                   lr=sched.get_last_lr()[0], images_per_s=seen / train_time)
        if dist.main:
            row["test_acc"] = (predict(backbone, test_images, autocast=cuda) == test_labels).double().mean().item()
            pred = predict(backbone, memo_images, autocast=cuda)
            row["memo_noisy"] = (pred == memo_noisy).double().mean().item() if len(memo) else math.nan
            row["memo_clean"] = (pred == memo_clean).double().mean().item() if len(memo) else math.nan
        row["seconds"] = _ckpt_seconds(ckpt) + time.perf_counter() - start_wall
        row = dist.broadcast(row if dist.main else None)
        history.append({k: row[k] for k in HISTORY_FIELDS})
        state.update(epoch=epoch + 1, seconds=row["seconds"], train_seconds=state["train_seconds"] + train_time,
                     images_seen=state["images_seen"] + seen)
        if dist.main:
            _say(config, _epoch_line(row, config.epochs))
            atomic_torch_save(out_dir / CHECKPOINT, dict(
                state, run_key=key, manifest_sha256=noisy.manifest_hash, model=_cpu_state(backbone),
                optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                rng=dict(scheme=RECIPE["data_order"], seed=seed,
                         next_epoch_state=_generator_state(epoch_seed(seed, epoch + 1, 0)))))
        dist.barrier()
    if len(history) < config.epochs:  # stopped early (stop_after): the checkpoint holds the state
        return dict(finished=False, epochs_done=len(history), history=history)
    summary = None
    if dist.main:
        summary = _finish(config, backbone, state, out_dir, seed=seed, key=key, noisy=noisy, device=device,
                          threads=threads, world=dist.world, seconds_before=_ckpt_seconds(ckpt), start_wall=start_wall)
    return dist.broadcast(summary)


def _ckpt_seconds(ckpt: dict[str, Any] | None) -> float:
    """Wall-clock seconds spent by earlier (interrupted) calls, up to their last checkpoint."""
    return float(ckpt["seconds"]) if ckpt else 0.0


def _finish(config, backbone: Backbone, state: dict[str, Any], out_dir: Path, *, seed, key, noisy, device, threads,
            world, seconds_before, start_wall) -> dict[str, Any]:
    """Write backbone.pt, history.csv/.nc, then pretrain.json (last); return the summary."""
    history = state["history"]
    meta = dict(name=config.model, num_classes=int(backbone.net.num_classes), in_chans=backbone.in_chans,
                img_size=backbone.img_size, small_stem=config.small_stem, num_features=backbone.num_features)
    atomic_torch_save(out_dir / BACKBONE, dict(model=_cpu_state(backbone), meta=meta))
    atomic_write_text(out_dir / HISTORY_CSV, history_frame(history).to_csv(index=False))
    last = history[-1]
    summary = dict(
        final_test_acc=last["test_acc"], train_loss=last["train_loss"], train_acc_noisy=last["train_acc_noisy"],
        memo_noisy=_num(last["memo_noisy"]), memo_clean=_num(last["memo_clean"]), epochs=len(history),
        images_per_s=round(state["images_seen"] / state["train_seconds"], 1), images_seen=state["images_seen"],
        train_seconds=round(state["train_seconds"], 3),
        checkpoint_sha256=file_sha256(out_dir / BACKBONE), manifest_sha256=noisy.manifest_hash,
        noise_ratio=float(noisy.ratio), noise_kind=str(getattr(noisy, "kind", config.noise_kind)), seed=int(seed),
        config=config.to_dict(), run_key=key, model=meta, device=_device_name(device), num_threads=threads,
        world_size=world, versions=_versions())
    save_dataset(history_dataset(history, summary), out_dir / HISTORY_NC)
    summary["seconds"] = round(seconds_before + time.perf_counter() - start_wall, 3)
    atomic_write_json(out_dir / SUMMARY, summary)
    _say(config, f"{out_dir}: clean test acc {summary['final_test_acc']:.4f} in {summary['seconds']:.1f} s "
                 f"({summary['images_per_s']:.0f} img/s on {summary['device']})")
    return summary


# --- history as tables --------------------------------------------------------------------------------------------

def history_frame(history: list[dict[str, Any]]):
    """The per-epoch history as a pandas DataFrame (one row per epoch, columns ``HISTORY_FIELDS``)."""
    import pandas as pd

    return pd.DataFrame(history, columns=list(HISTORY_FIELDS))


def history_dataset(history: list[dict[str, Any]], summary: dict[str, Any] | None = None):
    """The history as an xarray Dataset over ``epoch``; attrs are h5netcdf-safe (JSON strings, numbers, 0/1)."""
    import xarray as xr

    frame = history_frame(history).set_index("epoch")
    ds = xr.Dataset.from_dataframe(frame)
    descriptions = dict(
        train_loss="mean cross-entropy on the noisy training labels (augmented batches)",
        train_acc_noisy="fraction of augmented training predictions equal to the noisy label (noisy-label fit)",
        test_acc="accuracy on the clean test split", lr="learning rate after the epoch's last step",
        memo_noisy="flipped training samples (un-augmented) predicted as their noisy label",
        memo_clean="flipped training samples (un-augmented) predicted as their clean label",
        seconds="wall-clock seconds since the run started (evaluation included)",
        images_per_s="training images per second in this epoch")
    for name, text in descriptions.items():
        ds[name].attrs["description"] = text
    if summary is not None:
        ds.attrs.update(config=json.dumps(summary["config"], sort_keys=True), run_key=json.dumps(summary["run_key"]),
                        manifest_sha256=summary["manifest_sha256"], checkpoint_sha256=summary["checkpoint_sha256"],
                        seed=int(summary["seed"]), noise_ratio=float(summary["noise_ratio"]),
                        noise_kind=summary["noise_kind"], device=summary["device"],
                        versions=json.dumps(summary["versions"]), memo_samples=MEMO_SAMPLES)
    return ds


def load_history(run_dir: str | os.PathLike):
    """``history.nc`` of a run as an in-memory xarray Dataset."""
    import xarray as xr

    return xr.load_dataset(Path(run_dir) / HISTORY_NC, engine="h5netcdf")


def plot_history(history):
    """Learning curves (seaborn): clean test accuracy, noisy-label fit and memorisation of flipped samples per epoch.

    ``history``: a list of per-epoch dicts, a DataFrame of ``HISTORY_FIELDS``, or the Dataset of ``history.nc``.
    Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    if isinstance(history, list):
        frame = history_frame(history)
    elif isinstance(history, pd.DataFrame):
        frame = history
    else:
        frame = history.to_dataframe().reset_index()
    long = frame.melt(id_vars="epoch", value_vars=["test_acc", "train_acc_noisy", "memo_noisy", "memo_clean"],
                      var_name="curve", value_name="fraction")
    names = {"test_acc": "clean test accuracy", "train_acc_noisy": "fit of noisy training labels",
             "memo_noisy": "flipped: predicted noisy label", "memo_clean": "flipped: predicted clean label"}
    long["curve"] = long["curve"].map(names)
    long["panel"] = long["curve"].map(lambda c: "memorisation of flipped labels" if c.startswith("flipped")
                                      else "accuracy")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    for ax, panel in zip(axes[:2], ("accuracy", "memorisation of flipped labels")):
        sns.lineplot(long[long["panel"] == panel], x="epoch", y="fraction", hue="curve", marker="o", ax=ax)
        ax.set(title=panel, ylim=(0, 1), xlabel="epoch")
        ax.legend(fontsize=8, title=None)
    sns.lineplot(frame, x="epoch", y="train_loss", marker="o", ax=axes[2])
    axes[2].set(title="training loss on noisy labels", ylabel="cross-entropy")
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


# --- loading a finished run -------------------------------------------------------------------------------------------

def load_pretrained(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Backbone, dict[str, Any]]:
    """The final backbone of a finished run (eval mode, on ``device``) and its ``pretrain.json`` summary.

    The file hash of ``backbone.pt`` must equal the summary's ``checkpoint_sha256``.
    """
    run_dir = Path(run_dir)
    if not (run_dir / SUMMARY).exists():
        raise FileNotFoundError(f"{run_dir / SUMMARY} not found: the pre-training run there has not finished "
                                "(run notebooks/02_pretrain.ipynb or python -m nmtune_lib.pretrain first)")
    info = json.loads((run_dir / SUMMARY).read_text())
    path = run_dir / BACKBONE
    digest = file_sha256(path)
    if digest != info["checkpoint_sha256"]:
        raise ValueError(f"{path} has sha256 {digest[:12]} but {run_dir / SUMMARY} says "
                         f"{info['checkpoint_sha256'][:12]}: the weights were changed after the run")
    meta = info["model"]
    backbone = create_backbone(meta["name"], num_classes=meta["num_classes"], in_chans=meta["in_chans"],
                               img_size=meta["img_size"], small_stem=meta["small_stem"], checkpoint=path)
    device = resolve_device(device) if isinstance(device, str) else device
    return backbone.to(device).eval(), info


# --- small helpers ------------------------------------------------------------------------------------------------

def _device_for(config) -> torch.device:
    """The run's device; under torchrun on CUDA, this rank's GPU (``LOCAL_RANK``)."""
    device = resolve_device(config.device)
    if device.type == "cuda" and device.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict as contiguous CPU tensors: the saved bytes do not depend on channels_last or the device."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def _generator_state(seed: int) -> torch.Tensor:
    return torch.Generator().manual_seed(seed).get_state()


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _versions() -> dict[str, str]:
    import timm

    from . import __version__

    return dict(torch=torch.__version__, timm=timm.__version__, nmtune_lib=__version__,
                python=platform.python_version())


def _bar(on: bool, total: int, desc: str):
    if not on:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, file=sys.stdout)


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    memo = "" if math.isnan(row["memo_noisy"]) else \
        f" | flipped→noisy {row['memo_noisy']:.3f} →clean {row['memo_clean']:.3f}"
    return (f"epoch {row['epoch']}/{epochs} | loss {row['train_loss']:.4f} | noisy fit {row['train_acc_noisy']:.4f} | "
            f"test acc {row['test_acc']:.4f}{memo} | {row['images_per_s']:.0f} img/s | {row['seconds']:.1f} s")


def _say(config, text: str) -> None:
    """One printed line; with progress bars on, printed through tqdm so that bars are not broken."""
    if config.progress:
        from tqdm.auto import tqdm

        tqdm.write(text, file=sys.stdout)
    else:
        print(text, flush=True)


# --- command line (torchrun entry point) ---------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """``python -m nmtune_lib.pretrain --preset P --noise-ratio R --seed K [--set key=value ...]``, torchrun-ready."""
    from .config import StudyConfig, parse_assignments
    from .data import pretraining_data
    from .noise import noisy_labels_for_run

    parser = argparse.ArgumentParser(prog="python -m nmtune_lib.pretrain", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--noise-ratio", type=float, required=True, help="fraction of training labels flipped")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--dataset")
    parser.add_argument("--noise-kind")
    parser.add_argument("--device")
    parser.add_argument("--run-root")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other StudyConfig fields")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in dict(dataset=args.dataset, noise_kind=args.noise_kind, device=args.device,
                                       run_root=args.run_root, progress=args.progress).items() if v is not None}
    try:
        overrides.update(parse_assignments(args.set))
    except ValueError as err:
        parser.error(f"--set {err}")
    config = StudyConfig.from_preset(args.preset, noise_ratios=[args.noise_ratio], seeds=[args.seed], **overrides)
    run_dir = config.run_dir(args.noise_ratio, args.seed)
    dist = _Dist(_device_for(config).type)  # the group must exist before rank 0 writes the manifest
    try:
        train_set, test_set = pretraining_data(config)
        if dist.main:  # rank 0 writes the manifest; the others then read and verify it
            noisy = noisy_labels_for_run(config, train_set, args.noise_ratio, args.seed, run_dir)
        dist.barrier()
        if not dist.main:
            noisy = noisy_labels_for_run(config, train_set, args.noise_ratio, args.seed, run_dir)
        summary = pretrain(config, train_set, noisy, test_set, run_dir, seed=args.seed)
        if dist.main:
            keys = ("final_test_acc", "seconds", "images_per_s", "device", "world_size")
            print(json.dumps({k: summary[k] for k in keys}))
    finally:
        dist.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
