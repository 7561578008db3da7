"""Bootstrap replicates of C_T from the parts of one scoring, exactly.

A scored batch leaves, per layer, each generated point's cell and L(q)
(`scoring.score_detailed`); the fitted reference holds the test distances
L(p) sorted by (cell, distance) (`fitted.TestStats`). With the cells and
the nearest-neighbour distances fixed, a bootstrap replicate only reweights
points:

  * resampling the m generated points (uniform draws with replacement) gives
    each a multiplicity w_q ≥ 0, Σ w_q = m; then
    2·U_π = Σ_{q ∈ π} w_q · twice_u(q) and m_π = Σ_{q ∈ π} w_q;
  * resampling the n test points gives each a multiplicity v_p ≥ 0,
    Σ v_p = n. Let P be the prefix sums of v in the sorted test order; for a
    query in cell π whose value L(q) sits in the sorted run
    ``[lo, hi)`` with ``lt`` entries < L(q) and ``le`` entries ≤ L(q) before
    it (absolute positions, `positions`),
    twice_u(q) = 2·(P[lt] − P[lo]) + (P[le] − P[lt]) = P[lt] + P[le] − 2·P[lo]
    and n_π = P[starts[π + 1]] − P[starts[π]].

No nearest-neighbour search runs again: each query's positions come from one
binary search into its cell's sorted test distances (the search
`mannwhitney.twice_u` does), once, before the replicates. Every count is an
integer: the per-query parts are at most 2n, the per-cell sums at most 2·n·m
(as in scoring), int32 while 2·n·m < 2³¹ (`scoring.u2_dtype`).

Replicate b draws its generated indices with ``gen_keys[b]`` and its test
indices with ``test_keys[b]`` (`replicate_keys`), so `resample_indices`
reproduces them, and the generated draws do not depend on whether the test
points are resampled too. Replicates run vmapped in chunks of ``batch_size``
(`jax.lax.map`), so memory is one chunk's.

Z and C_T of each replicate are finished on the host in float64 by the same
`ct.z_and_ct` that finishes `CTReference.score` (`finish`), and the interval
is the percentile interval of the replicates (`percentile_interval`).
"""

import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ctjax.stats import ct as ct_lib
from ctjax.stats import scoring

MODES = ("gen", "test", "gen+test")
DEFAULT_CONFIDENCE = 0.95
# Device bytes one chunk of replicates may use (sets ``batch_size``).
CHUNK_BYTES = 64 << 20
# Replicates per chunk at most (larger chunks were slower on a CPU).
MAX_CHUNK = 64


def check_args(n_bootstrap, confidence, mode) -> tuple[int, float, str]:
  """Validates the bootstrap arguments; returns them normalised.

  Raises:
    ValueError: ``n_bootstrap`` not an integer ≥ 0, ``confidence`` not in
      (0, 1), or ``mode`` not one of `MODES`.
  """
  if (
    isinstance(n_bootstrap, bool)
    or not isinstance(n_bootstrap, (int, np.integer))
    or n_bootstrap < 0
  ):
    raise ValueError(
      f"n_bootstrap must be an integer >= 0 (0: no bootstrap), got "
      f"{n_bootstrap!r}"
    )
  try:
    confidence = float(confidence)
  except (TypeError, ValueError):
    raise ValueError(
      f"confidence must be a number in (0, 1), got {confidence!r}"
    ) from None
  if not 0.0 < confidence < 1.0:
    raise ValueError(
      f"confidence must be in (0, 1) (e.g. 0.95), got {confidence!r}"
    )
  if mode not in MODES:
    raise ValueError(f"bootstrap must be one of {MODES}, got {mode!r}")
  return int(n_bootstrap), confidence, mode


def check_sizes(n_test: int, m: int):
  """The integer dtype of the per-cell sums (`scoring.u2_dtype`).

  Raises:
    ValueError: 2·n·m ≥ 2³¹ without ``jax_enable_x64``.
  """
  try:
    return scoring.u2_dtype(n_test, m)
  except ValueError as e:
    raise ValueError(f"bootstrap: {e}") from None


def replicate_keys(key, n_boot: int):
  """Per-replicate keys ``(gen_keys [B, 2], test_keys [B, 2])`` (uint32).

  Args:
    key: ``jax.random.PRNGKey(seed)``.
    n_boot: replicates B.
  """
  kg, kt = jax.random.split(key)
  return jax.random.split(kg, n_boot), jax.random.split(kt, n_boot)


def draw(key, size: int):
  """``[size]`` int32 uniform indices into ``range(size)``, with replacement."""
  return jax.random.randint(key, (size,), 0, size, dtype=jnp.int32)


def resample_indices(seed, n_boot: int, m: int, n: int | None = None):
  """The indices replicate b resamples, as `CTReference.score` draws them.

  Args:
    seed: the int ``seed`` given to `CTReference.score`.
    n_boot: replicates B.
    m: generated points (valid rows).
    n: test points, to draw test indices too (``None``: not).

  Returns:
    ``(gen_idx [B, m], test_idx [B, n] or None)`` int32 NumPy arrays:
    replicate b scores ``gen[:, gen_idx[b]]`` against the test points
    ``test[:, test_idx[b]]``.
  """
  gk, tk = replicate_keys(jax.random.PRNGKey(seed), n_boot)
  gen_idx = np.asarray(jax.vmap(lambda k: draw(k, m))(gk))
  test_idx = (
    None if n is None else np.asarray(jax.vmap(lambda k: draw(k, n))(tk))
  )
  return gen_idx, test_idx


def counts(idx, size: int):
  """Multiplicities ``[size]`` int32 of the indices ``idx [s]`` (exact)."""
  return jax.ops.segment_sum(
    jnp.ones(idx.shape, jnp.int32), idx, num_segments=size
  )


def _first_not_below(sorted_dist, lo, hi, values, strict):
  """Per query, the first position i in ``[lo, hi)`` with
  ``sorted_dist[i] >= v`` (``> v`` when not ``strict``), else ``hi``."""
  n = sorted_dist.shape[0]
  steps = max(1, math.ceil(math.log2(n + 1))) + 1

  def body(_, state):
    lo, hi = state
    mid = (lo + hi) // 2
    x = sorted_dist[jnp.clip(mid, 0, n - 1)]
    below = (x < values) if strict else (x <= values)
    open_ = lo < hi
    return (
      jnp.where(open_ & below, mid + 1, lo),
      jnp.where(open_ & ~below, mid, hi),
    )

  return jax.lax.fori_loop(0, steps, body, (lo, hi))[0]


def positions(sorted_dist, starts, q_dist, q_cells):
  """Where each query falls among its cell's sorted test distances.

  Args:
    sorted_dist: ``[n]`` test distances sorted by (cell, distance).
    starts: ``[k + 1]`` int32 cell boundaries in ``sorted_dist``.
    q_dist: ``[m]`` L(q).
    q_cells: ``[m]`` cells; ``>= k`` marks padding.

  Returns:
    ``(lo, lt, le)``, each ``[m]`` int32 absolute positions: the cell's first
    entry, the first entry ≥ L(q), the first entry > L(q). Padding rows get
    0, 0, 0 (they count nowhere). twice_u(q) = (lt − lo) + (le − lo).
  """
  k = starts.shape[0] - 1
  valid = (q_cells >= 0) & (q_cells < k)
  c = jnp.clip(q_cells, 0, k - 1).astype(jnp.int32)
  lo, hi = starts[c], starts[c + 1]
  lt = _first_not_below(sorted_dist, lo, hi, q_dist, True)
  le = _first_not_below(sorted_dist, lo, hi, q_dist, False)
  zero = jnp.zeros_like(lo)
  return tuple(
    jnp.where(valid, x, zero).astype(jnp.int32) for x in (lo, lt, le)
  )


def _cell_sums(w, tu, cells, k, acc):
  """``(2U [k], m_π [k])`` of one layer: weights ``w [m]``, parts ``tu [m]``,
  cells ``[m]`` (k marks padding)."""
  seg = functools.partial(jax.ops.segment_sum, num_segments=k + 1)
  u2 = seg(w.astype(acc) * tu.astype(acc), cells)[:k]
  return u2, seg(w, cells)[:k]


def _n_bounds(m_pad: int, k: int) -> int:
  """Bins of `_test_bins`: one more than its boundaries."""
  return 3 * m_pad + k + 2


def _test_bins(dist, cells, starts, lo, lt, le):
  """One layer's test points binned by the positions the queries read.

  The sorted positions any prefix sum is read at (``lo``, ``lt``, ``le``
  ``[m]`` from `positions`, and ``starts [k + 1]``) are the boundaries
  ``bnd`` (sorted, repeats kept). A test point of sorted position r goes to
  bin #{t: bnd[t] ≤ r}; then for every boundary x, the points of position
  < x are exactly those of bin ≤ j(x) = #{t: bnd[t] < x}, so the prefix sum
  at x is the cumulative bin count at j(x). Per replicate that is one
  integer segment sum of n multiplicities into ``3m + k + 2`` bins, not a
  prefix sum over n.

  Args:
    dist, cells: ``[n]`` test distances and cells (the test set's order).
    starts: ``[k + 1]``; lo, lt, le: ``[m]``.

  Returns:
    ``(bins [n], j_lo, j_lt, j_le [m], j_st [k + 1])`` int32.
  """
  n = dist.shape[0]
  order = jnp.lexsort((dist, cells))  # sorted position -> test point
  # Ties may sit in any order: boundaries fall between runs of equal keys.
  rank = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
  bnd = jnp.sort(jnp.concatenate([lo, lt, le, starts]))
  bins = jnp.searchsorted(bnd, rank, side="right").astype(jnp.int32)
  j = [
    jnp.searchsorted(bnd, x, side="left").astype(jnp.int32)
    for x in (lo, lt, le, starts)
  ]
  return (bins, *j)


def chunk_size(n_layers: int, n: int, m: int, mode: str) -> int:
  """Replicates per vmapped chunk: at most `MAX_CHUNK` on a CPU (1024 on an
  accelerator), and few enough that a chunk's int32 buffers stay within
  `CHUNK_BYTES`."""
  per = 4 * (n + m + n_layers * (8 * m + (n if "test" in mode else 0)))
  most = MAX_CHUNK if jax.default_backend() == "cpu" else 1024
  return int(max(1, min(most, CHUNK_BYTES // per)))


@functools.partial(
  jax.jit, static_argnames=("m", "mode", "batch_size", "n_boot")
)
def replicates(
  test, q_dist, q_cells, key, *, n_boot: int, m: int, mode: str, batch_size
):
  """Exact per-cell sums of B bootstrap replicates, every layer.

  Args:
    test: the reference's `fitted.TestStats` (``sorted_dist``/``dist``/
      ``cells [L, n]``, ``starts [L, k + 1]``, ``counts [L, k]``).
    q_dist: ``[L, m_pad]`` L(q) of the scored batch.
    q_cells: ``[L, m_pad]`` its cells (k marks padding rows).
    key: ``jax.random.PRNGKey(seed)``.
    n_boot: replicates B.
    m: valid generated rows (the first m of ``m_pad``); the draws are over
      them.
    mode: "gen" (resample generated points), "test" (resample test points)
      or "gen+test" (both, independently).
    batch_size: replicates per vmapped chunk (`chunk_size`).

  Returns:
    ``(u2, n_gen, n_test)``, each ``[B, L, k]``: exact 2·U per cell (the
    `check_sizes` dtype), generated and test points per cell (int32).
  """
  n_layers, m_pad = q_cells.shape
  n = test.dist.shape[-1]
  k = test.starts.shape[-1] - 1
  acc = check_sizes(n, m_pad)
  q_cells = jnp.minimum(q_cells, k).astype(jnp.int32)
  lo, lt, le = jax.vmap(positions)(
    test.sorted_dist, test.starts, q_dist, q_cells
  )
  gen_keys, test_keys = replicate_keys(key, n_boot)
  n_test0 = test.counts.astype(jnp.int32)
  tu0 = (lt - lo) + (le - lo)
  if "test" in mode:
    bins, j_lo, j_lt, j_le, j_st = jax.vmap(_test_bins)(
      test.dist, test.cells, test.starts, lo, lt, le
    )

  def gen_weights(key):
    if "gen" in mode:
      return jnp.pad(counts(draw(key, m), m), (0, m_pad - m))
    return (jnp.arange(m_pad) < m).astype(jnp.int32)

  def one(keys):
    kg, kt = keys
    w = gen_weights(kg)
    if "test" in mode:
      v = counts(draw(kt, n), n)

      def layer(bins, j_lo, j_lt, j_le, j_st):
        # prefix[j]: resampled test points of sorted position below the
        # j-th boundary (an exact integer).
        hist = jax.ops.segment_sum(v, bins, num_segments=_n_bounds(m_pad, k))
        prefix = jnp.cumsum(hist, dtype=jnp.int32)
        return (
          prefix[j_lt] + prefix[j_le] - 2 * prefix[j_lo],
          prefix[j_st[1:]] - prefix[j_st[:-1]],
        )

      tu, n_test = jax.vmap(layer)(bins, j_lo, j_lt, j_le, j_st)
    else:
      tu, n_test = tu0, n_test0
    u2, n_gen = jax.vmap(lambda t, c: _cell_sums(w, t, c, k, acc))(tu, q_cells)
    return u2, n_gen, n_test

  return jax.lax.map(one, (gen_keys, test_keys), batch_size=batch_size)


def finish(u2, n_test, n_gen, tau: float, degenerate=None) -> np.ndarray:
  """C_T ``[B, L]`` of the replicates, in float64 on the host.

  Args:
    u2, n_test, n_gen: ``[B, L, k]`` from `replicates`.
    tau: the threshold the point estimate used.
    degenerate: ``[L]`` bool layers reported as NaN.

  Returns:
    ``ct_boot [B, L]``: each row is what `ct.z_and_ct` gives for those
    counts (NaN where no cell exceeds τ in that replicate; no warning).
  """
  u2, n_test, n_gen = (np.asarray(x) for x in (u2, n_test, n_gen))
  n_boot, n_layers, k = u2.shape
  deg = np.zeros(n_layers, bool) if degenerate is None else degenerate
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    res = ct_lib.z_and_ct(
      u2.reshape(-1, k),
      n_test.reshape(-1, k),
      n_gen.reshape(-1, k),
      tau,
      degenerate=np.tile(np.asarray(deg, bool), n_boot),
    )
  return res.ct.reshape(n_boot, n_layers)


def percentile_interval(ct_boot, confidence: float = DEFAULT_CONFIDENCE):
  """Percentile bootstrap interval per layer.

  Args:
    ct_boot: ``[B, L]`` replicates (NaN replicates are left out).
    confidence: the interval's nominal level, in (0, 1).

  Returns:
    ``(low [L], high [L])``: the (1 − c)/2 and (1 + c)/2 quantiles of each
    layer's finite replicates (NumPy's linear interpolation); NaN for a
    layer with none.
  """
  ct_boot = np.asarray(ct_boot, np.float64)
  alpha = (1.0 - float(confidence)) / 2.0
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN layers
    low, high = np.nanquantile(ct_boot, [alpha, 1.0 - alpha], axis=0)
  return low, high
