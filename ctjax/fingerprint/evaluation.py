"""Accuracy of a fingerprint library on labelled query curves."""

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ctjax.fingerprint.library import UNKNOWN, FingerprintLibrary


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """The result of `evaluate`.

  Attributes:
    accuracy: share of queries whose top answer is their true label.
    n_correct: number of such queries.
    n_queries: number of queries.
    per_label_accuracy: true label -> accuracy over its queries.
    confusion: ``[k, k]`` int counts, rows = true label, columns = answer.
    labels: the k labels of the confusion matrix's rows and columns (library
      labels, then unseen query labels, then "unknown" if it was answered).
    top_k_accuracy: k -> share of queries whose true label is among the first
      k answers.
    predictions: the top answer of each query, in order.
  """

  accuracy: float
  n_correct: int
  n_queries: int
  per_label_accuracy: dict
  confusion: np.ndarray
  labels: list
  top_k_accuracy: dict
  predictions: list

  def to_dict(self) -> dict:
    return {
      "accuracy": self.accuracy,
      "n_correct": self.n_correct,
      "n_queries": self.n_queries,
      "per_label_accuracy": dict(self.per_label_accuracy),
      "confusion": self.confusion.tolist(),
      "labels": list(self.labels),
      "top_k_accuracy": {str(k): v for k, v in self.top_k_accuracy.items()},
      "predictions": list(self.predictions),
    }


def evaluate(
  library: FingerprintLibrary,
  queries: Iterable[tuple[str, Any]],
  top_ks: Sequence[int] = (1, 2, 3),
) -> Evaluation:
  """Identifies every query curve and tallies the answers.

  Args:
    library: the enrolled library (its rule and threshold apply).
    queries: (true label, curve ``[L]``) pairs.
    top_ks: the k of the top-k accuracies.

  Returns:
    an `Evaluation`.
  """
  queries = list(queries)
  if not queries:
    raise ValueError("evaluate needs at least one query")
  rankings, truth = [], []
  for j, (label, curve) in enumerate(queries):
    try:
      rankings.append([l for l, _ in library.identify(curve)])
    except ValueError as e:
      raise ValueError(f"query {j} ({label!r}): {e}") from e
    truth.append(label)
  preds = [r[0] for r in rankings]
  labels = list(library.label_set)
  labels += [l for l in dict.fromkeys(truth) if l not in labels]
  if UNKNOWN in preds and UNKNOWN not in labels:
    labels.append(UNKNOWN)
  index = {l: i for i, l in enumerate(labels)}
  confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
  for t, p in zip(truth, preds):
    confusion[index[t], index[p]] += 1
  correct = np.asarray([t == p for t, p in zip(truth, preds)])
  per_label = {
    l: float(np.mean(correct[np.asarray(truth) == l]))
    for l in dict.fromkeys(truth)
  }
  top_k = {
    int(k): float(np.mean([t in r[:k] for t, r in zip(truth, rankings)]))
    for k in top_ks
  }
  return Evaluation(
    float(correct.mean()),
    int(correct.sum()),
    len(queries),
    per_label,
    confusion,
    labels,
    top_k,
    preds,
  )
