"""The reference protocol's values: the one home of every default the paper or its reference code fixes.

``StudyConfig``'s fields, the keyword defaults of ``fit_head``/``NMTuneClassifier``, ``nmtune_loss`` and the view
augmentation all read them from here (sources and deviations: docs/paper.md §6, §6a and "Deviations"). Importing this
module costs nothing (no torch).
"""
from __future__ import annotations

METHODS = ("lp", "mlp", "nmtune")  # linear probe, MLP tuning (NMTune's head without regularisers), NMTune

# Head tuning (docs/paper.md §6a "reference" protocol): AdamW, per-step cosine to 0, last epoch reported.
EPOCHS = 30
BATCH_SIZE = 64
LP_LR = 1e-2  # linear probe
MLP_LR = 1e-3  # MLP and NMTune heads
WEIGHT_DECAY = 1e-4

# NMTune's loss (docs/paper.md §6): L = ce + w_mse·consistency + w_cov·covariance + w_svd·dominant_sv.
W_MSE = 1.0
W_COV = 0.04
W_SVD = 0.001
SVD_TOP_K = 5

# NMTune's residual MLP: Linear(D, e·D) → BN → ReLU → Linear(e·D, D), scaled by s (init 1) and added to f.
EXPANSION = 4
SCALE_INIT = 1.0

# Views (docs/paper.md "Views"): RandomResizedCrop(scale=(0.8, 1.0)) + horizontal flip, torchvision's ratio range.
VIEW_CROP_SCALE = (0.8, 1.0)
VIEW_CROP_RATIO = (3 / 4, 4 / 3)
# How the crop is resampled (``grid_sample``'s modes; config ``view_interpolation``). The reference resamples with
# the timm model's interpolation (bicubic for most); ours is bilinear by default (docs/paper.md, deviations). Nearest
# takes each output pixel from one input pixel: a view then has no intensity the image lacks.
VIEW_INTERPOLATIONS = ("bilinear", "nearest", "bicubic")

# Not the reference's: cuSOLVER's SVD drivers for the dominant-singular-value term on CUDA (``torch.linalg.svdvals``'s
# ``driver``; config ``svd_driver``, "" = PyTorch's choice, gesvdj). On an H200 gesvda took 1.5 ms for 30 128×128
# matrices where the default took 81 ms (bench/svd_routes.py); its accuracy on ill-conditioned matrices is not
# measured yet, so the default stays PyTorch's.
CUDA_SVD_DRIVERS = ("gesvd", "gesvdj", "gesvda")

def default_lr(method: str) -> float:
    """The reference learning rate of a head: ``LP_LR`` for ``lp``, ``MLP_LR`` for the MLP heads."""
    return LP_LR if method == "lp" else MLP_LR


def sensitivity_name(scale: float) -> str:
    """The method name of NMTune with its three regulariser weights scaled by ``scale`` (``nmtune`` for 1)."""
    return "nmtune" if scale == 1.0 else f"nmtune_x{scale:g}"
