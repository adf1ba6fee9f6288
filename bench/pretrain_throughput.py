"""Pre-training throughput: the in-memory device path of nmtune_lib.pretraining.pretrain (recipe.py) against a plain DataLoader + eager loop.

For the `default` preset's model on the CPU and, where CUDA exists, the `gpu` preset's model on the GPU, one run
measures images/second of a training step (augmentation, forward, backward, SGD step) along two paths on the same
model and data:

- in-memory: the whole uint8 split on the device, batched crop/flip as tensor ops, channels_last; on CUDA also bf16
  autocast (and torch.compile with --compile), exactly the step nmtune_lib.pretraining.pretrain runs;
- DataLoader: a map-style Dataset yielding one PIL image at a time through torchvision transforms (RandomCrop with
  padding, RandomHorizontalFlip, ToTensor), a torch DataLoader with 0 and/or N worker processes, fp32 NCHW eager
  training. The ratio column compares with the fastest DataLoader row.

It prints a table and writes JSON (default bench/results/pretrain_throughput.json). `--full` also times one whole
`default`-preset run (Fashion-MNIST, noise 0, seed 0) end to end with its clean test accuracy. Only torch, timm and
numpy are required; torchvision (transforms) and the Fashion-MNIST files are used when present (else synthetic
images of the same shape).

    python bench/pretrain_throughput.py [--quick] [--full] [--out PATH] [--steps N] [--workers 0,8] [--compile]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nmtune_lib.config import StudyConfig  # noqa: E402
from nmtune_lib.pretraining.models import create_backbone  # noqa: E402
from nmtune_lib.pretraining.recipe import FLIP, PAD, augment_batch, make_optimizer, train_step  # noqa: E402


def load_train(dataset: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(uint8 N×1×28×28, int64 N, source): the real training split when its files exist, else synthetic."""
    try:
        from nmtune_lib.data.datasets import load_dataset

        split = load_dataset(dataset, "train")
        return split.images, split.labels, split.name
    except (FileNotFoundError, ImportError) as err:
        print(f"({dataset} unavailable: {type(err).__name__}; using 60,000 synthetic 28×28 images)")
        gen = torch.Generator().manual_seed(0)
        return (torch.randint(0, 256, (60000, 1, 28, 28), dtype=torch.uint8, generator=gen),
                torch.randint(0, 10, (60000,), generator=gen), "synthetic")


class PlainDataset(torch.utils.data.Dataset):
    """What a torchvision dataset does: one image at a time → PIL → transforms → tensor."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, flip: bool):
        self.images, self.labels = images, labels
        try:
            from torchvision import transforms as T

            steps = [T.RandomCrop(images.shape[-1], padding=PAD)] + ([T.RandomHorizontalFlip()] if flip else [])
            self.transform = T.Compose(steps + [T.ToTensor()])
            self.pil = True
        except ImportError:  # no torchvision: the same per-sample work with tensor ops
            self.transform, self.pil, self.flip = None, False, flip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = self.images[i]
        if self.pil:
            from PIL import Image

            return self.transform(Image.fromarray(img[0].numpy(), mode="L")), self.labels[i]
        x = torch.nn.functional.pad(img.float() / 255, (PAD,) * 4)
        dy, dx = torch.randint(0, 2 * PAD + 1, (2,)).tolist()
        x = x[:, dy:dy + img.shape[-2], dx:dx + img.shape[-1]]
        return (x.flip(-1) if self.flip and torch.rand(()) < 0.5 else x), self.labels[i]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model(config: StudyConfig, device: torch.device, channels_last: bool):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_backbone(config.model, num_classes=10, in_chans=1, img_size=config.img_size,
                                small_stem=config.small_stem)
    return model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def in_memory(config, images, labels, device, *, warmup: int, steps: int, compile: bool) -> float:
    """Images/s of nmtune_lib.pretraining.pretrain's own step."""
    cuda = device.type == "cuda"
    model = _model(config, device, channels_last=True).train()
    opt, _ = make_optimizer(model, config, 10 ** 6)
    run = torch.compile(model) if compile else model
    images, labels = images.to(device), labels.to(device)
    gen = torch.Generator(device=device if cuda else "cpu").manual_seed(0)
    perm = torch.randperm(len(labels), generator=gen, device=gen.device).to(device)
    b, flip = config.batch_size, FLIP.get(config.dataset, True)
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        idx = perm[(step * b) % (len(perm) - b):][:b]
        train_step(run, opt, augment_batch(images, idx, gen, flip=flip), labels[idx], autocast=cuda)
    _sync(device)
    return steps * b / (time.perf_counter() - start)


def dataloader(config, images, labels, device, *, warmup: int, steps: int, workers: int) -> float:
    """Images/s of a plain DataLoader + fp32 eager loop on the same model."""
    model = _model(config, device, channels_last=False).train()
    opt, _ = make_optimizer(model, config, 10 ** 6)
    loader = torch.utils.data.DataLoader(
        PlainDataset(images, labels, FLIP.get(config.dataset, True)), batch_size=config.batch_size, shuffle=True,
        num_workers=workers, pin_memory=device.type == "cuda", drop_last=True, persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0))
    done, start = 0, 0.0
    while done < warmup + steps:
        for x, y in loader:
            if done == warmup:
                _sync(device)
                start = time.perf_counter()
            train_step(model, opt, x.to(device, non_blocking=True), y.to(device, non_blocking=True))
            done += 1
            if done == warmup + steps:
                break
    _sync(device)
    return steps * config.batch_size / (time.perf_counter() - start)


def full_run(preset: str) -> dict:
    """One whole pre-training run of ``preset`` at noise 0, seed 0 (Fashion-MNIST), timed end to end."""
    from nmtune_lib.data.datasets import pretraining_data
    from nmtune_lib.data.noise import inject_label_noise
    from nmtune_lib.pretraining.pretrain import pretrain
    from nmtune_lib.run import Run

    config = StudyConfig.from_preset(preset, progress=False)
    train, test = pretraining_data(config)
    clean = inject_label_noise(train.labels, 0.0, num_classes=train.num_classes, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = pretrain(Run.of(config.replace(run_root=tmp), 0.0, 0), train, clean, test)
        wall = time.perf_counter() - start
    return dict(preset=preset, model=config.model, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                final_test_acc=summary["final_test_acc"], seconds=round(wall, 2),
                images_per_s=summary["images_per_s"], device=summary["device"], threads=summary["num_threads"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "pretrain_throughput.json"))
    parser.add_argument("--quick", action="store_true", help="few steps (a smoke run of the benchmark)")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per path (default 40, quick 6)")
    parser.add_argument("--workers", default="",
                        help="comma-separated DataLoader worker counts, one baseline row each (default: 0 for the "
                             "CPU case; 0 and min(8, cores) for the CUDA case)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the in-memory CUDA path too")
    parser.add_argument("--cpu-only", action="store_true", help="skip the CUDA case even where CUDA exists")
    parser.add_argument("--full", action="store_true", help="also time one whole `default`-preset run")
    args = parser.parse_args(argv)
    steps = args.steps or (6 if args.quick else 40)
    warmup = 2 if args.quick else 5
    cuda = torch.cuda.is_available() and not args.cpu_only
    cores = os.cpu_count() or 1

    cases = [("default", torch.device("cpu"))] + ([("gpu", torch.device("cuda"))] if cuda else [])
    rows = []
    for preset, device in cases:
        config = StudyConfig.from_preset(preset)
        images, labels, source = load_train(config.dataset)
        workers = [int(w) for w in args.workers.split(",") if w.strip()] or (
            [0, min(8, cores)] if device.type == "cuda" else [0])
        if device.type == "cpu":
            torch.set_num_threads(cores)  # all cores, as pretrain does on CPU
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        fast = in_memory(config, images, labels, device, warmup=warmup, steps=steps, compile=False)
        rows.append(dict(preset=preset, model=config.model, small_stem=config.small_stem, img_size=config.img_size,
                         batch=config.batch_size, device=str(device), path="in-memory" + (
                             " (bf16, channels_last)" if device.type == "cuda" else " (channels_last)"),
                         images_per_s=round(fast, 1), data=source))
        if device.type == "cuda" and args.compile:
            fast_c = in_memory(config, images, labels, device, warmup=warmup + 3, steps=steps, compile=True)
            rows.append({**rows[-1], "path": "in-memory (bf16, channels_last, compile)",
                         "images_per_s": round(fast_c, 1)})
        best = 0.0
        for n in workers:
            plain = dataloader(config, images, labels, device, warmup=warmup, steps=steps, workers=n)
            rows.append({**rows[-1], "path": f"DataLoader ({n} workers, fp32 eager)", "images_per_s": round(plain, 1)})
            best = max(best, plain)
        for row in rows:
            if row["preset"] == preset:  # against the fastest DataLoader baseline
                row["vs_dataloader"] = round(row["images_per_s"] / best, 2)

    device_name = torch.cuda.get_device_name(0) if cuda else f"{platform.processor() or platform.machine()} CPU"
    print(f"\npre-training step throughput ({device_name}, {cores} cores, load average "
          f"{os.getloadavg()[0]:.2f}, {steps} timed steps)")
    print(f"{'preset':8} {'model':14} {'device':6} {'batch':>5}  {'path':44} {'img/s':>9} {'× best DataLoader':>17}")
    for r in rows:
        print(f"{r['preset']:8} {r['model']:14} {r['device']:6} {r['batch']:5d}  {r['path']:44} "
              f"{r['images_per_s']:9.0f} {r['vs_dataloader']:17.2f}")
    result = dict(rows=rows, steps=steps, warmup=warmup, quick=args.quick, device=device_name, cores=cores,
                  load_average=os.getloadavg(), torch=torch.__version__, time=time.strftime("%Y-%m-%dT%H:%M:%S"))
    if args.full:
        result["full_run"] = full_run("default")
        f = result["full_run"]
        print(f"\nwhole `default` run ({f['model']}, {f['epochs']} epochs, batch {f['batch_size']}): "
              f"{f['seconds']:.1f} s, clean test accuracy {f['final_test_acc']:.4f}, {f['images_per_s']:.0f} img/s "
              f"({f['device']})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print("written", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
