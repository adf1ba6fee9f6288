"""One supervised pre-training run on noisy labels: device-resident data, checkpoints, resume, DDP.

``pretrain(run, train_set, noisy, test_set)`` trains ``run.config.model`` on the *noisy* training labels and evaluates
on the *clean* test split after every epoch (``run`` is a ``nmtune_lib.run.Run``; "config" below is ``run.config``).
The recipe (data, optimiser, schedule, randomness, the measurements behind it) is ``nmtune_lib.pretraining.recipe``.

Run directory ``run.dir`` (file names in ``nmtune_lib.run``; docs/CONTRACTS.md): ``checkpoint.pt`` after every epoch
(model, optimiser, scheduler, the next epoch's generator state, history, run key, manifest hash); at the end
``backbone.pt``, ``history.csv``, ``history.nc`` and, written last, ``pretrain.json``. Every file is written
atomically; under DDP rank 0 alone writes. Reading them back (resume, finished runs, ``load_pretrained``) is
``pretraining.checkpoints``; the history's table, file and plot ``pretraining.history``; torchrun/DDP set-up
``nmtune_lib.pretraining.distributed``.

History per epoch: ``train_loss`` (mean cross-entropy on the noisy labels, augmented batches), ``train_acc_noisy``
(fraction of augmented training predictions equal to the noisy label: the noisy-label fit), ``test_acc`` (clean test
accuracy), and the memorisation rates on flipped training samples (un-augmented): ``memo_noisy`` = fraction predicted
as their noisy label, ``memo_clean`` = fraction predicted as their clean label (NaN when nothing was flipped).

Entry point for ``torchrun --nproc_per_node=N -m nmtune_lib.pretraining.pretrain --preset default --noise-ratio 0.1
--seed 0``. """
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..config import StudyConfig, parse_assignments
from ..data.augment import to_float
from ..data.datasets import pretraining_data
from ..data.noise import noisy_labels_for_run
from ..data.streaming import epoch_seed, train_loader
from ..files import atomic_torch_save, atomic_write_json, atomic_write_text, file_sha256
from ..results import device_name, package_versions, save_dataset
from ..run import CLIP_MODEL, Run
from . import clip
from .checkpoints import cpu_state, finished_summary, generator_state, load_checkpoint, save_backbone, save_checkpoint
from .distributed import Distributed, device_for, torch_threads
from .history import HISTORY_FIELDS, history_dataset, history_frame, say
from .models import Backbone, create_backbone
from .pretrained import import_pretrained, pretrained_key
from .recipe import (FLIP, RECIPE, augment_batch, check_inputs, evaluate, evaluation_data, make_optimizer, run_key,
                     train_step)


# --- the run --------------------------------------------------------------------------------------------------------

def pretrain(run: Run, train_set, noisy, test_set, *, stop_after: int | None = None) -> dict[str, Any]:
    """Train ``run.config.model`` on ``noisy.labels`` of ``train_set``; evaluate on the clean ``test_set`` every epoch.

    ``noisy`` is a ``nmtune_lib.noise.NoisyLabels`` (``labels`` int64 N, ``clean``, ``flipped`` bool N, ``ratio``,
    ``manifest_hash``). Writes into ``run.dir``; resumes from ``run.checkpoint``, returns at once when
    ``pretrain.json`` matches, and refuses a checkpoint or summary of another run. ``stop_after`` ends the call after
    that many epochs in total (as an interruption would; for tests and time-sliced runs) and returns
    ``{"finished": False, ...}``. Returns the summary written to ``pretrain.json``, on every DDP rank (DDP ranks must
    share ``run.dir``).
    """
    start_wall = time.perf_counter()
    config = run.config
    if config.pretrained:  # the user's weights stand in for training (nmtune_lib.pretraining.pretrained)

        return import_pretrained(run, noisy, test_set, key=pretrained_key(config, run.seed))
    device = device_for(config)
    dist = Distributed(device.type)
    try:
        check_inputs(config, train_set, noisy, test_set, world=dist.world)
        key, manifest_hash = run_key(config, run.seed), noisy.manifest_hash
        done = finished_summary(run, key, manifest_hash)
        if dist.broadcast(done is not None) != (done is not None):
            raise RuntimeError(f"rank {dist.rank} and rank 0 disagree on whether {run.dir} is finished")
        if done is not None:
            if dist.main:
                say(config, f"{run.dir}: finished run found (clean test acc {done['final_test_acc']:.4f}); skipped")
            return done
        ckpt = load_checkpoint(run, key, manifest_hash)
        start = ckpt["epoch"] if ckpt else 0
        if dist.broadcast(start) != start:
            raise RuntimeError(f"rank {dist.rank} sees checkpoint epoch {start}, rank 0 another: the ranks must share "
                               f"{run.dir}")
        with torch_threads(device, config, dist.local_world) as threads:
            loop = _set_up(run, train_set, noisy, test_set, device=device, dist=dist, key=key, ckpt=ckpt,
                           start_wall=start_wall)
            return _train(loop, train_set, noisy, test_set, stop_after=stop_after, threads=threads)
    finally:
        dist.close()


@dataclass
class _Loop:
    """What the epochs of one ``pretrain`` call share."""

    run: Run
    device: torch.device
    dist: Distributed
    key: dict[str, Any]  # run_key(config, seed)
    manifest_hash: str
    backbone: Backbone  # the weights evaluated and saved
    model: nn.Module  # what is trained: the backbone, wrapped in DDP and/or torch.compile where used
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    images: torch.Tensor | None  # this rank's shard of the training images (uint8, on the device); None streamed
    labels: torch.Tensor  # its noisy labels (streamed: all noisy labels, indexed by sample)
    loader: Any  # streamed: the DataLoader of this rank's shard (nmtune_lib.data.streaming); else None
    texts: dict[str, torch.Tensor] | None  # objective=clip: caption and prompt tokens (clip.texts); else None
    batch: int  # per-rank batch size
    steps: int  # steps per epoch
    state: dict[str, Any]  # history, epoch, seconds, train_seconds, images_seen (as checkpointed)
    seconds_before: float  # wall-clock seconds spent by earlier (interrupted) calls, up to their last checkpoint
    start_wall: float  # time.perf_counter() when this call started

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def _set_up(run: Run, train_set, noisy, test_set, *, device, dist, key, ckpt, start_wall) -> _Loop:
    """The seeded model, this rank's shard, the optimiser and schedule; their state from ``ckpt`` when resuming."""
    config = run.config
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(run.seed)
        if config.objective == "clip":  # image tower + text tower (nmtune_lib.pretraining.clip)
            backbone = clip.build(config, train_set)
        else:
            backbone = create_backbone(config.model, num_classes=train_set.num_classes, in_chans=train_set.shape[0],
                                       img_size=config.img_size, small_stem=config.small_stem)
    backbone = backbone.to(device, memory_format=torch.channels_last)
    # CLIP trains on captions: the "labels" of a sample are the tokens of the caption it carries
    texts = (clip.texts(train_set, noisy, test_set, run.seed, config.caption_attributes) if config.objective == "clip"
             else None)
    targets = texts["noisy"] if texts is not None else noisy.labels

    # This rank's shard of the training set (every ``world``-th sample): in memory, its images and labels on the
    # device; streamed (config.stream), a DataLoader over its files and all noisy labels on the device.
    n_local = len(train_set) // dist.world
    shard = slice(dist.rank, dist.rank + dist.world * n_local, dist.world)
    batch = config.batch_size // dist.world
    steps = n_local // batch
    loader = None
    if train_set.images is None:
        loader = train_loader(train_set, torch.arange(len(train_set))[shard], batch=batch, seed=run.seed,
                              rank=dist.rank, workers=config.loader_workers, pin=device.type == "cuda")
        images, labels = None, targets.to(device)
    else:
        images, labels = train_set.images[shard].to(device), targets[shard].to(device)

    opt, sched = make_optimizer(backbone, config, config.epochs * steps)
    state = dict(history=[], epoch=0, seconds=0.0, train_seconds=0.0, images_seen=0)
    if ckpt is not None:
        backbone.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        state = {k: ckpt[k] for k in state}
    return _Loop(run=run, device=device, dist=dist, key=key, manifest_hash=noisy.manifest_hash, backbone=backbone,
                 model=_wrap(backbone, config, device, dist), opt=opt, sched=sched, images=images, labels=labels,
                 loader=loader, texts=texts, batch=batch, steps=steps, state=state,
                 seconds_before=float(ckpt["seconds"]) if ckpt else 0.0, start_wall=start_wall)


def _wrap(backbone: Backbone, config, device: torch.device, dist: Distributed) -> nn.Module:
    """The module trained: DDP across ranks when there are several, then ``torch.compile`` on CUDA if asked."""
    model: nn.Module = backbone
    if dist.on:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(backbone, device_ids=[device.index] if device.type == "cuda" else None)
    if device.type == "cuda" and config.compile:
        model = torch.compile(model)
    return model


def _train(loop: _Loop, train_set, noisy, test_set, *, stop_after: int | None, threads: int) -> dict[str, Any]:
    """Epochs from the checkpoint's (or 0) to ``config.epochs`` or ``stop_after``; then the run's final files."""
    config, dist = loop.run.config, loop.dist
    evaluation = None
    if dist.main:  # rank 0 evaluates: its weights are the ones written
        if loop.texts is not None:
            evaluation = clip.evaluation_data(train_set, noisy, test_set, loop.texts, seed=loop.run.seed,
                                              device=loop.device)
        else:
            evaluation = evaluation_data(train_set, noisy, test_set, seed=loop.run.seed, device=loop.device,
                                         workers=config.loader_workers)
        if loop.state["epoch"]:
            say(config, f"{loop.run.dir}: resuming after epoch {loop.state['epoch']}/{config.epochs}")
    last = config.epochs if stop_after is None else min(config.epochs, stop_after)
    for epoch in range(loop.state["epoch"], last):
        loss_total, hits, train_time = _train_epoch(loop, epoch)
        row = _epoch_row(loop, epoch, loss_total, hits, train_time, evaluation)
        loop.state["history"].append({k: row[k] for k in (*HISTORY_FIELDS, *clip.HISTORY_EXTRA) if k in row})
        loop.state.update(epoch=epoch + 1, seconds=row["seconds"],
                          train_seconds=loop.state["train_seconds"] + train_time,
                          images_seen=loop.state["images_seen"] + loop.steps * loop.batch * dist.world)
        if dist.main:
            say(config, _epoch_line(row, config.epochs))
            _save_checkpoint(loop, epoch)
        dist.barrier()
    history = loop.state["history"]
    if len(history) < config.epochs:  # stopped early (stop_after): the checkpoint holds the state
        return dict(finished=False, epochs_done=len(history), history=history)
    summary = _finish(loop, noisy, threads=threads) if dist.main else None
    return dist.broadcast(summary)


def _train_epoch(loop: _Loop, epoch: int) -> tuple[float, float, float]:
    """One epoch of SGD steps over this rank's shard, in the order and with the augmentation of epoch ``epoch``'s
    generator. Returns the loss summed over steps and the correct noisy-label predictions, both summed over ranks,
    and this rank's training seconds."""
    config, dist, device = loop.run.config, loop.dist, loop.device
    t0 = time.perf_counter()
    gen = torch.Generator(device=device if loop.cuda else "cpu").manual_seed(epoch_seed(loop.run.seed, epoch,
                                                                                         dist.rank))
    loop.model.train()
    loss_sum = torch.zeros((), device=device)
    hit_sum = torch.zeros((), device=device)
    bar = _bar(config.progress and dist.main, loop.steps, f"epoch {epoch + 1}/{config.epochs}")
    for step, (x, y) in enumerate(_batches(loop, epoch, gen)):
        if loop.texts is not None:  # y: caption tokens
            loss, hits = clip.train_step(loop.model, loop.backbone, loop.opt, x, y, autocast=loop.cuda)
        else:
            loss, logits = train_step(loop.model, loop.opt, x, y, autocast=loop.cuda,
                                      label_smoothing=config.label_smoothing)
            hits = (logits.argmax(1) == y).sum()
        loop.sched.step()
        loss_sum += loss
        hit_sum += hits
        if bar is not None and (step % 10 == 9 or step == loop.steps - 1):  # .item() syncs: not every step
            rate = (step + 1) * loop.batch * dist.world / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{loss_sum.item() / (step + 1):.3f}", img_s=f"{rate:.0f}", refresh=False)
            bar.update(step + 1 - bar.n)
    if loop.cuda:
        torch.cuda.synchronize(device)
    train_time = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    loss_total, hits = dist.all_sum([loss_sum.item(), hit_sum.item()])
    return loss_total, hits, train_time


def _batches(loop: _Loop, epoch: int, gen: torch.Generator):
    """Epoch ``epoch``'s (augmented float images in channels_last, noisy labels) on the device, one per step."""
    if loop.loader is not None:  # streamed: order and augmentation seeded inside the loader (nmtune_lib.data.streaming)
        loop.loader.batch_sampler.set_epoch(epoch)
        for x, idx in loop.loader:
            x, idx = x.to(loop.device, non_blocking=True), idx.to(loop.device, non_blocking=True)
            yield to_float(x).contiguous(memory_format=torch.channels_last), loop.labels[idx]
        return
    perm = torch.randperm(len(loop.images), generator=gen, device=gen.device).to(loop.device)
    flip = FLIP.get(loop.run.config.dataset, True)
    for step in range(loop.steps):
        idx = perm[step * loop.batch:(step + 1) * loop.batch]
        yield augment_batch(loop.images, idx, gen, flip=flip), loop.labels[idx]


def _epoch_row(loop: _Loop, epoch: int, loss_total: float, hits: float, train_time: float,
               evaluation: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    """The epoch's history row (training metrics, then rank 0's evaluation and clock), the same on every rank."""
    seen = loop.steps * loop.batch * loop.dist.world
    row = dict(epoch=epoch + 1, train_loss=loss_total / (loop.steps * loop.dist.world), train_acc_noisy=hits / seen,
               lr=loop.sched.get_last_lr()[0], images_per_s=seen / train_time)
    if loop.dist.main:
        measure = clip.evaluate if loop.texts is not None else evaluate
        row.update(measure(loop.backbone, evaluation, autocast=loop.cuda))
    row["seconds"] = loop.seconds_before + time.perf_counter() - loop.start_wall
    return loop.dist.broadcast(row if loop.dist.main else None)


def _save_checkpoint(loop: _Loop, epoch: int) -> None:
    """``checkpoint.pt`` after epoch ``epoch`` (0-based): state, identity, weights, optimiser, schedule, RNG."""
    seed = loop.run.seed
    save_checkpoint(loop.run.checkpoint, dict(
        loop.state, run_key=loop.key, manifest_sha256=loop.manifest_hash, model=cpu_state(loop.backbone),
        optimizer=loop.opt.state_dict(), scheduler=loop.sched.state_dict(),
        rng=dict(scheme=RECIPE["data_order"], seed=seed,
                 next_epoch_state=generator_state(epoch_seed(seed, epoch + 1, 0)))))


def _finish(loop: _Loop, noisy, *, threads: int) -> dict[str, Any]:
    """Write backbone.pt, history.csv/.nc, then pretrain.json (last); return the summary."""
    run, config, backbone, state = loop.run, loop.run.config, loop.backbone, loop.state
    history = state["history"]
    extra = {}
    if loop.texts is not None:  # CLIP: the whole model to clip.pt, the image tower to backbone.pt (notebooks 03-05)
        atomic_torch_save(run.dir / CLIP_MODEL, dict(model=cpu_state(backbone),
                                                     vocab_size=backbone.text.token.num_embeddings))
        extra = {k: history[-1][k] for k in clip.HISTORY_EXTRA}
        extra["clip_sha256"] = file_sha256(run.dir / CLIP_MODEL)
        backbone = backbone.backbone
    meta = save_backbone(run, backbone)
    atomic_write_text(run.history_csv, history_frame(history).to_csv(index=False))
    last = history[-1]
    summary = dict(
        final_test_acc=last["test_acc"], train_loss=last["train_loss"], train_acc_noisy=last["train_acc_noisy"],
        memo_noisy=_num(last["memo_noisy"]), memo_clean=_num(last["memo_clean"]), epochs=len(history),
        images_per_s=round(state["images_seen"] / state["train_seconds"], 1), images_seen=state["images_seen"],
        train_seconds=round(state["train_seconds"], 3),
        checkpoint_sha256=file_sha256(run.backbone), manifest_sha256=noisy.manifest_hash,
        noise_ratio=float(noisy.ratio), noise_kind=str(getattr(noisy, "kind", config.noise_kind)), seed=int(run.seed),
        config=config.to_dict(), run_key=loop.key, model=meta, device=device_name(loop.device), num_threads=threads,
        world_size=loop.dist.world, versions=package_versions(), **extra)
    save_dataset(history_dataset(history, summary), run.history_nc, kind="history")
    summary["seconds"] = round(loop.seconds_before + time.perf_counter() - loop.start_wall, 3)
    atomic_write_json(run.pretrain_summary, summary)
    say(config, f"{run.dir}: clean test acc {summary['final_test_acc']:.4f} in {summary['seconds']:.1f} s "
                 f"({summary['images_per_s']:.0f} img/s on {summary['device']})")
    return summary


# --- small helpers ------------------------------------------------------------------------------------------------

def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


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


# --- command line (torchrun entry point) ---------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """``python -m nmtune_lib.pretraining.pretrain --preset P --noise-ratio R --seed K [--set key=value ...]``,
    torchrun-ready."""
    parser = argparse.ArgumentParser(prog="python -m nmtune_lib.pretraining.pretrain",
                                     description=__doc__.splitlines()[0])
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
    run = Run(StudyConfig.from_preset(args.preset, noise_ratios=[args.noise_ratio], seeds=[args.seed], **overrides))
    dist = Distributed(device_for(run.config).type)  # the group must exist before rank 0 writes the manifest
    try:
        train_set, test_set = pretraining_data(run.config)
        if dist.main:  # rank 0 writes the manifest; the others then read and verify it
            noisy = noisy_labels_for_run(run, train_set)
        dist.barrier()
        if not dist.main:
            noisy = noisy_labels_for_run(run, train_set)
        summary = pretrain(run, train_set, noisy, test_set)
        if dist.main:
            keys = ("final_test_acc", "seconds", "images_per_s", "device", "world_size")
            print(json.dumps({k: summary[k] for k in keys}))
    finally:
        dist.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
