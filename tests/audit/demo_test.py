"""The built-in default, on a cut-down configuration: every file is written,
exact copies read as copying and fresh test images as neither."""

import json

import numpy as np
import pytest
from PIL import Image
from scipy.spatial import distance

from ctjax.audit import demo


def _paper_rule_folds(curves):
  """Held-out accuracy per fold, recomputed from the saved curves.

  curves[family][run] is a list of batch curves (NaN saved as null). Run h of
  every family is identified against the other runs' curves by the paper's
  rule (NaN -> 0, 0.5 cos + 0.5 / (1 + L2), nearest curve), here with scipy.
  """
  arr = {
    f: [np.nan_to_num(np.array(r, float), nan=0.0) for r in runs]
    for f, runs in curves.items()
  }
  n_runs = len(next(iter(arr.values())))
  folds = []
  for h in range(n_runs):
    enrolled = [
      (f, c)
      for f, runs in arr.items()
      for r, run in enumerate(runs)
      if r != h
      for c in run
    ]
    hits = []
    for f, runs in arr.items():
      for q in runs[h]:
        sims = [
          0.5 * (1 - distance.cosine(q, c))
          + 0.5 / (1 + distance.euclidean(q, c))
          for _, c in enrolled
        ]
        hits.append(enrolled[int(np.argmax(sims))][0] == f)
    folds.append(np.mean(hits))
  return folds


def test_demo_small(tmp_path):
  cfg = demo.DemoConfig(
    n_fresh=197,
    probe_size=150,
    batch=100,
    batches_per_run=2,
    n_cells=5,
    classifier_steps=20,
    families=("kde", "gmm"),
  )
  out = tmp_path / "report"
  lines = []
  res = demo.run(
    "digits",
    out=str(out),
    cache_dir=str(tmp_path / "cache"),
    config=cfg,
    echo=lines.append,
  )
  files = sorted(p.name for p in out.iterdir())
  assert files == [
    "confusion.png",
    "generators_random.png",
    "generators_trained.png",
    "probes_random.png",
    "probes_trained.png",
    "report.md",
    "results.json",
    "similarity.png",
  ]
  for f in files:
    if f.endswith(".png"):
      assert min(Image.open(out / f).size) > 200
  saved = json.loads((out / "results.json").read_text())
  copy = np.array(saved["probes"]["trained"]["copy"][1:], float)
  fresh = np.array(saved["probes"]["trained"]["test"][1:], float)
  assert np.all(copy < -5), copy  # exact copies: C_T << 0
  assert np.all(np.abs(fresh) < 3), fresh  # fresh test images: C_T ~ 0
  assert saved["probes"]["trained"]["copy"][0] is None  # layer-0 CLS
  # KDE at the digits preset copies; its curves sit below the GMM's.
  kde = np.array(saved["generator_curves"]["trained"]["kde"], float)[..., 1:]
  gmm = np.array(saved["generator_curves"]["trained"]["gmm"], float)[..., 1:]
  assert kde.mean() < gmm.mean()
  fp = saved["fingerprinting"]["C_T curves, paper (trained encoder)"]
  assert len(fp["folds"]) == 3
  np.testing.assert_allclose(
    fp["folds"], _paper_rule_folds(saved["generator_curves"]["trained"])
  )
  assert fp["accuracy"] == pytest.approx(np.mean(fp["folds"]))
  assert set(saved["baselines"]) == set(res["baselines"])
  report = (out / "report.md").read_text()
  assert "| copy |" in report and "Wall time per stage" in report
  assert any("total" in l for l in lines)
