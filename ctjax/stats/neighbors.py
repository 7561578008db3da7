"""Nearest training point within the same cell.

The training points are sorted by cell once (`build_index`), so cell c is the
contiguous run of rows ``starts[c]:starts[c+1]``. The searches give the same
``(dist, idx)`` up to the float32 rounding of the ranking score (where two
training points are within it of the same distance, either may win):

  - ``"tiled"`` (right for a CPU): queries are sorted by cell and dealt into
    cell-pure tiles of ``tile_queries`` rows (no tile straddles two cells, so
    no cross-cell pair is scored). With m queries and k cells there are at most
    ``ceil(m / tile_queries) + k`` tiles, a static count. A tile scans only its
    cell's training rows, ``tile_train`` at a time, so work is about
    Σ_c m_c · N_c and memory O(tile_queries · tile_train).
  - ``"dense"`` (right for a GPU/TPU): all queries at once against every
    training row, ``tile_train`` rows per step, pairs of different cells
    masked out. k times the pairs of the tiled search, in a few large
    products.
  - ``"native"`` (a CPU, float32): the tiled search's work in one compiled
    C++ kernel (`ctjax.stats.native`), an XLA FFI call that keeps each
    product block in registers and reduces it there instead of writing it
    to memory; built on first use, skipped (with the reason in
    `native.reason`) where no compiler is found.
  - materialised (``tile_queries=None``): the whole ``[N, m]`` score matrix;
    the reference the others are tested against.

``resolve_search("auto", ...)`` picks by backend and memory.

Metrics (on already projected vectors):
  - ``"l2"``: Euclidean distance ‖q − t‖.
  - ``"cosine"``: 1 − |cos(q, t)| (the sign of a PCA axis is arbitrary).

Candidates are ranked with the fast inner-product form (`distances`) in a
training-rows x queries layout; the returned distance is then recomputed in
difference form from the winning pair, so an exact copy has distance exactly 0
and a duplicated query gets bit-identical distances. Ties go to the lowest
original training index (cells are sorted stably and scanned in order).
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from ctjax.stats import distances, native

METRICS = ("l2", "cosine")
SEARCHES = ("tiled", "dense", "native")
# The one place for the default tile sizes (FitConfig, CTReference and the
# score use these): queries per tile, training rows per step, and the smaller
# step of a streamed fit, which keeps a larger T at d dimensions beside one
# tile's working set.
TILE_QUERIES = 64
TILE_TRAIN = 4096
STREAMING_TILE_TRAIN = 2048
# Largest score block (bytes) that "auto" lets the dense search hold at once.
DENSE_BYTES = 1 << 30


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["points", "aux", "cells", "starts", "order"],
  meta_fields=["metric"],
)
@dataclasses.dataclass(frozen=True)
class CellIndex:
  """Training points sorted by cell.

  Attributes:
    points: ``[N, d]`` training points in cell order (raw, not normalised).
    aux: ``[N]`` ‖t‖² for "l2", 1/‖t‖ for "cosine".
    cells: ``[N]`` int32 cell of each sorted point (non-decreasing).
    starts: ``[k + 2]`` int32; cell c occupies rows ``starts[c]:starts[c+1]``
      (the extra entry is a sentinel cell k used for padding).
    order: ``[N]`` int32 original index of each sorted point.
    metric: "l2" or "cosine".
  """

  points: jax.Array
  aux: jax.Array
  cells: jax.Array
  starts: jax.Array
  order: jax.Array
  metric: str


def query_tile(
  tile_queries: int | None, n_queries: int, n_cells: int, tile_train: int
) -> int | None:
  """The query tile for ``n_queries`` queries in ``n_cells`` cells.

  ``tile_queries`` doubled, up to 4 times it, while the average cell still
  fills 3 tiles and one ``[tile_train, tile]`` score block stays within
  4 MB: with many queries per cell (a fit's 10k test points, a
  `score_many` chunk) larger products run faster (one layer, 10k queries:
  tiles of 64 / 128 / 256 took 128 / 114 / 106 ms), while a batch of a few
  hundred keeps small tiles (little padding in cells of ~50 queries).
  ``None`` (materialised search) stays None.
  """
  if tile_queries is None:
    return None
  tile = tile_queries
  while (
    2 * tile <= 4 * tile_queries
    and n_queries >= 3 * n_cells * 2 * tile
    and 2 * tile * tile_train * 4 <= 1 << 22
  ):
    tile *= 2
  return tile


def check_metric(metric: str) -> str:
  """Returns ``metric`` or raises a ValueError naming the choices."""
  if metric not in METRICS:
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
  return metric


def build_index(
  train: jax.Array, cells: jax.Array, n_cells: int, metric: str
) -> CellIndex:
  """Sorts ``train [N, d]`` by ``cells [N]`` (values in [0, n_cells])."""
  check_metric(metric)
  cells = cells.astype(jnp.int32)
  order = jnp.argsort(cells, stable=True).astype(jnp.int32)
  points = train[order]
  sorted_cells = cells[order]
  starts = jnp.searchsorted(
    sorted_cells, jnp.arange(n_cells + 2, dtype=jnp.int32), side="left"
  ).astype(jnp.int32)
  if metric == "l2":
    aux = distances.sq_norms(points)
  else:
    aux = distances.inv_norm(points)
  return CellIndex(
    points=points,
    aux=aux,
    cells=sorted_cells,
    starts=starts,
    order=order,
    metric=metric,
  )


def exact_distance(q: jax.Array, t: jax.Array, metric: str) -> jax.Array:
  """Row-wise distance ``[m]`` between ``q [m, d]`` and ``t [m, d]``."""
  if metric == "l2":
    return jnp.sqrt(distances.sq_norms(q - t))
  u = distances.unit_rows(q)
  v = distances.unit_rows(t)
  # 1 − |u·v| = min(‖u − v‖², ‖u + v‖²) / 2 for unit vectors. q and t may be
  # normalised by differently compiled code, so an exact copy is set to 0
  # explicitly rather than trusted to round to it.
  d = 0.5 * jnp.minimum(distances.sq_norms(u - v), distances.sq_norms(u + v))
  return jnp.where(jnp.all(q == t, axis=-1), 0.0, d)


def usable_searches(backend: str | None = None) -> tuple[str, ...]:
  """The `SEARCHES` that run on ``backend`` (default
  ``jax.default_backend()``): "native" only on a CPU where the kernel
  can run (`native.why_not`)."""
  native_ok = native.why_not(backend=backend) is None
  return tuple(s for s in SEARCHES if s != "native" or native_ok)


def resolve_search(
  search: str,
  n_queries: int | None = None,
  tile_train: int = TILE_TRAIN,
  *,
  backend: str | None = None,
) -> str:
  """Maps ``search`` ("auto", "tiled", "dense" or "native") to one of
  `SEARCHES`.

  "auto" is "native" on a CPU where the kernel can run (`native.why_not`:
  built on the first call, not `native.turned_off`) and "tiled" on a CPU
  without it (a CPU gains nothing from scoring pairs of different cells);
  on an accelerator it is "dense" (a few large products beat many small
  ones there) when one ``[tile_train, n_queries]`` float32 score block fits
  in `DENSE_BYTES`, and "tiled" otherwise.

  Args:
    search: "auto", "tiled", "dense" or "native".
    n_queries: queries searched at once (None: unknown, memory not checked).
    tile_train: training rows per step.
    backend: default ``jax.default_backend()``.

  Raises:
    ValueError: an unknown ``search``, or "native" where `native.why_not`
      finds a reason (another backend than a CPU, the kernel not built,
      turned off); the message gives it.
  """
  if search not in SEARCHES and search != "auto":
    raise ValueError(
      f"search must be 'auto' or one of {SEARCHES}, got {search!r}"
    )
  backend = backend or jax.default_backend()
  if search == "native" or (search == "auto" and backend == "cpu"):
    why = native.why_not(backend=backend)  # builds the kernel once
    if search == "auto":
      return "native" if why is None else "tiled"
    if why is not None:
      raise ValueError(f"search='native' cannot run: {why}")
  if search in SEARCHES:
    return search
  if n_queries is not None and 4 * n_queries * tile_train > DENSE_BYTES:
    return "tiled"
  return "dense"


def _rank(metric, t, t_aux, q):
  """Scores ``[r, b]`` of training rows ``t [r, d]`` against ``q [b, d]``
  (lower is nearer); ``t_aux [r]`` is the index's ``aux``."""
  if metric == "l2":
    return distances.l2_rank(t, t_aux, q)
  return distances.cosine_rank(t, t_aux, q)


def _first_min(sc, rows):
  """Column minimum of ``sc [r, b]`` and the lowest ``rows [r]`` entry that
  attains it (two plain reductions: cheaper than a variadic argmin)."""
  best = jnp.min(sc, axis=0)
  big = jnp.iinfo(jnp.int32).max
  arg = jnp.min(jnp.where(sc == best[None, :], rows[:, None], big), axis=0)
  return best, arg


# Rows per block of the block-min argmin (a divisor of the scan steps).
GROUP = 32


def _steps(tile_train: int) -> tuple[int, int, int]:
  """(big step, remainder step, block) in rows for a scan of ``tile_train``.

  A cell's rows are scanned in big steps while a whole one fits, then in
  steps 8 times smaller, so a cell of N_c rows costs at most N_c plus one
  small step rather than up to a whole big step more. The block (rows whose
  minimum is kept per step) divides both.
  """
  small = tile_train // 8 if tile_train % 8 == 0 else tile_train
  return tile_train, small, math.gcd(tile_train, small, GROUP)


def _scan_rows(metric, t, t_aux, q, r0, r1, tile_train, keep, row_base=0):
  """Best block of g rows of ``t [N, d]`` in ``[r0, r1)`` for each query of
  ``q [b, d]``; row r of the layer is ``t[row_base + r]``.

  ``keep(take, fresh)`` gives the ``[rows, b]`` (or broadcastable) mask of
  the admissible pairs of a step (``take`` slices a per-row array to the
  step, ``fresh [rows]`` marks rows not scanned before).

  Each step keeps, per query, only the minimum of every block of g rows and
  the first block attaining it (a small argmin). Returns (score ``[b]``, first
  sorted row of the winning block ``[b]``; score ``inf`` where nothing is
  admissible); `_block_winner` finds the row within the block.
  """
  n = t_aux.shape[0]
  b = q.shape[0]
  big, small, g = _steps(tile_train)

  def step(size, clamp):
    def body(state):
      j, best, start = state
      s = jnp.minimum(j, n - size) if clamp else j  # keep the slice in bounds
      take = lambda a: jax.lax.dynamic_slice_in_dim(a, s, size)
      rows_t = jax.lax.dynamic_slice_in_dim(t, row_base + s, size)
      sc = _rank(metric, rows_t, take(t_aux), q)
      if clamp:  # rows before j were already scanned; rows >= r1 are not ours
        rows = s + jnp.arange(size, dtype=jnp.int32)
        fresh = (rows >= j) & (rows < r1)
      else:
        fresh = jnp.ones((size,), bool)
      sc = jnp.where(keep(take, fresh), sc, jnp.inf)
      blocks = jnp.min(sc.reshape(size // g, g, b), axis=1)  # [size / g, b]
      k = jnp.argmin(blocks, axis=0).astype(jnp.int32)
      v = jnp.take_along_axis(blocks, k[None], axis=0)[0]
      better = v < best
      best = jnp.where(better, v, best)
      start = jnp.where(better, s + k * g, start)
      return j + size, best, start

    return body

  state = (r0, jnp.full((b,), jnp.inf, q.dtype), jnp.zeros((b,), jnp.int32))
  state = jax.lax.while_loop(
    lambda st: st[0] + big <= r1, step(big, False), state
  )
  if small < big:
    state = jax.lax.while_loop(lambda st: st[0] < r1, step(small, True), state)
  else:  # one big step at most remains
    state = jax.lax.cond(state[0] < r1, step(big, True), lambda st: st, state)
  _, best, start = state
  return best, start


# Queries per chunk of `_block_winner` (its gathered rows stay in cache).
WINNER_CHUNK = 64


def _block_winner(index, t, row_base, queries, q_cells, start, tile_train):
  """The first best row ``[m]`` of the block of g sorted rows starting at
  ``start [m]``, for each query, among the rows of its own cell.

  Run after the search for all m queries, `WINNER_CHUNK` at a time: a
  gather of ``[chunk, g, d]`` rows (512 KB) and their products with the
  chunk's queries. In one piece, 10k test queries gathered 82 MB and took
  longer than the per-tile recompute it replaced (190 vs 145 ms a layer);
  chunked, the gathered rows stay in cache (150 vs 156 ms; 500 queries:
  14.5 vs 16.5 ms, same process). Ties go to the lowest row.
  ``t``, ``row_base``: the training rows, as in `nearest_in_cell`.
  """
  aux, cells = index.aux, index.cells
  n = aux.shape[0]
  m = start.shape[0]
  g = _steps(tile_train)[2]
  chunk = min(WINNER_CHUNK, m)
  n_chunks = -(-m // chunk)
  pad = n_chunks * chunk - m

  def one(a):
    q, qc, st = a
    rows = st[:, None] + jnp.arange(g, dtype=jnp.int32)[None, :]  # [c, g]
    rows = jnp.clip(rows, 0, n - 1)
    dots = jnp.einsum(
      "bgd,bd->bg", t[row_base + rows], q, precision=distances.HIGHEST
    )
    if index.metric == "l2":  # as `distances.l2_rank`, `cosine_rank`
      sc = aux[rows] - 2.0 * dots
    else:
      sc = -jnp.abs(dots) * aux[rows]
    sc = jnp.where(cells[rows] == qc[:, None], sc, jnp.inf)
    w = jnp.argmin(sc, axis=1)
    return jnp.take_along_axis(rows, w[:, None], axis=1)[:, 0]

  split = lambda x: jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(
    (n_chunks, chunk) + x.shape[1:]
  )
  pos = jax.lax.map(one, (split(queries), split(q_cells), split(start)))
  return pos.reshape(-1)[:m]


def _tiled(
  metric, t, t_aux, index, queries, q_cells, tile, tile_train, row_base
):
  """Cell-pure tiles. Returns (score ``[m]``, sorted row ``[m]``)."""
  m, d = queries.shape
  n_cells = index.starts.shape[0] - 2
  n_tiles = -(-m // tile) + n_cells
  valid = q_cells < n_cells
  perm = jnp.argsort(jnp.where(valid, q_cells, n_cells), stable=True)
  cs = q_cells[perm]
  counts = jnp.bincount(jnp.where(valid, q_cells, n_cells), length=n_cells + 1)
  counts = counts[:n_cells].astype(jnp.int32)
  first = jnp.cumsum(counts) - counts  # sorted position of each cell's first
  per_cell = (counts + tile - 1) // tile
  base = jnp.concatenate(
    [jnp.zeros((1,), jnp.int32), jnp.cumsum(per_cell).astype(jnp.int32)]
  )  # [k + 1]: cell c owns tiles base[c]:base[c+1]
  c = jnp.minimum(cs, n_cells - 1)
  within = jnp.arange(m, dtype=jnp.int32) - first[c]
  slot = (base[c] + within // tile) * tile + within % tile
  slot = jnp.where(cs < n_cells, slot, n_tiles * tile)  # padding: dropped
  qt = jnp.zeros((n_tiles * tile, d), queries.dtype)
  qt = qt.at[slot].set(queries[perm], mode="drop")
  tile_cell = (
    jnp.searchsorted(base, jnp.arange(n_tiles, dtype=jnp.int32), side="right")
    - 1
  ).astype(jnp.int32)  # n_cells for unused tiles

  def one_tile(args):
    q, cell = args
    r0 = index.starts[cell]
    r1 = jnp.where(cell < n_cells, index.starts[cell + 1], r0)
    keep = lambda take, fresh: fresh[:, None]
    return _scan_rows(metric, t, t_aux, q, r0, r1, tile_train, keep, row_base)

  best, arg = jax.lax.map(one_tile, (qt.reshape(n_tiles, tile, d), tile_cell))
  best, arg = best.reshape(-1), arg.reshape(-1)
  got = jnp.minimum(slot, n_tiles * tile - 1)
  score_s = jnp.where(cs < n_cells, best[got], jnp.inf)
  pos_s = arg[got]
  inv = jnp.zeros((m,), jnp.int32).at[perm].set(jnp.arange(m, dtype=jnp.int32))
  return score_s[inv], pos_s[inv]


def _dense(metric, t, t_aux, index, queries, q_cells, tile_train, row_base):
  """All queries at once, masked by cell. Returns (score ``[m]``, row ``[m]``)."""
  n = t_aux.shape[0]
  n_cells = index.starts.shape[0] - 2
  q_cells = jnp.where(q_cells < n_cells, q_cells, -1)  # padding matches nothing

  def keep(take, fresh):
    return fresh[:, None] & (take(index.cells)[:, None] == q_cells[None, :])

  return _scan_rows(
    metric,
    t,
    t_aux,
    queries,
    jnp.int32(0),
    jnp.int32(n),
    tile_train,
    keep,
    row_base,
  )


def nearest_in_cell(
  index: CellIndex,
  queries: jax.Array,
  q_cells: jax.Array,
  *,
  tile_queries: int | None = TILE_QUERIES,
  tile_train: int = TILE_TRAIN,
  search: str = "tiled",
  points: jax.Array | None = None,
  row_base=0,
):
  """Nearest training point in the query's own cell.

  Args:
    index: from `build_index`.
    queries: ``[m, d]`` query points.
    q_cells: ``[m]`` int cell of each query; a value ``>= k`` marks a padding
      row (no search, distance ``inf``).
    tile_queries: queries per tile of the tiled search; ``None`` materialises
      the ``[N, m]`` scores (whatever ``search``).
    tile_train: training rows scanned per step (capped at N).
    search: "tiled", "dense", "native" or "auto" (see `resolve_search`);
      all give the same result. "native" with other than float32 points
      and queries runs "tiled".
    points: the training rows when ``index.points`` is left out (None): an
      ``[R, d]`` array holding this index's N rows at ``row_base`` (an int
      or int32 scalar), e.g. every layer's rows stacked, so that a loop over
      layers reads one layer's rows in place rather than copying them out.

  Returns:
    ``(dist [m], idx [m])``: distance to the nearest training point of the same
    cell and that point's original index; ``inf`` / ``-1`` where the cell has
    no training point or the row is padding.
  """
  index = jax.tree_util.tree_map(jnp.asarray, index)  # may hold NumPy
  m = queries.shape[0]
  n = index.aux.shape[0]
  n_cells = index.starts.shape[0] - 2
  metric = index.metric
  q_cells = q_cells.astype(jnp.int32)
  t = index.points if points is None else jnp.asarray(points)
  t_aux = index.aux
  tile_train = max(1, min(tile_train, n))
  if tile_queries is None:
    rows_t = jax.lax.dynamic_slice_in_dim(t, row_base, n)
    sc = _rank(metric, rows_t, t_aux, queries)
    real = q_cells < n_cells
    same = (index.cells[:, None] == q_cells[None, :]) & real[None, :]
    sc = jnp.where(same, sc, jnp.inf)
    best, pos = _first_min(sc, jnp.arange(n, dtype=jnp.int32))
  else:
    kind = resolve_search(search, m, tile_train)
    if kind == "native" and not all(
      x.dtype == jnp.float32 for x in (t, t_aux, queries)
    ):
      kind = "tiled"  # the kernel is float32 only
    if kind == "native":
      best, pos = native.nearest(
        t, row_base, t_aux, index.starts, queries, q_cells, metric
      )
    elif kind == "dense":
      best, start = _dense(
        metric, t, t_aux, index, queries, q_cells, tile_train, row_base
      )
    else:
      best, start = _tiled(
        metric,
        t,
        t_aux,
        index,
        queries,
        q_cells,
        tile_queries,
        tile_train,
        row_base,
      )
    if kind != "native":
      pos = _block_winner(
        index, t, row_base, queries, q_cells, start, tile_train
      )
  found = jnp.isfinite(best)
  pos = jnp.where(found, pos, 0)
  dist = exact_distance(queries, t[row_base + pos], metric)
  dist = jnp.where(found, dist, jnp.inf)
  idx = jnp.where(found, index.order[pos], -1)
  return dist, idx
