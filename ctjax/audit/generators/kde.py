"""Pixel-space Gaussian kernel density estimate.

The model is the training set itself; a sample is a uniformly chosen training
image plus isotropic Gaussian noise of standard deviation ``bandwidth`` (in
0..255 pixel units), clipped and rounded. Small bandwidths copy the training
data (the memorising generator of Meehan et al., Fig. 2); large ones blur it.
Training is deterministic: the seed only names the run.
"""

import dataclasses

import numpy as np

from ctjax.audit.generators import common


@dataclasses.dataclass(frozen=True)
class Config:
  """KDE hyperparameters.

  Attributes:
    bandwidth: kernel standard deviation in 0..255 pixel units.
  """

  bandwidth: float = 24.0


PRESETS = {"digits": Config(), "fashion_mnist": Config(bandwidth=24.0)}


def train(images, seed=0, progress=True, **hparams):
  """Stores the training images.

  Args:
    images: uint8 ``[N, H, W]`` or ``[N, H, W, C]`` training images.
    seed: run seed (KDE training has no randomness).
    progress: unused (fitting is instant).
    **hparams: fields of :class:`Config`.
  """
  del progress
  cfg = common.make_config(Config, hparams)
  if not cfg.bandwidth >= 0:
    raise ValueError(f"kde bandwidth must be >= 0, got {cfg.bandwidth}.")
  images = common.check_images(images)
  return common.GeneratorModel(
    "kde",
    images.shape[1:],
    int(seed),
    common.hparams_dict(cfg),
    {"train": images.reshape(len(images), -1).copy()},
  )


def sample(model, n, seed):
  """Draws ``n`` images: uint8 ``[n, *model.image_shape]``."""
  train_x = model.params["train"]
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, len(train_x), size=n)
  noise = rng.standard_normal((n, train_x.shape[1]))
  x = train_x[idx].astype(np.float64) + model.hparams["bandwidth"] * noise
  return common.from_unit(x / 255.0, model.image_shape)
