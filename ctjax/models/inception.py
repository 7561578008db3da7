"""Inception-v3 (Szegedy et al. 2016) as pytorch-fid's FID network, in Flax NNX.

The architecture is torchvision's Inception3 with pytorch-fid's FID patches
(FIDInceptionA/C/E_1/E_2), i.e. TensorFlow's 2015-12-05 graph that FID was
defined on:

- every convolution has no bias and is followed by BatchNorm (eps 0.001) and
  ReLU;
- the pool branches of the A, C and E blocks average 3x3 windows whose mean
  skips the zero padding (TF's 'SAME' average pool);
- the last block (Mixed_7c) max-pools in its pool branch
  (``InceptionConfig.last_pool = "avg"`` gives Keras' InceptionV3 instead).

Hidden states (a tuple of 12 channels-last maps ``[B, H_i, W_i, C_i]``):

  0  "stem": after the second 3x3 stride-2 max pool, the input of Mixed_5b
     (192 channels, 35x35 at 299 px; pytorch-fid's block-1 output);
  1..11 the output of Mixed_5b, 5c, 5d, 6a, 6b, 6c, 6d, 6e, 7a, 7b, 7c
     (256, 288, 288, 768, 768, 768, 768, 768, 1280, 2048, 2048 channels).

``last_hidden_state`` is Mixed_7c's map ``[B, 8, 8, 2048]`` at 299 px; its
spatial mean (``pool3``, the "mean" pooling of the last layer) is
pytorch-fid's 2048-d pool3 feature, the one FID statistics are computed on.

Weights: pytorch-fid's ``pt_inception-2015-12-05-*.pth`` (a state dict in
torchvision's names, ``Mixed_5b.branch1x1.conv.weight``) or the same tensors
as ``.safetensors``; ``checkpoint_rules`` is the key map. ``preprocess`` is
pytorch-fid's input pipeline.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from ctjax.models import layers
from ctjax.models.config import INCEPTION_BLOCKS, InceptionConfig
from ctjax.models.vit import EncoderOutput

FID_IMAGE_SIZE = 299
# Smallest input side the network accepts (every map stays >= 1 pixel).
MIN_IMAGE_SIZE = 75

# One convolution: (name, C_in, C_out, kernel (kh, kw), stride, padding (ph, pw)).
# The stem, in torchvision's names.
STEM = (
  ("Conv2d_1a_3x3", 3, 32, (3, 3), 2, (0, 0)),
  ("Conv2d_2a_3x3", 32, 32, (3, 3), 1, (0, 0)),
  ("Conv2d_2b_3x3", 32, 64, (3, 3), 1, (1, 1)),
  # 3x3 stride-2 max pool
  ("Conv2d_3b_1x1", 64, 80, (1, 1), 1, (0, 0)),
  ("Conv2d_4a_3x3", 80, 192, (3, 3), 1, (0, 0)),
  # 3x3 stride-2 max pool
)

# Mixed block -> (kind, C_in, argument): A's argument is the pool branch's
# width, C's the inner width of its 7x7 branches (torchvision's
# ``pool_features`` and ``channels_7x7``).
BLOCKS = dict(
  zip(
    INCEPTION_BLOCKS,
    (
      ("A", 192, 32),
      ("A", 256, 64),
      ("A", 288, 64),
      ("B", 288, 0),
      ("C", 768, 128),
      ("C", 768, 160),
      ("C", 768, 160),
      ("C", 768, 192),
      ("D", 768, 0),
      ("E", 1280, 0),
      ("E", 2048, 0),
    ),
  )
)


def block_convs(kind: str, c_in: int, arg: int) -> tuple:
  """The convolutions of a Mixed block, in torchvision's names and order."""
  k1, k3, k5 = (1, 1), (3, 3), (5, 5)
  p0, p1 = (0, 0), (1, 1)
  # 1xk kernels pad columns, kx1 kernels rows: the map keeps its size.
  r7, pr7, c7_, pc7 = (1, 7), (0, 3), (7, 1), (3, 0)
  r3, pr3, c3, pc3 = (1, 3), (0, 1), (3, 1), (1, 0)
  if kind == "A":
    return (
      ("branch1x1", c_in, 64, k1, 1, p0),
      ("branch5x5_1", c_in, 48, k1, 1, p0),
      ("branch5x5_2", 48, 64, k5, 1, (2, 2)),
      ("branch3x3dbl_1", c_in, 64, k1, 1, p0),
      ("branch3x3dbl_2", 64, 96, k3, 1, p1),
      ("branch3x3dbl_3", 96, 96, k3, 1, p1),
      ("branch_pool", c_in, arg, k1, 1, p0),
    )
  if kind == "B":
    return (
      ("branch3x3", c_in, 384, k3, 2, p0),
      ("branch3x3dbl_1", c_in, 64, k1, 1, p0),
      ("branch3x3dbl_2", 64, 96, k3, 1, p1),
      ("branch3x3dbl_3", 96, 96, k3, 2, p0),
    )
  if kind == "C":
    c7 = arg
    return (
      ("branch1x1", c_in, 192, k1, 1, p0),
      ("branch7x7_1", c_in, c7, k1, 1, p0),
      ("branch7x7_2", c7, c7, r7, 1, pr7),
      ("branch7x7_3", c7, 192, c7_, 1, pc7),
      ("branch7x7dbl_1", c_in, c7, k1, 1, p0),
      ("branch7x7dbl_2", c7, c7, c7_, 1, pc7),
      ("branch7x7dbl_3", c7, c7, r7, 1, pr7),
      ("branch7x7dbl_4", c7, c7, c7_, 1, pc7),
      ("branch7x7dbl_5", c7, 192, r7, 1, pr7),
      ("branch_pool", c_in, 192, k1, 1, p0),
    )
  if kind == "D":
    return (
      ("branch3x3_1", c_in, 192, k1, 1, p0),
      ("branch3x3_2", 192, 320, k3, 2, p0),
      ("branch7x7x3_1", c_in, 192, k1, 1, p0),
      ("branch7x7x3_2", 192, 192, r7, 1, pr7),
      ("branch7x7x3_3", 192, 192, c7_, 1, pc7),
      ("branch7x7x3_4", 192, 192, k3, 2, p0),
    )
  if kind == "E":
    return (
      ("branch1x1", c_in, 320, k1, 1, p0),
      ("branch3x3_1", c_in, 384, k1, 1, p0),
      ("branch3x3_2a", 384, 384, r3, 1, pr3),
      ("branch3x3_2b", 384, 384, c3, 1, pc3),
      ("branch3x3dbl_1", c_in, 448, k1, 1, p0),
      ("branch3x3dbl_2", 448, 384, k3, 1, p1),
      ("branch3x3dbl_3a", 384, 384, r3, 1, pr3),
      ("branch3x3dbl_3b", 384, 384, c3, 1, pc3),
      ("branch_pool", c_in, 192, k1, 1, p0),
    )
  raise ValueError(f"unknown Inception block kind {kind!r}")


class ConvBN(nnx.Module):
  """torchvision's BasicConv2d: convolution (no bias), BatchNorm, ReLU."""

  def __init__(
    self, c_in, c_out, kernel, stride, padding, eps: float, *, rngs: nnx.Rngs
  ):
    self.conv = layers.Conv(
      c_in, c_out, kernel, stride, padding, bias=False, rngs=rngs
    )
    self.bn = layers.BatchNorm(c_out, eps)

  def __call__(self, x):
    """x: ``[B, H, W, C_in]`` -> ``[B, H', W', C_out]``."""
    return jax.nn.relu(self.bn(self.conv(x)))


class Mixed(nnx.Module):
  """One Mixed block: parallel branches concatenated along channels.

  A: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg pool-1x1.
  B: 3x3/2 | 1x1-3x3-3x3/2 | max pool/2.
  C: 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avg pool-1x1.
  D: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max pool/2.
  E: 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool-1x1 (avg, or max
     where ``pool == "max"``).
  Average pools exclude the padding (TF semantics, pytorch-fid's patch).
  """

  def __init__(
    self,
    kind: str,
    c_in: int,
    arg: int,
    eps: float,
    pool: str = "avg",
    *,
    rngs: nnx.Rngs,
  ):
    self.kind, self.pool = kind, pool
    for name, ci, co, kernel, stride, padding in block_convs(kind, c_in, arg):
      setattr(
        self, name, ConvBN(ci, co, kernel, stride, padding, eps, rngs=rngs)
      )

  def _pool3x3(self, x):
    if self.pool == "max":
      return layers.max_pool(x, 3, 1, 1)
    return layers.avg_pool(x, 3, 1, 1)

  def __call__(self, x):
    """x: ``[B, H, W, C_in]`` -> ``[B, H', W', C_out]`` (H' = (H - 3) // 2 + 1
    for the grid reductions B and D, H otherwise)."""
    chain = lambda names, h: _chain(self, names, h)
    if self.kind == "A":
      outs = [
        self.branch1x1(x),
        chain(("branch5x5_1", "branch5x5_2"), x),
        chain(("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"), x),
        self.branch_pool(self._pool3x3(x)),
      ]
    elif self.kind == "B":
      outs = [
        self.branch3x3(x),
        chain(("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"), x),
        layers.max_pool(x, 3, 2, 0),
      ]
    elif self.kind == "C":
      outs = [
        self.branch1x1(x),
        chain(tuple(f"branch7x7_{i}" for i in range(1, 4)), x),
        chain(tuple(f"branch7x7dbl_{i}" for i in range(1, 6)), x),
        self.branch_pool(self._pool3x3(x)),
      ]
    elif self.kind == "D":
      outs = [
        chain(("branch3x3_1", "branch3x3_2"), x),
        chain(tuple(f"branch7x7x3_{i}" for i in range(1, 5)), x),
        layers.max_pool(x, 3, 2, 0),
      ]
    else:  # E
      h = self.branch3x3_1(x)
      g = chain(("branch3x3dbl_1", "branch3x3dbl_2"), x)
      outs = [
        self.branch1x1(x),
        self.branch3x3_2a(h),
        self.branch3x3_2b(h),
        self.branch3x3dbl_3a(g),
        self.branch3x3dbl_3b(g),
        self.branch_pool(self._pool3x3(x)),
      ]
    return jnp.concatenate(outs, axis=-1)


def _chain(module, names, x):
  for name in names:
    x = getattr(module, name)(x)
  return x


class InceptionV3(nnx.Module):
  """Stem and Mixed blocks of the FID Inception-v3 (no classifier)."""

  def __init__(self, config: InceptionConfig, *, rngs: nnx.Rngs):
    self.config = config
    eps = config.batch_norm_eps
    self.stem = nnx.List([ConvBN(*spec[1:], eps, rngs=rngs) for spec in STEM])
    self.blocks = nnx.List(
      [
        Mixed(
          kind,
          c_in,
          arg,
          eps,
          config.last_pool if name == INCEPTION_BLOCKS[-1] else "avg",
          rngs=rngs,
        )
        for name, (kind, c_in, arg) in BLOCKS.items()
      ]
    )

  def __call__(self, pixels) -> EncoderOutput:
    """pixels: ``[B, Hpx, Wpx, 3]`` in [-1, 1] (see ``preprocess``) ->
    EncoderOutput with ``hidden_states`` a tuple of 12 maps
    ``[B, H_i, W_i, C_i]`` (stem, Mixed_5b ... Mixed_7c) and
    ``last_hidden_state`` Mixed_7c's map."""
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
      raise ValueError(
        f"pixels must be [B, H, W, 3] (NHWC), got shape {tuple(pixels.shape)}"
      )
    if min(pixels.shape[1:3]) < MIN_IMAGE_SIZE:
      raise ValueError(
        f"Inception-v3 needs images of at least {MIN_IMAGE_SIZE}x"
        f"{MIN_IMAGE_SIZE} pixels, got {pixels.shape[1]}x{pixels.shape[2]}"
      )
    x = pixels
    for i, conv in enumerate(self.stem):
      x = conv(x)
      if i in (2, 4):  # after Conv2d_2b_3x3 and Conv2d_4a_3x3
        x = layers.max_pool(x, 3, 2, 0)
    states = [x]
    for block in self.blocks:
      x = block(x)
      states.append(x)
    return EncoderOutput(hidden_states=tuple(states), last_hidden_state=x)


def pool3(last_hidden_state):
  """pytorch-fid's pool3 feature: ``[B, H, W, 2048]`` -> ``[B, 2048]``.

  The global average of Mixed_7c's map (torch's AdaptiveAvgPool2d(1)).
  """
  return jnp.mean(last_hidden_state.astype(jnp.float32), axis=(1, 2))


def preprocess(images, size: int = FID_IMAGE_SIZE):
  """pytorch-fid's input pipeline: ``[B, H, W, C]`` -> ``[B, size, size, 3]``.

  Bilinear resize to ``size x size`` (half-pixel centres, no antialiasing:
  torch's ``F.interpolate(mode="bilinear", align_corners=False)``, no crop,
  aspect ratio not kept), then ``2 x - 1``. uint8 images are divided by 255
  first (torchvision's ToTensor); float images must already be in [0, 1].
  Grayscale (``[B, H, W]`` or C = 1) is repeated to RGB, as PIL's
  ``convert("RGB")`` in pytorch-fid's loader. Returns float32 in [-1, 1];
  jit-able (one compile per input shape).
  """
  images = jnp.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(
      f"images must be [B, H, W, 3], [B, H, W, 1] or [B, H, W], got "
      f"{images.shape}"
    )
  x = images.astype(jnp.float32)
  if images.dtype == jnp.uint8:
    x = x / 255.0
  b, h, w, _ = x.shape
  x = jnp.broadcast_to(x, (b, h, w, 3))
  if (h, w) != (size, size):
    x = jax.image.resize(
      x,
      (b, size, size, 3),
      "bilinear",
      antialias=False,
      precision=jax.lax.Precision.HIGHEST,
    )
  return 2.0 * x - 1.0


# ------------------------------------------------------------- conversion

PREFIXES = ()
# The classifier (1008 classes in pytorch-fid's file) is not part of the encoder.
IGNORED = ("fc.",)
IGNORED_SUFFIXES = (".num_batches_tracked",)
# A tensor every Inception-v3 state dict in torchvision's names holds.
SIGNATURE = "Mixed_5b.branch1x1.conv.weight"


def _conv(w):
  """torch ``[C_out, C_in, kh, kw]`` -> HWIO ``[kh, kw, C_in, C_out]``."""
  return w.transpose(2, 3, 1, 0)


def _same(x):
  return x


def _conv_bn_rules(prefix, c_in, c_out, kernel, stride, padding) -> dict:
  del stride, padding
  kh, kw = kernel
  return {
    "conv": {"kernel": (f"{prefix}.conv.weight", (c_out, c_in, kh, kw), _conv)},
    "bn": {
      "scale": (f"{prefix}.bn.weight", (c_out,), _same),
      "bias": (f"{prefix}.bn.bias", (c_out,), _same),
      "mean": (f"{prefix}.bn.running_mean", (c_out,), _same),
      "var": (f"{prefix}.bn.running_var", (c_out,), _same),
    },
  }


def checkpoint_rules(c: InceptionConfig) -> dict:
  """Nested ctjax parameter tree -> (state-dict name, shape, transform).

  Names are torchvision's / pytorch-fid's: ``Conv2d_1a_3x3.conv.weight``,
  ``Mixed_6b.branch7x7_2.bn.running_var`` ...
  """
  del c  # one architecture; the pooling option has no parameters
  return {
    "stem": {
      i: _conv_bn_rules(name, *spec) for i, (name, *spec) in enumerate(STEM)
    },
    "blocks": {
      i: {
        conv[0]: _conv_bn_rules(f"{block}.{conv[0]}", *conv[1:])
        for conv in block_convs(*BLOCKS[block])
      }
      for i, block in enumerate(INCEPTION_BLOCKS)
    },
  }
