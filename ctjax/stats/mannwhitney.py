"""Exact per-cell Mann-Whitney U counts.

For a cell π, U_π = #{(q, p) in π: L(q) > L(p)} + ½ #{(q, p) in π: L(q) = L(p)}.
Everything here works with 2·U so that it stays an integer:

  twice_u(q) = 2 · #{p in cell(q): L(p) < L(q)} + #{p in cell(q): L(p) = L(q)}

is computed on device per query (int32; at most 2n) from the test distances
sorted by (cell, distance), in one of two ways that give the same integers:

  - ``"search"`` (right for a CPU): a binary search per query in its cell's
    run of sorted test distances (`twice_u`);
  - ``"merge"`` (right for a GPU/TPU): one sort of the test distances with
    every query entered twice, just before and just after the equal test
    distances of its cell; a running count of test entries then gives both
    counts at once (`twice_u_merge`): a few large kernels instead of a
    fixed-length loop of small ones. The per-cell sums reach n·m and
more, so they are taken in integers, never in floats: on device by an integer
segment sum (`ctjax.stats.scoring`, int32 while 2·n·m < 2³¹) or on the host in
int64 (`cell_sums`).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnames=("n_cells",))
def sort_by_cell(dists: jax.Array, cells: jax.Array, n_cells: int):
  """Sorts test distances by (cell, distance).

  Args:
    dists: ``[n]`` distances L(p) of the test points.
    cells: ``[n]`` int cell of each test point (values in [0, n_cells)).
    n_cells: k.

  Returns:
    ``(sorted_dists [n], starts [k + 1])``: cell c holds
    ``sorted_dists[starts[c]:starts[c+1]]`` in increasing order.
  """
  cells = cells.astype(jnp.int32)
  order = jnp.lexsort((dists, cells))
  # starts[c] = #{cells < c}: one fused compare-and-count (a searchsorted in
  # the sorted cells compiles to a loop of small kernels).
  below = cells[None, :] < jnp.arange(n_cells + 1, dtype=jnp.int32)[:, None]
  starts = jnp.sum(below, axis=1, dtype=jnp.int32)
  return dists[order], starts


def _count_below(sorted_dists, lo, hi, values, strict):
  """Per query, #{i in [lo, hi): sorted_dists[i] < v} (or <= v); fixed loop."""
  n = sorted_dists.shape[0]
  steps = max(1, math.ceil(math.log2(n + 1)))
  base = lo

  def body(_, state):
    lo, hi = state
    active = lo < hi
    mid = (lo + hi) // 2
    x = sorted_dists[jnp.clip(mid, 0, n - 1)]
    go_right = (x < values) if strict else (x <= values)
    lo = jnp.where(active & go_right, mid + 1, lo)
    hi = jnp.where(active & ~go_right, mid, hi)
    return lo, hi

  lo, _ = jax.lax.fori_loop(0, steps + 1, body, (lo, hi))
  return lo - base


@jax.jit
def twice_u(
  sorted_dists: jax.Array,
  starts: jax.Array,
  q_dists: jax.Array,
  q_cells: jax.Array,
) -> jax.Array:
  """2·U contribution ``[m]`` (int32) of each query against its cell's tests.

  Args:
    sorted_dists: ``[n]`` from `sort_by_cell`.
    starts: ``[k + 1]`` from `sort_by_cell`.
    q_dists: ``[m]`` distances L(q) of the generated points.
    q_cells: ``[m]`` cell of each generated point; ``>= k`` marks padding
      (contributes 0).
  """
  k = starts.shape[0] - 1
  valid = (q_cells >= 0) & (q_cells < k)
  c = jnp.clip(q_cells, 0, k - 1).astype(jnp.int32)
  lo, hi = starts[c], starts[c + 1]
  less = _count_below(sorted_dists, lo, hi, q_dists, strict=True)
  less_eq = _count_below(sorted_dists, lo, hi, q_dists, strict=False)
  return jnp.where(valid, less + less_eq, 0).astype(jnp.int32)


def twice_u_merge(
  sorted_dists: jax.Array,
  starts: jax.Array,
  q_dists: jax.Array,
  q_cells: jax.Array,
) -> jax.Array:
  """`twice_u` by one sort-merge instead of a binary search per query.

  The n test entries (cell, L(p)) and, per query, the two entries
  (cell, L(q), before) and (cell, L(q), after) are sorted together by
  (cell, distance, side); a test entry sits between the two. The test
  entries ahead of a query's "before" entry are those of lower cells
  (``starts[c]``) plus #{p in c: L(p) < L(q)}; ahead of its "after" entry,
  plus #{p in c: L(p) <= L(q)}.

  Args and result as `twice_u` (``sorted_dists [n]``, ``starts [k + 1]``,
  ``q_dists [m]``, ``q_cells [m]`` with ``>= k`` for padding; ``[m]`` int32).
  """
  n = sorted_dists.shape[0]
  m = q_dists.shape[0]
  k = starts.shape[0] - 1
  valid = (q_cells >= 0) & (q_cells < k)
  c = jnp.clip(q_cells, 0, k - 1).astype(jnp.int32)
  test_cells = (
    jnp.searchsorted(starts, jnp.arange(n, dtype=jnp.int32), side="right") - 1
  ).astype(jnp.int32)
  cells = jnp.concatenate([test_cells, c, c])
  dists = jnp.concatenate([sorted_dists, q_dists, q_dists]).astype(
    sorted_dists.dtype
  )
  # side: 0 = a query's "before" entry, 1 = a test, 2 = its "after" entry.
  side = jnp.concatenate(
    [
      jnp.ones((n,), jnp.int32),
      jnp.zeros((m,), jnp.int32),
      jnp.full((m,), 2, jnp.int32),
    ]
  )
  slot = jnp.arange(n + 2 * m, dtype=jnp.int32)
  _, _, side_s, slot_s = jax.lax.sort(
    (cells, dists, side, slot), num_keys=3, is_stable=True
  )
  is_test = (side_s == 1).astype(jnp.int32)
  ahead = jnp.cumsum(is_test) - is_test  # test entries before each entry
  ahead = jnp.zeros((n + 2 * m,), jnp.int32).at[slot_s].set(ahead)
  below = ahead[n : n + m] - starts[c]
  below_eq = ahead[n + m :] - starts[c]
  return jnp.where(valid, below + below_eq, 0).astype(jnp.int32)


def cell_sums(values, cells, n_cells: int) -> np.ndarray:
  """Exact per-cell sums on the host, in int64.

  Args:
    values: ``[..., m]`` integers (e.g. `twice_u`).
    cells: ``[..., m]`` cells; entries outside [0, n_cells) are ignored.
    n_cells: k.

  Returns:
    ``[..., k]`` int64 sums.
  """
  values = np.asarray(values).astype(np.int64)
  cells = np.asarray(cells).astype(np.int64)
  lead = values.shape[:-1]
  flat_v = values.reshape(-1, values.shape[-1])
  flat_c = cells.reshape(-1, cells.shape[-1])
  out = np.zeros((flat_v.shape[0], n_cells), np.int64)
  for i, (v, c) in enumerate(zip(flat_v, flat_c)):
    ok = (c >= 0) & (c < n_cells)
    np.add.at(out[i], c[ok], v[ok])
  return out.reshape(*lead, n_cells)
