"""Transfer of a frozen backbone to a task suite: LP, MLP and NMTune heads under both protocols, the regulariser
ablation and sensitivity, and the robustness settings, as one xarray Dataset.

For each task the frozen features are extracted once (cached on disk, keyed by the checkpoint hash): eval features
of the training set (the reference LP, and the held-out scoring of the matched protocol), K views of it in the
task's ``ViewAugment`` (crop scale and ratio from the config, flips per task) and eval features of every test domain.
``online`` mode re-encodes both views through the backbone at every step instead (the reference code's behaviour).

Settings: ``base`` (the config as it is) and one per ``config.robustness`` entry (``head_epochs=10``, ``views=8``,
``head_mode=online``, …). ``base`` runs every protocol of ``config.protocols``; a robustness setting re-runs the
reference protocol only (the matched protocol is itself the protocol axis of the robustness table). The ablation
and the sensitivity run in the ``base`` setting, reference protocol, on ``config.ablation_task``.

Result Dataset dims: (noise_ratio, seed, setting, protocol, method, task, test_domain); ``accuracy`` in [0, 1] (NaN
where a head was not fitted or a task has no such test domain), ``fit_seconds``, ``lr`` (the learning rate used:
chosen on held-out data in the matched protocol), ``head_mode``; ``selection_accuracy`` (held-out accuracy of every
candidate learning rate, matched protocol); per-task coordinates ``task_kind`` (id/ood), ``train_domain``, ``chance``
and ``view_flip``; the spectrum of the tuned features z of LP/MLP/NMTune (base, reference) on one reference test set;
and the spectrum metrics of the frozen eval features of every task's test domains (``frozen_sve``, ``frozen_p1``,
``frozen_sigma1`` over task, test_domain and centering): claim 3 on the downstream data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from ..config import CENTERINGS, parse_assignments
from ..data.augment import ViewAugment, to_float
from ..data.noise import labels_sha256
from ..pretraining.models import resolve_device
from ..reference import METHODS
from ..spectrum.features import extract_features, tensor_sha256
from ..spectrum.metrics import singular_values, spectrum_metrics
from .protocols import (ABLATIONS, HeadSpec, candidate_specs, head_spec, holdout_split, reference_specs, select_lr,
                        sensitivity_specs)
from .cost import PeakMemory, trained_parameters
from .finetune import ImageViews, fit_finetune, view_images
from .tuning import HEAD_KEYS, fit_head, fit_heads
from .views import CachedViews, OnlineViews

BASE = "base"
MEASURED = ("fit_seconds", "peak_memory_mb")  # what a head cost, measured: differs between runs of equal numbers


@dataclass(frozen=True)
class Score:
    """One fitted head scored on one test domain."""

    setting: str
    protocol: str
    task: str
    method: str
    test_domain: str
    accuracy: float
    fit_seconds: float
    head_mode: str
    lr: float
    peak_memory_mb: float = float("nan")  # the fit's peak memory above its start (its batch's, if batched)
    trained_params: int = 0  # parameters the fit trained


def view_augment(config, flip: bool) -> ViewAugment:
    """The views of a task with flips ``flip`` under ``config`` (its crop scale, ratio, interpolation and blur)."""
    return ViewAugment(tuple(config.view_crop_scale), tuple(config.view_crop_ratio), flip, config.view_interpolation,
                       config.view_blur)


def settings(config) -> dict[str, Any]:
    """``{"base": config, "<KEY=VALUE>": config with that change, …}``: the settings notebook 04 runs."""
    return {BASE: config, **{s: config.replace(**parse_assignments([s])) for s in config.robustness}}


class _TaskHeads:
    """Fits and scores the heads of one task. Identical (inputs, spec, sample subset) fits are made once, and the
    heads of one ``fit_many`` call that share their inputs, samples and schedule are trained together
    (``tuning.fit_heads``: the same heads as one by one, in one pass)."""

    def __init__(self, backbone, task, config, features, *, seed: int, device, progress: bool, log,
                 batched: bool = True):
        self.backbone, self.task, self.features, self.seed = backbone, task, features, seed
        self.device, self.progress, self.log, self.batched = device, progress, log, batched
        self.augment = view_augment(config, task.flip)
        self.eval_train = features(task.train)
        self.fitted: dict[tuple, Any] = {}

    def views(self, config):
        """The two-view source of a setting: K cached views, or online re-encoding through the backbone."""
        if config.head_mode == "online":
            return OnlineViews(self.backbone, self.task.train.images, device=self.device, augment=self.augment)
        return CachedViews(self.features(self.task.train, self.augment, config.views), device=self.device)

    def _key(self, config, spec: HeadSpec, index: torch.Tensor | None) -> tuple:
        source_key = ("eval",) if spec.inputs == "eval" else (config.head_mode, config.views)
        return source_key, spec, None if index is None else tuple(index.tolist())

    def fit_many(self, requests: Sequence[tuple[Any, HeadSpec, torch.Tensor | None, str]]) -> None:
        """Fit every ``(config, spec, sample index or None, name)`` not fitted yet; the heads that share their
        inputs, samples and schedule (epochs, batch size, weight decay) are trained as one batch (one by one with
        ``fit_head`` if not ``batched``: the same numbers, slower); full fine-tuning (``ft``) one fit at a time.
        Each fit records its peak memory (the batch's, for batched heads) and its trained parameters."""
        batches: dict[tuple, dict[tuple, tuple]] = {}
        for config, spec, index, name in requests:
            key = self._key(config, spec, index)
            if key not in self.fitted:
                batch = (key[0], key[2], spec.epochs, spec.batch_size, spec.weight_decay, spec.svd_driver,
                         key if spec.method == "ft" else None)
                batches.setdefault(batch, {}).setdefault(key, (config, spec, index, name))
        for members in batches.values():
            config, spec, index, _ = next(iter(members.values()))
            with PeakMemory(self.device) as peak:
                fits = self._fit_batch(config, spec, index, [s for _, s, _, _ in members.values()])
            for fit in fits:
                fit.params.update(peak_memory_mb=peak.megabytes, trained_params=trained_parameters(fit.head))
            self.fitted.update(zip(members, fits))
            where = "all" if index is None else f"{len(index)} of {len(self.task.train)}"
            names = ", ".join(f"{name or s.method} {s.lr:g}" for _, s, _, name in members.values())
            self.log(f"{self.task.name:>22} {len(fits):>2} heads × {spec.epochs} epochs ({fits[0].mode}, {where}): "
                     f"{sum(f.seconds for f in fits):.1f} s  [{names}]")

    def _fit_batch(self, config, spec: HeadSpec, index: torch.Tensor | None, specs: list[HeadSpec]) -> list:
        """The heads ``specs`` (sharing ``spec``'s inputs, samples and schedule) trained on the samples ``index``."""
        labels = self.task.train.labels if index is None else self.task.train.labels[index]
        common = dict(num_classes=self.task.num_classes, seed=self.seed, device=self.device, progress=self.progress)
        if spec.method == "ft":
            return [fit_finetune(self.backbone, self.image_views(config, index), labels, epochs=spec.epochs,
                                 batch_size=spec.batch_size, lr=spec.lr, backbone_lr_scale=config.ft_backbone_lr_scale,
                                 weight_decay=spec.weight_decay, **common)]
        source = self.eval_train if spec.inputs == "eval" else self.views(config)
        if index is not None:
            source = source[index] if spec.inputs == "eval" else source.subset(index)
        if not self.batched:
            return [fit_head(source, labels, **s.fit_kwargs(), **common) for s in specs]
        return fit_heads(source, labels, [{k: v for k, v in s.fit_kwargs().items() if k in HEAD_KEYS} for s in specs],
                         epochs=spec.epochs, batch_size=spec.batch_size, weight_decay=spec.weight_decay,
                         svd_driver=spec.svd_driver, **common)

    def image_views(self, config, index: torch.Tensor | None) -> ImageViews:
        """Full fine-tuning's views: the K augmented images the cached views were encoded from (or, online, fresh
        augmentations), of the samples ``index``."""
        images = self.task.train.images
        if config.head_mode == "online":
            views = ImageViews(images, augment=self.augment, device=self.device)
        else:
            views = ImageViews(view_images(images, self.augment, config.views, self.seed), device=self.device)
        return views if index is None else views.subset(index)

    def score(self, fit, image_set) -> float:
        """A fitted head's accuracy on an image set: on its frozen eval features, or, fine-tuned, on its images."""
        if fit.method == "ft":
            return fit.accuracy(to_float(image_set.images), image_set.labels)
        return fit.accuracy(self.features(image_set), image_set.labels)

    def fit(self, config, spec: HeadSpec, index: torch.Tensor | None = None, *, name: str = ""):
        """The head ``spec`` trained on this task's samples ``index`` (all by default); ``name`` labels the log."""
        self.fit_many([(config, spec, index, name)])
        return self.fitted[self._key(config, spec, index)]

    def held_out_accuracy(self, fit, index: torch.Tensor) -> float:
        if fit.method == "ft":
            return fit.accuracy(to_float(self.task.train.images[index]), self.task.train.labels[index])
        return fit.accuracy(self.eval_train[index], self.task.train.labels[index])


def run_transfer(run, backbone, tasks: Sequence[Any], *, checkpoint_hash: str, device: str = "cpu",
                 progress: bool = False, log=print, cache: bool = True, spectrum_task: str | None = None,
                 attrs: dict[str, Any] | None = None, batched: bool = True) -> xr.Dataset:
    """Fit every head of every protocol and setting on every task of ``run`` (a ``Run``: its config, noise ratio and
    seed) and score every test domain (see the module docstring). Features are cached in ``run.features`` unless
    ``cache`` is False. ``spectrum_task`` names the task whose in-training-domain test set gives the spectrum of the
    tuned features z (default: the first task). ``batched`` trains the heads that share their inputs, samples and
    schedule together (``tuning.fit_heads``); False trains them one by one: the same numbers, bit for bit, slower."""
    device = resolve_device(str(device))
    config, noise_ratio, seed = run.config, run.noise_ratio, run.seed
    cache_dir = run.features if cache else None

    loaded: dict[tuple, torch.Tensor] = {}  # one extraction (or cache read) per image set, transform and K per run

    def features(image_set, transform="eval", views=1):
        key = (id(image_set), transform, views)  # the tasks keep every image set alive for the whole run
        if key not in loaded:
            loaded[key] = extract_features(backbone, image_set, transform=transform, views=views, seed=seed,
                                           device=device, batch_size=config.feature_batch_size, cache_dir=cache_dir,
                                           checkpoint_hash=checkpoint_hash, progress=progress)
        return loaded[key]

    names = [t.name for t in tasks]
    if config.ablation and config.ablation_task not in names:
        raise ValueError(f"ablation_task={config.ablation_task!r} is not a task of this suite; accepted: "
                         f"{', '.join(names)}")
    scores: list[Score] = []
    selection: dict[tuple[str, str, str, float], float] = {}  # (setting, method, task, lr) → held-out accuracy
    tuned: dict[str, dict[str, float]] = {}
    spectrum_task = spectrum_task or tasks[0].name
    by_train, plans = _plan(tasks, config, selection, seed, lambda task: _TaskHeads(
        backbone, task, config, features, seed=seed, device=device, progress=progress, log=log, batched=batched))
    for heads in by_train.values():  # then fitted, the heads sharing inputs and schedule as one batch
        heads.fit_many([(cfg, spec, None, name) for _, h, _, cfg, _, specs in plans if h is heads
                        for name, spec in specs.items()])
    for task, heads, setting, cfg, protocol, specs in plans:
        for method, spec in specs.items():
            fit = heads.fit(cfg, spec, name=method)
            for domain, test in task.tests.items():
                scores.append(Score(setting, protocol, task.name, method, domain, heads.score(fit, test), fit.seconds,
                                    fit.mode, spec.lr, fit.params.get("peak_memory_mb", float("nan")),
                                    fit.params.get("trained_params", 0)))
            if (setting, protocol, task.name) == (BASE, config.protocols[0], spectrum_task) and method in METHODS:
                tuned[method] = _tuned_spectrum(fit, features(task.tests[task.train_domain]), method, config)
    frozen = {(task.name, domain): frozen_spectrum(features(test), config.spectrum_top_k)
              for task in tasks for domain, test in task.tests.items()}
    return transfer_dataset(scores, tasks, noise_ratio=noise_ratio, seed=seed, selection=selection,
                            tuned_spectrum=tuned, frozen_spectrum=frozen, attrs=attrs)


def _plan(tasks: Sequence[Any], config, selection: dict, seed: int, make_heads) -> tuple[dict, list]:
    """Every head of every task, known before any is fitted (the matched protocol's after its learning-rate
    selection): ``(heads by training set, [(task, heads, setting, config, protocol, specs)])``. Tasks that share a
    training set and flips share their heads (``make_heads(task)`` makes them)."""
    by_train: dict[str, _TaskHeads] = {}
    plans = []
    for task in tasks:
        key = _content_key(task.train) + str(task.flip)
        if key not in by_train:
            by_train[key] = make_heads(task)
        heads = by_train[key]
        for setting, cfg, protocol in _setting_protocols(config):
            specs = _protocol_specs(heads, cfg, protocol, list(config.methods), setting, selection, task.name, seed)
            if (setting, protocol) == (BASE, "reference") and config.ablation and task.name == config.ablation_task:
                specs.update({name: head_spec(cfg, name) for name in ABLATIONS})
                specs.update(sensitivity_specs(cfg))
            plans.append((task, heads, setting, cfg, protocol, specs))
    return by_train, plans


def _setting_protocols(config):
    """(setting, its config, protocol): every protocol in ``base``, the reference protocol in robustness settings."""
    for setting, cfg in settings(config).items():
        for protocol in config.protocols:
            if setting == BASE or protocol == "reference":
                yield setting, cfg, protocol


def _protocol_specs(heads: _TaskHeads, cfg, protocol: str, methods, setting: str, selection: dict, task_name: str,
                    seed: int) -> dict[str, HeadSpec]:
    """The specs of one protocol; in ``matched`` each method's lr is chosen on held-out data first."""
    if protocol == "reference":
        return reference_specs(cfg, methods)
    split = holdout_split(heads.task.train.labels, cfg.holdout_fraction, seed)
    heads.fit_many([(cfg, spec, split[0], method) for method in methods for spec in candidate_specs(cfg, method)])
    out = {}
    for method in methods:
        best, accuracy = select_lr(cfg, method, lambda spec, index: heads.fit(cfg, spec, index),
                                   heads.held_out_accuracy, split)
        for lr, acc in accuracy.items():
            selection[(setting, method, task_name, lr)] = acc
        out[method] = head_spec(cfg, method, inputs="views", lr=best)
    return out


def _tuned_spectrum(fit, f: torch.Tensor, method: str, config) -> dict[str, float]:
    """Spectrum metrics of z = s·h(f) + f of a fitted MLP/NMTune head (f itself for LP), column centring."""
    if method != "lp":
        with torch.no_grad():
            f = torch.cat([fit.head.features(chunk.to(fit.device)).cpu() for chunk in f.split(4096)])
    return spectrum_metrics(singular_values(f, centering="column"), config.spectrum_top_k)


FROZEN_METRICS = ("sve", "p1", "sigma1")  # the spectrum metrics of the frozen features of every test domain


def frozen_spectrum(f: torch.Tensor, top_k: int) -> dict[str, dict[str, float]]:
    """Claim 3 on downstream data: the spectrum metrics (``FROZEN_METRICS``) of the frozen eval features ``f`` (N×D)
    of one test domain under every centring, ``{centering: {metric: value}}`` (spectrum.py's conventions: rows
    L2-normalised, then centred)."""
    return {c: {m: v for m, v in spectrum_metrics(singular_values(f, centering=c), top_k).items()
                if m in FROZEN_METRICS} for c in CENTERINGS}


def _content_key(image_set) -> str:
    """Identity of a training set by content (the ``real`` rendering equals the original images)."""
    return tensor_sha256(image_set.images) + labels_sha256(image_set.labels)


def transfer_dataset(scores: Sequence[Score], tasks: Sequence[Any], *, noise_ratio: float, seed: int,
                     selection: dict[tuple[str, str, str, float], float] | None = None,
                     tuned_spectrum: dict[str, dict[str, float]] | None = None,
                     frozen_spectrum: dict[tuple[str, str], dict[str, dict[str, float]]] | None = None,
                     attrs: dict[str, Any] | None = None) -> xr.Dataset:
    """Scores of one run → Dataset with dims (noise_ratio, seed, setting, protocol, method, task, test_domain);
    ``frozen_spectrum`` ((task, test domain) → ``frozen_spectrum``'s dict) adds ``frozen_<metric>`` over (noise_ratio,
    seed, task, test_domain, centering)."""
    axes = {name: list(dict.fromkeys(getattr(s, name) for s in scores))
            for name in ("setting", "protocol", "method")}
    axes["task"] = [t.name for t in tasks]
    axes["test_domain"] = list(dict.fromkeys(d for t in tasks for d in t.tests))
    shape = [1, 1] + [len(v) for v in axes.values()]
    acc = np.full(shape, np.nan)
    secs, lrs, peak, params = (np.full(shape[:-1], np.nan) for _ in range(4))
    mode = np.full(shape[:-1], "", dtype=object)
    for s in scores:
        at = (0, 0) + tuple(axes[name].index(getattr(s, name)) for name in ("setting", "protocol", "method", "task"))
        acc[at + (axes["test_domain"].index(s.test_domain),)] = s.accuracy
        secs[at], lrs[at], mode[at], peak[at], params[at] = (s.fit_seconds, s.lr, s.head_mode, s.peak_memory_mb,
                                                             s.trained_params)
    dims = ("noise_ratio", "seed", "setting", "protocol", "method", "task", "test_domain")
    data = {
        "accuracy": (dims, acc, {"long_name": "test accuracy of the head", "units": "fraction correct"}),
        "fit_seconds": (dims[:-1], secs, {"long_name": "wall time to fit the head (features cached)", "units": "s"}),
        "lr": (dims[:-1], lrs, {"long_name": "learning rate of the head (matched protocol: chosen on held-out data)"}),
        "head_mode": (dims[:-1], mode, {"long_name": "where the views came from: eval features (reference LP), "
                                                     "cached K-view features, online re-encoding or images (ft)"}),
        "peak_memory_mb": (dims[:-1], peak, {"long_name": "peak memory of the fit above its start (its batch's, if "
                                                          "batched; CPU: resident set sampled every 5 ms)",
                                             "units": "MiB"}),
        "trained_params": (dims[:-1], params, {"long_name": "parameters the fit trained"}),
    }
    coords = _coords(axes, tasks, noise_ratio, seed)
    if selection:
        _add_selection(data, coords, selection)
    if tuned_spectrum:
        names = [m for m in axes["method"] if m in tuned_spectrum]
        for metric in ("sve", "p1", "sigma1"):
            data[f"tuned_{metric}"] = (("noise_ratio", "seed", "tuned_method"),
                                       np.array([[[tuned_spectrum[m][metric] for m in names]]]),
                                       {"long_name": f"{metric} of the tuned features z (f for LP), column centring"})
        coords["tuned_method"] = ("tuned_method", np.array(names, dtype=object))
    if frozen_spectrum:
        centerings = list(next(iter(frozen_spectrum.values())))
        for metric in FROZEN_METRICS:
            values = np.full((1, 1, len(axes["task"]), len(axes["test_domain"]), len(centerings)), np.nan)
            for (task, domain), by_centering in frozen_spectrum.items():
                values[0, 0, axes["task"].index(task), axes["test_domain"].index(domain)] = [
                    by_centering[c][metric] for c in centerings]
            data[f"frozen_{metric}"] = (("noise_ratio", "seed", "task", "test_domain", "centering"), values,
                                        {"long_name": f"{metric} of the frozen eval features of the test domain "
                                                      "(rows L2-normalised, then centred; docs/paper.md §5)"})
        coords["centering"] = ("centering", np.array(centerings, dtype=object))
    return xr.Dataset(data, coords, attrs or {})


def _coords(axes: dict[str, list], tasks: Sequence[Any], noise_ratio: float, seed: int) -> dict[str, tuple]:
    """The coordinates of a run's transfer Dataset: its noise ratio and seed, the axes, and each task's kind,
    training domain, chance level and flips."""
    return {
        "noise_ratio": ("noise_ratio", [float(noise_ratio)], {"units": "fraction of pre-training labels flipped"}),
        "seed": ("seed", np.array([seed], dtype=np.int64)),
        **{name: (name, np.array(values, dtype=object)) for name, values in axes.items()},
        "task_kind": ("task", np.array([t.kind for t in tasks], dtype=object), {"long_name": "id or ood"}),
        "train_domain": ("task", np.array([t.train_domain for t in tasks], dtype=object)),
        "chance": ("task", np.array([t.chance for t in tasks]), {"long_name": "majority-class accuracy"}),
        "view_flip": ("task", np.array([int(t.flip) for t in tasks], dtype=np.int8),
                      {"long_name": "1 if the task's views are mirrored at random, 0 if not (digits)"}),
    }


def _add_selection(data: dict, coords: dict, selection: dict[tuple[str, str, str, float], float]) -> None:
    """The matched protocol's held-out accuracy of every candidate learning rate (``selection_accuracy``)."""
    cand = sorted({k[3] for k in selection})
    sel_axes = [list(dict.fromkeys(k[i] for k in selection)) for i in range(3)]
    sel = np.full([1, 1, len(sel_axes[0]), len(sel_axes[1]), len(sel_axes[2]), len(cand)], np.nan)
    for (setting, method, task, lr), value in selection.items():
        sel[0, 0, sel_axes[0].index(setting), sel_axes[1].index(method), sel_axes[2].index(task),
            cand.index(lr)] = value
    data["selection_accuracy"] = (("noise_ratio", "seed", "selection_setting", "selection_method",
                                   "selection_task", "candidate_lr"), sel,
                                  {"long_name": "held-out accuracy of each candidate learning rate (matched)"})
    coords.update(selection_setting=("selection_setting", np.array(sel_axes[0], dtype=object)),
                  selection_method=("selection_method", np.array(sel_axes[1], dtype=object)),
                  selection_task=("selection_task", np.array(sel_axes[2], dtype=object)),
                  candidate_lr=("candidate_lr", np.array(cand)))
