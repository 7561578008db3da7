"""The shipped audit results (benchmarks/results/<data set>/) are what their
per-batch answers say: every number of the transforms table, recomputed."""

import json
import pathlib

import pytest

RESULTS = pathlib.Path(__file__).parents[2] / "benchmarks" / "results"
# Runs whose results hold a transforms table (older ones do not).
RUNS = sorted(
  p.parent.name
  for p in RESULTS.glob("*/results.json")
  if '"transforms"' in p.read_text()
)


@pytest.mark.parametrize("dataset", RUNS)
def test_transforms_table_recomputed_from_predictions(dataset):
  folder = RESULTS / dataset
  saved = json.loads((folder / "results.json").read_text())
  tab = saved["transforms"]
  report = (folder / "report.md").read_text()
  truth = tab["truth"]
  assert tab["transforms"][0] == "clean" and len(truth) == 3
  for method in tab["methods"]:
    cells = []
    for t in tab["transforms"]:
      preds = tab["predictions"][method][t]
      assert len(preds) == len(truth)
      folds = []
      for p, tr in zip(preds, truth):
        assert len(p) == len(tr) and set(p) <= set(tab["labels"])
        folds.append(sum(a == b for a, b in zip(p, tr)) / len(tr))
      assert tab["folds"][method][t] == pytest.approx(folds)
      assert tab["accuracy"][method][t] == pytest.approx(sum(folds) / 3)
      cells.append(f"{sum(folds) / 3:.1%}")
    assert f"| {method} | " + " | ".join(cells) + " |" in report, method


def test_fashion_mnist_is_the_full_preset():
  saved = json.loads((RESULTS / "fashion_mnist" / "results.json").read_text())
  assert saved["config"]["batches_per_run"] == 10  # not --quick
  assert saved["sizes"]["train"] == 60_000
