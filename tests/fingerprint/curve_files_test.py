"""Tests for ctjax.fingerprint.curve_files: the authors' files give their
published accuracies (predictions recomputed with scipy)."""

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
