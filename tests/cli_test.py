"""run.py and ctjax.cli end to end on tiny inputs: files written, contents."""

import csv
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import ctjax
from ctjax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
L, D = 3, 8


def _draw(rng, centers, k, spread=0.0):
  return np.stack(
    [
      centers[rng.integers(0, 5, k)]
      + rng.normal(size=(k, D)) * (1 + l * spread)
      for l in range(L)
    ]
  ).astype(np.float32)


@pytest.fixture(scope="module")
def emb_files(tmp_path_factory):
  """Embedding files: T, P, a copying generator A, an under-fitting B."""
  d = tmp_path_factory.mktemp("emb")
  rng = np.random.default_rng(0)
  c = rng.normal(size=(5, D)) * 3
  tr = _draw(rng, c, 600)
  files = dict(
    train=tr,
    test=_draw(rng, c, 300),
    genA=np.concatenate([tr[:, :150] + 0.01, _draw(rng, c, 150)], 1),
    genB=_draw(rng, c, 300, 0.6),
    qA=np.concatenate([tr[:, 300:400] + 0.01, _draw(rng, c, 100)], 1),
    qB=_draw(rng, c, 200, 0.6),
  )
  for k, v in files.items():
    np.savez(d / f"{k}.npz", embeddings=v)
  return d, files


def test_score_with_embeddings(emb_files, tmp_path):
  d, files = emb_files
  out = tmp_path / "score"
  lines = []
  r = cli.score(
    train=d / "train.npz",
    test=d / "test.npz",
    gen=d / "genA.npz",
    out=str(out),
    n_cells=4,
    bootstrap=0,  # the intervals: tests/cli_bootstrap_test.py
    echo=lines.append,
  )
  want = ctjax.ct_curve(files["train"], files["test"], files["genA"], n_cells=4)
  np.testing.assert_allclose(r["result"].ct, want.ct)
  summary = json.loads((out / "ct_curve.json").read_text())
  np.testing.assert_allclose(summary["ct"], want.ct)
  assert summary["verdict"] == ["copying"] * L
  assert summary["environment"]["packages"]["numpy"] == np.__version__
  with open(out / "ct_curve.csv") as f:
    rows = list(csv.reader(f))
  assert rows[0] == ["layer", "C_T", "cells used", "verdict"]
  np.testing.assert_allclose([float(r[1]) for r in rows[1:]], want.ct)
  assert Image.open(out / "ct_curve.png").size[0] > 300
  # Gallery rows: the exact copies (distance ~0.01·√D) come first, and each
  # names its own source training point.
  with open(out / "copy_gallery.csv") as f:
    g = list(csv.reader(f))[1:]
  assert all(int(a) < 150 and int(a) == int(b) for a, b, *_ in g)
  # A second run reuses the saved reference.
  r2 = cli.score(
    gen=d / "genB.npz",
    reference=str(out / "reference.npz"),
    out=str(tmp_path / "again"),
    echo=lines.append,
  )
  assert not json.loads((tmp_path / "again" / "ct_curve.json").read_text())[
    "reference_fitted_now"
  ]
  assert np.all(r2["result"].ct > want.ct)


def test_fingerprint_commands(emb_files, tmp_path):
  d, _ = emb_files
  ref = str(tmp_path / "ref.npz")
  lib = str(tmp_path / "lib.json")
  cli.score(
    train=d / "train.npz",
    test=d / "test.npz",
    gen=d / "genA.npz",
    reference=ref,
    out=str(tmp_path / "s"),
    n_cells=4,
    echo=lambda *_: None,
  )
  for label in ("A", "B"):
    cli.enroll(
      library=lib,
      label=label,
      gen=d / f"gen{label}.npz",
      reference=ref,
      batch_size=100,
      echo=lambda *_: None,
    )
  saved = json.loads(open(lib).read())
  assert sorted(set(c["label"] for c in saved["curves"])) == ["A", "B"]
  r = cli.identify(
    library=lib,
    gen=d / "qA.npz",
    reference=ref,
    batch_size=100,
    echo=lambda *_: None,
  )
  assert r["vote"][0][0] == "A"
  out = tmp_path / "ev"
  ev = cli.evaluate(
    library=lib,
    queries=[f"A={d / 'qA.npz'}", f"B={d / 'qB.npz'}"],
    reference=ref,
    batch_size=100,
    out=str(out),
    echo=lambda *_: None,
  )["evaluation"]
  assert ev.accuracy == 1.0 and ev.n_queries == 4
  saved_ev = json.loads((out / "evaluation.json").read_text())
  assert saved_ev["confusion"] == [[2, 0], [0, 2]]
  assert saved_ev["environment"]["backend"] == jax.default_backend()
  for png in ("confusion.png", "similarity.png"):
    assert Image.open(out / png).size[0] > 200


def test_mismatched_reference_refused(emb_files, tmp_path):
  d, files = emb_files
  ref = str(tmp_path / "ref.npz")
  ctjax.CTReference.fit(files["train"][:2], files["test"][:2]).save(ref)
  with pytest.raises(cli.UserError, match="mismatched reference"):
    cli.score(
      gen=d / "genA.npz",
      reference=ref,
      out=str(tmp_path / "x"),
      echo=lambda *_: None,
    )


def _run(args, cwd):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, os.path.join(ROOT, "run.py"), *args],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def test_run_py_images_with_tiny_encoder(tmp_path):
  """The real command line: a tiny random HF ViT, uint8 image arrays."""
  transformers = pytest.importorskip("transformers")
  cfg = transformers.ViTConfig(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=16,
    patch_size=8,
  )
  transformers.ViTModel(cfg, add_pooling_layer=False).save_pretrained(
    tmp_path / "enc"
  )
  rng = np.random.default_rng(0)
  train = rng.integers(0, 256, (240, 16, 16, 3), dtype=np.uint8)
  np.save(tmp_path / "train.npy", train)
  np.save(
    tmp_path / "test.npy",
    rng.integers(0, 256, (120, 16, 16, 3), dtype=np.uint8),
  )
  np.save(tmp_path / "gen.npy", train[:100])
  p = _run(
    [
      "score",
      "--train",
      "train.npy",
      "--test",
      "test.npy",
      "--gen",
      "gen.npy",
      "--encoder",
      "enc",
      "--n_cells",
      "3",
      "--out",
      "out",
      "--cache_dir",
      "cache",
    ],
    tmp_path,
  )
  assert p.returncode == 0, p.stderr[-2000:]
  out = tmp_path / "out"
  summary = json.loads((out / "ct_curve.json").read_text())
  assert summary["ct"][0] is None  # layer-0 CLS: undefined
  assert all(c < -5 for c in summary["ct"][1:])  # exact copies
  assert Image.open(out / "copy_gallery.png").size[0] > 200
  assert "copying" in p.stdout
  # Errors: one line, exit code 2, no traceback.
  p = _run(
    [
      "score",
      "--train",
      "missing.npy",
      "--test",
      "test.npy",
      "--gen",
      "gen.npy",
      "--encoder",
      "enc",
      "--out",
      "o2",
    ],
    tmp_path,
  )
  assert p.returncode == 2
  assert "error: --train: no such file or folder: missing.npy" in p.stderr
  assert "Traceback" not in p.stderr
  p = _run(
    [
      "identify",
      "--library",
      "none.json",
      "--gen",
      "gen.npy",
      "--reference",
      "out/reference.npz",
      "--encoder",
      "enc",
    ],
    tmp_path,
  )
  assert p.returncode == 2 and "library not found: none.json" in p.stderr
  p = _run(["bogus"], tmp_path)
  assert p.returncode == 2 and "unknown command" in p.stderr
