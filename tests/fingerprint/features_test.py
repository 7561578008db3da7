"""Richer fingerprints: the features against brute force and the scores."""

import numpy as np
import pytest
from scipy import stats

from ctjax import fingerprint as fp
from ctjax.fingerprint import features


def _type7_quantile(x, q):
  """Hyndman & Fan type 7 quantile of a sample, written out."""
  s = sorted(x)
  h = (len(s) - 1) * q
  lo = int(np.floor(h))
  hi = min(lo + 1, len(s) - 1)
  return s[lo] + (h - lo) * (s[hi] - s[lo])


def test_distance_quantiles_against_brute_force(rng):
  gen = rng.gamma(2.0, size=(3, 41))
  test = rng.gamma(2.5, size=(3, 67))
  test[1, :10] = test[1, 10]  # ties in the test distances
  gen[1, :5] = test[1, 10]  # generated distances equal to test ones
  q = (0.0, 0.1, 0.25, 0.5, 0.9, 1.0)
  got = features.distance_quantiles(gen, test, q)
  assert got.shape == (3, len(q))
  for l in range(3):
    for j, level in enumerate(q):
      at = _type7_quantile(gen[l], level)
      want = stats.percentileofscore(test[l], at, kind="weak") / 100
      assert got[l, j] == pytest.approx(want, abs=1e-12), (l, level)


def test_distance_quantiles_read_copying_and_fresh(rng):
  test = rng.exponential(size=(1, 4000))
  fresh = rng.exponential(size=(1, 4000))
  close = 0.2 * rng.exponential(size=(1, 4000))  # nearer T than fresh data
  q = features.QUANTILES
  np.testing.assert_allclose(
    features.distance_quantiles(fresh, test, q)[0], q, atol=0.03
  )
  assert np.all(features.distance_quantiles(close, test, q)[0] < np.array(q))


def test_distance_quantiles_rejects_bad_input():
  with pytest.raises(ValueError, match="share L"):
    features.distance_quantiles(np.ones((2, 3)), np.ones((3, 3)))
  with pytest.raises(ValueError, match="levels"):
    features.distance_quantiles(np.ones((2, 3)), np.ones((2, 3)), (0.5, 2))
  with pytest.raises(ValueError, match="unknown feature"):
    features.check_kinds(("ct", "colour"))


@pytest.fixture(scope="module")
def small_reference():
  from ctjax.reference import CTReference  # pylint: disable=g-import-not-at-top

  r = np.random.default_rng(3)
  train = r.normal(size=(2, 300, 6))
  test = r.normal(size=(2, 150, 6))
  ref = CTReference.fit(
    train, test, n_components=4, n_cells=3, metric="l2", n_init=2
  )
  return ref, train


def test_batch_features_agree_with_the_score(small_reference, rng):
  ref, train = small_reference
  gen = rng.normal(size=(2, 130, 6))
  gen[0, :60] = train[0, :60] + 0.01  # the first batch copies on layer 0
  out = fp.batch_features(gen, ref, batch_size=60)
  assert set(out) == set(fp.FEATURES)
  k, nq = ref.n_cells, len(fp.QUANTILES)
  assert out["ct"].shape == (2, 2)
  assert out["z"].shape == out["occupancy"].shape == (2, 2 * k)
  assert out["dist"].shape == (2, 2 * nq)
  # "ct" is batch_curves; the others are the score's parts, layer-major.
  np.testing.assert_array_equal(out["ct"], fp.batch_curves(gen, ref, 60))
  for i in range(2):
    res = ref.score(gen[:, 60 * i : 60 * (i + 1)], return_neighbors=True)
    np.testing.assert_array_equal(out["z"][i], res.z.reshape(-1))
    np.testing.assert_array_equal(out["occupancy"][i], res.gen_frac.ravel())
    nb = res.neighbors
    for l in range(2):
      np.testing.assert_allclose(
        out["dist"][i].reshape(2, nq)[l],
        features.distance_quantiles(
          nb.gen_dist[l : l + 1], nb.test_dist[l : l + 1]
        )[0],
      )
  np.testing.assert_allclose(out["occupancy"].reshape(2, 2, k).sum(-1), 1.0)
  # The copied batch sits far below the test distances on layer 0 only.
  dist = out["dist"].reshape(2, 2, nq)
  assert np.all(dist[0, 0] < 0.05) and np.all(dist[1, 0] > 0.0)
  assert dist[0, 1].mean() > 0.2
  # A subset of kinds, and a score without neighbours for "dist".
  only = fp.batch_features(gen, ref, 60, ("z",))
  assert list(only) == ["z"]
  res = ref.score(gen[:, :60])
  with pytest.raises(ValueError, match="return_neighbors"):
    fp.result_features(res, ("dist",))
  with pytest.raises(ValueError, match="batch_size"):
    fp.batch_features(gen, ref, 200)
