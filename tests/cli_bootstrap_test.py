"""run.py score's bootstrap intervals: CSV columns, JSON bounds, flags."""

import csv
import json

import numpy as np
import pytest

import ctjax
import run
from ctjax import cli
from ctjax.stats import bootstrap as bl

L, D = 3, 8


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("emb")
  rng = np.random.default_rng(0)
  c = rng.normal(size=(5, D)) * 3

  def draw(k):
    return np.stack(
      [c[rng.integers(0, 5, k)] + rng.normal(size=(k, D)) for _ in range(L)]
    ).astype(np.float32)

  tr = draw(600)
  arrays = dict(
    train=tr,
    test=draw(300),
    gen=np.concatenate([tr[:, :100] + 0.01, draw(200)], 1),
  )
  for k, v in arrays.items():
    np.savez(d / f"{k}.npz", embeddings=v)
  return d, arrays


def test_score_writes_bounds(files, tmp_path):
  d, arrays = files
  out = tmp_path / "score"
  lines = []
  r = cli.score(
    train=d / "train.npz",
    test=d / "test.npz",
    gen=d / "gen.npz",
    out=str(out),
    n_cells=4,
    bootstrap=300,
    confidence=0.9,
    seed=5,
    echo=lines.append,
  )
  res = r["result"]
  ref = ctjax.CTReference.load(out / "reference.npz")
  want = ref.score(arrays["gen"], n_bootstrap=300, confidence=0.9, seed=5)
  np.testing.assert_array_equal(res.ct_boot, want.ct_boot)
  with open(out / "ct_curve.csv") as f:
    rows = list(csv.reader(f))
  assert rows[0] == [
    "layer",
    "C_T",
    "ct_low",
    "ct_high",
    "cells used",
    "verdict",
  ]
  ct, low, high = (np.array([float(x[i]) for x in rows[1:]]) for i in (1, 2, 3))
  np.testing.assert_allclose(ct, want.ct, rtol=1e-6)
  np.testing.assert_allclose(low, want.ct_low, rtol=1e-6)
  np.testing.assert_allclose(high, want.ct_high, rtol=1e-6)
  assert np.all((low < ct) & (ct < high))  # the bounds bracket C_T
  summary = json.loads((out / "ct_curve.json").read_text())
  np.testing.assert_allclose(summary["ct_low"], want.ct_low)
  np.testing.assert_allclose(summary["ct_high"], want.ct_high)
  assert summary["confidence"] == 0.9 and summary["n_bootstrap"] == 300
  assert summary["bootstrap"] == "gen" and summary["bootstrap_seed"] == 5
  assert any("90% bootstrap intervals" in line for line in lines[1:])
  assert "ct_low" in lines[0]  # the table comes first
  # no bootstrap: no columns, no keys
  cli.score(
    gen=d / "gen.npz",
    reference=str(out / "reference.npz"),
    out=str(tmp_path / "plain"),
    bootstrap=0,
    echo=lines.append,
  )
  with open(tmp_path / "plain" / "ct_curve.csv") as f:
    assert next(csv.reader(f)) == ["layer", "C_T", "cells used", "verdict"]
  summary = json.loads((tmp_path / "plain" / "ct_curve.json").read_text())
  assert "ct_low" not in summary


@pytest.mark.parametrize(
  "kw, match",
  [
    (dict(bootstrap=-1), "--bootstrap must be >= 0"),
    (dict(bootstrap=1.5), "--bootstrap must be an integer"),
    (dict(confidence=1.5), "confidence must be in"),
    (dict(bootstrap_mode="all"), "bootstrap must be one of"),
  ],
)
def test_bad_bootstrap_flags(files, tmp_path, kw, match):
  d, _ = files
  with pytest.raises(cli.UserError, match=match):
    cli.score(gen=d / "gen.npz", out=str(tmp_path / "x"), **kw)
  assert not (tmp_path / "x" / "ct_curve.csv").exists()


def test_run_py_modes_match_library():
  assert run.BOOTSTRAP_MODES == bl.MODES
  assert cli.DEFAULT_BOOTSTRAP == run.FLAGS["bootstrap"].default
