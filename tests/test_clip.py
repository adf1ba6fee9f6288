"""Image–text pre-training with caption noise (objective=clip, noise_kind=caption_swap): captions, tokenizer, the
derangement, the loss, and a CLIP run of the smoke preset through pre-training and the whole sweep."""
from __future__ import annotations

import json
import warnings

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import needs_fmnist, nmtune_sweep
from nmtune_lib.data.captions import ATTRIBUTES, BANDS, Tokenizer, attribute_words, captions_for, class_prompts, measure
from nmtune_lib.pretraining.checkpoints import load_pretrained
from nmtune_lib.pretraining.clip import caption_memorisation, clip_loss
from nmtune_lib.config import CAPTION_ATTRIBUTES, StudyConfig
from nmtune_lib.data.datasets import load_dataset, pretraining_data
from nmtune_lib.data.noise import inject_label_noise, noisy_labels_for_run, read_manifest
from nmtune_lib.pretraining.pretrain import pretrain
from nmtune_lib.analysis.tables import folder_table
from nmtune_lib.run import CAPTIONS, Run


def test_clip_loss_equals_a_direct_loop_over_pairs():
    gen = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(7, 5, generator=gen), dim=1)
    text = F.normalize(torch.randn(7, 5, generator=gen), dim=1)
    scale = torch.tensor(14.3)
    total = 0.0
    for i in range(7):
        to_texts = [float(scale * image[i] @ text[j]) for j in range(7)]
        to_images = [float(scale * text[i] @ image[j]) for j in range(7)]
        total += -to_texts[i] + torch.logsumexp(torch.tensor(to_texts), 0).item()
        total += -to_images[i] + torch.logsumexp(torch.tensor(to_images), 0).item()
    assert clip_loss(image, text, scale).item() == pytest.approx(total / 14, rel=1e-5)


class _LookupModel:
    """Images and captions are ids into fixed embedding tables (known similarities)."""

    def __init__(self, image_emb, text_emb):
        self.image_emb, self.text_emb = image_emb, text_emb

    def encode_image(self, ids):
        return self.image_emb[ids[:, 0]]

    def encode_text(self, tokens):
        return self.text_emb[tokens[:, 0]]


def test_caption_memorisation_compares_each_image_with_its_own_two_captions():
    # image i sits on text i; images 0 and 1 are closer to caption 3 than to caption 0 / 1 resp.
    texts = F.normalize(torch.eye(4) + 0.0, dim=1)
    images = texts.clone()
    images[0] = F.normalize(torch.tensor([0.4, 0.0, 0.0, 0.6]), dim=0)
    images[1] = F.normalize(torch.tensor([0.0, 0.3, 0.0, 0.7]), dim=0)
    model = _LookupModel(images, texts)
    ids = torch.arange(4)[:, None]
    own = ids.clone()
    swapped = torch.tensor([[3], [3], [0], [0]])  # images 2, 3: closer to their own caption
    assert caption_memorisation(model, ids, swapped, own) == (0.5, 0.5)
    # a swap onto an identical text is left out: image 3's swapped caption is now its own text
    swapped[3] = 3
    noisy, clean = caption_memorisation(model, ids, swapped, own)
    assert (noisy, clean) == pytest.approx((2 / 3, 1 / 3))
    noisy, clean = caption_memorisation(model, ids, own, own)  # nothing distinct: no measure
    assert noisy != noisy and clean != clean


@pytest.mark.parametrize("ratio", [0.0, 0.05, 0.3, 0.77])
def test_caption_swap_is_an_exact_derangement_of_a_seeded_subset(ratio):
    labels = torch.arange(1000) % 10
    noisy = inject_label_noise(labels, ratio, kind="caption_swap", seed=3)
    source, n = noisy.caption_source, round(ratio * 1000)
    moved = source != torch.arange(1000)
    assert int(moved.sum()) == n and torch.equal(moved, noisy.flipped) and noisy.ratio == n / 1000
    assert sorted(source[moved].tolist()) == sorted(torch.nonzero(moved).squeeze(1).tolist())  # a permutation
    assert torch.equal(noisy.labels, labels[source])  # the class each caption describes
    again = inject_label_noise(labels, ratio, kind="caption_swap", seed=3)
    assert torch.equal(again.caption_source, source) and again.manifest_hash == noisy.manifest_hash
    assert "caption_source_sha256" in noisy.manifest()
    if n:
        other = inject_label_noise(labels, ratio, kind="caption_swap", seed=4)
        assert not torch.equal(other.caption_source, source)


@needs_fmnist
def test_captions_describe_their_own_image_and_are_deterministic_per_seed():
    images = load_dataset("fashion_mnist", "test")
    x, y = images.images[:300], images.labels[:300]
    captions = captions_for(x, y, images.classes, seed=0)
    assert captions == captions_for(x, y, images.classes, seed=0)
    assert captions != captions_for(x, y, images.classes, seed=1)
    values, named = measure(x), attribute_words(measure(x))
    for i, caption in enumerate(captions):
        for attribute, (low, high) in ATTRIBUTES.items():
            if f"{low} " in caption or f"{low}," in caption:
                assert values[attribute][i] < BANDS[attribute][0], (caption, attribute)
            if f"{high} " in caption or f"{high}," in caption:
                assert values[attribute][i] > BANDS[attribute][1], (caption, attribute)
        assert set(named[i]) >= {w for w in sum(ATTRIBUTES.values(), ()) if f"{w} " in caption or f"{w}," in caption}
    assert sum(bool(n) for n in named) > 250  # most images get at least one attribute
    tokenizer = Tokenizer.for_classes(images.classes)
    tokens = tokenizer(captions + ["a photo of a zebra."])
    eos, pad = tokenizer.vocab.index("<eos>"), 0
    assert tokens.shape == (301, 16) and (tokens[:, 0] == tokenizer.vocab.index("<sos>")).all()
    assert ((tokens == eos).sum(1) == 1).all() and tokens[-1, 5] == tokenizer.vocab.index("<unk>")
    assert tokens[-1, 7] == eos and tokens[-1, 8:].eq(pad).all()
    prompts = class_prompts(images.classes)
    assert len(prompts) == 10 and all(len(p) >= 6 for p in prompts) and "a photo of a sweater." in prompts[2]


ATTRIBUTE_WORDS = {w for pair in ATTRIBUTES.values() for w in pair}


def _without_attributes(caption: str) -> str:
    """The caption with its attribute words (and the comma between two) taken out."""
    kept = [w for w in caption.replace(",", " ").split() if w not in ATTRIBUTE_WORDS]
    return " ".join(kept)


@needs_fmnist
def test_captions_without_attributes_are_the_full_captions_without_those_words():
    images = load_dataset("fashion_mnist", "test")
    x, y = images.images[:300], images.labels[:300]
    full = captions_for(x, y, images.classes, seed=5)
    plain = captions_for(x, y, images.classes, seed=5, attributes=())
    assert not any(w in ATTRIBUTE_WORDS for c in plain for w in c.replace(",", " ").replace(".", " ").split())
    assert plain == [_without_attributes(c) for c in full]  # the same templates and synonyms, drawn alike
    assert sum(a != b for a, b in zip(full, plain)) > 250  # most captions lose an attribute
    no_brightness = captions_for(x, y, images.classes, seed=5, attributes=("size", "shape"))
    assert not any(w in ATTRIBUTES["brightness"] for c in no_brightness for w in c.replace(",", " ").split())
    assert any(w in ATTRIBUTES["size"] for c in no_brightness for w in c.replace(",", " ").split())
    assert [_without_attributes(c) for c in no_brightness] == plain
    with pytest.raises(ValueError, match=r"attributes \['colour'\] unknown; accepted: brightness, size, shape"):
        captions_for(x, y, images.classes, seed=5, attributes=("colour", "size"))


def test_caption_attributes_are_checked_and_key_the_checkpoint_only_when_changed():
    assert CAPTION_ATTRIBUTES == tuple(ATTRIBUTES)  # config's copy of the names (config imports no torch)
    assert "caption_attributes" not in StudyConfig.from_preset("clip").pretrain_key()  # earlier runs keep their keys
    assert StudyConfig.from_preset("clip", caption_attributes=[]).pretrain_key()["caption_attributes"] == ()
    with pytest.raises(ValueError, match="caption_attributes=\\('colour',\\): expected distinct names among"):
        StudyConfig.from_preset("clip", caption_attributes=["colour"])
    with pytest.raises(ValueError, match="caption_attributes=\\('size', 'size'\\): expected distinct"):
        StudyConfig.from_preset("clip", caption_attributes=["size", "size"])
    with pytest.raises(ValueError, match="caption_attributes=\\(\\): expected the default .* unless objective=clip"):
        StudyConfig.from_preset("default", caption_attributes=[])


@needs_fmnist
def test_a_run_s_captions_follow_its_caption_attributes(tmp_path):
    config = _clip_config(tmp_path)
    train, _ = pretraining_data(config)
    run = Run.of(config, 0.2, 0)
    noisy = noisy_labels_for_run(run, train)
    first = json.loads((run.dir / CAPTIONS).read_text())
    assert first["attributes"] == list(CAPTION_ATTRIBUTES) and read_manifest(run.dir)["captions_sha256"] == \
        first["captions_sha256"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to rewrite: no warning
        assert noisy_labels_for_run(run, train).manifest_hash == noisy.manifest_hash
    # the same run folder asked for captions without attributes: captions.json (and the manifest's hash of it)
    # are rewritten, the noise is the same
    plain = Run.of(_clip_config(tmp_path, caption_attributes=[]), 0.2, 0)
    assert plain.dir == run.dir
    with pytest.warns(UserWarning, match="captions.json is damaged, missing or names other attributes than "
                                         r"caption_attributes=\[\]; rewritten"):
        again = noisy_labels_for_run(plain, train)
    stored = json.loads((run.dir / CAPTIONS).read_text())
    assert again.manifest_hash == noisy.manifest_hash and stored["attributes"] == []
    assert stored["captions"] == captions_for(train.images, train.labels, train.classes, 0, attributes=())
    assert read_manifest(run.dir)["captions_sha256"] == stored["captions_sha256"] != first["captions_sha256"]
    (run.dir / CAPTIONS).unlink()  # a missing file is rewritten too
    with pytest.warns(UserWarning, match="captions.json is damaged, missing"):
        noisy_labels_for_run(plain, train)
    assert json.loads((run.dir / CAPTIONS).read_text()) == stored


def _clip_config(run_root, **changes) -> StudyConfig:
    fields = dict(objective="clip", noise_kind="caption_swap", noise_ratios=[0.2], seeds=[0], epochs=3,
                  num_threads=1, device="cpu", run_root=str(run_root))
    return StudyConfig.from_preset("smoke", **{**fields, **changes})


def test_the_objective_and_the_noise_kind_go_together():
    with pytest.raises(ValueError, match="caption_swap with objective=clip"):
        StudyConfig.from_preset("smoke", objective="clip")
    with pytest.raises(ValueError, match="caption_swap with objective=clip"):
        StudyConfig.from_preset("smoke", noise_kind="caption_swap")
    assert StudyConfig.from_preset("clip").pretrain_key()["clip_lr"] == 5e-4
    assert "objective" not in StudyConfig.from_preset("default").pretrain_key()  # earlier runs keep their keys


@needs_fmnist
def test_clip_pretraining_learns_zero_shot_records_its_captions_and_resumes_exactly(tmp_path):
    config = _clip_config(tmp_path / "a")
    run = Run.of(config, 0.2, 0)
    train, test = pretraining_data(config)
    noisy = noisy_labels_for_run(run, train)
    manifest = read_manifest(run.dir)
    stored = json.loads((run.dir / CAPTIONS).read_text())
    assert manifest["kind"] == "caption_swap" and manifest["num_flipped"] == 400  # 20 % of 2,000, exactly
    assert manifest["captions_sha256"] == stored["captions_sha256"] and len(stored["captions"]) == 2000
    summary = pretrain(run, train, noisy, test)
    assert summary["zero_shot_acc"] == summary["final_test_acc"] > 0.2  # ten classes: chance is 0.1
    assert 0 <= summary["retrieval_r1"] <= 1 and summary["memo_noisy"] is not None
    header = (run.dir / "history.csv").read_text().splitlines()[0]
    assert "zero_shot_acc" in header and "retrieval_r1" in header
    backbone, info = load_pretrained(run)  # the image tower, for notebooks 03-05
    assert backbone.num_features == 128 and backbone.net.num_classes == 0 and info["clip_sha256"]
    # interrupted after one epoch, then resumed: the same weights
    again = Run.of(_clip_config(tmp_path / "b"), 0.2, 0)
    assert pretrain(again, train, noisy_labels_for_run(again, train), test, stop_after=1)["finished"] is False
    assert pretrain(again, train, noisy, test)["checkpoint_sha256"] == summary["checkpoint_sha256"]


@needs_fmnist
def test_the_clip_smoke_sweep_runs_end_to_end_in_the_caption_probe_s_shape(tmp_path):
    """The issue's command on the smoke grid, narrowed as ``make caption-probe`` narrows it (CI time): captions
    without attributes, one task, LP heads, no ablation. The full task and head set through notebooks 03-05 is the
    supervised smoke sweep's: the same code, on the image tower."""
    result = nmtune_sweep(tmp_path, "--set", "objective=clip", "--set", "noise_kind=caption_swap", "--set",
                          "caption_attributes=[]", "--set", 'tasks=["fmnist_domains_sketch"]', "--set",
                          'methods=["lp"]', "--set", "ablation=false", "--set", "robustness=[]", timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = tmp_path / "smoke" / "fashion_mnist" / "caption_swap-0.20" / "seed0"
    info = json.loads((run_dir / "pretrain.json").read_text())
    assert info["zero_shot_acc"] > 0.1 and (run_dir / "transfer.nc").exists()
    assert read_manifest(run_dir)["num_flipped"] == 400 and read_manifest(run_dir)["realised_ratio"] == 0.2
    stored = json.loads((run_dir / CAPTIONS).read_text())
    assert stored["attributes"] == []
    assert not any(w in ATTRIBUTE_WORDS for c in stored["captions"] for w in c.replace(",", " ").split())
    nb = json.loads((run_dir / "04_transfer.ipynb").read_text())
    assert "no ablation table: no head but the linear probe was trained on ablation_task 'fmnist_domains_real'" in \
        json.dumps(nb)
    summary = tmp_path / "smoke"
    assert (summary / "claims.csv").exists() and (summary / "decomposition.csv").read_text().count("\n") == 1
    assert (summary / "claim4_decomposition.png").exists()  # saying why there is no decomposition
    effects = pd.read_csv(summary / "noise_effects_by_task.csv")
    assert set(effects["task"]) == {"fmnist_domains_sketch"} and len(effects) == 2  # two protocols, ratio 0.2
    levels = pd.read_csv(summary / "task_scores.csv")
    assert len(levels) == 4 and set(levels["noise_ratio"]) == {0.0, 0.2}  # two protocols × two ratios
    assert levels.columns[-1] == "seed0"  # each seed's score, which `nmtune contrast` pairs: a set with itself, 0
    assert folder_table("contrast", summary, summary).count("+0.00 (one seed)") == 2 * 3  # 0 %, 20 %, effect 20 %


def _gathered_loss_worker(rank: int, world: int, port: int, root: str) -> None:
    import torch.distributed as tdist

    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        gen = torch.Generator().manual_seed(0)  # every rank draws the same global batch, keeps its rows
        image = F.normalize(torch.randn(8, 5, generator=gen), dim=1)
        text = F.normalize(torch.randn(8, 5, generator=gen), dim=1)
        rows = slice(rank * 4, rank * 4 + 4)
        local_image, local_text = image[rows].clone().requires_grad_(), text[rows].clone().requires_grad_()
        loss = clip_loss(local_image, local_text, torch.tensor(10.0))
        loss.backward()
        torch.save(dict(loss=loss.detach(), image_grad=local_image.grad, text_grad=local_text.grad),
                   f"{root}/rank{rank}.pt")
    finally:
        tdist.destroy_process_group()


def test_under_ddp_the_loss_is_the_global_batch_s_and_each_rank_gets_its_rows_gradient(tmp_path):
    """open_clip's ClipLoss with its defaults: the negatives are gathered from every rank."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_gathered_loss_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    gen = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(8, 5, generator=gen), dim=1).requires_grad_()
    text = F.normalize(torch.randn(8, 5, generator=gen), dim=1).requires_grad_()
    loss = clip_loss(image, text, torch.tensor(10.0))  # one process, the whole batch
    loss.backward()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        rows = slice(rank * 4, rank * 4 + 4)
        torch.testing.assert_close(got["loss"], loss.detach())
        torch.testing.assert_close(got["image_grad"], image.grad[rows])
        torch.testing.assert_close(got["text_grad"], text.grad[rows])


def _ddp_clip_worker(rank: int, world: int, port: int, root: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    config = _clip_config(root, dataset="mnist5k", train_subset=512, epochs=1, num_threads=0)
    run = Run.of(config, 0.2, 0)
    train, test = pretraining_data(config)
    summary = pretrain(run, train, noisy_labels_for_run(run, train), test)
    (run.dir.parent / f"result{rank}.json").write_text(json.dumps(summary["zero_shot_acc"]))


def test_clip_under_ddp_gloo_two_ranks(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_clip_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    results = sorted((tmp_path / "smoke" / "mnist5k" / "caption_swap-0.20").glob("result*.json"))
    values = [json.loads(p.read_text()) for p in results]
    assert len(values) == 2 and values[0] == values[1]  # every rank returns rank 0's summary
    info = json.loads((tmp_path / "smoke" / "mnist5k" / "caption_swap-0.20" / "seed0" / "pretrain.json").read_text())
    assert info["world_size"] == 2 and info["images_seen"] == 512 // 64 * 64
