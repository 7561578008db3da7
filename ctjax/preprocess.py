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


# PIL modes whose pixels are integers on a 16-bit scale (0..65535).
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def pil_to_rgb(image, name: str = "image"):
  """A PIL image as an 8-bit "RGB" (or "L") image at its real intensity.

  PIL's own ``convert("RGB")`` clips 16-bit and 32-bit integer pixels to
  0..255, so a 16-bit greyscale PNG comes out black and white. Here integer
  modes ("I;16*", and "I", which PIL uses for 16-bit PNGs) are read on the
  16-bit scale (v / 257, rounded), float mode "F" must lie in [0, 1] (as float
  arrays elsewhere in ctjax), palette, alpha ("LA", "RGBA", "PA") and "CMYK"
  images go through PIL's conversion (alpha is dropped), and anything else is
  refused by name.

  Args:
    image: a PIL image.
    name: the file, for messages.

  Returns:
    A PIL image in mode "L" or "RGB".
  """
  from PIL import Image

  mode = image.mode
  if mode in ("L", "RGB"):
    return image
  if mode in ("1", "P", "PA", "LA", "La", "RGBA", "RGBa", "RGBX", "CMYK"):
    return image.convert("RGB")
  if mode in _SIXTEEN_BIT_MODES or mode == "F":
    x = np.asarray(image)
    x = x.astype(np.float64)
    if mode == "F":
      lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
      if not (np.isfinite(x).all() and lo >= 0.0 and hi <= 1.0):
        raise ValueError(
          f"{name}: float (mode F) pixels must lie in [0, 1]; got "
          f"[{lo:.3g}, {hi:.3g}]"
        )
      x = x * 255.0
    else:
      lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
      if lo < 0 or hi > 65535:
        raise ValueError(
          f"{name}: integer (mode {mode}) pixels outside the 16-bit range "
          f"0..65535 ([{lo:.0f}, {hi:.0f}]); convert it to 8 or 16 bits"
        )
      x = x / 257.0
    return Image.fromarray(np.clip(np.round(x), 0, 255).astype(np.uint8), "L")
  raise ValueError(
    f"{name}: unsupported image mode {mode!r}; save it as 8- or 16-bit "
    "greyscale or RGB"
  )


def host_resize_crop(image, config: PreprocessConfig) -> np.ndarray:
  """One PIL image -> ``[S, S, 1 or 3]`` uint8 (resize + centre crop in PIL)."""
  from PIL import Image

  image = pil_to_rgb(image)
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
