"""Captions for real images, offline: the text side of image–text pre-training (docs/paper.md §2–3, issue: CLIP).

``captions_for(images, labels, classes, seed)`` writes one caption per image from three parts:

- **the class**, through one of its synonyms (``SYNONYMS``; a class without an entry is named as it is);
- **attributes measured on the image itself**, so that a caption describes its own image and not only its class:
  *brightness* (the mean intensity of the item's pixels: "dark" / "light", nothing in between), *size* (the share
  of the frame the item covers: "small" / "large") and *shape* (the aspect of its bounding box: "wide" / "tall").
  The item is the set of pixels brighter than ``ITEM_LEVEL``; an attribute is named only when its measurement lies
  outside the middle band (``BANDS``), and one or two of the named ones are mentioned;
- **a template** (``TEMPLATES``).

``attributes`` names the attributes a caption may mention (all three by default); ``()`` leaves them out, so a
caption is a template and a class synonym, drawn as with attributes. The study's control for what the attribute
words teach the image tower (README, "Task by task"). Every choice is drawn from a generator seeded by (seed,
index), so a caption is a function of (image, label, seed) alone: "a photo of a dark, wide pullover". ``Tokenizer``
maps captions to fixed-length id tensors over the fixed vocabulary of the templates, synonyms and attributes
(``vocabulary``); ``class_prompts`` gives the prompts of zero-shot classification (every template × synonym of a
class, no attributes).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
import torch

from ..run import CAPTIONS

TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a {}.", "a photo of the {}.",
             "a close-up photo of a {}.")
SYNONYMS = {
    "T-shirt/top": ("t-shirt", "top", "tee"), "Trouser": ("pair of trousers", "pair of pants"),
    "Pullover": ("pullover", "sweater", "jumper"), "Dress": ("dress", "frock"), "Coat": ("coat", "jacket"),
    "Sandal": ("sandal", "open shoe"), "Shirt": ("shirt", "button shirt"), "Sneaker": ("sneaker", "trainer"),
    "Bag": ("bag", "handbag"), "Ankle boot": ("ankle boot", "boot"),
    **{str(d): (f"digit {w}", f"handwritten {w}") for d, w in enumerate(
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"))},
}
ATTRIBUTES = {"brightness": ("dark", "light"), "size": ("small", "large"), "shape": ("tall", "wide")}
ITEM_LEVEL = 0.1  # a pixel above this intensity (in [0, 1]) belongs to the item
# Middle bands (nothing named): about the quartiles of Fashion-MNIST's test images (brightness 0.51 / 0.75, size
# 0.33 / 0.58, shape 0.64 / 1.35), so each attribute is named for about half of the images. [ours]
BANDS = {"brightness": (0.5, 0.75), "size": (0.33, 0.58), "shape": (0.65, 1.35)}
SPECIALS = ("<pad>", "<sos>", "<eos>", "<unk>")


def measure(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image (uint8 N×C×H×W): ``brightness`` (mean item intensity), ``size`` (item share of the frame) and
    ``shape`` (bounding-box width / height), each float N."""
    x = images.float().mean(1) / 255.0  # N×H×W grey
    item = x > ITEM_LEVEL
    count = item.flatten(1).sum(1)
    brightness = (x * item).flatten(1).sum(1) / count.clamp(min=1)
    size = count / item[0].numel()
    rows, cols = item.any(2), item.any(1)  # N×H, N×W
    height = _extent(rows).clamp(min=1)
    width = _extent(cols).clamp(min=1)
    return dict(brightness=brightness, size=size, shape=width / height)


def _extent(mask: torch.Tensor) -> torch.Tensor:
    """Length of the span from the first to the last True along dim 1 (0 when none)."""
    n = mask.shape[1]
    idx = torch.arange(n).expand_as(mask)
    first = torch.where(mask, idx, n).min(1).values
    last = torch.where(mask, idx, -1).max(1).values
    return (last - first + 1).clamp(min=0).float()


def attribute_words(values: dict[str, torch.Tensor], names=tuple(ATTRIBUTES)) -> list[list[str]]:
    """For each image, the words of the attributes ``names`` its measurements name (outside the middle band), in
    ATTRIBUTES order."""
    n = len(next(iter(values.values())))
    words: list[list[str]] = [[] for _ in range(n)]
    for name, (low_word, high_word) in ATTRIBUTES.items():
        if name not in names:
            continue
        low, high = BANDS[name]
        for i, v in enumerate(values[name].tolist()):
            if v < low:
                words[i].append(low_word)
            elif v > high:
                words[i].append(high_word)
    return words


def caption_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(index), 2]).generate_state(1, np.uint64)[0])


def captions_for(images: torch.Tensor, labels: torch.Tensor, classes, seed: int,
                 attributes=tuple(ATTRIBUTES)) -> list[str]:
    """One caption per image: a template, a synonym of its class and one or two of its measured ``attributes``
    (names of ATTRIBUTES; none: the template and the synonym alone)."""
    unknown = [a for a in attributes if a not in ATTRIBUTES]
    if unknown:
        raise ValueError(f"captions_for: attributes {unknown} unknown; accepted: {', '.join(ATTRIBUTES)}")
    words = attribute_words(measure(images), tuple(attributes))
    out = []
    for i, (label, named) in enumerate(zip(labels.tolist(), words)):
        rng = np.random.default_rng(caption_seed(seed, i))
        template = TEMPLATES[rng.integers(len(TEMPLATES))]
        names = SYNONYMS.get(classes[label], (classes[label].lower(),))
        noun = names[rng.integers(len(names))]
        if named:
            keep = sorted(rng.choice(len(named), size=min(len(named), int(rng.integers(1, 3))), replace=False))
            noun = ", ".join(named[k] for k in keep) + " " + noun
        out.append(template.format(noun))
    return out


def class_prompts(classes) -> list[list[str]]:
    """Zero-shot prompts: for each class, every template × synonym (no attributes)."""
    return [[t.format(s) for t in TEMPLATES for s in SYNONYMS.get(c, (c.lower(),))] for c in classes]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9\-]+|[.,/]", text.lower())


def vocabulary(classes) -> tuple[str, ...]:
    """The fixed vocabulary: specials, then every word of the templates, the classes' synonyms and the attributes."""
    found = {w for t in TEMPLATES for w in words(t.format(""))}
    found |= {w for c in classes for s in SYNONYMS.get(c, (c.lower(),)) for w in words(s)}
    found |= {w for pair in ATTRIBUTES.values() for w in pair} | {","}
    return SPECIALS + tuple(sorted(found))


@dataclass(frozen=True)
class Tokenizer:
    """Word-level tokenizer over a fixed vocabulary: ``<sos>`` words ``<eos>``, padded with ``<pad>`` (id 0) to
    ``length``; unknown words map to ``<unk>``, and a caption too long is cut (its ``<eos>`` kept)."""

    vocab: tuple[str, ...]
    length: int = 16

    @classmethod
    def for_classes(cls, classes, length: int = 16) -> "Tokenizer":
        return cls(vocabulary(classes), length)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        index = {w: i for i, w in enumerate(self.vocab)}
        out = torch.zeros(len(texts), self.length, dtype=torch.int64)
        for row, text in enumerate(texts):
            ids = [index.get(w, index["<unk>"]) for w in words(text)][:self.length - 2]
            ids = [index["<sos>"], *ids, index["<eos>"]]
            out[row, :len(ids)] = torch.tensor(ids)
        return out


def swapped_examples(captions: list[str], noisy, count: int = 8):
    """A table of ``count`` swapped samples: each image's own caption and the caption it is trained with."""
    import pandas as pd

    index = torch.nonzero(noisy.flipped).squeeze(1)[:count].tolist()
    return pd.DataFrame({"sample": index, "own caption": [captions[i] for i in index],
                         "caption it is trained with": [captions[int(noisy.caption_source[i])] for i in index]})


def stored_captions(run) -> list[str]:
    """Every training image's own caption, as notebook 01 stored them in the run directory (``run.CAPTIONS``)."""
    return json.loads((run.dir / CAPTIONS).read_text())["captions"]
