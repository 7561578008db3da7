"""ctjax.c_t against the SciPy oracle, and its input errors."""

import jax
import numpy as np
import pytest

import ctjax
from tests.stats import oracle


def _lattice_data(rng, d=4, k=3):
  """Integer points (exact float32 L2 distances, many ties), exact copies
  of training points in P and Q, and a duplicated P/Q point."""
  train = rng.integers(-3, 4, size=(120, d)).astype(np.float64)
  test = rng.integers(-3, 4, size=(90, d)).astype(np.float64)
  gen = rng.integers(-3, 4, size=(80, d)).astype(np.float64)
  gen[:10] = train[:10]  # copies: distance exactly 0
  test[:5] = train[20:25]  # copies in P too: ties at 0
  gen[10:15] = test[30:35]  # the same points in P and Q: tied L
  cells = lambda x: np.abs(x).sum(1).astype(int) % k
  return train, test, gen, cells(train), cells(test), cells(gen)


def _gaussian_data(rng, d=6, k=4):
  train = rng.normal(size=(150, d))
  test = rng.normal(size=(100, d))
  gen = np.concatenate([train[:20] * 1.0, rng.normal(size=(60, d)) * 0.7])
  gen[20:25] = test[:5]  # duplicated P/Q points: tied L
  test[5:8] = train[30:33]  # copies in P too: ties at exactly 0
  cells = lambda x: np.argmax(x[:, :k], axis=1)
  return train, test, gen, cells(train), cells(test), cells(gen)


# Integer lattices have exact L2 ties; their cosine "ties" (parallel lattice
# vectors) are equal only in exact arithmetic, so cosine uses Gaussian data
# with exact copies and duplicated points instead.
CASES = [
  ("l2", _lattice_data),
  ("l2", _gaussian_data),
  ("cosine", _gaussian_data),
]


@pytest.mark.parametrize("tau", [0.0, 0.1, 0.24])
@pytest.mark.parametrize("metric,data", CASES)
def test_c_t_matches_oracle_x64(enable_x64, rng, metric, tau, data):
  train, test, gen, c_tr, c_te, c_ge = data(rng)
  want, z_want, inc_want = oracle.c_t(
    test, c_te, gen, c_ge, train, c_tr, tau, metric
  )
  got = ctjax.c_t(test, c_te, gen, c_ge, train, c_tr, tau=tau, metric=metric)
  assert np.isfinite(want)
  np.testing.assert_allclose(got.ct, want, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(got.z, z_want, rtol=1e-9, atol=1e-12)
  np.testing.assert_array_equal(got.included, inc_want)


@pytest.mark.parametrize("tau", [0.0, 0.2])
@pytest.mark.parametrize("metric,data", CASES)
def test_c_t_matches_oracle_float32(rng, metric, tau, data):
  assert not jax.config.jax_enable_x64
  train, test, gen, c_tr, c_te, c_ge = data(rng)
  f32 = lambda x: x.astype(np.float32)
  want, _, _ = oracle.c_t(
    f32(test), c_te, f32(gen), c_ge, f32(train), c_tr, tau, metric
  )
  got = ctjax.c_t(
    f32(test), c_te, f32(gen), c_ge, f32(train), c_tr, tau=tau, metric=metric
  )
  np.testing.assert_allclose(got.ct, want, rtol=1e-4)


def test_tiled_equals_materialised(rng):
  train, test, gen, c_tr, c_te, c_ge = _gaussian_data(rng)
  a = ctjax.c_t(
    test,
    c_te,
    gen,
    c_ge,
    train,
    c_tr,
    tau=0.05,
    tile_queries=None,
    return_neighbors=True,
  )
  b = ctjax.c_t(
    test,
    c_te,
    gen,
    c_ge,
    train,
    c_tr,
    tau=0.05,
    tile_queries=8,
    tile_train=16,
    return_neighbors=True,
  )
  assert a.ct == b.ct
  np.testing.assert_array_equal(a.neighbors.gen_index, b.neighbors.gen_index)
  np.testing.assert_array_equal(a.neighbors.test_dist, b.neighbors.test_dist)


def test_neighbors_match_brute_force(enable_x64, rng):
  train, test, gen, c_tr, c_te, c_ge = _gaussian_data(rng)
  got = ctjax.c_t(
    test, c_te, gen, c_ge, train, c_tr, tau=0.1, return_neighbors=True
  ).neighbors
  d, i = oracle.nearest_in_cell(gen, c_ge, train, c_tr, "l2")
  np.testing.assert_allclose(got.gen_dist, d, rtol=1e-12)
  np.testing.assert_array_equal(got.gen_index, i)
  assert np.all(got.gen_dist[:20] == 0)  # exact copies


def test_exact_u_beyond_float32_range():
  """n·m = 4·10⁸ pairs: U must be exact (float32 has 24 bits)."""
  n = m = 20_001
  test = np.arange(n, dtype=np.float64)[:, None] + 0.5
  gen = np.arange(m, dtype=np.float64)[:, None] + 0.25
  train = np.zeros((1, 1))
  res = ctjax.c_t(
    test,
    np.zeros(n, int),
    gen,
    np.zeros(m, int),
    train,
    np.zeros(1, int),
    tau=0.0,
    metric="l2",
  )
  # L(p) = i + 0.5, L(q) = j + 0.25: q_j beats p_i iff j > i.
  u = m * (m - 1) // 2
  assert res.u[0] == u
  assert isinstance(res.u[0], (float, np.floating)) and res.u[0] == float(u)


class TestErrors:
  def _ok(self, rng):
    x = rng.normal(size=(30, 3))
    c = np.arange(30) % 3
    return x, c

  def test_nan(self, rng):
    x, c = self._ok(rng)
    bad = x.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="gen has 1 NaN/Inf values .*row 4"):
      ctjax.c_t(x, c, bad, c, x, c, tau=0.1)

  def test_dims(self, rng):
    x, c = self._ok(rng)
    with pytest.raises(ValueError, match="same dimension|share one dimension"):
      ctjax.c_t(x, c, x[:, :2], c, x, c, tau=0.1)

  @pytest.mark.parametrize("tau", [-0.1, 1.0, 2.0, float("nan")])
  def test_tau(self, rng, tau):
    x, c = self._ok(rng)
    with pytest.raises(ValueError, match="tau must be in"):
      ctjax.c_t(x, c, x, c, x, c, tau=tau)

  def test_cell_without_training_point(self, rng):
    x, c = self._ok(rng)
    gen_c = c.copy()
    gen_c[0] = 3
    with pytest.raises(ValueError, match="cell 3: no training point"):
      ctjax.c_t(x, c, x, gen_c, x, c, tau=0.1)

  def test_cell_without_test_point(self, rng):
    x, c = self._ok(rng)
    test_c = np.where(c == 1, 0, c)
    with pytest.raises(ValueError, match="cell 1: no test point.*fewer cells"):
      ctjax.c_t(x, test_c, x, c, x, c, tau=0.1)

  def test_cells_shape(self, rng):
    x, c = self._ok(rng)
    with pytest.raises(ValueError, match="gen_cells must have shape"):
      ctjax.c_t(x, c, x, c[:5], x, c, tau=0.1)

  def test_no_cell_above_tau_is_nan_with_warning(self, rng):
    x, c = self._ok(rng)
    with pytest.warns(RuntimeWarning, match="no cell holds more than tau"):
      res = ctjax.c_t(x, c, x, c, x, c, tau=0.5)
    assert np.isnan(res.ct)
