"""Tests for the pixel-space Gaussian KDE."""

import numpy as np
import pytest

from ctjax.audit.generators import kde


def test_tiny_bandwidth_copies_training_images(rng):
  x = rng.integers(0, 256, size=(30, 8, 8)).astype(np.uint8)
  model = kde.train(x, seed=0, bandwidth=1e-3)
  s = kde.sample(model, 50, seed=1)
  assert s.shape == (50, 8, 8) and s.dtype == np.uint8
  train = {im.tobytes() for im in x}
  assert all(im.tobytes() in train for im in s)


def test_bandwidth_is_the_noise_std():
  x = np.full((4, 16, 16), 128, np.uint8)
  s = kde.sample(kde.train(x, 0, bandwidth=20.0), 400, seed=0)
  resid = s.astype(float) - 128
  assert abs(resid.std() - 20.0) < 0.4 and abs(resid.mean()) < 0.3


def test_seeds_reproduce_and_rgb_shape(rng):
  x = rng.integers(0, 256, size=(10, 4, 4, 3)).astype(np.uint8)
  model = kde.train(x, 0)
  np.testing.assert_array_equal(
    kde.sample(model, 7, 3), kde.sample(model, 7, 3)
  )
  assert not np.array_equal(kde.sample(model, 7, 3), kde.sample(model, 7, 4))
  assert kde.sample(model, 7, 3).shape == (7, 4, 4, 3)


def test_bad_hyperparameters(rng):
  x = rng.integers(0, 256, size=(10, 4, 4)).astype(np.uint8)
  with pytest.raises(ValueError, match="bandwidth"):
    kde.train(x, 0, bandwidth=-1.0)
  with pytest.raises(ValueError, match="unknown hyperparameter"):
    kde.train(x, 0, sigma=3.0)
