"""Pieces of a fit whose training set T is read in chunks (larger than memory).

`CTReference.fit_streaming` runs them in this order; every pass reads the
chunks ``[L, c, D]`` of T once, and only ``O(c · D + D²)`` of T is in memory:

  1. `mean_pass`: row count, NaN/Inf check (naming layer and rows), mean.
  2. `pca_pass`: scatter Σ (x − mean)(x − mean)ᵀ accumulated chunk by chunk
     with `ctjax.stats.pca.covariance` (in float64 across chunks), then the
     eigendecomposition — the same exact PCA as `fit_pca`, no sketching.
  3. `kmeans_pass`: every chunk projected to d dimensions (T is kept at d:
     ``[L, N, d]``), k-means fitted on a seeded sample of those rows (all of
     them when the sample is at least N, which reproduces the in-memory fit),
     then every projected point assigned to its cell, chunk by chunk.

`tiles_for_budget` turns a memory budget into nearest-neighbour tile sizes.
Chunks are padded to a fixed row count so each pass compiles once.
"""

import functools
import math
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from ctjax.stats import kmeans as km
from ctjax.stats import pca as pca_lib


class ChunkSource:
  """Training chunks ``[L, c, D]``, readable several times.

  Args:
    train: an array-like ``[L, N, D]`` (``np.memmap``, ``np.ndarray``, a
      ``jax.Array``) or ``[N, D]`` for one layer, read ``chunk_size`` rows at
      a time; or a callable returning a fresh iterable of ``[L, c, D]`` (or
      ``[c, D]``) chunks each time it is called.
    chunk_size: rows per chunk for an array; for every source, chunks are
      padded to a multiple of it (one compilation per pass).
  """

  def __init__(self, train, chunk_size: int = 8192):
    if chunk_size < 1:
      raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    self.chunk_size = int(chunk_size)
    if callable(train):
      self._make = train
      self._array = None
      first = next(iter(self._make()), None)
      if first is None:
        raise ValueError("train: the chunk iterable is empty")
      shape = self._as_chunk(first, 0).shape
    else:
      if not hasattr(train, "shape"):
        train = np.asarray(train)
      if len(train.shape) == 2:
        train = train[None]
      if len(train.shape) != 3:
        raise ValueError(
          f"train must be [layers, points, dims] (or [points, "
          f"dims]), got shape {tuple(train.shape)}"
        )
      self._array = train
      shape = train.shape
    self.n_layers, self.dim = int(shape[0]), int(shape[2])

  @staticmethod
  def _as_chunk(chunk, start):
    chunk = np.asarray(chunk)
    if chunk.ndim == 2:
      chunk = chunk[None]
    if chunk.ndim != 3:
      raise ValueError(
        f"train chunk at row {start} must be [layers, rows, "
        f"dims], got shape {chunk.shape}"
      )
    if not np.issubdtype(chunk.dtype, np.floating):
      chunk = chunk.astype(np.float32)
    return chunk

  def chunks(self) -> Iterable[tuple[int, np.ndarray]]:
    """Yields ``(first_row, chunk [L, c, D])`` over the whole training set."""
    if self._array is not None:
      n = self._array.shape[1]
      for s in range(0, n, self.chunk_size):
        yield s, self._as_chunk(self._array[:, s : s + self.chunk_size], s)
      return
    start = 0
    for chunk in self._make():
      chunk = self._as_chunk(chunk, start)
      if chunk.shape[0] != self.n_layers or chunk.shape[2] != self.dim:
        raise ValueError(
          f"train chunk at row {start} has shape {chunk.shape}; "
          f"expected [{self.n_layers}, rows, {self.dim}]"
        )
      if chunk.shape[1]:
        yield start, chunk
      start += chunk.shape[1]

  def padded(self, chunk: np.ndarray, fill=None) -> np.ndarray:
    """``chunk [L, c, D]`` padded along rows to a multiple of ``chunk_size``
    with ``fill [L, D]`` (zeros by default)."""
    c = chunk.shape[1]
    rows = -(-c // self.chunk_size) * self.chunk_size
    if rows == c:
      return chunk
    pad = np.zeros((chunk.shape[0], rows - c, chunk.shape[2]), chunk.dtype)
    if fill is not None:
      pad[:] = np.asarray(fill, chunk.dtype)[:, None, :]
    return np.concatenate([chunk, pad], axis=1)


# ------------------------------------------------------------------ pass 1
@jax.jit
def _chunk_sum(x):
  """Per-layer row sum ``[L, D]`` and finiteness ``[L]`` of ``x [L, c, D]``."""
  return jnp.sum(x, axis=1), jnp.all(jnp.isfinite(x), axis=(1, 2))


def mean_pass(source: ChunkSource, layer_names) -> tuple[int, np.ndarray]:
  """Returns (N, mean ``[L, D]``); raises on NaN/Inf naming layer and rows."""
  total = np.zeros((source.n_layers, source.dim), np.float64)
  n = 0
  for start, chunk in source.chunks():
    sums, finite = _chunk_sum(jnp.asarray(source.padded(chunk)))
    finite = np.asarray(finite)
    if not finite.all():
      bad = [layer_names[l] for l in np.flatnonzero(~finite)]
      raise ValueError(
        f"train has NaN or Inf values in layer(s) "
        f"{', '.join(bad)} (rows {start}-"
        f"{start + chunk.shape[1] - 1})"
      )
    total += np.asarray(sums, np.float64)
    n += chunk.shape[1]
  if n == 0:
    raise ValueError("train holds no points")
  return n, total / n


# ------------------------------------------------------------------ pass 2
@jax.jit
def _chunk_scatter(x, mean):
  """Per-layer scatter ``[L, D, D]`` of ``x [L, c, D]`` about ``mean [L, D]``."""
  return jax.lax.map(lambda a: pca_lib.covariance(a[0], a[1]), (x, mean))


def pca_from_scatter(
  mean: np.ndarray, scatter: np.ndarray, n: int, n_components: int
) -> pca_lib.PCA:
  """PCA of one layer from its exact scatter matrix (as `fit_pca`).

  Args:
    mean: ``[D]`` mean; scatter: ``[D, D]`` Σ (x − mean)(x − mean)ᵀ.
    n: number of rows; n_components: d.

  Returns:
    A `PCA` (float64 eigendecomposition; axes by decreasing variance, the
    entry of largest magnitude of each axis positive, as `fit_pca`).
  """
  cov = np.asarray(scatter, np.float64) / max(n - 1, 1)
  evals, evecs = np.linalg.eigh(cov)
  evals = evals[::-1][:n_components]
  evecs = evecs[:, ::-1][:, :n_components]
  pivot = evecs[np.argmax(np.abs(evecs), axis=0), np.arange(n_components)]
  evecs = evecs * np.where(pivot < 0, -1.0, 1.0)
  return pca_lib.PCA(
    mean=jnp.asarray(mean),
    components=jnp.asarray(evecs),
    variances=jnp.asarray(np.maximum(evals, 0.0)),
    total_variance=jnp.asarray(np.trace(cov)),
  )


def pca_pass(
  source: ChunkSource, mean: np.ndarray, n: int, n_components: int
) -> pca_lib.PCA:
  """PCA of every layer (fields stacked over L) from the exact covariance."""
  mean_dev = jnp.asarray(mean)
  mean_pad = np.asarray(mean_dev)  # padding rows equal to the mean add 0
  scatter = np.zeros((source.n_layers, source.dim, source.dim), np.float64)
  for _, chunk in source.chunks():
    x = jnp.asarray(source.padded(chunk, fill=mean_pad))
    scatter += np.asarray(_chunk_scatter(x, mean_dev), np.float64)
  layers = [
    pca_from_scatter(mean[l], scatter[l], n, n_components)
    for l in range(source.n_layers)
  ]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *layers)


# ------------------------------------------------------------------ pass 3
@jax.jit
def _project(pca, x):
  """``x [L, c, D]`` -> ``[L, c, d]``."""
  return jax.lax.map(lambda a: pca_lib.transform(a[0], a[1]), (pca, x))


@jax.jit
def _assign(centers, x):
  """Cells ``[L, c]`` and squared distance to the centre ``[L, c]``."""

  def one(a):
    d2 = km.sq_distances(a[1], a[0])
    return jnp.argmin(d2, axis=1).astype(jnp.int32), jnp.min(d2, axis=1)

  return jax.lax.map(one, (centers, x))


@functools.partial(jax.jit, static_argnames=("n_cells", "n_init"))
def _kmeans_layers(sample, keys, *, n_cells, n_init):
  return jax.lax.map(
    lambda a: km.kmeans(a[0], n_cells, a[1], n_init=n_init), (sample, keys)
  )


def sample_rows(n: int, sample_size: int | None, seed: int) -> np.ndarray:
  """Sorted row indices k-means is fitted on: all ``n`` rows when
  ``sample_size`` is None or ≥ n, else a seeded sample without replacement."""
  if sample_size is None or sample_size >= n:
    return np.arange(n)
  if sample_size < 1:
    raise ValueError(f"sample_size must be >= 1, got {sample_size}")
  rng = np.random.default_rng(seed)
  return np.sort(rng.choice(n, size=sample_size, replace=False))


def kmeans_pass(
  source: ChunkSource,
  pca: pca_lib.PCA,
  keys: jax.Array,
  *,
  n_cells: int,
  n_init: int,
  sample_size: int | None,
  seed: int,
) -> tuple[jax.Array, km.KMeans]:
  """Projects T, fits k-means on a sample, assigns every point.

  Args:
    source: the training chunks; pca: from `pca_pass` (stacked over L).
    keys: ``[L, 2]`` k-means key of each layer.
    n_cells: k; n_init: k-means restarts.
    sample_size: rows k-means is fitted on (None: all).
    seed: seed of the sample.

  Returns:
    ``(pt [L, N, d], fit)``: projected T, and a `KMeans` stacked over layers
    (``centers [L, k, d]``, ``labels [L, N]``, ``inertia [L]`` over all of T,
    ``n_iter [L]``).
  """
  d = pca.components.shape[-1]
  parts = []
  for _, chunk in source.chunks():
    c = chunk.shape[1]
    parts.append(
      np.asarray(_project(pca, jnp.asarray(source.padded(chunk))))[:, :c]
    )
  pt = (
    np.concatenate(parts, axis=1)
    if parts
    else np.zeros((source.n_layers, 0, d), np.float32)
  )
  del parts
  n = pt.shape[1]
  rows = sample_rows(n, sample_size, seed)
  if rows.shape[0] < n_cells:
    raise ValueError(
      f"sample_size={rows.shape[0]} is smaller than n_cells={n_cells}"
    )
  sample = pt if rows.shape[0] == n else pt[:, rows]
  fit = _kmeans_layers(
    jnp.asarray(sample), keys, n_cells=n_cells, n_init=n_init
  )
  del sample
  labels = np.empty((source.n_layers, n), np.int32)
  inertia = np.zeros(source.n_layers, np.float64)
  step = source.chunk_size
  for s in range(0, n, step):
    x = pt[:, s : s + step]
    lab, d2 = _assign(fit.centers, jnp.asarray(source.padded(x)))
    labels[:, s : s + x.shape[1]] = np.asarray(lab)[:, : x.shape[1]]
    inertia += np.asarray(d2, np.float64)[:, : x.shape[1]].sum(axis=1)
  fit = km.KMeans(
    centers=fit.centers,
    labels=jnp.asarray(labels),
    inertia=jnp.asarray(inertia, fit.inertia.dtype),
    n_iter=fit.n_iter,
  )
  return jnp.asarray(pt), fit


# ------------------------------------------------------------ memory budget
def tile_bytes(
  tile_queries: int, tile_train: int, n_dims: int, itemsize: int = 4
) -> int:
  """Working set of one step of the tiled nearest-neighbour search.

  Per step: scores and masked scores ``[tile_train, tile_queries]`` (float)
  and the mask (bool), plus the scanned slice of training points
  ``[tile_train, d]`` with its norms and cells.
  """
  return (
    tile_queries * tile_train * (2 * itemsize + 1)
    + tile_train * (n_dims * itemsize + itemsize + 4)
    + tile_queries * (n_dims * itemsize + 3 * itemsize + 8)
  )


def tiles_for_budget(
  memory_budget: int,
  n_dims: int,
  n_train: int,
  *,
  tile_queries: int = 64,
  itemsize: int = 4,
) -> tuple[int, int]:
  """Nearest-neighbour tile sizes whose working set fits ``memory_budget``.

  Args:
    memory_budget: bytes allowed for one search step (`tile_bytes`).
    n_dims: d, the projected dimension.
    n_train: N; tile_train never exceeds it.
    tile_queries: preferred queries per tile (halved, down to 8, if needed).
    itemsize: bytes per float.

  Returns:
    ``(tile_queries, tile_train)``, tile_train a power of two ≥ 128 (or N).

  Raises:
    ValueError: if even 8 queries × 128 rows do not fit.
  """
  tq = int(tile_queries)
  while tq >= 8:
    fixed = tile_bytes(tq, 0, n_dims, itemsize)
    per_row = tile_bytes(tq, 1, n_dims, itemsize) - fixed
    rows = (memory_budget - fixed) // per_row
    if rows >= 128:
      tile_train = 2 ** int(math.log2(rows))
      return tq, int(max(1, min(tile_train, n_train)))
    tq //= 2
  raise ValueError(
    f"memory_budget={memory_budget} bytes is too small for a nearest-"
    f"neighbour tile (at least {tile_bytes(8, 128, n_dims, itemsize)} bytes "
    f"for 8 queries x 128 training rows at d={n_dims})"
  )
