"""Tests for the MLP VAE."""

import numpy as np
import pytest

from ctjax.audit.generators import vae

TINY = dict(hidden=16, latent=2, num_steps=30, batch_size=16, sample_batch=32)


@pytest.fixture(scope="module")
def model(tiny_images):
  return vae.train(tiny_images, seed=0, progress=False, **TINY)


def test_shapes_dtype_and_range(model):
  s = vae.sample(model, 50, seed=0)  # 50 > sample_batch: two batches
  assert s.shape == (50, 8, 8) and s.dtype == np.uint8
  assert 0 < s.std() and s.min() >= 0 and s.max() <= 255


def test_seeds_reproduce(model, tiny_images):
  again = vae.train(tiny_images, seed=0, progress=False, **TINY)
  np.testing.assert_array_equal(
    vae.sample(model, 10, 1), vae.sample(again, 10, 1)
  )
  other = vae.train(tiny_images, seed=1, progress=False, **TINY)
  assert not np.array_equal(vae.sample(model, 10, 1), vae.sample(other, 10, 1))


def test_training_lowers_the_loss(tiny_images):
  import jax
  import optax
  from flax import nnx
  from ctjax.audit.generators import common

  cfg = vae.Config(**TINY)
  graphdef, params = nnx.split(vae._build(cfg, 64, 0), nnx.Param)
  carry = (params, optax.adam(cfg.learning_rate).init(params))
  # Same step, settings and length as vae.train: reuses its compiled scan.
  for _ in range(3):
    carry, losses = common.train_loop(
      vae._step,
      (graphdef, cfg),
      carry,
      common.to_unit(tiny_images),
      jax.random.PRNGKey(0),
      cfg.num_steps,
      desc="t",
      progress=False,
    )
    if _ == 0:
      first = losses[:5].mean()
  assert losses[-5:].mean() < first


def test_restore_checks_parameters(model):
  import dataclasses

  broken = dataclasses.replace(
    model, params={k: v for k, v in list(model.params.items())[1:]}
  )
  with pytest.raises(ValueError, match="missing"):
    vae.sample(broken, 2, 0)
