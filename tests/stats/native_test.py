"""The compiled CPU kernels (`ctjax.stats.native`): the search against the
XLA searches and a float64 brute force, the scatter matrix against float64
NumPy; their build, cache and fallbacks."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctjax.stats import native
from ctjax.stats import neighbors as nb
from tests.stats import oracle


@pytest.fixture
def kernel():
  if jax.default_backend() != "cpu":
    pytest.skip("the native kernel runs on a CPU backend only")
  if not native.available():
    pytest.skip(f"native kernel unavailable: {native.reason()}")


@pytest.fixture
def fresh_state(monkeypatch, tmp_path):
  """A clean build state with its own cache folder; restored after."""
  monkeypatch.setenv("CTJAX_NATIVE_CACHE", str(tmp_path / "cache"))
  monkeypatch.delenv("CTJAX_NATIVE", raising=False)
  native._reset_for_tests()
  yield tmp_path / "cache"
  native._reset_for_tests()


@pytest.fixture
def small_build(request, monkeypatch):
  """`fresh_state` building one small source (layernorm.cc) instead of all
  of them: the caching tests need a build, not every kernel (a full build
  took ~30 s on a 2-core Zen 5 while the other test worker ran). The full
  library is loaded and registered first, so a later `available` in this
  process finds every kernel."""
  if jax.default_backend() != "cpu" or not native.available():
    pytest.skip(f"native kernels unavailable: {native.reason()}")
  monkeypatch.setattr(native, "SOURCES", (native._HERE / "layernorm.cc",))
  monkeypatch.setattr(native, "TARGETS", {"ctjax_layer_norm": "CtjaxLayerNorm"})
  return request.getfixturevalue("fresh_state")


def test_builds_where_a_compiler_exists():
  if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
    pytest.skip("no C++ compiler on this machine")
  if os.environ.get("CTJAX_NATIVE") == "0":
    pytest.skip("CTJAX_NATIVE=0 turns the kernel off")
  assert native.available(), native.reason()


def _layer(rng, n, m, d, k, dtype=np.float32):
  train = rng.normal(size=(n, d)).astype(dtype)
  # Uneven cells, none a multiple of the kernel's row tile; cell 2 empty.
  t_cells = rng.choice(
    k, size=n, p=np.linspace(1, 3, k) / np.linspace(1, 3, k).sum()
  )
  t_cells[t_cells == 2] = 0
  queries = rng.normal(size=(m, d)).astype(dtype)
  q_cells = rng.integers(0, k + 2, m).astype(np.int32)  # k, k+1: padding
  queries[:25] = train[100:125]  # exact copies
  q_cells[:25] = t_cells[100:125]
  return train, t_cells.astype(np.int32), queries, q_cells


def _search(train, t_cells, queries, q_cells, k, metric, **kw):
  index = nb.build_index(jnp.asarray(train), jnp.asarray(t_cells), k, metric)
  return [
    np.asarray(x)
    for x in jax.jit(lambda i, q, c: nb.nearest_in_cell(i, q, c, **kw))(
      index, jnp.asarray(queries), jnp.asarray(q_cells)
    )
  ]


@pytest.mark.parametrize("metric", nb.METRICS)
@pytest.mark.parametrize("d", [1, 5, 37, 64])
def test_equals_xla_searches_and_brute_force(kernel, rng, metric, d):
  k = 6
  # 700 queries: several blocks per cell, the last one partial.
  train, t_cells, queries, q_cells = _layer(rng, 2503, 700, d, k)
  got = _search(train, t_cells, queries, q_cells, k, metric, search="native")
  for kw in ({"tile_queries": None}, {"search": "tiled"}):
    want = _search(train, t_cells, queries, q_cells, k, metric, **kw)
    np.testing.assert_array_equal(got[1], want[1], err_msg=str(kw))
    np.testing.assert_array_equal(got[0], want[0], err_msg=str(kw))
  real = (q_cells < k) & (q_cells != 2)
  assert np.all(got[1][~real] == -1) and np.all(np.isinf(got[0][~real]))
  if d == 1:
    # One dimension: cosine distances are all 0, and l2 neighbours closer
    # than float32's ranking resolution tie (the lowest index wins).
    return
  want_d, want_i = oracle.nearest_in_cell(
    queries[real], q_cells[real], train, t_cells, metric
  )
  np.testing.assert_allclose(got[0][real], want_d, rtol=2e-4, atol=2e-6)
  np.testing.assert_array_equal(got[0][:25], 0.0)  # the copies
  assert np.mean(got[1][real] == want_i) > 0.99


@pytest.mark.parametrize("metric", nb.METRICS)
@pytest.mark.parametrize("n", [203, 2603])
def test_ties_go_to_the_lowest_index(kernel, rng, metric, n):
  # Every row of cell 0 is the same vector (and for cosine, half are its
  # negative): every row ties, and the lowest original index must win, also
  # where the cell's rows span several of the kernel's work items (1000
  # rows each, merged afterwards).
  d = 8
  v = rng.normal(size=d).astype(np.float32)
  train = np.tile(v, (n, 1))
  if metric == "cosine":
    train[::2] *= -1
  cells = np.zeros(n, np.int32)
  cells[:40] = 1  # the lowest indices are in another cell
  queries = np.stack([v, 3 * v, -v] * 20).astype(np.float32)
  q_cells = np.zeros(len(queries), np.int32)
  dist, idx = _search(
    train, cells, queries, q_cells, 2, metric, search="native"
  )
  if metric == "cosine":
    np.testing.assert_array_equal(idx, 40)
    np.testing.assert_allclose(dist, 0.0, atol=1e-6)  # 3v: rounding only
  else:
    np.testing.assert_array_equal(idx, 40)


@pytest.mark.parametrize("metric", nb.METRICS)
def test_cells_of_many_rows_and_any_query_count(kernel, rng, metric):
  # Cells of 1-3 work items of rows, with query counts that leave every
  # remainder kind: none, <= 16 (a one-vector block), 17-31 (a full block).
  d, k = 24, 7
  sizes = [2999, 1000, 1001, 1, 2500, 0, 40]
  t_cells = np.repeat(np.arange(k), sizes).astype(np.int32)
  train = rng.normal(size=(len(t_cells), d)).astype(np.float32)
  counts = [33, 16, 17, 1, 64, 5, 48]
  q_cells = np.repeat(np.arange(k), counts).astype(np.int32)
  rng.shuffle(q_cells)
  queries = rng.normal(size=(len(q_cells), d)).astype(np.float32)
  queries[:10] = train[rng.integers(0, len(train), 10)]  # a few copies
  got = _search(train, t_cells, queries, q_cells, k, metric, search="native")
  want = _search(train, t_cells, queries, q_cells, k, metric, tile_queries=None)
  np.testing.assert_array_equal(got[1], want[1])
  np.testing.assert_array_equal(got[0], want[0])
  assert np.all(got[1][q_cells == 5] == -1)  # an empty cell
  assert np.all(got[1][q_cells != 5] >= 0)


def test_stacked_rows_at_an_offset_in_jit_vmap_and_scan(kernel, rng):
  k = 4
  layers = [_layer(np.random.default_rng(s), 601, 150, 9, k) for s in range(3)]
  idx = [
    nb.build_index(jnp.asarray(t), jnp.asarray(c), k, "cosine")
    for t, c, _, _ in layers
  ]
  want = [
    _search(*l[:2], *l[2:], k, "cosine", tile_queries=None) for l in layers
  ]
  stacked = jnp.concatenate([i.points for i in idx])
  bare = [
    nb.CellIndex(None, i.aux, i.cells, i.starts, i.order, i.metric) for i in idx
  ]
  for l, (_, _, q, c) in enumerate(layers):
    got = jax.jit(
      lambda i, q, c, base: nb.nearest_in_cell(
        i, q, c, search="native", points=stacked, row_base=base
      )
    )(bare[l], jnp.asarray(q), jnp.asarray(c), jnp.int32(601 * l))
    np.testing.assert_array_equal(np.asarray(got[1]), want[l][1])
  stack = lambda j: jnp.stack([jnp.asarray(l[j]) for l in layers])
  index = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *idx)
  search = lambda i, q, c: nb.nearest_in_cell(i, q, c, search="native")
  by_vmap = jax.jit(jax.vmap(search))(index, stack(2), stack(3))
  _, by_scan = jax.lax.scan(
    lambda carry, a: (carry, search(*a)), 0, (index, stack(2), stack(3))
  )
  for l in range(3):
    for got in (by_vmap, by_scan):
      np.testing.assert_array_equal(np.asarray(got[1][l]), want[l][1])
      np.testing.assert_allclose(np.asarray(got[0][l]), want[l][0], rtol=1e-6)


def test_float64_runs_the_xla_search(kernel, enable_x64, rng):
  train, t_cells, queries, q_cells = _layer(rng, 400, 90, 5, 4, np.float64)
  got = _search(train, t_cells, queries, q_cells, 4, "l2", search="native")
  want = _search(train, t_cells, queries, q_cells, 4, "l2", search="tiled")
  assert got[0].dtype == np.float64
  np.testing.assert_array_equal(got[1], want[1])


def test_bad_cell_starts_are_an_error(kernel):
  pts = jnp.ones((10, 3), jnp.float32)
  with pytest.raises(Exception, match="starts must be non-decreasing"):
    jax.block_until_ready(
      native.nearest(
        pts,
        0,
        jnp.ones(10),
        jnp.array([0, 7, 4, 10], jnp.int32),
        jnp.ones((2, 3), jnp.float32),
        jnp.zeros(2, jnp.int32),
        "l2",
      )
    )


def test_disabled_falls_back_to_tiled(fresh_state, monkeypatch):
  monkeypatch.setenv("CTJAX_NATIVE", "0")
  assert not native.available()
  assert "CTJAX_NATIVE=0" in native.reason()
  assert nb.resolve_search("auto", 500, backend="cpu") == "tiled"
  with pytest.raises(
    ValueError, match="cannot run: they are unavailable: disabled"
  ):
    nb.resolve_search("native", backend="cpu")


def test_a_failing_compiler_is_reported(fresh_state, monkeypatch):
  monkeypatch.setenv("CXX", shutil.which("false") or "false")
  assert not native.available()
  assert "failed" in native.reason()
  assert not list(fresh_state.glob("*.so"))  # nothing half-written is kept


def test_build_is_cached_by_source_and_compiler(small_build, monkeypatch):
  assert native.available(), native.reason()
  (lib,) = small_build.glob("ctjax-native-*.so")
  stamp = os.stat(lib).st_mtime_ns
  native._reset_for_tests()
  assert native.available()
  assert [lib] == list(small_build.glob("ctjax-native-*.so"))
  assert os.stat(lib).st_mtime_ns == stamp  # not rebuilt
  # Another source is another library.
  monkeypatch.setattr(native, "HEADERS", native.HEADERS[:1])
  native._reset_for_tests()
  assert native.available(), native.reason()
  assert len(list(small_build.glob("ctjax-native-*.so"))) == 2


def test_concurrent_calls_share_the_helpers(kernel):
  # Calls from several host threads at once (as ctjax's layer groups make
  # them) each get their own results, equal to the same calls made alone.
  from concurrent.futures import ThreadPoolExecutor

  k = 5
  layers = [
    _layer(np.random.default_rng(s), 1500, 400, 16, k) for s in range(6)
  ]
  search = jax.jit(lambda i, q, c: nb.nearest_in_cell(i, q, c, search="native"))
  args = [
    (
      nb.build_index(jnp.asarray(t), jnp.asarray(c), k, "l2"),
      jnp.asarray(q),
      jnp.asarray(qc),
    )
    for t, c, q, qc in layers
  ]
  alone = [np.asarray(search(*a)[1]) for a in args]
  with ThreadPoolExecutor(4) as pool:
    for _ in range(3):
      got = list(pool.map(lambda a: np.asarray(search(*a)[1]), args))
      for g, w in zip(got, alone):
        np.testing.assert_array_equal(g, w)


def test_cxx_may_carry_arguments(small_build, monkeypatch):
  # CXX is split like a shell word list ("ccache g++", "g++ -DX"); the
  # arguments are part of the cache key.
  cxx = next(c for c in ("c++", "g++", "clang++") if shutil.which(c))
  assert native.available(), native.reason()
  plain = set(small_build.glob("ctjax-native-*.so"))
  assert len(plain) == 1
  monkeypatch.setenv("CXX", f"{cxx} -DCTJAX_TEST_FLAG=1")
  native._reset_for_tests()
  assert native.available(), native.reason()
  with_flag = set(small_build.glob("ctjax-native-*.so")) - plain
  assert len(with_flag) == 1


def _scatter64(x, mean):
  xc = x.astype(np.float64) - np.asarray(mean, np.float64)
  return xc.T @ xc


@pytest.mark.parametrize(
  "n,d",
  # one row; below, at and past a panel (256) and a register tile (8 x 32);
  # several panels per thread; D past a multiple of both tiles.
  [(1, 1), (7, 5), (255, 37), (256, 64), (257, 33), (1000, 96), (3000, 130)],
)
def test_scatter_is_the_float64_scatter(kernel, n, d):
  rng = np.random.default_rng(n * 1000 + d)
  x = (rng.normal(size=(n, d)) * rng.uniform(0.1, 3, d) + 50).astype(np.float32)
  mean = x.mean(axis=0)
  got = np.asarray(native.scatter(jnp.asarray(x), jnp.asarray(mean)))
  want = _scatter64(x, mean)
  assert got.shape == (d, d) and got.dtype == np.float32
  assert np.abs(got - want).max() <= 2e-6 * np.abs(want).max()
  np.testing.assert_array_equal(got, got.T)


def test_scatter_takes_any_centre_and_no_rows(kernel):
  rng = np.random.default_rng(3)
  x = rng.normal(size=(600, 20)).astype(np.float32)
  centre = rng.normal(size=20).astype(np.float32)  # not the mean
  got = np.asarray(native.scatter(jnp.asarray(x), jnp.asarray(centre)))
  want = _scatter64(x, centre)
  assert np.abs(got - want).max() <= 2e-6 * np.abs(want).max()
  empty = native.scatter(jnp.zeros((0, 4)), jnp.ones(4))
  np.testing.assert_array_equal(np.asarray(empty), np.zeros((4, 4)))


def test_scatter_sums_many_rows_in_float64(kernel):
  # 400k rows far from the origin: float32 running sums would drift; the
  # kernel adds its float32 panel sums in float64.
  rng = np.random.default_rng(4)
  x = (rng.normal(size=(400_000, 3)) + 1000).astype(np.float32)
  mean = x.astype(np.float64).mean(axis=0).astype(np.float32)
  got = np.asarray(native.scatter(jnp.asarray(x), jnp.asarray(mean)))
  want = _scatter64(x, mean)
  assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


def test_scatter_under_jit_vmap_and_threads(kernel):
  from concurrent.futures import ThreadPoolExecutor

  rng = np.random.default_rng(5)
  xs = jnp.asarray(rng.normal(size=(4, 700, 40)).astype(np.float32))
  means = xs.mean(axis=1)
  alone = [np.asarray(native.scatter(x, m)) for x, m in zip(xs, means)]
  batched = np.asarray(jax.jit(jax.vmap(native.scatter))(xs, means))
  for b, a in zip(batched, alone):
    np.testing.assert_array_equal(b, a)
  with ThreadPoolExecutor(4) as pool:
    got = list(
      pool.map(lambda i: np.asarray(native.scatter(xs[i], means[i])), range(4))
    )
  for g, a in zip(got, alone):
    np.testing.assert_array_equal(g, a)


def _lax_depthwise(x, w, b, padding):
  (ph, pw) = padding
  return (
    jax.lax.conv_general_dilated(
      x,
      w[:, :, None, :],
      (1, 1),
      ((ph, ph), (pw, pw)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=x.shape[-1],
      precision=jax.lax.Precision.HIGHEST,
    )
    + b
  )


@pytest.mark.parametrize(
  "h,w,c,kernel,padding",
  [
    (9, 23, 35, (7, 7), (3, 3)),  # ConvNeXt's: tiles, a channel tail
    (8, 56, 96, (7, 7), (3, 3)),  # ConvNeXt-T's first stage, narrower
    (7, 7, 16, (7, 7), (3, 3)),  # too narrow for a tile of 8 columns
    (5, 12, 6, (3, 3), (1, 1)),  # channels fewer than a vector
    (6, 30, 32, (3, 5), (1, 2)),  # another width: every tap checked
    (11, 17, 20, (7, 7), (0, 0)),  # unpadded
    (4, 9, 17, (3, 3), (4, 2)),  # padded beyond the kernel
  ],
)
def test_depthwise_equals_xla_convolution(kernel, rng, h, w, c, padding):
  x = rng.normal(size=(2, h, w, c)).astype(np.float32)
  k = rng.normal(size=(*kernel, c)).astype(np.float32)
  b = rng.normal(size=(c,)).astype(np.float32)
  got = jax.jit(lambda *a: native.depthwise_conv2d(*a, padding))(x, k, b)
  want = _lax_depthwise(x, k, b, padding)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_depthwise_puts_every_tap_in_its_place(kernel):
  # A kernel with one tap of 1 shifts the map (exactly: the other taps add
  # zeros); a dropped or misplaced tap leaves zeros or the wrong neighbour.
  x = np.arange(2 * 6 * 23 * 35, dtype=np.float32).reshape(2, 6, 23, 35)
  xp = np.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)))
  conv = jax.jit(lambda x, k, b: native.depthwise_conv2d(x, k, b, (3, 3)))
  for i in range(7):
    for j in range(7):
      k = np.zeros((7, 7, 35), np.float32)
      k[i, j] = 1.0
      got = np.asarray(conv(x, k, np.zeros(35, np.float32)))
      np.testing.assert_array_equal(got, xp[:, i : i + 6, j : j + 23])


def test_depthwise_under_vmap_and_the_encoder_path(kernel, rng):
  from ctjax.models import layers

  x = rng.normal(size=(3, 2, 9, 19, 16)).astype(np.float32)
  k = rng.normal(size=(7, 7, 16)).astype(np.float32)
  b = rng.normal(size=(16,)).astype(np.float32)
  by_vmap = jax.jit(
    jax.vmap(lambda x: layers.conv2d(x, k[:, :, None], b, 1, (3, 3), 16))
  )(x)
  for i in range(3):
    want = layers.depthwise_conv2d(x[i], k, 1, (3, 3), b)  # XLA's loop
    np.testing.assert_allclose(by_vmap[i], want, rtol=1e-5, atol=1e-5)


def _attention_f64(q, k, v, scale):
  """softmax(scale q kᵀ) v of ``[B, T, H, K]`` arrays, in float64 NumPy."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  logits = np.einsum("bqhk,bthk->bhqt", q, k) * scale
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bhqt,bthk->bqhk", p, v)


@pytest.mark.parametrize(
  "b,t,h,k,scale",
  [
    (2, 197, 3, 64, 0.125),  # ViT-B/16's tokens and head width
    (1, 50, 2, 32, 32**-0.5),  # CLIP-like, another vector count
    (2, 33, 2, 16, 0.25),  # one key past a block of 32; a scalar output
    (1, 1, 1, 24, 1.0),  # a single token
    (1, 40, 2, 64, 30.0),  # logits in the hundreds: the row max matters
  ],
)
def test_attention_equals_dot_product_attention(kernel, rng, b, t, h, k, scale):
  q, kk, v = (rng.normal(size=(b, t, h, k)).astype(np.float32) for _ in "qkv")
  got = jax.jit(lambda *a: native.attention(*a, scale))(q, kk, v)
  want = _attention_f64(q, kk, v, scale)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_attention_under_vmap_and_the_encoder_path(kernel, rng):
  from ctjax.models import layers

  q, kk, v = (
    rng.normal(size=(3, 2, 20, 2, 64)).astype(np.float32) for _ in "qkv"
  )
  by_vmap = jax.jit(jax.vmap(lambda *a: layers.attention(*a, 0.125)))(q, kk, v)
  for i in range(3):
    want = _attention_f64(q[i], kk[i], v[i], 0.125)
    np.testing.assert_allclose(by_vmap[i], want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize(
  "shape", [(3, 7, 96), (2, 768), (5, 17), (4, 1), (0, 8)]
)
def test_layer_norm_equals_float64(kernel, rng, shape):
  x = (rng.normal(size=shape) * 3 + 5).astype(np.float32)  # off-centre rows
  d = shape[-1]
  scale = rng.normal(size=d).astype(np.float32)
  bias = rng.normal(size=d).astype(np.float32)
  got = jax.jit(lambda *a: native.layer_norm(*a, 1e-5))(x, scale, bias)
  x64 = x.astype(np.float64)
  centred = x64 - x64.mean(-1, keepdims=True)
  var = (centred**2).mean(-1, keepdims=True)
  want = centred / np.sqrt(var + 1e-5) * scale + bias
  assert got.shape == shape
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_layer_norm_under_vmap(kernel, rng):
  x = rng.normal(size=(3, 4, 40)).astype(np.float32)
  s, b = (rng.normal(size=40).astype(np.float32) for _ in "sb")
  by_vmap = jax.jit(jax.vmap(lambda x: native.layer_norm(x, s, b, 1e-6)))(x)
  for i in range(3):
    want = native.layer_norm(x[i], s, b, 1e-6)
    np.testing.assert_array_equal(by_vmap[i], want)


@pytest.mark.parametrize(
  "rows,c,f,e", [(70, 96, 384, 96), (8, 8, 32, 64), (3, 5, 64, 32)]
)
def test_mlp_gelu_equals_float64(kernel, rng, rows, c, f, e):
  import math

  x = rng.normal(size=(rows, c)).astype(np.float32) * 2
  w1 = (rng.normal(size=(c, f)) / np.sqrt(c)).astype(np.float32)
  b1 = rng.normal(size=f).astype(np.float32)
  w2 = (rng.normal(size=(f, e)) / np.sqrt(f)).astype(np.float32)
  b2 = rng.normal(size=e).astype(np.float32)
  got = jax.jit(native.mlp_gelu)(x[None], w1, b1, w2, b2)[0]
  h = x.astype(np.float64) @ w1 + b1
  erf = np.vectorize(math.erf)
  want = (0.5 * h * (1 + erf(h / np.sqrt(2)))) @ w2 + b2
  assert got.shape == (rows, e)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)


def _dense_f64(x, w, b, act):
  import math

  h = x.astype(np.float64) @ w.astype(np.float64) + b
  if act == "gelu":
    erf = np.vectorize(math.erf)
    return 0.5 * h * (1 + erf(h / np.sqrt(2)))
  if act == "quick_gelu":
    return h / (1 + np.exp(-1.702 * h))
  return h


# Shapes: whole tiles and panels; row and column tails (rows not a multiple
# of the 12- or 6-row tile, columns not of the 32- or 16-column panel); a
# depth above the kernel's 768 in uneven chunks (1537); one row; more
# threads than column blocks (rows split); an empty depth (out = act(b)).
@pytest.mark.parametrize(
  "m,k,n",
  [
    (48, 64, 64),
    (29, 100, 70),
    (25, 1537, 33),
    (1, 64, 32),
    (200, 16, 8),
    (13, 800, 800),
    (3, 0, 5),
  ],
)
@pytest.mark.parametrize("act", [None, "gelu", "quick_gelu"])
def test_dense_equals_float64(kernel, rng, m, k, n, act):
  x = (rng.normal(size=(m, k)) * 2).astype(np.float32)
  w = (rng.normal(size=(k, n)) / np.sqrt(max(k, 1))).astype(np.float32)
  b = rng.normal(size=n).astype(np.float32)
  got = jax.jit(lambda *a: native.dense(*a, act))(x, w, b)
  assert got.shape == (m, n)
  np.testing.assert_allclose(
    got, _dense_f64(x, w, b, act), rtol=1e-5, atol=2e-5
  )


def test_dense_sums_every_product_and_the_bias(kernel, rng):
  # An entry per (row, column) that only one product reaches: a dropped
  # tail row, column or depth chunk, or a missing bias, changes its value.
  m, k, n = 25, 1537, 33
  x = np.zeros((m, k), np.float32)
  w = np.zeros((k, n), np.float32)
  for i in range(m):
    x[i, (i * 61) % k] = i + 1
  for j in range(n):
    w[(j * 47) % k, j] = j + 1
  b = np.arange(n, dtype=np.float32) / 8
  got = np.asarray(native.dense(x, w, b))
  np.testing.assert_array_equal(got, x.astype(np.float64) @ w + b)


def test_dense_leading_axes_and_vmap(kernel, rng):
  x = rng.normal(size=(3, 4, 5, 40)).astype(np.float32)
  w = rng.normal(size=(40, 24)).astype(np.float32)
  b = rng.normal(size=24).astype(np.float32)
  got = native.dense(x, w, b, "gelu")
  assert got.shape == (3, 4, 5, 24)
  by_vmap = jax.jit(jax.vmap(lambda x: native.dense(x, w, b, "gelu")))(x)
  np.testing.assert_array_equal(by_vmap, got)
  np.testing.assert_allclose(
    got, _dense_f64(x, w, b, "gelu"), rtol=1e-5, atol=2e-5
  )


def test_dense_rejects_an_unknown_activation(kernel):
  with pytest.raises(ValueError, match="act must be one of"):
    native.dense(
      np.ones((2, 3), np.float32),
      np.ones((3, 4), np.float32),
      np.ones(4, np.float32),
      "relu",
    )
