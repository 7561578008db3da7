"""run.py select (cli.select) on tiny embeddings with a known answer."""

import json
import os

import numpy as np
import pytest

from ctjax import cli

# reference_test's fit shapes and settings (one compilation in a suite run).
L, N, D = 3, 600, 12


def _sample(rng, centers, k):
  return centers[rng.integers(0, len(centers), k)] + rng.normal(size=(k, D))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  rng = np.random.default_rng(11)
  centers = [rng.normal(size=(5, D)) * 4 for _ in range(L)]
  layers = lambda k: np.stack([_sample(rng, c, k) for c in centers])
  train, test = layers(N), layers(N)
  d = tmp_path_factory.mktemp("select")
  save = lambda path, x: np.savez(path, embeddings=x.astype(np.float32))
  save(d / "train.npz", train)
  save(d / "test.npz", test)
  os.makedirs(d / "probes")
  for kind, layer in (("early", 0), ("late", 2)):
    pool = layers(120)
    pool[layer] = train[layer, rng.choice(N, 120, replace=False)]
    save(d / "probes" / f"{kind}.npz", pool)
  (d / "probes" / "notes.txt").write_text("not a probe")
  return d


def test_select_writes_table_and_heat_map(inputs, tmp_path):
  lines = []
  res = cli.select(
    train=str(inputs / "train.npz"),
    test=str(inputs / "test.npz"),
    probes=str(inputs / "probes"),
    out=str(tmp_path / "out"),
    batch_size=30,
    n_batches=6,
    tau=0.05,
    n_cells=5,
    n_components=8,
    echo=lines.append,
  )
  sel = res["selection"]
  assert sel.kinds == ("early", "late")
  assert res["reference"].n_test == N // 2
  np.testing.assert_array_equal(sel.recommended_index, [0, 2])
  d = json.loads((tmp_path / "out" / "selection.json").read_text())
  assert d["rows"] == sel.to_rows()
  assert d["environment"]["cpu_cores"] >= 1
  csv = (tmp_path / "out" / "selection.csv").read_text().splitlines()
  assert len(csv) == 1 + 2 * L
  png = (tmp_path / "out" / "selection.png").read_bytes()
  assert png.startswith(b"\x89PNG")
  assert lines[0].startswith("early: layer ") and "AUC 1.00" in lines[0]
  assert lines[-1].startswith("wrote ")


def test_select_errors(inputs, tmp_path):
  kw = dict(out=str(tmp_path / "o"), n_batches=6)
  with pytest.raises(ValueError, match="--train"):
    cli.select(train=str(inputs / "nope.npz"), test=str(inputs), **kw)
  with pytest.raises(ValueError, match="--probes DIR"):
    cli.select(
      train=str(inputs / "train.npz"), test=str(inputs / "test.npz"), **kw
    )
  with pytest.raises(ValueError, match="no such folder"):
    cli.select(
      train=str(inputs / "train.npz"),
      test=str(inputs / "test.npz"),
      probes=str(inputs / "missing"),
      **kw,
    )
  with pytest.raises(ValueError, match="n_batches"):
    cli.select(
      train=str(inputs / "train.npz"),
      test=str(inputs / "test.npz"),
      n_batches=1,
    )
