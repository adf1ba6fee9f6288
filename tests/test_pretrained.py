"""A local pre-trained checkpoint standing in for pre-training (nmtune_lib.pretraining.pretrained)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr
from safetensors.torch import save_file

from conftest import needs_fmnist, nmtune_sweep
from nmtune_lib.pretraining.checkpoints import load_pretrained
from nmtune_lib.config import StudyConfig
from nmtune_lib.pretraining.models import create_backbone
from nmtune_lib.pretraining.pretrained import backbone_from_weights, check_pretrained, read_weights, weights_path
from nmtune_lib.transfer.downstream import MEASURED


def _tiny(seed: int = 0, name: str = "resnet_tiny"):
    torch.manual_seed(seed)
    return create_backbone(name, num_classes=7, in_chans=3, img_size=32)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_weights_files_load_exactly_with_their_width_and_channels(tmp_path, suffix):
    net = _tiny().net
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    else:  # a training script's checkpoint: under "state_dict", saved from a DDP-wrapped model
        torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 3}, path)
    backbone = backbone_from_weights("resnet_tiny", read_weights(path), img_size=32)
    assert backbone.net.num_classes == 7 and backbone.in_chans == 3
    for k, v in net.state_dict().items():
        assert torch.equal(backbone.net.state_dict()[k], v), k
    x = torch.rand(4, 3, 32, 32)
    net.eval(), backbone.eval()
    assert torch.equal(backbone.pre_logits(x), _tiny().eval().pre_logits(x))


def test_weights_of_another_architecture_are_refused_naming_keys(tmp_path):
    path = tmp_path / "narrow.safetensors"
    save_file(_tiny(name="resnet_narrow").net.state_dict(), str(path))
    with pytest.raises(ValueError, match="do not fit timm model .resnet50.*other shapes .file vs model. conv1.weight"):
        backbone_from_weights("resnet50", read_weights(path), img_size=32)
    torch.save({"fc.weight": torch.zeros(10, 128)}, tmp_path / "head_only.pt")
    with pytest.raises(ValueError, match="missing keys conv1.weight"):
        backbone_from_weights("resnet_tiny", read_weights(tmp_path / "head_only.pt"), img_size=28)


def test_the_grid_and_the_files_are_checked_before_any_compute(tmp_path):
    one = tmp_path / "model.safetensors"
    save_file(_tiny().net.state_dict(), str(one))
    config = StudyConfig.from_preset("smoke", pretrained=str(one), run_root=str(tmp_path))
    with pytest.raises(ValueError, match="is one model but the grid has noise ratios"):
        check_pretrained(config)
    check_pretrained(config.replace(noise_ratios=(0.0,)))
    per_run = StudyConfig.from_preset("smoke", pretrained=str(tmp_path / "r{noise_ratio}_s{seed}.pt"),
                                      run_root=str(tmp_path))
    assert weights_path(per_run, 0.2, 0) == tmp_path / "r0.2_s0.pt"
    with pytest.raises(FileNotFoundError, match=r"r0\.0_s0\.pt, .*r0\.2_s0\.pt"):
        check_pretrained(per_run)
    with pytest.raises(ValueError, match="unknown file type"):
        check_pretrained(config.replace(noise_ratios=(0.0,), pretrained=str(tmp_path / "model.onnx")))
    with pytest.raises(ValueError, match="bad placeholder"):
        check_pretrained(config.replace(pretrained=str(tmp_path / "{ratio}.pt")))
    # the sweep's preflight says so before any run folder exists
    result = nmtune_sweep(tmp_path / "runs", "--set", f"pretrained={tmp_path / 'nowhere.pt'}", "--set",
                          "noise_ratios=[0]")
    assert result.returncode != 0 and "nowhere.pt" in result.stderr
    assert not (tmp_path / "runs" / "smoke" / "fashion_mnist").exists()


@needs_fmnist
def test_a_trained_backbone_exported_and_imported_gives_the_same_study(smoke_sweep, tmp_path):
    """The smoke sweep's 20 % backbone, saved as a plain timm state dict and imported through the sweep, is
    analysed and tuned exactly as the trained run was: identical spectrum and transfer results."""
    trained = smoke_sweep / "smoke" / "fashion_mnist" / "symmetric-0.20" / "seed0"
    backbone, _ = load_pretrained(trained)
    weights = tmp_path / "exported.safetensors"
    save_file(backbone.net.state_dict(), str(weights))
    result = nmtune_sweep(tmp_path, "--set", f"pretrained={weights}", "--set", "noise_ratios=[0.2]",
                          "--no-summary", timeout=900)  # a one-ratio summary: test_clip's sweep
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    imported = tmp_path / "smoke" / "fashion_mnist" / "symmetric-0.20" / "seed0"
    info = json.loads((imported / "pretrain.json").read_text())
    assert info["source"] == "pretrained" and info["epochs"] == 0 and info["weights"] == str(weights)
    assert info["final_test_acc"] == pytest.approx(json.loads((trained / "pretrain.json").read_text())
                                                   ["final_test_acc"], abs=1e-9)
    assert not (imported / "checkpoint.pt").exists()
    again, _ = load_pretrained(imported)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in backbone.state_dict().items())
    for name in ("spectrum.nc", "transfer.nc"):
        with xr.open_dataset(trained / name) as a, xr.open_dataset(imported / name) as b:
            for var in a.data_vars:
                if var.endswith("sha256") or var in MEASURED:  # provenance (another file by design), time, memory
                    continue
                x, y = a[var].values, b[var].values
                same = np.array_equal(x, y, equal_nan=x.dtype.kind in "fc")
                assert same, (name, var)
