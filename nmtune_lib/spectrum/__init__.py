"""Stage 03 (notebook 03_spectrum): frozen features of a backbone (eval transform or K augmented views, cached) and
the singular-value spectrum of a feature matrix with its metrics (SVE, p₁, …).

Imports the top-level modules and the stages before it (``data``, ``pretraining``).
"""
