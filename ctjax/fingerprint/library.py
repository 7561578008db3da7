"""Generator fingerprints from C_T-vs-layer curves (He et al. 2024, Sec. 5).

A generator's samples are split into batches; every batch gives one C_T curve
(one value per encoder layer) against a fixed reference (train/test embeddings
of the real data). The curves enrolled for known generators form a
`FingerprintLibrary`; a query curve gets the label of the most similar one.

Matching rules (``metric``), all similarities where larger is closer:

  "paper"   alpha * cos(a, b) + (1 - alpha) / (1 + ||a - b||_2)   (alpha=0.5)
  "cosine"  cos(a, b)
  "l2"      1 / (1 + ||a - b||_2)   (a monotone map of -distance into (0, 1],
            so rankings equal those of the plain L2 distance and thresholds
            live on a bounded scale)

With the plain name a query is scored per label by its most similar single
enrolled curve (nearest neighbour, the paper's rule); with the suffix
"-centroid" (e.g. "paper-centroid") by its similarity to the label's mean
curve. Every rule replaces NaN by 0 first (the paper's rule), and a zero
vector has cosine 0 with everything.

Curves are a handful of floats, so the arithmetic here runs in float64 NumPy
on the host; the expensive part (the C_T curves themselves) is the JAX engine's.
"""

import collections
import dataclasses
import json
import math
import os
import re
from typing import Any, NamedTuple
from collections.abc import Iterable, Sequence

import numpy as np

UNKNOWN = "unknown"
FORMAT_NAME = "ctjax.FingerprintLibrary"
FORMAT_VERSION = 1
BASE_METRICS = ("paper", "cosine", "l2")
METRICS = BASE_METRICS + tuple(f"{m}-centroid" for m in BASE_METRICS)


# ----------------------------------------------------------------------------
# Similarities.


def _as_curves(x, name: str) -> np.ndarray:
  """Returns ``x`` as float64 ``[n, L]`` (a 1-D curve becomes ``[1, L]``)."""
  a = np.asarray(x, dtype=np.float64)
  if a.ndim == 1:
    a = a[None]
  if a.ndim != 2:
    raise ValueError(
      f"{name} must be a curve [L] or curves [n, L], got shape {a.shape}"
    )
  if np.isinf(a).any():
    raise ValueError(
      f"{name} holds an infinite value; C_T curves are finite or NaN"
    )
  return a


def _split_metric(metric: str) -> tuple[str, bool]:
  if metric not in METRICS:
    raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
  base, _, kind = metric.partition("-")
  return base, kind == "centroid"


def similarity_matrix(
  a, b=None, *, metric: str = "paper", alpha: float = 0.5
) -> np.ndarray:
  """Pairwise similarity of curves under a base rule.

  Args:
    a: curves ``[n, L]`` (or one curve ``[L]``); NaN is read as 0.
    b: curves ``[m, L]``; defaults to ``a`` (the heat map of Figure 6b).
    metric: "paper", "cosine" or "l2" (a "-centroid" suffix is ignored here:
      this compares curves one to one).
    alpha: the weight of the cosine term in "paper".

  Returns:
    ``[n, m]`` float64 similarities, larger = closer.
  """
  base, _ = _split_metric(metric)
  a = np.nan_to_num(_as_curves(a, "a"), nan=0.0)
  b = a if b is None else np.nan_to_num(_as_curves(b, "b"), nan=0.0)
  if a.shape[1] != b.shape[1]:
    raise ValueError(
      f"curves of different lengths: {a.shape[1]} vs {b.shape[1]} layers"
    )
  na = np.linalg.norm(a, axis=1)
  nb = np.linalg.norm(b, axis=1)
  denom = na[:, None] * nb[None, :]
  dots = a @ b.T
  cos = np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)
  dist = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
  inv = 1.0 / (1.0 + dist)
  if base == "paper":
    return alpha * cos + (1.0 - alpha) * inv
  if base == "cosine":
    return cos
  return inv


def similarity(a, b, *, metric: str = "paper", alpha: float = 0.5) -> float:
  """The similarity of two curves ``[L]`` (see `similarity_matrix`)."""
  return float(similarity_matrix(a, b, metric=metric, alpha=alpha)[0, 0])


# ----------------------------------------------------------------------------
# Reference identity.


def reference_identity(reference) -> dict | None:
  """The JSON-normalised identity dict of a CTReference (or of a dict)."""
  if reference is None:
    return None
  ident = reference if isinstance(reference, dict) else reference.identity()
  if not isinstance(ident, dict):
    raise ValueError(
      f"reference.identity() returned {type(ident).__name__}, expected a dict"
    )
  # Tuples become lists and numpy scalars plain numbers, so an identity read
  # back from a saved library compares equal to the live one.
  return json.loads(json.dumps(ident, default=_json_default))


def _json_default(x):
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, np.generic):
    return x.item()
  raise TypeError(f"cannot store {type(x).__name__} in JSON")


def _identity_mismatch(mine: dict, theirs: dict) -> str | None:
  if mine == theirs:
    return None
  keys = sorted(set(mine) | set(theirs))
  diff = [k for k in keys if mine.get(k) != theirs.get(k)]
  parts = [f"{k}: {mine.get(k)!r} vs {theirs.get(k)!r}" for k in diff[:6]]
  return "; ".join(parts)


# ----------------------------------------------------------------------------
# Batches -> curves.


def batch_curves(
  gen_embeddings, reference, batch_size: int = 500
) -> np.ndarray:
  """C_T curves of consecutive batches of one generator's samples.

  The samples are cut into ``M // batch_size`` full batches in order; a short
  remainder (``M % batch_size`` samples) is DROPPED, so that every curve is
  computed on the same number of samples (C_T's spread depends on it).

  Args:
    gen_embeddings: ``[L, M, D]`` embeddings of M generated samples.
    reference: a fitted reference with ``.score(batch [L, b, D]).ct -> [L]``.
    batch_size: samples per batch (the paper uses 500).

  Returns:
    ``[M // batch_size, L]`` float64 curves.
  """
  shape = np.shape(gen_embeddings)
  if len(shape) != 3:
    raise ValueError(f"gen_embeddings must be [L, M, D], got shape {shape}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  n_layers, m, _ = shape
  n_batches = m // batch_size
  if n_batches == 0:
    raise ValueError(
      f"gen_embeddings holds {m} samples, fewer than one batch "
      f"of batch_size={batch_size}"
    )
  curves = []
  for i in range(n_batches):
    batch = gen_embeddings[:, i * batch_size : (i + 1) * batch_size, :]
    ct = np.asarray(reference.score(batch).ct, dtype=np.float64)
    if ct.shape != (n_layers,):
      raise ValueError(
        f"reference.score returned a curve of shape {ct.shape} "
        f"for batch {i}, expected ({n_layers},)"
      )
    curves.append(ct)
  return np.stack(curves)


# ----------------------------------------------------------------------------
# The library.


@dataclasses.dataclass(frozen=True)
class Calibration:
  """The result of `FingerprintLibrary.calibrate_threshold`.

  Attributes:
    threshold: queries whose best similarity is below it answer "unknown".
    target_false_accept_rate: the rate asked for.
    false_accept_rate: the leave-one-family-out impostor rate it achieves.
    false_reject_rate: the leave-one-curve-out rate of enrolled curves
      rejected (NaN when no label holds two curves).
    impostor_scores: ``[n]`` best similarity of each enrolled curve to the
      OTHER labels.
    genuine_scores: ``[g]`` similarity of each enrolled curve to its own label
      with the curve itself left out.
  """

  threshold: float
  target_false_accept_rate: float
  false_accept_rate: float
  false_reject_rate: float
  impostor_scores: np.ndarray
  genuine_scores: np.ndarray


class FingerprintLibrary:
  """Enrolled C_T curves of known generators, and the rules to match them.

  Attributes:
    metric: one of `METRICS`.
    alpha: cosine weight of the "paper" rule.
    reference: the identity dict of the reference the curves were computed
      against (None until one is known; then curves from another reference are
      refused).
    threshold: open-set threshold (None = closed set: always answer a label).
    labels: the label of each enrolled curve, in order of enrolment.
    curves: ``[n, L]`` enrolled curves as given (NaN kept).
  """

  def __init__(
    self,
    metric: str = "paper",
    alpha: float = 0.5,
    reference=None,
    threshold: float | None = None,
  ):
    _split_metric(metric)
    if not 0.0 <= alpha <= 1.0:
      raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    self.metric = metric
    self.alpha = float(alpha)
    self.reference = reference_identity(reference)
    self.threshold = None if threshold is None else float(threshold)
    self.labels: list[str] = []
    self._curves: list[np.ndarray] = []
    self._centroid_cache = None

  # -- enrolment -------------------------------------------------------------

  @property
  def curves(self) -> np.ndarray:
    if not self._curves:
      return np.zeros((0, 0))
    return np.stack(self._curves)

  @property
  def n_layers(self) -> int | None:
    return len(self._curves[0]) if self._curves else None

  @property
  def label_set(self) -> list[str]:
    """Distinct labels in order of first enrolment."""
    return list(dict.fromkeys(self.labels))

  def __len__(self) -> int:
    return len(self._curves)

  def by_label(self) -> dict:
    """label -> its enrolled curves ``[n_label, L]`` (e.g. for plotting)."""
    lab = np.asarray(self.labels)
    return {l: self.curves[lab == l] for l in self.label_set}

  def check_reference(self, reference) -> None:
    """Raises ValueError unless ``reference`` matches the library's.

    A library with no reference yet adopts the given one.
    """
    ident = reference_identity(reference)
    if ident is None:
      return
    if self.reference is None:
      self.reference = ident
      return
    diff = _identity_mismatch(self.reference, ident)
    if diff is not None:
      raise ValueError(
        "curves from a different C_T reference than the "
        f"library's (library vs given: {diff}); refit or load "
        "the library's reference"
      )

  def _check_curve(self, curve, name: str) -> np.ndarray:
    c = np.asarray(curve, dtype=np.float64)
    if c.ndim != 1 or c.size == 0:
      raise ValueError(
        f"{name} must be a non-empty 1-D curve [L], got shape {c.shape}"
      )
    if np.isinf(c).any():
      raise ValueError(f"{name} holds an infinite value")
    if self.n_layers is not None and c.size != self.n_layers:
      raise ValueError(
        f"{name} has {c.size} layers but the library's curves "
        f"have {self.n_layers}; curves from a different layer "
        "set cannot be compared"
      )
    return c

  def add(self, label: str, curve, reference=None) -> None:
    """Enrols one curve ``[L]`` (NaN allowed) under ``label``."""
    if not isinstance(label, str) or not label:
      raise ValueError(f"label must be a non-empty string, got {label!r}")
    if label == UNKNOWN:
      raise ValueError(f"{UNKNOWN!r} is reserved for open-set rejections")
    c = self._check_curve(curve, f"curve for {label!r}")
    self.check_reference(reference)
    self.labels.append(label)
    self._curves.append(c.copy())
    self._centroid_cache = None

  def add_batches(
    self, label: str, gen_embeddings, reference, batch_size: int = 500
  ) -> np.ndarray:
    """Enrols the curves of a generator's samples, one per batch.

    Args:
      label: the generator's label.
      gen_embeddings: ``[L, M, D]`` embeddings of its samples.
      reference: the fitted CTReference (``.score``, ``.identity``).
      batch_size: samples per batch; a short remainder is dropped (see
        `batch_curves`).

    Returns:
      ``[M // batch_size, L]`` the curves enrolled.
    """
    self.check_reference(reference)
    curves = batch_curves(gen_embeddings, reference, batch_size)
    for c in curves:
      self.add(label, c)
    return curves

  # -- matching --------------------------------------------------------------

  def _centroids(self) -> tuple[list[str], np.ndarray]:
    cache = self._centroid_cache
    if cache is None:
      labels = self.label_set
      x = np.nan_to_num(self.curves, nan=0.0)
      lab = np.asarray(self.labels)
      cache = labels, np.stack([x[lab == l].mean(axis=0) for l in labels])
      self._centroid_cache = cache
    return cache

  def label_scores(self, curves) -> tuple[list[str], np.ndarray]:
    """Per-label similarity of query curves, under the library's rule.

    Args:
      curves: ``[q, L]`` (or ``[L]``) query curves.

    Returns:
      (labels, scores ``[q, n_labels]``) with labels in enrolment order.
    """
    if not self._curves:
      raise ValueError("the fingerprint library is empty; enrol curves first")
    q = _as_curves(curves, "query curves")
    if q.shape[1] != self.n_layers:
      raise ValueError(
        f"query curves have {q.shape[1]} layers but the "
        f"library's curves have {self.n_layers}; curves from a "
        "different layer set cannot be compared"
      )
    base, centroid = _split_metric(self.metric)
    if centroid:
      labels, cents = self._centroids()
      return labels, similarity_matrix(q, cents, metric=base, alpha=self.alpha)
    sims = similarity_matrix(q, self.curves, metric=base, alpha=self.alpha)
    labels = self.label_set
    lab = np.asarray(self.labels)
    scores = np.stack([sims[:, lab == l].max(axis=1) for l in labels], axis=1)
    return labels, scores

  def identify(
    self, curve, top_k: int | None = None, reference=None
  ) -> list[tuple[str, float]]:
    """Ranks the enrolled labels for one query curve ``[L]``.

    Returns:
      [(label, score)] best first (ties keep enrolment order), at most
      ``top_k`` entries. With a threshold set and the best score below it, the
      first entry is ("unknown", best score) followed by the ranked labels.
    """
    if reference is not None:
      self.check_reference(reference)
    c = self._check_curve(curve, "query curve")
    labels, scores = self.label_scores(c)
    scores = scores[0]
    order = np.argsort(-scores, kind="stable")
    ranked = [(labels[i], float(scores[i])) for i in order]
    if self.threshold is not None and ranked[0][1] < self.threshold:
      ranked.insert(0, (UNKNOWN, ranked[0][1]))
    return ranked if top_k is None else ranked[:top_k]

  def identify_set(
    self, curves, reference=None
  ) -> list[tuple[str, float, float]]:
    """Majority vote over several query curves of one generator.

    Each curve ``[L]`` of ``curves [q, L]`` votes for its top answer (which
    may be "unknown" when a threshold is set).

    Returns:
      [(label, vote share, mean top score of its votes)] best first: most
      votes, ties broken by the higher mean score.
    """
    q = _as_curves(curves, "query curves")
    if q.shape[0] == 0:
      raise ValueError("identify_set needs at least one query curve")
    tally = collections.defaultdict(list)
    for c in q:
      label, score = self.identify(c, top_k=1, reference=reference)[0]
      tally[label].append(score)
    rows = [(l, len(s) / len(q), float(np.mean(s))) for l, s in tally.items()]
    return sorted(rows, key=lambda r: (-r[1], -r[2]))

  def identify_batches(
    self, gen_embeddings, reference, batch_size: int = 500
  ) -> list[tuple[str, float, float]]:
    """`identify_set` on the batch curves of ``gen_embeddings [L, M, D]``."""
    self.check_reference(reference)
    return self.identify_set(
      batch_curves(gen_embeddings, reference, batch_size)
    )

  # -- open set --------------------------------------------------------------

  def loo_scores(self) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out impostor and genuine scores of the enrolled curves.

    Impostor: curve i against the library with ALL curves of its label
    removed (its family plays an unseen generator), i.e. its best score over
    the other labels. Genuine: curve i against its own label with only curve
    i removed (only for labels holding at least two curves).

    Returns:
      (impostor ``[n]``, genuine ``[g]``).
    """
    if len(self.label_set) < 2:
      raise ValueError(
        "calibrating an open-set threshold needs curves of at least two labels"
      )
    base, centroid = _split_metric(self.metric)
    x = np.nan_to_num(self.curves, nan=0.0)
    lab = np.asarray(self.labels)
    labels = self.label_set
    impostor, genuine = [], []
    if centroid:
      _, cents = self._centroids()
      sims = similarity_matrix(x, cents, metric=base, alpha=self.alpha)
      for i in range(len(x)):
        own = labels.index(lab[i])
        impostor.append(np.delete(sims[i], own).max())
        others = np.flatnonzero(lab == lab[i])
        others = others[others != i]
        if others.size:
          loo = x[others].mean(axis=0)
          genuine.append(similarity(x[i], loo, metric=base, alpha=self.alpha))
    else:
      sims = similarity_matrix(x, metric=base, alpha=self.alpha)
      for i in range(len(x)):
        same = lab == lab[i]
        impostor.append(sims[i, ~same].max())
        same[i] = False
        if same.any():
          genuine.append(sims[i, same].max())
    return np.asarray(impostor), np.asarray(genuine)

  def calibrate_threshold(self, false_accept_rate: float) -> Calibration:
    """Sets the open-set threshold for a chosen false-accept rate.

    The threshold is the smallest value that accepts at most
    ``floor(false_accept_rate * n)`` of the n leave-one-family-out impostor
    scores (see `loo_scores`); queries scoring below it answer "unknown".

    Returns:
      the `Calibration` (the threshold is also stored on the library).
    """
    if not 0.0 <= false_accept_rate <= 1.0:
      raise ValueError(
        f"false_accept_rate must lie in [0, 1], got {false_accept_rate}"
      )
    impostor, genuine = self.loo_scores()
    s = np.sort(impostor)[::-1]
    k = int(math.floor(false_accept_rate * len(s) + 1e-9))
    if k >= len(s):
      threshold = -math.inf
    else:
      # Strictly above the (k+1)-th largest impostor score: at most k accepted.
      threshold = float(np.nextafter(s[k], math.inf))
    self.threshold = threshold
    far = float(np.mean(impostor >= threshold))
    frr = float(np.mean(genuine < threshold)) if genuine.size else math.nan
    return Calibration(
      threshold, float(false_accept_rate), far, frr, impostor, genuine
    )

  # -- persistence -----------------------------------------------------------

  def to_dict(self) -> dict:
    """The JSON-able form written by `save` (NaN stored as null)."""
    return {
      "format": FORMAT_NAME,
      "version": FORMAT_VERSION,
      "metric": self.metric,
      "alpha": self.alpha,
      "threshold": (
        None
        if self.threshold is None or not math.isfinite(self.threshold)
        else self.threshold
      ),
      "threshold_is_neg_inf": self.threshold == -math.inf,
      "n_layers": self.n_layers,
      "reference": self.reference,
      "curves": [
        {"label": l, "curve": [None if math.isnan(v) else float(v) for v in c]}
        for l, c in zip(self.labels, self._curves)
      ],
    }

  @classmethod
  def from_dict(cls, d: dict, source: str = "dict") -> "FingerprintLibrary":
    if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
      raise ValueError(
        f"{source} is not a ctjax fingerprint library (field "
        f"'format' should be {FORMAT_NAME!r})"
      )
    if d.get("version") != FORMAT_VERSION:
      raise ValueError(
        f"{source} has fingerprint library version "
        f"{d.get('version')!r}; this ctjax reads version "
        f"{FORMAT_VERSION}"
      )
    for field in ("metric", "alpha", "curves"):
      if field not in d:
        raise ValueError(f"{source} lacks the field {field!r}")
    threshold = d.get("threshold")
    if d.get("threshold_is_neg_inf"):
      threshold = -math.inf
    lib = cls(
      metric=d["metric"],
      alpha=d["alpha"],
      reference=d.get("reference"),
      threshold=threshold,
    )
    for j, entry in enumerate(d["curves"]):
      try:
        curve = [math.nan if v is None else float(v) for v in entry["curve"]]
        lib.add(entry["label"], curve)
      except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{source}: curve entry {j} is malformed ({e})") from e
    return lib

  def save(self, path) -> str:
    """Writes the library as versioned, indented JSON (atomically)."""
    from ctjax import report  # pylint: disable=g-import-not-at-top

    return report.write_json(self.to_dict(), path)

  @classmethod
  def load(cls, path) -> "FingerprintLibrary":
    path = os.fspath(path)
    if not os.path.exists(path):
      raise ValueError(f"fingerprint library file {path} does not exist")
    try:
      with open(path) as f:
        d = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(
        f"fingerprint library file {path} is not JSON ({e})"
      ) from e
    return cls.from_dict(d, source=path)

  def __repr__(self) -> str:
    return (
      f"FingerprintLibrary(metric={self.metric!r}, alpha={self.alpha}, "
      f"n_curves={len(self)}, labels={self.label_set}, "
      f"n_layers={self.n_layers}, threshold={self.threshold})"
    )


# ----------------------------------------------------------------------------
# Evaluation.


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
    library: the enrolled library (its metric and threshold apply).
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


# ----------------------------------------------------------------------------
# The authors' curve files.


class CurveFile(NamedTuple):
  """Curves read from one of the authors' text files.

  Attributes:
    enrolled: [(label, curve [L])] from ``*_train_batch`` lines.
    queries: [(label, curve [L])] from ``*_test_batch`` lines.
  """

  enrolled: list
  queries: list


_LINE = re.compile(r"^\s*([^:\s]+)\s*:\s*\[(.*)\]\s*$")


def read_curve_file(path) -> CurveFile:
  """Reads the authors' format: ``ARCH_train_batch: [v0, v1, ...]`` a line.

  The label is the text before the first ``_``; ``train`` lines are enrolled
  curves and ``test`` lines queries. Values may be ``nan``. Values are kept as
  written (no NaN replacement, nothing dropped).
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise ValueError(f"curve file {path} does not exist")
  enrolled, queries = [], []
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      m = _LINE.match(line)
      if m is None:
        raise ValueError(f"{path}:{lineno}: expected 'NAME: [v0, v1, ...]'")
      key, body = m.groups()
      label, _, role = key.partition("_")
      if not label:
        raise ValueError(f"{path}:{lineno}: empty label in {key!r}")
      try:
        curve = np.array([float(v) for v in body.split(",")], dtype=np.float64)
      except ValueError as e:
        raise ValueError(f"{path}:{lineno}: bad value ({e})") from e
      if role.startswith("train"):
        enrolled.append((label, curve))
      elif role.startswith("test"):
        queries.append((label, curve))
      else:
        raise ValueError(
          f"{path}:{lineno}: {key!r} is neither a *_train_* "
          "nor a *_test_* curve"
        )
  lengths = {len(c) for _, c in enrolled + queries}
  if len(lengths) > 1:
    raise ValueError(f"{path}: curves of different lengths {sorted(lengths)}")
  if not enrolled or not queries:
    raise ValueError(
      f"{path}: needs both train (enrolled) and test (query) curves"
    )
  return CurveFile(enrolled, queries)


def evaluate_curve_file(
  path, *, drop_first: int = 1, metric: str = "paper", alpha: float = 0.5
) -> tuple[FingerprintLibrary, Evaluation]:
  """The authors' rule on one of their files: drop the first ``drop_first``
  values of every curve, NaN -> 0, nearest enrolled curve by ``metric``.

  Returns:
    (the library of the file's train curves, the evaluation of its test ones).
  """
  data = read_curve_file(path)
  lib = FingerprintLibrary(metric=metric, alpha=alpha)
  for label, curve in data.enrolled:
    lib.add(label, curve[drop_first:])
  queries = [(label, curve[drop_first:]) for label, curve in data.queries]
  return lib, evaluate(lib, queries)
