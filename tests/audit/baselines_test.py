"""Baselines against scipy / numpy references and separable toy families."""

import numpy as np
import pytest
import scipy.linalg

from ctjax.audit import baselines


def _scipy_frechet(mu1, c1, mu2, c2):
  covmean = scipy.linalg.sqrtm(c1 @ c2)
  return float(
    np.sum((mu1 - mu2) ** 2)
    + np.trace(c1)
    + np.trace(c2)
    - 2 * np.trace(np.real(covmean))
  )


def _spd(rng, d, rank=None):
  a = rng.standard_normal((d, rank or d))
  return a @ a.T / d + (0 if rank else 0.1 * np.eye(d))


@pytest.mark.parametrize("d", [1, 3, 8])
def test_frechet_matches_scipy_sqrtm(rng, d):
  for _ in range(3):
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    c1, c2 = _spd(rng, d), _spd(rng, d)
    np.testing.assert_allclose(
      baselines.frechet_distance(mu1, c1, mu2, c2),
      _scipy_frechet(mu1, c1, mu2, c2),
      rtol=1e-7,
      atol=1e-9,
    )


def test_frechet_rank_deficient_matches_scipy(rng):
  mu = np.zeros(6)
  c1, c2 = _spd(rng, 6, rank=2), _spd(rng, 6, rank=3)
  np.testing.assert_allclose(
    baselines.frechet_distance(mu, c1, mu, c2),
    _scipy_frechet(mu, c1, mu, c2),
    atol=1e-6,
  )


def test_frechet_diagonal_closed_form(rng):
  mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
  s1, s2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
  np.testing.assert_allclose(
    baselines.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)),
    expected,
    rtol=1e-10,
  )
  c = _spd(rng, 5)
  assert abs(baselines.frechet_distance(mu1, c, mu1, c)) < 1e-9


def test_frechet_shape_errors():
  with pytest.raises(ValueError, match="cov2"):
    baselines.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(3))


def test_gaussian_stats_matches_numpy(rng):
  x = rng.standard_normal((50, 4))
  mu, cov = baselines.gaussian_stats(x)
  np.testing.assert_allclose(mu, x.mean(0))
  np.testing.assert_allclose(cov, np.cov(x.T))


def test_frechet_baseline_identifies_family(rng):
  means = {
    "a": np.zeros(6),
    "b": np.full(6, 0.8),
    "c": np.r_[np.ones(3), -np.ones(3)],
  }
  scales = {"a": 1.0, "b": 1.0, "c": 2.0}
  draw = lambda k: means[k] + scales[k] * rng.standard_normal((200, 6))
  base = baselines.FrechetBaseline().fit({k: [draw(k), draw(k)] for k in means})
  for k in means:
    assert base.predict(draw(k)) == k


def test_pixel_stats_matches_numpy(rng):
  x = rng.integers(0, 256, size=(10, 4, 4, 3)).astype(np.uint8)
  f = baselines.pixel_stats(x, histogram_bins=4)
  flat = x.reshape(-1, 3).astype(float)
  np.testing.assert_allclose(f[:3], flat.mean(0))
  np.testing.assert_allclose(f[3:6], flat.std(0))
  counts = [np.sum((x >= lo) & (x < lo + 64)) for lo in (0, 64, 128, 192)]
  np.testing.assert_allclose(f[6:], np.array(counts) / x.size)
  assert baselines.pixel_stats(x[..., 0]).shape == (2,)


def _bars(rng, kind, m):
  """Toy families of 8x8 images: horizontal/vertical bars, bright blobs."""
  x = rng.integers(0, 40, size=(m, 8, 8))
  pos = rng.integers(0, 8, size=m)
  for i, p in enumerate(pos):
    if kind == "h":
      x[i, p, :] = 220
    elif kind == "v":
      x[i, :, p] = 220
    else:
      x[i, 2:6, 2:6] = 200
  return x.astype(np.uint8)


@pytest.mark.parametrize("bins,standardize", [(0, False), (8, True)])
def test_pixel_stats_baseline(rng, bins, standardize):
  # Means: h ~ 45, b ~ 65 on 0..255.
  enrolled = {k: [_bars(rng, k, 100), _bars(rng, k, 100)] for k in "hb"}
  base = baselines.PixelStats(bins, standardize).fit(enrolled)
  assert base.predict(_bars(rng, "h", 100)) == "h"
  assert base.predict(_bars(rng, "b", 100)) == "b"
  if standardize:
    return
  # Raw features: brightening h by 20 matches b's mean (std unchanged).
  shifted = np.clip(_bars(rng, "h", 100).astype(int) + 20, 0, 255)
  assert base.predict(shifted.astype(np.uint8)) == "b"


def test_classifier_baseline_votes(rng):
  enrolled = {k: [_bars(rng, k, 150)] for k in "hvb"}
  cfg = baselines.ClassifierConfig(
    channels=(4, 8),
    hidden=16,
    num_steps=200,
    learning_rate=1e-2,
    batch_size=64,
    predict_batch=64,
  )
  base = baselines.ClassifierBaseline(cfg, progress=False).fit(enrolled)
  for k in "hvb":
    query = _bars(rng, k, 100)  # 100 > predict_batch: padding path is used
    votes = base.predict_images(query)
    assert votes.shape == (100,)
    assert np.mean(np.array(base.labels_)[votes] == k) > 0.9
    assert base.predict(query) == k
  with pytest.raises(ValueError, match="differ"):
    base.predict(np.zeros((3, 12, 12), np.uint8))


def test_majority_tie_breaks_to_smaller_index():
  assert baselines._majority(np.array([2, 1, 2, 1, 0]), 3) == 1
  assert baselines._majority(np.array([2, 2, 0]), 3) == 2


def test_empty_enrolment_is_rejected():
  with pytest.raises(ValueError, match="empty"):
    baselines.PixelStats().fit({})
  with pytest.raises(ValueError, match="'x'"):
    baselines.FrechetBaseline().fit({"x": []})
