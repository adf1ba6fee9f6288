"""A user's own pre-trained backbone in place of pre-training (the paper's practical experiments, docs/paper.md §5).

``config.pretrained`` names a local weights file of the timm model ``config.model``: ``.safetensors``, ``.pt``,
``.pth`` or ``.bin``, read by ``timm.models.load_state_dict`` (a bare state dict, or one under ``state_dict`` /
``model`` / an EMA key; a DDP ``module.`` prefix is removed). The path may hold ``{noise_ratio}`` and ``{seed}``
placeholders, one file per run of the grid (e.g. the user's own ResNet-50s pre-trained on ImageNet at 0-30 % noise);
without them one file stands for one model, and the grid must then have a single noise ratio (the seeds still vary
the heads).

Notebook 02 (or ``python -m nmtune_lib.pretraining.pretrain``) then imports the weights instead of training: the
classifier width and input channels are read from the file, the weights are loaded strictly (a missing or unexpected key
raises and names it), and ``backbone.pt``, ``pretrain.json`` and an empty ``history.nc`` (no epochs) are written as a
training run would write them, so notebooks 03-05 analyse and tune heads on the user's model unchanged.
``pretrain.json`` records ``source: "pretrained"``, the file and its sha256 (part of the run key: a changed file is a
different run), and the clean test accuracy on ``config.dataset`` when the classifier has that dataset's classes (else
null). Images are fed at ``config.img_size`` (set it to the model's resolution, e.g. 224) with ImageNet normalisation
for 3-channel models (``models.Backbone``). """
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write_json, file_sha256
from ..results import device_name, package_versions, save_dataset
from .checkpoints import finished_summary, save_backbone
from .history import history_dataset, say
from .models import create_backbone, resolve_device
from .recipe import clean_test_accuracy, clean_test_data, run_key

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
PLACEHOLDERS = ("noise_ratio", "seed")


def weights_path(config, noise_ratio: float, seed: int) -> Path:
    """The weights file of one run: ``config.pretrained`` with ``{noise_ratio}`` and ``{seed}`` filled in."""
    try:
        text = config.pretrained.format(noise_ratio=noise_ratio, seed=seed)
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"pretrained={config.pretrained!r}: bad placeholder ({err}); accepted: "
                         f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)}") from None
    return Path(text).expanduser()


def check_pretrained(config) -> None:
    """Before any compute: every run's weights file exists with a known suffix, and a single file is not asked to
    stand for several noise ratios. Raises ``ValueError`` naming every missing file."""
    if not config.pretrained:
        return
    paths = sorted({weights_path(config, r, s) for r in config.noise_ratios for s in config.seeds})
    if "{noise_ratio" not in config.pretrained and len(config.noise_ratios) > 1:
        raise ValueError(f"pretrained={config.pretrained!r} is one model but the grid has noise ratios "
                         f"{list(config.noise_ratios)}: set noise_ratios to one value (e.g. --set noise_ratios=[0]) or "
                         "put {noise_ratio} in the path, one file per ratio")
    bad = [p for p in paths if p.suffix not in WEIGHT_SUFFIXES]
    if bad:
        raise ValueError(f"pretrained weights {', '.join(map(str, bad))}: unknown file type; accepted: "
                         f"{', '.join(WEIGHT_SUFFIXES)}")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"pretrained weights not found: {', '.join(map(str, missing))}")


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a weights file (timm's reader; tensors only, nothing executed)."""
    from timm.models import load_state_dict

    return load_state_dict(str(path), use_ema=True, weights_only=True)


def backbone_from_weights(name: str, state: dict[str, torch.Tensor], *, img_size: int, small_stem: bool = False):
    """A ``models.Backbone`` of timm model ``name`` holding ``state``: classifier width and input channels are read
    from the state, which must fill the model exactly."""
    import timm

    probe = timm.create_model(name, pretrained=False)
    conv, fc = probe.pretrained_cfg.get("first_conv"), probe.pretrained_cfg.get("classifier")
    conv, fc = (conv[0] if isinstance(conv, (list, tuple)) else conv), (fc[0] if isinstance(fc, (list, tuple)) else fc)
    in_chans = int(state[f"{conv}.weight"].shape[1]) if f"{conv}.weight" in state else 3
    num_classes = int(state[f"{fc}.weight"].shape[0]) if f"{fc}.weight" in state else 0
    backbone = create_backbone(name, num_classes=num_classes, in_chans=in_chans, img_size=img_size,
                               small_stem=small_stem)
    own = backbone.net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    resized = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
               if k in state and state[k].shape != v.shape]
    if missing or unexpected or resized:
        def some(keys):
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "") if keys else "none"

        raise ValueError(f"these weights do not fit timm model {name!r} (small_stem={small_stem}): missing keys "
                         f"{some(missing)}; unexpected keys {some(unexpected)}; other shapes (file vs model) "
                         f"{some(resized)}. Set model to the architecture the file was saved from")
    backbone.net.load_state_dict(state)
    return backbone


def pretrained_key(config, seed: int) -> dict[str, Any]:
    """The run key of an import: the pre-training key (which holds ``pretrained``), the seed and the file's sha256."""
    check_pretrained(config)
    return {**run_key(config, seed), "weights_sha256": file_sha256(weights_path(config, config.noise_ratios[0], seed))}


def import_pretrained(run, noisy, test_set, *, key: dict[str, Any]) -> dict[str, Any]:
    """Write ``backbone.pt`` and ``pretrain.json`` of ``run`` from its weights file; return the summary. A finished
    import with the same key (which holds the file's sha256) is returned as it is."""
    start = time.perf_counter()
    config = run.config
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("importing pretrained weights is one process's work: run it without torchrun")
    path = weights_path(config, run.noise_ratio, run.seed)
    done = finished_summary(run, key, noisy.manifest_hash)
    if done is not None:
        say(config, f"{run.dir}: imported weights found ({path.name}); skipped")
        return done
    with torch.random.fork_rng(devices=[]):  # creating the model draws an init, then overwritten: leave no trace
        backbone = backbone_from_weights(config.model, read_weights(path), img_size=config.img_size,
                                         small_stem=config.small_stem)
    device = resolve_device(config.device)
    backbone = backbone.to(device).eval()
    test_acc = None
    if backbone.net.num_classes == test_set.num_classes:
        data = clean_test_data(test_set, device=device, workers=config.loader_workers)
        test_acc = clean_test_accuracy(backbone, data, device=device, autocast=device.type == "cuda")
    meta = save_backbone(run, backbone)
    summary = dict(
        source="pretrained", weights=str(path), weights_sha256=key["weights_sha256"], final_test_acc=test_acc,
        train_loss=None, train_acc_noisy=None, memo_noisy=None, memo_clean=None, epochs=0, images_per_s=None,
        images_seen=0, train_seconds=0.0, checkpoint_sha256=file_sha256(run.backbone),
        manifest_sha256=noisy.manifest_hash, noise_ratio=float(run.noise_ratio), noise_kind=config.noise_kind,
        seed=int(run.seed), config=config.to_dict(), run_key=key, model=meta, device=device_name(device),
        num_threads=torch.get_num_threads(), world_size=1, versions=package_versions(),
        seconds=round(time.perf_counter() - start, 3))
    save_dataset(history_dataset([], summary), run.history_nc, kind="history")  # no epochs: nothing was trained
    atomic_write_json(run.pretrain_summary, summary)
    acc = "n/a (other classes)" if test_acc is None else f"{test_acc:.4f}"
    say(config, f"{run.dir}: imported {path} ({meta['num_features']}-d features; clean test acc {acc})")
    return summary
