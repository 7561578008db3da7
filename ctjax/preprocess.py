"""Image preprocessing, on device: each encoder family's own recipe.

A `PreprocessConfig` describes one recipe: resize (the shorter side, or to a
square), centre crop to S x S, scale to [0, 1], ``(x - mean) / std``.
``PreprocessConfig.from_encoder`` picks the recipe an encoder's checkpoint
expects: the folder's preprocessor_config.json when it has one (read as
transformers' image processor of that type would: ViTImageProcessor,
DeiTImageProcessor, BitImageProcessor, CLIPImageProcessor,
ConvNextImageProcessor), else the family's default (`family_default`):

  vit          the paper's pipeline (PROTOCOL §2): shorter side to
               int(256/224 * S), bilinear, centre crop S (torchvision)
  deit         DeiTImageProcessor: bicubic to int(256/224 * S) square, crop S
  dinov2       BitImageProcessor: shorter side int(256/224 * S), bicubic, crop S
  clip         CLIPImageProcessor: shorter side S, bicubic, crop S
  resnet,      ConvNextImageProcessor: shorter side int(S / 0.875), bicubic,
  convnext     crop S (a plain bicubic resize to S x S when S >= 384)
  swin         ViTImageProcessor as in microsoft/swin-*: bicubic to S x S
  inception_v3 pytorch-fid: bilinear to 299 x 299 without antialiasing,
               2 x - 1 (`ctjax.models.inception.preprocess`)

Resampling. transformers' processors resize 8-bit images with PIL, which
runs two 1-D passes and rounds to 8 bits after each, with fixed-point
(22-bit) weights of its bilinear or bicubic (a = -0.5) kernel widened by the
shrink factor (antialiasing). ``embed`` therefore resizes with PIL on the
host for these recipes (``host_resize_crop``): identical to transformers'
output up to float32 rounding of the normalisation (< 1e-6). The on-device
``preprocess`` emulates PIL's integer arithmetic exactly (`pil_weights`,
`_pil_pass`) with the width pass first, as Pillow's Resample.c; the Pillow
installed here (13.0) runs the height pass first for some sizes, and then
the two differ by a few 8-bit levels on a few percent of pixels (on noise;
less on natural images). The paper's recipe (torchvision on float tensors in
the authors' code) and pytorch-fid's resize in float, in one 2-D pass,
without rounding; their host path (PIL, then 8 bits) differs from the
device path by up to 2/255 before normalisation.

Grayscale images are repeated to three channels. ``host_resize_crop`` is the
same pipeline in PIL (and NumPy for pytorch-fid's) for collections whose
images differ in size.
"""

import dataclasses
import functools
import json
import math
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np

HALF = (0.5, 0.5, 0.5)
# transformers' IMAGENET_STANDARD_* and OPENAI_CLIP_*: the class defaults of
# its image processors when preprocessor_config.json gives no mean/std.
IMAGENET_STANDARD = (HALF, HALF)
OPENAI_CLIP = (
  (0.48145466, 0.4578275, 0.40821073),
  (0.26862954, 0.26130258, 0.27577711),
)
RESIZES = ("shorter", "square", "none")
RESAMPLES = ("bilinear", "bicubic")
# PIL's resampling codes (PILImageResampling) in preprocessor_config.json.
PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}
_PIL_NAMES = {0: "nearest", 1: "lanczos", 4: "box", 5: "hamming"}
CROP_ROUNDINGS = ("round", "floor")
FID_RECIPE = "pytorch-fid"


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
  """One preprocessing recipe (hashable: a static argument of jitted code).

  The defaults are the paper's pipeline (PROTOCOL §2).

  Attributes:
    image_size: output side S.
    mean: per-channel mean (3 values) subtracted after scaling to [0, 1].
    std: per-channel std (3 values).
    resize_ratio: without ``size``, the resize target is
      ``int(resize_ratio * S)``.
    resize: "shorter" (the shorter side to the target, aspect kept, with
      torchvision's and transformers' ``int`` of the longer side), "square"
      (to target x target, aspect not kept) or "none".
    size: the resize target in pixels (None: from ``resize_ratio``).
    crop: centre crop S x S after resizing.
    resample: "bilinear" or "bicubic" (Keys, a = -0.5, as PIL and torch).
    antialias: widen the kernel by the shrink factor when shrinking (PIL
      always does; torch's ``F.interpolate`` does not).
    pil_rounding: resize as PIL on 8-bit images (transformers' processors):
      width pass, then height pass, each rounded half up and clipped to
      0..255 (float inputs are first put on the 0..255 scale).
    crop_rounding: top/left offset of the crop, "round" (torchvision's
      ``round((h - S) / 2)``) or "floor" (transformers' ``(h - S) // 2``).
    recipe: the recipe's name, for messages and the identity ("paper",
      "ViTImageProcessor", ..., "pytorch-fid").
  """

  image_size: int
  mean: tuple[float, ...] = HALF
  std: tuple[float, ...] = HALF
  resize_ratio: float = 256 / 224
  resize: str = "shorter"
  size: int | None = None
  crop: bool = True
  resample: str = "bilinear"
  antialias: bool = True
  pil_rounding: bool = False
  crop_rounding: str = "round"
  recipe: str = "paper"

  def __post_init__(self):
    if self.resize not in RESIZES:
      raise ValueError(f"resize {self.resize!r} is not one of {RESIZES}")
    if self.resample not in RESAMPLES:
      raise ValueError(f"resample {self.resample!r} is not one of {RESAMPLES}")
    if self.crop_rounding not in CROP_ROUNDINGS:
      raise ValueError(
        f"crop_rounding {self.crop_rounding!r} is not one of {CROP_ROUNDINGS}"
      )
    if len(self.mean) != 3 or len(self.std) != 3:
      raise ValueError(
        f"mean and std need 3 values, got {self.mean} / {self.std}"
      )
    if self.image_size < 1 or self.resize_side < 1:
      raise ValueError(
        f"image_size {self.image_size} and resize target {self.resize_side} "
        "must be positive"
      )
    if self.resize == "square" and not self.crop:
      if self.resize_side != self.image_size:
        raise ValueError(
          f"a square resize to {self.resize_side} without a crop gives "
          f"{self.resize_side} px images, not image_size {self.image_size}"
        )

  @classmethod
  def from_encoder(cls, encoder) -> "PreprocessConfig":
    """The recipe the encoder's checkpoint expects (see the module docstring).

    The checkpoint folder's preprocessor_config.json
    (``encoder.preprocessor_config``) when there is one, else
    `family_default`; Inception-v3 always uses pytorch-fid's.
    """
    processor = getattr(encoder, "preprocessor_config", None)
    config = encoder.config
    if processor is not None and config.model_type != "inception_v3":
      return from_processor_dict(
        processor,
        name=getattr(encoder, "preprocessor_path", None)
        or "preprocessor_config.json",
      )
    return family_default(config)

  @classmethod
  def paper(cls, encoder) -> "PreprocessConfig":
    """The paper's pipeline at the encoder's size, mean and std."""
    return cls(
      encoder.image_size, tuple(encoder.image_mean), tuple(encoder.image_std)
    )

  @property
  def resize_side(self) -> int:
    """The resize target: the shorter side, or the square's side."""
    if self.size is not None:
      return int(self.size)
    return int(self.resize_ratio * self.image_size)

  def identity(self) -> dict:
    """Everything that changes the pixels (part of the embedding cache key)."""
    return {
      "recipe": self.recipe,
      "image_size": self.image_size,
      "mean": list(self.mean),
      "std": list(self.std),
      "resize": self.resize,
      "resize_side": self.resize_side,
      "crop": self.crop,
      "resample": self.resample,
      "antialias": self.antialias,
      "pil_rounding": self.pil_rounding,
      "crop_rounding": self.crop_rounding,
    }


def fid(image_size: int = 299) -> PreprocessConfig:
  """pytorch-fid's recipe: bilinear to S x S without antialiasing, 2 x - 1."""
  return PreprocessConfig(
    image_size,
    HALF,
    HALF,
    resize="square",
    size=image_size,
    crop=False,
    resample="bilinear",
    antialias=False,
    recipe=FID_RECIPE,
  )


def _transformers(
  recipe, size, mean, std, *, resize, target, crop=True, resample="bicubic"
):
  return PreprocessConfig(
    size,
    tuple(float(v) for v in mean),
    tuple(float(v) for v in std),
    resize=resize,
    size=target,
    crop=crop,
    resample=resample,
    pil_rounding=True,
    crop_rounding="floor",
    recipe=recipe,
  )


def family_default(config) -> PreprocessConfig:
  """A family's recipe when its folder has no preprocessor_config.json.

  The recipe of the family's released checkpoints, scaled to the config's
  ``image_size`` S, with the config's mean and std (module docstring).
  """
  s, mean, std = config.image_size, config.image_mean, config.image_std
  family = config.model_type
  if family == "inception_v3":
    return fid(s)
  if family == "vit":
    return PreprocessConfig(s, tuple(mean), tuple(std))
  ratio = int(256 / 224 * s)
  if family == "deit":
    return _transformers(
      "DeiTImageProcessor", s, mean, std, resize="square", target=ratio
    )
  if family in ("dinov2", "dinov2_with_registers"):
    return _transformers(
      "BitImageProcessor", s, mean, std, resize="shorter", target=ratio
    )
  if family == "clip_vision_model":
    return _transformers(
      "CLIPImageProcessor", s, mean, std, resize="shorter", target=s
    )
  if family in ("resnet", "convnext"):
    return _convnext(s, 224 / 256, mean, std, "bicubic")
  if family == "swin":
    return _transformers(
      "ViTImageProcessor", s, mean, std, resize="square", target=s, crop=False
    )
  raise ValueError(f"no preprocessing recipe for model_type {family!r}")


def _convnext(shortest, crop_pct, mean, std, resample):
  """ConvNextImageProcessor: below 384 px, shorter side to
  int(shortest / crop_pct) and crop; from 384 px a square resize."""
  if shortest < 384:
    return _transformers(
      "ConvNextImageProcessor",
      shortest,
      mean,
      std,
      resize="shorter",
      target=int(shortest / crop_pct),
      resample=resample,
    )
  return _transformers(
    "ConvNextImageProcessor",
    shortest,
    mean,
    std,
    resize="square",
    target=shortest,
    crop=False,
    resample=resample,
  )


# Class defaults of transformers' image processors (image_processing_pil_*.py)
# that preprocessor_config.json may leave out.
_PROCESSORS = {
  "ViTImageProcessor": dict(
    resample=2,
    size={"height": 224, "width": 224},
    do_center_crop=False,
    square=True,
    stats=IMAGENET_STANDARD,
  ),
  "DeiTImageProcessor": dict(
    resample=3,
    size={"height": 256, "width": 256},
    crop_size={"height": 224, "width": 224},
    do_center_crop=True,
    square=True,
    stats=IMAGENET_STANDARD,
  ),
  "BitImageProcessor": dict(
    resample=3,
    size={"shortest_edge": 224},
    crop_size={"height": 224, "width": 224},
    do_center_crop=True,
    square=False,
    stats=OPENAI_CLIP,
  ),
  "CLIPImageProcessor": dict(
    resample=3,
    size={"shortest_edge": 224},
    crop_size={"height": 224, "width": 224},
    do_center_crop=True,
    square=False,
    stats=OPENAI_CLIP,
  ),
  "ConvNextImageProcessor": dict(
    resample=3,
    size={"shortest_edge": 384},
    do_center_crop=False,
    square=False,
    stats=IMAGENET_STANDARD,
    crop_pct=224 / 256,
  ),
}


def processor_type(d: dict) -> str | None:
  """transformers' processor class a preprocessor_config.json names.

  ``FeatureExtractor`` is read as ``ImageProcessor``; Fast/Pil suffixes are
  dropped.
  """
  name = d.get("image_processor_type") or d.get("feature_extractor_type")
  if not name:
    return None
  name = name.replace("FeatureExtractor", "ImageProcessor")
  for suffix in ("Fast", "Pil"):
    name = name.removesuffix(suffix)
  return name


def _side(value, what: str, name: str, square_default: bool):
  """A size field -> ("square", side) or ("shorter", side)."""
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return ("square" if square_default else "shorter"), int(value)
  if isinstance(value, (list, tuple)) and len(value) == 2:
    value = {"height": value[0], "width": value[1]}
  if isinstance(value, dict):
    if "shortest_edge" in value:
      if value.get("longest_edge") is not None:
        raise ValueError(
          f"{name}: {what} {value} has a longest_edge, which ctjax does not "
          "support"
        )
      return "shorter", int(value["shortest_edge"])
    if "height" in value and "width" in value:
      if int(value["height"]) != int(value["width"]):
        raise ValueError(
          f"{name}: {what} {value} is not square; ctjax needs square inputs"
        )
      return "square", int(value["height"])
  raise ValueError(f"{name}: cannot read {what} {value!r}")


def from_processor_dict(
  d: dict, name: str = "preprocessor_config.json"
) -> PreprocessConfig:
  """The recipe of a preprocessor_config.json dict, as transformers reads it.

  Supported types: ViT, DeiT, Bit, CLIP and ConvNext image processors (and
  their FeatureExtractor names). Another type is read with the same generic
  rules (resize, optional centre crop, rescale, normalise) and a warning.

  Raises:
    ValueError: a field ctjax cannot reproduce (a resampling filter other than
      bilinear or bicubic, a non-square size, a rescale factor other than
      1/255), naming the file and the field.
  """
  kind = processor_type(d)
  defaults = _PROCESSORS.get(kind)
  if defaults is None:
    warnings.warn(
      f"{name}: image processor {kind!r} is not one ctjax knows "
      f"({sorted(_PROCESSORS)}); reading its resize, crop and normalise "
      "fields generically",
      stacklevel=2,
    )
    defaults = dict(
      resample=2, do_center_crop=False, square=True, stats=IMAGENET_STANDARD
    )
  code = d.get("resample", defaults["resample"])
  if code not in PIL_RESAMPLE:
    raise ValueError(
      f"{name}: resample {code} ({_PIL_NAMES.get(code, 'unknown')}) is not "
      "supported; ctjax reproduces 2 (bilinear) and 3 (bicubic)"
    )
  resample = PIL_RESAMPLE[code]
  if d.get("do_rescale", True):
    factor = float(d.get("rescale_factor", 1 / 255))
    if not math.isclose(factor, 1 / 255, rel_tol=1e-6):
      raise ValueError(
        f"{name}: rescale_factor {factor} is not 1/255; ctjax scales 8-bit "
        "pixels to [0, 1]"
      )
  else:
    raise ValueError(
      f"{name}: do_rescale is false (pixels left at 0..255); ctjax scales "
      "8-bit pixels to [0, 1]"
    )
  if d.get("do_normalize", True):
    mean = d.get("image_mean", defaults["stats"][0])
    std = d.get("image_std", defaults["stats"][1])
    if isinstance(mean, (int, float)):
      mean = (mean,) * 3
    if isinstance(std, (int, float)):
      std = (std,) * 3
  else:
    mean, std = (0.0,) * 3, (1.0,) * 3
  if "size" not in d and "size" not in defaults:
    raise ValueError(f"{name}: no size field")
  resize, side = _side(
    d.get("size", defaults.get("size")), "size", name, defaults["square"]
  )
  do_resize = bool(d.get("do_resize", True))
  do_crop = bool(d.get("do_center_crop", defaults["do_center_crop"]))
  crop_side = None
  if do_crop:
    crop_value = d.get("crop_size", defaults.get("crop_size"))
    if crop_value is None:
      raise ValueError(f"{name}: do_center_crop without a crop_size")
    _, crop_side = _side(crop_value, "crop_size", name, True)
  if kind == "ConvNextImageProcessor" and do_resize:
    if resize != "shorter":
      raise ValueError(f"{name}: ConvNextImageProcessor needs shortest_edge")
    base = _convnext(
      side, float(d.get("crop_pct", defaults["crop_pct"])), mean, std, resample
    )
    if crop_side is None or crop_side == base.image_size:
      return base
    # A second crop after ConvNeXt's own (unusual): keep the outer one only
    # when it is the binding one.
    raise ValueError(
      f"{name}: ConvNextImageProcessor with do_center_crop and crop_size "
      f"{crop_side} != {base.image_size} is not supported"
    )
  if not do_resize:
    resize = "none"
  if crop_side is None:
    if resize == "shorter":
      raise ValueError(
        f"{name}: a shortest_edge resize without a centre crop gives "
        "non-square images; ctjax needs square inputs"
      )
    if resize == "none":
      raise ValueError(
        f"{name}: neither do_resize nor do_center_crop: the input size is "
        "not fixed"
      )
  return _transformers(
    kind or "ImageProcessor",
    crop_side if crop_side is not None else side,
    mean,
    std,
    resize=resize,
    target=side,
    crop=crop_side is not None,
    resample=resample,
  )


def read_processor_file(path: str) -> PreprocessConfig:
  """`from_processor_dict` of a preprocessor_config.json file."""
  try:
    with open(path) as f:
      d = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"cannot read {path}: {e}") from e
  if not isinstance(d, dict):
    raise ValueError(f"{path} does not hold a JSON object")
  return from_processor_dict(d, name=os.fspath(path))


def resized_hw(h: int, w: int, short: int) -> tuple[int, int]:
  """Size after resizing the shorter side to ``short`` (torchvision's and
  transformers' rule: the longer side is ``int(short * long / short_in)``)."""
  if h <= w:
    return short, int(short * w / h)
  return int(short * h / w), short


def target_hw(h: int, w: int, config: PreprocessConfig) -> tuple[int, int]:
  """Size of an ``h x w`` image after the config's resize."""
  if config.resize == "shorter":
    return resized_hw(h, w, config.resize_side)
  if config.resize == "square":
    return config.resize_side, config.resize_side
  return h, w


def crop_offsets(
  h: int, w: int, size: int, rounding: str = "round"
) -> tuple[int, int]:
  """Top/left offsets of a centred size x size crop.

  ``rounding`` "round": torchvision's ``int(round((h - size) / 2))``;
  "floor": transformers' ``(h - size) // 2``.
  """
  if h < size or w < size:
    raise ValueError(f"cannot centre-crop {size}x{size} from a {h}x{w} image")
  if rounding == "floor":
    return (h - size) // 2, (w - size) // 2
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


# PIL's fixed-point resampling (Pillow's Resample.c), emulated exactly.
PIL_PRECISION_BITS = 22  # 32 - 8 - 2, as Pillow's 8-bit resampling


def _pil_filter(x: np.ndarray, resample: str) -> np.ndarray:
  """Pillow's bilinear (triangle) or bicubic (Keys, a = -0.5) kernel."""
  x = np.abs(x)
  if resample == "bilinear":
    return np.where(x < 1.0, 1.0 - x, 0.0)
  a = -0.5
  near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
  far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
  return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=64)
def pil_weights(n_in: int, n_out: int, resample: str) -> np.ndarray:
  """Pillow's integer resampling weights ``[n_in, n_out]`` for one axis.

  As Pillow's ``precompute_coeffs`` and ``normalize_coeffs_8bpc``: the
  kernel is widened by the shrink factor, taps run from
  ``int(center - support + 0.5)`` to ``int(center + support + 0.5)`` (C
  truncation, clipped to the image), weights are normalised to sum 1 and
  rounded to ``PIL_PRECISION_BITS`` fixed-point integers (half away from 0).
  """
  support = 1.0 if resample == "bilinear" else 2.0
  scale = n_in / n_out
  filterscale = max(scale, 1.0)
  support *= filterscale
  out = np.zeros((n_in, n_out), np.int64)
  for j in range(n_out):
    center = (j + 0.5) * scale
    xmin = max(math.trunc(center - support + 0.5), 0)
    xmax = min(math.trunc(center + support + 0.5), n_in)
    x = np.arange(xmin, xmax)
    w = _pil_filter((x - center + 0.5) / filterscale, resample)
    total = w.sum()
    if total != 0.0:
      w = w / total
    fixed = w * (1 << PIL_PRECISION_BITS)
    out[xmin:xmax, j] = np.where(
      w < 0, np.trunc(fixed - 0.5), np.trunc(fixed + 0.5)
    ).astype(np.int64)
  return out


def _pil_pass(x, axis: int, n: int, resample: str):
  """One of PIL's 1-D passes on 8-bit values held as float32, exactly.

  ``sum(pixel * weight)`` needs ~31 bits; the weights are split into three
  8-bit parts so that every float32 product and partial sum is an integer
  below 2**24 (exact), and the parts are joined in int32.
  """
  if x.shape[axis] == n:
    return x
  w = pil_weights(x.shape[axis], n, resample)
  parts = (
    w >> 16,
    (w >> 8) & 0xFF,
    w & 0xFF,
  )  # w = hi * 2**16 + mid * 2**8 + lo
  total = jnp.full((), 1 << (PIL_PRECISION_BITS - 1), jnp.int32)
  spec = "bhwc,wv->bhvc" if axis == 2 else "bhwc,hv->bvwc"
  for shift, part in zip((16, 8, 0), parts):
    s = jnp.einsum(
      spec,
      x,
      jnp.asarray(part, jnp.float32),
      precision=jax.lax.Precision.HIGHEST,
    )
    total = total + (s.astype(jnp.int32) << shift)
  out = total >> PIL_PRECISION_BITS  # arithmetic shift: floor
  return jnp.clip(out, 0, 255).astype(jnp.float32)


def _resize(x, nh: int, nw: int, config: PreprocessConfig):
  """x ``[B, H, W, 3]`` in [0, 1] -> ``[B, nh, nw, 3]`` in [0, 1]."""
  b, h, w, c = x.shape
  if (nh, nw) == (h, w):
    return x
  if config.pil_rounding:
    # transformers' PIL backend: 8-bit image, width pass, then height pass.
    x = jnp.clip(jnp.floor(x * 255.0 + 0.5), 0.0, 255.0)
    x = _pil_pass(x, 2, nw, config.resample)
    x = _pil_pass(x, 1, nh, config.resample)
    return x / 255.0
  return jax.image.resize(
    x,
    (b, nh, nw, c),
    method="cubic" if config.resample == "bicubic" else "linear",
    antialias=config.antialias,
    precision=jax.lax.Precision.HIGHEST,
  )


def resize_crop(images, config: PreprocessConfig):
  """images ``[B, H, W, C]`` (uint8 or float in [0,1]) -> ``[B, S, S, 3]`` in [0, 1]."""
  x = _to_unit(images)
  _, h, w, _ = x.shape
  nh, nw = target_hw(h, w, config)
  x = _resize(x, nh, nw, config)
  if not config.crop:
    return x
  top, left = crop_offsets(nh, nw, config.image_size, config.crop_rounding)
  return x[:, top : top + config.image_size, left : left + config.image_size]


def normalize(x, config: PreprocessConfig):
  """x ``[B, S, S, 3]`` in [0, 1] -> (x - mean) / std."""
  mean = jnp.asarray(config.mean, jnp.float32)
  std = jnp.asarray(config.std, jnp.float32)
  return (x - mean) / std


def preprocess_fn(images, config: PreprocessConfig, resize: bool = True):
  """Traceable pipeline: ``[B, H, W, C|none]`` -> ``[B, S, S, 3]`` float32, normalised.

  ``resize=False`` skips resize and crop (images already S x S, e.g. from
  ``host_resize_crop``). pytorch-fid's recipe runs
  `ctjax.models.inception.preprocess`.
  """
  if resize and config.recipe == FID_RECIPE:
    from ctjax.models import inception  # pylint: disable=g-import-not-at-top

    return inception.preprocess(images, config.image_size)
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
  """One PIL image -> ``[S, S, 1 or 3]`` resized and cropped on the host.

  uint8 from PIL's resize with the recipe's filter (for transformers'
  recipes exactly what their processors compute); for pytorch-fid's recipe
  float32 in [0, 1] from `bilinear_no_antialias` (torch's ``F.interpolate``).
  """
  from PIL import Image

  image = pil_to_rgb(image)
  w, h = image.size
  if config.recipe == FID_RECIPE:
    array = np.asarray(image, np.float32) / 255.0
    array = array[..., None] if array.ndim == 2 else array
    s = config.image_size
    return bilinear_no_antialias(array, s, s)
  nh, nw = target_hw(h, w, config)
  if (nh, nw) != (h, w):
    image = image.resize(
      (nw, nh),
      Image.BICUBIC if config.resample == "bicubic" else Image.BILINEAR,
    )
  if config.crop:
    s = config.image_size
    top, left = crop_offsets(nh, nw, s, config.crop_rounding)
    image = image.crop((left, top, left + s, top + s))
  array = np.asarray(image, np.uint8)
  return array[..., None] if array.ndim == 2 else array


def _linear_taps(n_in: int, n_out: int):
  """Source indices and weights of torch's bilinear (align_corners=False)."""
  src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
  src = np.maximum(src, 0.0)
  i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  frac = (src - i0).astype(np.float32)
  return i0, i1, frac


def bilinear_no_antialias(image: np.ndarray, nh: int, nw: int) -> np.ndarray:
  """``[H, W, C]`` float -> ``[nh, nw, C]``: torch's ``F.interpolate(mode=
  "bilinear", align_corners=False)`` (no antialiasing), in NumPy."""
  h, w = image.shape[:2]
  r0, r1, fr = _linear_taps(h, nh)
  c0, c1, fc = _linear_taps(w, nw)
  rows = image[r0] * (1 - fr)[:, None, None] + image[r1] * fr[:, None, None]
  out = rows[:, c0] * (1 - fc)[None, :, None] + rows[:, c1] * fc[None, :, None]
  return out.astype(np.float32)
