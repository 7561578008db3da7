"""stats.bootstrap against brute-force resampling in NumPy/SciPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from ctjax.stats import bootstrap as bl
from ctjax.stats import ct as ct_lib
from ctjax.stats import fitted as fitted_lib
from ctjax.stats import mannwhitney

L, n, m, k = 2, 60, 40, 3


def _case(rng, pad=0):
  """Test stats and a scored batch with many ties (distances on a 0.1 grid);
  ``pad`` padding rows (cell k) after the m valid ones."""
  t_cells = rng.integers(0, k, (L, n)).astype(np.int32)
  t_dist = np.round(rng.random((L, n)), 1).astype(np.float32)
  sd, st = jax.vmap(lambda d, c: mannwhitney.sort_by_cell(d, c, k))(
    t_dist, t_cells
  )
  counts = np.stack([np.bincount(c, minlength=k) for c in t_cells])
  test = fitted_lib.TestStats(
    sorted_dist=sd,
    starts=st,
    cells=jnp.asarray(t_cells),
    dist=jnp.asarray(t_dist),
    index=jnp.zeros((L, n), jnp.int32),
    counts=jnp.asarray(counts, jnp.int32),
  )
  q_cells = rng.integers(0, k, (L, m + pad)).astype(np.int32)
  q_cells[:, m:] = k
  q_dist = np.round(rng.random((L, m + pad)), 1).astype(np.float32)
  q_dist[:, m:] = np.inf
  return test, t_dist, t_cells, q_dist, q_cells


def _brute(t_dist, t_cells, q_dist, q_cells, gi, ti):
  """(2U, m_π, n_π) ``[L, k]`` of one replicate, with scipy's U."""
  u2 = np.zeros((L, k), np.int64)
  n_gen = np.zeros((L, k), np.int64)
  n_test = np.zeros((L, k), np.int64)
  for l in range(L):
    td, tc = t_dist[l, ti], t_cells[l, ti]
    qd, qc = q_dist[l, gi], q_cells[l, gi]
    for c in range(k):
      p, q = td[tc == c], qd[qc == c]
      n_gen[l, c], n_test[l, c] = len(q), len(p)
      if len(p) and len(q):
        u2[l, c] = round(2 * mannwhitneyu(q, p).statistic)
  return u2, n_gen, n_test


def test_positions_match_numpy(rng):
  test, t_dist, t_cells, q_dist, q_cells = _case(rng, pad=3)
  for l in range(L):
    lo, lt, le = (
      np.asarray(x)
      for x in bl.positions(
        test.sorted_dist[l], test.starts[l], q_dist[l], q_cells[l]
      )
    )
    sd, st = np.asarray(test.sorted_dist[l]), np.asarray(test.starts[l])
    for j in range(m + 3):
      c = q_cells[l, j]
      if c == k:
        assert lo[j] == lt[j] == le[j] == 0
        continue
      run = sd[st[c] : st[c + 1]]
      assert lo[j] == st[c]
      assert lt[j] - lo[j] == np.sum(run < q_dist[l, j])
      assert le[j] - lo[j] == np.sum(run <= q_dist[l, j])
    tu = mannwhitney.twice_u(test.sorted_dist[l], st, q_dist[l], q_cells[l])
    np.testing.assert_array_equal((lt - lo) + (le - lo), tu)


PAD = 5  # padding rows after the m valid ones


def _replicates(case, seed, mode, batch_size=4, n_boot=6):
  test, _, _, q_dist, q_cells = case
  return tuple(
    np.asarray(x)
    for x in bl.replicates(
      test,
      jnp.asarray(q_dist),
      jnp.asarray(q_cells),
      jax.random.PRNGKey(seed),
      n_boot=n_boot,
      m=m,
      mode=mode,
      batch_size=batch_size,
    )
  )


@pytest.mark.parametrize("mode", bl.MODES)
def test_replicates_equal_brute_force(rng, mode):
  case = _case(rng, PAD)
  _, t_dist, t_cells, q_dist, q_cells = case
  n_boot, seed = 6, 11
  u2, n_gen, n_test = _replicates(case, seed, mode)
  assert u2.shape == n_gen.shape == n_test.shape == (n_boot, L, k)
  gi, ti = bl.resample_indices(seed, n_boot, m, n)
  assert gi.shape == (n_boot, m) and ti.shape == (n_boot, n)
  assert gi.min() >= 0 and gi.max() < m and ti.max() < n
  for b in range(n_boot):
    g = gi[b] if "gen" in mode else np.arange(m)
    t = ti[b] if "test" in mode else np.arange(n)
    want = _brute(t_dist, t_cells, q_dist, q_cells, g, t)
    for got, w in zip((u2[b], n_gen[b], n_test[b]), want):
      np.testing.assert_array_equal(got, w)
  # the replicates really differ from one another and from the original
  assert len({u2[b].tobytes() for b in range(n_boot)}) == n_boot


def test_chunking_and_seed(rng):
  case = _case(rng, PAD)
  a = _replicates(case, 0, "gen+test")[0]
  np.testing.assert_array_equal(a, _replicates(case, 0, "gen+test")[0])
  np.testing.assert_array_equal(a, _replicates(case, 0, "gen+test", 1)[0])
  assert not np.array_equal(a, _replicates(case, 1, "gen+test")[0])
  # the generated draws do not depend on whether test points are drawn too
  g1, _ = bl.resample_indices(4, 5, m)
  g2, t2 = bl.resample_indices(4, 5, m, n)
  np.testing.assert_array_equal(g1, g2)
  assert t2.shape == (5, n)


def test_counts_are_multiplicities():
  idx = jnp.array([0, 2, 2, 4, 2], jnp.int32)
  np.testing.assert_array_equal(bl.counts(idx, 6), [1, 0, 3, 0, 1, 0])


def test_finish_rows_equal_z_and_ct(rng):
  u2 = rng.integers(0, 2 * 20 * 30, (4, L, k))
  n_test = rng.integers(1, 20, (4, L, k))
  n_gen = rng.integers(0, 30, (4, L, k))
  deg = np.array([False, True])
  got = bl.finish(u2, n_test, n_gen, 0.1, degenerate=deg)
  assert got.shape == (4, L)
  for b in range(4):
    want = ct_lib.z_and_ct(u2[b], n_test[b], n_gen[b], 0.1, degenerate=deg)
    np.testing.assert_array_equal(got[b], want.ct)
  assert np.isnan(got[:, 1]).all()


def test_percentile_interval(rng):
  boot = rng.normal(size=(200, 3))
  boot[:50, 1] = np.nan
  boot[:, 2] = np.nan
  low, high = bl.percentile_interval(boot, 0.9)
  np.testing.assert_allclose(low[0], np.quantile(boot[:, 0], 0.05))
  np.testing.assert_allclose(high[0], np.quantile(boot[:, 0], 0.95))
  np.testing.assert_allclose(low[1], np.quantile(boot[50:, 1], 0.05))
  assert np.isnan(low[2]) and np.isnan(high[2])


@pytest.mark.parametrize(
  "args, match",
  [
    ((-1, 0.95, "gen"), "n_bootstrap"),
    ((2.5, 0.95, "gen"), "n_bootstrap"),
    ((True, 0.95, "gen"), "n_bootstrap"),
    ((10, 0.0, "gen"), "confidence"),
    ((10, 1.0, "gen"), "confidence"),
    ((10, 95, "gen"), "confidence"),
    ((10, "high", "gen"), "confidence"),
    ((10, 0.95, "train"), "bootstrap must be one of"),
  ],
)
def test_bad_arguments(args, match):
  with pytest.raises(ValueError, match=match):
    bl.check_args(*args)


def test_int32_bound(enable_x64):
  with jax.enable_x64(False):
    with pytest.raises(ValueError, match="bootstrap: 2·U"):
      bl.check_sizes(100_000, 20_000)
    assert bl.check_sizes(10_000, 500) == jnp.int32
  assert bl.check_sizes(100_000, 20_000) == jnp.int64
