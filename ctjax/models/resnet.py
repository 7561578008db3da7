"""ResNet (He et al. 2016) as transformers' ResNetModel, in Flax NNX.

Hidden states, as transformers' ``output_hidden_states``: index 0 is the stem
(7x7 stride-2 convolution, BatchNorm, activation, 3x3 stride-2 max pool),
index i the output of stage i. Feature maps are channels-last
``[B, H, W, C]`` and differ in size, so ``hidden_states`` is a tuple.
BatchNorm uses the running statistics (inference).
"""

from flax import nnx

from ctjax.models import layers
from ctjax.models.config import ResNetConfig
from ctjax.models.vit import EncoderOutput


class ConvBN(nnx.Module):
  """Convolution without bias (padding k // 2), then BatchNorm."""

  def __init__(
    self,
    c_in: int,
    c_out: int,
    kernel: int,
    stride: int,
    eps: float,
    *,
    rngs: nnx.Rngs,
  ):
    self.conv = layers.Conv(
      c_in, c_out, kernel, stride, kernel // 2, bias=False, rngs=rngs
    )
    self.norm = layers.BatchNorm(c_out, eps)

  def __call__(self, x):
    """x: ``[B, H, W, C_in]`` -> ``[B, H / stride, W / stride, C_out]``."""
    return self.norm(self.conv(x))


class ResidualLayer(nnx.Module):
  """A basic (3x3, 3x3) or bottleneck (1x1, 3x3, 1x1) residual layer.

  ``act(convs(x) + shortcut(x))``; ReLU between the convolutions, the
  config's activation after the sum; the shortcut is a 1x1 ConvBN when the
  width or the resolution changes, the identity otherwise.
  """

  def __init__(
    self,
    config: ResNetConfig,
    c_in: int,
    c_out: int,
    stride: int,
    *,
    rngs: nnx.Rngs,
  ):
    eps = config.batch_norm_eps
    self.act = layers.activation(config.hidden_act)
    self.shortcut = (
      ConvBN(c_in, c_out, 1, stride, eps, rngs=rngs)
      if c_in != c_out or stride != 1
      else None
    )
    if config.layer_type == "basic":
      specs = [(c_in, c_out, 3, stride), (c_out, c_out, 3, 1)]
    else:
      r = c_out // 4
      first = config.downsample_in_bottleneck
      specs = [
        (c_in, r, 1, stride if first else 1),
        (r, r, 3, 1 if first else stride),
        (r, c_out, 1, 1),
      ]
    self.convs = nnx.List([ConvBN(*spec, eps, rngs=rngs) for spec in specs])

  def __call__(self, x):
    """x: ``[B, H, W, C_in]`` -> ``[B, H / stride, W / stride, C_out]``."""
    h = x
    for i, conv in enumerate(self.convs):
      h = conv(h)
      if i < len(self.convs) - 1:
        h = nnx.relu(h)
    residual = x if self.shortcut is None else self.shortcut(x)
    return self.act(h + residual)


class Stage(nnx.Module):
  """``depth`` residual layers; the first one changes width and stride."""

  def __init__(
    self,
    config: ResNetConfig,
    c_in: int,
    c_out: int,
    stride: int,
    depth: int,
    *,
    rngs: nnx.Rngs,
  ):
    self.layers = nnx.List(
      [
        ResidualLayer(
          config,
          c_in if i == 0 else c_out,
          c_out,
          stride if i == 0 else 1,
          rngs=rngs,
        )
        for i in range(depth)
      ]
    )

  def __call__(self, x):
    for layer in self.layers:
      x = layer(x)
    return x


class ResNet(nnx.Module):
  """Stem and stages of transformers' ResNetModel (no pooler)."""

  def __init__(self, config: ResNetConfig, *, rngs: nnx.Rngs):
    self.config = config
    c = config
    self.stem = ConvBN(
      c.num_channels, c.embedding_size, 7, 2, c.batch_norm_eps, rngs=rngs
    )
    self.act = layers.activation(c.hidden_act)
    ins = (c.embedding_size,) + tuple(c.hidden_sizes[:-1])
    strides = (2 if c.downsample_in_first_stage else 1,) + (2,) * (
      len(c.depths) - 1
    )
    self.stages = nnx.List(
      [
        Stage(c, c_in, c_out, s, d, rngs=rngs)
        for c_in, c_out, s, d in zip(ins, c.hidden_sizes, strides, c.depths)
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
    x = layers.max_pool(self.act(self.stem(pixels)), 3, 2, 1)
    states = [x]
    for stage in self.stages:
      x = stage(x)
      states.append(x)
    return EncoderOutput(hidden_states=tuple(states), last_hidden_state=x)


# ------------------------------------------------------------- conversion

PREFIXES = ("resnet.",)
IGNORED = ("pooler.", "classifier.")
IGNORED_SUFFIXES = (".num_batches_tracked",)


def _conv(w):
  """torch ``[C_out, C_in, kh, kw]`` -> HWIO ``[kh, kw, C_in, C_out]``."""
  return w.transpose(2, 3, 1, 0)


def _same(x):
  return x


def _conv_bn_rules(prefix: str, c_in: int, c_out: int, kernel: int) -> dict:
  bn = f"{prefix}.normalization"
  return {
    "conv": {
      "kernel": (
        f"{prefix}.convolution.weight",
        (c_out, c_in, kernel, kernel),
        _conv,
      )
    },
    "norm": {
      "scale": (f"{bn}.weight", (c_out,), _same),
      "bias": (f"{bn}.bias", (c_out,), _same),
      "mean": (f"{bn}.running_mean", (c_out,), _same),
      "var": (f"{bn}.running_var", (c_out,), _same),
    },
  }


def checkpoint_rules(c: ResNetConfig) -> dict:
  """Nested ctjax parameter tree -> (checkpoint name, shape, transform)."""
  ins = (c.embedding_size,) + tuple(c.hidden_sizes[:-1])
  strides = (2 if c.downsample_in_first_stage else 1,) + (2,) * (
    len(c.depths) - 1
  )
  stages = {}
  for s, (c_in, c_out, stride, depth) in enumerate(
    zip(ins, c.hidden_sizes, strides, c.depths)
  ):
    stage = {}
    for i in range(depth):
      p = f"encoder.stages.{s}.layers.{i}"
      lin, lstride = (c_in, stride) if i == 0 else (c_out, 1)
      if c.layer_type == "basic":
        specs = [(lin, c_out, 3), (c_out, c_out, 3)]
      else:
        r = c_out // 4
        specs = [(lin, r, 1), (r, r, 3), (r, c_out, 1)]
      layer = {
        "convs": {
          j: _conv_bn_rules(f"{p}.layer.{j}", *spec)
          for j, spec in enumerate(specs)
        }
      }
      if lin != c_out or lstride != 1:
        layer["shortcut"] = _conv_bn_rules(f"{p}.shortcut", lin, c_out, 1)
      stage[i] = layer
    stages[s] = {"layers": stage}
  return {
    "stem": _conv_bn_rules(
      "embedder.embedder", c.num_channels, c.embedding_size, 7
    ),
    "stages": stages,
  }
