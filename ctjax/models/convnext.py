"""ConvNeXt (Liu et al. 2022) as transformers' ConvNextModel, in Flax NNX.

Hidden states, as transformers' ``output_hidden_states``: index 0 is the stem
(P x P stride-P convolution, LayerNorm), index i the output of stage i
(LayerNorm + 2x2 stride-2 convolution before every stage but the first, then
its blocks). Feature maps are channels-last ``[B, H, W, C]`` and differ in
size, so ``hidden_states`` is a tuple. The pooler's LayerNorm is not part of
any hidden state and is not loaded.
"""

from flax import nnx

from ctjax.models import layers
from ctjax.models.config import ConvNextConfig
from ctjax.models.vit import EncoderOutput


class Block(nnx.Module):
  """x + LS(pw2(act(pw1(LN(dwconv7x7(x)))))), all channels-last."""

  def __init__(self, config: ConvNextConfig, dim: int, *, rngs: nnx.Rngs):
    self.dwconv = layers.Conv(dim, dim, 7, 1, 3, groups=dim, rngs=rngs)
    self.norm = layers.LayerNorm(dim, config.layer_norm_eps)
    self.pwconv1 = layers.Dense(
      "bhwc,cf->bhwf", (dim, 4 * dim), (4 * dim,), rngs=rngs
    )
    self.act_name = config.hidden_act
    layers.activation(config.hidden_act)  # an unknown name fails here
    self.pwconv2 = layers.Dense(
      "bhwf,fc->bhwc", (4 * dim, dim), (dim,), rngs=rngs
    )
    self.ls1 = (
      layers.LayerScale(dim, config.layer_scale_init_value)
      if config.layer_scale_init_value > 0
      else None
    )

  def __call__(self, x):
    """x: ``[B, H, W, C]`` -> ``[B, H, W, C]``."""
    h = layers.mlp(
      self.norm(self.dwconv(x)), self.pwconv1, self.act_name, self.pwconv2
    )
    return x + (self.ls1(h) if self.ls1 is not None else h)


class Downsample(nnx.Module):
  """LayerNorm, then a 2x2 stride-2 convolution."""

  def __init__(self, config: ConvNextConfig, c_in, c_out, *, rngs: nnx.Rngs):
    self.norm = layers.LayerNorm(c_in, config.layer_norm_eps)
    self.conv = layers.Conv(c_in, c_out, 2, 2, rngs=rngs)

  def __call__(self, x):
    """x: ``[B, H, W, C_in]`` -> ``[B, H // 2, W // 2, C_out]``."""
    return self.conv(self.norm(x))


class Stage(nnx.Module):
  """An optional Downsample, then ``depth`` blocks."""

  def __init__(
    self,
    config: ConvNextConfig,
    c_in: int,
    c_out: int,
    depth: int,
    downsample: bool,
    *,
    rngs: nnx.Rngs,
  ):
    self.downsample = (
      Downsample(config, c_in, c_out, rngs=rngs) if downsample else None
    )
    self.layers = nnx.List(
      [Block(config, c_out, rngs=rngs) for _ in range(depth)]
    )

  def __call__(self, x):
    if self.downsample is not None:
      x = self.downsample(x)
    for layer in self.layers:
      x = layer(x)
    return x


class ConvNext(nnx.Module):
  """Stem and stages of transformers' ConvNextModel (no pooler)."""

  def __init__(self, config: ConvNextConfig, *, rngs: nnx.Rngs):
    self.config = config
    c = config
    c0 = c.hidden_sizes[0]
    self.stem = layers.Conv(
      c.num_channels, c0, c.patch_size, c.patch_size, rngs=rngs
    )
    self.stem_norm = layers.LayerNorm(c0, c.layer_norm_eps)
    ins = (c0,) + tuple(c.hidden_sizes[:-1])
    self.stages = nnx.List(
      [
        Stage(c, c_in, c_out, d, i > 0, rngs=rngs)
        for i, (c_in, c_out, d) in enumerate(zip(ins, c.hidden_sizes, c.depths))
      ]
    )

  def __call__(self, pixels) -> EncoderOutput:
    """pixels: ``[B, Hpx, Wpx, C]`` normalised -> EncoderOutput.

    ``hidden_states`` is a tuple of L+1 maps ``[B, H_i, W_i, C_i]``;
    ``last_hidden_state`` is the last of them.
    """
    c = self.config
    if pixels.ndim != 4 or pixels.shape[-1] != c.num_channels:
      raise ValueError(
        f"pixels must be [B, H, W, {c.num_channels}] (NHWC), got shape "
        f"{tuple(pixels.shape)}"
      )
    x = self.stem_norm(self.stem(pixels))
    states = [x]
    for stage in self.stages:
      x = stage(x)
      states.append(x)
    return EncoderOutput(hidden_states=tuple(states), last_hidden_state=x)


# ------------------------------------------------------------- conversion

PREFIXES = ("convnext.",)
IGNORED = ("layernorm.", "pooler.", "classifier.")
IGNORED_SUFFIXES = ()


def _same(x):
  return x


def _conv(w):
  """torch ``[C_out, C_in / groups, kh, kw]`` -> HWIO ``[kh, kw, C_in / groups, C_out]``."""
  return w.transpose(2, 3, 1, 0)


def _t(w):
  return w.T


def _norm(prefix: str, d: int) -> dict:
  return {
    "scale": (f"{prefix}.weight", (d,), _same),
    "bias": (f"{prefix}.bias", (d,), _same),
  }


def _conv_rules(prefix: str, c_in: int, c_out: int, k: int) -> dict:
  return {
    "kernel": (f"{prefix}.weight", (c_out, c_in, k, k), _conv),
    "bias": (f"{prefix}.bias", (c_out,), _same),
  }


def checkpoint_rules(c: ConvNextConfig) -> dict:
  """Nested ctjax parameter tree -> (checkpoint name, shape, transform)."""
  c0 = c.hidden_sizes[0]
  ins = (c0,) + tuple(c.hidden_sizes[:-1])
  stages = {}
  for s, (c_in, d, depth) in enumerate(zip(ins, c.hidden_sizes, c.depths)):
    p = f"encoder.stages.{s}"
    blocks = {}
    for i in range(depth):
      q = f"{p}.layers.{i}"
      block = {
        "dwconv": _conv_rules(f"{q}.dwconv", 1, d, 7),
        "norm": _norm(f"{q}.layernorm", d),
        "pwconv1": {
          "kernel": (f"{q}.pwconv1.weight", (4 * d, d), _t),
          "bias": (f"{q}.pwconv1.bias", (4 * d,), _same),
        },
        "pwconv2": {
          "kernel": (f"{q}.pwconv2.weight", (d, 4 * d), _t),
          "bias": (f"{q}.pwconv2.bias", (d,), _same),
        },
      }
      if c.layer_scale_init_value > 0:
        block["ls1"] = {"scale": (f"{q}.layer_scale_parameter", (d,), _same)}
      blocks[i] = block
    stage = {"layers": blocks}
    if s > 0:
      stage["downsample"] = {
        "norm": _norm(f"{p}.downsampling_layer.0", c_in),
        "conv": _conv_rules(f"{p}.downsampling_layer.1", c_in, d, 2),
      }
    stages[s] = stage
  return {
    "stem": _conv_rules(
      "embeddings.patch_embeddings", c.num_channels, c0, c.patch_size
    ),
    "stem_norm": _norm("embeddings.layernorm", c0),
    "stages": stages,
  }
