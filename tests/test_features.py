"""Tests of nmtune_lib.spectrum.features: shapes, eval = plain pre_logits, seeded views, the on-disk cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nmtune_lib.data.augment import random_resized_crop, to_float
from nmtune_lib.data.datasets import ImageSet
from nmtune_lib.spectrum.features import AUG_BLOCK, extract_features, view_generator
from nmtune_lib.pretraining.models import create_backbone

N = 40


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)  # only the test seeds globally: timm initialises weights from the global generator
    return create_backbone("resnet_tiny", num_classes=10)


@pytest.fixture(scope="module")
def images():
    gen = torch.Generator().manual_seed(0)
    return ImageSet(torch.randint(0, 256, (N, 1, 28, 28), generator=gen, dtype=torch.uint8),
                    torch.randint(0, 10, (N,), generator=gen), tuple(str(i) for i in range(10)), "random/test")


def count_calls(backbone, monkeypatch) -> list[int]:
    """Record the batch size of every ``pre_logits`` call."""
    calls, original = [], backbone.pre_logits

    def counting(x):
        calls.append(len(x))
        return original(x)

    monkeypatch.setattr(backbone, "pre_logits", counting)
    return calls


def test_eval_features_are_pre_logits(backbone, images):
    out = extract_features(backbone, images, batch_size=16, progress=False)
    assert out.shape == (N, backbone.num_features) and out.dtype == torch.float32
    with torch.no_grad():
        expected = backbone.eval().pre_logits(to_float(images.images))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_result_is_an_ordinary_tensor_for_training(backbone, images):
    out = extract_features(backbone, images, transform="weak", views=2, batch_size=16, progress=False)
    assert not out.is_inference()
    head = torch.nn.Linear(out.shape[-1], 3)
    head(out).sum().backward()  # would raise for an inference tensor
    assert head.weight.grad is not None


def test_backbone_mode_restored(backbone, images):
    backbone.train()
    extract_features(backbone, images, batch_size=64, progress=False)
    assert backbone.training
    backbone.eval()


def test_views_shape_determinism_and_seed(backbone, images):
    a = extract_features(backbone, images, transform="weak", views=3, seed=7, batch_size=16, progress=False)
    b = extract_features(backbone, images, transform="weak", views=3, seed=7, batch_size=64, progress=False)
    c = extract_features(backbone, images, transform="weak", views=3, seed=8, batch_size=16, progress=False)
    assert a.shape == (N, 3, backbone.num_features)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # same seed, other batch size: same views
    assert not torch.allclose(a, c)  # another seed: other views
    assert not torch.allclose(a[:, 0], a[:, 1])  # views of one image differ
    eval_features = extract_features(backbone, images, batch_size=64, progress=False)
    assert not torch.allclose(a[:, 0], eval_features)


def test_view_k_is_the_documented_augmentation(backbone, images):
    out = extract_features(backbone, images, transform="weak", views=2, seed=3, batch_size=64, progress=False)
    assert N <= AUG_BLOCK  # one block: view 1 of every image comes from view_generator(3, 1, 0)
    with torch.no_grad():
        x = random_resized_crop(to_float(images.images), view_generator(3, 1, 0))
        expected = backbone.eval().pre_logits(x)
    torch.testing.assert_close(out[:, 1], expected, atol=1e-5, rtol=1e-5)


def test_cache_hit_and_miss(backbone, images, tmp_path, monkeypatch):
    calls = count_calls(backbone, monkeypatch)
    first = extract_features(backbone, images, batch_size=16, cache_dir=tmp_path, checkpoint_hash="aaa",
                             progress=False)
    assert sum(calls) == N and len(list(tmp_path.glob("*.pt"))) == 1
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temp file

    def must_not_run(x):
        raise AssertionError("the backbone ran although the cache holds these features")

    monkeypatch.setattr(backbone, "pre_logits", must_not_run)
    second = extract_features(backbone, images, batch_size=16, cache_dir=tmp_path, checkpoint_hash="aaa",
                              progress=False)
    assert torch.equal(first, second)

    monkeypatch.undo()
    calls = count_calls(backbone, monkeypatch)
    extract_features(backbone, images, batch_size=16, cache_dir=tmp_path, checkpoint_hash="bbb", progress=False)
    assert sum(calls) == N  # another checkpoint: recomputed, not read
    extract_features(backbone, images.subset(torch.arange(N // 2)), batch_size=16, cache_dir=tmp_path,
                     checkpoint_hash="bbb", progress=False)
    assert sum(calls) == N + N // 2  # a subset under the same name: recomputed
    extract_features(backbone, images, transform="weak", views=2, seed=0, batch_size=64, cache_dir=tmp_path,
                     checkpoint_hash="bbb", progress=False)
    extract_features(backbone, images, transform="weak", views=2, seed=1, batch_size=64, cache_dir=tmp_path,
                     checkpoint_hash="bbb", progress=False)
    assert sum(calls) == N + N // 2 + 4 * N  # other transform and other seed: each computed once
    assert len(list(tmp_path.glob("*.pt"))) == 5


def test_cache_without_checkpoint_hash_follows_the_weights(backbone, images, tmp_path, monkeypatch):
    calls = count_calls(backbone, monkeypatch)
    extract_features(backbone, images, batch_size=64, cache_dir=tmp_path, progress=False)
    extract_features(backbone, images, batch_size=64, cache_dir=tmp_path, progress=False)
    assert sum(calls) == N
    changed = create_backbone("resnet_tiny", num_classes=10)
    changed.load_state_dict(backbone.state_dict())
    with torch.no_grad():
        changed.net.fc.weight.add_(1.0)
    changed_calls = count_calls(changed, monkeypatch)
    extract_features(changed, images, batch_size=64, cache_dir=tmp_path, progress=False)
    assert sum(changed_calls) == N


@pytest.mark.parametrize("kwargs, match", [
    (dict(transform="strong"), "unknown transform"),
    (dict(transform="eval", views=2), "views"),
    (dict(transform="weak", views=0), "views"),
    (dict(batch_size=0), "batch_size"),
])
def test_bad_arguments_raise(backbone, images, kwargs, match):
    with pytest.raises(ValueError, match=match):
        extract_features(backbone, images, progress=False, **kwargs)


def test_views_follow_the_tasks_view_augment_and_are_cached_apart(backbone, images, tmp_path):
    import inspect

    from nmtune_lib.data.augment import ViewAugment

    # the reference code's view crop: RandomResizedCrop(scale=(0.8, 1.0)), torchvision's ratio, flip
    assert ViewAugment() == ViewAugment((0.8, 1.0), (3 / 4, 4 / 3), True)
    assert inspect.signature(random_resized_crop).parameters["scale"].default == (0.8, 1.0)
    no_flip = ViewAugment(flip=False)
    out = extract_features(backbone, images, transform=no_flip, views=2, seed=3, batch_size=64, cache_dir=tmp_path,
                           checkpoint_hash="c", progress=False)
    with torch.no_grad():
        x = random_resized_crop(to_float(images.images), view_generator(3, 1, 0), flip=False)
        expected = backbone.eval().pre_logits(x)
    torch.testing.assert_close(out[:, 1], expected, atol=1e-5, rtol=1e-5)
    flipped = extract_features(backbone, images, transform=ViewAugment(flip=True), views=2, seed=3, batch_size=64,
                               cache_dir=tmp_path, checkpoint_hash="c", progress=False)
    assert not torch.equal(out, flipped)
    assert len(list(tmp_path.glob("*.pt"))) == 2 and any("noflip" in p.name for p in tmp_path.glob("*.pt"))


def test_view_interpolation_resamples_the_same_crops_and_is_cached_apart(backbone, images, tmp_path):
    from nmtune_lib.data.augment import ViewAugment
    from nmtune_lib.config import StudyConfig
    from nmtune_lib.transfer.downstream import view_augment

    # the default keeps the name bilinear views always had (their cache files and results stay valid)
    assert ViewAugment(flip=False).name == "weak_s0.8-1_r0.75-1.33_noflip"
    nearest = ViewAugment(flip=False, interpolation="nearest")
    assert nearest.name == "weak_s0.8-1_r0.75-1.33_noflip_nearest"
    assert view_augment(StudyConfig.from_preset("smoke", view_interpolation="nearest"), False) == nearest
    with pytest.raises(ValueError, match="interpolation='area'; accepted: bilinear, nearest, bicubic"):
        ViewAugment(interpolation="area")
    x = to_float(images.images)
    near, bilinear = (a(x, view_generator(3, 1, 0)) for a in (nearest, ViewAugment(flip=False)))
    # nearest copies pixels: every value of a view is one of its image's; bilinear mixes neighbours
    assert all(torch.isin(near[i], x[i]).all() for i in range(N))
    assert not any(torch.isin(bilinear[i], x[i]).all() for i in range(N))
    # the same crops (one generator state), resampled otherwise: on a ramp that rises 1/27 per column, nearest and
    # bilinear differ by at most half a column's step; crops of another draw differ by more
    ramp = (torch.arange(28.0) / 27).expand(N, 1, 28, 28)
    near_ramp, bilinear_ramp, other_crops = (a(ramp, view_generator(3, 1, seed)) for a, seed in (
        (nearest, 0), (ViewAugment(flip=False), 0), (ViewAugment(flip=False), 1)))
    assert (near_ramp - bilinear_ramp).abs().max() <= 0.5 / 27 + 1e-6
    assert (other_crops - bilinear_ramp).abs().max() > 2 / 27
    for mode in ("bilinear", "nearest", "bicubic"):  # an identity crop is the image under every interpolation
        identity = ViewAugment((1.0, 1.0), (1.0, 1.0), False, mode)(x, view_generator(3, 1, 0))
        torch.testing.assert_close(identity, x, atol=1e-5, rtol=0)
    kwargs = dict(views=2, seed=3, batch_size=64, cache_dir=tmp_path, checkpoint_hash="c", progress=False)
    a = extract_features(backbone, images, transform=ViewAugment(flip=False), **kwargs)
    b = extract_features(backbone, images, transform=nearest, **kwargs)
    assert not torch.equal(a, b) and len(list(tmp_path.glob("*.pt"))) == 2
    with torch.no_grad():
        expected = backbone.eval().pre_logits(near)
    torch.testing.assert_close(b[:, 1], expected, atol=1e-5, rtol=1e-5)


def test_view_blur_blurs_the_same_views_and_is_cached_apart(backbone, images, tmp_path):
    from torchvision.transforms.v2.functional import gaussian_blur

    from nmtune_lib.data.augment import ViewAugment
    from nmtune_lib.config import StudyConfig
    from nmtune_lib.transfer.downstream import view_augment

    blurred = ViewAugment(flip=False, interpolation="nearest", blur=0.41)
    assert blurred.name == "weak_s0.8-1_r0.75-1.33_noflip_nearest_blur0.41"
    assert ViewAugment(flip=False, blur=0).name == "weak_s0.8-1_r0.75-1.33_noflip"  # no blur: the old name
    assert view_augment(StudyConfig.from_preset("smoke", view_interpolation="nearest", view_blur=0.41),
                        False) == blurred
    for bad in (-0.1, float("nan"), float("inf"), True, "0.41", np.float32(-0.1)):
        with pytest.raises(ValueError, match="accepted: a finite Gaussian sigma >= 0"):
            ViewAugment(blur=bad)
    assert ViewAugment(flip=False, interpolation="nearest", blur=np.float32(0.41)).name == blurred.name  # any width
    x = to_float(images.images)
    sharp = ViewAugment(flip=False, interpolation="nearest")(x, view_generator(3, 1, 0))
    soft = blurred(x, view_generator(3, 1, 0))
    # the same crops (one generator state), each blurred by a 5×5 Gaussian of σ 0.41 (radius ceil(3σ) = 2)
    torch.testing.assert_close(soft, gaussian_blur(sharp, [5, 5], [0.41, 0.41]), atol=0, rtol=0)
    assert (soft - sharp).abs().max() > 0.05
    # a blur lowers the views' total variation
    tv = lambda v: (v.diff(dim=-1).abs().sum() + v.diff(dim=-2).abs().sum()).item()  # noqa: E731
    assert tv(soft) < 0.8 * tv(sharp)
    kwargs = dict(views=2, seed=3, batch_size=64, cache_dir=tmp_path, checkpoint_hash="c", progress=False)
    a = extract_features(backbone, images, transform=ViewAugment(flip=False, interpolation="nearest"), **kwargs)
    b = extract_features(backbone, images, transform=blurred, **kwargs)
    assert not torch.equal(a, b) and len(list(tmp_path.glob("*.pt"))) == 2
    with torch.no_grad():
        expected = backbone.eval().pre_logits(soft)
    torch.testing.assert_close(b[:, 1], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("damage", ["flip_byte", "truncate"])
def test_a_damaged_cache_file_is_detected_and_recomputed(backbone, images, tmp_path, damage):
    clean = extract_features(backbone, images, batch_size=64, cache_dir=tmp_path, checkpoint_hash="d", progress=False)
    (path,) = tmp_path.glob("*.pt")
    raw = bytearray(path.read_bytes())
    if damage == "flip_byte":  # a byte inside the stored tensor: the file still loads, the values are wrong
        stored = clean.numpy().tobytes()
        start = bytes(raw).find(stored[:64])
        assert start >= 0 and len(stored) > 1000
        raw[start + 1000] ^= 0xFF
        path.write_bytes(bytes(raw))
    else:
        path.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.warns(UserWarning, match=f"feature cache {path} .*recomputing"):
        again = extract_features(backbone, images, batch_size=64, cache_dir=tmp_path, checkpoint_hash="d",
                                 progress=False)
    assert torch.equal(again, clean)
    assert torch.equal(extract_features(backbone, images, batch_size=64, cache_dir=tmp_path, checkpoint_hash="d",
                                        progress=False), clean)  # the file was rewritten whole
