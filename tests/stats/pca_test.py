"""PCA against a float64 NumPy eigendecomposition."""

import numpy as np
import pytest
from scipy.linalg import subspace_angles

from ctjax.stats import pca as pca_lib


def _gapped(rng, n=4000, d=96, k=8):
  # k strong directions (variances 100..30) over an isotropic floor of 1.
  basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
  scales = np.concatenate([np.linspace(10, 5.5, k), np.ones(d - k)])
  x = (rng.normal(size=(n, d)) * scales) @ basis.T + rng.normal(size=d) * 3
  return x.astype(np.float32)


@pytest.mark.parametrize("block", [256, 32, 40])  # full, and symmetric blocks
@pytest.mark.parametrize("chunk", [10_000, 4096, 333])
def test_variances_and_subspace(rng, block, chunk):
  x = _gapped(rng)
  k = 8
  fit = pca_lib.fit_pca(x, k, chunk=chunk, block=block)
  x64 = x.astype(np.float64)
  cov = np.cov(x64, rowvar=False)
  evals, evecs = np.linalg.eigh(cov)
  np.testing.assert_allclose(
    np.asarray(fit.variances), evals[::-1][:k], rtol=1e-4
  )
  proj = np.asarray(pca_lib.transform(fit, x)).astype(np.float64)
  np.testing.assert_allclose(
    proj.var(axis=0, ddof=1), evals[::-1][:k], rtol=1e-4
  )
  angles = subspace_angles(
    np.asarray(fit.components, np.float64), evecs[:, ::-1][:, :k]
  )
  assert angles.max() < 1e-3
  np.testing.assert_allclose(
    float(fit.total_variance), np.trace(cov), rtol=1e-4
  )


@pytest.mark.parametrize("block", [96, 40, 32])  # plain; panels, uneven
def test_covariance_is_float64_scatter_and_symmetric(rng, block):
  x = _gapped(rng, n=1000, d=96)
  mean = x.mean(axis=0)
  got = np.asarray(pca_lib.covariance(x, mean, chunk=333, block=block))
  xc = x.astype(np.float64) - mean
  want = xc.T @ xc
  assert np.abs(got - want).max() < 1e-5 * np.abs(want).max()
  np.testing.assert_array_equal(got, got.T)


def test_matches_sklearn_projection_up_to_sign(rng):
  from sklearn.decomposition import PCA

  x = _gapped(rng, n=1000, d=20, k=4)
  ours = np.asarray(pca_lib.transform(pca_lib.fit_pca(x, 4), x))
  ref = PCA(4, svd_solver="full").fit_transform(x.astype(np.float64))
  signs = np.sign((ours * ref).sum(0))
  np.testing.assert_allclose(ours * signs, ref, rtol=2e-3, atol=2e-3)


def test_bad_n_components():
  with pytest.raises(ValueError, match="n_components=9"):
    pca_lib.fit_pca(np.zeros((5, 8), np.float32), 9)


def test_chunked_projection_equals_one_product(rng):
  x = _gapped(rng, n=1000, d=24, k=4)
  fit = pca_lib.fit_pca(x, 4)
  whole = np.asarray(pca_lib.transform(fit, x, chunk=None))
  ref = (x.astype(np.float64) - np.asarray(fit.mean, np.float64)) @ np.asarray(
    fit.components, np.float64
  )
  np.testing.assert_allclose(whole, ref, rtol=1e-4, atol=1e-4)
  for chunk in (1000, 333, 250, 7):
    got = np.asarray(pca_lib.transform(fit, x, chunk=chunk))
    assert got.shape == whole.shape
    np.testing.assert_allclose(got, whole, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk", [None, 300])
def test_reduce_projection_matches_float64_and_row_count(rng, chunk):
  # The accelerator's projection (a row reduction, forced here) has
  # float64's values whatever the rows beside it. (That its bits do not
  # depend on them holds on a GPU, as measured by benchmarks/consistency.py;
  # XLA:CPU vectorises the reduction differently by row count, so a CPU
  # keeps the matrix product, which is row-invariant there.)
  x = _gapped(rng, n=1000, d=24, k=4)
  fit = pca_lib.fit_pca(x, 4)
  got = np.asarray(pca_lib.transform(fit, x, chunk=chunk, projection="reduce"))
  ref = (x.astype(np.float64) - np.asarray(fit.mean, np.float64)) @ np.asarray(
    fit.components, np.float64
  )
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
  head = pca_lib.transform(fit, x[:37], chunk=chunk, projection="reduce")
  np.testing.assert_allclose(np.asarray(head), got[:37], rtol=1e-6, atol=1e-5)


def test_projection_choice(monkeypatch):
  assert pca_lib.resolve_projection() == "dot"  # this CPU
  assert pca_lib.resolve_projection("reduce") == "reduce"
  monkeypatch.setattr(pca_lib.jax, "default_backend", lambda: "tpu")
  assert pca_lib.resolve_projection() == "dot"
  monkeypatch.setattr(pca_lib.jax, "default_backend", lambda: "gpu")
  assert pca_lib.resolve_projection() == "reduce"
  assert pca_lib.resolve_projection("dot") == "dot"
  with pytest.raises(ValueError, match="'auto', 'dot' or 'reduce'"):
    pca_lib.resolve_projection("tf32")
