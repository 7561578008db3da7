"""Richer fingerprints: more of a C_T score than the curve of C_T values.

Scoring one generated batch against a `CTReference` computes, per layer,
more than the scalar C_T: each k-means cell's Z_U, the batch's share of each
cell, and each generated point's distance L(q) to its nearest training point
in its cell (the test points' L(p) are fixed at fit time). Any of these, laid
out as one vector per batch, is a fingerprint the rules of
`ctjax.fingerprint.rules` can match (they take vectors of any length; NaN is
read as 0). Feature kinds (`FEATURES`), for L layers, k cells and Q quantile
levels:

  "ct"         ``[L]`` the C_T curve: the paper's fingerprint.
  "z"          ``[L * k]`` the Z_U of every cell of every layer, layer-major
               (NaN where a cell holds no generated point).
  "occupancy"  ``[L * k]`` the batch's share m_π / m of every cell.
  "dist"       ``[L * Q]`` where the batch's distances fall among the test
               set's: ``F_P(quantile_q(L(Q)))`` for every level q of
               `QUANTILES`, with ``F_P(x) = #{p : L(p) <= x} / n`` (weak
               inequality) and ``quantile_q`` NumPy's default (linear
               interpolation, Hyndman & Fan type 7). A batch as far from T
               as fresh data gives about q at every level; a copying one
               gives less.

``occupancy`` and ``dist`` pool no cells and ignore τ, so they are defined
for every batch; ``z`` and ``ct`` may hold NaN.
"""

import numpy as np

FEATURES = ("ct", "z", "occupancy", "dist")
QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9)


def check_kinds(kinds) -> tuple:
  """``kinds`` as a tuple of `FEATURES` names (raises on an unknown one)."""
  kinds = tuple(kinds)
  bad = [k for k in kinds if k not in FEATURES]
  if bad or not kinds:
    raise ValueError(
      f"unknown feature kinds {bad}; choose from {FEATURES}"
      if bad
      else "kinds is empty"
    )
  return kinds


def distance_quantiles(gen_dist, test_dist, quantiles=QUANTILES):
  """The "dist" feature of one batch.

  Args:
    gen_dist: ``[L, m]`` nearest same-cell training distance of each
      generated point (`CTResult.neighbors.gen_dist`).
    test_dist: ``[L, n]`` the same for the test points.
    quantiles: Q levels in [0, 1].

  Returns:
    float64 ``[L, Q]``: the test set's empirical CDF at the generated
    distances' quantiles.
  """
  g = np.asarray(gen_dist, np.float64)
  t = np.asarray(test_dist, np.float64)
  q = np.asarray(quantiles, np.float64)
  if g.ndim != 2 or t.ndim != 2 or g.shape[0] != t.shape[0]:
    raise ValueError(
      f"gen_dist [L, m] and test_dist [L, n] must share L, got {g.shape} "
      f"and {t.shape}"
    )
  if g.shape[1] == 0 or t.shape[1] == 0:
    raise ValueError(f"empty distances: gen {g.shape}, test {t.shape}")
  if q.ndim != 1 or q.size == 0 or np.any((q < 0) | (q > 1)):
    raise ValueError(f"quantiles must be levels in [0, 1], got {quantiles}")
  at = np.quantile(g, q, axis=1).T  # [L, Q]
  ts = np.sort(t, axis=1)
  cdf = [np.searchsorted(ts[l], at[l], side="right") for l in range(len(ts))]
  return np.asarray(cdf, np.float64) / t.shape[1]


def result_features(res, kinds=FEATURES, quantiles=QUANTILES) -> dict:
  """Feature vectors of one scored batch.

  Args:
    res: a `CTResult` of one batch (``ct [L]``, ``z``/``gen_frac [L, k]``),
      with ``neighbors`` when "dist" is asked for.
    kinds: names from `FEATURES`.
    quantiles: the levels of "dist".

  Returns:
    kind -> float64 vector (shapes in the module docstring).
  """
  out = {}
  for kind in check_kinds(kinds):
    if kind == "ct":
      v = res.ct
    elif kind == "z":
      v = res.z
    elif kind == "occupancy":
      v = res.gen_frac
    else:
      if res.neighbors is None:
        raise ValueError(
          'the "dist" feature needs a score with return_neighbors=True'
        )
      nb = res.neighbors
      v = distance_quantiles(nb.gen_dist, nb.test_dist, quantiles)
    out[kind] = np.asarray(v, np.float64).reshape(-1)
  return out


def _batches(gen_embeddings, batch_size):
  """Consecutive full batches of ``[L, M, D]`` (or L arrays ``[M, D_l]``)."""
  listed = isinstance(gen_embeddings, (list, tuple))
  if listed:
    if not gen_embeddings or any(np.ndim(x) != 2 for x in gen_embeddings):
      raise ValueError(
        "gen_embeddings as a list must hold L arrays [M, D_l], got shapes "
        f"{[np.shape(x) for x in gen_embeddings]}"
      )
    m = np.shape(gen_embeddings[0])[0]
  else:
    if np.ndim(gen_embeddings) != 3:
      raise ValueError(
        f"gen_embeddings must be [L, M, D], got {np.shape(gen_embeddings)}"
      )
    m = np.shape(gen_embeddings)[1]
  if batch_size < 1 or m < batch_size:
    raise ValueError(
      f"gen_embeddings holds {m} samples; batch_size={batch_size} must be "
      "in 1..that"
    )
  for i in range(m // batch_size):
    lo, hi = i * batch_size, (i + 1) * batch_size
    if listed:
      yield [x[lo:hi] for x in gen_embeddings]
    else:
      yield gen_embeddings[:, lo:hi, :]


def batch_features(
  gen_embeddings,
  reference,
  batch_size: int = 500,
  kinds=FEATURES,
  *,
  quantiles=QUANTILES,
  tau: float | None = None,
) -> dict:
  """Feature vectors of consecutive batches of one generator's samples.

  Batches are cut as in `ctjax.fingerprint.batch_curves` (a short remainder
  is dropped), and each is scored once, with its neighbours when "dist" is
  asked for.

  Args:
    gen_embeddings: ``[L, M, D]`` (or L arrays ``[M, D_l]``).
    reference: a fitted `CTReference`.
    batch_size: samples per batch.
    kinds: names from `FEATURES`.
    quantiles: the levels of "dist".
    tau: the C_T threshold (None: 20 / batch_size).

  Returns:
    kind -> float64 ``[M // batch_size, F_kind]``; "ct" equals
    `batch_curves`.
  """
  kinds = check_kinds(kinds)
  need_nb = "dist" in kinds
  rows = {k: [] for k in kinds}
  for batch in _batches(gen_embeddings, batch_size):
    kw = {} if tau is None else {"tau": tau}
    res = reference.score(batch, return_neighbors=need_nb, **kw)
    for k, v in result_features(res, kinds, quantiles).items():
      rows[k].append(v)
  return {k: np.stack(v) for k, v in rows.items()}
