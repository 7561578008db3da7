"""Gaussian mixture on a PCA projection of the pixels.

Fitting: PCA to ``n_pca`` components (scikit-learn), then a full-covariance
``GaussianMixture`` on the projected training images. Sampling: a component by
its weight, a latent from that Gaussian, back to pixels through the PCA basis,
plus isotropic Gaussian noise with the mean variance that PCA left out (so the
model is a mixture of low-rank-plus-isotropic Gaussians in pixel space).
"""

import dataclasses
import warnings

import numpy as np

from ctjax.audit.generators import common


@dataclasses.dataclass(frozen=True)
class Config:
  """Gaussian-mixture hyperparameters.

  Attributes:
    n_components: mixture components.
    n_pca: PCA dimensions the mixture is fitted in.
    residual_noise: add the PCA residual's isotropic noise to samples.
    max_iter: EM iterations.
    reg_covar: covariance regulariser (scikit-learn's).
    max_fit_images: EM runs on a seeded random subset of at most this many
      training images (scikit-learn's full-covariance EM costs ~4 s per
      iteration on all 60,000 Fashion-MNIST images); PCA uses all of them.
  """

  n_components: int = 20
  n_pca: int = 20
  residual_noise: bool = True
  max_iter: int = 200
  reg_covar: float = 1e-4
  max_fit_images: int = 10000


PRESETS = {
  "digits": Config(),
  "fashion_mnist": Config(n_components=40, n_pca=50, max_iter=60),
}


def train(images, seed=0, progress=True, **hparams):
  """Fits PCA + GaussianMixture on uint8 ``[N, H, W(, C)]`` images."""
  from sklearn.decomposition import PCA
  from sklearn.exceptions import ConvergenceWarning
  from sklearn.mixture import GaussianMixture

  del progress
  cfg = common.make_config(Config, hparams)
  images = common.check_images(images)
  x = common.to_unit(images).astype(np.float64)
  n_pca = min(cfg.n_pca, x.shape[0] - 1, x.shape[1])
  pca = PCA(n_pca, random_state=seed).fit(x)
  z = pca.transform(x)
  fit_z = z
  if len(z) > cfg.max_fit_images:
    rng = np.random.default_rng(seed)
    fit_z = z[rng.choice(len(z), cfg.max_fit_images, replace=False)]
  with warnings.catch_warnings():
    # A capped max_iter is a deliberate time budget, not an error.
    warnings.simplefilter("ignore", ConvergenceWarning)
    gm = GaussianMixture(
      min(cfg.n_components, len(fit_z)),
      covariance_type="full",
      max_iter=cfg.max_iter,
      reg_covar=cfg.reg_covar,
      random_state=seed,
    ).fit(fit_z)
  resid = x - pca.inverse_transform(z)
  params = {
    "pca_mean": pca.mean_,
    "pca_components": pca.components_,
    "weights": gm.weights_,
    "means": gm.means_,
    "chol": np.linalg.cholesky(gm.covariances_),
    "residual_std": np.asarray(np.sqrt(np.mean(resid.var(axis=0)))),
  }
  return common.GeneratorModel(
    "gmm", images.shape[1:], int(seed), common.hparams_dict(cfg), params
  )


def sample(model, n, seed):
  """Draws ``n`` images: uint8 ``[n, *model.image_shape]``."""
  p = model.params
  rng = np.random.default_rng(seed)
  weights = p["weights"] / p["weights"].sum()
  comp = rng.choice(len(weights), size=n, p=weights)
  eps = rng.standard_normal((n, p["means"].shape[1]))
  z = p["means"][comp] + np.einsum("nij,nj->ni", p["chol"][comp], eps)
  x = z @ p["pca_components"] + p["pca_mean"]
  if model.hparams["residual_noise"]:
    x = x + float(p["residual_std"]) * rng.standard_normal(x.shape)
  return common.from_unit(x, model.image_shape)
