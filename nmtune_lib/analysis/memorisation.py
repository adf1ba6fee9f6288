"""Memorisation of flipped pre-training labels, net of the clean network's own confusion (``nmtune memorisation``).

A network that predicts a flipped sample's noisy label has either memorised the flip, or confuses the two classes
anyway: asymmetric noise flips into confusable classes (T-shirt↔Shirt), which a network trained on clean labels
also mixes up. For every noisy run of a study, the flipped subset its pre-training scored (``recipe.memo_index``)
is predicted by the run's own backbone (the share predicted as the noisy label is ``memo_noisy`` of its history)
and by the clean (0 %) backbone of the same seed. Their paired difference, ``excess``, is the memorisation.
Supervised runs only: a CLIP run's memorisation is measured on captions (``clip.caption_memorisation``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import ratio_percent
from ..data.datasets import pretraining_split
from ..files import atomic_write_text
from ..pretraining.checkpoints import load_pretrained
from ..pretraining.recipe import memo_subset, predict
from ..run import PRETRAIN_SUMMARY
from .verdicts import mean_ci

COLUMNS = ("own", "clean_net", "excess")  # shares of the scored flipped samples predicted as their noisy label


def memorisation_frame(study, device: str = "cpu") -> pd.DataFrame:
    """One row per finished noisy run whose seed has a finished clean run: noise_ratio, seed, scored (flipped
    samples scored), own, clean_net, excess (own − clean_net)."""
    config = study.config
    if config.objective != "supervised":
        raise ValueError(f"memorisation of flipped labels needs objective=supervised, got {config.objective!r} "
                         "(a CLIP run's memorisation of swapped captions is in its history.nc)")
    finished = [r for r in study.runs() if (r.dir / PRETRAIN_SUMMARY).exists()]
    clean_runs = {r.seed: r for r in finished if r.noise_ratio == 0}
    noisy_runs = [r for r in finished if r.noise_ratio > 0 and r.seed in clean_runs]
    if not noisy_runs:
        raise ValueError(f"no finished noisy run with a finished clean (0 %) run of the same seed under "
                         f"{study.runs_dir}: run 'nmtune sweep --preset {config.preset}' with noise ratio 0 first")
    train = pretraining_split(config, "train")
    rows = []
    for seed in sorted({r.seed for r in noisy_runs}):
        clean_net, _ = load_pretrained(clean_runs[seed], device)
        for run in sorted((r for r in noisy_runs if r.seed == seed), key=lambda r: r.noise_ratio):
            images, target, _ = memo_subset(train, torch.from_numpy(np.load(run.noisy_labels)), seed)
            images, target = images.to(device), target.to(device)
            own_net, _ = load_pretrained(run, device)
            own, clean = ((predict(net, images) == target).double().mean().item() for net in (own_net, clean_net))
            rows.append(dict(noise_ratio=run.noise_ratio, seed=seed, scored=len(target), own=own, clean_net=clean,
                             excess=own - clean))
    return pd.DataFrame(rows)


def memorisation_table(frame: pd.DataFrame) -> str:
    """Per noise ratio, mean ± 95 % half-width over seeds of own, clean_net and excess (paired by seed), in %, as
    Markdown."""
    lines = ["| noise | seeds | predicted as the noisy label: own network | clean network | excess (memorised) |",
             "|---|---|---|---|---|"]
    for ratio, part in frame.groupby("noise_ratio"):
        cells = [f"{100 * m:+.1f} ± {100 * h:.1f} %" if c == "excess" else f"{100 * m:.1f} ± {100 * h:.1f} %"
                 for c in COLUMNS for m, h in [mean_ci(part[c].to_numpy())]]
        lines.append(f"| {ratio_percent(ratio)} | {len(part)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_memorisation(study, out_dir) -> "Path":
    """``memorisation.csv`` of ``study`` in ``out_dir`` (``memorisation_frame``), written atomically."""
    from pathlib import Path

    out = Path(out_dir) / "memorisation.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out, memorisation_frame(study).to_csv(index=False))
