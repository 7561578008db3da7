"""Building blocks of the encoders, in Flax NNX.

Shapes: B batch, T tokens, D width, H heads, K head width, F MLP width,
P patch side, C channels; feature maps are channels-last ``[B, H, W, C]``.
Kernels are stored ``[in, out]`` (Flax order) and convolution kernels
``[kh, kw, C_in / groups, C_out]`` (HWIO); the conversion rules transpose
PyTorch's ``[out, in]`` and ``[C_out, C_in / groups, kh, kw]``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ctjax import threads
from ctjax.stats import native

_init = nnx.initializers.truncated_normal(stddev=0.02)


def gelu(x):
  """Exact GELU, ``x / 2 * (1 + erf(x / sqrt(2)))``, the form torch computes.

  jax.nn.gelu(approximate=False) uses erfc, which XLA:CPU expands into an
  exp, two divisions and selects: erf is 1.2-2.7x faster at batch 8, f32
  ([8,56,56,384] 43.9 -> 36.9 ms, [8,197,3072] 8.6 -> 3.2 ms; PyTorch 20.0
  and 7.9 ms; best of 3 interleaved rounds, load 5.0), both within 1.5e-6
  of torch's GELU.
  """
  return 0.5 * x * (1 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)))


def activation(name: str):
  """The Hugging Face ACT2FN function of that name."""
  if name == "gelu":
    return gelu
  if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
    return lambda x: jax.nn.gelu(x, approximate=True)
  if name == "quick_gelu":
    return lambda x: x * jax.nn.sigmoid(1.702 * x)
  if name == "relu":
    return jax.nn.relu
  if name in ("silu", "swish"):
    return jax.nn.silu
  raise ValueError(f"unknown activation {name!r}")


class Dense(nnx.Module):
  """``y = x @ kernel + bias``; kernel ``[..in, ..out]`` contracted by an einsum.

  ``spec`` names the contraction, e.g. ``'btd,dhk->bthk'`` for a query
  projection with kernel ``[D, H, K]``.
  """

  def __init__(
    self, spec: str, kernel_shape, bias_shape=None, *, rngs: nnx.Rngs
  ):
    self.spec = spec
    self.kernel = nnx.Param(_init(rngs.params(), kernel_shape, jnp.float32))
    self.bias = (
      nnx.Param(jnp.zeros(bias_shape, jnp.float32)) if bias_shape else None
    )

  def __call__(self, x):
    return dense(x, self)

  def _xla(self, x):
    y = jnp.einsum(self.spec, x, self.kernel[...].astype(x.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(x.dtype)
    return y


def _matrix_spec(spec: str) -> int | None:
  """How many of x's trailing axes ``spec`` contracts with the kernel's
  leading ones, where the einsum is one matrix product
  (``'...c,c...->......'``, e.g. ``'btd,dhk->bthk'``: 1; ``'bthk,hkd->btd'``:
  2); else None."""
  lhs, rest = spec.split(",")
  rhs, out = rest.split("->")
  for c in range(min(len(lhs), len(rhs)), 0, -1):
    if (
      lhs[-c:] == rhs[:c]
      and out == lhs[:-c] + rhs[c:]
      and len(set(lhs + rhs)) == len(lhs) + len(rhs) - c
    ):
      return c
  return None


# The products `dense` gives to ctjax's kernel: at least this many rows
# (x's leading axes), contracted and output features. ViT-B/16's and CLIP
# ViT-B/16's (1,576 rows at batch 8; 768 or 3,072 deep and wide) qualify;
# Swin-T's and ConvNeXt-T's ran 12% and 4% slower whole with the kernel
# (their products are narrower, or have fewer rows), so they keep XLA's.
NATIVE_DENSE_MIN_SHAPE = (1024, 768, 768)
# ...and at most this many CPUs for the process. The kernel wins by how it
# splits a product between cores: on 2 cores ViT-B/16 ran 3-6% faster with
# it, on 1 core level with XLA (1.009x); more cores were not measured.
NATIVE_DENSE_MAX_CPUS = 2


def dense(x, layer: Dense, act: str | None = None):
  """``activation(act)(layer(x))`` (``act`` None: ``layer(x)``).

  On a CPU with AVX-512 and at most `NATIVE_DENSE_MAX_CPUS` cores for this
  process, in float32, for a product whose einsum is one
  matrix product of at least `NATIVE_DENSE_MIN_SHAPE` and ``act`` in
  `ctjax.stats.native.DENSE_ACTIVATIONS`: ctjax's compiled kernel
  (`ctjax.stats.native.dense`, the activation in its epilogue, with the XLA
  form's derivatives). Each thread owns a block of output columns, so the
  2-core product runs ~2x one core's rate where XLA's ran 1.7x (measured
  against XLA and PyTorch in docs/performance.md). Otherwise XLA's einsum.
  """
  kernel = layer.kernel[...]
  c = _matrix_spec(layer.spec)
  if (
    c is not None
    and act in native.DENSE_ACTIVATIONS
    and x.ndim >= c
    and x.shape[x.ndim - c :] == kernel.shape[:c]
    and native.why_not(x.dtype) is None
    and native.has_avx512()
    and threads.host_cores() <= NATIVE_DENSE_MAX_CPUS
  ):
    k = math.prod(kernel.shape[:c])
    n = kernel.size // max(k, 1)
    rows = x.size // max(k, 1)
    if all(v >= lo for v, lo in zip((rows, k, n), NATIVE_DENSE_MIN_SHAPE)):
      out_shape = x.shape[: x.ndim - c] + kernel.shape[c:]
      bias = (
        layer.bias[...]
        if layer.bias is not None
        else jnp.zeros(kernel.shape[c:], x.dtype)
      )

      def fast(x, kernel, bias):
        y = native.dense(
          x.reshape(-1, k), kernel.reshape(k, n), bias.reshape(n), act
        )
        return y.reshape(out_shape)

      def slow(x, kernel, bias):
        y = jnp.einsum(layer.spec, x, kernel) + bias
        return activation(act)(y) if act else y

      return with_xla_derivatives(fast, slow)(x, kernel, bias)
  y = layer._xla(x)
  return activation(act)(y) if act else y


class LayerNorm(nnx.Module):
  """LayerNorm over the last axis with the biased (two-pass) variance, as torch."""

  def __init__(self, dim: int, eps: float):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))

  def __call__(self, x):
    """x: ``[..., D]`` -> ``[..., D]`` (statistics in float32)."""
    if native.why_not(x.dtype) is None:
      # ctjax's compiled kernel (ctjax.stats.native, layernorm.cc): 2.5-4x
      # faster than the XLA form below at the encoders' shapes.
      return with_xla_derivatives(
        lambda x, s, b: native.layer_norm(x, s, b, self.eps),
        lambda x, s, b: self._xla(x, s, b),
      )(x, self.scale[...], self.bias[...])
    return self._xla(x, self.scale[...], self.bias[...])

  def _xla(self, x, scale, bias):
    x32 = x.astype(jnp.float32)
    # Both means as products with a [D, 1] column of 1/D rather than
    # reductions. XLA:CPU fuses a reduction with the ops that produce its
    # input and recomputes them inside its loop: after ConvNeXt's 7x7
    # depthwise convolution that made this LayerNorm 9-12x slower than the
    # convolution itself at 56x56 and 28x28 (measured, see
    # benchmarks/bench_encoder.py). A product reads its input once.
    avg = jnp.full((x.shape[-1], 1), 1.0 / x.shape[-1], jnp.float32)
    mean = jnp.matmul(x32, avg, precision=jax.lax.Precision.HIGHEST)
    centred = x32 - mean
    var = jnp.matmul(
      centred * centred, avg, precision=jax.lax.Precision.HIGHEST
    )
    y = centred * jax.lax.rsqrt(var + self.eps)
    y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(x.dtype)


class PatchEmbed(nnx.Module):
  """Non-overlapping P x P patches -> D-wide tokens (a stride-P convolution)."""

  def __init__(
    self,
    patch: int,
    channels: int,
    dim: int,
    bias: bool = True,
    *,
    rngs: nnx.Rngs,
  ):
    self.patch = patch
    self.proj = Dense(
      "bhpwqc,pqcd->bhwd",
      (patch, patch, channels, dim),
      (dim,) if bias else None,
      rngs=rngs,
    )

  def __call__(self, pixels):
    """pixels: ``[B, Hpx, Wpx, C]`` -> tokens ``[B, gh*gw, D]``, gh = Hpx // P.

    Rows and columns beyond the last whole patch are dropped, as the
    convolution does.
    """
    b, h, w, c = pixels.shape
    p = self.patch
    gh, gw = h // p, w // p
    x = pixels[:, : gh * p, : gw * p].reshape(b, gh, p, gw, p, c)
    x = self.proj(x)
    return x.reshape(b, gh * gw, x.shape[-1])


class Attention(nnx.Module):
  """Multi-head self-attention without masking."""

  def __init__(
    self, dim: int, heads: int, head_dim: int, qkv_bias: bool, *, rngs: nnx.Rngs
  ):
    bias = (heads, head_dim) if qkv_bias else None
    self.query = Dense("btd,dhk->bthk", (dim, heads, head_dim), bias, rngs=rngs)
    self.key = Dense("btd,dhk->bthk", (dim, heads, head_dim), bias, rngs=rngs)
    self.value = Dense("btd,dhk->bthk", (dim, heads, head_dim), bias, rngs=rngs)
    self.out = Dense("bthk,hkd->btd", (heads, head_dim, dim), (dim,), rngs=rngs)
    self.scale = head_dim**-0.5

  def __call__(self, x):
    """x: ``[B, T, D]`` -> ``[B, T, D]`` (see ``attention``)."""
    q, k, v = self.query(x), self.key(x), self.value(x)  # [B, T, H, K]
    return self.out(attention(q, k, v, self.scale))


def attention(q, k, v, scale: float, bias=None):
  """softmax(scale q k^T + bias) v of every head.

  q, k, v: ``[B, T, H, K]``; bias: None or broadcastable to ``[B, H, T, T]``
  (float32). Returns ``[B, T, H, K]``. On the CPU, without a bias and in
  float32, it runs ctjax's compiled kernel (`ctjax.stats.native.attention`);
  otherwise there the heads are moved in front (``[B, H, T, K]``) so both
  products are plain batched matrix products (~2x faster there than
  jax.nn.dot_product_attention's einsums), logits and softmax in float32;
  elsewhere, without a bias,
  jax.nn.dot_product_attention picks a fused kernel (cuDNN flash attention
  for bfloat16 on GPU).
  """
  if bias is None and jax.default_backend() != "cpu":
    return jax.nn.dot_product_attention(q, k, v, scale=scale)
  if bias is None and native.why_not(q.dtype) is None:
    # ctjax's compiled kernel (ctjax.stats.native, attention.cc): the logits
    # stay in cache. ViT-B/16, batch 8, one layer: 15.2 -> 5.1 ms (PyTorch's
    # SDPA 5.2), same process. Derivatives are the XLA path's.
    return with_xla_derivatives(
      lambda q, k, v: native.attention(q, k, v, scale),
      lambda q, k, v: _attention_xla(q, k, v, scale, None),
    )(q, k, v)
  return _attention_xla(q, k, v, scale, bias)


def with_xla_derivatives(fast, slow):
  """``fast`` (a native kernel, which JAX cannot differentiate) with the
  derivatives of ``slow`` (the same function in XLA): `jax.grad`, `jax.jvp`
  and `jax.vjp` work, and evaluate ``slow`` only when differentiating."""
  f = jax.custom_jvp(fast)
  f.defjvp(
    lambda primals, tangents: (
      fast(*primals),
      jax.jvp(slow, primals, tangents)[1],
    )
  )
  return f


def _attention_xla(q, k, v, scale, bias):
  """`attention` as XLA operations (heads in front, two batched products)."""
  dt = q.dtype
  # The scale goes on q ([B, T, H, K], fused into its transpose), not on the
  # logits: XLA:CPU materialises a scale array of the logits' shape for that
  # multiply (f32[8,12,197,197], 15-22 ms per call) and reads it in every
  # block. ViT-B/16 attention, batch 8: 27.6 -> 22.7 ms (PyTorch's SDPA
  # 23.8 ms), same process, best of 4 rounds, load 3.6. Exact when the scale
  # is a power of two (head width 64), else within an ulp.
  q = q * jnp.asarray(scale, dt)
  q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))  # [B, H, T, K]
  logits = jnp.matmul(q, k.swapaxes(-1, -2)).astype(jnp.float32)
  if bias is not None:
    logits = logits + bias
  probs = jax.nn.softmax(logits, axis=-1).astype(dt)
  return jnp.matmul(probs, v).transpose(0, 2, 1, 3)


class Mlp(nnx.Module):
  """fc1 -> activation -> fc2."""

  def __init__(self, dim: int, hidden: int, act: str, *, rngs: nnx.Rngs):
    self.fc1 = Dense("btd,df->btf", (dim, hidden), (hidden,), rngs=rngs)
    self.fc2 = Dense("btf,fd->btd", (hidden, dim), (dim,), rngs=rngs)
    self.act_name = act
    activation(act)  # an unknown name fails here, not at the first call

  def __call__(self, x):
    """x: ``[B, T, D]`` -> ``[B, T, D]``."""
    return mlp(x, self.fc1, self.act_name, self.fc2)


# Largest ``w1.size + w2.size`` for which `mlp` runs the native kernel: the
# kernel keeps the hidden layer in cache and re-reads the weights for every
# 32 rows, so it wins where XLA is bound by memory (narrow layers) and loses
# where the products dominate. ConvNeXt-T's MLP, batch 8, same process
# (XLA / native): 96 wide 35.5 / 12.0 ms, 192 wide 21.6 / 11.0, 384 wide
# 11.0 / 15.5, 768 wide 12.3 / 31.4.
NATIVE_MLP_MAX_WEIGHTS = 2 * 192 * 768


def mlp(x, fc1: Dense, act: str, fc2: Dense):
  """``fc2(activation(act)(fc1(x)))`` for two `Dense` of 2-D kernels.

  On a CPU in float32, with exact GELU, biases, output widths that are
  multiples of 32 and weights of at most `NATIVE_MLP_MAX_WEIGHTS` elements,
  ctjax's compiled kernel (`ctjax.stats.native.mlp_gelu`; the XLA form's
  derivatives); otherwise `dense` for fc1 with the activation, then fc2
  (ctjax's dense kernel where it applies, else XLA's products).
  """
  w1, w2 = fc1.kernel[...], fc2.kernel[...]
  if (
    act == "gelu"
    and fc1.bias is not None
    and fc2.bias is not None
    and w1.ndim == w2.ndim == 2
    and w1.shape[1] % 32 == 0
    and w2.shape[1] % 32 == 0
    and w1.size + w2.size <= NATIVE_MLP_MAX_WEIGHTS
    and native.why_not(x.dtype) is None
  ):

    def slow(x, w1, b1, w2, b2):
      h = gelu(jnp.einsum("...c,cf->...f", x, w1) + b1)
      return jnp.einsum("...f,fe->...e", h, w2) + b2

    return with_xla_derivatives(native.mlp_gelu, slow)(
      x, w1, fc1.bias[...], w2, fc2.bias[...]
    )
  return fc2(dense(x, fc1, act))


class SwiGLU(nnx.Module):
  """down(silu(gate(x)) * up(x)), DINOv2-giant's MLP."""

  def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs):
    self.gate = Dense("btd,df->btf", (dim, hidden), (hidden,), rngs=rngs)
    self.up = Dense("btd,df->btf", (dim, hidden), (hidden,), rngs=rngs)
    self.down = Dense("btf,fd->btd", (hidden, dim), (dim,), rngs=rngs)

  def __call__(self, x):
    """x: ``[B, T, D]`` -> ``[B, T, D]``."""
    return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class LayerScale(nnx.Module):
  """Per-channel scale ``[D]`` on a residual branch (DINOv2)."""

  def __init__(self, dim: int, value: float):
    self.scale = nnx.Param(jnp.full((dim,), value, jnp.float32))

  def __call__(self, x):
    return x * self.scale[...].astype(x.dtype)


class Block(nnx.Module):
  """Pre-norm transformer block: x + LS(attn(LN(x))), then x + LS(mlp(LN(x)))."""

  def __init__(self, config, *, rngs: nnx.Rngs):
    d = config.hidden_size
    self.norm1 = LayerNorm(d, config.layer_norm_eps)
    self.attn = Attention(
      d, config.num_heads, config.head_dim, config.qkv_bias, rngs=rngs
    )
    self.norm2 = LayerNorm(d, config.layer_norm_eps)
    if config.swiglu:
      self.mlp = SwiGLU(d, config.mlp_dim, rngs=rngs)
    else:
      self.mlp = Mlp(d, config.mlp_dim, config.hidden_act, rngs=rngs)
    self.ls1 = (
      LayerScale(d, config.layerscale_value) if config.layer_scale else None
    )
    self.ls2 = (
      LayerScale(d, config.layerscale_value) if config.layer_scale else None
    )

  def __call__(self, x):
    """x: ``[B, T, D]`` -> ``[B, T, D]``."""
    h = self.attn(self.norm1(x))
    x = x + (self.ls1(h) if self.ls1 is not None else h)
    h = self.mlp(self.norm2(x))
    return x + (self.ls2(h) if self.ls2 is not None else h)


def _pair(v) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class Conv(nnx.Module):
  """2-D convolution of channels-last maps, zero padding on every side.

  ``kernel [kh, kw, C_in / groups, C_out]`` (``kernel`` and ``padding`` are
  an int for square ones or an ``(h, w)`` pair, as torch's Conv2d);
  ``groups == C_in == C_out`` is a depthwise convolution.
  """

  def __init__(
    self,
    c_in: int,
    c_out: int,
    kernel: int | tuple[int, int],
    stride: int = 1,
    padding: int | tuple[int, int] = 0,
    groups: int = 1,
    bias: bool = True,
    *,
    rngs: nnx.Rngs,
  ):
    kh, kw = _pair(kernel)
    self.stride, self.padding, self.groups = stride, _pair(padding), groups
    self.kernel = nnx.Param(
      _init(rngs.params(), (kh, kw, c_in // groups, c_out), jnp.float32)
    )
    self.bias = nnx.Param(jnp.zeros((c_out,), jnp.float32)) if bias else None

  def __call__(self, x):
    """x: ``[B, H, W, C_in]`` -> ``[B, H', W', C_out]``, as torch's Conv2d."""
    kernel = self.kernel[...].astype(x.dtype)
    bias = None if self.bias is None else self.bias[...].astype(x.dtype)
    return conv2d(x, kernel, bias, self.stride, self.padding, self.groups)


def conv2d(x, kernel, bias, stride: int, padding, groups: int = 1):
  """torch's Conv2d of channels-last maps with an HWIO kernel.

  x ``[B, H, W, C_in]``, kernel ``[kh, kw, C_in / groups, C_out]``, bias
  ``[C_out]`` or None, padding ``(ph, pw)`` zeros on both sides ->
  ``[B, H', W', C_out]``. A depthwise convolution (``groups == C_in ==
  C_out``) on the CPU runs, at stride 1 in float32, ctjax's compiled kernel
  (`ctjax.stats.native.depthwise_conv2d`), else ``kh * kw`` shifted
  multiply-adds, which XLA fuses into one loop (its grouped convolution
  runs ~50x slower there); a 1x1 convolution without padding runs as a
  matrix product, and an unpadded stride-1 convolution as a padded one,
  cropped.
  """
  ph, pw = padding
  c_in, c_out = x.shape[-1], kernel.shape[-1]
  cpu = jax.default_backend() == "cpu"
  if groups == c_in == c_out and groups > 1 and cpu:
    # The bias starts the sum: added after it, XLA:CPU fused the add into
    # the next LayerNorm's products and recomputed the whole convolution
    # there (ConvNeXt-T, batch 8: convolution + LayerNorm 14.2 -> 6.8 ms at
    # 56x56x96, 2.7 -> 1.4 ms at 7x7x768).
    if stride == 1 and native.why_not(x.dtype) is None:
      # ctjax's compiled kernel (ctjax.stats.native, depthwise.cc):
      # ConvNeXt-T's 7x7 convolutions ~3x faster than XLA's fused loop
      # (docs/performance.md).
      if bias is None:
        bias = jnp.zeros((c_out,), x.dtype)
      return with_xla_derivatives(
        lambda x, w, b: native.depthwise_conv2d(x, w, b, (ph, pw)),
        lambda x, w, b: depthwise_conv2d(x, w, 1, (ph, pw), b),
      )(x, kernel[:, :, 0, :], bias)
    return depthwise_conv2d(x, kernel[:, :, 0, :], stride, (ph, pw), bias)
  elif kernel.shape[:2] == (1, 1) and groups == 1 and ph == pw == 0 and cpu:
    # A 1x1 convolution is a matrix product over channels (~3x faster than
    # XLA:CPU's convolution).
    y = jnp.einsum("bhwc,cd->bhwd", x[:, ::stride, ::stride], kernel[0, 0])
  elif cpu and stride == 1 and ph == pw == 0 and min(kernel.shape[:2]) > 1:
    # An unpadded convolution is computed with one row and column of zeros
    # on every side and its border cropped: the same sums, but XLA:CPU's
    # (YNNPACK's) unpadded convolution is 3-4x slower than its padded one.
    # Inception-v3, batch 8, same process, best of 3: 149x149x32 -> 32 3x3
    # 223 -> 51 ms (PyTorch 67 ms), 73x73x80 -> 192 3x3 493 -> 177 ms
    # (PyTorch 111 ms), at load 4.3; identical outputs.
    y = jax.lax.conv_general_dilated(
      x,
      kernel,
      window_strides=(1, 1),
      padding=((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=groups,
    )[:, 1:-1, 1:-1]
  else:
    y = jax.lax.conv_general_dilated(
      x,
      kernel,
      window_strides=(stride, stride),
      padding=((ph, ph), (pw, pw)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=groups,
    )
  if bias is not None:
    y = y + bias
  return y


def depthwise_conv2d(x, kernel, stride: int, padding, bias=None):
  """Depthwise convolution as a sum of shifted, per-channel scaled maps.

  x ``[B, H, W, C]``, kernel ``[kh, kw, C]``, zero padding ``(ph, pw)``,
  bias ``[C]`` or None -> ``[B, H', W', C]``, H' = (H + 2 ph - kh) // stride
  + 1. Sums in float32, starting from the bias.
  """
  kh, kw, _ = kernel.shape
  ph, pw = padding
  b, h, w, c = x.shape
  ho = (h + 2 * ph - kh) // stride + 1
  wo = (w + 2 * pw - kw) // stride + 1
  xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
  k32 = kernel.astype(jnp.float32)
  start = jnp.zeros((c,), jnp.float32) if bias is None else bias
  acc = jnp.broadcast_to(start.astype(jnp.float32), (b, ho, wo, c))
  for i in range(kh):
    for j in range(kw):
      window = xp[
        :,
        i : i + stride * (ho - 1) + 1 : stride,
        j : j + stride * (wo - 1) + 1 : stride,
      ]
      acc = acc + window.astype(jnp.float32) * k32[i, j]
  return acc.astype(x.dtype)


class BatchNorm(nnx.Module):
  """Inference BatchNorm over the last axis with running statistics.

  ``(x - mean) / sqrt(var + eps) * scale + bias``, folded into one
  per-channel multiply-add computed in float32.
  """

  def __init__(self, dim: int, eps: float):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
    self.mean = nnx.BatchStat(jnp.zeros((dim,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((dim,), jnp.float32))

  def __call__(self, x):
    """x: ``[..., C]`` -> ``[..., C]``."""
    f32 = jnp.float32
    a = self.scale[...].astype(f32) * jax.lax.rsqrt(
      self.var[...].astype(f32) + self.eps
    )
    b = self.bias[...].astype(f32) - self.mean[...].astype(f32) * a
    return x * a.astype(x.dtype) + b.astype(x.dtype)


def max_pool(x, window: int, stride: int, padding: int):
  """torch's MaxPool2d of ``[B, H, W, C]`` maps (padding never wins the max)."""
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return jax.lax.reduce_window(
    x,
    np.array(-np.inf, x.dtype),  # a constant: differentiable under jit
    jax.lax.max,
    (1, window, window, 1),
    (1, stride, stride, 1),
    pad,
  )


def avg_pool(x, window: int, stride: int, padding: int):
  """Average pool of ``[B, H, W, C]`` maps whose mean skips the padding.

  torch's ``avg_pool2d(..., count_include_pad=False)``; with
  ``padding = window // 2`` and stride 1 it is TensorFlow's 'SAME' average
  pool (each output divides by the number of real pixels in its window).
  """
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  dims, strides = (1, window, window, 1), (1, stride, stride, 1)
  total = jax.lax.reduce_window(
    x, jnp.array(0, x.dtype), jax.lax.add, dims, strides, pad
  )
  ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
  count = jax.lax.reduce_window(
    ones, jnp.array(0, x.dtype), jax.lax.add, dims, strides, pad
  )
  return total / count
