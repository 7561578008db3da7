"""Generative models trained on a data set's training split.

Families (``FAMILIES``): pixel-space Gaussian KDE, Gaussian mixture on PCA,
VAE, GAN, and one DDPM network sampled two ways (ancestral "ddpm", DDIM
"ddim"). Every family offers ``train(images, seed, **hparams) -> model`` and
``sample(model, n, seed) -> uint8 images``; ``fit_or_load`` and
``samples_or_load`` cache models and samples on disk.
"""

from ctjax.audit.generators.common import GeneratorModel
from ctjax.audit.generators.registry import (
  FAMILIES,
  SEEDS,
  Family,
  fit_or_load,
  get_family,
  hparams_for,
  samples_for_all,
  samples_or_load,
)

__all__ = [
  "FAMILIES",
  "SEEDS",
  "Family",
  "GeneratorModel",
  "fit_or_load",
  "get_family",
  "hparams_for",
  "samples_for_all",
  "samples_or_load",
]
