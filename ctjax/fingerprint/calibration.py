"""Open-set calibration: the similarity below which a query is "unknown".

Scores come from leave-one-out runs over the enrolled curves themselves:

- impostor score of curve i: its best score against the library with every
  curve of its own label removed, i.e. how an unseen generator would score;
- genuine score of curve i: its score against its own label with only curve i
  removed (for labels holding at least two curves).

The threshold for a target false-accept rate r is the smallest value that
accepts at most ``floor(r * n)`` of the n impostor scores.
"""

import dataclasses
import math

import numpy as np

from ctjax.fingerprint.rules import similarity_matrix


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


def loo_scores(
  curves, labels, *, similarity: str, aggregate: str, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
  """Leave-one-out impostor and genuine scores (see the module docstring).

  Args:
    curves: ``[n, L]`` enrolled curves (NaN is read as 0).
    labels: ``[n]`` their labels; at least two distinct ones.
    similarity, aggregate, alpha: the matching rule.

  Returns:
    (impostor ``[n]``, genuine ``[g]``), g = the number of curves whose label
    holds at least two curves.
  """
  lab = np.asarray(labels)
  names = list(dict.fromkeys(labels))
  if len(names) < 2:
    raise ValueError(
      "calibrating an open-set threshold needs curves of at least two labels"
    )
  x = np.nan_to_num(np.asarray(curves, dtype=np.float64), nan=0.0)
  rule = dict(similarity=similarity, alpha=alpha)
  impostor, genuine = [], []
  if aggregate == "centroid":
    cents = np.stack([x[lab == l].mean(axis=0) for l in names])
    sims = similarity_matrix(x, cents, **rule)
    for i in range(len(x)):
      own = names.index(lab[i])
      impostor.append(np.delete(sims[i], own).max())
      others = np.flatnonzero(lab == lab[i])
      others = others[others != i]
      if others.size:
        loo = x[others].mean(axis=0)
        genuine.append(similarity_matrix(x[i], loo, **rule)[0, 0])
  else:
    sims = similarity_matrix(x, **rule)
    for i in range(len(x)):
      same = lab == lab[i]
      impostor.append(sims[i, ~same].max())
      same[i] = False
      if same.any():
        genuine.append(sims[i, same].max())
  return np.asarray(impostor), np.asarray(genuine)


def calibrate(impostor, genuine, false_accept_rate: float) -> Calibration:
  """The threshold accepting at most ``floor(rate * n)`` impostor scores.

  Args:
    impostor: ``[n]`` impostor scores.
    genuine: ``[g]`` genuine scores (for the false-reject rate).
    false_accept_rate: the target rate in [0, 1].

  Returns:
    a `Calibration`.
  """
  if not 0.0 <= false_accept_rate <= 1.0:
    raise ValueError(
      f"false_accept_rate must lie in [0, 1], got {false_accept_rate}"
    )
  impostor = np.asarray(impostor, dtype=np.float64)
  genuine = np.asarray(genuine, dtype=np.float64)
  s = np.sort(impostor)[::-1]
  # The tolerance keeps e.g. 0.1 * 120 from flooring to 11.
  k = int(math.floor(false_accept_rate * len(s) + 1e-9))
  if k >= len(s):
    threshold = -math.inf
  else:
    # Strictly above the (k+1)-th largest impostor score: at most k accepted.
    threshold = float(np.nextafter(s[k], math.inf))
  far = float(np.mean(impostor >= threshold))
  frr = float(np.mean(genuine < threshold)) if genuine.size else math.nan
  return Calibration(
    threshold, float(false_accept_rate), far, frr, impostor, genuine
  )
