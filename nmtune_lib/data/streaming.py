"""Pre-training data streamed from disk: folder datasets too large to decode into memory (``config.stream``).

``streamed_split(name, split, root, img_size)`` scans an ImageNet-style folder (``image_folders``) into a
``StreamedSplit``: the file list and clean labels only, which is all that noise injection and the run's manifest
need (the manifest records ``file_list_sha256``, the hash of its (relative path, label) list). Pre-training
(``pretrain``) then reads the images through a ``DataLoader`` every epoch:

- training: ``RandomResizedCrop(img_size)`` (torchvision's default scale (0.08, 1) and ratio (3/4, 4/3)) and a
  horizontal flip, the usual ImageNet recipe the paper's ResNet-50 follows; evaluation: the shorter side resized to
  ``img_size`` and the centre crop, as the in-memory path decodes (``image_sets.to_image_set``);
- worker processes (``config.loader_workers``), pinned memory on CUDA, persistent workers; uint8 batches go to the
  device and are scaled there (bf16 autocast and channels_last on CUDA, as in memory);
- the data order of epoch e is the in-memory path's (a ``randperm`` of this rank's shard from the generator seeded by
  (seed, e, rank)); the augmentation of sample i in epoch e is drawn from its own seed (seed, e, i), so it depends
  neither on the number of workers nor on what ran before, and a run resumed from a checkpoint replays exactly.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .image_folders import FileListDataset, folder_files
from .image_sets import ImageSet, LabelledSplit, to_image_set


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of epoch ``epoch``'s generator on ``rank``: independent streams via numpy's SeedSequence (the streamed
    sampler's order here, the in-memory pre-training order in ``pretraining.recipe``)."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(rank)]).generate_state(1, np.uint64)[0])


@dataclass(frozen=True)
class StreamedSplit(LabelledSplit):
    """A split on disk: ``files`` (an ``image_folders.FileListDataset``), its clean ``labels`` (int64 N), ``classes``,
    ``name`` and the side ``img_size`` its images are read at. ``images`` is None: nothing is held in memory."""

    files: Dataset
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str
    img_size: int
    root: str
    images: None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (3, self.img_size, self.img_size)

    def subset(self, index, name: str | None = None) -> "StreamedSplit":
        index = torch.as_tensor(index, dtype=torch.int64)
        samples = [self.files.samples[i] for i in index.tolist()]
        return StreamedSplit(FileListDataset(samples, self.classes, self.files.name), self.labels[index],
                             self.classes, name or self.name, self.img_size, self.root)

    @property
    def file_list_sha256(self) -> str:
        """sha256 of this split's (path relative to ``root``, label) list: which files, in which order, with which
        label (recorded in the noise manifest)."""
        digest = hashlib.sha256()
        for path, label in self.files.samples:
            digest.update(f"{Path(path).relative_to(self.root).as_posix()}\t{label}\n".encode())
        return digest.hexdigest()

    def decode(self, index: torch.Tensor) -> torch.Tensor:
        """uint8 K×3×S×S images ``index`` through the evaluation transform (the memorisation subset)."""
        return self.subset(index).in_memory().images

    def in_memory(self):
        """The whole split decoded through the evaluation transform: a ``data.ImageSet`` that keeps this split's
        ``file_list_sha256``."""
        decoded = to_image_set(self.files, img_size=self.img_size, progress=False)
        return ImageSet(decoded.images, self.labels, self.classes, self.name, self.file_list_sha256)


def streamed_split(name: str, split: str, root, img_size: int) -> StreamedSplit:
    """Split ``split`` ("train" or "test" = val) of the folder dataset ``<root>/<name>/``, scanned, not decoded."""
    files = folder_files(name, split, root)
    base = Path(root).expanduser() / name
    labels = torch.as_tensor(files.targets, dtype=torch.int64)
    return StreamedSplit(files, labels, files.classes, f"{name}/{split}", img_size, str(base))


# --- transforms and loaders ---------------------------------------------------------------------------------------

def train_transform(img_size: int):
    from torchvision import transforms as T

    return T.Compose([T.RandomResizedCrop(img_size, antialias=True), T.RandomHorizontalFlip(), T.PILToTensor()])


def eval_transform(img_size: int):
    from torchvision import transforms as T

    return T.Compose([T.Resize(img_size, antialias=True), T.CenterCrop(img_size), T.PILToTensor()])


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in epoch ``epoch``."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index), 1]).generate_state(1, np.uint64)[0])


class _SeededAugment(Dataset):
    """Item ``(i, epoch)`` → (uint8 image of sample i augmented with its own seed, i)."""

    def __init__(self, split: StreamedSplit, seed: int):
        self.files, self.seed, self.transform = split.files, seed, train_transform(split.img_size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item):
        from torchvision.datasets.folder import default_loader

        i, epoch = item
        image = default_loader(self.files.samples[i][0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, i))
            return self.transform(image), i


class EpochBatches(Sampler):
    """Batches of ``(index, epoch)`` over ``shard`` (this rank's sample indices) in the order of epoch ``epoch``'s
    generator, the last partial batch dropped; ``set_epoch`` before each epoch, as with ``DistributedSampler``."""

    def __init__(self, shard: torch.Tensor, batch: int, seed: int, rank: int):
        self.shard, self.batch, self.seed, self.rank, self.epoch = shard, batch, seed, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.shard) // self.batch

    def __iter__(self):
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, self.rank))
        order = self.shard[torch.randperm(len(self.shard), generator=gen)].tolist()
        for step in range(len(self)):
            yield [(i, self.epoch) for i in order[step * self.batch:(step + 1) * self.batch]]


def train_loader(split: StreamedSplit, shard: torch.Tensor, *, batch: int, seed: int, rank: int, workers: int,
                 pin: bool) -> DataLoader:
    return DataLoader(_SeededAugment(split, seed), batch_sampler=EpochBatches(shard, batch, seed, rank),
                      num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)


class _Eval(Dataset):
    def __init__(self, split: StreamedSplit):
        self.files, self.transform = split.files, eval_transform(split.img_size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from torchvision.datasets.folder import default_loader

        path, label = self.files.samples[i]
        return self.transform(default_loader(path)), label


def eval_loader(split: StreamedSplit, *, batch: int, workers: int, pin: bool) -> DataLoader:
    return DataLoader(_Eval(split), batch_size=batch, shuffle=False, num_workers=workers, pin_memory=pin,
                      persistent_workers=workers > 0)
