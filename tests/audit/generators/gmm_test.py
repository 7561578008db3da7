"""Tests for the PCA + Gaussian-mixture generator."""

import numpy as np

from ctjax.audit.generators import gmm


def _blobs(rng, n=300):
  """Two clusters of 6x6 images."""
  base = np.zeros((2, 36))
  base[0, :18], base[1, 18:] = 200, 200
  x = base[rng.integers(0, 2, n)] + rng.normal(0, 15, (n, 36))
  return np.clip(x, 0, 255).astype(np.uint8).reshape(n, 6, 6)


def test_shapes_range_and_seed(rng):
  x = _blobs(rng)
  model = gmm.train(x, seed=0, n_components=2, n_pca=4)
  s = gmm.sample(model, 100, seed=0)
  assert s.shape == (100, 6, 6) and s.dtype == np.uint8
  np.testing.assert_array_equal(s, gmm.sample(model, 100, seed=0))
  assert not np.array_equal(s, gmm.sample(model, 100, seed=1))


def test_samples_follow_the_fitted_mixture(rng):
  x = _blobs(rng, 600)
  model = gmm.train(x, seed=0, n_components=2, n_pca=4, residual_noise=False)
  p = model.params
  s = gmm.sample(model, 6000, seed=0).reshape(6000, -1) / 255.0
  z = (s - p["pca_mean"]) @ p["pca_components"].T
  # Moments of the latent samples match the mixture's (independent of the
  # sampler's Cholesky/einsum path).
  w = p["weights"]
  covs = p["chol"] @ np.swapaxes(p["chol"], 1, 2)
  mean = w @ p["means"]
  second = np.einsum(
    "k,kij->ij", w, covs + np.einsum("ki,kj->kij", p["means"], p["means"])
  )
  np.testing.assert_allclose(z.mean(0), mean, atol=0.02)
  np.testing.assert_allclose(
    np.cov(z.T, bias=True), second - np.outer(mean, mean), atol=0.03
  )
  # And the pixel means match the data's.
  np.testing.assert_allclose(
    s.mean(0), x.reshape(600, -1).mean(0) / 255, atol=0.03
  )


def test_residual_noise_has_the_pca_residual_std(rng):
  x = _blobs(rng)
  plain_model = gmm.train(x, 0, n_components=2, n_pca=2, residual_noise=False)
  noisy_model = gmm.train(x, 0, n_components=2, n_pca=2)
  # Same seed: same components and latents, plus the residual noise.
  plain = gmm.sample(plain_model, 3000, 0).astype(float)
  noisy = gmm.sample(noisy_model, 3000, 0).astype(float)
  inner = (plain > 40) & (plain < 215)
  flat = x.reshape(len(x), -1) / 255.0
  centred = flat - flat.mean(0)
  # Residual variance = total variance outside the top-2 principal axes.
  eig = np.linalg.eigvalsh(np.cov(centred.T))[::-1]
  expected = np.sqrt(eig[2:].sum() / flat.shape[1]) * 255
  np.testing.assert_allclose(
    float(noisy_model.params["residual_std"]) * 255, expected, rtol=0.02
  )
  np.testing.assert_allclose((noisy - plain)[inner].std(), expected, rtol=0.05)
