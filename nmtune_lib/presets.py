"""The named configurations (``StudyConfig.from_preset(name)``): each a few fields that differ from
``StudyConfig``'s defaults, with the reason in a comment.

A preset's values reach a step's completion key only through the resolved configuration fields that step reads
(``study.keys``): this module is data, and is not hashed as code, so that a preset value read only by the heads reruns
notebook 04 and the summary, not the pre-training before them.
"""
from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on a laptop CPU: a tiny subset and network; for tests and a first look.
    "smoke": dict(
        noise_ratios=(0.0, 0.2), seeds=(0,), model="resnet_tiny", train_subset=2000, epochs=2, batch_size=64,
        lr=0.2, spectrum_samples=1000, head_epochs=2, views=2, task_subset=400, progress=False,
        lr_grid=(1e-3, 1e-2), reg_scales=(1.0, 10.0), robustness=("head_epochs=1",),
    ),
    # The embedded study on a 2-core CPU: the paper's head protocol (30 epochs) on 5 noise ratios x 5 seeds.
    "default": dict(),
    # The default study where pre-training memorises the flipped labels (README, learning curve): the same model,
    # grid and heads, pre-trained 40 epochs on 6,000 of the 60,000 images (51 parameters per image; at 60k images
    # resnet_tiny predicts the flipped label for ~1 % of flipped samples at any schedule, at 6k for 22.7 %).
    "converged": dict(train_subset=6000, epochs=40),
    # The default study pre-trained as CLIP on captions of the same images, 0-30 % of them swapped (README, "CLIP").
    # AdamW as open_clip trains ResNets (clip_lr 5e-4, clip_weight_decay 0.2, betas 0.9 / 0.999); the schedule ours.
    "clip": dict(objective="clip", noise_kind="caption_swap", seeds=(0, 1, 2)),
    # The default study under the paper's open questions (docs/paper.md §7; issue 10's extra report sets): other
    # kinds of pre-training noise on the same grid, and a finer grid around "slight" noise (claim 1b, which needs
    # 20-30 %, is then not judged).
    "asymmetric": dict(noise_kind="asymmetric"),
    "instance": dict(noise_kind="instance"),
    "fine": dict(noise_ratios=(0.0, 0.025, 0.05, 0.075, 0.10, 0.15)),
    # The embedded study on a GPU: a ResNet-18 with a small-image stem, longer schedule, online views.
    "gpu": dict(
        model="resnet18", small_stem=True, img_size=32, epochs=30, batch_size=512, lr=0.4, device="cuda",
        compile=True, head_mode="online", views=8, feature_batch_size=4096,
    ),
    # The paper's scale (README, "Paper scale"): ResNet-50 at 224 px pre-trained on the user's ImageNet-style folder
    # (<data_root>/imagenet, streamed from disk) on the paper's grid, heads on the 14 ID datasets and DomainNet
    # (<data_root>). Schedule: torchvision's ResNet-50 reference recipe (90 epochs, lr 0.1 per 256 images, weight
    # decay 1e-4) with our one-cycle schedule in place of its step decay (docs/paper.md §3). Needs CUDA GPUs.
    "paper": dict(
        dataset="imagenet", stream=True, task_suite="paper", model="resnet50", img_size=224, epochs=90,
        batch_size=1024, lr=0.4, weight_decay=1e-4, device="cuda", compile=True, head_mode="online",
        feature_batch_size=512, loader_workers=16, spectrum_samples=10000,
    ),
}
