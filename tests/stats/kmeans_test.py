"""k-means against scikit-learn."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from ctjax.stats import kmeans as km
from ctjax.stats import native


@pytest.mark.parametrize("k,spread", [(10, 1.0), (5, 4.0), (8, 10.0)])
def test_inertia_within_one_percent_of_sklearn(k, spread):
  x, _ = make_blobs(
    3000, n_features=16, centers=12, cluster_std=spread, random_state=k
  )
  x = x.astype(np.float32)
  ours = km.kmeans(x, k, jax.random.PRNGKey(0), n_init=10)
  ref = KMeans(k, n_init=10, random_state=0).fit(x)
  assert float(ours.inertia) <= ref.inertia_ * 1.01
  # Inertia is that of the returned labels and centres.
  d2 = ((x - np.asarray(ours.centers)[np.asarray(ours.labels)]) ** 2).sum()
  np.testing.assert_allclose(float(ours.inertia), d2, rtol=1e-4)
  assert len(np.unique(np.asarray(ours.labels))) == k


def test_labels_are_nearest_centres(rng):
  x = rng.normal(size=(500, 4)).astype(np.float32)
  res = km.kmeans(x, 6, jax.random.PRNGKey(1), n_init=3)
  c = np.asarray(res.centers)
  want = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)
  np.testing.assert_array_equal(np.asarray(res.labels), want)


def test_seeded_and_deterministic(rng):
  # Uniform data has many local optima, so the seed decides which one a
  # single restart finds: the same key repeats it, another key does not.
  x = rng.uniform(size=(400, 3)).astype(np.float32)
  runs = {
    s: km.kmeans(x, 8, jax.random.PRNGKey(s), n_init=1) for s in (3, 4, 5)
  }
  again = km.kmeans(x, 8, jax.random.PRNGKey(3), n_init=1)
  np.testing.assert_array_equal(
    np.asarray(again.centers), np.asarray(runs[3].centers)
  )
  np.testing.assert_array_equal(
    np.asarray(again.labels), np.asarray(runs[3].labels)
  )
  inertias = {float(r.inertia) for r in runs.values()}
  assert len(inertias) == 3, inertias
  # More restarts from one key keep the best: never worse than any one of
  # these single runs by more than rounding on this easy problem.
  best = km.kmeans(x, 8, jax.random.PRNGKey(3), n_init=10)
  assert float(best.inertia) <= min(inertias) * 1.02


def test_duplicate_points_no_empty_cell():
  # 3 distinct values but k = 3: every cell must get a point.
  x = np.repeat(np.eye(3, dtype=np.float32), 50, axis=0)
  res = km.kmeans(x, 3, jax.random.PRNGKey(0))
  assert sorted(np.bincount(np.asarray(res.labels), minlength=3)) == [
    50,
    50,
    50,
  ]
  assert float(res.inertia) == pytest.approx(0.0, abs=1e-6)


def test_too_few_points():
  with pytest.raises(ValueError, match="at least k=5"):
    km.kmeans(np.zeros((3, 2), np.float32), 5, jax.random.PRNGKey(0))


def test_d2_sampling_is_proportional_to_weights():
  # Two-level inverse CDF against the exact probabilities: zero-weight
  # points (whole blocks of them too) are never drawn, the rest in
  # proportion (chi-square, 4000 draws over 6 support points).
  n = 3 * km._BLOCK + 7
  w = np.zeros(n, np.float32)
  support = [0, 5, km._BLOCK - 1, 2 * km._BLOCK + 3, n - 2, n - 1]
  w[support] = [1.0, 3.0, 0.5, 2.0, 4.0, 1.5]
  keys = jax.random.split(jax.random.PRNGKey(0), 1000)
  draws = np.asarray(
    jax.vmap(
      lambda key: km._sample_d2(jax.random.uniform(key, (4,)), jnp.asarray(w))
    )(keys)
  ).ravel()
  assert set(np.unique(draws)) <= set(support)
  counts = np.array([(draws == i).sum() for i in support])
  expected = w[support] / w.sum() * len(draws)
  assert ((counts - expected) ** 2 / expected).sum() < 20.5  # p ~ 1e-3, 5 dof
  # All weights zero: uniform over the points.
  u = jax.random.uniform(jax.random.PRNGKey(1), (4000,))
  zero = np.asarray(km._sample_d2(u, jnp.zeros(n)))
  assert zero.min() >= 0 and zero.max() < n
  per_block = np.bincount(zero // km._BLOCK, minlength=4)[:3]
  np.testing.assert_allclose(per_block, 4000 * km._BLOCK / n, rtol=0.15)


def test_count_le_is_searchsorted_right(rng):
  # The sampler's fused count equals NumPy's searchsorted(side="right") into
  # non-decreasing sums, ties and values outside the range included.
  sums = np.cumsum(rng.integers(0, 3, 50)).astype(np.float32)
  values = np.concatenate([sums[::7], [-1.0, sums[-1] + 1], rng.random(5) * 60])
  values = values.astype(np.float32)
  want = np.searchsorted(sums, values, side="right")
  np.testing.assert_array_equal(km._count_le(jnp.asarray(sums), values), want)
  rows = np.sort(rng.random((len(values), 9)).astype(np.float32), axis=1)
  want = [np.searchsorted(r, v, side="right") for r, v in zip(rows, values)]
  np.testing.assert_array_equal(km._count_le(jnp.asarray(rows), values), want)


@pytest.mark.parametrize("method", ["scatter", "onehot"])
def test_cluster_sums_match_float64(rng, method):
  x = rng.normal(size=(3000, 8)).astype(np.float32)
  labels = rng.integers(0, 5, 3000)
  labels[labels == 3] = 0  # an empty cluster sums to zero
  want = np.zeros((5, 8))
  np.add.at(want, labels, x.astype(np.float64))
  got = km.cluster_sums(jnp.asarray(x), jnp.asarray(labels), 5, method=method)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-4)
  assert not np.asarray(got)[3].any()


def test_cluster_sums_bad_method():
  with pytest.raises(ValueError, match="'scatter' or 'onehot'"):
    km.cluster_sums(jnp.zeros((3, 2)), jnp.zeros(3, int), 2, method="atomic")


def test_onehot_sums_give_the_same_fit(monkeypatch):
  # The accelerator's deterministic sums (forced here on a CPU) find the
  # same clustering, and repeat it bit for bit from the same key.
  x, _ = make_blobs(2000, n_features=8, centers=6, random_state=2)
  x = x.astype(np.float32)
  base = km.kmeans(x, 6, jax.random.PRNGKey(0), n_init=2, lloyd="xla")
  monkeypatch.setattr(km, "SUMS", "onehot")
  jax.clear_caches()
  one = km.kmeans(x, 6, jax.random.PRNGKey(0), n_init=2, lloyd="xla")
  again = km.kmeans(x, 6, jax.random.PRNGKey(0), n_init=2, lloyd="xla")
  np.testing.assert_array_equal(np.asarray(one.labels), np.asarray(base.labels))
  np.testing.assert_allclose(
    np.asarray(one.centers), np.asarray(base.centers), rtol=1e-5, atol=1e-5
  )
  np.testing.assert_array_equal(
    np.asarray(again.centers), np.asarray(one.centers)
  )
  jax.clear_caches()


def test_sums_auto_by_backend(monkeypatch):
  x = jnp.ones((4, 2))
  labels = jnp.array([0, 1, 1, 0])
  seen = []
  monkeypatch.setattr(
    jax.ops, "segment_sum", lambda *a, **k: seen.append("scatter") or x[:2]
  )
  km.cluster_sums(x, labels, 2)
  assert seen == ["scatter"]  # this CPU
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  np.testing.assert_array_equal(km.cluster_sums(x, labels, 2), [[2, 2], [2, 2]])
  assert seen == ["scatter"]


def _native():
  if km.resolve_lloyd("auto") != "native":
    pytest.skip("the native Lloyd kernel does not run here")


def _blobs(n, d, k, seed=0):
  x, _ = make_blobs(n, n_features=d, centers=k, random_state=seed)
  return x.astype(np.float32)


@pytest.mark.parametrize(
  "n,d,k",
  # fewer rows than a block (32); k around the kernel's centre tiles (4, 8);
  # several row chunks (4096); d = 1 and 64.
  [(31, 1, 3), (300, 3, 4), (777, 64, 9), (3000, 16, 10), (9000, 5, 17)],
)
def test_native_lloyd_equals_xla(n, d, k):
  _native()
  x = _blobs(n, d, k, seed=n)
  a = km.kmeans(x, k, jax.random.PRNGKey(2), n_init=3, lloyd="xla")
  b = km.kmeans(x, k, jax.random.PRNGKey(2), n_init=3, lloyd="native")
  np.testing.assert_array_equal(np.asarray(b.labels), np.asarray(a.labels))
  np.testing.assert_allclose(
    np.asarray(b.centers), np.asarray(a.centers), rtol=1e-5, atol=1e-4
  )
  assert int(b.n_iter) == int(a.n_iter)
  np.testing.assert_allclose(float(b.inertia), float(a.inertia), rtol=1e-5)


def _lloyd_both(x, seeds, max_iter=300):
  x = jnp.asarray(x)
  x_sq = jnp.sum(x * x, axis=1)
  tol = 1e-4 * jnp.mean(jnp.var(x, axis=0))
  seeds = jnp.asarray(seeds)
  got = native.lloyd(x, x_sq, seeds, tol, max_iter)
  want = [km._lloyd(x, x_sq, s, max_iter, tol) for s in seeds]
  return got, want


def test_native_lloyd_matches_sklearn_from_the_same_start(rng):
  _native()
  x = _blobs(2000, 6, 5, seed=7)
  seeds = x[rng.choice(len(x), size=(3, 5), replace=False)]
  (centers, n_iter, inertia), _ = _lloyd_both(x, seeds)
  for r in range(3):
    ref = KMeans(5, init=seeds[r], n_init=1, algorithm="lloyd").fit(x)
    np.testing.assert_allclose(
      np.asarray(centers[r]), ref.cluster_centers_, rtol=1e-5, atol=1e-4
    )
    np.testing.assert_allclose(float(inertia[r]), ref.inertia_, rtol=1e-5)


def test_native_lloyd_moves_an_empty_centre_as_xla_does():
  _native()
  x = _blobs(400, 2, 3, seed=1)
  # Centre 1 is far from every point: its cell is empty after the first
  # assignment, so it moves onto the point farthest from its centre.
  seeds = np.stack([x[[0, 1, 2, 3]], x[[5, 6, 7, 8]]]).copy()
  seeds[:, 1] = 1e3
  (centers, n_iter, _), want = _lloyd_both(x, seeds)
  for r, (c, it) in enumerate(want):
    np.testing.assert_allclose(np.asarray(centers[r]), np.asarray(c), atol=1e-4)
    assert int(n_iter[r]) == int(it)
  assert np.abs(np.asarray(centers)[:, 1]).max() < 100  # moved onto data


def test_native_lloyd_stops_at_max_iter_and_under_vmap():
  _native()
  x = _blobs(500, 4, 6, seed=3)
  seeds = np.stack([x[:6], x[10:16]])
  (centers, n_iter, _), want = _lloyd_both(x, seeds, max_iter=1)
  np.testing.assert_array_equal(np.asarray(n_iter), [1, 1])
  for r, (c, _) in enumerate(want):
    np.testing.assert_allclose(np.asarray(centers[r]), np.asarray(c), atol=1e-5)
  xs = jnp.stack([jnp.asarray(x), jnp.asarray(x[::-1])])
  fit = jax.vmap(
    lambda a: km.kmeans(a, 6, jax.random.PRNGKey(0), n_init=2, lloyd="native")
  )(xs)
  alone = km.kmeans(xs[1], 6, jax.random.PRNGKey(0), n_init=2, lloyd="native")
  np.testing.assert_array_equal(
    np.asarray(fit.labels[1]), np.asarray(alone.labels)
  )


def test_lloyd_choice(monkeypatch):
  assert km.resolve_lloyd() == ("native" if native.available() else "xla")
  assert km.resolve_lloyd("auto", np.float64) == "xla"
  assert km.resolve_lloyd("auto", backend="gpu") == "xla"
  with pytest.raises(ValueError, match="Lloyd method 'native' cannot run"):
    km.resolve_lloyd("native", backend="tpu")
  with pytest.raises(ValueError, match="'auto', 'native' or 'xla'"):
    km.resolve_lloyd("elkan")


@pytest.mark.parametrize(
  "n,d,k,distinct",
  # one chunk and several (4096 rows); 2..5 candidates a step; fewer
  # distinct points than k (all weights zero: uniform draws); k = 1.
  [
    (3000, 8, 10, None),
    (9000, 3, 40, None),
    (300, 2, 5, 3),
    (40, 64, 2, None),
    (50, 4, 1, None),  # one centre: no draws
  ],
)
def test_native_kmeans_plus_plus_equals_xla(n, d, k, distinct):
  _native()
  rng = np.random.default_rng(n + k)
  x = rng.normal(size=(n, d)).astype(np.float32)
  if distinct:
    x = x[rng.integers(0, distinct, n)]
  x = jnp.asarray(x)
  x_sq = jnp.sum(x * x, axis=1)
  keys = jax.random.split(jax.random.PRNGKey(n), 4)
  first, u = jax.vmap(lambda key: km._seed_draws(key, n, k, jnp.float32))(keys)
  got = native.kmeans_plus_plus(x, x_sq, first, u)
  want = jax.vmap(lambda f, u: km._kmeans_plus_plus(f, u, x, x_sq, k))(first, u)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
