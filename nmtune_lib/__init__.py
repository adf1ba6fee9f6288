"""nmtune_lib: label noise in pre-training and NMTune (Chen et al., ICLR 2024), as a small tested library."""
__version__ = "0.1.0"
