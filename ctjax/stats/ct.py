"""The C_T data-copying statistic (Meehan, Chaudhuri & Dasgupta, 2020).

Read this file top to bottom against docs/method.md §1:

  1. every point of T, P, Q has a cell (given here; `CTReference` fits them);
  2. L(x) = distance from x ∈ P ∪ Q to its nearest training point in its cell
     (`neighbors.nearest_in_cell`);
  3. per cell, U_π = #{L(q) > L(p)} + ½ #{ties} counted exactly
     (`mannwhitney.twice_u` on device, `mannwhitney.cell_sums` in int64), and
     Z_π = (U_π − (n_π m_π / 2 − 0.5)) / sqrt(n_π m_π (n_π + m_π + 1) / 12);
  4. C_T = Σ_{π: m_π/m > τ} (n_π/n) Z_π / Σ_{π: m_π/m > τ} (n_π/n).
"""

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ctjax.stats import mannwhitney
from ctjax.stats import neighbors as nb


@dataclasses.dataclass(frozen=True)
class Neighbors:
  """Nearest training points (original training indices) per layer.

  Attributes:
    gen_index: ``[L, m]`` nearest same-cell training index of each generated point.
    gen_dist: ``[L, m]`` its distance L(q).
    test_index: ``[L, n]`` the same for each test point (computed at fit time).
    test_dist: ``[L, n]`` L(p).
    gen_cells: ``[L, m]`` cell of each generated point.
  """

  gen_index: np.ndarray
  gen_dist: np.ndarray
  test_index: np.ndarray
  test_dist: np.ndarray
  gen_cells: np.ndarray


@dataclasses.dataclass(frozen=True)
class CTResult:
  """C_T and its per-cell parts. Shapes below are for L layers and k cells;
  `c_t` and `ct_score` (one layer) drop the L axis.

  Attributes:
    ct: ``[L]`` C_T (NaN for a degenerate layer or when no cell exceeds τ).
    z: ``[L, k]`` Z_U of each cell (NaN where the cell has no generated point).
    included: ``[L, k]`` bool, cell's generated share m_π/m > τ.
    test_frac: ``[L, k]`` n_π / n.
    gen_frac: ``[L, k]`` m_π / m.
    u: ``[L, k]`` Mann-Whitney U of each cell (exact: integer or half-integer).
    n_test: ``[L, k]`` test points per cell.
    n_gen: ``[L, k]`` generated points per cell.
    tau: the threshold used.
    neighbors: a `Neighbors`, when asked for.
    ct_low: ``[L]`` lower end of C_T's bootstrap interval, or None when no
      bootstrap was asked for (``n_bootstrap=0``).
    ct_high: ``[L]`` its upper end, or None.
    ct_boot: ``[B, L]`` the B bootstrap replicates of C_T (NaN where a
      replicate has no cell above τ), or None.
    confidence: the intervals' nominal level (e.g. 0.95), or None.
    bootstrap: what was resampled ("gen", "test" or "gen+test"), or None.
    The interval is the percentile interval of the replicates, with the
    fitted cells and every nearest-neighbour distance held fixed
    (`ctjax.stats.bootstrap`, docs/method.md).
  """

  ct: np.ndarray
  z: np.ndarray
  included: np.ndarray
  test_frac: np.ndarray
  gen_frac: np.ndarray
  u: np.ndarray
  n_test: np.ndarray
  n_gen: np.ndarray
  tau: float
  neighbors: Neighbors | None = None
  ct_low: np.ndarray | None = None
  ct_high: np.ndarray | None = None
  ct_boot: np.ndarray | None = None
  confidence: float | None = None
  bootstrap: str | None = None

  def squeeze(self) -> "CTResult":
    """Drops a leading layer axis of size 1 (``ct`` becomes a float)."""

    def sq(x):
      return x[0] if isinstance(x, np.ndarray) and x.shape[:1] == (1,) else x

    fields = {
      f.name: sq(getattr(self, f.name))
      for f in dataclasses.fields(self)
      if f.name not in ("neighbors", "ct_boot")
    }
    fields["ct"] = float(self.ct.reshape(-1)[0])
    if self.ct_low is not None:
      fields["ct_low"] = float(np.reshape(self.ct_low, -1)[0])
      fields["ct_high"] = float(np.reshape(self.ct_high, -1)[0])
    if self.ct_boot is not None:
      fields["ct_boot"] = np.asarray(self.ct_boot)[:, 0]
    nbrs = self.neighbors
    if nbrs is not None:
      nbrs = Neighbors(
        **{f.name: sq(getattr(nbrs, f.name)) for f in dataclasses.fields(nbrs)}
      )
    return CTResult(**fields, neighbors=nbrs)


def check_tau(tau: float, m: int | None = None) -> float:
  """Validates τ ∈ [0, 1)."""
  tau = float(tau)
  if not 0.0 <= tau < 1.0 or not np.isfinite(tau):
    hint = (
      f" (the default τ = 20/m needs more than 20 generated points; "
      f"got m = {m}: pass tau explicitly)"
      if m is not None
      else ""
    )
    raise ValueError(f"tau must be in [0, 1), got {tau}{hint}")
  return tau


def default_tau(m: int) -> float:
  """The paper's τ = 20/m, validated."""
  return check_tau(20.0 / m, m)


def z_and_ct(
  twice_u: np.ndarray,
  n_test: np.ndarray,
  n_gen: np.ndarray,
  tau: float,
  *,
  degenerate=None,
  layer_names=None,
):
  """Finishes the statistic on the host, in float64.

  Args:
    twice_u: ``[L, k]`` int64 exact 2·U per cell.
    n_test: ``[L, k]`` test counts; n_gen: ``[L, k]`` generated counts.
    tau: threshold on m_π / m.
    degenerate: ``[L]`` bool, layers to report as NaN.
    layer_names: names used in warnings.

  Returns:
    A `CTResult` without neighbours.
  """
  twice_u = np.asarray(twice_u, np.int64)
  n_c = np.asarray(n_test, np.int64)
  m_c = np.asarray(n_gen, np.int64)
  n_layers = n_c.shape[0]
  if degenerate is None:
    degenerate = np.zeros(n_layers, bool)
  names = layer_names or [str(i) for i in range(n_layers)]
  n = n_c.sum(axis=1, keepdims=True)
  m = m_c.sum(axis=1, keepdims=True)
  u = twice_u / 2.0
  nm = (n_c * m_c).astype(np.float64)
  sd = np.sqrt(nm * (n_c + m_c + 1) / 12.0)
  with np.errstate(invalid="ignore", divide="ignore"):
    z = np.where(
      nm > 0, (u - (nm / 2.0 - 0.5)) / np.where(sd > 0, sd, 1.0), np.nan
    )
    test_frac = n_c / np.maximum(n, 1)
    gen_frac = m_c / np.maximum(m, 1)
  included = (gen_frac > tau) & (n_c > 0) & ~degenerate[:, None]
  weight = np.where(included, test_frac, 0.0)
  total = weight.sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    ct = np.where(
      total > 0,
      np.sum(weight * np.where(included, z, 0.0), axis=1)
      / np.where(total > 0, total, 1.0),
      np.nan,
    )
  for l in range(n_layers):
    if degenerate[l]:
      ct[l] = np.nan
      z[l] = np.nan
    elif total[l] == 0:
      warnings.warn(
        f"layer {names[l]}: no cell holds more than tau={tau:g} of the "
        f"generated points; C_T is NaN (lower tau or score more points)",
        RuntimeWarning,
        stacklevel=3,
      )
  return CTResult(
    ct=ct,
    z=z,
    included=included,
    test_frac=test_frac,
    gen_frac=gen_frac,
    u=u,
    n_test=n_c,
    n_gen=m_c,
    tau=tau,
  )


@functools.partial(
  jax.jit, static_argnames=("n_cells", "metric", "tile_queries", "tile_train")
)
def _ct_kernel(
  test,
  test_cells,
  gen,
  gen_cells,
  train,
  train_cells,
  *,
  n_cells,
  metric,
  tile_queries,
  tile_train,
):
  index = nb.build_index(train, train_cells, n_cells, metric)
  # P and Q go through one call so identical points get identical distances.
  queries = jnp.concatenate([test, gen])
  q_cells = jnp.concatenate([test_cells, gen_cells]).astype(jnp.int32)
  dist, idx = nb.nearest_in_cell(
    index, queries, q_cells, tile_queries=tile_queries, tile_train=tile_train
  )
  n = test.shape[0]
  sorted_d, starts = mannwhitney.sort_by_cell(dist[:n], q_cells[:n], n_cells)
  tu = mannwhitney.twice_u(sorted_d, starts, dist[n:], q_cells[n:])
  return tu, dist, idx


def _as_points(name, x, layer=None):
  x = np.asarray(x)
  where = f"layer {layer}: " if layer is not None else ""
  if x.ndim != 2:
    raise ValueError(
      f"{where}{name} must be [points, dims], got shape {x.shape}"
    )
  if not np.issubdtype(x.dtype, np.floating):
    x = x.astype(np.float32)
  bad = ~np.isfinite(x)
  if bad.any():
    row = int(np.argwhere(bad)[0][0])
    raise ValueError(
      f"{where}{name} has {int(bad.sum())} NaN/Inf values (first in row {row})"
    )
  return x


def _as_cells(name, cells, n_points):
  cells = np.asarray(cells)
  if cells.shape != (n_points,):
    raise ValueError(f"{name} must have shape ({n_points},), got {cells.shape}")
  if not np.issubdtype(cells.dtype, np.integer):
    if not np.all(np.equal(np.mod(cells, 1), 0)):
      raise ValueError(f"{name} must hold integer cell ids")
  cells = cells.astype(np.int64)
  if cells.size and cells.min() < 0:
    raise ValueError(f"{name} holds negative cell ids")
  return cells.astype(np.int32)


def c_t(
  test,
  test_cells,
  gen,
  gen_cells,
  train,
  train_cells,
  *,
  tau: float,
  metric: str = "l2",
  tile_queries: int | None = 64,
  tile_train: int = 4096,
  return_neighbors: bool = False,
) -> CTResult:
  """C_T of one embedding space with cells supplied by the caller.

  This is Meehan et al.'s test as published: the caller partitions the space.

  Args:
    test: ``[n, d]`` held-out test sample P.
    test_cells: ``[n]`` int cell of each test point.
    gen: ``[m, d]`` generated sample Q.
    gen_cells: ``[m]`` int cell of each generated point.
    train: ``[N, d]`` training sample T.
    train_cells: ``[N]`` int cell of each training point.
    tau: generated-share threshold in [0, 1); cells with m_π/m > τ count.
    metric: "l2" (Euclidean) or "cosine" (1 − |cos|).
    tile_queries, tile_train: nearest-neighbour tile sizes (see
      `neighbors.nearest_in_cell`); ``tile_queries=None`` materialises.
    return_neighbors: also return nearest training indices and distances.

  Returns:
    A `CTResult` with ``ct`` a float and per-cell ``[k]`` fields, where k is
    one more than the largest cell id.

  Raises:
    ValueError: on NaN/Inf, mismatched shapes, τ outside [0, 1), or a cell
      holding test or generated points but no training point, or training or
      generated points but no test point.
  """
  if metric not in nb.METRICS:
    raise ValueError(f"metric must be one of {nb.METRICS}, got {metric!r}")
  test, gen, train = (
    _as_points(n, x)
    for n, x in (("test", test), ("gen", gen), ("train", train))
  )
  dims = {x.shape[1] for x in (test, gen, train)}
  if len(dims) != 1:
    raise ValueError(
      f"train, test and gen must share one dimension; got "
      f"train {train.shape}, test {test.shape}, gen {gen.shape}"
    )
  tau = check_tau(tau, gen.shape[0])
  test_cells = _as_cells("test_cells", test_cells, test.shape[0])
  gen_cells = _as_cells("gen_cells", gen_cells, gen.shape[0])
  train_cells = _as_cells("train_cells", train_cells, train.shape[0])
  if min(x.shape[0] for x in (test, gen, train)) == 0:
    raise ValueError("train, test and gen must each hold at least one point")
  k = int(max(test_cells.max(), gen_cells.max(), train_cells.max())) + 1
  n_train = np.bincount(train_cells, minlength=k)
  n_test = np.bincount(test_cells, minlength=k)
  n_gen = np.bincount(gen_cells, minlength=k)
  check_cells(n_train, n_test, n_gen)
  dtype = jnp.result_type(float)  # float64 under jax_enable_x64
  tu, dist, idx = _ct_kernel(
    jnp.asarray(test, dtype),
    test_cells,
    jnp.asarray(gen, dtype),
    gen_cells,
    jnp.asarray(train, dtype),
    train_cells,
    n_cells=k,
    metric=metric,
    tile_queries=tile_queries,
    tile_train=tile_train,
  )
  sums = mannwhitney.cell_sums(np.asarray(tu)[None], gen_cells[None], k)
  res = z_and_ct(sums, n_test[None], n_gen[None], tau)
  if return_neighbors:
    dist, idx = np.asarray(dist), np.asarray(idx)
    n = test.shape[0]
    res = dataclasses.replace(
      res,
      neighbors=Neighbors(
        gen_index=idx[None, n:],
        gen_dist=dist[None, n:],
        test_index=idx[None, :n],
        test_dist=dist[None, :n],
        gen_cells=gen_cells[None],
      ),
    )
  return res.squeeze()


def check_cells(n_train, n_test, n_gen=None, layer=None, n_cells_arg=None):
  """Raises a ValueError naming the first cell without training or test points.

  Args:
    n_train, n_test, n_gen: ``[k]`` counts per cell (n_gen optional).
    layer: layer name for the message.
    n_cells_arg: the n_cells the user asked for (for the hint).
  """
  where = f"layer {layer}, " if layer is not None else ""
  hint = (
    f"; use fewer cells (n_cells < {n_cells_arg})"
    if n_cells_arg
    else "; use fewer cells"
  )
  n_gen = np.zeros_like(n_test) if n_gen is None else n_gen
  for c in range(len(n_test)):
    used = n_train[c] + n_test[c] + n_gen[c] > 0
    if used and n_train[c] == 0:
      raise ValueError(
        f"{where}cell {c}: no training point in this cell "
        f"(test: {n_test[c]}, generated: {n_gen[c]}); every cell "
        f"needs at least one training and one test point{hint}"
      )
    if used and n_test[c] == 0:
      raise ValueError(
        f"{where}cell {c}: no test point in this cell "
        f"(train: {n_train[c]}, generated: {n_gen[c]}); every "
        f"cell needs at least one training and one test "
        f"point{hint}"
      )
