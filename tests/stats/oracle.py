"""An independent NumPy/SciPy/scikit-learn implementation of C_T (the oracle).

Written from docs/method.md with none of ctjax's code: brute-force
distance matrices from scipy.spatial.distance.cdist, U from
scipy.stats.mannwhitneyu, plain float64 arithmetic.
"""

import numpy as np
from scipy.spatial.distance import cdist
from scipy.stats import mannwhitneyu


def pairwise(a, b, metric):
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  if metric == "l2":
    return cdist(a, b, "euclidean")
  cos_dist = cdist(a, b, "cosine")  # 1 − cos
  d = np.minimum(cos_dist, 2.0 - cos_dist)  # 1 − |cos|
  # Rounding leaves ~1e-16 for parallel vectors; they are exact copies.
  return np.where(d < 1e-12, 0.0, d)


def nearest_in_cell(queries, q_cells, train, train_cells, metric):
  out = np.full(len(queries), np.inf)
  idx = np.full(len(queries), -1)
  for c in np.unique(q_cells):
    qi = np.flatnonzero(q_cells == c)
    ti = np.flatnonzero(train_cells == c)
    d = pairwise(queries[qi], train[ti], metric)
    out[qi] = d.min(axis=1)
    idx[qi] = ti[d.argmin(axis=1)]
  return out, idx


def c_t(test, test_cells, gen, gen_cells, train, train_cells, tau, metric):
  """Returns (ct, z [k], included [k]) with k = 1 + max cell."""
  lp, _ = nearest_in_cell(test, test_cells, train, train_cells, metric)
  lq, _ = nearest_in_cell(gen, gen_cells, train, train_cells, metric)
  k = 1 + max(test_cells.max(), gen_cells.max(), train_cells.max())
  n, m = len(test), len(gen)
  z = np.full(k, np.nan)
  included = np.zeros(k, bool)
  num = den = 0.0
  for c in range(k):
    p, q = lp[test_cells == c], lq[gen_cells == c]
    n_c, m_c = len(p), len(q)
    if n_c == 0 or m_c == 0:
      continue
    u = mannwhitneyu(q, p).statistic
    z[c] = (u - (n_c * m_c / 2 - 0.5)) / np.sqrt(
      n_c * m_c * (n_c + m_c + 1) / 12
    )
    if m_c / m > tau:
      included[c] = True
      num += n_c / n * z[c]
      den += n_c / n
  return (num / den if den > 0 else np.nan), z, included


def pipeline(
  train, test, gen, *, n_components, n_cells, metric, tau=None, seed=0
):
  """The paper's per-layer pipeline with scikit-learn (PCA, KMeans n_init=10)."""
  from sklearn.cluster import KMeans
  from sklearn.decomposition import PCA

  pca = PCA(n_components, svd_solver="full").fit(train)
  pt, pp, pg = (pca.transform(x) for x in (train, test, gen))
  km = KMeans(n_cells, n_init=10, random_state=seed).fit(pt)
  tau = 20 / len(gen) if tau is None else tau
  return c_t(
    pp, km.predict(pp), pg, km.predict(pg), pt, km.labels_, tau, metric
  )[0]
