"""Compatibility: ``from nmtune_lib.estimator import NMTuneClassifier`` keeps working; the estimator lives in the
transfer stage, ``nmtune_lib/transfer/estimator.py``."""
from .transfer.estimator import NMTuneClassifier  # noqa: F401
