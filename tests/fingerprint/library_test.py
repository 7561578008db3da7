"""Tests for ctjax.fingerprint.library: matching rules, batches, reference
checks, persistence (current and version-1 files), the real C_T engine."""

import json
import math

import numpy as np
import pytest
from scipy.spatial import distance

from ctjax import fingerprint as fp


def test_nearest_single_and_centroid_rules_differ():
  # A's curves sit at (0,0) and (10,10), B's at (6,6). The query (8.5, 8.5)
  # is nearest to A's (10,10) but to B's centroid.
  q = np.array([8.5, 8.5])
  single = fp.FingerprintLibrary(similarity="l2")
  centroid = fp.FingerprintLibrary(similarity="l2", aggregate="centroid")
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
  with pytest.raises(ValueError, match="unknown similarity"):
    fp.FingerprintLibrary(similarity="euclid")
  with pytest.raises(ValueError, match="unknown aggregate"):
    fp.FingerprintLibrary(aggregate="mean")


def test_identify_set_majority_vote_and_tie_break():
  lib = fp.FingerprintLibrary(similarity="cosine")
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
    similarity="paper",
    aggregate="centroid",
    alpha=0.3,
    reference=FakeReference("abc"),
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
  assert d["format"] == "ctjax.FingerprintLibrary" and d["version"] == 2
  assert d["curves"][0]["curve"][0] is None  # NaN stored as null
  assert "\n" in text  # indented, human-readable
  back = fp.FingerprintLibrary.load(path)
  assert back.labels == lib.labels
  np.testing.assert_array_equal(back.curves, lib.curves)
  assert (back.similarity, back.aggregate, back.alpha, back.threshold) == (
    "paper",
    "centroid",
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


# A library file as ctjax wrote it before the rule was split in two (format
# version 1: one "metric" field naming the rule).
_V1_FILE = """{
 "format": "ctjax.FingerprintLibrary",
 "version": 1,
 "metric": "l2-centroid",
 "alpha": 0.25,
 "threshold": 0.125,
 "threshold_is_neg_inf": false,
 "n_layers": 3,
 "reference": {"hash": "abc", "layers": [0, 1, 2]},
 "curves": [
  {"label": "A", "curve": [null, 0.0, 0.0]},
  {"label": "A", "curve": [null, 10.0, 10.0]},
  {"label": "B", "curve": [null, 6.0, 6.0]}
 ]
}
"""


def test_version_1_file_loads(tmp_path):
  path = tmp_path / "old.json"
  path.write_text(_V1_FILE)
  lib = fp.FingerprintLibrary.load(path)
  assert (lib.similarity, lib.aggregate, lib.rule) == (
    "l2",
    "centroid",
    "l2-centroid",
  )
  assert (lib.alpha, lib.threshold) == (0.25, 0.125)
  assert lib.labels == ["A", "A", "B"]
  assert lib.reference == {"hash": "abc", "layers": [0, 1, 2]}
  np.testing.assert_array_equal(
    lib.curves, [[np.nan, 0, 0], [np.nan, 10, 10], [np.nan, 6, 6]]
  )
  # Centroid rule: (8.5, 8.5) is nearer B's (6, 6) than A's mean (5, 5).
  ranked = lib.identify([np.nan, 8.5, 8.5])
  assert [l for l, _ in ranked] == ["B", "A"]
  assert ranked[1][1] == pytest.approx(1 / (1 + math.sqrt(2 * 3.5**2)))
  # Saving writes the current version, which reads back to the same library.
  d = json.loads(open(lib.save(tmp_path / "new.json")).read())
  assert d["version"] == 2 and "metric" not in d
  assert (d["similarity"], d["aggregate"]) == ("l2", "centroid")
  back = fp.FingerprintLibrary.load(tmp_path / "new.json")
  assert back.identify([0.0, 8.5, 8.5]) == lib.identify([0.0, 8.5, 8.5])
  bad = json.loads(_V1_FILE)
  bad["metric"] = "l1"
  path.write_text(json.dumps(bad))
  with pytest.raises(ValueError, match="unknown matching rule 'l1'"):
    fp.FingerprintLibrary.load(path)
  del bad["metric"]
  path.write_text(json.dumps(bad))
  with pytest.raises(ValueError, match="lacks the field 'metric'"):
    fp.FingerprintLibrary.load(path)


def test_metric_keyword_is_a_deprecated_alias():
  with pytest.warns(DeprecationWarning, match="similarity= and aggregate="):
    lib = fp.FingerprintLibrary(metric="cosine-centroid")
  assert (lib.similarity, lib.aggregate) == ("cosine", "centroid")
  assert lib.metric == lib.rule == "cosine-centroid"
