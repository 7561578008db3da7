"""ctjax.xla_options: per-program XLA:CPU options, with a fallback."""

import re

import jax
import jax.numpy as jnp
import numpy as np

from ctjax import xla_options


def _f(a, b):
  return jnp.tanh(a @ b) @ b


def _kinds(compiled_text):
  return set(re.findall(r"kind=(\w+)", compiled_text))


def test_options_reach_the_program_and_agree_with_defaults(rng):
  a = jnp.asarray(rng.normal(size=(64, 32)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(32, 32)), jnp.float32)
  tuned = xla_options.cpu_jit(_f, xla_options.ENCODER_CPU_OPTIONS)
  np.testing.assert_allclose(
    tuned(a, b), jax.jit(_f)(a, b), rtol=1e-5, atol=1e-5
  )
  # XLA's default sends the products to YNNPACK custom fusions; the
  # encoders' options turn them off (plain dots), so they did apply.
  assert "kCustom" in _kinds(jax.jit(_f).lower(a, b).compile().as_text())
  assert "kCustom" not in _kinds(tuned.lower(a, b).compile().as_text())
  assert tuned._cache_size() >= 1  # pylint: disable=protected-access
  tuned.clear_cache()
  assert tuned._cache_size() == 0  # pylint: disable=protected-access


def test_unknown_option_falls_back_to_defaults(rng):
  a = jnp.asarray(rng.normal(size=(8, 8)), jnp.float32)
  f = xla_options.cpu_jit(_f, {"xla_cpu_no_such_option": True})
  np.testing.assert_array_equal(f(a, a), jax.jit(_f)(a, a))
  np.testing.assert_array_equal(f(a, a), jax.jit(_f)(a, a))  # stays so
