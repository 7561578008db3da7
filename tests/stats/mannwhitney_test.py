"""Exact U counts against scipy.stats.mannwhitneyu, with ties (hypothesis)."""

import hypothesis
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
from scipy.stats import mannwhitneyu

from ctjax.stats import mannwhitney

# Few distinct values -> many ties, within and across the two samples.
values = st.lists(
  st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, 7.25]), min_size=1, max_size=40
)


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(p=values, q=values, k=st.integers(1, 3), data=st.data())
def test_u_per_cell_matches_scipy(p, q, k, data):
  p, q = np.array(p, np.float32), np.array(q, np.float32)
  pc = np.array(
    data.draw(st.lists(st.integers(0, k - 1), min_size=len(p), max_size=len(p)))
  )
  qc = np.array(
    data.draw(st.lists(st.integers(0, k - 1), min_size=len(q), max_size=len(q)))
  )
  # Pad to a fixed length with the sentinel cell k (one compilation per k).
  pad = lambda x, fill: np.concatenate([x, np.full(40 - len(x), fill, x.dtype)])
  sorted_d, starts = mannwhitney.sort_by_cell(
    jnp.asarray(pad(p, 0.0)), jnp.asarray(pad(pc, k)), k
  )
  tu = mannwhitney.twice_u(
    sorted_d, starts, jnp.asarray(pad(q, 0.0)), jnp.asarray(pad(qc, k))
  )
  merged = mannwhitney.twice_u_merge(
    sorted_d, starts, jnp.asarray(pad(q, 0.0)), jnp.asarray(pad(qc, k))
  )
  np.testing.assert_array_equal(np.asarray(merged), np.asarray(tu))
  u = mannwhitney.cell_sums(np.asarray(tu), pad(qc, k), k) / 2
  for c in range(k):
    pi, qi = p[pc == c], q[qc == c]
    want = mannwhitneyu(qi, pi).statistic if len(pi) and len(qi) else 0.0
    assert u[c] == want, (c, pi, qi)


def test_padding_rows_count_nothing():
  sorted_d, starts = mannwhitney.sort_by_cell(
    jnp.array([1.0, 2.0]), jnp.array([0, 0]), 1
  )
  tu = mannwhitney.twice_u(
    sorted_d, starts, jnp.array([5.0, 5.0]), jnp.array([0, 1])
  )  # cell 1 = sentinel
  np.testing.assert_array_equal(np.asarray(tu), [4, 0])


def test_merge_equals_search_with_inf_and_empty_cells():
  """Infinite distances (a cell without training points), empty test cells,
  padding and ties: the sort-merge counts equal the binary search's."""
  p = jnp.array([0.5, np.inf, 1.0, 1.0, np.inf, 0.2], jnp.float32)
  pc = jnp.array([0, 0, 0, 2, 2, 2])  # cell 1 has no test point
  sorted_d, starts = mannwhitney.sort_by_cell(p, pc, 4)
  q = jnp.array([1.0, np.inf, 0.0, 7.0, 1.0, np.inf, 0.5], jnp.float32)
  qc = jnp.array([0, 0, 1, 2, 2, 2, 4])  # 4: padding
  want = mannwhitney.twice_u(sorted_d, starts, q, qc)
  got = mannwhitney.twice_u_merge(sorted_d, starts, q, qc)
  np.testing.assert_array_equal(np.asarray(want), [3, 5, 0, 4, 3, 5, 0])
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_cell_sums_int64_exact():
  v = np.full((1, 3), 2**31 - 1, np.int64)
  out = mannwhitney.cell_sums(v, np.zeros((1, 3), int), 1)
  assert out[0, 0] == 3 * (2**31 - 1)
