"""Pre-training checkpoints and finished runs: resuming, refusing another run's files, loading the final backbone.

A run directory's ``checkpoint.pt`` (after every epoch) and ``pretrain.json`` (written last) each carry the run key
(``pretrain.run_key``: config fields, seed, fixed recipe) and the noise-manifest hash. A file whose key or manifest
differs from the run's belongs to another run: it is refused, never overwritten. File names are those of
``nmtune_lib.run``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..files import atomic_torch_save, file_sha256
from ..run import BACKBONE, PRETRAIN_SUMMARY, Run
from .models import Backbone, create_backbone, resolve_device


def _same(a: Any, b: Any) -> bool:
    """Equality after a JSON round trip (tuples vs lists, ints vs floats as JSON writes them)."""
    return json.loads(json.dumps(a, sort_keys=True, default=str)) == json.loads(json.dumps(b, sort_keys=True,
                                                                                         default=str))


def finished_summary(run: Run, key: dict[str, Any], manifest_hash: str) -> dict[str, Any] | None:
    """The ``pretrain.json`` of a finished run that matches (key, manifest, backbone file hash), else None.

    A summary that does not match raises: the directory belongs to another run and is never overwritten.
    """
    path = run.pretrain_summary
    if not path.exists():
        return None
    info = json.loads(path.read_text())
    if not _same(info.get("run_key"), key) or info.get("manifest_sha256") != manifest_hash:
        raise ValueError(f"{path} belongs to another run: its run key {json.dumps(info.get('run_key'))} / manifest "
                         f"{str(info.get('manifest_sha256'))[:12]} vs this run's {json.dumps(key)} / manifest "
                         f"{manifest_hash[:12]}; use another run_root or remove {run.dir}")
    backbone = run.backbone
    if not backbone.exists() or file_sha256(backbone) != info.get("checkpoint_sha256"):
        raise ValueError(f"{backbone} is missing or differs from the checkpoint_sha256 in {path} (damaged); remove "
                         f"{backbone.name} and {path.name}: pre-training then finishes from {run.checkpoint.name} and "
                         "writes them again")
    return info


SEALED = "nmtune-sealed-1"  # checkpoint.pt: {"format", "sha256", "payload": torch.save bytes of the state}


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` atomically, sealed with the sha256 of its serialised bytes (checked by ``load_checkpoint``)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    atomic_torch_save(path, {"format": SEALED, "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload})


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The state in a sealed checkpoint; a truncated, garbled or altered file raises naming it and what to do."""
    advice = (f"remove {path} to restart pre-training from epoch 0 (the run is deterministic: it ends with the same "
              "weights)")
    try:
        sealed = torch.load(path, map_location="cpu", weights_only=False)
        ok = isinstance(sealed, dict) and sealed.get("format") == SEALED
        ok = ok and hashlib.sha256(sealed["payload"]).hexdigest() == sealed["sha256"]
    except Exception as err:  # torch/zipfile/pickle errors of a damaged file
        raise ValueError(f"{path} is damaged ({type(err).__name__}: {str(err)[:120]}); {advice}") from None
    if not ok:
        raise ValueError(f"{path} does not match its content hash (damaged, or not written by this version); {advice}")
    return torch.load(io.BytesIO(sealed["payload"]), map_location="cpu", weights_only=False)


def load_checkpoint(run: Run, key: dict[str, Any], manifest_hash: str) -> dict[str, Any] | None:
    """The run's ``checkpoint.pt`` if it exists, its content hash verified; a checkpoint of another run (key or
    manifest) raises, and so does a damaged one (naming it)."""
    path = run.checkpoint
    if not path.exists():
        return None
    ckpt = read_checkpoint(path)
    if not _same(ckpt.get("run_key"), key) or ckpt.get("manifest_sha256") != manifest_hash:
        raise ValueError(
            f"refusing to resume from {path}: it was written for run key "
            f"{json.dumps(ckpt.get('run_key'), sort_keys=True)} with noise manifest {ckpt.get('manifest_sha256')}, "
            f"but this run has run key {json.dumps(key, sort_keys=True)} with noise manifest {manifest_hash}. "
            f"Use another run_root or remove {path} to start over.")
    return ckpt


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict as contiguous CPU tensors: the saved bytes do not depend on channels_last or the device."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def generator_state(seed: int) -> torch.Tensor:
    """The state of a CPU ``torch.Generator`` seeded with ``seed`` (stored in a checkpoint for the next epoch)."""
    return torch.Generator().manual_seed(seed).get_state()


def save_backbone(run: Run, backbone: Backbone) -> dict[str, Any]:
    """Write ``backbone.pt`` (the weights and the ``meta`` that ``load_pretrained`` rebuilds the model from)
    atomically; return the meta."""
    config = run.config
    meta = dict(name=config.model, num_classes=int(backbone.net.num_classes), in_chans=backbone.in_chans,
                img_size=backbone.img_size, small_stem=config.small_stem, num_features=backbone.num_features)
    atomic_torch_save(run.backbone, dict(model=cpu_state(backbone), meta=meta))
    return meta


def load_pretrained(run_or_dir: Run | str | os.PathLike,
                    device: str | torch.device = "cpu") -> tuple[Backbone, dict[str, Any]]:
    """The final backbone of a finished run (eval mode, on ``device``) and its ``pretrain.json`` summary.

    ``run_or_dir``: a ``Run`` or its directory. The file hash of ``backbone.pt`` must equal the summary's
    ``checkpoint_sha256``.
    """
    run_dir = run_or_dir.dir if isinstance(run_or_dir, Run) else Path(run_or_dir)
    summary_path, path = run_dir / PRETRAIN_SUMMARY, run_dir / BACKBONE
    if not summary_path.exists():
        raise FileNotFoundError(f"{summary_path} not found: the pre-training run there has not finished "
                                "(run notebooks/02_pretrain.ipynb or python -m nmtune_lib.pretraining.pretrain first)")
    info = json.loads(summary_path.read_text())
    digest = file_sha256(path)
    if digest != info["checkpoint_sha256"]:
        raise ValueError(f"{path} has sha256 {digest[:12]} but {summary_path} says "
                         f"{info['checkpoint_sha256'][:12]}: the weights were changed after the run")
    meta = info["model"]
    backbone = create_backbone(meta["name"], num_classes=meta["num_classes"], in_chans=meta["in_chans"],
                               img_size=meta["img_size"], small_stem=meta["small_stem"], checkpoint=path)
    device = resolve_device(device) if isinstance(device, str) else device
    return backbone.to(device).eval(), info
