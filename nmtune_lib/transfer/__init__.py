"""Stage 04 (notebook 04_transfer): view sources, heads, NMTune's loss, head tuning (one head or a batch), the two
protocols of claim 4, the downstream task suites, transfer of a run to its suite, and ``NMTuneClassifier``.

Imports the top-level modules and the stages before it (``data``, ``pretraining``, ``spectrum``).
"""
