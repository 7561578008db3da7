"""Same-cell nearest-neighbour search against brute force and across choices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctjax.stats import native
from ctjax.stats import neighbors as nb
from tests.stats import oracle

K = 5  # cells; cell 3 gets no training point


def _data(rng, n=300, m=120, d=6, dtype=np.float32):
  train = rng.normal(size=(n, d)).astype(dtype)
  t_cells = rng.integers(0, K, n)
  t_cells[t_cells == 3] = 4
  queries = rng.normal(size=(m, d)).astype(dtype)
  q_cells = rng.integers(0, K, m)
  q_cells[:6] = [K, K + 2, 3, K, 3, 0]  # padding rows and the empty cell
  queries[10:20] = train[:10]  # exact copies
  q_cells[10:20] = t_cells[:10]
  return train, t_cells, queries, q_cells.astype(np.int32)


def _search(train, t_cells, queries, q_cells, metric, **kw):
  index = nb.build_index(jnp.asarray(train), jnp.asarray(t_cells), K, metric)
  dist, idx = jax.jit(lambda i, q, c: nb.nearest_in_cell(i, q, c, **kw))(
    index, jnp.asarray(queries), jnp.asarray(q_cells)
  )
  return np.asarray(dist), np.asarray(idx)


@pytest.mark.parametrize("metric", nb.METRICS)
def test_matches_brute_force_x64(enable_x64, rng, metric):
  train, t_cells, queries, q_cells = _data(rng, dtype=np.float64)
  real = (q_cells < K) & (q_cells != 3)
  want_d, want_i = oracle.nearest_in_cell(
    queries[real], q_cells[real], train, t_cells, metric
  )
  for search in nb.usable_searches():
    dist, idx = _search(train, t_cells, queries, q_cells, metric, search=search)
    np.testing.assert_allclose(dist[real], want_d, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(idx[real], want_i)


@pytest.mark.parametrize("metric", nb.METRICS)
def test_padding_rows_and_cell_without_training_points(rng, metric):
  train, t_cells, queries, q_cells = _data(rng)
  for kw in ({"tile_queries": None}, {"search": "tiled"}, {"search": "dense"}):
    dist, idx = _search(train, t_cells, queries, q_cells, metric, **kw)
    empty = (q_cells >= K) | (q_cells == 3)
    assert empty[:5].all() and not empty[5]
    assert np.all(np.isinf(dist[empty])) and np.all(idx[empty] == -1)
    assert np.all(np.isfinite(dist[~empty])) and np.all(idx[~empty] >= 0)
    # Exact copies are at distance exactly 0 from themselves.
    np.testing.assert_array_equal(dist[10:20], 0.0)
    np.testing.assert_array_equal(idx[10:20], np.arange(10))


# Every tile shape with cosine (unit rows, |dot|), two of them with l2.
_SHAPES = [(1, 1), (3, 7), (8, 16), (200, 13), (5, 301)]


@pytest.mark.parametrize("search", nb.SEARCHES)
@pytest.mark.parametrize(
  "metric,tile_queries,tile_train",
  [("cosine", *s) for s in _SHAPES] + [("l2", 3, 7), ("l2", 200, 13)],
)
def test_every_tile_shape_equals_materialised(
  rng, metric, search, tile_queries, tile_train
):
  if search not in nb.usable_searches():
    pytest.skip(f"search={search!r} does not run here ({native.reason()})")
  train, t_cells, queries, q_cells = _data(rng)
  want = _search(train, t_cells, queries, q_cells, metric, tile_queries=None)
  got = _search(
    train,
    t_cells,
    queries,
    q_cells,
    metric,
    tile_queries=tile_queries,
    tile_train=tile_train,
    search=search,
  )
  np.testing.assert_array_equal(got[1], want[1])
  np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("metric", nb.METRICS)
def test_ties_go_to_the_lowest_original_index(rng, metric):
  d = 4
  train = rng.normal(size=(40, d)).astype(np.float32)
  cells = np.zeros(40, np.int32)
  cells[::2] = 1
  # One vector at original indices 7, 21, 33 (cells 0, 0, 0) and, for
  # cosine, its negative at 5 (cosine distance 0 too); the query copies it.
  v = rng.normal(size=d).astype(np.float32)
  train[[7, 21, 33]] = v
  train[5] = -v if metric == "cosine" else v + 10.0
  cells[[5, 7, 21, 33]] = 0
  queries = np.stack([v, v, 2.0 * v]).astype(np.float32)
  q_cells = np.zeros(3, np.int32)
  want_first = 5 if metric == "cosine" else 7
  for kw in (
    {"tile_queries": None},
    {"search": "tiled", "tile_queries": 2, "tile_train": 3},
    {"search": "tiled"},
    {"search": "dense", "tile_train": 6},
    {"search": "dense"},
  ):
    dist, idx = _search(train, cells, queries, q_cells, metric, **kw)
    assert idx[0] == idx[1] == want_first, kw
    assert dist[0] == dist[1] == 0.0, kw
    if metric == "cosine":
      assert idx[2] == want_first, kw


def test_tile_train_larger_than_n(rng):
  train, t_cells, queries, q_cells = _data(rng, n=40, m=30)
  want = _search(train, t_cells, queries, q_cells, "l2", tile_queries=None)
  for search in nb.usable_searches():
    got = _search(
      train, t_cells, queries, q_cells, "l2", tile_train=10_000, search=search
    )
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


def test_vmap_over_layers_equals_one_layer_at_a_time(rng):
  layers = [_data(np.random.default_rng(s)) for s in range(3)]
  stack = lambda i: jnp.stack([jnp.asarray(l[i]) for l in layers])
  index = jax.vmap(lambda t, c: nb.build_index(t, c, K, "cosine"))(
    stack(0), stack(1)
  )
  for search in nb.usable_searches():
    dist, idx = jax.vmap(
      lambda i, q, c: nb.nearest_in_cell(i, q, c, search=search)
    )(index, stack(2), stack(3))
    for l, (train, t_cells, queries, q_cells) in enumerate(layers):
      want = _search(
        train, t_cells, queries, q_cells, "cosine", tile_queries=None
      )
      np.testing.assert_array_equal(np.asarray(idx[l]), want[1])
      # The winner is recomputed by code compiled for another shape.
      np.testing.assert_allclose(np.asarray(dist[l]), want[0], rtol=1e-6)


def test_resolve_search():
  assert nb.resolve_search("tiled") == "tiled"
  assert nb.resolve_search("dense", backend="cpu") == "dense"
  on_cpu = "native" if native.available() else "tiled"
  assert nb.resolve_search("auto", 500, backend="cpu") == on_cpu
  assert nb.resolve_search("auto", 500, backend="gpu") == "dense"
  assert nb.resolve_search("auto", 500, backend="tpu") == "dense"
  huge = nb.DENSE_BYTES // (4 * nb.TILE_TRAIN) + 1
  assert nb.resolve_search("auto", huge - 1, backend="gpu") == "dense"
  assert nb.resolve_search("auto", huge, backend="gpu") == "tiled"
  assert nb.resolve_search("auto") == (
    on_cpu if jax.default_backend() == "cpu" else "dense"
  )
  with pytest.raises(ValueError, match="CPU backend only"):
    nb.resolve_search("native", backend="gpu")
  assert nb.usable_searches("gpu") == ("tiled", "dense")
  assert ("native" in nb.usable_searches("cpu")) == native.available()
  with pytest.raises(ValueError, match="search must be"):
    nb.resolve_search("fast")


def test_turned_off_native_kernels_leave_the_search_to_xla():
  with native.turned_off():
    assert nb.resolve_search("auto", 500, backend="cpu") == "tiled"
    assert "native" not in nb.usable_searches("cpu")
    with pytest.raises(ValueError, match="cannot run: they are turned off"):
      nb.resolve_search("native", backend="cpu")
  assert nb.resolve_search("auto", 500, backend="cpu") == (
    "native" if native.available() else "tiled"
  )


def test_bad_metric():
  with pytest.raises(ValueError, match="metric must be one of"):
    nb.build_index(jnp.zeros((3, 2)), jnp.zeros(3, jnp.int32), 1, "l1")


def test_query_tile_grows_only_with_many_queries_per_cell():
  # A batch of a few hundred keeps its tiles; 10k queries in 10 cells get
  # 4x larger ones; the [tile_train, tile] block stays within 4 MB.
  assert nb.query_tile(64, 500, 10, 4096) == 64
  assert nb.query_tile(64, 4000, 10, 4096) == 128
  assert nb.query_tile(64, 10_000, 10, 4096) == 256
  assert nb.query_tile(64, 10**6, 10, 4096) == 256  # at most 4x
  assert nb.query_tile(64, 10_000, 10, 16_384) == 64  # 8 MB block
  assert nb.query_tile(None, 10_000, 10, 4096) is None


@pytest.mark.parametrize("metric", nb.METRICS)
def test_grown_tiles_equal_materialised(rng, metric):
  # fitted.nearest (the fit's test-set search and the score) grows the tile
  # when cells hold many queries: the same neighbours and distances.
  from ctjax.stats import fitted as fitted_lib

  train, t_cells, queries, q_cells = _data(rng, n=600, m=3000)
  assert nb.query_tile(16, 3000, K, 7) == 64
  index = nb.build_index(jnp.asarray(train), jnp.asarray(t_cells), K, metric)
  got = jax.jit(
    lambda i, q, c: fitted_lib.nearest(
      i, q, c, tile_queries=16, tile_train=7, search="tiled"
    )
  )(index, jnp.asarray(queries), jnp.asarray(q_cells))
  want = _search(train, t_cells, queries, q_cells, metric, tile_queries=None)
  np.testing.assert_array_equal(np.asarray(got[1]), want[1])
  np.testing.assert_array_equal(np.asarray(got[0]), want[0])
