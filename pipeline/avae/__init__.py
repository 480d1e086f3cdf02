"""Multi-mode TEM fusion with an adaptive variational autoencoder (AVAE).

Bright-field (BF), dark-field (DF) and high-resolution (HRTEM) images of the same region are
fused into one image of the specimen's projected structure by a VAE with one encoder branch per
mode and attention weights that decide, at every position, how much each mode contributes.

=================  ===========================================================================
``preprocess``     flat field, histogram equalisation, registration, denoising
``model``          the AVAE network, its loss, safetensors files
``base``           the base of a residual AVAE: the recorded HRTEM restored and standardised
``train``          training on (preprocessed modes, truth) pairs
``fuse``           inference on windows and tiles of any size
``baselines``      HRTEM alone, plain average, fitted weights; affine calibration; PSNR/SSIM
``evaluate``       the evaluation protocol (70/15/15 split) of ``benchmarks/avae_eval.py``
``classify``       the feature-extraction check (material class from an image)
=================  ===========================================================================

The simulator of paired BF/DF/HRTEM images with their truth (a physical model) is
:mod:`emfuse.pipeline.synth.tem_modes`, with the other simulators. Nothing here imports torch
until a model is built, so the preprocessing stays cheap to import. See ``docs/methods/avae.md``.

Examples
--------
>>> import numpy as np
>>> from emfuse.pipeline.synth.tem_modes import simulate_region
>>> from emfuse.pipeline.avae.preprocess import Preprocessing
>>> region = simulate_region((128, 128), "ceramic", np.random.default_rng(1))
>>> prep = Preprocessing.fit(region.modes)
>>> prep.apply(region.modes).shape
(3, 128, 128)
"""
