"""Study configuration: one frozen, validated dataclass, the names it accepts, and how a run root is found.

Configuration enters once: a notebook's ``parameters`` cell (or the ``nmtune`` CLI) names a preset and a few
overrides, ``StudyConfig.from_preset`` validates them, and the resolved config travels as keyword arguments and is
written next to every result. Unknown or mistyped keys raise instead of being ignored.

Glossary used across the package: N samples, C classes, D feature dimension, K augmented views, B batch size.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, get_type_hints

from . import reference as ref
from .presets import PRESETS
from .reference import METHODS

# the attributes a caption may name (nmtune_lib.captions.ATTRIBUTES; kept here so that config imports no torch)
CAPTION_ATTRIBUTES = ("brightness", "size", "shape")
NOISE_KINDS = ("symmetric", "asymmetric", "instance", "caption_swap")  # caption_swap: objective=clip only
OBJECTIVES = ("supervised", "clip")
DEVICES = ("auto", "cpu", "cuda", "mps")
HEAD_MODES = ("cached", "online")
HEAD_METHODS = (*METHODS, "ft")  # the paper's heads, and full fine-tuning (ours: transfer.finetune)
CENTERINGS = ("column", "row", "none")
# The names a config may use, checked here before any data is read; each stage owns what stands behind its names
# (data.datasets loads DATASETS, transfer.tasks builds TASK_SUITES, data.paper_data describes PAPER_ID_NAMES;
# tests check that both sides agree).
DATASETS = ("fashion_mnist", "mnist5k", "uci_digits", "imagenet")
FOLDER_DATASETS = ("imagenet",)  # read from <data_root>/<name>/ (data.image_folders), resized to img_size
PAPER_ID_NAMES = ("cifar10", "cifar100", "food101", "flowers102", "oxford_pets", "stanford_cars", "fgvc_aircraft",
                  "dtd", "svhn", "caltech101", "eurosat", "pcam", "resisc45", "rendered_sst2")  # docs/paper.md §4
DOMAINNET_TASKS = ("domainnet_real", "domainnet_sketch")
TASK_SUITES = {"default": ("fashion_mnist", "mnist5k", "uci_digits", "fmnist_domains_real", "fmnist_domains_sketch",
                           "digits_shift"),
               "domainnet": DOMAINNET_TASKS, "paper": (*PAPER_ID_NAMES, *DOMAINNET_TASKS)}
ABLATION_TASKS = {"default": "fmnist_domains_real", "domainnet": "domainnet_real", "paper": "domainnet_real"}
PROTOCOLS = ("reference", "matched")  # docs/paper.md "Two protocols for claim 4"
ROBUSTNESS_FIELDS = ("head_epochs", "views", "head_mode")  # head settings a robustness variant may change


def ratio_label(ratio: float) -> str:
    """A noise ratio as a fraction with two decimals, or as many more as it needs (at most 6, which ``_check_values``
    asks of a grid): ``"0.05"``, ``"0.025"``. Names run folders and figure legends, one per ratio."""
    for decimals in range(2, 6):
        label = f"{ratio:.{decimals}f}"
        if abs(float(label) - ratio) < 1e-12:
            return label
    return f"{ratio:.6f}"


def ratio_percent(ratio: float) -> str:
    """A noise ratio in per cent with the decimals it needs: ``"5%"``, ``"2.5%"`` (for tables and titles)."""
    return f"{round(100 * ratio, 4):g}%"


@dataclass(frozen=True)
class StudyConfig:
    """Every knob of the study; a preset fills them, overrides change a few.

    Sections: grid (what is swept), pre-training, feature analysis, head tuning (docs/paper.md §4/§6), runtime.
    """

    preset: str = "default"
    # --- grid -----------------------------------------------------------------------------------------------
    dataset: str = "fashion_mnist"  # pre-training dataset (a name known to nmtune_lib.data.datasets)
    noise_ratios: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3)  # fractions of training labels flipped
    noise_kind: str = "symmetric"  # one of NOISE_KINDS
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # >= 5: a verdict must not hinge on one lucky t-interval
    # --- pre-training ---------------------------------------------------------------------------------------
    objective: str = "supervised"  # supervised (noisy labels, SGD) | clip (image–text, noisy captions, AdamW)
    model: str = "resnet_tiny"  # a timm model name (our small ResNets are registered with timm; see models.py)
    small_stem: bool = False  # 3x3 stride-1 stem without max-pool for 28-32 px images
    img_size: int = 28
    train_subset: int = 0  # 0 = the whole training split; >0 = a seeded stratified subset of that size
    epochs: int = 2  # default: ~30 s and ~90 % clean Fashion-MNIST accuracy on 2 CPU cores (pretrain.py docstring)
    batch_size: int = 256  # global batch (split among DDP ranks)
    lr: float = 0.6  # peak learning rate of the one-cycle schedule (SGD-Nesterov)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    clip_lr: float = 5e-4  # objective=clip: peak learning rate of AdamW (open_clip's default, the paper's CLIP lr)
    clip_weight_decay: float = 0.2  # objective=clip: AdamW weight decay (open_clip's default)
    caption_attributes: tuple[str, ...] = CAPTION_ATTRIBUTES  # objective=clip: what captions may name; () = class only
    compile: bool = False  # torch.compile on CUDA
    stream: bool = False  # folder datasets: read the images from disk every epoch (DataLoader), not decoded in memory
    loader_workers: int = 4  # DataLoader worker processes when streaming
    pretrained: str = ""  # a local weights file of `model` that replaces pre-training; may hold {noise_ratio}, {seed}
    # --- feature analysis -----------------------------------------------------------------------------------
    spectrum_split: str = "test"  # features of this split of the pre-training dataset feed the spectrum
    spectrum_samples: int = 0  # 0 = all samples of that split
    spectrum_top_k: int = 5
    feature_batch_size: int = 1024
    # --- head tuning (docs/paper.md: protocols, NMTune) ------------------------------------------------------
    methods: tuple[str, ...] = METHODS  # lp | mlp | nmtune, and ft (full fine-tuning, matched protocol only)
    protocols: tuple[str, ...] = PROTOCOLS  # "reference" (the reference code) and/or "matched" (a fair comparison)
    lr_grid: tuple[float, ...] = (1e-3, 3e-3, 1e-2)  # matched protocol: candidate learning rates of every head
    holdout_fraction: float = 0.1  # matched protocol: share of a head's training set held out to pick its lr
    head_epochs: int = ref.EPOCHS
    head_batch_size: int = ref.BATCH_SIZE
    lp_lr: float = ref.LP_LR
    mlp_lr: float = ref.MLP_LR
    head_weight_decay: float = ref.WEIGHT_DECAY
    w_mse: float = ref.W_MSE  # consistency (MSE) weight
    w_cov: float = ref.W_COV  # covariance weight
    w_svd: float = ref.W_SVD  # dominant-singular-value weight
    svd_top_k: int = ref.SVD_TOP_K
    svd_driver: str = ""  # CUDA only: cuSOLVER's driver of that SVD (reference.CUDA_SVD_DRIVERS); "" = PyTorch's
    views: int = 4  # K augmented views cached per training image ("cached" mode)
    ft_epochs: int = 5  # full fine-tuning ("ft" in methods): epochs of the heads' minibatches and views (ours)
    ft_backbone_lr_scale: float = 0.1  # full fine-tuning: the backbone's learning rate relative to its head's
    view_crop_scale: tuple[float, ...] = ref.VIEW_CROP_SCALE  # random-resized-crop area range of views
    view_crop_ratio: tuple[float, ...] = ref.VIEW_CROP_RATIO  # its aspect-ratio range (torchvision's default)
    view_interpolation: str = "bilinear"  # how the crop is resampled (reference.VIEW_INTERPOLATIONS)
    view_blur: float = 0.0  # σ (pixels) of a Gaussian blur on every view after resampling; 0 = none (a probe knob)
    head_mode: str = "cached"  # "cached" K-view features or "online" re-encoding through the backbone
    task_subset: int = 0  # 0 = every downstream training sample; >0 = at most this many per task (smoke)
    ablation: bool = True  # notebook 04 also runs each regulariser alone and left out, and the sensitivity
    ablation_task: str = ""  # the task of the ablation and the sensitivity; "" = the suite's (tasks.ABLATION_TASKS)
    reg_scales: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)  # sensitivity: the three weights scaled together
    single_lambda: float = 0.01  # sensitivity: one weight on all three terms (docs/paper.md); 0 = skip
    robustness: tuple[str, ...] = ("head_epochs=10", "views=8")  # head settings also run, one KEY=VALUE each
    # --- runtime --------------------------------------------------------------------------------------------
    device: str = "auto"
    num_threads: int = 0  # 0 = every core this process may use (cores.usable_cores)
    run_root: str = ""  # "" = $NMTUNE_RUNS, else <project root>/runs; a relative path is taken from the project root
    data_root: str = ""  # "" = the search order of nmtune_lib.data.datasets
    task_suite: str = "default"  # downstream tasks (nmtune_lib.tasks.SUITES): default (offline) | domainnet | paper
    tasks: tuple[str, ...] = ()  # the suite's tasks to run, by name; () = all of them
    progress: bool = True  # tqdm bars (off in batch runs: one printed line per epoch instead)

    def __post_init__(self) -> None:
        _coerce_and_check_types(self)
        object.__setattr__(self, "run_root", str(resolve_run_root(self.run_root)))
        _check_values(self)
        if not self.ablation_task:
            object.__setattr__(self, "ablation_task", ABLATION_TASKS[self.task_suite])

    # --- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, preset: str = "default", **overrides: Any) -> "StudyConfig":
        """The named preset with ``overrides`` applied; unknown keys or bad values raise ``ValueError``."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
        _reject_unknown(overrides)
        return cls(**{**PRESETS[preset], **overrides, "preset": preset})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StudyConfig":
        """Inverse of ``to_dict``: every key must be a field."""
        _reject_unknown(data)
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "StudyConfig":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_yaml(cls, text: str) -> "StudyConfig":
        import yaml

        return cls.from_dict(yaml.safe_load(text))

    def replace(self, **changes: Any) -> "StudyConfig":
        _reject_unknown(changes)
        return dataclasses.replace(self, **changes)

    # --- serialisation --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=True)

    # --- derived --------------------------------------------------------------------------------------------
    def pretrain_key(self) -> dict[str, Any]:
        """The fields that determine a pre-trained checkpoint (a resumed run must agree on all of them)."""
        keys = ("dataset", "noise_kind", "model", "small_stem", "img_size", "train_subset", "epochs",
                "batch_size", "lr", "momentum", "weight_decay", "label_smoothing")
        # these only when set, so that the keys of earlier runs stay what they were
        keys += tuple(k for k in ("pretrained", "stream") if getattr(self, k))
        keys += ("objective", "clip_lr", "clip_weight_decay") if self.objective != "supervised" else ()
        keys += ("caption_attributes",) if self.caption_attributes != CAPTION_ATTRIBUTES else ()
        return {k: getattr(self, k) for k in keys}


PROJECT_ROOT = Path(__file__).resolve().parents[1]


def resolve_run_root(run_root: str | Path = "") -> Path:
    """Where runs live, whatever the working directory (a JupyterLab kernel starts in ``notebooks/``):
    ``""`` → ``$NMTUNE_RUNS`` if set, else ``<project root>/runs``; a relative path → below the project root (the
    folder holding ``notebooks/``; the working directory when the package is installed without the project)."""
    run_root = str(run_root) or os.environ.get("NMTUNE_RUNS", "") or "runs"
    path = Path(run_root).expanduser()
    if path.is_absolute():
        return path
    base = PROJECT_ROOT if (PROJECT_ROOT / "notebooks").is_dir() else Path.cwd()
    return base / path


def parse_assignments(pairs: Sequence[str]) -> dict[str, Any]:
    """``["epochs=1", "lr=0.1"]`` → ``{"epochs": 1, "lr": 0.1}`` (values parsed as JSON where possible, else kept as
    strings); the command lines' ``--set`` / ``--param``. Validation of the keys is the caller's."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"{pair!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


# --- validation helpers ---------------------------------------------------------------------------------------

def _reject_unknown(keys: dict[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(StudyConfig)}
    unknown = sorted(set(keys) - names)
    if unknown:
        import difflib

        hints = [f"{u!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(u, names, 1)) else repr(u)
                 for u in unknown]
        raise ValueError(f"unknown config key(s): {', '.join(hints)}; valid keys: {', '.join(sorted(names))}")


def _coerce_and_check_types(cfg: StudyConfig) -> None:
    """Coerce what papermill/YAML hand us (``'1e-3'`` strings, lists, ints for floats) and reject the rest."""
    hints = get_type_hints(StudyConfig)
    for f in dataclasses.fields(cfg):
        value, hint = getattr(cfg, f.name), hints[f.name]
        try:
            coerced = _coerce(value, hint)
        except (TypeError, ValueError):
            raise ValueError(f"config {f.name}={value!r}: expected {_hint_name(hint)}") from None
        object.__setattr__(cfg, f.name, coerced)


def _coerce(value: Any, hint: Any) -> Any:
    origin = getattr(hint, "__origin__", None)
    if origin is tuple:
        inner = hint.__args__[0]
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_coerce(v, inner) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise TypeError
    if hint is int:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value)
        if isinstance(value, int):
            return value
        raise TypeError
    if hint is float:
        if isinstance(value, bool):
            raise TypeError
        out = float(value)
        if not math.isfinite(out):
            raise ValueError
        return out
    if hint is str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise TypeError
        return value
    return value


def _hint_name(hint: Any) -> str:
    origin = getattr(hint, "__origin__", None)
    if origin is tuple:
        return f"a list of {hint.__args__[0].__name__}"
    return getattr(hint, "__name__", str(hint))


def _checker(cfg: "StudyConfig"):
    """``need(ok, name, accepted)``: raise ``ValueError`` naming field ``name`` of ``cfg`` and what it accepts."""
    def need(ok: bool, name: str, accepted: str) -> None:
        if not ok:
            raise ValueError(f"config {name}={getattr(cfg, name)!r}: expected {accepted}")

    return need


def _check_names(cfg: "StudyConfig") -> None:
    """Names a config may use: preset, dataset, tasks, noise kind, objective, captions, stream."""
    need = _checker(cfg)
    need(cfg.preset in PRESETS, "preset", f"one of {', '.join(PRESETS)}")
    need(cfg.dataset in DATASETS, "dataset", f"one of {', '.join(DATASETS)}")
    need(cfg.task_suite in TASK_SUITES, "task_suite", f"one of {', '.join(TASK_SUITES)}")
    need(set(cfg.tasks) <= set(TASK_SUITES[cfg.task_suite]), "tasks",
         f"names of task_suite {cfg.task_suite!r}'s tasks: {', '.join(TASK_SUITES[cfg.task_suite])}")
    need(len(cfg.noise_ratios) > 0 and all(0.0 <= r < 1.0 for r in cfg.noise_ratios), "noise_ratios",
         "a non-empty list of fractions in [0, 1)")
    need(all(abs(float(ratio_label(r)) - r) < 1e-12 for r in cfg.noise_ratios), "noise_ratios",
         "fractions with at most 6 decimals (the run folders are named after them)")
    need(len(set(cfg.noise_ratios)) == len(cfg.noise_ratios), "noise_ratios", "distinct ratios")
    need(cfg.noise_kind in NOISE_KINDS, "noise_kind", f"one of {', '.join(NOISE_KINDS)}")
    need(cfg.objective in OBJECTIVES, "objective", f"one of {', '.join(OBJECTIVES)}")
    need((cfg.objective == "clip") == (cfg.noise_kind == "caption_swap"), "noise_kind",
         "caption_swap with objective=clip (captions are what CLIP pre-training reads), and a label-noise kind "
         f"({', '.join(k for k in NOISE_KINDS if k != 'caption_swap')}) with objective=supervised")
    need(set(cfg.caption_attributes) <= set(CAPTION_ATTRIBUTES) and len(set(cfg.caption_attributes)) == len(
        cfg.caption_attributes), "caption_attributes", f"distinct names among {', '.join(CAPTION_ATTRIBUTES)}")
    need(cfg.objective == "clip" or cfg.caption_attributes == CAPTION_ATTRIBUTES, "caption_attributes",
         f"the default {list(CAPTION_ATTRIBUTES)} unless objective=clip: only CLIP pre-training reads captions")
    need(cfg.objective == "supervised" or not (cfg.stream or cfg.pretrained), "objective",
         "supervised with stream or pretrained (CLIP pre-training reads its images in memory)")


def _check_grid(cfg: "StudyConfig") -> None:
    """Seeds, image size, loaders and subsets."""
    need = _checker(cfg)
    need(len(cfg.seeds) > 0 and all(s >= 0 for s in cfg.seeds), "seeds", "a non-empty list of integers >= 0")
    need(len(set(cfg.seeds)) == len(cfg.seeds), "seeds", "distinct seeds")
    need(cfg.img_size >= 8, "img_size", "an integer >= 8")
    need(not cfg.stream or cfg.dataset in FOLDER_DATASETS, "stream",
         f"false unless dataset is a folder dataset ({', '.join(FOLDER_DATASETS)}); {cfg.dataset!r} lives in memory")
    need(not (cfg.stream and cfg.noise_kind == "instance"), "stream",
         "false with noise_kind 'instance' (instance-dependent noise reads every image)")
    need(cfg.loader_workers >= 0, "loader_workers", "0 (load in the main process) or a positive count")
    need(cfg.train_subset >= 0, "train_subset", "0 (all) or a positive sample count")


def _check_numbers(cfg: "StudyConfig") -> None:
    """Counts, rates and weights in their ranges."""
    need = _checker(cfg)
    for name in ("epochs", "batch_size", "feature_batch_size", "head_epochs", "head_batch_size", "spectrum_top_k",
                 "svd_top_k"):
        need(getattr(cfg, name) > 0, name, "a positive integer")
    for name in ("lr", "lp_lr", "mlp_lr", "clip_lr"):
        need(getattr(cfg, name) > 0, name, "a positive float")
    for name in ("momentum", "label_smoothing"):
        need(0.0 <= getattr(cfg, name) < 1.0, name, "a float in [0, 1)")
    for name in ("weight_decay", "head_weight_decay", "w_mse", "w_cov", "w_svd", "clip_weight_decay"):
        need(getattr(cfg, name) >= 0, name, "a float >= 0")
    need(cfg.spectrum_split in ("train", "test"), "spectrum_split", "'train' or 'test'")
    need(cfg.spectrum_samples >= 0, "spectrum_samples", "0 (all) or a positive sample count")


def _check_heads(cfg: "StudyConfig") -> None:
    """The heads, protocols, views and the downstream settings."""
    need = _checker(cfg)
    need(len(cfg.methods) > 0 and all(m in HEAD_METHODS for m in cfg.methods), "methods",
         f"a non-empty list drawn from {', '.join(HEAD_METHODS)}")
    need(cfg.ft_epochs >= 1, "ft_epochs", "an integer >= 1")
    need(cfg.ft_backbone_lr_scale > 0, "ft_backbone_lr_scale", "a float > 0")
    need("ft" not in cfg.methods or "matched" in cfg.protocols, "methods",
         "ft only with the matched protocol among protocols (its learning rate is chosen on held-out data)")
    need(cfg.views >= 2, "views", "an integer >= 2 (NMTune draws two different views per step)")
    need(cfg.head_mode in HEAD_MODES, "head_mode", f"one of {', '.join(HEAD_MODES)}")
    need(cfg.svd_driver in ("", *ref.CUDA_SVD_DRIVERS), "svd_driver",
         f"'' (PyTorch's default) or one of {', '.join(ref.CUDA_SVD_DRIVERS)} (used on CUDA only)")
    need(len(cfg.protocols) > 0 and all(p in PROTOCOLS for p in cfg.protocols)
         and len(set(cfg.protocols)) == len(cfg.protocols), "protocols",
         f"a non-empty list of distinct names from {', '.join(PROTOCOLS)}")
    need(len(cfg.lr_grid) > 0 and all(lr > 0 for lr in cfg.lr_grid), "lr_grid", "a non-empty list of floats > 0")
    need(0.0 < cfg.holdout_fraction < 0.5, "holdout_fraction", "a fraction in (0, 0.5)")
    need(len(cfg.view_crop_scale) == 2 and 0 < cfg.view_crop_scale[0] <= cfg.view_crop_scale[1] <= 1,
         "view_crop_scale", "two area fractions (low, high) with 0 < low <= high <= 1")
    need(len(cfg.view_crop_ratio) == 2 and 0 < cfg.view_crop_ratio[0] <= cfg.view_crop_ratio[1], "view_crop_ratio",
         "two aspect ratios (low, high) with 0 < low <= high")
    need(cfg.view_interpolation in ref.VIEW_INTERPOLATIONS, "view_interpolation",
         f"one of {', '.join(ref.VIEW_INTERPOLATIONS)}")
    need(math.isfinite(cfg.view_blur) and cfg.view_blur >= 0, "view_blur", "a Gaussian sigma >= 0 in pixels (0 = none)")
    need(len(cfg.reg_scales) > 0 and all(s >= 0 for s in cfg.reg_scales), "reg_scales",
         "a non-empty list of floats >= 0")
    need(cfg.single_lambda >= 0, "single_lambda", "a float >= 0 (0 = skip the single-lambda variant)")
    need(cfg.task_subset >= 0, "task_subset", "0 (all) or a positive sample count")
    need(cfg.device in DEVICES or cfg.device.startswith("cuda:"), "device", f"one of {', '.join(DEVICES)} or 'cuda:N'")
    need(cfg.num_threads >= 0, "num_threads", "0 (all cores) or a positive thread count")
    ablation_task = cfg.ablation_task or ABLATION_TASKS[cfg.task_suite]
    if cfg.ablation and cfg.tasks and ablation_task not in cfg.tasks:
        raise ValueError(f"config ablation_task={ablation_task!r} is not among tasks={list(cfg.tasks)}: add it, set "
                         "ablation_task to one of them, or set ablation=false")


def _check_values(cfg: StudyConfig) -> None:
    """Every value of ``cfg`` in its accepted range, each error naming the field and what is accepted."""
    for check in (_check_names, _check_grid, _check_numbers, _check_heads):
        check(cfg)
    need = _checker(cfg)
    # last: a robustness setting is checked by building the changed config, so every other field must be valid
    for setting in cfg.robustness:
        try:
            changes = parse_assignments([setting])
            StudyConfig(**{**cfg.to_dict(), "robustness": (), **changes})
            ok = set(changes) <= set(ROBUSTNESS_FIELDS)
        except (ValueError, TypeError):
            ok = False
        need(ok, "robustness", f"KEY=VALUE settings with a valid value, KEY one of {', '.join(ROBUSTNESS_FIELDS)}")
