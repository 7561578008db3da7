"""C_T of generated batches against a `Fitted` reference, entirely on device.

`score` is a pure function of arrays: it can be `jax.jit`-ed with the fitted
reference as an ordinary argument, `jax.vmap`-ed over a leading batch axis of
the generated embeddings, and called inside `lax.scan` or a training step.
Per layer (docs/method.md):

  1. project the generated points Q with the layer's PCA and give each its
     nearest k-means centre's cell;
  2. find L(q), the distance to the nearest training point of the same cell;
  3. count, per query, 2·#{p: L(p) < L(q)} + #{p: L(p) = L(q)} over the test
     points of its cell (`mannwhitney.twice_u`, int32, at most 2n) and sum
     those per cell with an integer segment sum: 2·U_π exactly;
  4. Z_π = (2U_π − n_π m_π + 1) / (2 sqrt(n_π m_π (n_π + m_π + 1) / 12)), its
     numerator in integers, and C_T the n_π/n-weighted mean of Z_π over the
     cells with m_π/m > τ.

2·U_π is at most 2·n·m. The sums are int32 while 2·n·m < 2³¹, decided from
the static shapes (`u2_dtype`); above that they are int64 when
``jax_enable_x64`` is on, and otherwise a ValueError names the sizes (a
float accumulation would silently drop counts).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ctjax.stats import fitted as fitted_lib
from ctjax.stats import kmeans as km
from ctjax.stats import mannwhitney
from ctjax.stats import neighbors as nb
from ctjax.stats import pca as pca_lib

# τ = PAPER_TAU_COUNT / m: a cell counts when it holds more than this many
# generated points.
PAPER_TAU_COUNT = 20


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["ct", "z", "included", "u2", "n_gen"],
  meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class Scores:
  """C_T and its per-cell parts (L layers, k cells; `jax.vmap` adds leading
  batch axes).

  Attributes:
    ct: ``[L]`` C_T; NaN for a degenerate layer or when no cell exceeds τ.
    z: ``[L, k]`` Z_U of each cell; NaN where n_π·m_π = 0 or the layer is
      degenerate.
    included: ``[L, k]`` bool, the cell's generated share m_π/m exceeds τ
      (and the layer is not degenerate).
    u2: ``[L, k]`` 2·U of each cell, an exact integer (int32, or int64 for
      large n·m under ``jax_enable_x64``).
    n_gen: ``[L, k]`` int32 generated points per cell m_π.
  """

  ct: jax.Array
  z: jax.Array
  included: jax.Array
  u2: jax.Array
  n_gen: jax.Array


def u2_dtype(n_test: int, n_gen: int):
  """The integer dtype in which per-cell 2·U sums are exact.

  Args:
    n_test: test points n (all cells together).
    n_gen: generated rows m (padding included).

  Returns:
    ``jnp.int32`` when 2·n·m < 2³¹, else ``jnp.int64`` when
    ``jax_enable_x64`` is on.

  Raises:
    ValueError: 2·n·m ≥ 2³¹ without ``jax_enable_x64``.
  """
  bound = 2 * int(n_test) * int(n_gen)
  if bound < 2**31:
    return jnp.int32
  if jax.config.jax_enable_x64:
    return jnp.int64
  raise ValueError(
    f"2·U per cell can reach 2·n·m = 2·{n_test}·{n_gen} = {bound} ≥ 2^31, "
    f"beyond int32; enable jax_enable_x64 (int64 sums) or score fewer "
    f"generated points per call"
  )


RANKS = ("search", "merge")


def resolve_layers(layers: str | None) -> str:
  """``layers``: "map" (`jax.lax.map`: one layer after another, one layer's
  working set; right for a CPU), "vmap" (`jax.vmap`: every layer at once, a
  few large kernels; right for a GPU/TPU) or ``None`` (by backend)."""
  if layers is None:
    return "map" if jax.default_backend() == "cpu" else "vmap"
  if layers not in ("map", "vmap"):
    raise ValueError(f"layers must be 'map', 'vmap' or None, got {layers!r}")
  return layers


def over_layers(f, xs, *, layers=None):
  """``f`` applied to every layer of the pytree ``xs`` (leading axis L),
  ``layers`` as in `resolve_layers`."""
  if resolve_layers(layers) == "vmap":
    return jax.vmap(f)(xs)
  return jax.lax.map(f, xs)


def resolve_rank(rank: str | None) -> str:
  """``rank``: "search" (binary search per query, `mannwhitney.twice_u`),
  "merge" (one sort-merge, `mannwhitney.twice_u_merge`) or ``None`` (by
  backend: "search" on a CPU)."""
  if rank is None:
    return "search" if jax.default_backend() == "cpu" else "merge"
  if rank not in RANKS:
    raise ValueError(f"rank must be one of {RANKS} or None, got {rank!r}")
  return rank


def _twice_u(rank, *a):
  if resolve_rank(rank) == "merge":
    return mannwhitney.twice_u_merge(*a)
  return mannwhitney.twice_u(*a)


def _query_one_layer(
  f,
  gen,
  valid,
  *,
  tile_queries,
  tile_train,
  search,
  rank=None,
  points=None,
  row_base=0,
):
  """One layer: 2·U part ``[m]``, cell ``[m]`` (k for padding), L(q) and
  nearest training index ``[m]`` of each generated point ``gen [m, D]``
  (``points``, ``row_base``: as `neighbors.nearest_in_cell`)."""
  k = f.centers.shape[0]
  pg = pca_lib.transform(f.pca, gen)
  cells = jnp.where(valid, km.assign(pg, f.centers), k)
  dist, idx = fitted_lib.nearest(
    f.index,
    pg,
    cells,
    tile_queries=tile_queries,
    tile_train=tile_train,
    search=search,
    points=points,
    row_base=row_base,
  )
  tu = _twice_u(rank, f.test.sorted_dist, f.test.starts, dist, cells)
  return tu, cells, dist, idx


def project_layers(fitted: fitted_lib.Fitted, gen, valid):
  """Projected generated points and their cells, every layer.

  Args:
    fitted: the reference.
    gen: ``[L, m, D]`` generated embeddings.
    valid: ``[m]`` bool, rows to score.

  Returns:
    ``(pg [L, m, d], cells [L, m])``; padding rows get cell k.
  """

  def one(a):
    f, g = a
    pg = pca_lib.transform(f.pca, g)
    return pg, jnp.where(valid, km.assign(pg, f.centers), f.centers.shape[0])

  return jax.lax.map(one, (fitted, gen))


def twice_u_layers(fitted: fitted_lib.Fitted, dist, cells, *, rank=None):
  """Per-query 2·U parts ``[L, m]`` (int32) from L(q) ``dist [L, m]`` and
  ``cells [L, m]`` (k marks padding, which contributes 0); ``rank`` as in
  `resolve_rank`."""
  return jax.lax.map(
    lambda a: _twice_u(rank, *a),
    (fitted.test.sorted_dist, fitted.test.starts, dist, cells),
  )


def _stacked_rows(fitted: fitted_lib.Fitted):
  """``(rest, points [L·N, d], N)``: ``fitted`` without its index's points,
  and those points stacked, for a loop over layers in which each layer's
  search reads its own rows in place (a map over the whole index would copy
  every layer's N x d rows out first: 1.9 ms a layer at N = 50k on a 2-core
  CPU, 13% of a warm batch)."""
  n_layers, n, d = fitted.index.points.shape
  points = fitted.index.points.reshape(n_layers * n, d)
  rest = dataclasses.replace(
    fitted, index=dataclasses.replace(fitted.index, points=None)
  )
  return rest, points, n


def query_parts(
  fitted: fitted_lib.Fitted,
  gen,
  valid,
  *,
  tile_queries=nb.TILE_QUERIES,
  tile_train=nb.TILE_TRAIN,
  search="auto",
  layers=None,
  rank=None,
):
  """The per-query half of `score`, every layer.

  Args:
    fitted: the reference.
    gen: ``[L, m, D]`` generated embeddings.
    valid: ``[m]`` bool, rows to score.
    tile_queries, tile_train, search: the nearest-neighbour search.
    layers: how layers are mapped (`over_layers`).
    rank: how 2·U parts are counted (`resolve_rank`).

  Returns:
    ``(tu [L, m] int32, cells [L, m], dist [L, m], idx [L, m])``: 2·U parts,
    cells (k for padding), L(q) and the nearest training point's original
    index (``inf``/``-1`` for padding).
  """
  kw = dict(
    tile_queries=tile_queries, tile_train=tile_train, search=search, rank=rank
  )
  if resolve_layers(layers) == "vmap":
    return over_layers(
      lambda a: _query_one_layer(a[0], a[1], valid, **kw),
      (fitted, gen),
      layers=layers,
    )
  rest, points, n = _stacked_rows(fitted)
  return jax.lax.map(
    lambda a: _query_one_layer(
      a[0], a[1], valid, points=points, row_base=a[2] * n, **kw
    ),
    (rest, gen, jnp.arange(fitted.n_layers, dtype=jnp.int32)),
  )


def cell_scores(fitted: fitted_lib.Fitted, tu, cells, *, tau=None) -> Scores:
  """Sums per-query 2·U parts per cell and finishes Z and C_T.

  Args:
    fitted: the reference.
    tu: ``[L, m]`` int32 per-query 2·U parts (`query_parts`).
    cells: ``[L, m]`` cells; k (or more) marks padding.
    tau: threshold on m_π/m (a float or a scalar array); ``None`` is the
      paper's 20/m with m the number of valid rows, i.e. a cell counts when it
      holds more than 20 generated points.

  Returns:
    `Scores`.
  """
  m = cells.shape[-1]
  k = fitted.n_cells
  acc = u2_dtype(fitted.n_test, m)
  seg = jax.vmap(lambda v, c: jax.ops.segment_sum(v, c, num_segments=k + 1)[:k])
  cells = jnp.minimum(cells, k)
  u2 = seg(tu.astype(acc), cells)
  n_gen = seg(jnp.ones(cells.shape, jnp.int32), cells)
  n_test = fitted.test.counts.astype(jnp.int32)
  nm = n_test.astype(acc) * n_gen.astype(acc)
  num = u2 - nm + 1  # 2U − (n_π m_π − 1), exact
  f = jnp.result_type(float)
  sd = jnp.sqrt(nm.astype(f) * (n_test + n_gen + 1).astype(f) / 12.0)
  degenerate = fitted.degenerate.astype(bool)[:, None]
  z = num.astype(f) / (2.0 * jnp.where(sd > 0, sd, 1.0))
  z = jnp.where((nm > 0) & ~degenerate, z, jnp.nan)
  if tau is None:
    over = n_gen > PAPER_TAU_COUNT
  else:
    m_valid = jnp.maximum(jnp.sum(n_gen, axis=1, keepdims=True), 1)
    over = n_gen.astype(f) / m_valid.astype(f) > tau
  included = over & (n_test > 0) & ~degenerate
  n = jnp.maximum(jnp.sum(n_test, axis=1, keepdims=True), 1)
  weight = jnp.where(included, n_test.astype(f) / n.astype(f), 0.0)
  total = jnp.sum(weight, axis=1)
  num_ct = jnp.sum(weight * jnp.where(included, z, 0.0), axis=1)
  ct = jnp.where(total > 0, num_ct / jnp.where(total > 0, total, 1.0), jnp.nan)
  return Scores(ct=ct, z=z, included=included, u2=u2, n_gen=n_gen)


_STATIC = ("tile_queries", "tile_train", "search", "layers", "rank")


@functools.partial(jax.jit, static_argnames=_STATIC)
def score_detailed(
  fitted: fitted_lib.Fitted,
  gen,
  *,
  tau=None,
  valid=None,
  tile_queries=nb.TILE_QUERIES,
  tile_train=nb.TILE_TRAIN,
  search="auto",
  layers=None,
  rank=None,
):
  """`score` and the per-query parts behind it.

  Returns:
    ``(scores, cells [L, m], dist [L, m], idx [L, m])`` (see `query_parts`).
  """
  if valid is None:
    valid = jnp.ones(gen.shape[-2], bool)
  tu, cells, dist, idx = query_parts(
    fitted,
    gen,
    valid,
    tile_queries=tile_queries,
    tile_train=tile_train,
    search=search,
    layers=layers,
    rank=rank,
  )
  return cell_scores(fitted, tu, cells, tau=tau), cells, dist, idx


@functools.partial(jax.jit, static_argnames=_STATIC)
def score(
  fitted: fitted_lib.Fitted,
  gen,
  *,
  tau=None,
  valid=None,
  tile_queries: int | None = nb.TILE_QUERIES,
  tile_train: int = nb.TILE_TRAIN,
  search: str = "auto",
  layers: str | None = None,
  rank: str | None = None,
) -> Scores:
  """C_T of a generated batch on every layer, on device.

  Pure and jit-compiled: ``jax.vmap(score, in_axes=(None, 0))`` scores
  ``[B, L, m, D]`` into ``ct [B, L]``, and it runs inside `lax.scan` or a
  user's jitted step. Nothing is checked on the host: NaN/Inf inputs give
  NaN or meaningless results (`ctjax.CTReference.score` validates and
  warns).

  Args:
    fitted: the `Fitted` reference (``CTReference.fitted``).
    gen: ``[L, m, D]`` generated embeddings Q.
    tau: threshold on a cell's generated share m_π/m; ``None`` is the paper's
      20/m (m: valid rows).
    valid: ``[m]`` bool; False marks padding rows, which count nowhere.
    tile_queries, tile_train, search: the nearest-neighbour search (the
      result does not depend on them).
    layers: "map" (one layer after another, a CPU's choice), "vmap" (all
      layers at once, an accelerator's) or ``None`` (by backend).
    rank: "search" (binary search per query, a CPU's choice), "merge" (one
      sort-merge per layer, an accelerator's) or ``None`` (by backend).

  Returns:
    `Scores`: ``ct [L]``, ``z``/``included``/``u2``/``n_gen [L, k]``.

  Raises:
    ValueError: at trace time, when 2·n·m ≥ 2³¹ without ``jax_enable_x64``
      (`u2_dtype`).
  """
  return score_detailed(
    fitted,
    gen,
    tau=tau,
    valid=valid,
    tile_queries=tile_queries,
    tile_train=tile_train,
    search=search,
    layers=layers,
    rank=rank,
  )[0]


def merged_parts(fitted: fitted_lib.Fitted, gens, valid, **kw):
  """Per-query parts of c batches by one search over their c·m queries.

  A query's nearest neighbour and its 2·U part do not depend on the other
  queries, so the c batches of a layer are searched together: cell-pure
  tiles fill up and products grow, while each batch keeps its own sums.

  Args:
    fitted: the reference.
    gens: ``[L, c, m, D]`` generated embeddings, layer-major (`score_many`
      transposes each chunk so on the device, beside its padding).
    valid: ``[c, m]`` bool, rows to score.
    **kw: as `query_parts`.

  Returns:
    ``(tu, cells)``, each ``[c, L, m]`` (k marks padding).
  """
  n_layers, c, m, dim = gens.shape
  tu, cells, _, _ = query_parts(
    fitted, gens.reshape(n_layers, c * m, dim), valid.reshape(c * m), **kw
  )
  back = lambda x: jnp.swapaxes(x.reshape(n_layers, c, m), 0, 1)
  return back(tu), back(cells)


def merged_batch_parts(
  fitted: fitted_lib.Fitted,
  batches,
  valid,
  *,
  layer_start=0,
  tile_queries=nb.TILE_QUERIES,
  tile_train=nb.TILE_TRAIN,
  search="auto",
  rank=None,
):
  """`merged_parts` of c batches given one by one, as they arrive.

  Each layer's c·m_pad queries are gathered from the c batches (and padded)
  inside the loop over layers, so only one layer's ``[c·m_pad, D]`` is
  copied at a time, never a layer-major copy of the whole chunk (whose fresh
  pages cost more than the copy itself on a CPU). Layers run one after
  another (a CPU's choice).

  Args:
    fitted: the reference (L layers).
    batches: a tuple of c ``[L', m, D]`` arrays, batch b's embeddings (m may
      be below m_pad); layer l of ``fitted`` is layer ``layer_start + l``.
    valid: ``[c, m_pad]`` bool, rows to score (False beyond m).
    layer_start: an int or int32 scalar.
    tile_queries, tile_train, search, rank: as `query_parts`.

  Returns:
    ``(finite [c, L] bool, tu [c, L, m_pad], cells [c, L, m_pad])``.
  """
  c, m_pad = valid.shape
  kw = dict(
    tile_queries=tile_queries, tile_train=tile_train, search=search, rank=rank
  )
  rest, points, n = _stacked_rows(fitted)

  def one(a):
    f, l = a
    xs = [
      jax.lax.dynamic_index_in_dim(g, layer_start + l, keepdims=False)
      for g in batches
    ]
    finite = jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs])
    x = jnp.concatenate(
      [jnp.pad(x, ((0, m_pad - x.shape[0]), (0, 0))) for x in xs]
    )
    tu, cells, _, _ = _query_one_layer(
      f, x, valid.reshape(-1), points=points, row_base=l * n, **kw
    )
    return finite, tu, cells

  n_layers = fitted.n_layers
  finite, tu, cells = jax.lax.map(
    one, (rest, jnp.arange(n_layers, dtype=jnp.int32))
  )
  back = lambda x: jnp.swapaxes(x.reshape(n_layers, c, m_pad), 0, 1)
  return finite.T, back(tu), back(cells)


@functools.partial(jax.jit, static_argnames=_STATIC)
def score_merged(
  fitted: fitted_lib.Fitted,
  gens,
  valid,
  *,
  tau=None,
  tile_queries=nb.TILE_QUERIES,
  tile_train=nb.TILE_TRAIN,
  search="auto",
  layers=None,
  rank=None,
) -> Scores:
  """`score` of c batches ``gens [L, c, m, D]`` (layer-major, ``valid
  [c, m]``) by one search per layer (`merged_parts`); fields ``[c, L, ...]``
  equal to ``score(gens[:, b], valid=valid[b])`` of each batch b."""
  tu, cells = merged_parts(
    fitted,
    gens,
    valid,
    tile_queries=tile_queries,
    tile_train=tile_train,
    search=search,
    layers=layers,
    rank=rank,
  )
  return jax.vmap(lambda t, c: cell_scores(fitted, t, c, tau=tau))(tu, cells)


def batch_bytes(fitted: fitted_lib.Fitted, m: int, *, tile_queries, tile_train):
  """Rough device bytes to score one ``[L, m, D]`` batch (for chunking)."""
  n_layers, dim, d = fitted.n_layers, fitted.dim, fitted.n_components
  itemsize = np.dtype(fitted.pca.mean.dtype).itemsize
  if tile_queries is None:
    work = 3 * m * fitted.n_train
  else:
    # A tile grows to at most 4x tile_queries (`neighbors.query_tile`).
    work = 16 * tile_queries * min(tile_train, fitted.n_train)
  return itemsize * (n_layers * m * (dim + d + 8) + work)
