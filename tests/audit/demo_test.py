"""The built-in default, on a cut-down configuration: every file is written,
exact copies read as copying and fresh test images as neither."""

import json

import numpy as np
from PIL import Image

from ctjax.audit import demo


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
  assert len(fp["folds"]) == 3 and 0 <= fp["accuracy"] <= 1
  assert set(saved["baselines"]) == set(res["baselines"])
  report = (out / "report.md").read_text()
  assert "| copy |" in report and "Wall time per stage" in report
  assert any("total" in l for l in lines)
