"""Swin Transformer (Liu et al. 2021) as transformers' SwinModel, in Flax NNX.

Hidden states, as transformers' ``output_hidden_states``: index 0 is the
patch embedding (after its LayerNorm and the optional absolute position
embedding), index i the output of stage i after its patch merging (the last
stage has none). Tokens are ``[B, T_i, C_i]`` in row-major order of the
``H_i x W_i`` map; they differ in shape, so ``hidden_states`` is a tuple.
``last_hidden_state`` is the final LayerNorm of the last one.

Window attention: maps are padded (bottom/right) to a multiple of the
window, odd blocks roll them by half a window and mask token pairs that
come from different regions (-100 added to the logits, as transformers); a
learned table ``[(2w-1)^2, H]`` gives each head's relative position bias.
"""

import functools

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ctjax.models import layers
from ctjax.models.config import SwinConfig
from ctjax.models.vit import EncoderOutput

_init = nnx.initializers.truncated_normal(stddev=0.02)


@functools.cache
def relative_position_index(window: int) -> np.ndarray:
  """``[w*w, w*w]`` row of the bias table for each (query, key) pair."""
  ij = np.stack(
    np.meshgrid(np.arange(window), np.arange(window), indexing="ij")
  ).reshape(2, -1)
  rel = (ij[:, :, None] - ij[:, None, :]).transpose(1, 2, 0) + (window - 1)
  return rel[..., 0] * (2 * window - 1) + rel[..., 1]


@functools.cache
def shift_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
  """``[nW, w*w, w*w]`` additive mask of shifted windows (0 or -100).

  After the roll, each axis holds three regions, ``[0, n - w)``,
  ``[n - w, n - shift)`` and ``[n - shift, n)``; tokens of one window attend
  only to tokens of their own region.
  """

  def regions(n):
    i = np.arange(n)
    return (i >= n - window).astype(np.int64) + (i >= n - shift)

  label = regions(height)[:, None] * 3 + regions(width)[None, :]
  windows = (
    label.reshape(height // window, window, width // window, window)
    .transpose(0, 2, 1, 3)
    .reshape(-1, window * window)
  )
  same = windows[:, None, :] == windows[:, :, None]
  return np.where(same, 0.0, -100.0).astype(np.float32)


class WindowAttention(nnx.Module):
  """Multi-head attention inside windows, with a relative position bias."""

  def __init__(
    self, dim: int, heads: int, window: int, qkv_bias: bool, *, rngs: nnx.Rngs
  ):
    k = dim // heads
    bias = (heads, k) if qkv_bias else None
    self.query = layers.Dense("btd,dhk->bthk", (dim, heads, k), bias, rngs=rngs)
    self.key = layers.Dense("btd,dhk->bthk", (dim, heads, k), bias, rngs=rngs)
    self.value = layers.Dense("btd,dhk->bthk", (dim, heads, k), bias, rngs=rngs)
    self.out = layers.Dense("bthk,hkd->btd", (heads, k, dim), (dim,), rngs=rngs)
    self.bias_table = nnx.Param(
      _init(rngs.params(), ((2 * window - 1) ** 2, heads), jnp.float32)
    )
    self.window = window
    self.scale = k**-0.5

  def __call__(self, x, mask):
    """x: ``[N, w*w, D]`` windows (N = B * nW); mask: None or ``[nW, w*w, w*w]``.

    Returns ``[N, w*w, D]``. Logits and softmax in float32.
    """
    q, k, v = self.query(x), self.key(x), self.value(x)  # [N, T, H, K]
    index = relative_position_index(self.window)
    bias = self.bias_table[...].astype(jnp.float32)[index]  # [T, T, H]
    bias = bias.transpose(2, 0, 1)[None]  # [1, H, T, T]
    if mask is not None:
      n, t, h = x.shape[0], x.shape[1], bias.shape[1]
      nw = mask.shape[0]
      bias = (bias + mask[:, None]).reshape(1, nw, h, t, t)  # [1, nW, H, T, T]
      bias = jnp.broadcast_to(bias, (n // nw, nw, h, t, t)).reshape(n, h, t, t)
    return self.out(layers.attention(q, k, v, self.scale, bias))


def _partition(x, window: int):
  """``[B, Hp, Wp, C]`` -> ``[B * nW, w*w, C]``, windows in row-major order."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def _merge(windows, b: int, h: int, w: int, window: int):
  """Inverse of ``_partition``: ``[B * nW, w*w, C]`` -> ``[B, Hp, Wp, C]``."""
  c = windows.shape[-1]
  x = windows.reshape(b, h // window, w // window, window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


class Block(nnx.Module):
  """x + W-MSA(LN(x)) (shifted when ``shift``), then x + MLP(LN(x))."""

  def __init__(
    self,
    config: SwinConfig,
    dim: int,
    heads: int,
    shift: int,
    *,
    rngs: nnx.Rngs,
  ):
    eps = config.layer_norm_eps
    self.norm1 = layers.LayerNorm(dim, eps)
    self.attn = WindowAttention(
      dim, heads, config.window_size, config.qkv_bias, rngs=rngs
    )
    self.norm2 = layers.LayerNorm(dim, eps)
    self.mlp = layers.Mlp(
      dim, int(config.mlp_ratio * dim), config.hidden_act, rngs=rngs
    )
    self.window = config.window_size
    self.shift = shift

  def __call__(self, x, h: int, w: int):
    """x: ``[B, h*w, C]`` tokens of an h x w map -> ``[B, h*w, C]``."""
    b, _, c = x.shape
    window, shift = self.window, self.shift
    if min(h, w) <= window:  # transformers: no shift, window = the map side.
      window, shift = min(h, w), 0
    if window != self.window:
      raise ValueError(
        f"a {h}x{w} Swin stage map is smaller than the {self.window}x"
        f"{self.window} window (transformers fails on it too); use larger "
        "images"
      )
    y = self.norm1(x).reshape(b, h, w, c)
    pad_h, pad_w = (-h) % window, (-w) % window
    y = jnp.pad(y, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    hp, wp = h + pad_h, w + pad_w
    mask = None
    if shift:
      y = jnp.roll(y, (-shift, -shift), axis=(1, 2))
      mask = jnp.asarray(shift_mask(hp, wp, window, shift))
    y = _merge(self.attn(_partition(y, window), mask), b, hp, wp, window)
    if shift:
      y = jnp.roll(y, (shift, shift), axis=(1, 2))
    x = x + y[:, :h, :w].reshape(b, h * w, c)
    return x + self.mlp(self.norm2(x))


class PatchMerging(nnx.Module):
  """2x2 neighbours concatenated (zero-padded to even sides), LN, linear."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs):
    self.norm = layers.LayerNorm(4 * dim, 1e-5)
    self.reduction = layers.Dense(
      "btf,fd->btd", (4 * dim, 2 * dim), None, rngs=rngs
    )

  def __call__(self, x, h: int, w: int):
    """x: ``[B, h*w, C]`` -> ``[B, ceil(h/2)*ceil(w/2), 2C]``."""
    b, _, c = x.shape
    x = x.reshape(b, h, w, c)
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    x = jnp.concatenate(
      [x[:, r::2, q::2] for q in range(2) for r in range(2)], axis=-1
    )
    return self.reduction(self.norm(x.reshape(b, -1, 4 * c)))


class Stage(nnx.Module):
  """``depth`` blocks (odd ones shifted), then an optional patch merging."""

  def __init__(
    self,
    config: SwinConfig,
    dim: int,
    depth: int,
    heads: int,
    merge: bool,
    *,
    rngs: nnx.Rngs,
  ):
    shift = config.window_size // 2
    self.blocks = nnx.List(
      [
        Block(config, dim, heads, shift if i % 2 else 0, rngs=rngs)
        for i in range(depth)
      ]
    )
    self.downsample = PatchMerging(dim, rngs=rngs) if merge else None

  def __call__(self, x, h: int, w: int):
    for block in self.blocks:
      x = block(x, h, w)
    return x if self.downsample is None else self.downsample(x, h, w)


class Swin(nnx.Module):
  """Patch embedding and stages of transformers' SwinModel (no pooler)."""

  def __init__(self, config: SwinConfig, *, rngs: nnx.Rngs):
    self.config = config
    c = config
    self.patch_embed = layers.PatchEmbed(
      c.patch_size, c.num_channels, c.embed_dim, rngs=rngs
    )
    self.embed_norm = layers.LayerNorm(c.embed_dim, 1e-5)
    grid = c.image_size // c.patch_size
    self.pos_embed = (
      nnx.Param(_init(rngs.params(), (grid * grid, c.embed_dim), jnp.float32))
      if c.use_absolute_embeddings
      else None
    )
    n = len(c.depths)
    self.stages = nnx.List(
      [
        Stage(c, dim, depth, heads, i < n - 1, rngs=rngs)
        for i, (dim, depth, heads) in enumerate(
          zip(c.hidden_sizes, c.depths, c.num_heads)
        )
      ]
    )
    self.norm = layers.LayerNorm(c.hidden_sizes[-1], c.layer_norm_eps)

  def __call__(self, pixels) -> EncoderOutput:
    """pixels: ``[B, Hpx, Wpx, C]`` normalised -> EncoderOutput.

    ``hidden_states`` is a tuple of L+1 token arrays ``[B, T_i, C_i]``.
    """
    c = self.config
    if pixels.ndim != 4 or pixels.shape[-1] != c.num_channels:
      raise ValueError(
        f"pixels must be [B, H, W, {c.num_channels}] (NHWC), got shape "
        f"{tuple(pixels.shape)}"
      )
    p = c.patch_size
    _, hpx, wpx, _ = pixels.shape
    pixels = jnp.pad(pixels, ((0, 0), (0, (-hpx) % p), (0, (-wpx) % p), (0, 0)))
    h, w = pixels.shape[1] // p, pixels.shape[2] // p
    x = self.embed_norm(self.patch_embed(pixels))
    if self.pos_embed is not None:
      if x.shape[1] != self.pos_embed[...].shape[0]:
        raise ValueError(
          f"this Swin has absolute position embeddings for "
          f"{c.image_size}x{c.image_size} images; got {hpx}x{wpx}"
        )
      x = x + self.pos_embed[...].astype(x.dtype)[None]
    states = [x]
    for stage in self.stages:
      x = stage(x, h, w)
      if stage.downsample is not None:
        h, w = (h + 1) // 2, (w + 1) // 2
      states.append(x)
    return EncoderOutput(
      hidden_states=tuple(states), last_hidden_state=self.norm(x)
    )


# ------------------------------------------------------------- conversion

PREFIXES = ("swin.",)
IGNORED = ("embeddings.mask_token", "pooler.", "classifier.", "decoder.")
IGNORED_SUFFIXES = (".relative_position_index",)


def _same(x):
  return x


def _norm(prefix: str, d: int) -> dict:
  return {
    "scale": (f"{prefix}.weight", (d,), _same),
    "bias": (f"{prefix}.bias", (d,), _same),
  }


def _block_rules(c: SwinConfig, p: str, d: int, heads: int) -> dict:
  k = d // heads
  f = int(c.mlp_ratio * d)
  a = f"{p}.attention"

  def qkv(name):
    rules = {
      "kernel": (
        f"{a}.self.{name}.weight",
        (d, d),
        lambda w: w.T.reshape(d, heads, k),
      )
    }
    if c.qkv_bias:
      rules["bias"] = (
        f"{a}.self.{name}.bias",
        (d,),
        lambda b: b.reshape(heads, k),
      )
    return rules

  return {
    "norm1": _norm(f"{p}.layernorm_before", d),
    "norm2": _norm(f"{p}.layernorm_after", d),
    "attn": {
      "query": qkv("query"),
      "key": qkv("key"),
      "value": qkv("value"),
      "out": {
        "kernel": (
          f"{a}.output.dense.weight",
          (d, d),
          lambda w: w.T.reshape(heads, k, d),
        ),
        "bias": (f"{a}.output.dense.bias", (d,), _same),
      },
      "bias_table": (
        f"{a}.self.relative_position_bias_table",
        ((2 * c.window_size - 1) ** 2, heads),
        _same,
      ),
    },
    "mlp": {
      "fc1": {
        "kernel": (f"{p}.intermediate.dense.weight", (f, d), lambda w: w.T),
        "bias": (f"{p}.intermediate.dense.bias", (f,), _same),
      },
      "fc2": {
        "kernel": (f"{p}.output.dense.weight", (d, f), lambda w: w.T),
        "bias": (f"{p}.output.dense.bias", (d,), _same),
      },
    },
  }


def checkpoint_rules(c: SwinConfig) -> dict:
  """Nested ctjax parameter tree -> (checkpoint name, shape, transform)."""
  e, p = c.embed_dim, c.patch_size
  n = len(c.depths)
  stages = {}
  for s, (d, depth, heads) in enumerate(
    zip(c.hidden_sizes, c.depths, c.num_heads)
  ):
    q = f"encoder.layers.{s}"
    stage = {
      "blocks": {
        i: _block_rules(c, f"{q}.blocks.{i}", d, heads) for i in range(depth)
      }
    }
    if s < n - 1:
      stage["downsample"] = {
        "norm": _norm(f"{q}.downsample.norm", 4 * d),
        "reduction": {
          "kernel": (
            f"{q}.downsample.reduction.weight",
            (2 * d, 4 * d),
            lambda w: w.T,
          )
        },
      }
    stages[s] = stage
  tree = {
    "patch_embed": {
      "proj": {
        "kernel": (
          "embeddings.patch_embeddings.projection.weight",
          (e, c.num_channels, p, p),
          lambda w: w.transpose(2, 3, 1, 0),
        ),
        "bias": (
          "embeddings.patch_embeddings.projection.bias",
          (e,),
          _same,
        ),
      }
    },
    "embed_norm": _norm("embeddings.norm", e),
    "stages": stages,
    "norm": _norm("layernorm", c.hidden_sizes[-1]),
  }
  if c.use_absolute_embeddings:
    grid = c.image_size // p
    tree["pos_embed"] = (
      "embeddings.position_embeddings",
      (1, grid * grid, e),
      lambda t: t[0],
    )
  return tree
