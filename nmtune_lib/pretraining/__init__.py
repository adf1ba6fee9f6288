"""Stage 02 (notebook 02_pretrain): timm backbones, the pre-training recipe and loop (supervised or CLIP), DDP,
checkpoints and resume, imported weights, the per-epoch history and the learning curve.

Owns the backbone of every run. Imports the top-level modules and ``data`` (stage 01).
"""
