"""Downstream task suites: in-domain (ID) and out-of-domain (OOD) transfer tasks for a frozen backbone (docs/paper.md, "Downstream protocol").

A ``Task`` names its training set and its test set(s), keyed by test domain. ID tasks test on the training
distribution (one test domain, ``"in_domain"``); OOD tasks test on several shifted distributions, one of which is the
training domain (``Task.train_domain``), so every OOD mean can be reported with and without it.

The offline default suite, all real data:

| task | kind | head trained on | tested on | view flips |
|---|---|---|---|---|
| ``fashion_mnist`` | ID | half of Fashion-MNIST's *test* split (the pre-training split is never reused) | the other half | yes |
| ``mnist5k`` | ID | MNIST-5k train (4,000) | MNIST-5k test (1,000) | no |
| ``uci_digits`` | ID | UCI digits train (1,257) | UCI digits test (540) | no |
| ``fmnist_domains_real`` | OOD | the head-training half of Fashion-MNIST test, ``real`` | the other half in ``real``, ``sketch``, ``painting``, ``clipart`` | yes |
| ``fmnist_domains_sketch`` | OOD | the same images rendered as ``sketch`` | the four domains | yes |
| ``digits_shift`` | OOD | MNIST-5k train | MNIST-5k test (``mnist5k``) and all 1,797 UCI digits (``uci_digits``) | no |

The ``domainnet`` suite reads DomainNet from ``<data_root>/domainnet/<domain>/<class>/*`` (``image_folders``; its split
files when present, else a seeded 80/20 split per class), decoded into memory at the backbone's resolution: two OOD
tasks, ``domainnet_real`` and ``domainnet_sketch`` (the head trained on that domain's train split), each tested on the
test splits of ``real``, ``sketch``, ``painting`` and ``clipart`` (docs/paper.md §4). Every missing domain folder is
named before anything is decoded.

Digit tasks do not flip their views (a mirrored digit is another glyph, as in pre-training); the reference code
flips every timm-model task, SVHN included: a deviation written down in docs/paper.md.

The four Fashion-MNIST "domains" are deterministic renderings in the spirit of DomainNet: ``real`` (as is), ``sketch``
(Sobel edge magnitude), ``painting`` (Gaussian-smoothed, quantised to 4 grey levels), ``clipart`` (posterised to 3
flat levels with a bright outline).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..config import ABLATION_TASKS, TASK_SUITES  # noqa: F401 (ABLATION_TASKS: the suites' names live there)
from ..data.datasets import ImageSet, load_dataset, stratified_subset
from ..data.image_folders import DOMAINNET_OOD_DOMAINS, domainnet_folder
from ..data.image_sets import to_image_set
from ..data.paper_data import PAPER_ID_DATASETS, load_paper_dataset

DOMAINS = ("real", "sketch", "painting", "clipart")
IN_DOMAIN = "in_domain"
SUITES = tuple(TASK_SUITES)
DEFAULT_TASKS = TASK_SUITES["default"]
TASK_SPLIT_SEED = 0  # the head-train / head-test halves of Fashion-MNIST test are fixed for every run


@dataclass(frozen=True)
class Task:
    """A downstream task: a training set, test sets keyed by domain, and which of them is the training domain."""

    name: str
    kind: str  # "id" or "ood"
    train: ImageSet
    tests: dict[str, ImageSet] = field(default_factory=dict)
    train_domain: str = IN_DOMAIN
    flip: bool = True  # horizontal flips in the views; False for digits (a mirrored digit is another glyph)

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def chance(self) -> float:
        """Accuracy of always guessing the most frequent training class (the chance level shown in plots)."""
        return float(self.train.labels.bincount().max()) / len(self.train)


# --- domain renderings ---------------------------------------------------------------------------------------------

def _as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _sobel(x: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude of N×1×H×W float images (3×3 Sobel, zero padding)."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([kx, kx.T]).unsqueeze(1)
    g = F.conv2d(x, kernels, padding=1)
    return g.pow(2).sum(1, keepdim=True).sqrt()


def _gaussian_blur(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    r = int(3 * sigma)
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))


def render_domain(images: torch.Tensor, domain: str) -> torch.Tensor:
    """Render uint8 gray images N×1×H×W in one of ``DOMAINS``; deterministic, returns uint8 N×1×H×W."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; accepted domains: {', '.join(DOMAINS)}")
    if images.shape[1] != 1:
        raise ValueError(f"domain renderings take single-channel images; got {images.shape[1]} channels")
    x = _as_float(images)
    if domain == "real":
        return images.clone()
    if domain == "sketch":
        edges = _sobel(x)
        return _to_uint8(edges / edges.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6))
    if domain == "painting":
        smooth = _gaussian_blur(x, sigma=1.0)
        return _to_uint8(torch.round(smooth * 3) / 3)
    flat = torch.bucketize(x, torch.tensor([0.08, 0.45])).float() / 2 * 0.6  # 3 flat levels: 0, .3, .6
    outline = (_sobel((x > 0.08).float()) > 0.5).float()
    return _to_uint8(torch.maximum(flat, outline))


def render_set(image_set: ImageSet, domain: str) -> ImageSet:
    base = image_set.name.split("@")[0]
    return image_set.with_images(render_domain(image_set.images, domain), f"{base}@{domain}")


# --- suites --------------------------------------------------------------------------------------------------------

def _cap(image_set: ImageSet, limit: int, seed: int = TASK_SPLIT_SEED) -> ImageSet:
    """At most ``limit`` samples (stratified, seeded); 0 = all."""
    if not limit or len(image_set) <= limit:
        return image_set
    return image_set.subset(stratified_subset(image_set.labels, limit, seed))


def fashion_mnist_halves(root=None) -> tuple[ImageSet, ImageSet]:
    """Fashion-MNIST *test* split cut into fixed stratified halves: (head-train, head-test), 5,000 each."""
    test = load_dataset("fashion_mnist", "test", root)
    train_index = stratified_subset(test.labels, len(test) // 2, TASK_SPLIT_SEED)
    mask = torch.ones(len(test), dtype=torch.bool)
    mask[train_index] = False
    return (test.subset(train_index, "fashion_mnist/head_train"),
            test.subset(torch.nonzero(mask).squeeze(1), "fashion_mnist/head_test"))


def default_suite(*, task_subset: int = 0, data_root: str | None = None, include: tuple[str, ...] | None = None
                  ) -> list[Task]:
    """The offline default suite (see the module docstring); ``task_subset`` caps each training and test set."""
    head_train, head_test = fashion_mnist_halves(data_root)
    head_train, head_test = _cap(head_train, task_subset), _cap(head_test, task_subset)
    mnist_train, mnist_test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    uci_train, uci_test = load_dataset("uci_digits", "train"), load_dataset("uci_digits", "test")
    uci_all = ImageSet(torch.cat([uci_train.images, uci_test.images]), torch.cat([uci_train.labels, uci_test.labels]),
                       uci_train.classes, "uci_digits/all")
    domains = {d: render_set(head_test, d) for d in DOMAINS}
    c = task_subset
    tasks = [
        Task("fashion_mnist", "id", head_train, {IN_DOMAIN: head_test}),
        Task("mnist5k", "id", _cap(mnist_train, c), {IN_DOMAIN: _cap(mnist_test, c)}, flip=False),
        Task("uci_digits", "id", _cap(uci_train, c), {IN_DOMAIN: _cap(uci_test, c)}, flip=False),
        Task("fmnist_domains_real", "ood", render_set(head_train, "real"), domains, train_domain="real"),
        Task("fmnist_domains_sketch", "ood", render_set(head_train, "sketch"), domains, train_domain="sketch"),
        Task("digits_shift", "ood", _cap(mnist_train, c),
             {"mnist5k": _cap(mnist_test, c), "uci_digits": _cap(uci_all, c)}, train_domain="mnist5k", flip=False),
    ]
    if include is not None:
        unknown = sorted(set(include) - {t.name for t in tasks})
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; accepted: {', '.join(t.name for t in tasks)}")
        tasks = [t for t in tasks if t.name in include]
    return tasks


def missing_data(name: str, data_root: str | None, include: tuple[str, ...] = ()) -> list[str]:
    """What suite ``name`` (its tasks ``include``; () = all) lacks under ``data_root``: one line per missing dataset,
    naming the path looked for. Empty for the built-in ``default`` suite and when everything is there."""
    from pathlib import Path

    if name == "default":
        return []
    if not data_root:
        return [f"data_root is not set (task_suite {name!r} reads its datasets from <data_root>)"]
    root = Path(data_root).expanduser()
    wanted = set(include or suite_task_names(name))
    out = []
    if name == "paper":
        for dataset, spec in PAPER_ID_DATASETS.items():
            paths = dict.fromkeys(root / spec.required[split] for split in ("train", "test"))
            out += [f"{dataset}: {path}" for path in paths if dataset in wanted and not path.exists()]
    if wanted & {f"domainnet_{d}" for d in ("real", "sketch")}:
        out += [f"domainnet {d}: {root / 'domainnet' / d}" for d in DOMAINNET_OOD_DOMAINS
                if not (root / "domainnet" / d).is_dir()]
    return out


def suite_task_names(name: str) -> tuple[str, ...]:
    """The task names of suite ``name``, without loading anything (``config.TASK_SUITES``)."""
    return TASK_SUITES[name]


def domainnet_suite(*, data_root: str | None, img_size: int, task_subset: int = 0,
                    include: tuple[str, ...] = ()) -> list[Task]:
    """DomainNet from ``<data_root>/domainnet`` (see the module docstring); ``task_subset`` caps each set (a seeded,
    class-stratified subset)."""
    from pathlib import Path

    _check_present("domainnet", data_root, include)
    root = Path(data_root).expanduser() / "domainnet"

    def load(domain: str, split: str) -> ImageSet:
        return _decode(domainnet_folder(root, domain, split), img_size, task_subset, f"domainnet_{domain}/{split}")

    names = [d for d in ("real", "sketch") if not include or f"domainnet_{d}" in include]
    tests = {d: load(d, "test") for d in DOMAINNET_OOD_DOMAINS} if names else {}
    return [Task(f"domainnet_{d}", "ood", load(d, "train"), tests, train_domain=d) for d in names]


def paper_suite(*, data_root: str | None, img_size: int, task_subset: int = 0,
                include: tuple[str, ...] = ()) -> list[Task]:
    """The paper's suite (docs/paper.md §4): the 14 in-domain datasets of ``paper_data`` (one ID task each, the head
    trained on our "train" split and tested on "test") and the two DomainNet OOD tasks, all from ``data_root`` and
    decoded into memory at ``img_size`` (shorter side resized, centre crop: the evaluation transform). Views are
    flipped on every task, as in the reference code (SVHN included). Every missing dataset is named first."""
    _check_present("paper", data_root, include)
    tasks = []
    for name in PAPER_ID_DATASETS:
        if include and name not in include:
            continue
        train, test = (_decode(load_paper_dataset(name, split, data_root), img_size, task_subset, f"{name}/{split}")
                       for split in ("train", "test"))
        tasks.append(Task(name, "id", train, {IN_DOMAIN: test}))
    return tasks + domainnet_suite(data_root=data_root, img_size=img_size, task_subset=task_subset,
                                   include=include or suite_task_names("domainnet"))


def _check_present(name: str, data_root: str | None, include: tuple[str, ...]) -> None:
    missing = missing_data(name, data_root, include)
    if missing:
        raise FileNotFoundError(f"task_suite {name!r}: {len(missing)} dataset folder(s) missing (looked for):\n  "
                                + "\n  ".join(missing) + "\nLayouts: data.paper_data (the 14 ID datasets) and "
                                "<data_root>/domainnet/<domain>/<class>/*.jpg; or choose tasks with --set tasks=[...]")


def _decode(dataset, img_size: int, task_subset: int, name: str) -> ImageSet:
    return to_image_set(dataset, img_size=img_size, progress=False, max_samples=task_subset or None,
                        seed=TASK_SPLIT_SEED, name=name)


def task_suite(name: str = "default", *, img_size: int = 28, include: tuple[str, ...] = (), **kwargs) -> list[Task]:
    """A task suite by name: ``default`` (offline, built-in data), ``domainnet`` or ``paper`` (from ``data_root``,
    decoded at ``img_size``, the backbone's resolution). ``include`` keeps those tasks only (() = all)."""
    if name not in SUITES:
        raise ValueError(f"unknown task suite {name!r}; accepted: {', '.join(SUITES)}")
    unknown = sorted(set(include) - set(suite_task_names(name)))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown} for task_suite {name!r}; accepted: "
                         f"{', '.join(suite_task_names(name))}")
    if name == "domainnet":
        return domainnet_suite(img_size=img_size, include=include, **kwargs)
    if name == "paper":
        return paper_suite(img_size=img_size, include=include, **kwargs)
    return default_suite(include=include or None, **kwargs)


def suite_of(config) -> list[Task]:
    """The task suite a run's ``config`` names (its suite, subset, data root, image size and task list)."""
    return task_suite(config.task_suite, task_subset=config.task_subset, data_root=config.data_root or None,
                      img_size=config.img_size, include=config.tasks)


def tasks_frame(tasks: list[Task]):
    """A table of the tasks: kind, training set and its size, test domains with their sizes, chance level."""
    import pandas as pd  # pandas only for this table

    return pd.DataFrame([{"task": t.name, "kind": t.kind, "train": t.train.name, "train size": len(t.train),
                          "test domains": ", ".join(f"{d} ({len(s)})" for d, s in t.tests.items()),
                          "chance": t.chance} for t in tasks])
