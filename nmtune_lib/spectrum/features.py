"""Frozen features of an image set through a backbone: batched, optionally K augmented views, cached on disk.

``extract_features`` returns N×D (``transform="eval"``) or N×K×D (an augmenting transform, K = ``views``) float32
CPU tensors of ``Backbone.pre_logits`` computed under ``torch.inference_mode()``. With ``cache_dir`` the result is
stored in ``<cache_dir>/<dataset>-<transform>-k<K>[-s<seed>]-<key>.pt``, keyed by the checkpoint hash, the image set
(name, size and a sha256 of its pixels), the transform, K and, for augmented views, the seed: a second call reads the
file, a changed checkpoint or image set never does. Files are written atomically (temp file + ``os.replace``).

Augmented views are reproducible and independent of ``batch_size`` and ``device``: images are augmented in fixed
blocks of ``AUG_BLOCK`` images, block b of view k with a CPU ``torch.Generator`` seeded from (seed, k, b).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.augment import ViewAugment, random_crop_flip, to_float
from ..files import atomic_torch_save
from ..pretraining.models import resolve_device

# name → augmentation (float N×C×H×W in [0, 1], generator) → same shape; None = no augmentation.
TRANSFORMS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None] = {
    "eval": None,
    "weak": ViewAugment(),  # NMTune's weak view, reference settings; a task passes its own ViewAugment instead
    "crop_flip": random_crop_flip,  # the pre-training augmentation: padded random crop + horizontal flip
}
AUG_BLOCK = 256  # images per augmentation draw; part of the cache key because it fixes which crop each image gets
CACHE_VERSION = 3  # bump when the cached content changes meaning (3: files carry tensor_sha256 of the features)


# --- hashes and cache keys -------------------------------------------------------------------------------------

def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 over the shape, dtype and raw bytes of a tensor: the identity of an image set in cache keys (a subset
    under the same name differs) and the content hash of a cached feature file."""
    digest = hashlib.sha256(f"{tuple(t.shape)}|{t.dtype}|".encode())
    digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def state_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's class and state dict (names, dtypes, shapes, bytes): a checkpoint hash stand-in."""
    digest = hashlib.sha256(type(module).__name__.encode())
    for name, tensor in module.state_dict().items():
        digest.update(f"|{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def resolve_transform(transform: str | ViewAugment) -> tuple[str, Callable | None]:
    """(name, augmentation) of a transform given by name (``TRANSFORMS``) or as a ``ViewAugment`` value; the name
    spells a ``ViewAugment``'s settings, so views of other crop ranges or flips never share a cache file."""
    if isinstance(transform, ViewAugment):
        return transform.name, transform
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}; accepted: {', '.join(TRANSFORMS)} or a ViewAugment")
    augment = TRANSFORMS[transform]
    return (augment.name if isinstance(augment, ViewAugment) else transform), augment


def feature_cache_key(image_set, *, checkpoint_hash: str, transform: str | ViewAugment, views: int,
                      seed: int) -> dict[str, Any]:
    """What a cached feature file depends on; its sha256 names the file and it is checked again on reading."""
    name, augment = resolve_transform(transform)
    key = {"version": CACHE_VERSION, "checkpoint": checkpoint_hash, "dataset": image_set.name,
           "num_images": len(image_set), "images_sha256": tensor_sha256(image_set.images), "transform": name,
           "views": views}
    if augment is not None:  # eval features do not depend on the seed: share one file
        key.update(seed=seed, aug_block=AUG_BLOCK)
    return key


def feature_cache_file(cache_dir: str | os.PathLike, key: dict[str, Any]) -> Path:
    """``<cache_dir>/<dataset>-<transform>-k<K>[-s<seed>]-<first 16 hex of sha256(key)>.pt``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", key["dataset"])
    seed = f"-s{key['seed']}" if "seed" in key else ""
    return Path(cache_dir) / f"{slug}-{key['transform']}-k{key['views']}{seed}-{digest}.pt"


def _read_cache(path: Path, key: dict[str, Any]) -> torch.Tensor | None:
    """The cached features if the file is readable, belongs to ``key`` and its content hash matches; a damaged file
    (unreadable, or a flipped byte) is reported, then recomputed and overwritten, never trusted."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        warnings.warn(f"feature cache {path} is unreadable ({type(err).__name__}); recomputing it")
        return None
    if blob.get("key") != key:
        return None
    if tensor_sha256(blob["features"]) != blob.get("sha256"):
        warnings.warn(f"feature cache {path} does not match its content hash (damaged); recomputing it")
        return None
    return blob["features"]


# --- extraction ------------------------------------------------------------------------------------------------

def view_generator(seed: int, view: int, block: int) -> torch.Generator:
    """The CPU generator of augmentation block ``block`` of view ``view``: seeded from (seed, view, block)."""
    state = np.random.SeedSequence([seed, view, block]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def extract_features(backbone, image_set, *, transform: str | ViewAugment = "eval", views: int = 1, seed: int = 0,
                     device: str | torch.device = "cpu", batch_size: int = 1024,
                     cache_dir: str | os.PathLike | None = None, checkpoint_hash: str | None = None,
                     progress: bool = True) -> torch.Tensor:
    """Frozen features ``backbone.pre_logits`` of ``image_set`` (uint8 N×C×H×W images, fed as floats in [0, 1]).

    Returns float32 on the CPU: N×D for ``transform="eval"`` (``views`` must be 1), N×K×D with K = ``views`` for an
    augmenting transform (``"weak"`` or a ``ViewAugment``: random-resized crop [+ flip]; ``"crop_flip"``: padded
    crop + flip), view k of
    image n drawn from ``view_generator(seed, k, n // AUG_BLOCK)``. Runs under ``torch.inference_mode()`` with the
    backbone moved to ``device`` ("auto" resolves) in eval mode (its train/eval mode is restored afterwards); the
    result is an ordinary tensor, usable as the input of a trained head.

    ``cache_dir``: read the cached result if present, else compute and write it. ``checkpoint_hash`` names the
    weights (e.g. ``pretrain.json``'s ``checkpoint_sha256``); None hashes the backbone's state dict instead.
    """
    name, augment = resolve_transform(transform)
    if views < 1 or (augment is None and views != 1):
        raise ValueError(f"views={views}: expected 1 for transform 'eval' (no augmentation) and >= 1 otherwise")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(image_set) == 0:
        raise ValueError(f"image set {image_set.name} is empty")
    path = key = None
    if cache_dir is not None:
        key = feature_cache_key(image_set, checkpoint_hash=checkpoint_hash or state_sha256(backbone),
                                transform=transform, views=views, seed=seed)
        path = feature_cache_file(cache_dir, key)
        cached = _read_cache(path, key)
        if cached is not None:
            return cached

    device = resolve_device(str(device))
    was_training = backbone.training
    backbone.eval().to(device)
    try:
        features = _extract(backbone, image_set, augment, views, seed, device, batch_size, progress,
                            desc=f"features {image_set.name} [{name}×{views}]")
    finally:
        backbone.train(was_training)
    features = features[:, 0].contiguous() if augment is None else features
    if path is not None:
        atomic_torch_save(path, {"key": key, "features": features, "sha256": tensor_sha256(features)})
    return features


def _extract(backbone, image_set, augment, views: int, seed: int, device: torch.device, batch_size: int,
             progress: bool, desc: str) -> torch.Tensor:
    """N×K×D float32 features; images go to ``device`` one group of whole augmentation blocks at a time."""
    n = len(image_set)
    # a group holds whole AUG_BLOCKs so that each block is augmented exactly once, whatever the batch size
    group = max(AUG_BLOCK, batch_size // AUG_BLOCK * AUG_BLOCK)
    out: torch.Tensor | None = None  # allocated outside inference mode: the caller may train on it
    bar = tqdm(total=n * views, desc=desc, unit="img", disable=not progress, leave=False)
    for g0 in range(0, n, group):
        with torch.inference_mode():
            images = to_float(image_set.images[g0:g0 + group].to(device))
        for k in range(views):
            with torch.inference_mode():
                x = images if augment is None else torch.cat([
                    augment(images[b0:b0 + AUG_BLOCK], view_generator(seed, k, (g0 + b0) // AUG_BLOCK))
                    for b0 in range(0, len(images), AUG_BLOCK)])
                for s0 in range(0, len(x), batch_size):
                    f = backbone.pre_logits(x[s0:s0 + batch_size]).float().cpu()
                    if out is None:
                        with torch.inference_mode(False):
                            out = torch.empty(n, views, f.shape[1], dtype=torch.float32)
                    out[g0 + s0:g0 + s0 + len(f), k] = f
                    bar.update(len(f))
    bar.close()
    return out
