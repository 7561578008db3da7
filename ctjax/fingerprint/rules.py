"""Similarity rules between C_T curves, and the names of the matching rules.

A matching rule is one similarity and one aggregate:

Similarities (larger is closer), on curves ``a, b`` of L layers:

  "paper"   alpha * cos(a, b) + (1 - alpha) / (1 + ||a - b||_2)  (alpha = 0.5)
  "cosine"  cos(a, b)
  "l2"      1 / (1 + ||a - b||_2): a monotone map of -distance into (0, 1], so
            rankings equal those of the L2 distance and thresholds live on a
            bounded scale

Every similarity reads NaN as 0 (a layer where C_T is undefined carries no
signal), and a zero vector has cosine 0 with everything.

Aggregates (how a query is scored against one label's enrolled curves):

  "nearest"   the similarity to the label's most similar single curve (the
              paper's rule)
  "centroid"  the similarity to the label's mean curve

`RULES` lists every combination by its short name: the similarity alone for
"nearest" ("paper") and with a "-centroid" suffix otherwise ("paper-centroid");
`parse_rule` and `rule_name` convert between the two forms.

Curves are a handful of floats, so this runs in float64 NumPy on the host.
"""

import numpy as np

SIMILARITIES = ("paper", "cosine", "l2")
AGGREGATES = ("nearest", "centroid")
RULES = tuple(
  s if a == "nearest" else f"{s}-{a}" for a in AGGREGATES for s in SIMILARITIES
)


def check_similarity(similarity: str) -> str:
  """Returns ``similarity`` if it is one of `SIMILARITIES`, else raises."""
  if similarity not in SIMILARITIES:
    raise ValueError(
      f"unknown similarity {similarity!r}; choose one of {SIMILARITIES}"
    )
  return similarity


def check_aggregate(aggregate: str) -> str:
  """Returns ``aggregate`` if it is one of `AGGREGATES`, else raises."""
  if aggregate not in AGGREGATES:
    raise ValueError(
      f"unknown aggregate {aggregate!r}; choose one of {AGGREGATES}"
    )
  return aggregate


def rule_name(similarity: str, aggregate: str) -> str:
  """The short name of a rule: "paper", "paper-centroid", ..."""
  check_similarity(similarity)
  check_aggregate(aggregate)
  return similarity if aggregate == "nearest" else f"{similarity}-{aggregate}"


def parse_rule(rule: str) -> tuple[str, str]:
  """(similarity, aggregate) of a rule's short name (see `RULES`)."""
  if rule not in RULES:
    raise ValueError(f"unknown matching rule {rule!r}; choose one of {RULES}")
  similarity, _, aggregate = rule.partition("-")
  return similarity, aggregate or "nearest"


def as_curves(x, name: str) -> np.ndarray:
  """``x`` as float64 ``[n, L]`` (a curve ``[L]`` becomes ``[1, L]``).

  Raises ValueError for another rank or an infinite value (C_T curves are
  finite or NaN).
  """
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


def similarity_matrix(
  a, b=None, *, similarity: str = "paper", alpha: float = 0.5
) -> np.ndarray:
  """Pairwise similarity of curves.

  Args:
    a: curves ``[n, L]`` (or one curve ``[L]``); NaN is read as 0.
    b: curves ``[m, L]``; defaults to ``a`` (the heat map of Figure 6b).
    similarity: one of `SIMILARITIES`.
    alpha: the weight of the cosine term in "paper".

  Returns:
    ``[n, m]`` float64 similarities, larger = closer.
  """
  check_similarity(similarity)
  a = np.nan_to_num(as_curves(a, "a"), nan=0.0)
  b = a if b is None else np.nan_to_num(as_curves(b, "b"), nan=0.0)
  if a.shape[1] != b.shape[1]:
    raise ValueError(
      f"curves of different lengths: {a.shape[1]} vs {b.shape[1]} layers"
    )
  na = np.linalg.norm(a, axis=1)
  nb = np.linalg.norm(b, axis=1)
  denom = na[:, None] * nb[None, :]
  dots = a @ b.T
  cos = np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)
  # Difference form, not ‖a‖²+‖b‖²−2a·b: curves are tiny, and this keeps the
  # distance of a curve to itself exactly 0.
  dist = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
  inv = 1.0 / (1.0 + dist)
  if similarity == "paper":
    return alpha * cos + (1.0 - alpha) * inv
  if similarity == "cosine":
    return cos
  return inv


def similarity(a, b, *, similarity: str = "paper", alpha: float = 0.5):
  """The similarity of two curves ``[L]`` (see `similarity_matrix`)."""
  return float(
    similarity_matrix(a, b, similarity=similarity, alpha=alpha)[0, 0]
  )
