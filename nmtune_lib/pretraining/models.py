"""Backbones on timm, and the frozen-feature function every later step uses.

``create_backbone`` builds a timm model by name and wraps it in ``Backbone``, which owns the input convention
(float images in [0, 1], N×C×H×W, normalised inside; channel count and size adapted to what the network was built for)
so that downstream tasks with other image sizes or channel counts can be fed as they are. Frozen features are the timm
pre-logit vector: ``forward_features`` then ``forward_head(pre_logits=True)`` (docs/paper.md §3), of width
``Backbone.num_features`` (D).

Stems. A timm ResNet's stem (7×7 stride-2 conv + 3×3 stride-2 max-pool) shrinks a 28 px image to 7 px before the
first stage, leaving 1×1 for the last one. ``small_stem=True`` swaps it for a 3×3 stride-1 conv without max-pool
(28 px stay 28 px): the usual CIFAR-style choice for ResNet-18/50 on a GPU (the ``gpu`` preset).

Small ResNets for CPU runs are registered with timm under their own names, so ``timm.create_model`` and
``create_backbone`` find them like any other model. Each has one BasicBlock per stage and a stem of its own: one 3×3
stride-2 conv of the first stage's width, no max-pool (28 px → 14 px; stages at 14/7/4/2 px). Measured on the project's
2-core CPU (Fashion-MNIST, same recipe; table in the ``pretrain`` docstring): ``resnet_tiny`` with this stem reaches
89.6 % in 2 epochs (33 s), the same widths with the timm stem 89.3 % in 3 epochs (about the same time at 5,600 vs
4,300 img/s), ``resnet_narrow`` with the timm stem 89.4 % in 2 epochs at 1.6× the time; the stride-1 stem costs
3-4× per image.

- ``resnet_tiny``   widths 16-32-64-128 (D = 128): the ``smoke`` and ``default`` CPU backbone.
- ``resnet_narrow`` widths 32-64-128-256 (D = 256): about 3× the cost per image of ``resnet_tiny``.

The ``gpu`` preset uses timm's ``resnet18`` with ``small_stem=True`` at 32 px on a GPU: measured 45,000 img/s on
one H100 (bf16, channels_last, batch 512, bench/pretrain_throughput.py), so a 30-epoch Fashion-MNIST run takes about a
minute.
"""
from __future__ import annotations

import difflib
import os

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, is_model, register_model
from timm.models.resnet import BasicBlock, ResNet

# Fashion-MNIST statistics (train split, pixel values in [0, 1]); used for every single-channel dataset.
GRAY_MEAN, GRAY_STD = (0.2860,), (0.3530,)
RGB_MEAN, RGB_STD = timm.data.IMAGENET_DEFAULT_MEAN, timm.data.IMAGENET_DEFAULT_STD


def _cfg(**kwargs) -> dict:
    """timm pretrained-config of an untrained small-image model (no weights to download)."""
    return dict(url="", num_classes=10, input_size=(1, 28, 28), pool_size=(2, 2), crop_pct=1.0,
                interpolation="bilinear", mean=GRAY_MEAN, std=GRAY_STD, first_conv="conv1", classifier="fc", **kwargs)


# timm's register_model reads the module's ``default_cfgs`` when the decorator runs, so it must exist first.
default_cfgs = generate_default_cfgs({"resnet_tiny": _cfg(), "resnet_narrow": _cfg()})


def _small_resnet(variant: str, channels: tuple[int, ...], pretrained: bool = False, **kwargs) -> ResNet:
    """A timm ResNet with one BasicBlock per stage and a 3×3 stride-2 stem of width ``channels[0]``, no max-pool."""
    net = build_model_with_cfg(ResNet, variant, pretrained, block=BasicBlock, layers=(1, 1, 1, 1), channels=channels,
                               **kwargs)
    width = channels[0]
    # timm's single-conv stem is always 64 wide; make it the first stage's width, so that block needs no projection.
    net.conv1 = _stem_conv(net.conv1.in_channels, width, stride=2)
    net.bn1 = type(net.bn1)(width)
    net.maxpool = nn.Identity()
    block = net.layer1[0]
    block.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
    nn.init.kaiming_normal_(block.conv1.weight, mode="fan_out", nonlinearity="relu")  # timm's ResNet init
    block.downsample = None
    net.feature_info = [dict(num_chs=width, reduction=2, module="act1")] + [
        dict(num_chs=c, reduction=2 * 2 ** i, module=f"layer{i + 1}") for i, c in enumerate(channels)]
    return net


@register_model
def resnet_tiny(pretrained: bool = False, **kwargs) -> ResNet:
    """One BasicBlock per stage, widths 16-128 (D = 128), 3×3 stride-2 stem: the smoke and default CPU backbone."""
    return _small_resnet("resnet_tiny", (16, 32, 64, 128), pretrained, **kwargs)


@register_model
def resnet_narrow(pretrained: bool = False, **kwargs) -> ResNet:
    """One BasicBlock per stage, widths 32-256 (D = 256), 3×3 stride-2 stem: a wider CPU backbone."""
    return _small_resnet("resnet_narrow", (32, 64, 128, 256), pretrained, **kwargs)


class Backbone(nn.Module):
    """A timm classifier with its input convention: float images in [0, 1] → normalised → network.

    ``forward`` gives logits N×C (pre-training); ``pre_logits`` gives the frozen features N×D (downstream).
    """

    def __init__(self, net: nn.Module, *, in_chans: int, img_size: int, mean: tuple[float, ...],
                 std: tuple[float, ...], name: str):
        super().__init__()
        self.net, self.in_chans, self.img_size, self.name = net, in_chans, img_size, name
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    @property
    def num_features(self) -> int:
        """D, the width of the pre-logit feature vector."""
        return int(getattr(self.net, "head_hidden_size", None) or self.net.num_features)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Adapt dtype (uint8 → [0, 1]), channels (gray ↔ RGB) and size (bilinear) to the network, then normalise."""
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        if x.shape[1] != self.in_chans:
            if x.shape[1] == 1:
                x = x.expand(-1, self.in_chans, -1, -1)
            elif self.in_chans == 1:
                x = x.mean(1, keepdim=True)
            else:
                raise ValueError(f"cannot feed {x.shape[1]}-channel images to a {self.in_chans}-channel backbone")
        if x.shape[-2:] != (self.img_size, self.img_size):
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.img_size)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits N×C."""
        return self.net(self.prepare(x))

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen features N×D: timm ``forward_features`` → ``forward_head(pre_logits=True)``, no normalisation."""
        return self.net.forward_head(self.net.forward_features(self.prepare(x)), pre_logits=True)


def create_backbone(name: str, *, num_classes: int, in_chans: int = 1, img_size: int = 28, pretrained: bool = False,
                    checkpoint: str | os.PathLike | None = None, small_stem: bool = False) -> Backbone:
    """A timm model ``name`` with ``num_classes`` outputs and ``in_chans`` input channels, wrapped in ``Backbone``.

    ``img_size`` is the side the network is fed (inputs of another size are resized by ``Backbone.prepare``).
    ``small_stem`` swaps the stem for a 3×3 stride-1 convolution without max-pool (keeps 28-32 px images large).
    ``checkpoint`` loads weights saved by ``pretraining.pretrain`` (``{"model": state_dict, ...}``) or a plain state
    dict. Weights are initialised from torch's global RNG, as timm does: seed it (or fork it) around this call.
    """
    check_model(name)
    net = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans)
    if small_stem:
        _use_small_stem(net, in_chans)
    mean, std = {1: (GRAY_MEAN, GRAY_STD), 3: (RGB_MEAN, RGB_STD)}.get(in_chans, ((0.5,) * in_chans, (0.5,) * in_chans))
    backbone = Backbone(net, in_chans=in_chans, img_size=img_size, mean=mean, std=std, name=name)
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        backbone.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    return backbone


def check_model(name: str) -> None:
    """Raise ``ValueError`` naming the closest timm names unless ``name`` is a timm model (the study's own included)."""
    if not is_model(timm.models.split_model_name_tag(name)[0]):
        names = timm.list_models()
        close = difflib.get_close_matches(name, names, n=6, cutoff=0.6)
        raise ValueError(f"unknown model {name!r}; close timm names: {', '.join(close) or 'none'} "
                         f"(all {len(names)} names: timm.list_models())")


def feature_width(name: str, *, small_stem: bool = False) -> int:
    """D, the width of ``name``'s pre-logit features, read from the model built on the meta device (no weights)."""
    with torch.device("meta"):
        return int(create_backbone(name, num_classes=10, small_stem=small_stem).num_features)


def _stem_conv(in_chans: int, width: int, *, stride: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_chans, width, kernel_size=3, stride=stride, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # timm's ResNet init
    return conv


def _use_small_stem(net: nn.Module, in_chans: int) -> None:
    """ResNet-style nets: 3×3 stride-1 first conv keeping its width, max-pool removed."""
    conv = getattr(net, "conv1", None)
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"small_stem needs a ResNet-style single-conv 'conv1'; {type(net).__name__} has none")
    net.conv1 = _stem_conv(in_chans, conv.out_channels, stride=1)
    if hasattr(net, "maxpool"):
        net.maxpool = nn.Identity()


def freeze(backbone: Backbone) -> Backbone:
    """Eval mode, no gradients: the black-box setting of NMTune."""
    backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA if available, else MPS, else CPU; an explicit ``cuda``/``mps`` that is absent raises."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asked for, but CUDA is not available here; accepted here: 'auto', 'cpu'")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device='mps' asked for, but MPS is not available here; accepted here: 'auto', 'cpu'")
    return torch.device(device)
