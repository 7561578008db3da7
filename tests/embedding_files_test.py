"""Embedding files in both layouts, through run.py, against the library."""

import json

import numpy as np
import pytest

from ctjax import embedding_files as ef
from ctjax.reference import CTReference
from tests.cli_faults_test import main as _main


WIDTHS = (3, 5, 4)  # three layers of different widths
NAMES = ["stem", "stage1", "stage2"]
N_CELLS = 3


def _sets(rng):
  """Train, test and gen as lists of ``[N, D_l]``; gen copies 20 train rows."""
  out = {"train": [], "test": [], "gen": []}
  for d in WIDTHS:
    centers = rng.normal(size=(4, d)) * 3

    def draw(k, centers=centers, d=d):
      return centers[rng.integers(0, 4, k)] + rng.normal(size=(k, d))

    tr = draw(60)
    out["train"].append(tr.astype(np.float32))
    out["test"].append(draw(40).astype(np.float32))
    gen = np.concatenate([tr[:20] + 0.01, draw(20)])
    out["gen"].append(gen.astype(np.float32))
  return out


def test_save_load_round_trip(tmp_path, rng):
  sets = _sets(rng)
  p = ef.save(tmp_path / "a.npz", sets["train"], layer_names=NAMES)
  with np.load(p) as z:
    assert sorted(z.files) == [
      "embeddings_00",
      "embeddings_01",
      "embeddings_02",
      "layer_names",
    ]
  got = ef.load(p)
  assert isinstance(got, ef.LayerList) and got.layer_names == NAMES
  for a, b in zip(got, sets["train"], strict=True):
    np.testing.assert_array_equal(a, b)
  stacked = rng.normal(size=(2, 7, 3)).astype(np.float32)
  q = ef.save(tmp_path / "s.npz", stacked)
  np.testing.assert_array_equal(ef.load(q), stacked)


def test_score_on_list_form_files_equals_the_library(tmp_path, rng, capsys):
  sets = _sets(rng)
  paths = {
    k: ef.save(tmp_path / f"{k}.npz", v, layer_names=NAMES)
    for k, v in sets.items()
  }
  out = tmp_path / "out"
  code, stdout, err = _main(
    ["score", "--train", paths["train"], "--test", paths["test"],
     "--gen", paths["gen"], "--out", out, "--n_cells", N_CELLS],
    capsys,
  )  # fmt: skip
  assert code in (0, None), err
  with open(out / "ct_curve.json") as f:
    summary = json.load(f)
  got = np.array([np.nan if v is None else v for v in summary["ct"]])
  ref = CTReference.fit(
    sets["train"], sets["test"], n_cells=N_CELLS, metric="cosine", seed=0
  )
  want = ref.score(sets["gen"]).ct
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  assert np.isfinite(want).any()
  # The file's layer names name the table rows.
  assert summary["layers"] == NAMES
  for name in NAMES:
    assert name in stdout


def _refused(argv, capsys, *needles):
  code, _, err = _main(argv, capsys)
  lines = [l for l in err.splitlines() if l.startswith("error:")]
  assert code == 2, err
  assert len(lines) == 1 and "Traceback" not in err, err
  for n in needles:
    assert str(n) in lines[0], (n, lines[0])
  return lines[0]


def test_damaged_list_form_files_exit_2_naming_file_and_key(
  tmp_path, rng, capsys
):
  sets = _sets(rng)
  good = {k: ef.save(tmp_path / f"{k}.npz", v) for k, v in sets.items()}
  out = tmp_path / "out"
  gen = sets["gen"]
  cases = {
    # a missing layer index
    "missing.npz": dict(embeddings_00=gen[0], embeddings_02=gen[2]),
    # layers that disagree on N
    "rows.npz": dict(
      embeddings_00=gen[0], embeddings_01=gen[1][:-3], embeddings_02=gen[2]
    ),
    # a layer that is not [N, D]
    "rank.npz": dict(
      embeddings_00=gen[0], embeddings_01=gen[1][None], embeddings_02=gen[2]
    ),
    # both layouts at once
    "both.npz": dict(embeddings=np.zeros((1, 2, 3)), embeddings_00=gen[0]),
    # names of the wrong length
    "names.npz": dict(
      embeddings_00=gen[0],
      embeddings_01=gen[1],
      embeddings_02=gen[2],
      layer_names=np.array(["a", "b"]),
    ),
  }
  needles = {
    "missing.npz": ["layer index 1", "embeddings_01"],
    "rows.npz": ["embeddings_01", "N=37", "N=40"],
    "rank.npz": ["embeddings_01", "[N, D]"],
    "both.npz": ["both"],
    "names.npz": ["layer_names", "2 names for 3 layers"],
  }
  for name, arrays in cases.items():
    p = tmp_path / name
    np.savez(p, **arrays)
    _refused(
      ["score", "--train", good["train"], "--test", good["test"],
       "--gen", p, "--out", out, "--n_cells", N_CELLS],
      capsys, "--gen", p, *needles[name],
    )  # fmt: skip
  # A truncated list-form file.
  data = open(good["gen"], "rb").read()
  bad = tmp_path / "truncated.npz"
  bad.write_bytes(data[: len(data) // 2])
  _refused(
    ["score", "--train", good["train"], "--test", good["test"],
     "--gen", bad, "--out", out, "--n_cells", N_CELLS],
    capsys, "--gen", bad,
  )  # fmt: skip


def test_load_errors_name_the_file(tmp_path):
  p = tmp_path / "x.npz"
  np.savez(p, other=np.zeros(3))
  with pytest.raises(ValueError, match="no 'embeddings' array"):
    ef.load(p)
  np.savez(p, embeddings_00=np.array([["a"]]))
  with pytest.raises(ValueError, match="embeddings_00.*dtype"):
    ef.load(p)
  np.savez(p, embeddings_1=np.zeros((2, 3)), embeddings_01=np.zeros((2, 3)))
  with pytest.raises(ValueError, match="both name layer 1"):
    ef.load(p)
  with pytest.raises(ValueError, match="2 layer names for 3 layers"):
    ef.save(p, [np.zeros((2, 3))] * 3, layer_names=["a", "b"])
