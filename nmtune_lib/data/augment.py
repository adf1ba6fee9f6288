"""Batched image augmentation as tensor ops on the device (no DataLoader workers).

Every function takes a float batch N×C×H×W in [0, 1] and an explicit ``torch.Generator`` (on the batch's device or
the CPU), so a seed fixes every crop and flip. Random numbers are drawn on the generator's device and moved to the
batch's, which keeps CPU runs bit-identical whatever the batch device.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from .. import reference as ref


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] → float32 in [0, 1]; float input is returned as float32 unchanged."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def _rand(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=generator.device).to(device)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = _rand(len(x), generator, x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_crop(x: torch.Tensor, generator: torch.Generator, *, padding: int = 4) -> torch.Tensor:
    """Zero-pad by ``padding`` and take one random H×W crop per image (translation by up to ±padding pixels)."""
    if padding == 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy = (_rand(n, generator, x.device) * (2 * padding + 1)).long()
    dx = (_rand(n, generator, x.device) * (2 * padding + 1)).long()
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, *, padding: int = 4, flip: bool = True) -> torch.Tensor:
    """The pre-training augmentation: random crop with zero padding, then (optionally) a horizontal flip."""
    x = random_crop(x, generator, padding=padding)
    return random_flip(x, generator) if flip else x


def check_interpolation(interpolation: str) -> None:
    """Raise ValueError naming the accepted resamplings unless ``interpolation`` is one of them."""
    if interpolation not in ref.VIEW_INTERPOLATIONS:
        raise ValueError(f"interpolation={interpolation!r}; accepted: {', '.join(ref.VIEW_INTERPOLATIONS)}")


def check_blur(blur: float) -> None:
    """Raise ValueError unless ``blur`` (a Gaussian σ in pixels) is a finite real number >= 0 (Python's or numpy's,
    any width; not a bool)."""
    if not (isinstance(blur, numbers.Real) and not isinstance(blur, bool) and math.isfinite(blur) and blur >= 0):
        raise ValueError(f"blur={blur!r}; accepted: a finite Gaussian sigma >= 0, in pixels (0 = no blur)")


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur every image with an isotropic Gaussian of ``sigma`` pixels (torchvision's ``gaussian_blur``, reflected
    borders, kernel radius ceil(3σ)); ``sigma`` 0 returns ``x`` itself."""
    check_blur(sigma)
    if sigma == 0:
        return x
    size = 2 * math.ceil(3 * sigma) + 1
    return TF.gaussian_blur(x, [size, size], [float(sigma), float(sigma)])


def random_resized_crop(x: torch.Tensor, generator: torch.Generator, *,
                        scale: tuple[float, float] = ref.VIEW_CROP_SCALE,
                        ratio: tuple[float, float] = ref.VIEW_CROP_RATIO, flip: bool = True,
                        interpolation: str = "bilinear", blur: float = 0.0) -> torch.Tensor:
    """The weak view augmentation of NMTune: a random-resized crop (area fraction in ``scale``, aspect ratio in
    ``ratio``, log-uniform) resampled to the input size (``interpolation``: one of
    ``reference.VIEW_INTERPOLATIONS``), then (``flip``) a horizontal flip. ``blur`` > 0 blurs every view with a
    Gaussian of that σ (pixels) after resampling: not the reference's, a probe of what resampling's smoothing does
    (0, the default, leaves views as they were and draws the same random numbers either way).

    The defaults are the reference code's view transform for timm models (docs/paper.md, "Views"):
    ``reference.VIEW_CROP_SCALE``, ``VIEW_CROP_RATIO`` (torchvision's ratio range) and a flip. Implemented as one
    batched affine ``grid_sample``; crops are clipped to lie inside the image.
    """
    check_interpolation(interpolation)
    check_blur(blur)
    n = len(x)
    area = scale[0] + (scale[1] - scale[0]) * _rand(n, generator, x.device)
    log_r = torch.log(torch.tensor(ratio, device=x.device))
    aspect = torch.exp(log_r[0] + (log_r[1] - log_r[0]) * _rand(n, generator, x.device))
    sw = torch.sqrt(area * aspect).clamp(max=1.0)  # crop width / image width
    sh = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (1 - sw) * (2 * _rand(n, generator, x.device) - 1)  # centre in normalised coordinates, crop stays inside
    cy = (1 - sh) * (2 * _rand(n, generator, x.device) - 1)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sw, cx, sh, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = gaussian_blur(F.grid_sample(x, grid, mode=interpolation, padding_mode="border", align_corners=False), blur)
    return random_flip(out, generator) if flip else out


@dataclass(frozen=True)
class ViewAugment:
    """The view augmentation of one downstream task as a value: ``random_resized_crop`` with these settings.

    ``flip`` is decided per task (``Task.flip``): a mirrored digit is another glyph, so digit tasks do not flip.
    ``name`` spells every setting (the interpolation only when it is not the default bilinear, the blur only when it
    is not 0, so default views keep the names they always had); it enters the feature-cache key and the results.
    """

    scale: tuple[float, float] = ref.VIEW_CROP_SCALE
    ratio: tuple[float, float] = ref.VIEW_CROP_RATIO
    flip: bool = True
    interpolation: str = "bilinear"
    blur: float = 0.0

    def __post_init__(self):
        check_interpolation(self.interpolation)
        check_blur(self.blur)

    @property
    def name(self) -> str:
        resampling = "" if self.interpolation == "bilinear" else f"_{self.interpolation}"
        blur = f"_blur{self.blur:g}" if self.blur else ""
        return (f"weak_s{self.scale[0]:g}-{self.scale[1]:g}_r{self.ratio[0]:.3g}-{self.ratio[1]:.3g}"
                f"_{'flip' if self.flip else 'noflip'}{resampling}{blur}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return random_resized_crop(x, generator, scale=tuple(self.scale), ratio=tuple(self.ratio), flip=self.flip,
                                   interpolation=self.interpolation, blur=self.blur)
