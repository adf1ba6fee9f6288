"""Image–text contrastive pre-training (CLIP; docs/paper.md §3): the two towers, the loss and its measurements.

``ClipModel`` pairs an image tower (the study's timm ``Backbone`` without classifier, then a linear projection) with
a text tower trained from scratch (``TextTower``: token and position embeddings, a small causal transformer, the
feature at the ``<eos>`` token, a linear projection), as open_clip builds its models. Both embeddings are
L2-normalised; the similarity logits are scaled by a learnable temperature with open_clip's conventions: the logit
scale starts at 1/0.07 and is clamped to at most 100 after every step (``clamp_logit_scale``).

``clip_loss`` is the symmetric InfoNCE of a batch (cross-entropy of image→text and text→image logits against the
diagonal, averaged). The measurements read a trained model on clean data: ``zero_shot_accuracy`` (each class's
prompt embeddings averaged over templates, as CLIP's zero-shot classifier), ``retrieval_recall_at_1`` (image→text
over a set of clean captions) and ``caption_memorisation`` (for images whose caption was swapped: is the image
closer to its swapped caption or to its true one?).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .history import CLIP_FIELDS as HISTORY_EXTRA  # per-epoch fields of a CLIP run (its test_acc is zero-shot)
from ..data.captions import Tokenizer, captions_for, class_prompts
from .models import create_backbone
from .recipe import memo_index

INIT_LOGIT_SCALE = math.log(1 / 0.07)  # open_clip
MAX_LOGIT_SCALE = math.log(100)  # open_clip clamps the scale at 100


class TextTower(nn.Module):
    """Token ids N×L (0 = padding) → N×``embed_dim``: embeddings, a causal transformer, the ``<eos>`` feature."""

    def __init__(self, vocab_size: int, *, length: int = 16, width: int = 128, layers: int = 2, heads: int = 4,
                 embed_dim: int = 128, eos_id: int = 2):
        super().__init__()
        self.eos_id = eos_id
        self.token = nn.Embedding(vocab_size, width)
        self.position = nn.Parameter(torch.randn(length, width) * 0.01)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, embed_dim, bias=False)
        self.register_buffer("causal", torch.triu(torch.full((length, length), float("-inf")), 1), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token(tokens) + self.position[:tokens.shape[1]]
        x = self.transformer(x, mask=self.causal[:tokens.shape[1], :tokens.shape[1]], is_causal=True)
        eos = (tokens == self.eos_id).int().argmax(1)
        return self.proj(self.norm(x[torch.arange(len(x)), eos]))


class ClipModel(nn.Module):
    """``backbone`` (a ``models.Backbone`` with no classifier) + projection, ``text`` tower, learnable scale."""

    def __init__(self, backbone: nn.Module, text: TextTower, embed_dim: int = 128):
        super().__init__()
        self.backbone, self.text = backbone, text
        self.image_proj = nn.Linear(backbone.num_features, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(self.backbone.pre_logits(images)), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(tokens), dim=-1)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        return self.encode_image(images), self.encode_text(tokens), self.logit_scale.exp()


def clamp_logit_scale(model: ClipModel) -> None:
    """After each optimiser step, as open_clip does: the scale stays within [1, 100]."""
    with torch.no_grad():
        model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)


def gather_pairs(image_emb: torch.Tensor, text_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Under DDP, every rank's embeddings concatenated in rank order (the global batch), as open_clip's
    ``gather_features`` with its defaults (``local_loss=False``, ``gather_with_grad=False``): the other ranks' rows
    carry no gradient, this rank's are its own tensors. Without a process group (or with one rank): unchanged."""
    import torch.distributed as tdist

    if not (tdist.is_available() and tdist.is_initialized()) or tdist.get_world_size() == 1:
        return image_emb, text_emb
    world, rank = tdist.get_world_size(), tdist.get_rank()
    gathered = []
    for emb in (image_emb, text_emb):
        parts = [torch.empty_like(emb) for _ in range(world)]
        tdist.all_gather(parts, emb.detach().contiguous())
        parts[rank] = emb
        gathered.append(torch.cat(parts))
    return gathered[0], gathered[1]


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: pair i's image and text are the positives, every other pair's the negatives. Under DDP
    the pairs are the global batch (``gather_pairs``): every rank computes the same loss, its gradient flowing
    through its own rows, as open_clip's ``ClipLoss``."""
    image_emb, text_emb = gather_pairs(image_emb, text_emb)
    logits = scale * image_emb @ text_emb.T
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@torch.inference_mode()
def embed(encode, items: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """``encode`` applied batch by batch, concatenated."""
    return torch.cat([encode(items[i:i + batch]) for i in range(0, len(items), batch)])


@torch.inference_mode()
def zero_shot_weights(model: ClipModel, prompt_tokens: list[torch.Tensor]) -> torch.Tensor:
    """C×E classifier: each class's prompt embeddings averaged, then normalised (CLIP's prompt ensembling)."""
    return F.normalize(torch.stack([model.encode_text(t).mean(0) for t in prompt_tokens]), dim=-1)


@torch.inference_mode()
def zero_shot_accuracy(model: ClipModel, images: torch.Tensor, labels: torch.Tensor,
                       prompt_tokens: list[torch.Tensor]) -> float:
    weights = zero_shot_weights(model, prompt_tokens)
    pred = (embed(model.encode_image, images) @ weights.T).argmax(1)
    return (pred == labels).double().mean().item()


@torch.inference_mode()
def retrieval_recall_at_1(model: ClipModel, images: torch.Tensor, tokens: torch.Tensor) -> float:
    """Image→text: the share of images whose best match among all the set's captions is their own caption (the
    same text: captions repeat, so a tie with an identical caption of another image counts as found)."""
    sims = embed(model.encode_image, images) @ embed(model.encode_text, tokens).T
    return (tokens[sims.argmax(1)] == tokens).all(1).double().mean().item()


@torch.inference_mode()
def caption_memorisation(model: ClipModel, images: torch.Tensor, noisy_tokens: torch.Tensor,
                         clean_tokens: torch.Tensor) -> tuple[float, float]:
    """For K images whose caption was swapped, each image against its own two captions: the share that is closer to
    its swapped caption than to its true one (``memo_noisy``) and the reverse (``memo_clean``). Pairs whose swapped
    caption is the same text as the true one (templated captions repeat) are left out; NaN when none is left.
    An untrained model scores about 0.5 on each, a model that ignores the swaps about 0 on ``memo_noisy``."""
    distinct = (noisy_tokens != clean_tokens).any(1)
    if not distinct.any():
        return math.nan, math.nan
    img = embed(model.encode_image, images[distinct])
    noisy = (img * embed(model.encode_text, noisy_tokens[distinct])).sum(1)
    clean = (img * embed(model.encode_text, clean_tokens[distinct])).sum(1)
    return (noisy > clean).double().mean().item(), (clean > noisy).double().mean().item()


# --- what pre-training (pretraining.pretrain) needs of the CLIP objective -------------------------------------------



def build(config, train_set) -> ClipModel:
    """The seeded CLIP model of ``config`` (call under a seeded RNG): the image tower is ``config.model`` without a
    classifier, the text tower sized for the captions' vocabulary."""
    backbone = create_backbone(config.model, num_classes=0, in_chans=train_set.shape[0], img_size=config.img_size,
                               small_stem=config.small_stem)
    tokenizer = Tokenizer.for_classes(train_set.classes)
    return ClipModel(backbone, TextTower(len(tokenizer.vocab), length=tokenizer.length,
                                         eos_id=tokenizer.vocab.index("<eos>")))


def texts(train_set, noisy, test_set, seed: int, attributes) -> dict:
    """Token ids (captions naming ``attributes``, ``config.caption_attributes``): ``clean`` (each training
    image's own caption), ``noisy`` (the caption it is trained with: ``noisy.caption_source`` picks whose), ``test``
    (the clean test captions) and ``prompts`` (one P×L tensor per class: the zero-shot prompts)."""
    tokenizer = Tokenizer.for_classes(train_set.classes)
    clean = tokenizer(captions_for(train_set.images, train_set.labels, train_set.classes, seed, attributes))
    source = noisy.caption_source if noisy.caption_source is not None else torch.arange(len(clean))
    prompts = [tokenizer(p) for p in class_prompts(train_set.classes)]
    return dict(clean=clean, noisy=clean[source], test=tokenizer(
        captions_for(test_set.images, test_set.labels, test_set.classes, seed, attributes)), prompts=prompts)


def train_step(model: nn.Module, clip_model: ClipModel, opt: torch.optim.Optimizer, x: torch.Tensor,
               tokens: torch.Tensor, *, autocast: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One AdamW step on ``clip_loss`` (``model`` is ``clip_model`` or its DDP/compiled wrapper; under DDP the
    negatives are the global batch's), then the scale clamp. Returns detached (loss, in-batch image→text top-1 hits)."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        image_emb, text_emb, scale = model(x, tokens)
    image_emb, text_emb, scale = image_emb.float(), text_emb.float(), scale.float()
    loss = clip_loss(image_emb, text_emb, scale)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    clamp_logit_scale(clip_model)
    hits = ((image_emb @ text_emb.T).argmax(1) == torch.arange(len(x), device=x.device)).sum()
    return loss.detach(), hits.detach()


def evaluation_data(train_set, noisy, test_set, tokens: dict[str, torch.Tensor], *, seed: int,
                    device: torch.device) -> dict:
    """On the device: the clean test images with labels and captions, the zero-shot prompts, and the scored subset
    of swapped training samples (``recipe.memo_index``) with their swapped and their own captions."""
    memo = memo_index(noisy.flipped, seed)
    return dict(test_images=test_set.images.to(device), test_labels=test_set.labels.to(device),
                test_tokens=tokens["test"].to(device), prompts=[p.to(device) for p in tokens["prompts"]],
                memo_images=train_set.images[memo].to(device), memo_noisy=tokens["noisy"][memo].to(device),
                memo_clean=tokens["clean"][memo].to(device))


def evaluate(model: ClipModel, data: dict, *, autocast: bool) -> dict[str, float]:
    """Zero-shot accuracy on the clean test split (also as ``test_acc``), image→text recall@1 on its captions and
    the memorisation of swapped captions; in eval mode, the mode restored after."""
    was_training = model.training
    model.eval()
    with torch.autocast(data["test_images"].device.type, dtype=torch.bfloat16, enabled=autocast):
        zero_shot = zero_shot_accuracy(model, data["test_images"], data["test_labels"], data["prompts"])
        recall = retrieval_recall_at_1(model, data["test_images"], data["test_tokens"])
        memo_noisy, memo_clean = caption_memorisation(model, data["memo_images"], data["memo_noisy"],
                                                      data["memo_clean"])
    model.train(was_training)
    return dict(test_acc=zero_shot, zero_shot_acc=zero_shot, retrieval_r1=recall, memo_noisy=memo_noisy,
                memo_clean=memo_clean)
