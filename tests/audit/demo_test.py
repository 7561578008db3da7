"""The built-in default, on a cut-down configuration: every file is written,
exact copies read as copying and fresh test images as neither."""

import json
import types

import jax
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
    select_batches=4,
    select_bootstrap=50,
    transforms=("clean", "jpeg50", "histogram"),
    compare_families=False,  # tests/audit/depth_test.py runs it end to end
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
    "selection_random.png",
    "selection_trained.png",
    "similarity.png",
    "transforms.png",
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
  # What it ran on, for telling two results' environments apart.
  assert saved["environment"]["packages"]["jax"] == jax.__version__
  assert f"jax {jax.__version__}" in report
  assert any("total" in l for l in lines)
  _check_transforms_table(saved, report)
  _check_selection(saved, report)


def _check_transforms_table(saved, report):
  """Every number of the transforms table, recomputed from the stored
  per-batch answers; the clean column agrees with the clean results."""
  tab = saved["transforms"]
  assert tab["transforms"] == ["clean", "jpeg50", "histogram"]
  truth = tab["truth"]
  assert len(truth) == 3 and all(len(t) == 2 * 2 for t in truth)
  assert sorted(tab["labels"]) == ["gmm", "kde"]
  n_rules = len(demo.fingerprint.RULES)
  assert len(tab["methods"]) == 4 * n_rules + 4
  for m in tab["methods"]:
    row = []
    for t in tab["transforms"]:
      preds = tab["predictions"][m][t]
      assert all(set(p) <= set(tab["labels"]) for p in preds)
      folds = [
        sum(a == b for a, b in zip(p, tr)) / len(tr)
        for p, tr in zip(preds, truth)
      ]
      assert tab["folds"][m][t] == pytest.approx(folds)
      assert tab["accuracy"][m][t] == pytest.approx(sum(folds) / 3)
      row.append(f"{sum(folds) / 3:.1%}")
    assert f"| {m} | " + " | ".join(row) + " |" in report
  for rule in demo.fingerprint.RULES:
    clean = saved["fingerprinting"][f"C_T curves, {rule} (trained encoder)"]
    assert tab["folds"][f"C_T curve, {rule}"]["clean"] == pytest.approx(
      clean["folds"]
    )
  for name, v in saved["baselines"].items():
    assert tab["folds"][name]["clean"] == pytest.approx(v["folds"])
  assert "## Attribution under post-processing" in report


def _check_selection(saved, report):
  layers = [str(l) for l in saved["layers"]]
  for enc in ("trained", "random"):
    sel = saved["layer_selection"][enc]
    assert sel["kinds"] == list(demo.SELECT_KINDS)
    assert sel["layers"] == layers
    assert set(sel["recommended"].values()) <= set(layers)
    assert sel["alternative"] == "two-sided"
    assert [v["kind"] for v in sel["split"]] == [
      *demo.LOW_LEVEL_KINDS,
      *demo.SEMANTIC_KINDS,
    ]
    assert f"### {enc} encoder" in report
  # Exact copies sit far below the null on every block of the trained one.
  rows = saved["layer_selection"]["trained"]["rows"]
  copy = [r for r in rows if r["kind"] == "copy" and r["layer"] != layers[0]]
  assert all(r["auc"] == 1.0 and r["effect"] > 3 for r in copy)


def _fake_selection(effect, recommended):
  """A Selection stand-in: kinds noise and rotate over 5 layers."""
  effect = np.asarray(effect, float)
  return types.SimpleNamespace(
    kinds=("noise", "rotate"),
    layer_names=("emb", "b1", "b2", "b3", "b4"),
    effect=effect,
    effect_low=effect - 0.5,
    effect_high=effect + 0.5,
    auc=np.full(effect.shape, 0.9),
    recommended_index=np.asarray(recommended),
  )


def test_split_verdict():
  # noise strongest at b1 (early), rotate at b4 (deep): holds, clearly.
  sel = _fake_selection(
    [[np.nan, 5.0, 3.0, 1.0, 1.0], [np.nan, -1.0, -1.0, -2.0, -6.0]], [1, 4]
  )
  noise, rotate = demo.split_verdict(sel)
  assert noise["holds"] and noise["clear"] and noise["expected"] == "early"
  assert noise["best_early"]["layer"] == "b1"
  assert noise["best_deep"]["abs_effect"] == 1.0
  assert rotate["holds"] and rotate["clear"] and rotate["expected"] == "deep"
  assert rotate["best_deep"] == dict(
    layer="b4", abs_effect=6.0, abs_effect_high=6.5, auc=0.9
  )
  # Within the other half's interval: holds, but not clearly; early
  # recommendation for rotate: does not hold.
  sel = _fake_selection(
    [[np.nan, 5.0, 3.0, 4.8, 1.0], [np.nan, 6.0, 1.0, 1.0, 2.0]], [1, 1]
  )
  noise, rotate = demo.split_verdict(sel)
  assert noise["holds"] and not noise["clear"]
  assert not rotate["holds"] and not rotate["clear"]
  assert rotate["recommended_half"] == "early"


def test_held_out_predictions_enrol_clean_runs_only():
  # Items are (label, run, transform) tags; the fit records what it saw and
  # answers the label of the enrolled item with the same run-free tag.
  data = {
    t: {l: [[(l, r, t, b) for b in range(2)] for r in range(3)] for l in "ab"}
    for t in ("clean", "jpeg75")
  }
  seen = []

  def fit(enrolled):
    seen.append(enrolled)
    return lambda item: "a" if item[2] == "jpeg75" else item[0]

  truth, preds = demo.held_out_predictions(fit, data, 3)
  for h, enrolled in enumerate(seen):
    for l, items in enrolled.items():
      assert all(i[0] == l and i[1] != h and i[2] == "clean" for i in items)
      assert len(items) == 4
  assert truth == [["a", "a", "b", "b"]] * 3
  assert demo.fold_accuracy(truth, preds["clean"]) == (1.0, [1.0] * 3)
  assert demo.fold_accuracy(truth, preds["jpeg75"]) == (0.5, [0.5] * 3)


def test_demo_rejects_a_bad_config(tmp_path):
  cfg = demo.PRESETS["digits"]
  for bad, match in (
    (dict(transforms=("jpeg50",)), "start with 'clean'"),
    (dict(transforms=("clean", "blur")), "unknown"),
    (dict(features=("z", "ct")), "start with 'ct'"),
    (dict(features=("ct", "colour")), "unknown feature"),
  ):
    with pytest.raises(ValueError, match=match):
      demo.run(
        "digits",
        out=str(tmp_path / "x"),
        cache_dir=None,
        config=demo.dataclasses.replace(cfg, **bad),
      )
