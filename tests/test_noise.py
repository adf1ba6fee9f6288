"""Label-noise injection: exact counts, conventions, determinism, manifests, bad input."""
import json

import numpy as np
import pytest
import torch

from nmtune_lib.config import StudyConfig
from nmtune_lib.data.noise import (FASHION_MNIST_MAP, inject_label_noise, labels_sha256, noisy_labels_for_run,
                              read_manifest, swap_captions)
from nmtune_lib.run import MANIFEST, NOISY_LABELS, Run

C = 10
LABELS = torch.arange(1000) % C  # 100 per class


@pytest.mark.parametrize("kind", ["symmetric", "asymmetric", "instance"])
@pytest.mark.parametrize("ratio", [0.0, 0.05, 0.1, 0.2, 0.3, 0.333])
def test_exact_realised_ratio(kind, ratio):
    images = torch.randint(0, 256, (len(LABELS), 1, 4, 4), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    noisy = inject_label_noise(LABELS, ratio, kind=kind, num_classes=C, seed=3, images=images)
    expected = round(ratio * len(LABELS))
    assert int(noisy.flipped.sum()) == expected
    assert noisy.ratio == expected / len(LABELS)
    assert torch.equal(noisy.flipped, noisy.labels != LABELS)


def test_symmetric_never_lands_on_true_label_and_spreads_over_others():
    noisy = inject_label_noise(torch.zeros(9000, dtype=torch.int64), 0.5, num_classes=C, seed=0)
    assert not (noisy.labels[noisy.flipped] == 0).any()
    counts = np.bincount(noisy.labels[noisy.flipped].numpy(), minlength=C)
    assert counts[0] == 0 and counts[1:].min() > 400  # ~500 each of the 9 other classes


def test_transition_rows_sum_to_class_counts_and_orientation():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    noisy = inject_label_noise(labels, 0.3, num_classes=3, seed=1)
    np.testing.assert_array_equal(noisy.transition.sum(1), [50, 30, 20])
    np.testing.assert_array_equal(noisy.transition.sum(0), np.bincount(noisy.labels.numpy(), minlength=3))
    assert noisy.transition.trace() == 70
    i, j = int(labels[noisy.flipped][0]), int(noisy.labels[noisy.flipped][0])
    assert noisy.transition[i, j] >= 1  # rows = clean, columns = noisy


def test_asymmetric_follows_the_fashion_mnist_pairs():
    noisy = inject_label_noise(LABELS, 0.3, kind="asymmetric", num_classes=C, seed=0, class_map=FASHION_MNIST_MAP)
    for clean, new in zip(LABELS[noisy.flipped].tolist(), noisy.labels[noisy.flipped].tolist()):
        assert FASHION_MNIST_MAP[clean] == new
    assert not noisy.flipped[LABELS == 8].any()  # Bag has no partner


def test_asymmetric_default_map_is_cyclic():
    noisy = inject_label_noise(LABELS, 0.2, kind="asymmetric", num_classes=C, seed=0)
    assert torch.equal(noisy.labels[noisy.flipped], (LABELS[noisy.flipped] + 1) % C)


def test_instance_noise_depends_on_the_image():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (len(LABELS), 1, 8, 8), generator=gen).to(torch.uint8)
    a = inject_label_noise(LABELS, 0.2, kind="instance", num_classes=C, seed=0, images=images)
    b = inject_label_noise(LABELS, 0.2, kind="instance", num_classes=C, seed=0, images=images.flip(0))
    assert not torch.equal(a.flipped, b.flipped)
    assert not (a.labels[a.flipped] == LABELS[a.flipped]).any()


def test_same_seed_same_labels_other_seed_other_labels():
    a = inject_label_noise(LABELS, 0.2, num_classes=C, seed=7)
    b = inject_label_noise(LABELS, 0.2, num_classes=C, seed=7)
    c = inject_label_noise(LABELS, 0.2, num_classes=C, seed=8)
    assert torch.equal(a.labels, b.labels) and a.manifest_hash == b.manifest_hash
    assert not torch.equal(a.labels, c.labels) and a.manifest_hash != c.manifest_hash


@pytest.mark.parametrize("kwargs,match", [
    (dict(ratio=1.0), r"\[0, 1\)"),
    (dict(ratio=-0.1), r"\[0, 1\)"),
    (dict(ratio=0.9), r"\(C−1\)/C"),
    (dict(ratio=0.1, kind="pairflip"), "symmetric, asymmetric, instance"),
    (dict(ratio=0.1, num_classes=5), r"\[0, 5\)"),
    (dict(ratio=0.1, kind="instance"), "images="),
])
def test_bad_input_raises(kwargs, match):
    ratio = kwargs.pop("ratio")
    with pytest.raises(ValueError, match=match):
        inject_label_noise(LABELS, ratio, **kwargs)


def test_non_integer_and_out_of_range_labels_raise():
    with pytest.raises(ValueError, match="integer"):
        inject_label_noise(LABELS.float(), 0.1)
    with pytest.raises(ValueError, match="integer"):
        inject_label_noise(np.array([0.5, 1.0]), 0.1)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        inject_label_noise(torch.tensor([0, 3, -1]), 0.1, num_classes=10)


def test_swap_captions_is_an_exact_derangement():
    captions = [f"caption {i}" for i in range(200)]
    swapped, wrong = swap_captions(captions, 0.3, seed=4)
    assert wrong.sum() == 60
    changed = np.array([a != b for a, b in zip(captions, swapped)])
    np.testing.assert_array_equal(changed, wrong)  # no fixed point inside the subset
    assert sorted(swapped) == sorted(captions)  # a permutation
    assert swap_captions(captions, 0.3, seed=4)[0] == swapped


def test_manifest_written_beside_results_and_reloaded(tmp_path):
    from nmtune_lib.data.datasets import ImageSet

    train = ImageSet(torch.zeros(len(LABELS), 1, 2, 2, dtype=torch.uint8), LABELS, tuple("abcdefghij"), "toy/train")
    cfg = StudyConfig.from_preset("smoke", noise_kind="symmetric", run_root=str(tmp_path))
    run = Run.of(cfg, 0.2, 3)
    noisy = noisy_labels_for_run(run, train)
    assert {p.name for p in run.dir.iterdir()} == {MANIFEST, NOISY_LABELS}
    manifest = read_manifest(run.dir)
    for key in ("kind", "requested_ratio", "realised_ratio", "seed", "num_samples", "num_classes",
                "clean_labels_sha256", "noisy_labels_sha256", "transition"):
        assert key in manifest
    assert manifest["realised_ratio"] == 0.2 and manifest["num_samples"] == 1000 and manifest["num_classes"] == 10
    assert manifest["noisy_labels_sha256"] == labels_sha256(np.load(run.noisy_labels))
    assert manifest["seed"] == 3 and manifest["dataset"] == "toy/train"
    assert torch.equal(noisy_labels_for_run(run, train).labels, noisy.labels)  # reload agrees
    shifted = ImageSet(train.images, (LABELS + 1) % C, train.classes, "toy/train")
    with pytest.raises(ValueError, match="is not the noise this run asks for"):
        noisy_labels_for_run(run, shifted)  # other clean labels, same run folder: refused
    json.loads(run.manifest.read_text())


@pytest.mark.parametrize("damage", ["flip_label_byte", "truncate_labels", "truncate_manifest", "delete_labels"])
def test_damaged_noise_files_are_named_and_rewritten(tmp_path, damage):
    from nmtune_lib.data.datasets import ImageSet

    train = ImageSet(torch.zeros(len(LABELS), 1, 2, 2, dtype=torch.uint8), LABELS, tuple("abcdefghij"), "toy/train")
    run = Run.of(StudyConfig.from_preset("smoke", run_root=str(tmp_path)), 0.2, 3)
    noisy = noisy_labels_for_run(run, train)
    clean_bytes = {p: p.read_bytes() for p in (run.manifest, run.noisy_labels)}
    target = run.manifest if damage == "truncate_manifest" else run.noisy_labels
    raw = bytearray(target.read_bytes())
    if damage == "flip_label_byte":
        raw[-5] ^= 0x01  # a label in the data block: still a valid .npy, other values
        target.write_bytes(bytes(raw))
    elif damage == "delete_labels":
        target.unlink()
    else:
        target.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.warns(UserWarning, match=f"{target} is damaged or missing; rewritten"):
        again = noisy_labels_for_run(run, train)
    assert torch.equal(again.labels, noisy.labels)
    assert {p: p.read_bytes() for p in clean_bytes} == clean_bytes  # the very files of the first write

