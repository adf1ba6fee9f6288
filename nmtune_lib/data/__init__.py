"""Stage 01 (notebook 01_noise_injection): the offline datasets and image folders (in memory or streamed), the
paper's datasets, the view and pre-training augmentations, label noise and caption swaps.

Owns every image the study reads and every label it flips. Imports only the top-level modules (config, reference,
run, files, markers, results, parameters, cores); nothing here knows about training.
"""
