"""The pure on-device score: jit, vmap, scan, score_many and exact 2·U."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import mannwhitneyu

import ctjax
from ctjax import stats
from ctjax.stats import scoring

L, N, n, m, D = 3, 400, 200, 150, 10


@pytest.fixture(scope="module")
def case():
  rng = np.random.default_rng(3)
  centers = rng.normal(size=(5, D)) * 4

  def sample(k):
    return centers[rng.integers(0, 5, k)] + rng.normal(size=(k, D))

  train = np.stack([sample(N) for _ in range(L)]).astype(np.float32)
  test = np.stack([sample(n) for _ in range(L)]).astype(np.float32)
  ref = ctjax.CTReference.fit(train, test, n_components=6, n_cells=4)

  def gen(noise):
    return np.stack(
      [
        train[l, :m] + rng.normal(size=(m, D)) * s * noise
        for l, s in enumerate([0.01, 1.0, 3.0])
      ]
    ).astype(np.float32)

  gens = np.stack([gen(x) for x in (1.0, 0.5, 2.0, 1.5, 0.2)])
  return ref, gens


def _assert_scores_equal(got, want):
  """Device `Scores` against a host `CTResult` (same batch)."""
  np.testing.assert_array_equal(np.asarray(got.u2), 2 * want.u)
  np.testing.assert_array_equal(np.asarray(got.n_gen), want.n_gen)
  np.testing.assert_array_equal(np.asarray(got.included), want.included)
  np.testing.assert_allclose(got.z, want.z, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got.ct, want.ct, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tau", [None, 0.15])
def test_jit_equals_reference_score(case, tau):
  ref, gens = case
  got = jax.jit(stats.score)(ref.fitted, gens[0], tau=tau)
  assert got.ct.shape == (L,) and got.z.shape == (L, 4)
  assert jnp.issubdtype(got.u2.dtype, jnp.integer)
  _assert_scores_equal(got, ref.score(gens[0], tau=tau))


def test_vmap_over_batches(case):
  ref, gens = case
  got = jax.vmap(stats.score, in_axes=(None, 0))(ref.fitted, gens[:3])
  assert got.ct.shape == (3, L) and got.u2.shape == (3, L, 4)
  for b in range(3):
    one = jax.tree_util.tree_map(lambda x: x[b], got)
    _assert_scores_equal(one, ref.score(gens[b]))


def test_scan_and_user_jitted_step(case):
  """Inside `lax.scan` within the user's own jit; traced once."""
  ref, gens = case
  traces = []

  @jax.jit
  def run(fitted, gens):
    traces.append(1)

    def step(total, g):
      s = stats.score(fitted, g)
      return total + jnp.nansum(s.ct), s

    return jax.lax.scan(step, 0.0, gens)

  total, got = run(ref.fitted, gens[:3])
  run(ref.fitted, gens[2:5])
  assert len(traces) == 1
  for b in range(3):
    _assert_scores_equal(
      jax.tree_util.tree_map(lambda x: x[b], got), ref.score(gens[b])
    )
  np.testing.assert_allclose(total, np.nansum(got.ct), rtol=1e-6)


def test_valid_mask_drops_padding_rows(case):
  ref, gens = case
  junk = np.full((L, 40, D), 7.0, np.float32)
  padded = np.concatenate([gens[1], junk], axis=1)
  valid = np.arange(m + 40) < m
  got = stats.score(ref.fitted, padded, valid=valid)
  _assert_scores_equal(got, ref.score(gens[1]))
  got = stats.score(ref.fitted, padded, valid=valid, tau=0.1)
  _assert_scores_equal(got, ref.score(gens[1], tau=0.1))


@pytest.mark.parametrize(
  "batch_size, vectorize", [(None, None), (2, True), (2, None), (4, False)]
)
def test_score_many_equals_score(case, batch_size, vectorize):
  ref, gens = case
  got = ref.score_many(gens, batch_size=batch_size, vectorize=vectorize)
  assert got.ct.shape == (5, L) and got.z.shape == (5, L, 4)
  for b in range(5):
    want = ref.score(gens[b])
    for name in ("ct", "z", "u", "n_gen", "n_test", "included", "gen_frac"):
      np.testing.assert_array_equal(
        getattr(got, name)[b], getattr(want, name), err_msg=name
      )


def _count_merged_traces(monkeypatch, name="merged_batch_parts") -> list:
  """A list that grows by one each time `score_many`'s default program is
  traced: a chunk's batches searched together, gathered layer by layer
  from NumPy batches as they are (`merged_batch_parts`), or from a device
  array padded and made layer-major on its device (`score_merged`)."""
  traces = []
  inner = getattr(scoring, name)

  def counting(*a, **k):
    traces.append(1)
    return inner(*a, **k)

  monkeypatch.setattr(scoring, name, counting)
  return traces


def test_score_many_compiles_once_per_chunk_shape(case, monkeypatch):
  ref, gens = case
  traces = _count_merged_traces(monkeypatch)
  ref.score_many(gens[:, :, :130], batch_size=4)  # 2 chunks of 4
  assert len(traces) == 1
  ref.score_many(gens[:4, :, :130], batch_size=4)  # 1 chunk
  ref.score_many(np.concatenate([gens, gens])[:, :, :130], batch_size=4)
  assert len(traces) == 1


@pytest.mark.parametrize("vectorize", [None, True])
def test_score_many_of_device_batches_stays_on_device(
  case, vectorize, monkeypatch
):
  """A device array is chunked and padded where it lies: the same result as
  the NumPy batches, and ctjax.reference hands no device array of the
  batches' shape to NumPy (only the small per-cell sums come back)."""
  from ctjax import reference  # pylint: disable=g-import-not-at-top

  ref, gens = case
  want = ref.score_many(gens, batch_size=2, vectorize=vectorize)
  on_device = jax.device_put(gens)
  copied = []

  class WatchedNumPy:
    def __getattr__(self, name):
      fn = getattr(np, name)
      if name not in ("asarray", "array", "stack", "ascontiguousarray"):
        return fn

      def watched(x, *a, **k):
        for y in x if isinstance(x, (list, tuple)) else [x]:
          if isinstance(y, jax.Array):
            copied.append(y.shape)
        return fn(x, *a, **k)

      return watched

  monkeypatch.setattr(reference, "np", WatchedNumPy())
  got = ref.score_many(on_device, batch_size=2, vectorize=vectorize)
  as_list = ref.score_many(list(on_device), batch_size=4, vectorize=vectorize)
  assert not [s for s in copied if s[-2:] in ((m, D), (256, D))], copied
  for res in (got, as_list):
    for name in ("ct", "z", "u", "n_gen", "included"):
      np.testing.assert_array_equal(
        getattr(res, name), getattr(want, name), err_msg=name
      )


def test_score_many_device_batches_compile_the_score_once(case, monkeypatch):
  ref, gens = case
  traces = _count_merged_traces(monkeypatch, "score_merged")
  on_device = jax.device_put(np.concatenate([gens, gens])[:, :, :120])
  for b in (5, 3, 4, 10):  # chunks of 4, the last one 1 to 4 batches
    ref.score_many(on_device[:b], batch_size=4)
  assert len(traces) == 1


def test_score_many_progress_bar(case, capsys):
  ref, gens = case
  ref.score_many(gens, batch_size=1, progress=True)  # 5 chunks
  err = capsys.readouterr().err
  assert "score_many" in err and "/5 [" in err, err
  ref.score_many(gens, batch_size=2)  # 3 chunks: none by default
  ref.score_many(gens, batch_size=1, progress=False)
  assert "score_many" not in capsys.readouterr().err


@pytest.mark.parametrize("n_threads", [2, 3])
def test_score_many_layer_groups_in_threads(case, n_threads, monkeypatch):
  """On one CPU device the layer groups of a chunk run as concurrent
  programs (`reference.LAYER_THREADS`): the same result as one program,
  for NumPy and device batches, and a NaN is named by batch and layer."""
  from ctjax import reference  # pylint: disable=g-import-not-at-top

  ref, gens = case
  # XLA's tiled search (the native kernel runs one program).
  kw = dict(batch_size=2, search="tiled")
  monkeypatch.setattr(reference, "LAYER_THREADS", 1)
  want = ref.score_many(gens, **kw)
  monkeypatch.setattr(reference, "LAYER_THREADS", n_threads)
  groups = ref._score_groups(ref._tiles("tiled"), 256)  # pylint: disable=protected-access
  assert len(groups) > 1
  # The first call compiles; float64 NumPy batches are cast as JAX casts them.
  for g in (gens, gens, jax.device_put(gens), gens.astype(np.float64)):
    got = ref.score_many(g, **kw)
    for name in ("ct", "z", "u", "n_gen", "included"):
      np.testing.assert_array_equal(
        getattr(got, name), getattr(want, name), err_msg=name
      )
  bad = gens.copy()
  bad[3, L - 1, 0, 0] = np.inf
  with pytest.raises(
    ValueError, match=rf"gens\[3\] has NaN.*layer\(s\) {L - 1}$"
  ):
    ref.score_many(bad, **kw)


def test_score_many_names_bad_batch(case):
  ref, gens = case
  bad = gens.copy()
  bad[3, 2, 0, 0] = np.nan
  with pytest.raises(ValueError, match=r"gens\[3\] has NaN.*layer\(s\) 2"):
    ref.score_many(bad, batch_size=2)


def test_u2_dtype_edge():
  # 2·n·m just below and at 2^31.
  assert scoring.u2_dtype(1000, 1_073_741) == jnp.int32
  assert scoring.u2_dtype(1, 2**30 - 1) == jnp.int32
  with pytest.raises(ValueError, match="2·n·m = 2·1·1073741824"):
    scoring.u2_dtype(1, 2**30)


def test_u2_dtype_edge_with_x64(enable_x64):
  assert scoring.u2_dtype(1, 2**30 - 1) == jnp.int32
  assert scoring.u2_dtype(1, 2**30) == jnp.int64


def test_int32_bound_from_static_shapes(case):
  """Abstract evaluation only: no array of these sizes is built."""
  ref, _ = case
  under = (2**31 - 1) // (2 * n)  # 2·n·m < 2^31
  assert 2 * n * under < 2**31 <= 2 * n * (under + 1)
  spec = lambda rows: jax.ShapeDtypeStruct((L, rows, D), jnp.float32)
  out = jax.eval_shape(stats.score, ref.fitted, spec(under))
  assert out.u2.dtype == jnp.int32 and out.u2.shape == (L, 4)
  with pytest.raises(ValueError, match="beyond int32"):
    jax.eval_shape(stats.score, ref.fitted, spec(under + 1))


def test_degenerate_layer_and_no_cell_above_tau_are_nan(case):
  ref, gens = case
  fitted = dataclasses.replace(
    ref.fitted, degenerate=jnp.array([False, True, False])
  )
  got = stats.score(fitted, gens[0])
  assert np.isnan(got.ct[1]) and np.isnan(got.z[1]).all()
  assert np.isfinite(np.asarray(got.ct)[[0, 2]]).all()
  assert np.isnan(stats.score(ref.fitted, gens[0], tau=0.99).ct).all()


def test_u2_is_exact_beyond_float32_integers():
  """One cell with n = m = 6500: 2U ≈ n·m > 2^25, where float32 holds only
  multiples of 4; a float32 accumulation of the per-query parts would miss
  the exact value, scipy's U (float64, exact here) does not."""
  rng = np.random.default_rng(0)
  big = 6500
  train = rng.normal(size=(1, 50, 3)).astype(np.float32)
  test = rng.normal(size=(1, big, 3)).astype(np.float32)
  gen = rng.normal(size=(1, big, 3)).astype(np.float32) * 1.05
  ref = ctjax.CTReference.fit(train, test, n_components=2, n_cells=1, n_init=1)
  got = stats.score(ref.fitted, gen)
  res = ref.score(gen, return_neighbors=True)
  nbrs = res.neighbors
  want = mannwhitneyu(
    nbrs.gen_dist[0].astype(np.float64), nbrs.test_dist[0].astype(np.float64)
  )
  u2 = int(np.asarray(got.u2)[0, 0])
  assert u2 > 2**25 and u2 == 2 * want.statistic
  assert 2 * res.u[0, 0] == u2
  np.testing.assert_allclose(got.z, res.z, rtol=1e-5)


def test_every_search_gives_the_same_scores(case):
  ref, gens = case
  want = stats.score(ref.fitted, gens[0], tile_queries=None)  # materialised
  for search in ("tiled", "dense", "auto"):
    got = stats.score(ref.fitted, gens[0], search=search, tile_train=128)
    for name in ("u2", "n_gen", "included"):
      np.testing.assert_array_equal(
        getattr(got, name), getattr(want, name), err_msg=search
      )
    np.testing.assert_array_equal(got.ct, want.ct)
  host = ref.score(gens[0], search="dense")
  np.testing.assert_array_equal(host.ct, ref.score(gens[0], search="tiled").ct)


@pytest.mark.parametrize("search", ["tiled", "dense"])
def test_accelerator_layout_equals_cpu_layout(case, search):
  """Layers at once (vmap) with the sort-merge rank equal layers one after
  another (lax.map) with the binary search, and the materialised search."""
  ref, gens = case
  want = stats.score(ref.fitted, gens[2], tile_queries=None)
  for layers, rank in (("map", "search"), ("vmap", "merge"), ("map", "merge")):
    got = stats.score(
      ref.fitted,
      gens[2],
      search=search,
      tile_train=96,
      layers=layers,
      rank=rank,
    )
    for name in ("u2", "n_gen", "included", "ct"):
      np.testing.assert_array_equal(
        getattr(got, name), getattr(want, name), err_msg=(layers, rank)
      )
  with pytest.raises(ValueError, match="rank must be"):
    stats.score(ref.fitted, gens[0], rank="bisect")


def test_reference_sums_on_host_beyond_int32():
  """2U itself ≥ 2^31 (int32 would wrap) without x64: the pure score
  refuses, `CTReference.score` sums in int64 on the host, as scipy."""
  rng = np.random.default_rng(1)
  n_big, m_big = 40_000, 30_000
  assert 2 * n_big * m_big >= 2**31
  train = rng.normal(size=(1, 30, 2)).astype(np.float32)
  test = rng.normal(size=(1, n_big, 2)).astype(np.float32)
  gen = 10 * rng.normal(size=(1, m_big, 2)).astype(np.float32)
  ref = ctjax.CTReference.fit(
    train, test, n_components=2, n_cells=1, n_init=1, metric="l2"
  )
  with pytest.raises(ValueError, match="beyond int32"):
    stats.score(ref.fitted, gen)
  res = ref.score(gen, return_neighbors=True)
  nbrs = res.neighbors
  want = mannwhitneyu(
    nbrs.gen_dist[0].astype(np.float64), nbrs.test_dist[0].astype(np.float64)
  )
  assert res.u[0, 0] == want.statistic and 2 * res.u[0, 0] >= 2**31
  assert ref.score_many(gen[None]).u[0, 0, 0] == want.statistic
