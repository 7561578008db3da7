"""Meehan et al.'s Figure 2 sanity sweep: a Gaussian KDE of make_moons.

Published values (their Fig. 2): C_T ≈ −17 at σ = 10⁻³, ≈ 0 near the
likelihood-optimal σ ≈ 0.1, ≈ +16 at σ = 10 (2,000 train, 1,000 test,
1,000 generated, 5 cells, L2).
"""

import numpy as np
from sklearn.datasets import make_moons

import ctjax

SIGMAS = [1e-3, 1e-2, 0.1, 1.0, 10.0]


def test_moons_kde_sweep():
  train, _ = make_moons(2000, noise=0.2, random_state=0)
  test, _ = make_moons(1000, noise=0.2, random_state=1)
  ref = ctjax.CTReference.fit(
    train.astype(np.float32),
    test.astype(np.float32),
    n_components=2,
    n_cells=5,
    metric="l2",
    seed=0,
  )
  rng = np.random.default_rng(2)
  curve = []
  for sigma in SIGMAS:
    gen = (
      train[rng.integers(0, 2000, 1000)] + rng.normal(size=(1000, 2)) * sigma
    )
    curve.append(ref.score(gen.astype(np.float32)).ct[0])
  curve = np.array(curve)
  assert curve[0] < -8, curve
  assert curve[-1] > 8, curve
  assert np.all(np.diff(curve) > 0), curve
  assert abs(curve[2]) < 4, curve  # near the likelihood-optimal bandwidth
  # The published ends of the sweep: about −17 and +16.
  assert -20 < curve[0] < -14 and 13 < curve[-1] < 19, curve
