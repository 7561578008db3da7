"""PCA against a float64 NumPy eigendecomposition."""

import numpy as np
import pytest
from scipy.linalg import subspace_angles

from ctjax.stats import pca as pca_lib


def _method(method):
  """Skips "native" where ctjax's kernels do not run."""
  if method == "native" and pca_lib.resolve_covariance("auto") != "native":
    pytest.skip("the native covariance does not run here")
  return method


def _gapped(rng, n=4000, d=96, k=8):
  # k strong directions (variances 100..30) over an isotropic floor of 1.
  basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
  scales = np.concatenate([np.linspace(10, 5.5, k), np.ones(d - k)])
  x = (rng.normal(size=(n, d)) * scales) @ basis.T + rng.normal(size=d) * 3
  return x.astype(np.float32)


@pytest.mark.parametrize(
  "method,block,chunk",
  [
    ("xla", 256, 10_000),  # one chunk, plain product
    ("xla", 32, 4096),  # symmetric blocks
    ("xla", 40, 333),  # uneven blocks and chunks
    ("xla", 256, 333),
    ("native", None, None),
  ],
)
def test_variances_and_subspace(rng, method, block, chunk):
  x = _gapped(rng)
  k = 8
  kw = {} if chunk is None else {"chunk": chunk, "block": block}
  fit = pca_lib.fit_pca(x, k, method=_method(method), **kw)
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


@pytest.mark.parametrize(
  "method,block", [("xla", 96), ("xla", 40), ("xla", 32), ("native", None)]
)  # plain; panels, uneven
def test_covariance_is_float64_scatter_and_symmetric(rng, method, block):
  x = _gapped(rng, n=1000, d=96)
  mean = x.mean(axis=0)
  got = np.asarray(
    pca_lib.covariance(x, mean, chunk=333, block=block, method=_method(method))
  )
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
  for chunk in (1000, 999, 333, 250, 7, "auto"):
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


def test_covariance_methods_agree_on_a_fit(rng):
  _method("native")
  x = _gapped(rng, n=3000, d=70)
  a = pca_lib.fit_pca(x, 6, method="xla")
  b = pca_lib.fit_pca(x, 6, method="native")
  np.testing.assert_allclose(
    np.asarray(a.variances), np.asarray(b.variances), rtol=1e-5
  )
  assert (
    subspace_angles(np.asarray(a.components), np.asarray(b.components)).max()
    < 1e-3
  )


def test_covariance_choice(monkeypatch):
  native_ok = pca_lib.native.available()
  assert pca_lib.resolve_covariance() == ("native" if native_ok else "xla")
  assert pca_lib.resolve_covariance("xla") == "xla"
  assert pca_lib.resolve_covariance("auto", np.float64) == "xla"
  with pytest.raises(ValueError, match="float32 data, not float64"):
    pca_lib.resolve_covariance("native", np.float64)
  with pytest.raises(ValueError, match="CPU backend only, not 'gpu'"):
    pca_lib.resolve_covariance("native", backend="gpu")
  assert pca_lib.resolve_covariance("auto", backend="gpu") == "xla"
  with pytest.raises(ValueError, match="'auto', 'native' or 'xla'"):
    pca_lib.resolve_covariance("syrk")
  monkeypatch.setattr(pca_lib.native, "available", lambda: False)
  monkeypatch.setattr(pca_lib.native, "reason", lambda: "no compiler")
  assert pca_lib.resolve_covariance() == "xla"
  with pytest.raises(ValueError, match="unavailable: no compiler"):
    pca_lib.resolve_covariance("native")


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
