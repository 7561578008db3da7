"""Tests for ctjax.fingerprint.evaluation: accuracy and confusion on
constructed queries."""

import json

import numpy as np
import pytest

from ctjax import fingerprint as fp


def test_evaluate_constructed_confusion():
  e = np.eye(3)
  lib = fp.FingerprintLibrary(similarity="cosine")
  for label, c in zip("ABC", e):
    lib.add(label, c)
  queries = [
    ("A", e[0]),
    ("A", e[1]),
    ("B", e[1]),
    ("C", e[0] + 0.1 * e[2]),
    ("C", e[2]),
    ("D", e[2]),
  ]
  ev = fp.evaluate(lib, queries, top_ks=(1, 2, 3))
  assert ev.labels == ["A", "B", "C", "D"]
  np.testing.assert_array_equal(
    ev.confusion, [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 1, 0]]
  )
  assert (ev.n_correct, ev.n_queries) == (3, 6)
  assert ev.accuracy == 0.5
  assert ev.per_label_accuracy == {"A": 0.5, "B": 1.0, "C": 0.5, "D": 0.0}
  # Ties keep enrolment order, so ("A", e1) ranks B, A, C: top-2 correct.
  assert ev.top_k_accuracy == {
    1: 0.5,
    2: pytest.approx(5 / 6),
    3: pytest.approx(5 / 6),
  }
  assert ev.predictions == ["A", "B", "B", "A", "C", "C"]
  json.dumps(ev.to_dict())


def test_evaluate_open_set_adds_unknown_column():
  lib = fp.FingerprintLibrary(similarity="cosine", threshold=0.9)
  lib.add("A", [1.0, 0.0])
  lib.add("B", [0.0, 1.0])
  ev = fp.evaluate(lib, [("A", [1.0, 0.05]), ("B", [1.0, 1.0])])
  assert ev.labels == ["A", "B", "unknown"]
  np.testing.assert_array_equal(ev.confusion, [[1, 0, 0], [0, 0, 1], [0, 0, 0]])
  with pytest.raises(ValueError, match=r"query 0 \('A'\).*3 layers"):
    fp.evaluate(lib, [("A", [1.0, 0.0, 0.0])])
