"""Label-noise injection for pre-training (docs/paper.md §2): exact-count, seeded flips and caption swaps, with manifests.

Convention (as in cleanlab): the realised ``transition`` matrix is C×C *counts* with rows = the clean (true) class and
columns = the noisy (given) class, so ``transition[i, j]`` training samples of true class i carry label j; row i sums
to the count of class i, and the off-diagonal mass is the number of flipped samples.

Kinds of noise, each flipping exactly ``round(ratio · N)`` samples, chosen with a seeded generator:

- ``symmetric`` (the paper's): each flipped sample gets a *different* class, uniformly among the other C − 1.
- ``asymmetric``: each flipped sample of class i gets ``class_map[i]`` (confusable class pairs). Default map for
  Fashion-MNIST: T-shirt↔Shirt, Pullover↔Coat, Sneaker↔Ankle boot, Trouser↔Dress, Sandal→Sneaker (Bag has no
  confusable partner and is never flipped); for any other dataset the cyclic map i → i + 1 mod C.
- ``caption_swap`` (the paper's image–text noise, for ``objective=clip``): exactly ``round(ratio · N)`` samples get
  another sample's caption (a seeded derangement of a random subset, ``caption_derangement``); ``caption_source``
  says whose, ``flipped`` marks them, ``labels`` is the class each caption describes (the transition counts clean
  class → caption class).
- ``instance`` (in the style of Xia et al., 2020): which samples flip, and to which class, depends on the image through
  a fixed seeded random projection: flipped samples are drawn without replacement with weights exp(x·v) (v a random
  unit direction over standardised pixels), and the new class is drawn from softmax(x·W) over the other classes.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..config import CAPTION_ATTRIBUTES, NOISE_KINDS
from ..files import atomic_write, atomic_write_json
from ..run import CAPTIONS, MANIFEST, NOISY_LABELS, Run
from .captions import captions_for

FASHION_MNIST_MAP = {0: 6, 6: 0, 2: 4, 4: 2, 7: 9, 9: 7, 1: 3, 3: 1, 5: 7}
ASYMMETRIC_MAPS = {"fashion_mnist": FASHION_MNIST_MAP}


@dataclass(frozen=True)
class NoisyLabels:
    """The result of noise injection.

    ``labels`` noisy int64 N; ``clean`` the original int64 N; ``flipped`` bool N (labels != clean); ``ratio`` the
    realised fraction flipped; ``transition`` C×C int64 counts, rows = clean class, columns = noisy class.
    """

    labels: torch.Tensor
    clean: torch.Tensor
    flipped: torch.Tensor
    ratio: float
    transition: np.ndarray
    kind: str
    requested_ratio: float
    seed: int
    class_map: dict[int, int] | None = None
    caption_source: torch.Tensor | None = None  # caption_swap: sample i carries sample caption_source[i]'s caption

    @property
    def num_classes(self) -> int:
        return len(self.transition)

    def manifest(self) -> dict[str, Any]:
        """Everything needed to identify these labels: kind, ratios, seed, N, C, label hashes, transition counts."""
        return {
            "kind": self.kind,
            "requested_ratio": self.requested_ratio,
            "realised_ratio": self.ratio,
            "num_flipped": int(self.flipped.sum()),
            "seed": self.seed,
            "num_samples": len(self.labels),
            "num_classes": self.num_classes,
            "clean_labels_sha256": labels_sha256(self.clean),
            "noisy_labels_sha256": labels_sha256(self.labels),
            "transition_orientation": "rows = clean class, columns = noisy class, entries = counts",
            "transition": self.transition.tolist(),
            "class_map": {str(k): v for k, v in self.class_map.items()} if self.class_map else None,
            **({"caption_source_sha256": labels_sha256(self.caption_source)} if self.caption_source is not None
               else {}),
        }

    @property
    def manifest_hash(self) -> str:
        """sha256 of the canonical JSON of ``manifest()``."""
        return manifest_sha256(self.manifest())


def labels_sha256(labels: torch.Tensor | np.ndarray) -> str:
    """sha256 of the labels as little-endian int64 bytes."""
    array = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    return hashlib.sha256(np.ascontiguousarray(array, dtype="<i8").tobytes()).hexdigest()


def manifest_sha256(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def transition_counts(clean: torch.Tensor, noisy: torch.Tensor, num_classes: int) -> np.ndarray:
    """C×C counts, rows = clean class, columns = noisy class."""
    flat = (clean * num_classes + noisy).numpy()
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def inject_label_noise(labels: torch.Tensor | np.ndarray | Sequence[int], ratio: float, *, kind: str = "symmetric",
                       num_classes: int | None = None, seed: int = 0, images: torch.Tensor | None = None,
                       class_map: dict[int, int] | None = None) -> NoisyLabels:
    """Flip exactly ``round(ratio · N)`` of ``labels`` (int N in [0, C)) with noise ``kind``; seeded, pure.

    ``images`` (N×…) is needed for ``kind="instance"``; ``class_map`` overrides the asymmetric map.
    Raises ``ValueError`` for a ratio outside [0, 1), a symmetric ratio ≥ (C − 1)/C, an unknown kind, non-integer
    labels or labels outside [0, C).
    """
    clean = _check_labels(labels)
    num_classes, ratio = _check_noise(clean, ratio, kind, num_classes)
    gen = torch.Generator().manual_seed(int(seed))
    n_flip = int(round(ratio * len(clean)))
    used_map = None
    if kind == "symmetric":
        noisy = _flip_symmetric(clean, n_flip, num_classes, gen)
    elif kind == "asymmetric":
        used_map = dict(class_map) if class_map is not None else {i: (i + 1) % num_classes for i in range(num_classes)}
        noisy = _flip_asymmetric(clean, n_flip, used_map, num_classes, gen, ratio=ratio)
    elif kind == "caption_swap":
        source = caption_derangement(len(clean), n_flip, gen)
        swapped = source != torch.arange(len(clean))
        noisy = clean[source]  # the class each caption describes
        return NoisyLabels(labels=noisy, clean=clean, flipped=swapped, ratio=int(swapped.sum()) / len(clean),
                           transition=transition_counts(clean, noisy, num_classes), kind=kind,
                           requested_ratio=ratio, seed=int(seed), caption_source=source)
    else:
        noisy = _flip_instance(clean, n_flip, images, num_classes, gen)
    flipped = noisy != clean
    return NoisyLabels(labels=noisy, clean=clean, flipped=flipped, ratio=int(flipped.sum()) / len(clean),
                       transition=transition_counts(clean, noisy, num_classes), kind=kind, requested_ratio=ratio,
                       seed=int(seed), class_map=used_map)


def caption_derangement(n: int, m: int, gen: torch.Generator) -> torch.Tensor:
    """Caption sources (int64 N, i → the sample whose caption i gets) that derange a random subset of ``m`` samples:
    the subset is permuted by Sattolo's algorithm (one m-cycle, no fixed points), so exactly ``m`` samples carry
    another sample's caption and the rest their own."""
    if m == 1:
        raise ValueError(f"swapping 1 of {n} captions cannot be a derangement; use 0 or ≥ 2 (a ratio ≥ 2/{n})")
    subset = torch.randperm(n, generator=gen)[:m].tolist()
    order = list(range(m))
    for i in range(m - 1, 0, -1):  # Sattolo: j < i, so the permutation is one m-cycle
        j = int(torch.randint(0, i, (1,), generator=gen))
        order[i], order[j] = order[j], order[i]
    source = torch.arange(n)
    source[subset] = torch.tensor([subset[k] for k in order], dtype=torch.int64)
    return source


def _check_noise(clean: torch.Tensor, ratio: float, kind: str, num_classes: int | None) -> tuple[int, float]:
    """(C, ratio as float) after checking the kind, C (default: max label + 1), the label range and the ratio."""
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; accepted kinds: {', '.join(NOISE_KINDS)}")
    num_classes = int(clean.max()) + 1 if num_classes is None else int(num_classes)
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes}: label noise needs at least 2 classes")
    if int(clean.min()) < 0 or int(clean.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}); got values in [{int(clean.min())}, "
                         f"{int(clean.max())}]")
    if not (isinstance(ratio, (int, float)) and 0.0 <= float(ratio) < 1.0):
        raise ValueError(f"noise ratio {ratio!r} is outside the accepted range [0, 1)")
    ratio = float(ratio)
    if kind == "symmetric" and ratio >= (num_classes - 1) / num_classes:
        raise ValueError(f"symmetric noise ratio {ratio} ≥ (C−1)/C = {(num_classes - 1) / num_classes:.4f} for "
                         f"C={num_classes}: the labels would carry no signal; accepted range [0, "
                         f"{(num_classes - 1) / num_classes:.4f})")
    return num_classes, ratio


def _flip_symmetric(clean: torch.Tensor, n_flip: int, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """``n_flip`` uniformly chosen samples, each moved to a uniformly chosen *other* class."""
    noisy = clean.clone()
    index = torch.randperm(len(clean), generator=gen)[:n_flip]
    shift = torch.randint(1, num_classes, (n_flip,), generator=gen)  # uniform over the C−1 other classes
    noisy[index] = (clean[index] + shift) % num_classes
    return noisy


def _flip_asymmetric(clean: torch.Tensor, n_flip: int, class_map: dict[int, int], num_classes: int,
                     gen: torch.Generator, *, ratio: float) -> torch.Tensor:
    """``n_flip`` samples chosen uniformly among those of mapped classes, each moved to ``class_map[its class]``;
    ``ratio`` (the requested one) only names the problem when too few samples can flip."""
    _check_class_map(class_map, num_classes)
    target = torch.tensor([class_map.get(c, c) for c in range(num_classes)])
    pool = torch.nonzero(target[clean] != clean).squeeze(1)
    if n_flip > len(pool):
        raise ValueError(f"asymmetric noise ratio {ratio} needs {n_flip} flips but only {len(pool)} samples "
                         f"belong to mapped classes; accepted range [0, {len(pool) / len(clean):.4f}]")
    noisy = clean.clone()
    index = pool[torch.randperm(len(pool), generator=gen)[:n_flip]]
    noisy[index] = target[clean[index]]
    return noisy


def _flip_instance(clean: torch.Tensor, n_flip: int, images: torch.Tensor | None, num_classes: int,
                   gen: torch.Generator) -> torch.Tensor:
    """Instance-dependent flips: samples drawn with weights exp(x·v), new classes from softmax(x·W) over the others
    (x the standardised pixels; v a random unit direction, W a random projection, both from ``gen``)."""
    if images is None or len(images) != len(clean):
        raise ValueError("instance-dependent noise needs images=… with one image per label "
                         f"(got {None if images is None else len(images)} for {len(clean)} labels)")
    x = images.reshape(len(images), -1).float()
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    v = torch.randn(x.shape[1], generator=gen)
    score = x @ (v / v.norm())
    weights = torch.exp((score - score.max()).double())
    index = torch.multinomial(weights, n_flip, replacement=False, generator=gen) if n_flip else \
        torch.zeros(0, dtype=torch.int64)
    w = torch.randn(x.shape[1], num_classes, generator=gen) / x.shape[1] ** 0.5
    logits = x[index] @ w
    logits[torch.arange(n_flip), clean[index]] = float("-inf")  # never the true class
    noisy = clean.clone()
    noisy[index] = torch.multinomial(torch.softmax(logits, 1), 1, generator=gen).squeeze(1)
    return noisy


def swap_captions(captions: Sequence[Any], ratio: float, seed: int = 0) -> tuple[list[Any], np.ndarray]:
    """Image–text noise (docs/paper.md §2) on a list: derange a random subset of ``round(ratio · N)`` captions
    (``caption_derangement``, seeded as ``inject_label_noise(..., kind="caption_swap")``). Returns the new caption
    list and a bool mask of the samples whose caption is now another sample's."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"caption swap ratio {ratio!r} is outside the accepted range [0, 1)")
    n = len(captions)
    source = caption_derangement(n, int(round(ratio * n)), torch.Generator().manual_seed(int(seed)))
    return [captions[j] for j in source.tolist()], (source != torch.arange(n)).numpy()


# --- manifests on disk -------------------------------------------------------------------------------------------

def write_manifest(noisy: NoisyLabels, run_dir: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write ``noisy_labels.npy`` then ``noise_manifest.json`` (last, atomically) into ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / NOISY_LABELS, lambda fh: np.save(fh, noisy.labels.numpy()))
    manifest = {**noisy.manifest(), **(extra or {}), "manifest_sha256": noisy.manifest_hash}
    atomic_write_json(run_dir / MANIFEST, manifest)
    return run_dir / MANIFEST


def read_manifest(run_dir: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(run_dir) / MANIFEST).read_text())


def noisy_labels_for_run(run: Run, train_set) -> NoisyLabels:
    """The noisy labels of ``run`` (its noise kind, ratio and seed) for ``train_set``: loaded if the run's manifest
    exists and agrees, else injected and written to ``run.dir`` with the manifest.

    A manifest of other noise (other clean labels, kind, ratio or seed) raises rather than being overwritten. A
    damaged ``noise_manifest.json`` or ``noisy_labels.npy`` (unreadable, or a label file whose hash is not the
    manifest's) is rewritten with a warning naming it: the noise is a function of (clean labels, kind, ratio, seed),
    so the rewritten files are the ones that were damaged, and nothing else of the run is lost. So is a
    ``captions.json`` (``caption_swap``) that is damaged, missing or names other attributes than the config's
    ``caption_attributes``.
    """
    config, kind = run.config, run.config.noise_kind
    fresh = inject_label_noise(train_set.labels, run.noise_ratio, kind=kind, num_classes=train_set.num_classes,
                               seed=run.seed, images=train_set.images if kind == "instance" else None,
                               class_map=ASYMMETRIC_MAPS.get(config.dataset) if kind == "asymmetric" else None)
    if run.manifest.exists():
        stored = _readable(run.manifest, lambda: read_manifest(run.dir))
        if stored is not None and stored.get("manifest_sha256") != fresh.manifest_hash:
            raise ValueError(f"{run.manifest} (manifest {str(stored.get('manifest_sha256'))[:12]}) is not the noise this "
                             f"run asks for (manifest {fresh.manifest_hash[:12]}: kind={kind}, ratio={run.noise_ratio}, "
                             f"seed={run.seed}, clean labels of {train_set.name}); use another run_root, or remove "
                             f"{run.dir} to redo the run with this noise")
        on_disk = _readable(run.noisy_labels, lambda: np.load(run.noisy_labels)) if run.noisy_labels.exists() else None
        intact = on_disk is not None and labels_sha256(on_disk) == fresh.manifest()["noisy_labels_sha256"]
        captions_current = kind != "caption_swap" or _captions_name(run) == tuple(config.caption_attributes)
        if stored is not None and intact and captions_current:
            return fresh
        if stored is None or not intact:
            why = f"{run.manifest if stored is None else run.noisy_labels} is damaged or missing"
        else:
            why = (f"{run.dir / CAPTIONS} is damaged, missing or names other attributes than caption_attributes="
                   f"{list(config.caption_attributes)}")
        warnings.warn(f"{why}; rewritten from the run's seed (manifest {fresh.manifest_hash[:12]})")
    extra = {"dataset": train_set.name}
    if getattr(train_set, "file_list_sha256", ""):  # a folder dataset: which files the labels belong to
        extra["file_list_sha256"] = train_set.file_list_sha256
    if kind == "caption_swap":  # the captions the derangement moves, each a function of (its image, the seed)
        extra["captions_sha256"] = write_captions(run, train_set)
    write_manifest(fresh, run.dir, extra=extra)
    return fresh


def write_captions(run: Run, train_set) -> str:
    """``captions.json`` of the run (every training image's own caption, naming ``config.caption_attributes``,
    ``nmtune_lib.data.captions``); returns the
    sha256 of its caption list."""
    attributes = list(run.config.caption_attributes)
    captions = captions_for(train_set.images, train_set.labels, train_set.classes, run.seed, attributes)
    digest = hashlib.sha256(json.dumps(captions).encode()).hexdigest()
    run.dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.dir / CAPTIONS, dict(seed=int(run.seed), attributes=attributes, captions_sha256=digest,
                                               captions=captions))
    return digest


def _captions_name(run: Run) -> tuple[str, ...] | None:
    """The attributes the run's ``captions.json`` names (a file from before ``caption_attributes`` names all three);
    None when it is missing or unreadable."""
    path = run.dir / CAPTIONS
    stored = _readable(path, lambda: json.loads(path.read_text())) if path.exists() else None
    return None if stored is None else tuple(stored.get("attributes", CAPTION_ATTRIBUTES))


def _readable(path: Path, read: Callable[[], Any]) -> Any:
    """``read()``, or None when the file at ``path`` is truncated or garbled."""
    try:
        return read()
    except (ValueError, OSError, EOFError):  # JSONDecodeError is a ValueError; np.load raises ValueError/OSError
        return None


def _check_labels(labels) -> torch.Tensor:
    if isinstance(labels, torch.Tensor):
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
            raise ValueError(f"labels must be an integer array; got dtype {labels.dtype}")
        out = labels.to(torch.int64).cpu()
    else:
        array = np.asarray(labels)
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"labels must be an integer array; got dtype {array.dtype}")
        out = torch.from_numpy(array.astype(np.int64))
    if out.ndim != 1 or len(out) == 0:
        raise ValueError(f"labels must be a non-empty 1-D array; got shape {tuple(out.shape)}")
    return out


def _check_class_map(class_map: dict[int, int], num_classes: int) -> None:
    bad = {k: v for k, v in class_map.items() if not (0 <= k < num_classes and 0 <= v < num_classes)}
    if bad:
        raise ValueError(f"class_map entries {bad} fall outside [0, {num_classes})")
