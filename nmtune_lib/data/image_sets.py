"""Any ``(image, label)`` dataset as an in-memory ``ImageSet``: uint8 RGB images resized and centre-cropped.

``to_image_set`` materialises a dataset from ``nmtune_lib.data.paper_data`` or ``nmtune_lib.data.image_folders`` (or any
torch ``Dataset`` of PIL images or C×H×W tensors), whole or as a seeded subset (class-stratified where the dataset
has ``targets``), as the ``nmtune_lib.data.ImageSet`` the in-memory pipeline trains on. ``to_rgb`` is the PIL-to-RGB
step shared with ``paper_data``'s loaders.
"""
from __future__ import annotations

from collections.abc import Sequence

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset



class LabelledSplit:
    """What every split offers, held in memory or not: ``len`` and ``num_classes`` from ``labels`` and ``classes``."""

    labels: torch.Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class ImageSet(LabelledSplit):
    """A split held in memory: ``images`` uint8 N×C×H×W, ``labels`` int64 N in [0, C), class names, a name."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str
    file_list_sha256: str = ""  # decoded from a folder: its (file, label) list's hash (``streaming.StreamedSplit``)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"ImageSet {self.name}: images must be uint8 N×C×H×W, got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (len(self.images),):
            raise ValueError(f"ImageSet {self.name}: labels must be int64 of length {len(self.images)}, got "
                             f"{self.labels.dtype} {tuple(self.labels.shape)}")
        if len(self.labels) and not (0 <= int(self.labels.min()) and int(self.labels.max()) < len(self.classes)):
            raise ValueError(f"ImageSet {self.name}: labels must lie in [0, {len(self.classes)})")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, index: torch.Tensor | np.ndarray, name: str | None = None) -> "ImageSet":
        index = torch.as_tensor(index, dtype=torch.int64)
        return ImageSet(self.images[index], self.labels[index], self.classes, name or self.name)

    def with_images(self, images: torch.Tensor, name: str) -> "ImageSet":
        return ImageSet(images, self.labels, self.classes, name)


def stratified_subset(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Indices of a seeded, class-stratified subset of ``size`` samples (sorted)."""
    from sklearn.model_selection import train_test_split

    if size >= len(labels):
        return torch.arange(len(labels))
    index, _ = train_test_split(np.arange(len(labels)), train_size=size, stratify=labels.numpy(), random_state=seed)
    return torch.as_tensor(np.sort(index))



def to_rgb(image):
    """PIL images to RGB (Caltech-101 has grayscale ones; torchvision returns them as they are); others unchanged."""
    if hasattr(image, "convert") and getattr(image, "mode", "RGB") != "RGB":
        return image.convert("RGB")
    return image


class _Resized(Dataset):
    """Item ``indices[i]`` of ``dataset`` as a uint8 3×S×S tensor (shorter side resized to S, centre crop)."""

    def __init__(self, dataset: Dataset, indices: torch.Tensor, img_size: int) -> None:
        self.dataset, self.indices, self.img_size = dataset, indices, img_size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, label = self.dataset[int(self.indices[i])]
        return _square_uint8(image, self.img_size), int(label)


def _square_uint8(image, img_size: int) -> torch.Tensor:
    """A PIL image or a C×H×W tensor (uint8, or float in [0, 1]) → uint8 3×S×S: resize shorter side, centre crop."""
    import torchvision.transforms.functional as TF

    if isinstance(image, torch.Tensor):
        if image.ndim == 2:
            image = image.unsqueeze(0)
        if image.dtype != torch.uint8:
            image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
    else:
        image = to_rgb(image)
    image = TF.resize(image, img_size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    image = TF.center_crop(image, [img_size, img_size])
    if not isinstance(image, torch.Tensor):
        image = TF.pil_to_tensor(image)
    return image.contiguous()


def to_image_set(dataset: Dataset, *, img_size: int, max_samples: int | None = None, seed: int = 0,
                 name: str | None = None, classes: Sequence[str] | None = None, num_workers: int = 0,
                 batch_size: int = 256, progress: bool = True) -> ImageSet:
    """Materialise ``dataset`` (or a seeded subset of at most ``max_samples``) as an in-memory ``ImageSet``.

    Images (PIL, or tensors in uint8 or float [0, 1]) become uint8 3×``img_size``×``img_size``: the shorter side is
    resized to ``img_size`` (bilinear, antialiased) and the centre cropped. The subset is class-stratified when the
    dataset exposes ``targets`` (``nmtune_lib.data.stratified_subset``), otherwise uniform, both seeded by ``seed``
    and kept in dataset order. ``classes`` defaults to ``dataset.classes``. ``num_workers`` > 0 decodes in
    ``DataLoader`` worker processes; ``progress`` shows a tqdm.auto bar.
    """
    from tqdm.auto import tqdm

    n = len(dataset)
    index = torch.arange(n)
    if max_samples is not None and max_samples < n:
        index = _subset_index(dataset, max_samples, seed)
    loader = DataLoader(_Resized(dataset, index, img_size), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers)
    name = name or getattr(dataset, "name", type(dataset).__name__)
    images, labels = [], []
    for x, y in tqdm(loader, desc=f"to_image_set {name}", total=len(loader), disable=not progress):
        images.append(x)
        labels.append(y)
    images_t = torch.cat(images) if images else torch.zeros(0, 3, img_size, img_size, dtype=torch.uint8)
    labels_t = torch.cat(labels).to(torch.int64) if labels else torch.zeros(0, dtype=torch.int64)
    if classes is None:
        classes = getattr(dataset, "classes", None)
    if classes is None:
        classes = [str(i) for i in range(int(labels_t.max()) + 1 if len(labels_t) else 0)]
    return ImageSet(images_t, labels_t, tuple(str(c) for c in classes), name)


def _subset_index(dataset: Dataset, size: int, seed: int) -> torch.Tensor:
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        try:
            return stratified_subset(torch.as_tensor(list(targets)), size, seed)
        except ValueError:  # a class too small to stratify, or fewer samples than classes
            pass
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(len(dataset), generator=generator)[:size].sort().values
