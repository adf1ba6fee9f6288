"""Backbones: timm names, the small-image stem, the pre-logit feature contract, checkpoints, devices."""
from __future__ import annotations

import hashlib

import pytest
import timm
import torch

from nmtune_lib.files import file_sha256
from nmtune_lib.pretraining.models import Backbone, create_backbone, freeze, resolve_device


def test_unknown_name_lists_close_timm_names():
    with pytest.raises(ValueError) as err:
        create_backbone("resnet_tiney", num_classes=10)
    text = str(err.value)
    assert "'resnet_tiney'" in text and "resnet_tiny" in text and "timm.list_models()" in text


@pytest.mark.parametrize("name", ["resnet_tiny", "resnet_narrow"])
def test_small_resnets_are_registered_with_timm(name):
    assert name in timm.list_models()
    net = timm.create_model(name, num_classes=7, in_chans=1)
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 7)


@pytest.mark.parametrize("name,width", [("resnet_tiny", 128), ("resnet_narrow", 256), ("resnet18", 512)])
@pytest.mark.parametrize("small_stem", [False, True])
def test_pre_logits_shape_is_n_by_num_features(name, width, small_stem):
    model = create_backbone(name, num_classes=10, in_chans=1, img_size=28, small_stem=small_stem).eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        features = model.pre_logits(x)
        logits = model(x)
    assert model.num_features == width
    assert features.shape == (3, model.num_features)
    assert logits.shape == (3, 10)
    # The head is one Linear on the pre-logits (no hidden layer): logits = fc(pre_logits).
    torch.testing.assert_close(model.net.fc(features), logits)


def _stem_output(model: Backbone, x: torch.Tensor) -> torch.Tensor:
    net = model.net
    return net.maxpool(net.act1(net.bn1(net.conv1(model.prepare(x)))))


@pytest.mark.parametrize("name,size", [("resnet_tiny", 28), ("resnet18", 32)])
def test_small_stem_keeps_spatial_size(name, size):
    x = torch.rand(2, 1, size, size)
    small = create_backbone(name, num_classes=10, img_size=size, small_stem=True).eval()
    plain = create_backbone(name, num_classes=10, img_size=size).eval()
    with torch.no_grad():
        assert _stem_output(small, x).shape[-2:] == (size, size)  # 3×3 stride 1, no max-pool
        assert _stem_output(plain, x).shape[-2:][0] < size
        assert small.net.forward_features(small.prepare(x)).shape[-1] == -(-size // 8)  # three stride-2 stages (ceil)
    assert small.net.conv1.kernel_size == (3, 3) and small.net.conv1.stride == (1, 1)
    assert isinstance(small.net.maxpool, torch.nn.Identity)


def test_registered_stem_is_first_stage_width():
    """The small nets' stem has the first stage's width, so that block needs no 1×1 projection."""
    net = create_backbone("resnet_tiny", num_classes=10).net
    assert net.conv1.out_channels == net.layer1[0].conv2.out_channels == 16
    assert net.layer1[0].downsample is None
    assert net.conv1.stride == (2, 2)


def test_prepare_adapts_channels_size_and_dtype():
    rgb = create_backbone("resnet_tiny", num_classes=10, in_chans=3, img_size=32)
    gray_u8 = (torch.rand(2, 1, 28, 28) * 255).to(torch.uint8)
    out = rgb.prepare(gray_u8)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
    gray = create_backbone("resnet_tiny", num_classes=10, in_chans=1, img_size=28)
    assert gray.prepare(torch.rand(2, 3, 28, 28)).shape == (2, 1, 28, 28)


def test_init_is_seeded_by_the_global_rng():
    states = []
    for _ in range(2):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(3)
            states.append(create_backbone("resnet_tiny", num_classes=10).state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_checkpoint_round_trip_and_file_hash(tmp_path):
    model = create_backbone("resnet_tiny", num_classes=10)
    path = tmp_path / "w.pt"
    torch.save({"model": model.state_dict(), "meta": {}}, path)
    again = create_backbone("resnet_tiny", num_classes=10, checkpoint=path)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_freeze():
    model = freeze(create_backbone("resnet_tiny", num_classes=10))
    assert not model.training and not any(p.requires_grad for p in model.parameters())


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present: the missing-CUDA error cannot occur")
def test_cuda_asked_for_but_absent():
    with pytest.raises(ValueError, match=r"device='cuda'.*'auto', 'cpu'"):
        resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")
