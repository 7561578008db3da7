"""The fit program's CPU compile options change its compile time only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctjax.stats import fitted as fitted_lib


def _data(rng, n_layers=2, n=600, n_test=200, dim=24):
  centres = rng.normal(size=(5, dim)) * 4
  make = lambda m: centres[rng.integers(0, 5, m)] + rng.normal(size=(m, dim))
  train = np.stack([make(n) for _ in range(n_layers)]).astype(np.float32)
  test = np.stack([make(n_test) for _ in range(n_layers)]).astype(np.float32)
  keys = jax.random.split(jax.random.PRNGKey(0), n_layers)
  return train, test, keys


KW = dict(
  n_components=8,
  n_cells=4,
  n_init=3,
  metric="cosine",
  tile_queries=16,
  tile_train=64,
  search="tiled",
)


@pytest.fixture(scope="module")
def default_fit():
  data = _data(np.random.default_rng(0))
  plain = jax.jit(
    fitted_lib._fit_layers_impl, static_argnames=fitted_lib._FIT_STATIC
  )
  return data, plain(*data, **KW)


def test_cpu_options_fit_equals_the_default(default_fit):
  # Same cells, neighbours and counts; floats up to the rounding of sums
  # reduced in another order (the k-means inertia differs by an ulp here).
  # (The fallback where XLA lacks an option: tests/xla_options_test.py.)
  data, want = default_fit
  got = fitted_lib._fit_layers(*data, **KW)
  traced = jax.jit(
    lambda t, p, k: fitted_lib.fit_layers(
      t, p, k, fitted_lib.FitConfig(**KW), compiled=False
    )
  )(*data)
  for fit in (got[0], traced):
    leaves = zip(
      jax.tree_util.tree_leaves(fit), jax.tree_util.tree_leaves(want[0])
    )
    for a, b in leaves:
      if jnp.issubdtype(a.dtype, jnp.floating):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
      else:
        np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(got[1], want[1])
