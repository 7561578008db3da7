"""Tests for ctjax.fingerprint: the authors' published accuracies, similarities
against scipy, persistence, reference checks, open set, evaluation."""

import json
import math
import os

import numpy as np
import pytest
from scipy.spatial import distance

from ctjax import fingerprint as fp

FIXTURES = os.path.join(
  os.path.dirname(os.path.dirname(__file__)), "fixtures", "paper-curves"
)


# -- the authors' files ------------------------------------------------------


@pytest.mark.parametrize(
  "name,correct,total",
  [
    ("Ffull_score", 6, 6),
    ("Fsmall_score", 5, 6),
    ("ffull_scores", 3, 3),
    ("fsmall_scores", 3, 6),
  ],
)
def test_paper_files_give_authors_accuracies(name, correct, total):
  path = os.path.join(FIXTURES, f"{name}.txt")
  lib, ev = fp.evaluate_curve_file(path)
  assert (ev.n_correct, ev.n_queries) == (correct, total)
  assert ev.accuracy == pytest.approx(correct / total)
  # Independent re-computation of every prediction with scipy.
  data = fp.read_curve_file(path)
  enrolled = [(l, np.nan_to_num(c, nan=0.0)[1:]) for l, c in data.enrolled]
  for (label, q), pred in zip(data.queries, ev.predictions):
    q = np.nan_to_num(q, nan=0.0)[1:]
    sims = [
      0.5 * (1 - distance.cosine(q, b)) + 0.5 / (1 + distance.euclidean(q, b))
      for _, b in enrolled
    ]
    assert enrolled[int(np.argmax(sims))][0] == pred
  assert len(lib) == len(data.enrolled)


def test_read_curve_file_contents():
  data = fp.read_curve_file(os.path.join(FIXTURES, "ffull_scores.txt"))
  assert len(data.enrolled) == 12 and len(data.queries) == 3
  assert [l for l, _ in data.queries] == ["ddpm", "SNGAN", "ddim"]
  label, curve = data.enrolled[0]
  assert label == "ddpm" and curve.shape == (13,)
  assert math.isnan(curve[0])
  assert curve[1] == 0.0180594787240445
  full = fp.read_curve_file(os.path.join(FIXTURES, "Ffull_score.txt"))
  assert full.queries[0][0] == "ContraGAN"
  assert full.queries[0][1].shape == (12,)
  assert not np.isnan(full.queries[0][1]).any()


def test_read_curve_file_errors(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    fp.read_curve_file(tmp_path / "missing.txt")
  bad = tmp_path / "bad.txt"
  bad.write_text("ddpm_train_batch: [1.0, 2.0]\nddpm_test_batch 1.0, 2.0\n")
  with pytest.raises(ValueError, match=r"bad.txt:2"):
    fp.read_curve_file(bad)
  bad.write_text("ddpm_train_batch: [1.0, 2.0]\nddpm_test_batch: [1.0, x]\n")
  with pytest.raises(ValueError, match=r"bad.txt:2: bad value"):
    fp.read_curve_file(bad)
  bad.write_text("ddpm_train_batch: [1.0, 2.0]\nddpm_valid: [1.0, 2.0]\n")
  with pytest.raises(ValueError, match="neither"):
    fp.read_curve_file(bad)
  bad.write_text("ddpm_train_batch: [1.0, 2.0]\nddpm_test_batch: [1.0]\n")
  with pytest.raises(ValueError, match="different lengths"):
    fp.read_curve_file(bad)


# -- similarities ------------------------------------------------------------


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
  assert fp.similarity(a, b, metric="cosine") == pytest.approx(cos, rel=1e-12)
  assert fp.similarity(a, b, metric="l2") == pytest.approx(
    1 / (1 + d), rel=1e-12
  )
  # Hand-computed: a=[3,4], b=[4,3]: cos = 24/25, |a-b| = sqrt(2).
  assert fp.similarity([3, 4], [4, 3]) == pytest.approx(
    0.5 * 0.96 + 0.5 / (1 + math.sqrt(2)), rel=1e-12
  )
  # A zero (or all-NaN) curve has cosine 0.
  assert fp.similarity([np.nan, np.nan], [1.0, 0.0], metric="cosine") == 0.0
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
    fp.similarity_matrix(a, b, metric="cosine"), cos, rtol=1e-12
  )
  np.testing.assert_allclose(
    fp.similarity_matrix(a, b, metric="l2-centroid"), inv, rtol=1e-12
  )
  square = fp.similarity_matrix(a)
  np.testing.assert_allclose(square, square.T, rtol=1e-12)
  np.testing.assert_allclose(np.diag(square), 1.0, rtol=1e-12)
  with pytest.raises(ValueError, match="different lengths"):
    fp.similarity_matrix(a, b[:, :6])
  with pytest.raises(ValueError, match="unknown metric"):
    fp.similarity_matrix(a, b, metric="manhattan")


# -- identification ----------------------------------------------------------


def test_nearest_single_and_centroid_rules_differ():
  # A's curves sit at (0,0) and (10,10), B's at (6,6). The query (8.5, 8.5)
  # is nearest to A's (10,10) but to B's centroid.
  q = np.array([8.5, 8.5])
  single = fp.FingerprintLibrary(metric="l2")
  centroid = fp.FingerprintLibrary(metric="l2-centroid")
  for lib in (single, centroid):
    lib.add("A", [0.0, 0.0])
    lib.add("A", [10.0, 10.0])
    lib.add("B", [6.0, 6.0])
  ranked = single.identify(q)
  assert [l for l, _ in ranked] == ["A", "B"]
  assert ranked[0][1] == pytest.approx(1 / (1 + math.sqrt(2 * 1.5**2)))
  assert ranked[1][1] == pytest.approx(1 / (1 + math.sqrt(2 * 2.5**2)))
  ranked = centroid.identify(q)
  assert [l for l, _ in ranked] == ["B", "A"]
  assert ranked[1][1] == pytest.approx(1 / (1 + math.sqrt(2 * 3.5**2)))
  assert single.identify(q, top_k=1) == single.identify(q)[:1]


def test_identify_rejects_bad_curves():
  lib = fp.FingerprintLibrary()
  with pytest.raises(ValueError, match="empty"):
    lib.identify([1.0, 2.0])
  lib.add("A", [1.0, 2.0, 3.0])
  with pytest.raises(
    ValueError, match="2 layers but the library's curves have 3"
  ):
    lib.identify([1.0, 2.0])
  with pytest.raises(ValueError, match="4 layers"):
    lib.add("B", [1.0, 2.0, 3.0, 4.0])
  with pytest.raises(ValueError, match="reserved"):
    lib.add("unknown", [1.0, 2.0, 3.0])
  with pytest.raises(ValueError, match="unknown metric"):
    fp.FingerprintLibrary(metric="euclid")


def test_identify_set_majority_vote_and_tie_break():
  lib = fp.FingerprintLibrary(metric="cosine")
  lib.add("A", [1.0, 0.0])
  lib.add("B", [0.0, 1.0])
  votes = lib.identify_set([[1.0, 0.1], [1.0, 0.2], [0.1, 1.0]])
  assert [v[0] for v in votes] == ["A", "B"]
  assert votes[0][1] == pytest.approx(2 / 3)
  cos = lambda u, v: 1 - distance.cosine(u, v)
  assert votes[0][2] == pytest.approx(
    (cos([1, 0.1], [1, 0]) + cos([1, 0.2], [1, 0])) / 2
  )
  # One vote each: B's vote is the more confident one, so B ranks first.
  votes = lib.identify_set([[1.0, 0.5], [0.01, 1.0]])
  assert [v[0] for v in votes] == ["B", "A"]
  assert votes[0][1] == votes[1][1] == 0.5


# -- batches and references --------------------------------------------------


class FakeReference:
  """Stands in for CTReference: the 'curve' is the per-layer batch mean."""

  def __init__(self, tag):
    self.tag = tag
    self.calls = []

  def score(self, batch):
    self.calls.append(batch.shape)

    class Result:
      ct = np.asarray(batch).mean(axis=(1, 2))

    return Result()

  def identity(self):
    return {
      "encoder": "tiny-vit",
      "pooling": "cls",
      "layers": (0, 1, 2),
      "n_components": 4,
      "n_cells": 3,
      "hash": self.tag,
    }


def test_add_batches_splits_and_drops_remainder(rng):
  emb = rng.normal(size=(3, 1050, 2))
  ref = FakeReference("aaa")
  lib = fp.FingerprintLibrary()
  curves = lib.add_batches("gen", emb, ref, batch_size=500)
  assert ref.calls == [(3, 500, 2), (3, 500, 2)]  # the last 50 are dropped
  np.testing.assert_allclose(curves[0], emb[:, :500].mean(axis=(1, 2)))
  np.testing.assert_allclose(curves[1], emb[:, 500:1000].mean(axis=(1, 2)))
  assert lib.labels == ["gen", "gen"]
  np.testing.assert_array_equal(lib.by_label()["gen"], curves)
  assert lib.reference["hash"] == "aaa"
  assert lib.reference["layers"] == [0, 1, 2]
  with pytest.raises(ValueError, match="fewer than one batch"):
    lib.add_batches("gen", emb[:, :499], ref, batch_size=500)
  with pytest.raises(ValueError, match=r"\[L, M, D\]"):
    lib.add_batches("gen", emb[0], ref)


def test_mismatched_reference_is_refused(rng):
  emb = rng.normal(size=(3, 40, 2))
  lib = fp.FingerprintLibrary(reference=FakeReference("aaa"))
  lib.add_batches("gen", emb, FakeReference("aaa"), batch_size=20)
  other = FakeReference("bbb")
  with pytest.raises(ValueError, match="different C_T reference.*hash"):
    lib.add_batches("gen2", emb, other, batch_size=20)
  with pytest.raises(ValueError, match="different C_T reference"):
    lib.identify(np.zeros(3), reference=other)
  with pytest.raises(ValueError, match="different C_T reference"):
    lib.identify_batches(emb, other, batch_size=20)
  assert lib.identify_batches(emb, FakeReference("aaa"), batch_size=20)[0] == (
    "gen",
    1.0,
    pytest.approx(1.0),
  )


def test_save_load_round_trip(tmp_path, rng):
  lib = fp.FingerprintLibrary(
    metric="paper-centroid", alpha=0.3, reference=FakeReference("abc")
  )
  for label in ("x", "y", "z"):
    for _ in range(2):
      c = rng.normal(size=5)
      c[0] = np.nan
      lib.add(label, c)
  lib.calibrate_threshold(0.2)
  path = lib.save(tmp_path / "lib.json")
  text = open(path).read()
  d = json.loads(text)
  assert d["format"] == "ctjax.FingerprintLibrary" and d["version"] == 1
  assert d["curves"][0]["curve"][0] is None  # NaN stored as null
  assert "\n" in text  # indented, human-readable
  back = fp.FingerprintLibrary.load(path)
  assert back.labels == lib.labels
  np.testing.assert_array_equal(back.curves, lib.curves)
  assert (back.metric, back.alpha, back.threshold) == (
    lib.metric,
    lib.alpha,
    lib.threshold,
  )
  assert back.reference == lib.reference
  q = rng.normal(size=5)
  assert back.identify(q) == lib.identify(q)
  with pytest.raises(ValueError, match="different C_T reference"):
    back.check_reference(FakeReference("other"))
  back.check_reference(FakeReference("abc"))


def test_load_errors(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    fp.FingerprintLibrary.load(tmp_path / "nope.json")
  p = tmp_path / "v.json"
  d = fp.FingerprintLibrary().to_dict()
  d["version"] = 99
  p.write_text(json.dumps(d))
  with pytest.raises(ValueError, match="version 99"):
    fp.FingerprintLibrary.load(p)
  p.write_text("{not json")
  with pytest.raises(ValueError, match="not JSON"):
    fp.FingerprintLibrary.load(p)
  p.write_text(json.dumps({"format": "something else"}))
  with pytest.raises(ValueError, match="not a ctjax fingerprint library"):
    fp.FingerprintLibrary.load(p)


# -- open set ----------------------------------------------------------------


def _family(rng, n_layers=12):
  return np.cumsum(rng.normal(size=n_layers))


def _batches(center, n, rng):
  return center + 0.1 * rng.normal(size=(n, center.size))


@pytest.mark.parametrize("metric", ["paper", "l2-centroid"])
def test_open_set_threshold(rng, metric):
  centers = [_family(rng) for _ in range(40)]
  lib = fp.FingerprintLibrary(metric=metric)
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
  lib = fp.FingerprintLibrary(metric="cosine")
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


# -- evaluation --------------------------------------------------------------


def test_evaluate_constructed_confusion():
  e = np.eye(3)
  lib = fp.FingerprintLibrary(metric="cosine")
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
  lib = fp.FingerprintLibrary(metric="cosine", threshold=0.9)
  lib.add("A", [1.0, 0.0])
  lib.add("B", [0.0, 1.0])
  ev = fp.evaluate(lib, [("A", [1.0, 0.05]), ("B", [1.0, 1.0])])
  assert ev.labels == ["A", "B", "unknown"]
  np.testing.assert_array_equal(ev.confusion, [[1, 0, 0], [0, 0, 1], [0, 0, 0]])
  with pytest.raises(ValueError, match=r"query 0 \('A'\).*3 layers"):
    fp.evaluate(lib, [("A", [1.0, 0.0, 0.0])])


# -- with the real C_T engine ------------------------------------------------


def test_integration_with_ct_reference(tmp_path, rng):
  from ctjax.reference import CTReference  # pylint: disable=g-import-not-at-top

  n_layers, dim = 2, 6
  train = rng.normal(size=(n_layers, 300, dim))
  test = rng.normal(size=(n_layers, 150, dim))
  ref = CTReference.fit(
    train,
    test,
    n_components=4,
    n_cells=2,
    metric="l2",
    n_init=2,
    meta={"encoder": "fake", "layers": [0, 1]},
  )

  def generator(copy_layer, m):
    # Near-copies of training points on `copy_layer`, fresh samples elsewhere.
    g = rng.normal(size=(n_layers, m, dim))
    pick = rng.integers(0, 300, size=m)
    g[copy_layer] = train[copy_layer, pick] + 0.01 * rng.normal(size=(m, dim))
    return g

  lib = fp.FingerprintLibrary()
  enrolled_a = lib.add_batches(
    "copies-0", generator(0, 130), ref, batch_size=60
  )
  lib.add_batches("copies-1", generator(1, 120), ref, batch_size=60)
  assert enrolled_a.shape == (2, n_layers)  # 10 of 130 samples dropped
  assert lib.reference == fp.reference_identity(ref)
  # Copying shows as a strongly negative C_T on the copied layer only.
  assert (enrolled_a[:, 0] < -3).all() and (enrolled_a[:, 1] > -3).all()
  g = generator(1, 60)
  np.testing.assert_array_equal(fp.batch_curves(g, ref, 60)[0], ref.score(g).ct)
  assert lib.identify_batches(g, ref, batch_size=60)[0][0] == "copies-1"
  assert lib.identify_batches(generator(0, 120), ref, batch_size=60)[0][:2] == (
    "copies-0",
    1.0,
  )
  # The identity survives saving the library and the reference.
  lib.save(tmp_path / "lib.json")
  ref.save(tmp_path / "ref.npz")
  back = fp.FingerprintLibrary.load(tmp_path / "lib.json")
  back.check_reference(CTReference.load(tmp_path / "ref.npz"))
  other = CTReference.fit(
    train,
    test,
    n_components=4,
    n_cells=2,
    metric="l2",
    n_init=2,
    seed=1,
    meta={"encoder": "fake", "layers": [0, 1]},
  )
  with pytest.raises(ValueError, match="different C_T reference.*seed"):
    back.add_batches("x", g, other, batch_size=60)
