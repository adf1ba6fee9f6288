"""``NMTuneClassifier``: a head tuned by ``tuning.fit_head`` on any feature matrix, as a scikit-learn estimator."""
from __future__ import annotations

import numbers

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from .. import reference as ref
from .heads import predict_logits
from .tuning import fit_head
from .views import check_lengths


class NMTuneClassifier(ClassifierMixin, BaseEstimator):
    """A head tuned on frozen embeddings of any model or API, as a scikit-learn classifier.

    ``fit(X, y)``: X is N×D (eval features) or N×K×D (K cached augmented views per sample, the paper's two-view
    NMTune with two different views drawn per step). With N×D, ``nmtune`` and ``mlp`` take both views from X itself:
    identical views when ``feature_noise`` = 0 (default), else each view plus independent Gaussian noise of
    ``feature_noise`` × the per-feature standard deviation. ``lp`` on N×K×D trains on two views (the matched
    protocol).
    ``predict``/``predict_proba``/``score`` take eval features N×D; they run in float64 (except on MPS) so that a
    sample's output does not depend on the other rows of its batch.

    Parameters mirror ``fit_head``, with the same defaults (``reference``: AdamW for ``EPOCHS`` epochs of
    ``BATCH_SIZE``, lr ``default_lr(method)``, ``WEIGHT_DECAY``, ``W_MSE``, ``W_COV``, ``W_SVD``, k = ``SVD_TOP_K``).
    ``random_state``: an int fixes the initialisation, batch order and view draws (same int → identical predictions);
    None draws fresh entropy. ``device``: "cpu", "cuda", "mps" or "auto". Fitted attributes: ``classes_``,
    ``n_features_in_``, ``head_``, ``history_`` (per-epoch losses), ``mode_`` (where the views came from).
    """

    def __init__(self, method: str = "nmtune", *, epochs: int = ref.EPOCHS, batch_size: int = ref.BATCH_SIZE,
                 lr: float | None = None, weight_decay: float = ref.WEIGHT_DECAY, w_mse: float = ref.W_MSE,
                 w_cov: float = ref.W_COV, w_svd: float = ref.W_SVD, svd_top_k: int = ref.SVD_TOP_K,
                 svd_driver: str = "", feature_noise: float = 0.0,
                 random_state: int | np.random.RandomState | None = None, device: str = "cpu", progress: bool = False):
        self.method = method
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.w_mse = w_mse
        self.w_cov = w_cov
        self.w_svd = w_svd
        self.svd_top_k = svd_top_k
        self.svd_driver = svd_driver
        self.feature_noise = feature_noise
        self.random_state = random_state
        self.device = device
        self.progress = progress

    def fit(self, X, y) -> "NMTuneClassifier":
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        X = validate_data(self, X, reset=True, allow_nd=True, dtype=(np.float64, np.float32),
                          ensure_all_finite=False)
        if X.ndim not in (2, 3):
            raise ValueError(f"X must be N×D (features) or N×K×D (K cached views), got shape {X.shape}")
        if X.ndim == 3:
            self.n_features_in_ = X.shape[2]  # D, what predict's eval features must have
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        check_lengths(len(X), len(y))
        classes, y_index = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"y holds only one class ({classes[:1].tolist()[0]!r}); accepted: labels of at least 2 "
                             "classes")
        fit = fit_head(torch.tensor(X, dtype=torch.float32), torch.as_tensor(y_index, dtype=torch.int64),
                       method=self.method, num_classes=len(classes), epochs=self.epochs, batch_size=self.batch_size,
                       lr=self.lr, weight_decay=self.weight_decay, w_mse=self.w_mse, w_cov=self.w_cov,
                       w_svd=self.w_svd, svd_top_k=self.svd_top_k, svd_driver=self.svd_driver,
                       feature_noise=self.feature_noise,
                       seed=self._seed(), device=self.device, progress=self.progress)
        self.classes_ = classes
        self.head_ = fit.head if fit.device.type == "mps" else fit.head.double()  # MPS has no float64
        self.device_ = fit.device
        self.history_ = fit.history
        self.mode_ = fit.mode
        return self

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32), ensure_all_finite=False)
        bad = ~np.isfinite(X)
        if bad.any():
            raise ValueError(f"X contains {int(bad.sum())} NaN or inf value(s) (first in sample "
                             f"{int(np.nonzero(bad.any(axis=1))[0][0])}); accepted: finite real numbers")
        logits = predict_logits(self.head_, torch.tensor(X), device=self.device_)
        return torch.softmax(logits.double(), dim=1).numpy()

    def predict(self, X) -> np.ndarray:
        proba = self.predict_proba(X)  # checks fitted-ness first
        return self.classes_[proba.argmax(axis=1)]

    def _seed(self) -> int:
        if isinstance(self.random_state, numbers.Integral):
            return int(self.random_state)
        if self.random_state is None:  # fresh entropy, without touching numpy's global RNG
            return int(np.random.SeedSequence().generate_state(1)[0])
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
