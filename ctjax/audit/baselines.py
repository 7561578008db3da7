"""Baselines the paper compares C_T fingerprints against.

Each baseline enrols labelled batches with ``fit(enrolled)`` (``enrolled``:
label -> list of batches) and labels a query batch with ``predict(batch)``:

* :class:`PixelStats` -- per-batch pixel mean and standard deviation (per
  channel; optionally a grey-level histogram); the label of the nearest
  enrolled batch in standardised feature space.
* :class:`FrechetBaseline` -- Frechet distance between Gaussians fitted to a
  query batch's final-layer embeddings and to each label's pooled enrolled
  embeddings (the FID formula on the given encoder); the nearest label wins.
* :class:`ClassifierBaseline` -- a small CNN (flax.nnx, optax) trained to tell
  the enrolled labels apart image by image; a query batch gets the majority
  vote of its images.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ctjax import threads
from ctjax.audit.generators import common


def _check_enrolled(enrolled, ndim, what):
  if not enrolled:
    raise ValueError("enrolled is empty: give label -> list of batches.")
  for label, batches in enrolled.items():
    if len(batches) == 0:
      raise ValueError(f"enrolled label {label!r} has no batches.")
    for i, b in enumerate(batches):
      if np.ndim(b) not in ndim:
        raise ValueError(
          f"enrolled[{label!r}][{i}] must be {what}, got shape {np.shape(b)}."
        )


def _majority(votes, n_labels):
  """Most frequent index in ``votes`` ``[m]`` (ties -> the smaller index)."""
  return int(np.argmax(np.bincount(votes, minlength=n_labels)))


# ----------------------------------------------------------------------------
# Pixel statistics.


def pixel_stats(batch, histogram_bins=0):
  """Feature vector of one batch of images.

  Args:
    batch: uint8 ``[m, H, W]`` or ``[m, H, W, C]``.
    histogram_bins: if > 0, append the normalised histogram of grey levels
      (all channels pooled) with this many equal bins on 0..255.

  Returns:
    float64 ``[2 * C + histogram_bins]``: per-channel means, per-channel
    standard deviations (on 0..255), then the histogram.
  """
  x = np.asarray(batch, np.float64)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4:
    raise ValueError(
      f"batch must be [m, H, W] or [m, H, W, C], got {np.shape(batch)}."
    )
  flat = x.reshape(-1, x.shape[-1])
  feats = [flat.mean(axis=0), flat.std(axis=0)]
  if histogram_bins:
    hist, _ = np.histogram(flat, bins=histogram_bins, range=(0, 256))
    feats.append(hist / flat.size)
  return np.concatenate(feats)


class PixelStats:
  """Nearest enrolled batch by pixel mean/std statistics.

  Args:
    histogram_bins: add a grey-level histogram of this many bins (0: none).
    standardize: divide every feature by its spread over the enrolled
      batches (else raw 0..255 means and stds, histogram fractions).
  """

  def __init__(self, histogram_bins=0, standardize=False):
    self.histogram_bins = histogram_bins
    self.standardize = standardize

  def fit(self, enrolled):
    """``enrolled``: label -> list of uint8 ``[m, H, W(, C)]`` batches."""
    _check_enrolled(enrolled, (3, 4), "uint8 [m, H, W(, C)] images")
    feats, labels = [], []
    for label, batches in enrolled.items():
      for b in batches:
        feats.append(pixel_stats(b, self.histogram_bins))
        labels.append(label)
    feats = np.stack(feats)
    spread = feats.std(axis=0)
    self.scale_ = (
      np.where(spread > 0, spread, 1.0)
      if self.standardize
      else np.ones_like(spread)
    )
    self.features_ = feats / self.scale_
    self.labels_ = labels
    return self

  def predict(self, batch):
    """Label of the enrolled batch nearest to ``batch``'s statistics."""
    f = pixel_stats(batch, self.histogram_bins) / self.scale_
    return self.labels_[int(np.argmin(np.sum((self.features_ - f) ** 2, 1)))]


# ----------------------------------------------------------------------------
# Frechet distance on embeddings.


def gaussian_stats(x):
  """Mean ``[D]`` and unbiased covariance ``[D, D]`` of ``x`` ``[m, D]``."""
  x = np.asarray(x, np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f"embeddings must be [m, D] with m >= 2, got {x.shape}.")
  return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _psd_sqrt(cov):
  w, v = np.linalg.eigh((cov + cov.T) / 2)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2):
  """Frechet (2-Wasserstein) distance between two Gaussians, squared.

  ``|mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^{1/2})``, with the trace
  of the square root computed as ``sum sqrt(eig(S1 cov2 S1))``, S1 = cov1^{1/2}
  (symmetric PSD, so no complex parts; Dowson & Landau 1982).

  Args:
    mu1, mu2: ``[D]`` means.
    cov1, cov2: ``[D, D]`` covariances.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
  d = mu1.shape[0]
  if mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
    raise ValueError(
      f"shapes do not match: mu1 {mu1.shape}, cov1 "
      f"{cov1.shape}, mu2 {mu2.shape}, cov2 {cov2.shape}."
    )
  s1 = _psd_sqrt(cov1)
  eig = np.linalg.eigvalsh(s1 @ cov2 @ s1)
  tr_sqrt = np.sum(np.sqrt(np.clip(eig, 0, None)))
  return float(
    np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_sqrt
  )


class FrechetBaseline:
  """Nearest label by Frechet distance of final-layer embeddings."""

  def fit(self, enrolled):
    """``enrolled``: label -> list of ``[m, D]`` embedding batches (pooled)."""
    _check_enrolled(enrolled, (2,), "[m, D] embeddings")
    with threads.one_blas_thread():
      self.stats_ = {
        label: gaussian_stats(np.concatenate(batches))
        for label, batches in enrolled.items()
      }
    return self

  def distances(self, batch):
    """Frechet distance from ``batch`` ``[m, D]`` to every enrolled label."""
    with threads.one_blas_thread():
      mu, cov = gaussian_stats(batch)
      return {
        label: frechet_distance(mu, cov, m, c)
        for label, (m, c) in self.stats_.items()
      }

  def predict(self, batch):
    """Label whose enrolled embeddings are Frechet-nearest to ``batch``."""
    dist = self.distances(batch)
    return min(dist, key=dist.get)


# ----------------------------------------------------------------------------
# Supervised classifier with a majority vote.


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  """Small-CNN baseline settings.

  Attributes:
    channels: output channels of the two 3x3 conv layers.
    hidden: width of the dense layer.
    num_steps: Adam steps.
    batch_size: images per step.
    learning_rate: Adam learning rate.
    seed: initialisation and batch-order seed.
    predict_batch: images per jitted prediction call.
  """

  channels: tuple = (16, 32)
  hidden: int = 128
  num_steps: int = 600
  batch_size: int = 128
  learning_rate: float = 2e-3
  seed: int = 0
  predict_batch: int = 500


class SmallCNN(nnx.Module):
  """conv-pool-conv-pool-dense: ``[B, H, W, C]`` -> logits ``[B, classes]``.

  H and W must be divisible by 4.
  """

  def __init__(self, image_shape, num_classes, cfg, *, rngs):
    h, w, c = image_shape
    c1, c2 = cfg.channels
    self.conv1 = nnx.Conv(c, c1, (3, 3), padding="SAME", rngs=rngs)
    self.conv2 = nnx.Conv(c1, c2, (3, 3), padding="SAME", rngs=rngs)
    self.dense = nnx.Linear((h // 4) * (w // 4) * c2, cfg.hidden, rngs=rngs)
    self.out = nnx.Linear(cfg.hidden, num_classes, rngs=rngs)

  def __call__(self, x):
    x = nnx.avg_pool(jax.nn.relu(self.conv1(x)), (2, 2), strides=(2, 2))
    x = nnx.avg_pool(jax.nn.relu(self.conv2(x)), (2, 2), strides=(2, 2))
    return self.out(jax.nn.relu(self.dense(x.reshape(x.shape[0], -1))))


def _images_nhwc(batch):
  x = np.asarray(batch)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.dtype != np.uint8:
    raise ValueError(
      f"images must be uint8 [m, H, W(, C)], got {x.dtype} {np.shape(batch)}."
    )
  return x.astype(np.float32) / 255.0


def _cls_step(carry, data, key, static):
  graphdef, cfg = static
  params, opt_state = carry
  images, labels = data
  idx = jax.random.randint(key, (cfg.batch_size,), 0, images.shape[0])

  def loss_fn(p):
    logits = nnx.merge(graphdef, p)(images[idx])
    return optax.softmax_cross_entropy_with_integer_labels(
      logits, labels[idx]
    ).mean()

  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = optax.adam(cfg.learning_rate).update(
    grads, opt_state, params
  )
  return (optax.apply_updates(params, updates), opt_state), loss


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _cls_predict(params, images, *, graphdef):
  return jnp.argmax(nnx.merge(graphdef, params)(images), axis=-1)


class ClassifierBaseline:
  """A small CNN trained on enrolled images; majority vote per query batch."""

  def __init__(self, config=None, progress=True):
    self.config = config or ClassifierConfig()
    self.progress = progress

  def fit(self, enrolled):
    """``enrolled``: label -> list of uint8 ``[m, H, W(, C)]`` batches."""
    _check_enrolled(enrolled, (3, 4), "uint8 [m, H, W(, C)] images")
    cfg = self.config
    self.labels_ = list(enrolled)
    images, labels = [], []
    for i, label in enumerate(self.labels_):
      for b in enrolled[label]:
        images.append(_images_nhwc(b))
        labels.append(np.full(len(b), i, np.int32))
    images = np.concatenate(images)
    shape = images.shape[1:]
    if shape[0] % 4 or shape[1] % 4:
      raise ValueError(
        f"classifier baseline needs image sides divisible by "
        f"4, got {shape[:2]}."
      )
    model = SmallCNN(shape, len(self.labels_), cfg, rngs=nnx.Rngs(cfg.seed))
    graphdef, params = nnx.split(model, nnx.Param)
    carry = (params, optax.adam(cfg.learning_rate).init(params))
    (params, _), self.losses_ = common.train_loop(
      _cls_step,
      (graphdef, cfg),
      carry,
      (images, np.concatenate(labels)),
      jax.random.PRNGKey(cfg.seed + 1),
      cfg.num_steps,
      desc="classifier baseline",
      progress=self.progress,
    )
    self.graphdef_, self.params_, self.image_shape_ = graphdef, params, shape
    return self

  def predict_images(self, batch):
    """Per-image label indices ``[m]`` (into ``self.labels_``)."""
    x = _images_nhwc(batch)
    if x.shape[1:] != self.image_shape_:
      raise ValueError(
        f"query images {x.shape[1:]} differ from the enrolled "
        f"{self.image_shape_}."
      )
    size = self.config.predict_batch
    out = []
    for start in range(0, len(x), size):
      chunk = x[start : start + size]
      pad = np.zeros((size - len(chunk), *x.shape[1:]), x.dtype)
      pred = _cls_predict(
        self.params_, np.concatenate([chunk, pad]), graphdef=self.graphdef_
      )
      out.append(np.asarray(pred)[: len(chunk)])
    return np.concatenate(out) if out else np.zeros((0,), np.int64)

  def predict(self, batch):
    """Majority-vote label of the images in ``batch``."""
    votes = self.predict_images(batch)
    if len(votes) == 0:
      raise ValueError("cannot classify an empty batch.")
    return self.labels_[_majority(votes, len(self.labels_))]
