"""Tests for the MLP GAN."""

import numpy as np

from ctjax.audit.generators import gan

TINY = dict(hidden=16, latent=4, num_steps=20, batch_size=16, sample_batch=32)


def test_train_sample_shapes_and_seeds(tiny_images):
  model = gan.train(tiny_images, seed=0, progress=False, **TINY)
  s = gan.sample(model, 40, seed=0)
  assert s.shape == (40, 8, 8) and s.dtype == np.uint8
  assert s.std() > 0
  np.testing.assert_array_equal(s, gan.sample(model, 40, seed=0))
  again = gan.train(tiny_images, seed=0, progress=False, **TINY)
  np.testing.assert_array_equal(s, gan.sample(again, 40, seed=0))
  other = gan.train(tiny_images, seed=1, progress=False, **TINY)
  assert not np.array_equal(s, gan.sample(other, 40, seed=0))
  # Generator and discriminator parameters are both kept.
  assert any("generator" in k for k in model.params)
  assert any("discriminator" in k for k in model.params)


def test_losses_match_the_log_sigmoid_definitions(rng):
  from scipy.special import expit

  real, fake = rng.normal(0, 3, 50), rng.normal(0, 3, 50)
  d_ref = np.mean(-np.log(expit(real)) - np.log(1 - expit(fake)))
  g_ref = np.mean(-np.log(expit(fake)))
  np.testing.assert_allclose(
    gan.discriminator_loss(real, fake), d_ref, rtol=1e-5
  )
  np.testing.assert_allclose(gan.generator_loss(fake), g_ref, rtol=1e-5)
  # Non-saturating: the generator's gradient stays large where D rejects.
  np.testing.assert_allclose(
    gan.generator_loss(np.zeros(3)), np.log(2), rtol=1e-6
  )
