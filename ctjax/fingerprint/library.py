"""The enrolment library: C_T curves of known generators, and matching.

A generator's samples are cut into batches; every batch gives one C_T curve
(one value per encoder layer) against a fixed reference (train/test embeddings
of the real data; see docs/method.md). The curves enrolled for known
generators form a `FingerprintLibrary`; a query curve gets the label that
scores best under the library's rule (a similarity and an aggregate, see
`ctjax.fingerprint.rules`). An open-set threshold (see
`ctjax.fingerprint.calibration`) turns low scores into "unknown".

Files: `FingerprintLibrary.save` writes versioned, indented JSON (NaN as null)
through `ctjax.storage`; `load` reads the current version (2) and version 1,
whose single ``metric`` field named the rule ("paper-centroid").
"""

import collections
import hashlib
import json
import math
import os
import warnings

import numpy as np

from ctjax import storage
from ctjax.fingerprint import calibration
from ctjax.fingerprint.rules import (
  as_curves,
  check_aggregate,
  check_similarity,
  parse_rule,
  rule_name,
  similarity_matrix,
)

UNKNOWN = "unknown"
FORMAT_NAME = "ctjax.FingerprintLibrary"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


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
  return json.loads(storage.json_text(ident, indent=None))


def _identity_mismatch(mine: dict, theirs: dict) -> str | None:
  if mine == theirs:
    return None
  keys = sorted(set(mine) | set(theirs))
  diff = [k for k in keys if mine.get(k) != theirs.get(k)]
  parts = [f"{k}: {mine.get(k)!r} vs {theirs.get(k)!r}" for k in diff[:6]]
  return "; ".join(parts)


def _checksum(d: dict) -> str:
  """sha256 (first 16 hex digits) of the canonical JSON of a library dict."""
  text = storage.json_text(d, indent=None, sort_keys=True)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ----------------------------------------------------------------------------
# Batches -> curves.


def batch_curves(
  gen_embeddings, reference, batch_size: int = 500, tau: float | None = None
) -> np.ndarray:
  """C_T curves of consecutive batches of one generator's samples.

  The samples are cut into ``M // batch_size`` full batches in order; a short
  remainder (``M % batch_size`` samples) is DROPPED, so that every curve is
  computed on the same number of samples (C_T's spread depends on it).

  Args:
    gen_embeddings: ``[L, M, D]`` embeddings of M generated samples, or the
      list form of layers of different widths: L arrays ``[M, D_l]``.
    reference: a fitted reference with ``.score(batch [L, b, D]).ct -> [L]``
      (a list of ``[b, D_l]`` in the list form).
    batch_size: samples per batch (the paper uses 500).
    tau: the threshold passed to ``reference.score`` (None: its default,
      20 / batch_size).

  Returns:
    ``[M // batch_size, L]`` float64 curves.
  """
  if isinstance(gen_embeddings, (list, tuple)):
    shapes = [np.shape(x) for x in gen_embeddings]
    if not shapes or any(len(s) != 2 for s in shapes):
      raise ValueError(
        "gen_embeddings as a list must hold L arrays [M, D_l], got shapes "
        f"{shapes}"
      )
    if len({s[0] for s in shapes}) > 1:
      raise ValueError(
        f"gen_embeddings' layers hold different sample counts: {shapes}"
      )
    n_layers, m = len(shapes), shapes[0][0]

    def take(lo, hi):
      return [x[lo:hi] for x in gen_embeddings]

  else:
    shape = np.shape(gen_embeddings)
    if len(shape) != 3:
      raise ValueError(f"gen_embeddings must be [L, M, D], got shape {shape}")
    n_layers, m, _ = shape

    def take(lo, hi):
      return gen_embeddings[:, lo:hi, :]

  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  n_batches = m // batch_size
  if n_batches == 0:
    raise ValueError(
      f"gen_embeddings holds {m} samples, fewer than one batch "
      f"of batch_size={batch_size}"
    )
  curves = []
  for i in range(n_batches):
    batch = take(i * batch_size, (i + 1) * batch_size)
    res = (
      reference.score(batch) if tau is None else reference.score(batch, tau=tau)
    )
    ct = np.asarray(res.ct, dtype=np.float64)
    if ct.shape != (n_layers,):
      raise ValueError(
        f"reference.score returned a curve of shape {ct.shape} "
        f"for batch {i}, expected ({n_layers},)"
      )
    curves.append(ct)
  return np.stack(curves)


# ----------------------------------------------------------------------------
# The library.


class FingerprintLibrary:
  """Enrolled C_T curves of known generators, and the rule to match them.

  Attributes:
    similarity: one of `SIMILARITIES` ("paper", "cosine", "l2").
    aggregate: one of `AGGREGATES` ("nearest", "centroid").
    alpha: cosine weight of the "paper" similarity.
    reference: the identity dict of the reference the curves were computed
      against (None until one is known; then curves from another reference are
      refused).
    threshold: open-set threshold (None = closed set: always answer a label).
    labels: the label of each enrolled curve, in order of enrolment.
    curves: ``[n, L]`` enrolled curves as given (NaN kept).
  """

  def __init__(
    self,
    similarity: str = "paper",
    aggregate: str = "nearest",
    alpha: float = 0.5,
    reference=None,
    threshold: float | None = None,
    *,
    metric: str | None = None,
  ):
    if metric is not None:
      warnings.warn(
        "FingerprintLibrary(metric=...) is deprecated; pass similarity= and "
        "aggregate= (e.g. metric='paper-centroid' is similarity='paper', "
        "aggregate='centroid')",
        DeprecationWarning,
        stacklevel=2,
      )
      similarity, aggregate = parse_rule(metric)
    if not 0.0 <= alpha <= 1.0:
      raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    self.similarity = check_similarity(similarity)
    self.aggregate = check_aggregate(aggregate)
    self.alpha = float(alpha)
    self.reference = reference_identity(reference)
    self.threshold = None if threshold is None else float(threshold)
    self.labels: list[str] = []
    self._curves: list[np.ndarray] = []
    self._centroid_cache = None

  @property
  def rule(self) -> str:
    """The rule's short name ("paper", "l2-centroid", ...; see `RULES`)."""
    return rule_name(self.similarity, self.aggregate)

  @property
  def metric(self) -> str:
    """Deprecated name of `rule`."""
    return self.rule

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
    self,
    label: str,
    gen_embeddings,
    reference,
    batch_size: int = 500,
    tau: float | None = None,
  ) -> np.ndarray:
    """Enrols the curves of a generator's samples, one per batch.

    Args:
      label: the generator's label.
      gen_embeddings: ``[L, M, D]`` embeddings of its samples (or L arrays
        ``[M, D_l]``, see `batch_curves`).
      reference: the fitted CTReference (``.score``, ``.identity``).
      batch_size: samples per batch; a short remainder is dropped (see
        `batch_curves`).
      tau: the C_T threshold (None: the reference's default, 20/batch_size).

    Returns:
      ``[M // batch_size, L]`` the curves enrolled.
    """
    self.check_reference(reference)
    curves = batch_curves(gen_embeddings, reference, batch_size, tau=tau)
    for c in curves:
      self.add(label, c)
    return curves

  # -- matching --------------------------------------------------------------

  def centroids(self) -> tuple[list[str], np.ndarray]:
    """(labels in enrolment order, their mean curves ``[k, L]``, NaN as 0)."""
    cache = self._centroid_cache
    if cache is None:
      labels = self.label_set
      x = np.nan_to_num(self.curves, nan=0.0)
      lab = np.asarray(self.labels)
      cache = labels, np.stack([x[lab == l].mean(axis=0) for l in labels])
      self._centroid_cache = cache
    return cache

  def label_scores(self, curves) -> tuple[list[str], np.ndarray]:
    """Per-label score of query curves, under the library's rule.

    Args:
      curves: ``[q, L]`` (or ``[L]``) query curves.

    Returns:
      (labels, scores ``[q, n_labels]``) with labels in enrolment order.
    """
    if not self._curves:
      raise ValueError("the fingerprint library is empty; enrol curves first")
    q = as_curves(curves, "query curves")
    if q.shape[1] != self.n_layers:
      raise ValueError(
        f"query curves have {q.shape[1]} layers but the "
        f"library's curves have {self.n_layers}; curves from a "
        "different layer set cannot be compared"
      )
    rule = dict(similarity=self.similarity, alpha=self.alpha)
    if self.aggregate == "centroid":
      labels, cents = self.centroids()
      return labels, similarity_matrix(q, cents, **rule)
    sims = similarity_matrix(q, self.curves, **rule)
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
    q = as_curves(curves, "query curves")
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
    """`identify_set` on the batch curves of ``gen_embeddings [L, M, D]``
    (or L arrays ``[M, D_l]``, see `batch_curves`)."""
    self.check_reference(reference)
    return self.identify_set(
      batch_curves(gen_embeddings, reference, batch_size)
    )

  # -- open set --------------------------------------------------------------

  def loo_scores(self) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out (impostor ``[n]``, genuine ``[g]``) scores of the
    enrolled curves (see `ctjax.fingerprint.calibration`)."""
    return calibration.loo_scores(
      self.curves,
      self.labels,
      similarity=self.similarity,
      aggregate=self.aggregate,
      alpha=self.alpha,
    )

  def calibrate_threshold(
    self, false_accept_rate: float
  ) -> calibration.Calibration:
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
    cal = calibration.calibrate(impostor, genuine, false_accept_rate)
    self.threshold = cal.threshold
    return cal

  # -- persistence -----------------------------------------------------------

  def to_dict(self) -> dict:
    """The JSON-able form written by `save` (NaN stored as null)."""
    return {
      "format": FORMAT_NAME,
      "version": FORMAT_VERSION,
      "similarity": self.similarity,
      "aggregate": self.aggregate,
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
    """A library from `to_dict`'s form (version 2) or version 1's."""
    if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
      raise ValueError(
        f"{source} is not a ctjax fingerprint library (field "
        f"'format' should be {FORMAT_NAME!r})"
      )
    version = d.get("version")
    if version not in READABLE_VERSIONS:
      raise ValueError(
        f"{source} has fingerprint library version {version!r}; this ctjax "
        f"reads versions {', '.join(map(str, READABLE_VERSIONS))}"
      )
    rule_fields = ("metric",) if version == 1 else ("similarity", "aggregate")
    for field in (*rule_fields, "alpha", "curves"):
      if field not in d:
        raise ValueError(f"{source} lacks the field {field!r}")
    if version == 1:
      similarity, aggregate = parse_rule(d["metric"])
    else:
      similarity, aggregate = d["similarity"], d["aggregate"]
    threshold = d.get("threshold")
    if d.get("threshold_is_neg_inf"):
      threshold = -math.inf
    lib = cls(
      similarity=similarity,
      aggregate=aggregate,
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
    """Writes the library as versioned, indented JSON (atomically).

    The file carries a ``checksum`` of its content, so a damaged or edited
    file is refused by `load` rather than read as different curves.
    """
    d = self.to_dict()
    d["checksum"] = _checksum(d)
    return storage.write_json(d, path)

  def duplicates(self, label: str, curves) -> list[int]:
    """Indices of ``curves`` ``[n, L]`` already enrolled under ``label``."""
    mine = [c for l, c in zip(self.labels, self._curves) if l == label]
    return [
      i
      for i, c in enumerate(np.asarray(curves, np.float64))
      if any(
        m.shape == c.shape and np.array_equal(m, c, equal_nan=True)
        for m in mine
      )
    ]

  @classmethod
  def load(cls, path) -> "FingerprintLibrary":
    """Reads a file written by `save` (or by a ctjax writing version 1)."""
    path = os.fspath(path)
    if not os.path.exists(path):
      raise ValueError(f"fingerprint library file {path} does not exist")
    if os.path.isdir(path):
      raise ValueError(f"fingerprint library {path} is a folder, not a file")
    try:
      with open(path, encoding="utf-8") as f:
        d = json.load(f)
    except UnicodeDecodeError as e:
      raise ValueError(
        f"fingerprint library file {path} is not UTF-8 text ({e})"
      ) from e
    except json.JSONDecodeError as e:
      raise ValueError(
        f"fingerprint library file {path} is not JSON ({e})"
      ) from e
    if isinstance(d, dict) and "checksum" in d:
      stored = d.pop("checksum")
      if stored != _checksum(d):
        raise ValueError(
          f"fingerprint library file {path} is damaged or was edited "
          "(checksum mismatch)"
        )
    try:
      return cls.from_dict(d, source=path)
    except (TypeError, AttributeError, KeyError) as e:
      raise ValueError(
        f"fingerprint library file {path} has a malformed field "
        f"({type(e).__name__}: {e})"
      ) from e

  def __repr__(self) -> str:
    return (
      f"FingerprintLibrary(similarity={self.similarity!r}, "
      f"aggregate={self.aggregate!r}, alpha={self.alpha}, "
      f"n_curves={len(self)}, labels={self.label_set}, "
      f"n_layers={self.n_layers}, threshold={self.threshold})"
    )
