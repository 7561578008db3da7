"""Streaming fit: chunked exact PCA, k-means on a sample, budgeted tiles."""

import numpy as np
import pytest
from sklearn import decomposition

import ctjax
from ctjax.stats import neighbors as nb
from ctjax.stats import pca as pca_lib
from ctjax.stats import streaming

L, N, n, m, D = 2, 1300, 400, 300, 12
FIT = dict(n_components=6, n_cells=4, seed=2, n_init=3)
CHUNK = 256  # N = 5 chunks + a padded partial one


def _data(seed=7):
  """Well separated clusters with a decreasing spectrum (distinct PCA axes);
  gen holds noisy copies of training points."""
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(5, D)) * 5
  scale = np.linspace(2.0, 0.3, D)

  def sample(k):
    return centers[rng.integers(0, 5, k)] + rng.normal(size=(k, D)) * scale

  train = np.stack([sample(N) for _ in range(L)]).astype(np.float32)
  test = np.stack([sample(n) for _ in range(L)]).astype(np.float32)
  gen = np.stack(
    [
      train[l, :m] + rng.normal(size=(m, D)) * s
      for l, s in enumerate([0.02, 1.5])
    ]
  ).astype(np.float32)
  return train, test, gen


@pytest.fixture(scope="module")
def data():
  return _data()


@pytest.fixture(scope="module")
def in_memory(data):
  train, test, gen = data
  ref = ctjax.CTReference.fit(train, test, **FIT)
  return ref, ref.score(gen, return_neighbors=True)


def _uneven_chunks(train):
  """A callable source: chunks of 100, 300, 7, ... rows."""
  edges = [0, 100, 400, 407, 700, 1000, N]
  return lambda: (train[:, a:b] for a, b in zip(edges[:-1], edges[1:]))


def test_pca_pass_equals_fit_pca_and_sklearn(data):
  train = data[0]
  source = streaming.ChunkSource(_uneven_chunks(train), CHUNK)
  names = ["a", "b"]
  count, mean = streaming.mean_pass(source, names)
  assert count == N
  np.testing.assert_allclose(mean, train.astype(np.float64).mean(1), atol=1e-5)
  pca = streaming.pca_pass(source, mean, count, 6)
  for l in range(L):
    want = pca_lib.fit_pca(train[l], 6)
    # Same axes with the same sign convention, so compare them directly.
    np.testing.assert_allclose(pca.components[l], want.components, atol=2e-5)
    sk = decomposition.PCA(6, svd_solver="full").fit(
      train[l].astype(np.float64)
    )
    np.testing.assert_allclose(
      pca.variances[l], sk.explained_variance_, rtol=1e-5
    )
    np.testing.assert_allclose(
      np.abs(np.sum(np.asarray(pca.components[l]) * sk.components_.T, axis=0)),
      1.0,
      atol=1e-5,
    )
    np.testing.assert_allclose(
      pca.total_variance[l],
      np.var(train[l].astype(np.float64), 0, ddof=1).sum(),
      rtol=1e-5,
    )


def test_streaming_fit_equals_in_memory_fit(data, in_memory, tmp_path):
  """k-means on the full set: same PCA subspace, same cells, same C_T."""
  train, test, gen = data
  ref, res = in_memory
  path = tmp_path / "train.f32"
  mm = np.memmap(path, np.float32, "w+", shape=train.shape)
  mm[:] = train
  mm.flush()
  source = np.memmap(path, np.float32, "r", shape=train.shape)
  got = ctjax.CTReference.fit_streaming(
    source, test, sample_size=None, chunk_size=CHUNK, **FIT
  )
  a, b = ref.fitted, got.fitted
  for k, get in dict(
    cells=lambda f: f.index.cells,
    order=lambda f: f.index.order,
    starts=lambda f: f.index.starts,
    test_cells=lambda f: f.test.cells,
    test_index=lambda f: f.test.index,
    n_train_cells=lambda f: f.n_train_cells,
    n_test_cells=lambda f: f.test.counts,
  ).items():
    np.testing.assert_array_equal(get(b), get(a), err_msg=k)
  for l in range(L):  # the same subspace: principal angles are zero
    s = np.linalg.svd(
      np.asarray(a.pca.components[l]).T @ np.asarray(b.pca.components[l]),
      compute_uv=False,
    )
    np.testing.assert_allclose(s, 1.0, atol=1e-5)
  np.testing.assert_allclose(b.centers, a.centers, atol=1e-4)
  np.testing.assert_allclose(b.inertia, a.inertia, rtol=1e-5)
  np.testing.assert_allclose(b.test.dist, a.test.dist, atol=1e-5)
  out = got.score(gen, return_neighbors=True)
  np.testing.assert_allclose(out.ct, res.ct, rtol=0, atol=1e-6)
  np.testing.assert_array_equal(
    out.neighbors.gen_cells, res.neighbors.gen_cells
  )
  assert res.ct[0] < -5  # the copied layer shows
  assert got.identity()["n_train"] == N and got.config.kmeans_sample is None


def test_streaming_fit_with_a_sample_and_budget(data, in_memory):
  """k-means sees only the seeded sample; every point is still assigned."""
  train, test, gen = data
  budget = 300_000
  got = ctjax.CTReference.fit_streaming(
    _uneven_chunks(train),
    test,
    sample_size=500,
    chunk_size=CHUNK,
    memory_budget=budget,
    **FIT,
  )
  cfg = got.config
  assert cfg.kmeans_sample == 500
  assert streaming.tile_bytes(cfg.tile_queries, cfg.tile_train, 6) <= budget
  rows = streaming.sample_rows(N, 500, FIT["seed"])
  for l in range(L):
    mean = np.asarray(got.fitted.pca.mean[l], np.float64)
    comp = np.asarray(got.fitted.pca.components[l], np.float64)
    pt = (train[l] - mean) @ comp
    # The centres are a Lloyd fixed point of the sample alone: each is the
    # mean of the sampled points nearest to it (NumPy).
    c = np.asarray(got.fitted.centers[l], np.float64)
    near = ((pt[rows][:, None] - c[None]) ** 2).sum(-1).argmin(1)
    for j in range(4):
      np.testing.assert_allclose(c[j], pt[rows][near == j].mean(0), atol=1e-3)
    # Every training point sits in its nearest centre's cell.
    cells = np.empty(N, int)
    cells[np.asarray(got.fitted.index.order[l])] = np.asarray(
      got.fitted.index.cells[l]
    )
    d2 = ((pt[:, None] - c[None]) ** 2).sum(-1)
    ok = np.take_along_axis(d2, cells[:, None], 1)[:, 0] <= d2.min(1) + 1e-3
    assert ok.all()
  # Well separated clusters: the sample finds the same partition and C_T.
  np.testing.assert_allclose(got.score(gen).ct, in_memory[1].ct, atol=1e-3)


def test_sample_rows():
  rows = streaming.sample_rows(1000, 100, 3)
  assert rows.shape == (100,) and np.all(np.diff(rows) > 0)
  np.testing.assert_array_equal(rows, streaming.sample_rows(1000, 100, 3))
  assert not np.array_equal(rows, streaming.sample_rows(1000, 100, 4))
  np.testing.assert_array_equal(
    streaming.sample_rows(50, None, 0), np.arange(50)
  )
  np.testing.assert_array_equal(streaming.sample_rows(50, 80, 0), np.arange(50))


def test_tiles_for_budget_is_maximal_and_exact(rng):
  d = 16
  for budget in (200_000, 1_000_000, 8_000_000):
    tq, tt = streaming.tiles_for_budget(budget, d, 10**6)
    assert streaming.tile_bytes(tq, tt, d) <= budget
    assert streaming.tile_bytes(tq, 2 * tt, d) > budget  # the largest 2^j
  assert streaming.tiles_for_budget(10**9, d, 3000) == (64, 3000)
  tq, tt = streaming.tiles_for_budget(30_000, d, 10**6)
  assert tq < 64 and tt >= 128
  with pytest.raises(ValueError, match="memory_budget"):
    streaming.tiles_for_budget(1000, d, 10**6)
  # The budgeted tiles give the materialised answer.
  train = rng.normal(size=(3000, d)).astype(np.float32)
  cells = rng.integers(0, 3, 3000)
  q = rng.normal(size=(200, d)).astype(np.float32)
  qc = rng.integers(0, 3, 200)
  index = nb.build_index(train, cells, 3, "cosine")
  tq, tt = streaming.tiles_for_budget(100_000, d, 3000)
  want = nb.nearest_in_cell(index, q, qc, tile_queries=None)
  got = nb.nearest_in_cell(index, q, qc, tile_queries=tq, tile_train=tt)
  np.testing.assert_array_equal(got[1], want[1])
  np.testing.assert_allclose(got[0], want[0], atol=1e-6)


def test_bad_chunks_are_named(data):
  train, test, _ = data
  bad = train.copy()
  bad[1, 700, 3] = np.nan
  with pytest.raises(ValueError, match=r"layer\(s\) 1 \(rows 512-767\)"):
    ctjax.CTReference.fit_streaming(bad, test, chunk_size=CHUNK, **FIT)
  with pytest.raises(ValueError, match="empty"):
    streaming.ChunkSource(lambda: iter([]))
  wrong = lambda: iter([train[:, :10], train[:, :10, :5]])
  with pytest.raises(ValueError, match="row 10"):
    list(streaming.ChunkSource(wrong).chunks())
  with pytest.raises(ValueError, match="sample_size=3"):
    ctjax.CTReference.fit_streaming(
      train, test, sample_size=3, chunk_size=CHUNK, **FIT
    )
  with pytest.raises(ValueError, match="same number of layers"):
    ctjax.CTReference.fit_streaming(train, test[:1], chunk_size=CHUNK, **FIT)
