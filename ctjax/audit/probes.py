"""Memorisation probes built from training images (He et al. 2024's curated
sets, scaled to the data set's image size), plus exact copies and the null.

The paper's recipes are for 32x32 CIFAR-10; here every size is a fraction of
the image side, so 8x8 digits get 2x2-pixel shuffle blocks and a 2x2
downsample, and 28x28 Fashion-MNIST 7x7-pixel blocks and a 7x7 downsample.

Probes (``PROBES``):
  rotate      rotation by a uniform angle in [-30, 30] degrees (bilinear, black
              fill; PIL's convention: counter-clockwise about the centre)
  noise       additive Gaussian noise, sigma = 25 on 0..255, clipped
  downsample  block-average to a quarter of the side, bilinear back up
  shuffle     4x4 grid of blocks, randomly permuted per image
  segment     foreground (pixels above a threshold) pasted on uniform noise
  copy        exact training images (C_T << 0 expected)
  test        fresh test images, the null (C_T ~ 0 expected)

All transformations are deterministic given ``seed``; source images are drawn
from the training split (the test split for "test") without replacement when
there are enough of them.
"""

import numpy as np

PROBES = ("rotate", "noise", "downsample", "shuffle", "segment", "copy", "test")

MAX_ANGLE = 30.0
NOISE_SIGMA = 25.0
DOWNSAMPLE_FACTOR = 4
SHUFFLE_GRID = 4
SEGMENT_THRESHOLD = 32


def _as_nhwc(images):
  """uint8 ``[N, H, W]`` or ``[N, H, W, C]`` -> float64 ``[N, H, W, C]``."""
  images = np.asarray(images)
  if images.ndim == 3:
    return images[..., None].astype(np.float64)
  if images.ndim == 4:
    return images.astype(np.float64)
  raise ValueError(
    f"images must be [N, H, W] or [N, H, W, C], got {images.shape}."
  )


def _to_uint8(x, shape):
  return np.rint(np.clip(x, 0, 255)).astype(np.uint8).reshape(shape)


def rotate(images, angles):
  """Rotates each image counter-clockwise by ``angles`` degrees.

  Bilinear interpolation with edge clamping, zero fill outside the source,
  about the image centre -- the convention of PIL's
  ``Image.rotate(angle, resample=BILINEAR)``.

  Args:
    images: uint8 ``[N, H, W]`` or ``[N, H, W, C]``.
    angles: ``[N]`` degrees.

  Returns:
    uint8 images of the same shape.
  """
  x = _as_nhwc(images)
  n, h, w, _ = x.shape
  theta = np.deg2rad(np.asarray(angles, np.float64)).reshape(n, 1, 1)
  cos, sin = np.cos(theta), np.sin(theta)
  yo, xo = np.meshgrid(
    np.arange(h) + 0.5 - h / 2, np.arange(w) + 0.5 - w / 2, indexing="ij"
  )
  # Inverse map: output pixel centre -> source point (continuous coordinates).
  xs = cos * xo - sin * yo + w / 2
  ys = sin * xo + cos * yo + h / 2
  inside = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
  xs, ys = xs - 0.5, ys - 0.5
  x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
  dx, dy = (xs - x0)[..., None], (ys - y0)[..., None]
  cx = lambda i: np.clip(i, 0, w - 1)
  cy = lambda i: np.clip(i, 0, h - 1)
  b = np.arange(n).reshape(n, 1, 1)
  top = (1 - dx) * x[b, cy(y0), cx(x0)] + dx * x[b, cy(y0), cx(x0 + 1)]
  bottom_ok = ((y0 + 1 >= 0) & (y0 + 1 < h))[..., None]
  bottom = np.where(
    bottom_ok,
    (1 - dx) * x[b, cy(y0 + 1), cx(x0)] + dx * x[b, cy(y0 + 1), cx(x0 + 1)],
    top,
  )
  out = np.where(inside[..., None], (1 - dy) * top + dy * bottom, 0.0)
  return _to_uint8(out, np.shape(images))


def add_noise(images, rng, sigma=NOISE_SIGMA):
  """Adds N(0, sigma^2) noise on the 0..255 scale, clipped and rounded."""
  images = np.asarray(images)
  noisy = images.astype(np.float64) + sigma * rng.standard_normal(images.shape)
  return _to_uint8(noisy, images.shape)


def _check_divisible(shape, parts, what):
  h, w = shape[1], shape[2]
  if h % parts or w % parts:
    raise ValueError(f"{what}: image side {h}x{w} is not divisible by {parts}.")


def downsample(images, factor=DOWNSAMPLE_FACTOR):
  """Block-averages to ``side / factor`` and resizes back bilinearly.

  Down: mean of each ``factor x factor`` block (= PIL's BOX filter). Up:
  bilinear with half-pixel centres and edge clamping (= PIL's BILINEAR when
  enlarging).

  Args:
    images: uint8 ``[N, H, W]`` or ``[N, H, W, C]``, H and W divisible by
      ``factor``.
  """
  x = _as_nhwc(images)
  n, h, w, c = x.shape
  _check_divisible(x.shape, factor, "downsample")
  small = x.reshape(n, h // factor, factor, w // factor, factor, c)
  small = small.mean(axis=(2, 4))

  def axis_weights(size, small_size):
    pos = (np.arange(size) + 0.5) / factor - 0.5
    lo = np.floor(pos).astype(int)
    frac = pos - lo
    m = np.zeros((size, small_size))
    np.add.at(m, (np.arange(size), np.clip(lo, 0, small_size - 1)), 1 - frac)
    np.add.at(m, (np.arange(size), np.clip(lo + 1, 0, small_size - 1)), frac)
    return m

  out = np.einsum(
    "hi,wj,nijc->nhwc",
    axis_weights(h, h // factor),
    axis_weights(w, w // factor),
    small,
  )
  return _to_uint8(out, np.shape(images))


def shuffle_blocks(images, permutations, grid=SHUFFLE_GRID):
  """Rearranges a ``grid x grid`` tiling of each image.

  Args:
    images: uint8 ``[N, H, W(, C)]``, sides divisible by ``grid``.
    permutations: int ``[N, grid*grid]``; output block ``k`` (row-major) is
      input block ``permutations[i, k]``.
  """
  x = _as_nhwc(images)
  n, h, w, c = x.shape
  _check_divisible(x.shape, grid, "shuffle")
  bh, bw = h // grid, w // grid
  blocks = x.reshape(n, grid, bh, grid, bw, c).transpose(0, 1, 3, 2, 4, 5)
  blocks = blocks.reshape(n, grid * grid, bh, bw, c)
  perm = np.asarray(permutations)
  if perm.shape != (n, grid * grid):
    raise ValueError(
      f"permutations must be [{n}, {grid * grid}], got {perm.shape}."
    )
  blocks = blocks[np.arange(n)[:, None], perm]
  out = blocks.reshape(n, grid, grid, bh, bw, c).transpose(0, 1, 3, 2, 4, 5)
  return _to_uint8(out.reshape(n, h, w, c), np.shape(images))


def paste_on_noise(images, rng, threshold=SEGMENT_THRESHOLD):
  """Keeps foreground pixels (> threshold), fills the rest with U{0..255}.

  For colour images a pixel is foreground when its channel maximum is above
  the threshold; background pixels get independent noise per channel.
  """
  images = np.asarray(images)
  x = _as_nhwc(images)
  fg = x.max(axis=-1, keepdims=True) > threshold
  noise = rng.integers(0, 256, size=x.shape)
  return _to_uint8(np.where(fg, x, noise), images.shape)


def source_indices(n, n_source, seed):
  """``n`` source indices into ``n_source`` images, without replacement when
  ``n <= n_source``."""
  rng = np.random.default_rng(seed)
  return rng.choice(n_source, size=n, replace=n > n_source)


def make_probe(name, train_images, test_images, n, seed, return_info=False):
  """Builds ``n`` probe images.

  Args:
    name: one of PROBES.
    train_images: uint8 ``[N, H, W(, C)]`` training split (the sources).
    test_images: uint8 ``[n_test, H, W(, C)]`` test split (the null).
    n: number of probe images.
    seed: seed of the sources and the transformation.
    return_info: also return a dict with the source ``indices`` ``[n]`` (into
      the training split, or the test split for "test") and the per-image
      ``angles`` or ``permutations`` where they apply.

  Returns:
    uint8 ``[n, H, W(, C)]`` (and the info dict when asked).
  """
  if name not in PROBES:
    raise ValueError(f"unknown probe {name!r}; expected one of {PROBES}.")
  for what, arr in (
    ("train_images", train_images),
    ("test_images", test_images),
  ):
    if np.asarray(arr).dtype != np.uint8 or np.ndim(arr) not in (3, 4):
      raise ValueError(
        f"{what} must be uint8 [N, H, W(, C)], got "
        f"{np.asarray(arr).dtype} {np.shape(arr)}."
      )
  pool = test_images if name == "test" else train_images
  idx = source_indices(n, len(pool), seed)
  src = np.asarray(pool)[idx]
  rng = np.random.default_rng([seed, PROBES.index(name)])
  info = {"indices": idx}
  if name == "rotate":
    info["angles"] = rng.uniform(-MAX_ANGLE, MAX_ANGLE, size=n)
    out = rotate(src, info["angles"])
  elif name == "noise":
    out = add_noise(src, rng)
  elif name == "downsample":
    out = downsample(src)
  elif name == "shuffle":
    info["permutations"] = (
      np.stack([rng.permutation(SHUFFLE_GRID**2) for _ in range(n)])
      if n
      else (np.zeros((0, SHUFFLE_GRID**2), int))
    )
    out = shuffle_blocks(src, info["permutations"])
  elif name == "segment":
    out = paste_on_noise(src, rng)
  else:  # "copy" and "test"
    out = src.copy()
  return (out, info) if return_info else out


# ------------------------------------------------------------ post-processing
# What an image meets after generation, on its way to whoever audits it. They
# are applied to generated images (not built from training images as the
# probes above are); `POSTPROCESS` names the audit's set.

POSTPROCESS = ("jpeg75", "jpeg50", "half", "histogram")


def _pil_each(images, fn):
  """Applies ``fn(PIL.Image) -> PIL.Image`` to every image of a uint8
  ``[N, H, W]`` or ``[N, H, W, C]`` (C = 1 or 3) batch."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim not in (3, 4):
    raise ValueError(
      f"images must be uint8 [N, H, W(, C)], got {images.dtype} {images.shape}."
    )
  if images.ndim == 4 and images.shape[-1] not in (1, 3):
    raise ValueError(f"images need 1 or 3 channels, got {images.shape[-1]}.")
  flat = images[..., 0] if images.ndim == 4 and images.shape[-1] == 1 else None
  src = images if flat is None else flat
  out = np.stack([np.asarray(fn(Image.fromarray(i))) for i in src])
  return out.reshape(images.shape).astype(np.uint8)


def encode_jpeg(image, quality):
  """One uint8 ``[H, W]`` (grey) or ``[H, W, 3]`` (RGB) image -> JPEG bytes
  (PIL/libjpeg, baseline, PIL's default chroma subsampling)."""
  import io  # pylint: disable=g-import-not-at-top

  from PIL import Image  # pylint: disable=g-import-not-at-top

  quality = int(quality)
  if not 1 <= quality <= 100:
    raise ValueError(f"quality must be in 1..100, got {quality}.")
  buf = io.BytesIO()
  Image.fromarray(np.asarray(image)).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def jpeg(images, quality):
  """Re-encodes every image as a JPEG of the given quality and decodes it.

  Args:
    images: uint8 ``[N, H, W]`` or ``[N, H, W, C]`` with C = 1 or 3.
    quality: libjpeg quality, 1..100 (75 and 50 in `POSTPROCESS`).

  Returns:
    uint8 images of the same shape.
  """
  import io  # pylint: disable=g-import-not-at-top

  from PIL import Image  # pylint: disable=g-import-not-at-top

  def one(img):
    return Image.open(io.BytesIO(encode_jpeg(np.asarray(img), quality)))

  return _pil_each(images, one)


def downscale_half(images):
  """Resizes every image to half its side and back (PIL bilinear, which
  filters when shrinking), as a site that serves thumbnails would.

  Args:
    images: uint8 ``[N, H, W]`` or ``[N, H, W, C]`` with C = 1 or 3; odd
      sides shrink to ``side // 2``.

  Returns:
    uint8 images of the same shape.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  def one(img):
    w, h = img.size
    small = img.resize((max(w // 2, 1), max(h // 2, 1)), Image.BILINEAR)
    return small.resize((w, h), Image.BILINEAR)

  return _pil_each(images, one)


def match_histograms(images, reference, *, per_image=True):
  """Maps pixel values so each channel's histogram matches the reference's.

  For every channel, a source value v goes to the reference's quantile at
  the source's CDF at v: with ``F(v)`` the fraction of source pixels <= v and
  ``G`` the same for the reference (over its distinct values ``r``), v ->
  ``interp(F(v), G(r), r)``, rounded. The map is non-decreasing in v.

  Args:
    images: uint8 ``[N, H, W]`` or ``[N, H, W, C]``.
    reference: uint8 images with the same channel count (any number, any
      size), e.g. the training set; their pixels are pooled per channel.
    per_image: match each image on its own (default), else the whole batch
      with one map per channel.

  Returns:
    uint8 images of the same shape as ``images``.
  """
  images, reference = np.asarray(images), np.asarray(reference)
  for what, arr in (("images", images), ("reference", reference)):
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4):
      raise ValueError(
        f"{what} must be uint8 [N, H, W(, C)], got {arr.dtype} {arr.shape}."
      )
  x = images.reshape(images.shape[:3] + (-1,))
  r = reference.reshape(reference.shape[:3] + (-1,))
  if x.shape[-1] != r.shape[-1]:
    raise ValueError(
      f"images have {x.shape[-1]} channels, reference {r.shape[-1]}."
    )
  out = np.empty_like(x)
  groups = (
    [slice(i, i + 1) for i in range(len(x))] if per_image else [slice(None)]
  )
  for c in range(x.shape[-1]):
    counts = np.bincount(r[..., c].ravel(), minlength=256)
    present = np.flatnonzero(counts)
    ref_cdf = np.cumsum(counts)[present] / counts.sum()
    for g in groups:
      src = x[g, ..., c]
      cdf = np.cumsum(np.bincount(src.ravel(), minlength=256)) / src.size
      lut = np.interp(cdf, ref_cdf, present.astype(np.float64))
      out[g, ..., c] = _to_uint8(lut, lut.shape)[src]
  return out.reshape(images.shape)


def postprocess(name, images, reference=None):
  """Applies the `POSTPROCESS` transform ``name`` ("jpeg75", "jpeg50",
  "half", "histogram"; the last needs ``reference``, e.g. training images)."""
  if name == "jpeg75":
    return jpeg(images, 75)
  if name == "jpeg50":
    return jpeg(images, 50)
  if name == "half":
    return downscale_half(images)
  if name == "histogram":
    if reference is None:
      raise ValueError("the histogram transform needs reference images.")
    return match_histograms(images, reference)
  raise ValueError(
    f"unknown transform {name!r}; expected one of {POSTPROCESS}."
  )
