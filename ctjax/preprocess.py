"""The paper's image preprocessing, on device.

For a target side S (the encoder's image size):
  resize the shorter side to int(256/224 * S) (bilinear, antialiased when
  shrinking, as PIL/torchvision) -> centre crop S x S -> [0, 1] ->
  (x - mean) / std with the checkpoint's preprocessor_config.json statistics.

Grayscale images are repeated to three channels. ``host_resize_crop`` is the
same pipeline in PIL for collections whose images differ in size.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
  """Attributes:
  image_size: output side S.
  mean: per-channel mean (3 values) subtracted after scaling to [0, 1].
  std: per-channel std (3 values).
  resize_ratio: the shorter side is resized to int(resize_ratio * S).
  """

  image_size: int
  mean: tuple[float, ...] = (0.5, 0.5, 0.5)
  std: tuple[float, ...] = (0.5, 0.5, 0.5)
  resize_ratio: float = 256 / 224

  @classmethod
  def from_encoder(cls, encoder) -> "PreprocessConfig":
    return cls(
      encoder.image_size, tuple(encoder.image_mean), tuple(encoder.image_std)
    )

  @property
  def resize_side(self) -> int:
    return int(self.resize_ratio * self.image_size)

  def identity(self) -> dict:
    return {
      "image_size": self.image_size,
      "mean": list(self.mean),
      "std": list(self.std),
      "resize_side": self.resize_side,
      "resize": "bilinear-shorter-side",
      "crop": "center",
    }


def resized_hw(h: int, w: int, short: int) -> tuple[int, int]:
  """Size after resizing the shorter side to ``short`` (torchvision's rule)."""
  if h <= w:
    return short, int(short * w / h)
  return int(short * h / w), short


def crop_offsets(h: int, w: int, size: int) -> tuple[int, int]:
  """Top/left offsets of a centred size x size crop (torchvision's rounding)."""
  if h < size or w < size:
    raise ValueError(f"cannot centre-crop {size}x{size} from a {h}x{w} image")
  return int(round((h - size) / 2.0)), int(round((w - size) / 2.0))


def check_images(images) -> tuple[int, ...]:
  """Validates an NHWC (or NHW grayscale) batch on the host; returns its shape as NHWC."""
  shape = tuple(images.shape)
  if len(shape) == 3:
    shape = shape + (1,)
  if len(shape) != 4:
    raise ValueError(
      f"images must be [N, H, W, C] or [N, H, W], got shape {tuple(images.shape)}"
    )
  if shape[-1] not in (1, 3):
    raise ValueError(
      f"images have {shape[-1]} channels; expected 1 (grayscale) or 3 (RGB) "
      f"in the last axis (NHWC), shape {tuple(images.shape)}"
    )
  dtype = np.dtype(images.dtype)
  if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
    raise ValueError(
      f"images must be uint8 (0..255) or float (0..1), got dtype {dtype}"
    )
  return shape


def _to_unit(images):
  x = images.astype(jnp.float32)
  if images.dtype == jnp.uint8:
    x = x / 255.0
  if x.ndim == 3:
    x = x[..., None]
  if x.shape[-1] == 1:
    x = jnp.broadcast_to(x, x.shape[:-1] + (3,))
  return x


def resize_crop(images, config: PreprocessConfig):
  """images ``[B, H, W, C]`` (uint8 or float in [0,1]) -> ``[B, S, S, 3]`` in [0, 1]."""
  x = _to_unit(images)
  b, h, w, c = x.shape
  nh, nw = resized_hw(h, w, config.resize_side)
  if (nh, nw) != (h, w):
    x = jax.image.resize(
      x,
      (b, nh, nw, c),
      method="linear",
      antialias=True,
      precision=jax.lax.Precision.HIGHEST,
    )
  top, left = crop_offsets(nh, nw, config.image_size)
  return x[:, top : top + config.image_size, left : left + config.image_size]


def normalize(x, config: PreprocessConfig):
  """x ``[B, S, S, 3]`` in [0, 1] -> (x - mean) / std."""
  mean = jnp.asarray(config.mean, jnp.float32)
  std = jnp.asarray(config.std, jnp.float32)
  return (x - mean) / std


def preprocess_fn(images, config: PreprocessConfig, resize: bool = True):
  """Traceable pipeline: ``[B, H, W, C|none]`` -> ``[B, S, S, 3]`` float32, normalised.

  ``resize=False`` skips resize and crop (images already S x S, e.g. from
  ``host_resize_crop``).
  """
  x = resize_crop(images, config) if resize else _to_unit(images)
  return normalize(x, config)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _preprocess_jit(images, config, resize):
  return preprocess_fn(images, config, resize)


def preprocess(
  images, config: PreprocessConfig, resize: bool = True
) -> jax.Array:
  """Preprocesses a batch on device (jitted; one compile per input shape).

  Args:
    images: ``[B, H, W, C]`` with C in {1, 3}, or ``[B, H, W]`` grayscale;
      uint8 in 0..255 or float in 0..1.
    config: the PreprocessConfig (``PreprocessConfig.from_encoder(encoder)``).
    resize: False when images are already centre-cropped S x S.

  Returns:
    ``[B, S, S, 3]`` float32, normalised with the config's mean and std.
  """
  check_images(images)
  return _preprocess_jit(jnp.asarray(images), config, resize)


def host_resize_crop(image, config: PreprocessConfig) -> np.ndarray:
  """One PIL image -> ``[S, S, 1 or 3]`` uint8 (resize + centre crop in PIL)."""
  from PIL import Image

  if image.mode not in ("L", "RGB"):
    image = image.convert("RGB")
  w, h = image.size
  nh, nw = resized_hw(h, w, config.resize_side)
  if (nh, nw) != (h, w):
    image = image.resize((nw, nh), Image.BILINEAR)
  top, left = crop_offsets(nh, nw, config.image_size)
  image = image.crop(
    (left, top, left + config.image_size, top + config.image_size)
  )
  array = np.asarray(image, np.uint8)
  return array[..., None] if array.ndim == 2 else array
