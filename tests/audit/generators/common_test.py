"""Tests for ctjax.audit.generators.common."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ctjax.audit.generators import common


def test_pixel_round_trips(rng):
  x = rng.integers(0, 256, size=(5, 4, 3)).astype(np.uint8)
  np.testing.assert_array_equal(common.from_unit(common.to_unit(x), (4, 3)), x)
  np.testing.assert_array_equal(
    common.from_signed(common.to_signed(x), (4, 3)), x
  )
  assert common.to_signed(x).min() >= -1 and common.to_signed(x).max() <= 1
  # Out-of-range floats are clipped, not wrapped.
  out = common.from_unit(np.array([[-0.5, 1.7, 0.5]]), (3,))
  np.testing.assert_array_equal(out, [[0, 255, 128]])


def test_check_images_rejects_bad_input():
  with pytest.raises(ValueError, match="uint8"):
    common.check_images(np.zeros((3, 4, 4), np.float32))
  with pytest.raises(ValueError, match=r"\[N, H, W\]"):
    common.check_images(np.zeros((3, 4), np.uint8))


def test_flatten_unflatten_round_trip():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  _, params = nnx.split(model, nnx.Param)
  flat = common.flatten_params(params)
  assert all(isinstance(v, np.ndarray) for v in flat.values())
  _, template = nnx.split(
    nnx.eval_shape(lambda: nnx.Linear(3, 2, rngs=nnx.Rngs(1))), nnx.Param
  )
  back = common.unflatten_params(template, flat)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
    np.testing.assert_array_equal(a, b)
  bad = dict(flat)
  name = next(iter(bad))
  bad[name] = np.zeros((7,))
  bad["['extra']"] = np.zeros(1)
  with pytest.raises(ValueError, match="extra") as err:
    common.unflatten_params(template, bad)
  assert "shape (7,)" in str(err.value)


def test_make_config_names_unknown_fields():
  import dataclasses

  @dataclasses.dataclass(frozen=True)
  class Cfg:
    a: int = 1
    b: tuple = (1, 2)

  assert common.make_config(Cfg, {"b": [3, 4]}).b == (3, 4)
  with pytest.raises(ValueError, match="zzz"):
    common.make_config(Cfg, {"zzz": 1})


def test_chunk_length_divides():
  assert common._chunk_length(1000, 250) == 250
  assert common._chunk_length(7, 250) == 7
  assert common._chunk_length(1001, 250) == 143  # 7 * 11 * 13


def _count_step(carry, data, key, static):
  del key, static
  return carry + data.sum(), carry


def test_train_loop_runs_every_step():
  carry, losses = common.train_loop(
    _count_step,
    None,
    jnp.float32(0),
    jnp.ones((2,)),
    jax.random.PRNGKey(0),
    12,
    desc="t",
    progress=False,
    max_chunk=5,
  )
  assert float(carry) == 24.0  # 12 steps of +2, chunks of 4
  np.testing.assert_array_equal(losses, np.arange(12) * 2.0)
  with pytest.raises(ValueError, match="num_steps"):
    common.train_loop(
      _count_step,
      None,
      0.0,
      jnp.ones(2),
      jax.random.PRNGKey(0),
      0,
      desc="t",
      progress=False,
    )


def test_sample_in_batches_prefix_stable():
  draw = lambda k: jax.random.normal(k, (4, 3))
  a = common.sample_in_batches(draw, 0, 10, 4)
  b = common.sample_in_batches(draw, 0, 6, 4)
  assert a.shape == (10, 3)
  np.testing.assert_array_equal(a[:6], b)
