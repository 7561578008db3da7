"""Pieces every generator family shares: the trained-model container, pixel
conversions, parameter flattening for the cache, and a jitted training loop.

Pixel conventions: generators see images as float vectors; uint8 0..255 maps to
[-1, 1] (``to_signed``) or [0, 1] (``to_unit``), and samples map back by
clipping and rounding to uint8 of the training images' shape.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ctjax import progress as progress_lib


@dataclasses.dataclass(frozen=True, eq=False)
class GeneratorModel:
  """A trained generator: everything needed to sample from it, and to cache it.

  Attributes:
    family: the family that trained it ("kde", "gmm", "vae", "gan", "ddpm";
      the "ddim" family samples from a "ddpm" model).
    image_shape: shape of one image, ``(H, W)`` or ``(H, W, C)``.
    seed: the training seed.
    hparams: JSON-able dict of the hyperparameters it was trained with.
    params: flat dict name -> np.ndarray (see ``flatten_params``).
  """

  family: str
  image_shape: tuple
  seed: int
  hparams: dict
  params: dict

  @property
  def dim(self):
    return int(np.prod(self.image_shape))


def check_images(images, what="images"):
  """Validates uint8 images ``[N, H, W]`` or ``[N, H, W, C]``; returns them."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f"{what} must be uint8 on 0..255, got {images.dtype}.")
  if images.ndim not in (3, 4) or images.shape[0] < 2:
    raise ValueError(
      f"{what} must be [N, H, W] or [N, H, W, C] with N >= 2, got "
      f"{images.shape}."
    )
  return images


def to_unit(images):
  """uint8 ``[N, ...]`` -> float32 ``[N, D]`` on [0, 1]."""
  return np.asarray(images, np.float32).reshape(len(images), -1) / 255.0


def to_signed(images):
  """uint8 ``[N, ...]`` -> float32 ``[N, D]`` on [-1, 1]."""
  return to_unit(images) * 2.0 - 1.0


def from_unit(x, image_shape):
  """float ``[n, D]`` on [0, 1] -> uint8 ``[n, *image_shape]`` (clip, round)."""
  x = np.clip(np.asarray(x, np.float64) * 255.0, 0, 255)
  return np.rint(x).astype(np.uint8).reshape((len(x), *image_shape))


def from_signed(x, image_shape):
  """float ``[n, D]`` on [-1, 1] -> uint8 ``[n, *image_shape]``."""
  return from_unit((np.asarray(x, np.float64) + 1.0) / 2.0, image_shape)


def flatten_params(tree):
  """Pytree of arrays -> flat dict ``path string -> np.ndarray``."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def unflatten_params(template, flat, what="parameters"):
  """Fills ``template``'s structure (e.g. an abstract nnx State) from ``flat``.

  Raises:
    ValueError: naming every missing, unexpected or mis-shaped entry.
  """
  leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
  names = [jax.tree_util.keystr(p) for p, _ in leaves]
  errors = [f"missing {n}" for n in names if n not in flat]
  errors += [f"unexpected {n}" for n in flat if n not in set(names)]
  for n, (_, t) in zip(names, leaves):
    if n in flat and tuple(flat[n].shape) != tuple(t.shape):
      errors.append(f"{n}: shape {flat[n].shape}, expected {t.shape}")
  if errors:
    raise ValueError(f"{what} do not fit the model: " + "; ".join(errors))
  return jax.tree_util.tree_unflatten(
    treedef, [jnp.asarray(flat[n], t.dtype) for n, (_, t) in zip(names, leaves)]
  )


def hparams_dict(config):
  """A frozen config dataclass -> JSON-able dict."""
  return {
    k: (list(v) if isinstance(v, tuple) else v)
    for k, v in dataclasses.asdict(config).items()
  }


def make_config(cls, overrides):
  """Builds config ``cls`` from keyword overrides, naming unknown fields."""
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(overrides) - names)
  if unknown:
    raise ValueError(
      f"unknown hyperparameter(s) {unknown} for "
      f"{cls.__qualname__}; known: {sorted(names)}."
    )
  fixed = {
    k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items()
  }
  return cls(**fixed)


@functools.partial(jax.jit, static_argnames=("step", "static", "length"))
def _scan_chunk(carry, data, key, *, step, static, length):
  def body(c, k):
    return step(c, data, k, static)

  return jax.lax.scan(body, carry, jax.random.split(key, length))


def _chunk_length(num_steps, max_chunk):
  """Largest divisor of num_steps that is <= max_chunk (one compiled scan)."""
  for c in range(min(max_chunk, num_steps), 0, -1):
    if num_steps % c == 0:
      return c
  return 1


def train_loop(
  step,
  static,
  carry,
  data,
  key,
  num_steps,
  *,
  desc,
  progress=True,
  max_chunk=250,
):
  """Runs ``num_steps`` of a pure training step as jitted ``lax.scan`` chunks.

  Args:
    step: module-level pure function ``(carry, data, key, static) -> (carry,
      loss)``; it is a static jit argument, so the same function and ``static``
      compile once and are reused across seeds.
    static: hashable static settings (graphdef, config) given to ``step``.
    carry: pytree of training state (params, optimiser state).
    data: training data (an array ``[N, D]`` or a pytree of arrays), kept on
      device.
    key: PRNG key.
    num_steps: number of optimisation steps.
    desc: progress bar label.
    progress: show a tqdm bar.

  Returns:
    ``(carry, losses)`` with ``losses`` a float32 ``[num_steps, ...]`` array.
  """
  if num_steps < 1:
    raise ValueError(f"{desc}: num_steps must be >= 1, got {num_steps}.")
  length = _chunk_length(num_steps, max_chunk)
  data = jax.tree.map(jnp.asarray, data)
  losses = []
  with progress_lib.bar(
    total=num_steps, desc=desc, show=progress, leave=False
  ) as bar:
    for _ in range(math.ceil(num_steps / length)):
      key, sub = jax.random.split(key)
      carry, loss = _scan_chunk(
        carry, data, sub, step=step, static=static, length=length
      )
      losses.append(loss)
      bar.update(length)
      if progress:
        bar.set_postfix(loss=f"{float(jnp.mean(loss[-1])):.4g}")
  return carry, np.asarray(jnp.concatenate(losses))


def sample_in_batches(draw, seed, n, batch_size):
  """Calls ``draw(key) -> [batch_size, D]`` on fixed-size batches.

  Batch ``i`` uses ``fold_in(PRNGKey(seed), i)``, so the first ``k`` samples
  do not depend on ``n`` and the jitted ``draw`` compiles once for every ``n``
  (the last batch is drawn whole and cut).

  Returns:
    np.ndarray ``[n, D]``.
  """
  if n < 0:
    raise ValueError(f"number of samples must be >= 0, got {n}.")
  key = jax.random.PRNGKey(seed)
  out = [
    np.asarray(draw(jax.random.fold_in(key, i)))
    for i in range(math.ceil(n / batch_size))
  ]
  if not out:
    return np.zeros((0, 0), np.float32)
  return np.concatenate(out)[:n]
