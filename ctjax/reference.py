"""`CTReference`: fit PCA, cells and test distances once per layer; score many.

Everything per layer is written for one layer and mapped over the layer axis
with `jax.lax.map` inside one jitted call (sequential over layers, so memory is
one layer's working set): `fit` is one compiled call, `score` is another.
Only the final exact sums and the float64 Z/C_T arithmetic happen on the host.
"""

import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ctjax import sharding
from ctjax.storage import atomic_write
from ctjax.stats import ct as ct_lib
from ctjax.stats import kmeans as km
from ctjax.stats import mannwhitney
from ctjax.stats import neighbors as nb
from ctjax.stats import pca as pca_lib

FORMAT = "ctjax.CTReference"
VERSION = 1
DEFAULT_COMPONENTS = 64
# A layer whose total variance is below this fraction of its squared mean norm
# is constant up to rounding (e.g. a ViT's layer-0 CLS token): C_T is NaN there.
_DEGENERATE_RTOL = 1e-10


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
):
  """Fit for one layer. train ``[N, D]``, test ``[n, D]``."""
  pca = pca_lib.fit_pca(train, n_components)
  pt = pca_lib.transform(pca, train)
  fit = km.kmeans(pt, n_cells, key, n_init=n_init)
  index, pp, test_cells = _index_one_layer(
    pca, fit, pt, test, n_cells=n_cells, metric=metric
  )
  dist, idx = nb.nearest_in_cell(
    index, pp, test_cells, tile_queries=tile_queries, tile_train=tile_train
  )
  return _finish_one_layer(
    pca, fit, index, test_cells, dist, idx, n_cells=n_cells
  )


def _index_one_layer(pca, fit, pt, test, *, n_cells, metric):
  """Cell index of projected T ``pt [N, d]``; projected test ``[n, d]`` and its
  cells ``[n]``."""
  pp = pca_lib.transform(pca, test)
  test_cells = km.assign(pp, fit.centers)
  index = nb.build_index(pt, fit.labels, n_cells, metric)
  return index, pp, test_cells


def _finish_one_layer(pca, fit, index, test_cells, dist, idx, *, n_cells):
  """The fitted arrays of one layer, given the test distances ``dist [n]``."""
  sorted_d, starts = mannwhitney.sort_by_cell(dist, test_cells, n_cells)
  scale = jnp.sum(pca.mean * pca.mean)
  degenerate = pca.total_variance <= _DEGENERATE_RTOL * scale + 1e-30
  count = lambda c: jnp.bincount(c, length=n_cells).astype(jnp.int32)
  return dict(
    pca_mean=pca.mean,
    pca_components=pca.components,
    pca_variances=pca.variances,
    centers=fit.centers,
    inertia=fit.inertia,
    points=index.points,
    aux=index.aux,
    cells=index.cells,
    starts=index.starts,
    order=index.order,
    test_sorted=sorted_d,
    test_starts=starts,
    test_cells=test_cells,
    test_dist=dist,
    test_index=idx,
    degenerate=degenerate,
    n_train_cells=count(fit.labels),
    n_test_cells=count(test_cells),
  )


@functools.partial(
  jax.jit,
  static_argnames=(
    "n_components",
    "n_cells",
    "n_init",
    "metric",
    "tile_queries",
    "tile_train",
  ),
)
def _fit_layers(train, test, keys, **kw):
  return jax.lax.map(lambda a: _fit_one_layer(*a, **kw), (train, test, keys))


# The same fit in stages, for a sharded search (mesh) or a streaming fit: PCA
# and k-means, then the cell index, the search, and the fitted arrays.
@functools.partial(
  jax.jit, static_argnames=("n_components", "n_cells", "n_init")
)
def _pca_kmeans_layers(train, keys, *, n_components, n_cells, n_init):
  def one(a):
    pca = pca_lib.fit_pca(a[0], n_components)
    pt = pca_lib.transform(pca, a[0])
    return pca, km.kmeans(pt, n_cells, a[1], n_init=n_init), pt

  return jax.lax.map(one, (train, keys))


@functools.partial(jax.jit, static_argnames=("n_cells", "metric"))
def _index_layers(pca, fit, pt, test, *, n_cells, metric):
  return jax.lax.map(
    lambda a: _index_one_layer(*a, n_cells=n_cells, metric=metric),
    (pca, fit, pt, test),
  )


@functools.partial(jax.jit, static_argnames=("tile_queries", "tile_train"))
def _search_layers(index, queries, q_cells, *, tile_queries, tile_train):
  return jax.lax.map(
    lambda a: nb.nearest_in_cell(
      a[0], a[1], a[2], tile_queries=tile_queries, tile_train=tile_train
    ),
    (index, queries, q_cells),
  )


@functools.partial(jax.jit, static_argnames=("n_cells",))
def _finish_layers(pca, fit, index, test_cells, dist, idx, *, n_cells):
  return jax.lax.map(
    lambda a: _finish_one_layer(*a, n_cells=n_cells),
    (pca, fit, index, test_cells, dist, idx),
  )


def _fit_staged(
  pca, fit, pt, test, *, n_cells, metric, tile_queries, tile_train, mesh
):
  """Fitted arrays from per-layer PCA and k-means (stacked over L) and
  projected T ``pt [L, N, d]``; test ``[L, n, D]``. Returns (arrays, sharded
  index or None)."""
  index, pp, test_cells = _index_layers(
    pca, fit, pt, jnp.asarray(test), n_cells=n_cells, metric=metric
  )
  sharded = None
  if mesh is None:
    dist, idx = _search_layers(
      index, pp, test_cells, tile_queries=tile_queries, tile_train=tile_train
    )
  else:
    sharded = sharding.shard_index(
      index.points,
      index.cells,
      index.order,
      n_cells=n_cells,
      metric=metric,
      mesh=mesh,
    )
    dist, idx = sharding.nearest_in_cell(
      sharded, pp, test_cells, tile_queries=tile_queries, tile_train=tile_train
    )
  out = _finish_layers(pca, fit, index, test_cells, dist, idx, n_cells=n_cells)
  return out, sharded


def _score_cells_one_layer(f, gen, valid, *, n_cells):
  """Projected generated points ``[m, d]`` and their cells ``[m]`` (k: padding)."""
  pca = pca_lib.PCA(
    mean=f["pca_mean"],
    components=f["pca_components"],
    variances=f["pca_variances"],
    total_variance=jnp.zeros(()),
  )
  pg = pca_lib.transform(pca, gen)
  cells = jnp.where(valid, km.assign(pg, f["centers"]), n_cells)
  return pg, cells


def _score_one_layer(
  f, gen, valid, *, n_cells, metric, tile_queries, tile_train
):
  pg, cells = _score_cells_one_layer(f, gen, valid, n_cells=n_cells)
  index = nb.CellIndex(
    points=f["points"],
    aux=f["aux"],
    cells=f["cells"],
    starts=f["starts"],
    order=f["order"],
    metric=metric,
  )
  dist, idx = nb.nearest_in_cell(
    index, pg, cells, tile_queries=tile_queries, tile_train=tile_train
  )
  tu = mannwhitney.twice_u(f["test_sorted"], f["test_starts"], dist, cells)
  return tu, cells, dist, idx


@functools.partial(
  jax.jit, static_argnames=("n_cells", "metric", "tile_queries", "tile_train")
)
def _score_layers(fitted, gen, valid, **kw):
  return jax.lax.map(
    lambda a: _score_one_layer(a[0], a[1], valid, **kw), (fitted, gen)
  )


# The same score in stages around a sharded search (mesh).
@functools.partial(jax.jit, static_argnames=("n_cells",))
def _score_cells_layers(fitted, gen, valid, *, n_cells):
  return jax.lax.map(
    lambda a: _score_cells_one_layer(a[0], a[1], valid, n_cells=n_cells),
    (fitted, gen),
  )


@jax.jit
def _twice_u_layers(test_sorted, test_starts, dist, cells):
  return jax.lax.map(
    lambda a: mannwhitney.twice_u(*a), (test_sorted, test_starts, dist, cells)
  )


@jax.jit
def _finite_per_layer(x):
  return jnp.all(jnp.isfinite(x), axis=tuple(range(1, x.ndim)))


_SCORE_KEYS = (
  "pca_mean",
  "pca_components",
  "pca_variances",
  "centers",
  "points",
  "aux",
  "cells",
  "starts",
  "order",
  "test_sorted",
  "test_starts",
)


def _stack_layers(name, x, n_layers=None):
  """Returns ``x`` as float ``[L, P, D]`` (a single layer may be ``[P, D]``)."""
  x = np.asarray(x) if not isinstance(x, jax.Array) else x
  if x.ndim == 2:
    x = x[None]
  if x.ndim != 3:
    raise ValueError(
      f"{name} must be [layers, points, dims] (or [points, dims] "
      f"for one layer), got shape {tuple(x.shape)}"
    )
  if n_layers is not None and x.shape[0] != n_layers:
    raise ValueError(
      f"{name} has {x.shape[0]} layers but the reference has {n_layers}"
    )
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(np.float32)
  return x


def _check_finite(name, x, layer_names):
  ok = np.asarray(_finite_per_layer(x))
  if not ok.all():
    bad = [layer_names[i] for i in np.flatnonzero(~ok)]
    raise ValueError(
      f"{name} has NaN or Inf values in layer(s) {', '.join(map(str, bad))}"
    )


def _to_device(x):
  """One copy onto the default device (``jnp.asarray`` of a NumPy array
  briefly holds two on the CPU: 4 GB more instead of 2 for CIFAR-scale T)."""
  return x if isinstance(x, jax.Array) else jax.device_put(x)


@contextlib.contextmanager
def _lapack_one_thread():
  """Runs the block with one BLAS/LAPACK thread.

  On the CPU, XLA's eigh calls the OpenBLAS LAPACK that SciPy ships; its
  spinning worker threads collapse when the cores are shared (measured here:
  0.1 s becomes 7 s for one 768 x 768 eigh on a loaded 2-core machine). For
  these small matrices one thread costs next to nothing. XLA's own matrix
  products do not use OpenBLAS and are unaffected.
  """
  try:
    from threadpoolctl import threadpool_limits  # pylint: disable=g-import-not-at-top
  except ImportError:
    yield
    return
  with threadpool_limits(limits=1, user_api="blas"):
    yield


def _layer_keys(seed, n_layers):
  """k-means key of every layer: ``fold_in(PRNGKey(seed), l)``; ``[L, 2]``."""
  return jax.vmap(lambda l: jax.random.fold_in(jax.random.PRNGKey(seed), l))(
    jnp.arange(n_layers)
  )


def _layer_name_list(layer_names, n_layers):
  names = [
    str(x)
    for x in (layer_names if layer_names is not None else range(n_layers))
  ]
  if len(names) != n_layers:
    raise ValueError(f"{len(names)} layer_names for {n_layers} layers")
  return names


def _check_fit_args(
  n_layers, n_train, dim, test_shape, *, n_cells, n_components, layer_names
):
  """Validates fit sizes; returns (n_components, layer names)."""
  if test_shape[0] != n_layers or test_shape[2] != dim:
    raise ValueError(
      f"train {(n_layers, n_train, dim)} and test "
      f"{tuple(test_shape)} must have the same number of "
      f"layers and dimension"
    )
  n_test = test_shape[1]
  if n_cells < 1:
    raise ValueError(f"n_cells must be >= 1, got {n_cells}")
  if n_train < n_cells:
    raise ValueError(
      f"fewer training points ({n_train}) than cells (n_cells={n_cells})"
    )
  if n_test < n_cells:
    raise ValueError(
      f"fewer test points ({n_test}) than cells "
      f"(n_cells={n_cells}); every cell needs a test point"
    )
  if n_components == DEFAULT_COMPONENTS:
    n_components = min(n_components, n_train, dim)
  elif not 1 <= n_components <= min(n_train, dim):
    raise ValueError(
      f"n_components={n_components} must be in [1, min(N, D)] = "
      f"[1, {min(n_train, dim)}] (N={n_train} training points, D={dim})"
    )
  return n_components, _layer_name_list(layer_names, n_layers)


@dataclasses.dataclass(frozen=True, eq=False)
class CTReference:
  """A reference (training set T and test set P) fitted for C_T on every layer.

  Build with `CTReference.fit`; score generated batches with `score`.

  Attributes:
    config: settings — n_components, n_cells, n_init, metric, seed, tile
      sizes, n_layers, dim, n_train, n_test, layer_names, meta.
    arrays: fitted per-layer arrays (leading axis L): ``pca_mean [L, D]``,
      ``pca_components [L, D, d]``, ``pca_variances [L, d]``,
      ``centers [L, k, d]``, ``points [L, N, d]`` (projected training points
      sorted by cell), ``cells``/``order [L, N]``, ``starts [L, k + 2]``,
      ``test_sorted [L, n]``, ``test_starts [L, k + 1]``,
      ``test_cells``/``test_dist``/``test_index [L, n]``, ``degenerate [L]``,
      ``n_train_cells``/``n_test_cells [L, k]``, ``inertia [L]``.
  """

  config: dict
  arrays: dict

  # ------------------------------------------------------------------ fit
  @classmethod
  def fit(
    cls,
    train,
    test,
    *,
    n_components: int = DEFAULT_COMPONENTS,
    n_cells: int = 10,
    metric: str = "cosine",
    seed: int = 0,
    n_init: int = 10,
    meta: dict | None = None,
    layer_names=None,
    tile_queries: int = 64,
    tile_train: int = 4096,
    mesh=None,
  ) -> "CTReference":
    """Fits PCA, k-means cells and test-set distances for every layer.

    Args:
      train: ``[L, N, D]`` training embeddings T (or ``[N, D]`` for one layer).
      test: ``[L, n, D]`` held-out test embeddings P.
      n_components: PCA dimension d. The default 64 is capped at
        min(64, N, D); an explicit value above min(N, D) is an error.
      n_cells: number of k-means cells k (k-means++ seeding, ``n_init``
        restarts, the lowest inertia kept).
      metric: "cosine" (1 − |cos|, the paper's) or "l2" (Meehan's).
      seed: seed of k-means; layer l uses ``fold_in(PRNGKey(seed), l)``.
      meta: JSON-able description kept with the reference (encoder, pooling,
        layers...); it is part of `identity`.
      layer_names: names used in messages (default "0", "1", ...).
      tile_queries, tile_train: nearest-neighbour tile sizes.
      mesh: ``None`` (one device), ``"all"`` (every device) or a
        `jax.sharding.Mesh` with a ``"data"`` axis: the test set's nearest
        neighbours are searched with the projected training points sharded
        over the mesh (`ctjax.sharding`); the result is the same.

    Raises:
      ValueError: NaN/Inf (naming the layer), mismatched shapes, fewer
        points than cells or components, a cell without a test point
        (naming layer and cell).
    """
    if metric not in nb.METRICS:
      raise ValueError(f"metric must be one of {nb.METRICS}, got {metric!r}")
    train = _stack_layers("train", train)
    test = _stack_layers("test", test)
    n_layers, n_train, dim = train.shape
    n_components, names = _check_fit_args(
      n_layers,
      n_train,
      dim,
      test.shape,
      n_cells=n_cells,
      n_components=n_components,
      layer_names=layer_names,
    )
    _check_finite("train", train, names)
    _check_finite("test", test, names)
    keys = _layer_keys(seed, n_layers)
    sharded = None
    if mesh is None:
      with _lapack_one_thread():
        out = jax.block_until_ready(
          _fit_layers(
            _to_device(train),
            _to_device(test),
            keys,
            n_components=n_components,
            n_cells=n_cells,
            n_init=n_init,
            metric=metric,
            tile_queries=tile_queries,
            tile_train=tile_train,
          )
        )
    else:
      mesh = sharding.resolve_mesh(mesh)
      pca, km_fit, pt = _pca_kmeans_layers(
        _to_device(train),
        keys,
        n_components=n_components,
        n_cells=n_cells,
        n_init=n_init,
      )
      out, sharded = _fit_staged(
        pca,
        km_fit,
        pt,
        test,
        n_cells=n_cells,
        metric=metric,
        tile_queries=tile_queries,
        tile_train=tile_train,
        mesh=mesh,
      )
    config = dict(
      n_components=int(n_components),
      n_cells=int(n_cells),
      n_init=int(n_init),
      metric=metric,
      seed=int(seed),
      n_layers=int(n_layers),
      dim=int(dim),
      n_train=int(n_train),
      n_test=int(test.shape[1]),
      layer_names=names,
      meta=dict(meta or {}),
      tile_queries=int(tile_queries),
      tile_train=int(tile_train),
    )
    return cls._checked(config, out, mesh, sharded)

  @classmethod
  def fit_streaming(
    cls,
    train,
    test,
    *,
    n_components: int = DEFAULT_COMPONENTS,
    n_cells: int = 10,
    metric: str = "cosine",
    seed: int = 0,
    n_init: int = 10,
    sample_size: int | None = 100_000,
    chunk_size: int = 8192,
    memory_budget: int | None = None,
    meta: dict | None = None,
    layer_names=None,
    mesh=None,
  ) -> "CTReference":
    """`fit` for a training set larger than memory, read in chunks.

    PCA comes from the covariance accumulated exactly over the chunks (two
    passes); a third pass projects T to d dimensions (kept, ``[L, N, d]``) and
    collects a seeded sample on which k-means runs; every projected point is
    then assigned to its cell in chunks. With ``sample_size=None`` (or ≥ N)
    k-means sees all of T and the result equals `fit` up to rounding. See
    `ctjax.stats.streaming`.

    Args:
      train: ``[L, N, D]`` array-like read in row chunks (``np.memmap``,
        ``np.ndarray``...), or a callable returning a fresh iterable of
        ``[L, c, D]`` chunks (called once per pass, three passes).
      test: ``[L, n, D]`` held-out test embeddings P (in memory).
      sample_size: training points k-means is fitted on (seeded by ``seed``).
      chunk_size: rows per chunk when ``train`` is an array.
      memory_budget: bytes for one nearest-neighbour tile's working set; sets
        ``tile_queries``/``tile_train`` (`streaming.tiles_for_budget`).
      mesh: as in `fit`.
      Other arguments: as in `fit`.
    """
    from ctjax.stats import streaming  # pylint: disable=g-import-not-at-top

    if metric not in nb.METRICS:
      raise ValueError(f"metric must be one of {nb.METRICS}, got {metric!r}")
    source = streaming.ChunkSource(train, chunk_size)
    test = _stack_layers("test", test)
    names = _layer_name_list(layer_names, source.n_layers)
    n_train, mean = streaming.mean_pass(source, names)
    n_components, names = _check_fit_args(
      source.n_layers,
      n_train,
      source.dim,
      test.shape,
      n_cells=n_cells,
      n_components=n_components,
      layer_names=names,
    )
    _check_finite("test", test, names)
    pca = streaming.pca_pass(source, mean, n_train, n_components)
    pt, km_fit = streaming.kmeans_pass(
      source,
      pca,
      _layer_keys(seed, source.n_layers),
      n_cells=n_cells,
      n_init=n_init,
      sample_size=sample_size,
      seed=seed,
    )
    if memory_budget is None:
      tile_queries, tile_train = 64, 2048
    else:
      tile_queries, tile_train = streaming.tiles_for_budget(
        memory_budget, n_components, n_train
      )
    mesh = None if mesh is None else sharding.resolve_mesh(mesh)
    out, sharded = _fit_staged(
      pca,
      km_fit,
      pt,
      test,
      n_cells=n_cells,
      metric=metric,
      tile_queries=tile_queries,
      tile_train=tile_train,
      mesh=mesh,
    )
    config = dict(
      n_components=int(n_components),
      n_cells=int(n_cells),
      n_init=int(n_init),
      metric=metric,
      seed=int(seed),
      n_layers=int(source.n_layers),
      dim=int(source.dim),
      n_train=int(n_train),
      n_test=int(test.shape[1]),
      layer_names=names,
      meta=dict(meta or {}),
      tile_queries=int(tile_queries),
      tile_train=int(tile_train),
    )
    if sample_size is not None and sample_size < n_train:
      config["kmeans_sample"] = int(sample_size)
    return cls._checked(config, out, mesh, sharded)

  @classmethod
  def _checked(cls, config, out, mesh, sharded) -> "CTReference":
    """The reference, after per-layer checks (degenerate layers, empty cells)."""
    names = config["layer_names"]
    degenerate = np.asarray(out["degenerate"])
    n_train_c = np.asarray(out["n_train_cells"])
    n_test_c = np.asarray(out["n_test_cells"])
    for l in range(config["n_layers"]):
      if degenerate[l]:
        warnings.warn(
          f"layer {names[l]}: every embedding is the same (zero "
          f"variance); its C_T is undefined and reported as NaN",
          RuntimeWarning,
          stacklevel=3,
        )
      else:
        ct_lib.check_cells(
          n_train_c[l],
          n_test_c[l],
          layer=names[l],
          n_cells_arg=config["n_cells"],
        )
    ref = cls(config=config, arrays=dict(out))
    if sharded is not None:
      ref._sharded_index_cache()[mesh] = sharded
    return ref

  # ---------------------------------------------------------------- score
  @property
  def n_layers(self) -> int:
    return self.config["n_layers"]

  @property
  def layer_names(self) -> list:
    return list(self.config["layer_names"])

  def score(
    self,
    gen,
    *,
    tau: float | None = None,
    return_neighbors: bool = False,
    mesh=None,
  ) -> ct_lib.CTResult:
    """C_T of a generated batch on every layer.

    Args:
      gen: ``[L, m, D]`` generated embeddings Q (``[m, D]`` for a one-layer
        reference).
      tau: threshold on a cell's generated share; ``None`` = 20/m.
      return_neighbors: also return, per layer, each generated and test
        point's nearest same-cell training index and distance.
      mesh: ``None`` (one device), ``"all"`` or a `jax.sharding.Mesh` with a
        ``"data"`` axis: the projected training points are sharded over the
        mesh (dealt out once per mesh and cached) and the nearest neighbours
        reduced across devices (`ctjax.sharding`); the result is the same.

    Returns:
      A `CTResult`: ``ct [L]``, ``z``/``included``/``test_frac``/
      ``gen_frac``/``u``/``n_test``/``n_gen [L, k]``.
    """
    cfg = self.config
    gen = _stack_layers("gen", gen, cfg["n_layers"])
    if gen.shape[2] != cfg["dim"]:
      raise ValueError(
        f"gen has dimension {gen.shape[2]} but the reference "
        f"was fitted on dimension {cfg['dim']}"
      )
    m = gen.shape[1]
    if m == 0:
      raise ValueError("gen holds no points")
    tau = ct_lib.default_tau(m) if tau is None else ct_lib.check_tau(tau, m)
    _check_finite("gen", gen, cfg["layer_names"])
    # Pad to a bucket of 128 rows so batches of nearby sizes share one
    # compilation; padded rows get the sentinel cell k and count nowhere.
    m_pad = -(-m // 128) * 128
    gen = _to_device(gen)
    if m_pad != m:
      gen = jnp.concatenate(
        [gen, jnp.zeros((gen.shape[0], m_pad - m, gen.shape[2]), gen.dtype)],
        axis=1,
      )
    valid = jnp.arange(m_pad) < m
    fitted = {k: self.arrays[k] for k in _SCORE_KEYS}
    if mesh is None:
      tu, cells, dist, idx = _score_layers(
        fitted,
        gen,
        valid,
        n_cells=cfg["n_cells"],
        metric=cfg["metric"],
        tile_queries=cfg["tile_queries"],
        tile_train=cfg["tile_train"],
      )
    else:
      pg, cells = _score_cells_layers(
        fitted, gen, valid, n_cells=cfg["n_cells"]
      )
      dist, idx = sharding.nearest_in_cell(
        self.sharded_index(mesh),
        pg,
        cells,
        tile_queries=cfg["tile_queries"],
        tile_train=cfg["tile_train"],
      )
      tu = _twice_u_layers(
        fitted["test_sorted"], fitted["test_starts"], dist, cells
      )
    k = cfg["n_cells"]
    cells = np.asarray(cells)[:, :m]
    sums = mannwhitney.cell_sums(np.asarray(tu)[:, :m], cells, k)
    n_gen = np.stack([np.bincount(c, minlength=k)[:k] for c in cells])
    res = ct_lib.z_and_ct(
      sums,
      np.asarray(self.arrays["n_test_cells"]),
      n_gen,
      tau,
      degenerate=np.asarray(self.arrays["degenerate"]),
      layer_names=cfg["layer_names"],
    )
    if return_neighbors:
      res = dataclasses.replace(
        res,
        neighbors=ct_lib.Neighbors(
          gen_index=np.asarray(idx)[:, :m],
          gen_dist=np.asarray(dist)[:, :m],
          test_index=np.asarray(self.arrays["test_index"]),
          test_dist=np.asarray(self.arrays["test_dist"]),
          gen_cells=cells,
        ),
      )
    return res

  def _sharded_index_cache(self) -> dict:
    return self.__dict__.setdefault("_sharded_indexes", {})

  def sharded_index(self, mesh) -> "sharding.ShardedIndex":
    """The projected training points dealt out over ``mesh`` (cached)."""
    mesh = sharding.resolve_mesh(mesh)
    cache = self._sharded_index_cache()
    if mesh not in cache:
      cache[mesh] = sharding.shard_index(
        self.arrays["points"],
        self.arrays["cells"],
        self.arrays["order"],
        n_cells=self.config["n_cells"],
        metric=self.config["metric"],
        mesh=mesh,
      )
    return cache[mesh]

  # ------------------------------------------------------------- identity
  def identity(self) -> dict:
    """JSON-able settings and a hash of the fitted reference.

    Two references with the same ``hash`` give the same curves for the same
    generated batch; fingerprints are only comparable under one hash.
    """
    cfg = {
      k: v
      for k, v in self.config.items()
      if k not in ("tile_queries", "tile_train")
    }
    return dict(format=FORMAT, version=VERSION, **cfg, hash=self.hash)

  @functools.cached_property
  def hash(self) -> str:
    h = hashlib.sha256()
    settings = {
      k: self.config[k]
      for k in (
        "n_components",
        "n_cells",
        "n_init",
        "metric",
        "seed",
        "n_layers",
        "dim",
        "n_train",
        "n_test",
      )
    }
    h.update(json.dumps(settings, sort_keys=True).encode())
    for k in ("pca_mean", "pca_components", "centers", "test_sorted"):
      h.update(np.ascontiguousarray(np.asarray(self.arrays[k])).tobytes())
    return h.hexdigest()[:16]

  # ------------------------------------------------------------ save/load
  def save(self, path) -> None:
    """Writes the reference to one ``.npz`` file, atomically."""
    buf = io.BytesIO()
    arrays = {k: np.asarray(v) for k, v in self.arrays.items()}
    header = dict(format=FORMAT, version=VERSION, config=self.config)
    np.savez(
      buf,
      __header__=np.frombuffer(json.dumps(header).encode(), np.uint8),
      **arrays,
    )
    atomic_write(os.fspath(path), lambda f: f.write(buf.getvalue()))

  @classmethod
  def load(cls, path) -> "CTReference":
    """Reads a reference written by `save`."""
    try:
      with np.load(path, allow_pickle=False) as z:
        header = json.loads(bytes(z["__header__"]).decode())
        arrays = {k: z[k] for k in z.files if k != "__header__"}
    except (OSError, KeyError, ValueError) as e:
      raise ValueError(f"{path}: not a ctjax reference file ({e})") from e
    if header.get("format") != FORMAT:
      raise ValueError(f"{path}: not a ctjax reference file")
    if header.get("version", 0) > VERSION:
      raise ValueError(
        f"{path}: written by a newer ctjax (format version "
        f"{header['version']} > {VERSION})"
      )
    arrays = {k: jnp.asarray(v) for k, v in arrays.items()}
    return cls(config=header["config"], arrays=arrays)

  def __repr__(self):
    c = self.config
    return (
      f"CTReference(layers={c['n_layers']}, N={c['n_train']}, "
      f"n={c['n_test']}, D={c['dim']}, d={c['n_components']}, "
      f"k={c['n_cells']}, metric={c['metric']!r}, hash={self.hash})"
    )


def ct_curve(train, test, gen, **kwargs) -> ct_lib.CTResult:
  """`CTReference.fit(train, test, **fit_kwargs).score(gen, **score_kwargs)`.

  Keyword arguments ``tau`` and ``return_neighbors`` go to `score`, the rest to
  `fit`. Shapes: train ``[L, N, D]``, test ``[L, n, D]``, gen ``[L, m, D]``.
  """
  score_kw = {
    k: kwargs.pop(k) for k in ("tau", "return_neighbors") if k in kwargs
  }
  return CTReference.fit(train, test, **kwargs).score(gen, **score_kw)


def ct_score(
  train,
  test,
  gen,
  *,
  n_components: int = 64,
  n_cells: int = 10,
  tau: float | None = None,
  metric: str = "cosine",
  seed: int = 0,
  return_neighbors: bool = False,
) -> ct_lib.CTResult:
  """C_T of one layer end to end: PCA and k-means fitted on ``train``, then scored.

  Args:
    train: ``[N, D]`` training embeddings T.
    test: ``[n, D]`` held-out test embeddings P.
    gen: ``[m, D]`` generated embeddings Q.
    n_components: PCA dimension (capped at min(64, N, D) when left default).
    n_cells: number of k-means cells.
    tau: threshold; ``None`` = 20/m.
    metric: "cosine" (1 − |cos|, the paper's) or "l2".
    seed: k-means seed.

  Returns:
    A `CTResult` with ``ct`` a float and ``[k]`` per-cell fields.
  """
  ref = CTReference.fit(
    np.asarray(train)[None],
    np.asarray(test)[None],
    n_components=n_components,
    n_cells=n_cells,
    metric=metric,
    seed=seed,
  )
  res = ref.score(
    np.asarray(gen)[None], tau=tau, return_neighbors=return_neighbors
  )
  return res.squeeze()
