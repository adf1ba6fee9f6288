"""The pre-training recipe: what one step, one epoch's schedule and one evaluation of ``pretrain`` do.

Chosen from measurements on the project's 2-core CPU (table below; throughput in bench/pretrain_throughput.py):

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

Randomness: initial weights come from torch's global RNG inside ``torch.random.fork_rng`` seeded with ``run.seed``
(the caller's RNG state is untouched); the data order and augmentation of epoch e come from a ``torch.Generator``
seeded from (seed, e, rank). Hence an epoch can be replayed from a checkpoint, and on CPU a resumed run ends with
weights bit-identical to an uninterrupted one.

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

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.augment import random_crop_flip, to_float
from ..data.streaming import epoch_seed, eval_loader
from .models import resolve_device

# The recipe's fixed parts (the rest is in StudyConfig); part of every run's identity (``run_key``).
PAD = 1  # translation range in pixels: ±1 px beat ±2 px on 28 px Fashion-MNIST (89.9 vs 88.9 %, docstring table)
WARMUP = 0.2  # fraction of all steps spent ramping the learning rate up
FLIP = {"fashion_mnist": True, "mnist5k": False, "uci_digits": False}  # mirrored digits are other glyphs
EVAL_BATCH = 1024
MEMO_SAMPLES = 4096  # flipped training samples (a fixed seeded subset) scored for memorisation each epoch
MEMO_STREAM = 2**31 - 1  # the 'epoch' slot of the memorisation subset's seed: no real epoch reaches it
RECIPE = dict(pad=PAD, warmup=WARMUP, nesterov=True, decay="weights only", schedule="one-cycle linear, per step",
              data_order="randperm from Generator(seed, epoch, rank)", memo_samples=MEMO_SAMPLES)


# --- identity of a run --------------------------------------------------------------------------------------------

def run_key(config, seed: int) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed: ``config.pretrain_key()``, the seed and the fixed recipe."""
    return {**config.pretrain_key(), "seed": int(seed), "recipe": RECIPE}


def one_cycle(step: int, total: int, warmup: float = WARMUP) -> float:
    """Learning-rate factor at ``step`` of ``total``: linear 0 → 1 over the first ``warmup`` fraction, then 1 → 0."""
    t = step / total
    return t / warmup if t < warmup else max(0.0, (1.0 - t) / (1.0 - warmup))


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


def memo_index(flipped: torch.Tensor, seed: int) -> torch.Tensor:
    """A fixed seeded subset (at most MEMO_SAMPLES) of the flipped samples' indices."""
    index = torch.nonzero(flipped.cpu(), as_tuple=True)[0]
    if len(index) > MEMO_SAMPLES:
        gen = torch.Generator().manual_seed(epoch_seed(seed, MEMO_STREAM))
        index = index[torch.randperm(len(index), generator=gen)[:MEMO_SAMPLES]].sort().values
    return index


def memo_subset(train_set, noisy_labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The scored flipped subset (``memo_index``) of a run: its images (from a streamed split, decoded into memory
    once), noisy labels and clean labels, on the CPU."""
    memo = memo_index(noisy_labels != train_set.labels, seed)
    images = train_set.images[memo] if train_set.images is not None else train_set.decode(memo)
    return images, noisy_labels[memo], train_set.labels[memo]


def clean_test_data(test_set, *, device: torch.device, workers: int = 0) -> dict:
    """The clean test split for ``clean_test_accuracy``: on the device, or (streamed, ``images`` None;
    nmtune_lib.data.streaming) a DataLoader that reads it at every evaluation."""
    if test_set.images is None:
        return dict(test_loader=eval_loader(test_set, batch=EVAL_BATCH, workers=workers, pin=device.type == "cuda"))
    return dict(test_images=test_set.images.to(device), test_labels=test_set.labels.to(device))


def clean_test_accuracy(backbone: nn.Module, data: dict, *, device: torch.device, autocast: bool) -> float:
    """Clean test accuracy on ``clean_test_data``'s split."""
    if "test_loader" in data:
        hits = total = 0
        for x, y in data["test_loader"]:
            pred = predict(backbone, x.to(device, non_blocking=True), autocast=autocast)
            hits, total = hits + int((pred.cpu() == y).sum()), total + len(y)
        return hits / max(total, 1)
    return (predict(backbone, data["test_images"], autocast=autocast) == data["test_labels"]).double().mean().item()


def evaluation_data(train_set, noisy, test_set, *, seed: int, device: torch.device, workers: int = 0) -> dict:
    """On the device: the clean test split (``clean_test_data``), and the scored subset of flipped training samples
    with both labels (at most MEMO_SAMPLES; from a streamed split, decoded into memory once)."""
    images, noisy_labels, clean_labels = memo_subset(train_set, noisy.labels, seed)
    return dict(clean_test_data(test_set, device=device, workers=workers), memo_images=images.to(device),
                memo_noisy=noisy_labels.to(device), memo_clean=clean_labels.to(device))


def evaluate(backbone: nn.Module, data: dict, *, autocast: bool) -> dict[str, float]:
    """Clean test accuracy and the memorisation rates of the flipped subset (NaN when it is empty)."""
    test_acc = clean_test_accuracy(backbone, data, device=data["memo_images"].device, autocast=autocast)
    pred = predict(backbone, data["memo_images"], autocast=autocast)
    scored = len(data["memo_images"]) > 0
    return dict(test_acc=test_acc,
                memo_noisy=(pred == data["memo_noisy"]).double().mean().item() if scored else math.nan,
                memo_clean=(pred == data["memo_clean"]).double().mean().item() if scored else math.nan)


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
    """SGD-Nesterov at ``config.lr`` (``objective=clip``: AdamW at ``config.clip_lr`` with torch's default betas and
    eps, open_clip's for ResNets, and ``config.clip_weight_decay``), weight
    decay on matrices only (conv, linear, embeddings; not BatchNorm/LayerNorm, biases or the logit scale), and the
    per-step one-cycle schedule over ``total_steps``."""
    clip = getattr(config, "objective", "supervised") == "clip"
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [dict(params=decay, weight_decay=config.clip_weight_decay if clip else config.weight_decay),
              dict(params=no_decay, weight_decay=0.0)]
    if clip:
        opt = torch.optim.AdamW(groups, lr=config.clip_lr)
    else:
        opt = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: one_cycle(s, total_steps))
