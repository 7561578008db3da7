"""The fitted reference as a typed pytree, and the fit that produces it.

A reference (training set T, held-out test set P) is fitted once per layer:
PCA to d dimensions, k-means cells on the projected T, T sorted by cell for
the nearest-neighbour search, and the test distances L(p) sorted by cell for
the Mann-Whitney counts (docs/method.md). Every part is written for one layer
and mapped over the layer axis with `jax.lax.map` (sequential over layers, so
memory is one layer's working set); the result is a `Fitted` whose every leaf
has a leading layer axis L.

`FitConfig` holds the settings; the default nearest-neighbour tile sizes are
`neighbors.TILE_QUERIES` and `neighbors.TILE_TRAIN`.
"""

import dataclasses
import functools
import numbers

import jax
import jax.numpy as jnp

from ctjax.stats import compiling
from ctjax.stats import kmeans as km
from ctjax.stats import mannwhitney
from ctjax.stats import neighbors as nb
from ctjax.stats import pca as pca_lib

# PCA dimension when none is asked for: min(DEFAULT_COMPONENTS, N, D).
DEFAULT_COMPONENTS = 64
# A layer whose total variance is below this fraction of its squared mean norm
# is constant up to rounding (e.g. a ViT's layer-0 CLS token): C_T is NaN there.
DEGENERATE_RTOL = 1e-10
SEARCHES = ("auto",) + nb.SEARCHES


@dataclasses.dataclass(frozen=True)
class FitConfig:
  """Settings of a fit.

  Attributes:
    n_components: PCA dimension d; ``None`` means min(64, N, D). An explicit
      value outside [1, min(N, D)] is an error (`resolve`).
    n_cells: number of k-means cells k.
    n_init: k-means restarts (the lowest inertia kept).
    metric: "cosine" (1 − |cos|, the paper's) or "l2" (Meehan's).
    seed: k-means seed; layer l uses ``fold_in(PRNGKey(seed), l)``.
    tile_queries: queries per nearest-neighbour tile (``None`` materialises
      the ``[m, N]`` scores).
    tile_train: training rows scanned per step.
    search: "auto", "tiled", "dense" or "native" (how the cell-restricted
      search is run, `neighbors.resolve_search`; every choice gives the
      same neighbours).
    kmeans_sample: training points k-means was fitted on, when a streamed
      fit used a sample smaller than N; ``None`` otherwise.
  """

  n_components: int | None = None
  n_cells: int = 10
  n_init: int = 10
  metric: str = "cosine"
  seed: int = 0
  tile_queries: int | None = nb.TILE_QUERIES
  tile_train: int = nb.TILE_TRAIN
  search: str = "auto"
  kmeans_sample: int | None = None

  def __post_init__(self):
    if self.metric not in nb.METRICS:
      raise ValueError(
        f"metric must be one of {nb.METRICS}, got {self.metric!r}"
      )
    for name in ("n_cells", "n_init"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if self.search not in SEARCHES:
      raise ValueError(f"search must be one of {SEARCHES}, got {self.search!r}")

  def resolve(self, n_train: int, dim: int) -> "FitConfig":
    """This config with ``n_components`` made concrete for T ``[N, D]``."""
    d = self.n_components
    if d is None:
      d = min(DEFAULT_COMPONENTS, n_train, dim)
    elif not 1 <= d <= min(n_train, dim):
      raise ValueError(
        f"n_components={d} must be in [1, min(N, D)] = "
        f"[1, {min(n_train, dim)}] (N={n_train} training points, D={dim})"
      )
    return dataclasses.replace(self, n_components=int(d))


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["sorted_dist", "starts", "cells", "dist", "index", "counts"],
  meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class TestStats:
  """The test set P's side of the statistic (n test points, k cells).

  Attributes:
    sorted_dist: ``[L, n]`` distances L(p) sorted by (cell, distance).
    starts: ``[L, k + 1]`` int32; cell c holds
      ``sorted_dist[starts[c]:starts[c + 1]]``.
    cells: ``[L, n]`` int32 cell of each test point.
    dist: ``[L, n]`` L(p) in the test set's order.
    index: ``[L, n]`` int32 original index of each test point's nearest
      same-cell training point.
    counts: ``[L, k]`` int32 test points per cell n_π.
  """

  sorted_dist: jax.Array
  starts: jax.Array
  cells: jax.Array
  dist: jax.Array
  index: jax.Array
  counts: jax.Array


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=[
    "pca",
    "centers",
    "index",
    "test",
    "degenerate",
    "n_train_cells",
    "inertia",
  ],
  meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class Fitted:
  """Everything `ctjax.stats.score` needs, per layer (L layers, N training
  points, n test points, input dimension D, PCA dimension d, k cells).

  Attributes:
    pca: a `pca.PCA` with ``mean [L, D]``, ``components [L, D, d]``,
      ``variances [L, d]``, ``total_variance [L]``.
    centers: ``[L, k, d]`` k-means centres.
    index: a `neighbors.CellIndex` with ``points [L, N, d]`` (projected T
      sorted by cell), ``aux``/``cells``/``order [L, N]``, ``starts
      [L, k + 2]``; its ``metric`` is the distance.
    test: a `TestStats` (test distances, cells, counts).
    degenerate: ``[L]`` bool, layers whose embeddings are all the same (C_T
      undefined, NaN).
    n_train_cells: ``[L, k]`` int32 training points per cell.
    inertia: ``[L]`` k-means inertia.
  """

  pca: pca_lib.PCA
  centers: jax.Array
  index: nb.CellIndex
  test: TestStats
  degenerate: jax.Array
  n_train_cells: jax.Array
  inertia: jax.Array

  @property
  def metric(self) -> str:
    return self.index.metric

  @property
  def n_layers(self) -> int:
    return self.centers.shape[0]

  @property
  def n_cells(self) -> int:
    return self.centers.shape[-2]

  @property
  def n_components(self) -> int:
    return self.centers.shape[-1]

  @property
  def dim(self) -> int:
    return self.pca.mean.shape[-1]

  @property
  def n_train(self) -> int:
    return self.index.points.shape[-2]

  @property
  def n_test(self) -> int:
    return self.test.dist.shape[-1]


def nearest(
  index,
  queries,
  q_cells,
  *,
  tile_queries,
  tile_train,
  search,
  points=None,
  row_base=0,
):
  """`neighbors.nearest_in_cell` for one layer, with ``search`` resolved
  (`neighbors.resolve_search`: "auto" picks by backend and memory) and the
  query tile grown for many queries per cell (`neighbors.query_tile`).

  Args:
    index: one layer's `CellIndex` (``points [N, d]``, or None with
      ``points`` and ``row_base`` given as in `neighbors.nearest_in_cell`).
    queries: ``[m, d]``; q_cells: ``[m]`` (``>= k`` marks padding).

  Returns:
    ``(dist [m], idx [m])``.
  """
  n_cells = index.starts.shape[0] - 2
  tile_train = min(tile_train, index.aux.shape[0])
  return nb.nearest_in_cell(
    index,
    queries,
    q_cells,
    tile_queries=nb.query_tile(
      tile_queries, queries.shape[0], n_cells, tile_train
    ),
    tile_train=tile_train,
    search=nb.resolve_search(
      search, n_queries=queries.shape[0], tile_train=tile_train
    ),
    points=points,
    row_base=row_base,
  )


# ---------------------------------------------------------------- one layer
def index_one_layer(pca, fit, pt, test, *, n_cells, metric):
  """Cell index of projected T ``pt [N, d]``; projected test ``[n, d]`` and
  its cells ``[n]``."""
  pp = pca_lib.transform(pca, test)
  test_cells = km.assign(pp, fit.centers)
  index = nb.build_index(pt, fit.labels, n_cells, metric)
  return index, pp, test_cells


def finish_one_layer(pca, fit, index, test_cells, dist, idx, *, n_cells):
  """One layer's `Fitted` parts (no layer axis), given the test distances
  ``dist [n]`` and nearest indices ``idx [n]``."""
  sorted_d, starts = mannwhitney.sort_by_cell(dist, test_cells, n_cells)
  scale = jnp.sum(pca.mean * pca.mean)
  degenerate = pca.total_variance <= DEGENERATE_RTOL * scale + 1e-30
  count = lambda c: jnp.bincount(c, length=n_cells).astype(jnp.int32)
  return Fitted(
    pca=pca,
    centers=fit.centers,
    index=index,
    test=TestStats(
      sorted_dist=sorted_d,
      starts=starts,
      cells=test_cells,
      dist=dist,
      index=idx,
      counts=count(test_cells),
    ),
    degenerate=degenerate,
    n_train_cells=count(fit.labels),
    inertia=fit.inertia,
  )


def _fit_one_layer(
  train,
  test,
  key,
  *,
  n_components,
  n_cells,
  n_init,
  metric,
  tile_queries,
  tile_train,
  search,
):
  """One layer's `Fitted` parts and whether its T and P were finite (a pair
  of bools, read off results the fit computes anyway; see `fit_layers`)."""
  pca = pca_lib.fit_pca(train, n_components)
  pt = pca_lib.transform(pca, train)
  fit = km.kmeans(pt, n_cells, key, n_init=n_init)
  index, pp, test_cells = index_one_layer(
    pca, fit, pt, test, n_cells=n_cells, metric=metric
  )
  dist, idx = nearest(
    index,
    pp,
    test_cells,
    tile_queries=tile_queries,
    tile_train=tile_train,
    search=search,
  )
  parts = finish_one_layer(
    pca, fit, index, test_cells, dist, idx, n_cells=n_cells
  )
  finite = jnp.stack(
    [jnp.all(jnp.isfinite(pca.mean)), jnp.all(jnp.isfinite(pp))]
  )
  return parts, finite


# ---------------------------------------------------------------- all layers
_FIT_STATIC = (
  "n_components",
  "n_cells",
  "n_init",
  "metric",
  "tile_queries",
  "tile_train",
  "search",
)


def _fit_layers_impl(train, test, keys, **kw):
  return jax.lax.map(lambda a: _fit_one_layer(*a, **kw), (train, test, keys))


# XLA:CPU options for the fit program: the older loop/reduction emitters and
# LLVM -O1. Its run time is in library GEMMs (covariance, projections) and a
# few simple loops; its compile time is in the ~300 small kernels (k-means++
# draws, searches, sorts). Measured at CIFAR scale (one layer [50000, 768]):
# XLA compile 6.6-6.9 s -> 3.2-3.6 s CPU, stage run times equal within
# noise, bitwise-equal results there (elsewhere a float sum may be reduced
# in another order: the k-means inertia of a small test differs by an ulp).
# Other backends compile with their defaults.
CPU_COMPILER_OPTIONS = {
  "xla_cpu_use_fusion_emitters": False,
  "xla_backend_optimization_level": 1,
}
_fit_layers = compiling.cpu_jit(
  _fit_layers_impl, CPU_COMPILER_OPTIONS, static_argnames=_FIT_STATIC
)


def fit_layers(
  train,
  test,
  keys,
  config: FitConfig,
  *,
  with_finite: bool = False,
  compiled: bool = True,
):
  """Fits every layer in one compiled call.

  Args:
    train: ``[L, N, D]`` training embeddings T (finite).
    test: ``[L, n, D]`` test embeddings P.
    keys: ``[L, 2]`` k-means key of each layer.
    config: a resolved `FitConfig` (``n_components`` an int); the seed is
      carried by ``keys``.
    with_finite: also return ``finite [L, 2]`` (bool): whether each layer's T
      (column 0) and P (column 1) had only finite values. It costs no pass
      of its own: a NaN or ±Inf in a column of T makes that column's mean
      non-finite, and one in a row of P makes every coordinate of that row's
      projection non-finite (x·0 is NaN for x = ±Inf). False also flags a
      finite T whose float sums overflow; the caller tells the two apart.
    compiled: False traces the fit into the caller's program (e.g. a
      `jax.shard_map` that compiles with its own options) instead of
      calling its own compiled program (`CPU_COMPILER_OPTIONS` on a CPU).

  Returns:
    The `Fitted` reference (and ``finite``, with ``with_finite``).
  """
  kw = {k: getattr(config, k) for k in _FIT_STATIC}
  run = _fit_layers if compiled else _fit_layers_impl
  fitted, finite = run(train, test, keys, **kw)
  return (fitted, finite) if with_finite else fitted


# The same fit in stages, for a sharded search (mesh) or a streaming fit: PCA
# and k-means, then the cell index, the search, and the fitted parts.
@functools.partial(
  jax.jit, static_argnames=("n_components", "n_cells", "n_init")
)
def pca_kmeans_layers(train, keys, *, n_components, n_cells, n_init):
  """PCA and k-means of every layer of ``train [L, N, D]``.

  Returns:
    ``(pca, kmeans, pt)``: a `PCA` and a `KMeans` stacked over L, and the
    projected T ``[L, N, d]``.
  """

  def one(a):
    pca = pca_lib.fit_pca(a[0], n_components)
    pt = pca_lib.transform(pca, a[0])
    return pca, km.kmeans(pt, n_cells, a[1], n_init=n_init), pt

  return jax.lax.map(one, (train, keys))


@functools.partial(jax.jit, static_argnames=("n_cells", "metric"))
def index_layers(pca, fit, pt, test, *, n_cells, metric):
  """`index_one_layer` over L: pt ``[L, N, d]``, test ``[L, n, D]``.

  Returns:
    ``(index, pp [L, n, d], test_cells [L, n])``.
  """
  return jax.lax.map(
    lambda a: index_one_layer(*a, n_cells=n_cells, metric=metric),
    (pca, fit, pt, test),
  )


@functools.partial(
  jax.jit, static_argnames=("tile_queries", "tile_train", "search")
)
def search_layers(index, queries, q_cells, *, tile_queries, tile_train, search):
  """Nearest same-cell training point of ``queries [L, m, d]`` (cells
  ``[L, m]``) on every layer: ``(dist [L, m], idx [L, m])``."""
  return jax.lax.map(
    lambda a: nearest(
      *a, tile_queries=tile_queries, tile_train=tile_train, search=search
    ),
    (index, queries, q_cells),
  )


@functools.partial(jax.jit, static_argnames=("n_cells",))
def finish_layers(pca, fit, index, test_cells, dist, idx, *, n_cells):
  """`finish_one_layer` over L (test_cells/dist/idx ``[L, n]``): a
  `Fitted`."""
  return jax.lax.map(
    lambda a: finish_one_layer(*a, n_cells=n_cells),
    (pca, fit, index, test_cells, dist, idx),
  )
