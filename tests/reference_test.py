"""CTReference: all layers at once, against the oracle; errors; save/load."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ctjax
from ctjax.stats import pca as pca_lib
from tests.stats import oracle

L, N, n, m, D = 3, 600, 300, 200, 12


def _layers(rng):
  """Three layers of clustered data; gen copies training points with a
  layer-dependent amount of noise."""
  centers = rng.normal(size=(6, D)) * 4

  def sample(k, noise=1.0):
    return centers[rng.integers(0, 6, k)] + rng.normal(size=(k, D)) * noise

  train = np.stack([sample(N) for _ in range(L)]).astype(np.float32)
  test = np.stack([sample(n) for _ in range(L)]).astype(np.float32)
  gen = np.stack(
    [
      train[l, :m] + rng.normal(size=(m, D)) * s
      for l, s in enumerate([0.01, 1.0, 3.0])
    ]
  ).astype(np.float32)
  return train, test, gen


@pytest.fixture(scope="module")
def fitted():
  rng = np.random.default_rng(1)
  train, test, gen = _layers(rng)
  ref = ctjax.CTReference.fit(
    train, test, n_components=8, n_cells=5, metric="cosine", seed=0
  )
  return ref, train, test, gen


@pytest.mark.parametrize("tau", [None, 0.15])
def test_every_layer_matches_oracle_with_same_cells(fitted, tau):
  ref, train, test, gen = fitted
  res = ref.score(gen, tau=tau, return_neighbors=True)
  f = ref.fitted
  for l in range(L):
    pca = pca_lib.PCA(
      f.pca.mean[l], f.pca.components[l], f.pca.variances[l], 0.0
    )
    pt, pp, pg = (
      np.asarray(pca_lib.transform(pca, x[l]), np.float64)
      for x in (train, test, gen)
    )
    c_tr = np.empty(N, int)
    c_tr[np.asarray(f.index.order[l])] = np.asarray(f.index.cells[l])
    c_te = np.asarray(f.test.cells[l])
    c_ge = res.neighbors.gen_cells[l]
    centers = np.asarray(f.centers[l], np.float64)
    for x, c in ((pt, c_tr), (pp, c_te), (pg, c_ge)):  # nearest centres
      np.testing.assert_array_equal(
        ((x[:, None] - centers[None]) ** 2).sum(-1).argmin(1), c
      )
    want = oracle.c_t(
      pp, c_te, pg, c_ge, pt, c_tr, 20 / m if tau is None else tau, "cosine"
    )
    np.testing.assert_allclose(res.ct[l], want[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(res.included[l], want[2])
    d, i = oracle.nearest_in_cell(pg, c_ge, pt, c_tr, "cosine")
    np.testing.assert_allclose(res.neighbors.gen_dist[l], d, atol=1e-5)
    assert np.mean(res.neighbors.gen_index[l] == i) > 0.99
  assert res.ct[0] < -5 < res.ct[1] < res.ct[2]


def test_matches_sklearn_pipeline(fitted):
  """End to end against sklearn PCA + KMeans + scipy: cells may differ only
  by k-means' local optimum, so C_T agrees to a loose tolerance."""
  ref, train, test, gen = fitted
  res = ref.score(gen)
  for l in range(L):
    want = oracle.pipeline(
      train[l], test[l], gen[l], n_components=8, n_cells=5, metric="cosine"
    )
    assert abs(res.ct[l] - want) < 0.1 * max(1.0, abs(want))


def test_single_layer_and_ct_score(fitted):
  ref, train, test, gen = fitted
  one = ctjax.ct_score(
    train[1], test[1], gen[1], n_components=8, n_cells=5, seed=0
  )
  assert isinstance(one.ct, float) and one.z.shape == (5,)
  ref1 = ctjax.CTReference.fit(train[1], test[1], n_components=8, n_cells=5)
  np.testing.assert_allclose(ref1.score(gen[1]).ct[0], one.ct)
  curve = ctjax.ct_curve(train, test, gen, n_components=8, n_cells=5)
  np.testing.assert_allclose(curve.ct, ref.score(gen).ct, rtol=1e-6)


def test_padded_batches_equal_unpadded(fitted):
  ref, _, _, gen = fitted
  full = ref.score(gen[:, :150], tau=0.05)  # padded to 256 internally
  np.testing.assert_array_equal(full.n_gen.sum(1), [150] * L)


@pytest.mark.parametrize("where", ["host", "device"])
def test_batch_padded_on_host_or_device_scores_the_same(
  fitted, where, monkeypatch
):
  """`score` pads a NumPy batch on the host on a CPU and on the device on an
  accelerator (`reference.PAD_BATCH`): both pad with zeros, so the same
  neighbours and 2U, and a NaN is still named by layer."""
  from ctjax import reference  # pylint: disable=g-import-not-at-top

  ref, _, _, gen = fitted
  want = ref.score(gen[:, :150], tau=0.05, return_neighbors=True)
  monkeypatch.setattr(reference, "PAD_BATCH", where)
  got = ref.score(gen[:, :150], tau=0.05, return_neighbors=True)
  np.testing.assert_array_equal(got.u, want.u)
  np.testing.assert_array_equal(got.n_gen, want.n_gen)
  np.testing.assert_array_equal(
    got.neighbors.gen_index, want.neighbors.gen_index
  )
  bad = gen[:, :150].copy()
  bad[1, 3, 0] = np.inf
  with pytest.raises(ValueError, match=r"gen has NaN or Inf.*layer\(s\) 1"):
    ref.score(bad)
  # the device path's padded shape: [L, m_pad, D] zeros past the batch
  padded = reference._batch_to_device(gen[:, :150], 256)  # pylint: disable=protected-access
  assert padded.shape == (L, 256, gen.shape[-1])
  np.testing.assert_array_equal(np.asarray(padded)[:, :150], gen[:, :150])
  assert not np.asarray(padded)[:, 150:].any()


def test_score_programs_compile_with_their_cpu_options_to_the_same_result(
  fitted,
):
  """`score` runs a program compiled with `reference.SCORE_CPU_OPTIONS` on
  a CPU (faster to compile); the same program under XLA's defaults gives
  the same neighbours and 2U, and `score_many` the same 2U."""
  from ctjax import reference  # pylint: disable=g-import-not-at-top

  ref, _, _, gen = fitted
  progs = (reference._score_finite,)  # pylint: disable=protected-access
  got = ref.score(gen[:, :150], tau=0.05, return_neighbors=True)
  many = ref.score_many(np.stack([gen[:, :150]] * 2), tau=0.05)
  if jax.default_backend() == "cpu":
    for p in progs:
      assert p._use_tuned is True  # pylint: disable=protected-access
      assert p._tuned._cache_size() >= 1  # pylint: disable=protected-access
  plain = jax.jit(
    reference._score_finite_impl,  # pylint: disable=protected-access
    static_argnames=reference._STATIC,  # pylint: disable=protected-access
  )
  padded = np.zeros((L, 256, gen.shape[-1]), np.float32)
  padded[:, :150] = gen[:, :150]
  valid = np.arange(256) < 150
  _, (want, _, dist, _) = plain(ref.fitted, padded, valid, 0.05)
  np.testing.assert_array_equal(got.u * 2, np.asarray(want.u2))
  np.testing.assert_array_equal(many.u[0], got.u)
  np.testing.assert_array_equal(
    got.neighbors.gen_dist, np.asarray(dist)[:, :150]
  )


@pytest.mark.parametrize("n_threads", [2, 3])
def test_layer_groups_in_threads_score_the_same(fitted, n_threads, monkeypatch):
  """`score` on one CPU device runs layer groups as concurrent programs
  (`reference.LAYER_THREADS`): the same result as one program, neighbours
  and bootstrap included, and a NaN is named by its layer."""
  from ctjax import reference  # pylint: disable=g-import-not-at-top
  from ctjax import threads  # pylint: disable=g-import-not-at-top

  from ctjax.stats import neighbors as nb  # pylint: disable=g-import-not-at-top

  ref, _, _, gen = fitted
  # XLA's tiled search: the native kernel runs one program (it spreads over
  # the CPUs itself).
  kw = dict(
    tau=0.05, return_neighbors=True, n_bootstrap=20, seed=1, search="tiled"
  )
  tiles = ref._tiles("tiled")  # pylint: disable=protected-access
  monkeypatch.setattr(reference, "LAYER_THREADS", 1)
  assert ref._score_groups(tiles, 128) is None  # pylint: disable=protected-access
  want = ref.score(gen, **kw)
  monkeypatch.setattr(reference, "LAYER_THREADS", n_threads)
  groups = ref._score_groups(tiles, 128)  # pylint: disable=protected-access
  assert groups == threads.layer_groups(L, n_threads) and len(groups) > 1
  if "native" in nb.usable_searches():
    assert ref._score_groups(ref._tiles("native"), 128) is None  # pylint: disable=protected-access
  for _ in range(2):  # the first call compiles, the second runs threaded
    got = ref.score(gen, **kw)
    for name in ("u", "n_gen", "ct", "ct_boot"):
      np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    for name in ("gen_index", "gen_dist", "gen_cells"):
      np.testing.assert_array_equal(
        getattr(got.neighbors, name), getattr(want.neighbors, name)
      )
  bad = gen.copy()
  bad[L - 1, 4, 0] = np.nan
  with pytest.raises(ValueError, match=rf"layer\(s\) {L - 1}$"):
    ref.score(bad, search="tiled")


@pytest.mark.parametrize("n_threads", [2, 3])
def test_fit_in_threads_equals_one_program_at_a_time(n_threads, monkeypatch):
  """On one CPU device, `fit` runs layers in host threads
  (`reference.LAYER_THREADS`); each layer is the same program with the same
  key, so the fit is bitwise the same, and a NaN is still named."""
  from ctjax import reference  # pylint: disable=g-import-not-at-top

  train, test, _ = _layers(np.random.default_rng(5))
  kw = dict(n_components=8, n_cells=5, seed=2)
  monkeypatch.setattr(reference, "LAYER_THREADS", 1)
  want = ctjax.CTReference.fit(train, test, **kw)
  monkeypatch.setattr(reference, "LAYER_THREADS", n_threads)
  assert reference._layer_threads(L) == n_threads  # pylint: disable=protected-access
  got = ctjax.CTReference.fit(train, test, **kw)
  assert got.hash == want.hash
  for a, b in zip(
    jax.tree_util.tree_leaves(got.fitted),
    jax.tree_util.tree_leaves(want.fitted),
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  bad = train.copy()
  bad[L - 1, 3, 0] = np.nan
  with pytest.raises(
    ValueError, match=rf"train has NaN or Inf .*layer\(s\) {L - 1}"
  ):
    ctjax.CTReference.fit(bad, test, **kw)


def test_save_load_round_trip(fitted, tmp_path):
  ref, _, _, gen = fitted
  path = tmp_path / "ref.npz"
  ref.save(path)
  back = ctjax.CTReference.load(path)
  assert back.identity() == ref.identity()
  np.testing.assert_array_equal(back.score(gen).ct, ref.score(gen).ct)
  assert not list(tmp_path.glob(".tmp-*"))


def test_load_rejects_other_files(tmp_path):
  bad = tmp_path / "x.npz"
  np.savez(bad, a=np.zeros(3))
  with pytest.raises(ValueError, match="not a ctjax reference"):
    ctjax.CTReference.load(bad)


def test_degenerate_layer_is_nan_others_computed(rng):
  train, test, gen = _layers(rng)
  for x in (train, test, gen):
    x[0] = 3.25  # layer 0: constant (CLS)
  with pytest.warns(RuntimeWarning, match="layer 0: every embedding"):
    ref = ctjax.CTReference.fit(train, test, n_components=8, n_cells=5)
  res = ref.score(gen)
  assert np.isnan(res.ct[0]) and np.isfinite(res.ct[1:]).all()


class TestErrors:
  def test_nan_names_layer(self, rng):
    train, test, _ = _layers(rng)
    train[2, 5, 1] = np.inf
    with pytest.raises(
      ValueError, match=r"train has NaN or Inf .*layer\(s\) 2"
    ):
      ctjax.CTReference.fit(train, test, n_cells=5)

  def test_nan_in_test_names_layer(self, rng):
    train, test, _ = _layers(rng)
    test[1, 7, 3] = np.nan
    train[0, 2, 2] = -np.inf
    with pytest.raises(
      ValueError, match=r"train has NaN or Inf .*layer\(s\) 0$"
    ):
      ctjax.CTReference.fit(train, test, n_cells=5)
    train[0, 2, 2] = 0.0
    with pytest.raises(
      ValueError, match=r"test has NaN or Inf .*layer\(s\) 1$"
    ):
      ctjax.CTReference.fit(train, test, n_cells=5)

  def test_overflowing_sums_named(self, rng):
    # Finite values whose float32 sums overflow: not reported as NaN/Inf.
    train, test, _ = _layers(rng)
    train[1] *= 1e37
    with pytest.raises(ValueError, match=r"overflow\) in layer\(s\) 1;"):
      ctjax.CTReference.fit(train, test, n_cells=5)

  def test_nan_in_gen(self, fitted):
    ref, _, _, gen = fitted
    gen = gen.copy()
    gen[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"gen has NaN.*layer\(s\) 1"):
      ref.score(gen)

  def test_nan_in_device_gen(self, fitted):
    ref, _, _, gen = fitted
    gen = gen.copy()
    gen[2, 3, 1] = np.inf
    with pytest.raises(ValueError, match=r"gen has NaN.*layer\(s\) 2"):
      ref.score(jax.device_put(gen))

  def test_layers_and_dims_mismatch(self, fitted):
    ref, train, test, gen = fitted
    with pytest.raises(ValueError, match="same number of layers"):
      ctjax.CTReference.fit(train, test[:2])
    with pytest.raises(ValueError, match="same number of layers and dimension"):
      ctjax.CTReference.fit(train, test[..., :5])
    with pytest.raises(
      ValueError, match="gen has 2 layers but the reference has 3"
    ):
      ref.score(gen[:2])
    with pytest.raises(ValueError, match="dimension 5 but the reference"):
      ref.score(gen[..., :5])

  def test_fewer_points_than_cells_or_components(self, rng):
    x = rng.normal(size=(2, 8, 4)).astype(np.float32)
    with pytest.raises(
      ValueError, match="fewer training points \\(8\\) than cells"
    ):
      ctjax.CTReference.fit(x, x, n_cells=10)
    with pytest.raises(ValueError, match="n_components=6 must be in"):
      ctjax.CTReference.fit(x, x, n_cells=2, n_components=6)
    with pytest.raises(ValueError, match="fewer test points"):
      ctjax.CTReference.fit(x, x[:, :1], n_cells=2)

  def test_cell_without_test_point_names_layer_and_cell(self, rng):
    # Two far-apart training clusters on both layers; on layer 1 every test
    # point sits in the first cluster, so the second cell has none.
    a = rng.normal(size=(2, 50, 3))
    train = np.concatenate([a, a + 100], axis=1).astype(np.float32)
    b = rng.normal(size=(2, 30, 3))
    test = np.concatenate([b[:, :15], b[:, 15:] + 100], axis=1)
    test[1, 15:] -= 100
    with pytest.raises(
      ValueError, match=r"layer 1, cell \d: no test point.*n_cells < 2"
    ):
      ctjax.CTReference.fit(
        train, test.astype(np.float32), n_cells=2, n_components=3
      )

  def test_tau(self, fitted):
    ref, _, _, gen = fitted
    with pytest.raises(ValueError, match="tau must be in"):
      ref.score(gen, tau=1.0)
    with pytest.raises(ValueError, match="needs more than 20 generated points"):
      ref.score(gen[:, :10])

  def test_no_cell_above_tau_warns(self, fitted):
    ref, _, _, gen = fitted
    with pytest.warns(RuntimeWarning, match="no cell holds more than"):
      res = ref.score(gen, tau=0.99)
    assert np.isnan(res.ct).all()

  def test_bad_metric(self, fitted):
    _, train, test, _ = fitted
    with pytest.raises(ValueError, match="metric must be one of"):
      ctjax.CTReference.fit(train, test, metric="manhattan")


def test_loads_file_in_the_original_layout(fitted, tmp_path):
  """A file as the first format wrote it: header config with tile sizes and
  no search, and exactly these string keys (no PCA total variance)."""
  ref, _, _, gen = fitted
  f = ref.fitted
  config = dict(
    n_components=8,
    n_cells=5,
    n_init=10,
    metric="cosine",
    seed=0,
    n_layers=L,
    dim=D,
    n_train=N,
    n_test=n,
    layer_names=["0", "1", "2"],
    meta={},
    tile_queries=64,
    tile_train=4096,
  )
  old = dict(
    pca_mean=f.pca.mean,
    pca_components=f.pca.components,
    pca_variances=f.pca.variances,
    centers=f.centers,
    inertia=f.inertia,
    points=f.index.points,
    aux=f.index.aux,
    cells=f.index.cells,
    starts=f.index.starts,
    order=f.index.order,
    test_sorted=f.test.sorted_dist,
    test_starts=f.test.starts,
    test_cells=f.test.cells,
    test_dist=f.test.dist,
    test_index=f.test.index,
    degenerate=f.degenerate,
    n_train_cells=f.n_train_cells,
    n_test_cells=f.test.counts,
  )
  header = dict(format="ctjax.CTReference", version=1, config=config)
  path = tmp_path / "old.npz"
  np.savez(
    path,
    __header__=np.frombuffer(json.dumps(header).encode(), np.uint8),
    **{k: np.asarray(v) for k, v in old.items()},
  )
  back = ctjax.CTReference.load(path)
  assert back.identity() == ref.identity()
  assert back.config == ref.config
  assert np.isnan(np.asarray(back.fitted.pca.total_variance)).all()
  want = ref.score(gen, return_neighbors=True)
  got = back.score(gen, return_neighbors=True)
  np.testing.assert_array_equal(got.ct, want.ct)
  np.testing.assert_array_equal(got.u, want.u)
  np.testing.assert_array_equal(
    got.neighbors.gen_index, want.neighbors.gen_index
  )


def test_n_components_default_and_explicit(rng):
  x = rng.normal(size=(1, 40, 6)).astype(np.float32)
  fit = lambda **kw: ctjax.CTReference.fit(x, x, n_cells=2, n_init=1, **kw)
  assert fit().n_components == 6  # min(64, N, D)
  ref = fit(n_components=3)
  assert ref.n_components == 3 and ref.config.n_components == 3
  assert ref.fitted.pca.components.shape == (1, 6, 3)
  with pytest.raises(ValueError, match="n_components=64 must be in"):
    fit(n_components=64)


def test_fit_config_and_typed_fields(fitted):
  ref, *_ = fitted
  assert ref.config == ctjax.stats.FitConfig(n_components=8, n_cells=5)
  f = ref.fitted
  assert isinstance(f, ctjax.stats.Fitted)
  assert (f.n_layers, f.n_train, f.n_test, f.dim, f.n_cells) == (L, N, n, D, 5)
  assert f.metric == "cosine" and f.test.counts.shape == (L, 5)
  assert all(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(f))


@pytest.mark.parametrize("rows", [m, 128])  # padded on the host / not padded
def test_host_and_device_gen_give_the_same_result(fitted, rows):
  """A NumPy batch (padded on the host, the finite check fused into the
  score) and a device batch (padded on the device) score alike."""
  ref, _, _, gen = fitted
  host = ref.score(gen[:, :rows], return_neighbors=True)
  dev = ref.score(jax.device_put(gen[:, :rows]), return_neighbors=True)
  for name in ("ct", "z", "u", "n_gen", "included"):
    np.testing.assert_array_equal(getattr(host, name), getattr(dev, name))
  np.testing.assert_array_equal(
    host.neighbors.gen_index, dev.neighbors.gen_index
  )


def test_numpy_fit_by_layer_equals_device_fit(rng):
  # NumPy input is fitted layer by layer through one reused host buffer;
  # device arrays in one call over all layers: the same reference.
  train, test, _ = _layers(rng)
  before = train.copy()
  by_layer = ctjax.CTReference.fit(train, test, n_cells=5, n_components=8)
  np.testing.assert_array_equal(train, before)  # the buffer is a copy
  whole = ctjax.CTReference.fit(
    jax.device_put(train), jax.device_put(test), n_cells=5, n_components=8
  )
  a, b = by_layer.fitted, whole.fitted
  np.testing.assert_array_equal(a.test.cells, b.test.cells)
  np.testing.assert_array_equal(a.index.order, b.index.order)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
  assert by_layer.n_layers == len(train)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_aligned_buffer_is_used_in_place(dtype):
  # The fit's per-layer buffer: 64-byte aligned, float32, and taken by the
  # CPU device without a second copy.
  from ctjax import reference

  x = np.arange(2 * 7 * 5, dtype=dtype).reshape(2, 7, 5)[:, 1:]
  buf = reference._aligned_copy(x, np.float32)
  assert buf.ctypes.data % 64 == 0 and buf.dtype == np.float32
  np.testing.assert_array_equal(buf, x.astype(np.float32))
  on_device = jax.device_put(buf)
  if jax.default_backend() == "cpu":
    assert on_device.unsafe_buffer_pointer() == buf.ctypes.data


@pytest.mark.parametrize(
  "src_shape, shape",
  [
    ((3, 5, 4), (3, 8, 4)),
    ((3, 5, 4), (4, 8, 4)),
    ((2, 3, 5, 4), (2, 4, 8, 4)),
  ],
)
def test_aligned_padded_equals_zero_padding_and_is_taken_in_place(
  src_shape, shape, monkeypatch
):
  # score's and score_many's padded batches: the values of np.pad with
  # zeros, whatever the fresh buffer held (here NaN), 64-byte aligned
  # (np.zeros' large buffers are not), used by the CPU device as is.
  from ctjax import reference

  empty = reference._aligned_empty

  def dirty(shape, dtype):
    out = empty(shape, dtype)
    out[...] = np.nan
    return out

  monkeypatch.setattr(reference, "_aligned_empty", dirty)
  x = np.random.default_rng(0).normal(size=src_shape).astype(np.float32)
  buf = reference._aligned_padded(x, shape)
  want = np.pad(x, [(0, s - n) for n, s in zip(src_shape, shape)])
  np.testing.assert_array_equal(buf, want)
  assert buf.ctypes.data % 64 == 0
  if jax.default_backend() == "cpu":
    assert jax.device_put(buf).unsafe_buffer_pointer() == buf.ctypes.data


def test_concat_on_host_equals_concatenate():
  # The per-layer fits are stacked on the host (no compiled concatenate):
  # the same values and dtypes as jnp.concatenate, taken in place.
  from ctjax import reference

  parts = [
    {"a": jnp.arange(6.0).reshape(1, 2, 3) + l, "b": jnp.array([l > 0])}
    for l in range(3)
  ]
  got = reference._concat_on_host(parts)
  for k in ("a", "b"):
    want = jnp.concatenate([p[k] for p in parts])
    assert got[k].dtype == want.dtype and isinstance(got[k], jax.Array)
    np.testing.assert_array_equal(got[k], want)
    if jax.default_backend() == "cpu":
      assert got[k].unsafe_buffer_pointer() % 64 == 0
