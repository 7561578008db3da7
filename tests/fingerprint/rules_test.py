"""Tests for ctjax.fingerprint.rules: similarities against scipy and hand
values, rule names."""

import math

import numpy as np
import pytest
from scipy.spatial import distance

from ctjax import fingerprint as fp


def test_similarity_hand_values():
  a = np.array([1.0, 2.0, np.nan, -0.5])
  b = np.array([2.0, 0.0, 1.0, 3.0])
  a0 = np.array([1.0, 2.0, 0.0, -0.5])
  cos = 1 - distance.cosine(a0, b)
  d = distance.euclidean(a0, b)
  assert fp.similarity(a, b) == pytest.approx(
    0.5 * cos + 0.5 / (1 + d), rel=1e-12
  )
  assert fp.similarity(a, b, alpha=0.8) == pytest.approx(
    0.8 * cos + 0.2 / (1 + d), rel=1e-12
  )
  assert fp.similarity(a, b, similarity="cosine") == pytest.approx(
    cos, rel=1e-12
  )
  assert fp.similarity(a, b, similarity="l2") == pytest.approx(
    1 / (1 + d), rel=1e-12
  )
  # Hand-computed: a=[3,4], b=[4,3]: cos = 24/25, |a-b| = sqrt(2).
  assert fp.similarity([3, 4], [4, 3]) == pytest.approx(
    0.5 * 0.96 + 0.5 / (1 + math.sqrt(2)), rel=1e-12
  )
  # A zero (or all-NaN) curve has cosine 0.
  assert fp.similarity([np.nan, np.nan], [1.0, 0.0], similarity="cosine") == 0.0
  assert fp.similarity([0.0, 0.0], [3.0, 4.0]) == pytest.approx(0.5 / 6)


def test_similarity_matrix_matches_scipy_cdist(rng):
  a = rng.normal(size=(5, 7))
  b = rng.normal(size=(4, 7))
  cos = 1 - distance.cdist(a, b, "cosine")
  inv = 1 / (1 + distance.cdist(a, b, "euclidean"))
  np.testing.assert_allclose(
    fp.similarity_matrix(a, b), 0.5 * cos + 0.5 * inv, rtol=1e-12
  )
  np.testing.assert_allclose(
    fp.similarity_matrix(a, b, similarity="cosine"), cos, rtol=1e-12
  )
  np.testing.assert_allclose(
    fp.similarity_matrix(a, b, similarity="l2"), inv, rtol=1e-12
  )
  square = fp.similarity_matrix(a)
  np.testing.assert_allclose(square, square.T, rtol=1e-12)
  np.testing.assert_allclose(np.diag(square), 1.0, rtol=1e-12)
  with pytest.raises(ValueError, match="different lengths"):
    fp.similarity_matrix(a, b[:, :6])
  with pytest.raises(ValueError, match="unknown similarity"):
    fp.similarity_matrix(a, b, similarity="manhattan")


def test_rule_names_round_trip():
  assert fp.RULES == (
    "paper",
    "cosine",
    "l2",
    "paper-centroid",
    "cosine-centroid",
    "l2-centroid",
  )
  pairs = [(s, a) for a in fp.AGGREGATES for s in fp.SIMILARITIES]
  assert [fp.rule_name(s, a) for s, a in pairs] == list(fp.RULES)
  assert [fp.parse_rule(r) for r in fp.RULES] == pairs
  with pytest.raises(ValueError, match="unknown matching rule"):
    fp.parse_rule("paper-mean")
  with pytest.raises(ValueError, match="unknown aggregate"):
    fp.rule_name("paper", "mean")
