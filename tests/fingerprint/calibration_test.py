"""Tests for ctjax.fingerprint.calibration: the open-set threshold and the
leave-one-out scores against brute force."""

import math

import numpy as np
import pytest
from scipy.spatial import distance

from ctjax import fingerprint as fp


def _family(rng, n_layers=12):
  return np.cumsum(rng.normal(size=n_layers))


def _batches(center, n, rng):
  return center + 0.1 * rng.normal(size=(n, center.size))


@pytest.mark.parametrize(
  "similarity,aggregate", [("paper", "nearest"), ("l2", "centroid")]
)
def test_open_set_threshold(rng, similarity, aggregate):
  centers = [_family(rng) for _ in range(40)]
  lib = fp.FingerprintLibrary(similarity=similarity, aggregate=aggregate)
  for i, c in enumerate(centers):
    for b in _batches(c, 3, rng):
      lib.add(f"f{i}", b)
  cal = lib.calibrate_threshold(0.1)
  # Leave-one-family-out: exactly floor(0.1 * 120) = 12 impostors accepted.
  assert cal.false_accept_rate == pytest.approx(0.1)
  assert np.sum(cal.impostor_scores >= cal.threshold) == 12
  assert lib.threshold == cal.threshold
  assert cal.false_reject_rate == 0.0
  # Fresh batches of enrolled families: accepted with the right label.
  for i in range(0, 40, 4):
    answer = lib.identify(_batches(centers[i], 1, rng)[0])[0]
    assert answer[0] == f"f{i}" and answer[1] >= cal.threshold
  # Curves of new families: about 10% accepted.
  new = [_batches(_family(rng), 1, rng)[0] for _ in range(300)]
  answers = [lib.identify(c, top_k=2) for c in new]
  accepted = np.mean([a[0][0] != "unknown" for a in answers])
  assert 0.03 <= accepted <= 0.2
  rejected = next(a for a in answers if a[0][0] == "unknown")
  assert rejected[0][1] == rejected[1][1] < cal.threshold
  # A flat curve far from every family is unknown.
  assert lib.identify(np.full(12, 40.0))[0][0] == "unknown"


def test_loo_scores_match_brute_force(rng):
  lib = fp.FingerprintLibrary(similarity="cosine")
  labels = ["a", "a", "b", "b", "b", "c"]
  x = rng.normal(size=(6, 4))
  for l, c in zip(labels, x):
    lib.add(l, c)
  impostor, genuine = lib.loo_scores()
  cos = 1 - distance.cdist(x, x, "cosine")
  lab = np.array(labels)
  np.testing.assert_allclose(
    impostor, [cos[i, lab != lab[i]].max() for i in range(6)], rtol=1e-12
  )
  want = [
    max(cos[i, j] for j in range(6) if j != i and lab[j] == lab[i])
    for i in range(5)
  ]  # "c" has one curve: no genuine score
  np.testing.assert_allclose(genuine, want, rtol=1e-12)


def test_threshold_extremes(rng):
  lib = fp.FingerprintLibrary()
  for i in range(3):
    for _ in range(2):
      lib.add(f"f{i}", rng.normal(size=4))
  cal = lib.calibrate_threshold(0.0)
  assert cal.false_accept_rate == 0.0
  assert cal.threshold > cal.impostor_scores.max()
  cal = lib.calibrate_threshold(1.0)
  assert cal.threshold == -math.inf
  assert lib.identify(rng.normal(size=4))[0][0] != "unknown"
  with pytest.raises(ValueError, match="false_accept_rate"):
    lib.calibrate_threshold(1.5)
  one = fp.FingerprintLibrary()
  one.add("a", [1.0, 2.0])
  with pytest.raises(ValueError, match="two labels"):
    one.calibrate_threshold(0.1)
