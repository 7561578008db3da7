"""The ViT family (ViT, DeiT, DINOv2, DINOv2 with registers, CLIP's vision
tower) in Flax NNX.

The forward pass keeps every hidden state: index 0 is the embedding output
(tokens + position embeddings, registers inserted; for CLIP after its
``pre_layrnorm``), index i the output of block i, as transformers'
``output_hidden_states``. The final LayerNorm is applied only to
``last_hidden_state`` (CLIP has none there: its ``post_layernorm`` acts on the
pooled CLS token only).
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ctjax.models import layers, posemb
from ctjax.models.config import EncoderConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class EncoderOutput:
  """Outputs of a forward pass.

  Attributes:
    hidden_states: ``[L+1, B, T, D]`` for the ViT family; 0 = embeddings,
      i = after block i. For families whose layers differ in shape, a tuple
      of L+1 arrays (``[B, H_i, W_i, C_i]`` maps, ``[B, T_i, C_i]`` tokens).
    last_hidden_state: transformers' ``last_hidden_state``: ``[B, T, D]``,
      the final LayerNorm of hidden_states[-1] in the ViT family.
  """

  hidden_states: jax.Array | tuple[jax.Array, ...]
  last_hidden_state: jax.Array


class VisionTransformer(nnx.Module):
  """Token layout: [CLS, (DeiT: distillation), (registers), patches...]."""

  def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
    d = config.hidden_size
    init = nnx.initializers.truncated_normal(stddev=0.02)
    self.config = config
    clip = config.model_type == "clip_vision_model"
    self.patch_embed = layers.PatchEmbed(
      config.patch_size, config.num_channels, d, bias=not clip, rngs=rngs
    )
    self.cls_token = nnx.Param(init(rngs.params(), (1, d), jnp.float32))
    self.dist_token = (
      nnx.Param(init(rngs.params(), (1, d), jnp.float32))
      if config.model_type == "deit"
      else None
    )
    self.register_tokens = (
      nnx.Param(init(rngs.params(), (config.num_registers, d), jnp.float32))
      if config.num_registers
      else None
    )
    n_pos = config.num_prefix_tokens + config.grid_size**2
    self.pos_embed = nnx.Param(init(rngs.params(), (n_pos, d), jnp.float32))
    self.blocks = nnx.List(
      [layers.Block(config, rngs=rngs) for _ in range(config.num_layers)]
    )
    self.pre_norm = layers.LayerNorm(d, config.layer_norm_eps) if clip else None
    self.norm = None if clip else layers.LayerNorm(d, config.layer_norm_eps)

  def position_embeddings(self, gh: int, gw: int):
    """``[prefix + gh*gw, D]``: the stored table, resampled when the grid differs."""
    c = self.config
    pos = self.pos_embed[...]
    if (gh, gw) == (c.grid_size, c.grid_size):
      return pos
    n = c.num_prefix_tokens
    grid = pos[n:].reshape(c.grid_size, c.grid_size, -1)
    grid = posemb.resample_grid(
      grid, (gh, gw), antialias=c.model_type == "dinov2_with_registers"
    )
    return jnp.concatenate([pos[:n], grid.reshape(gh * gw, -1)], axis=0)

  def embed(self, pixels):
    """pixels: ``[B, Hpx, Wpx, C]`` normalised -> embedding output ``[B, T, D]``."""
    c = self.config
    if pixels.ndim != 4 or pixels.shape[-1] != c.num_channels:
      raise ValueError(
        f"pixels must be [B, H, W, {c.num_channels}] (NHWC), got shape "
        f"{tuple(pixels.shape)}"
      )
    b, h, w, _ = pixels.shape
    gh, gw = h // c.patch_size, w // c.patch_size
    if gh < 1 or gw < 1:
      raise ValueError(
        f"image {h}x{w} is smaller than one {c.patch_size}px patch"
      )
    x = self.patch_embed(pixels)
    dt = x.dtype
    prefix = [self.cls_token[...]]
    if self.dist_token is not None:
      prefix.append(self.dist_token[...])
    prefix = jnp.broadcast_to(
      jnp.concatenate(prefix, 0).astype(dt)[None], (b, len(prefix), x.shape[-1])
    )
    x = jnp.concatenate([prefix, x], axis=1)
    x = x + self.position_embeddings(gh, gw).astype(dt)[None]
    if self.register_tokens is not None:
      reg = jnp.broadcast_to(
        self.register_tokens[...].astype(dt)[None],
        (b, c.num_registers, x.shape[-1]),
      )
      x = jnp.concatenate([x[:, :1], reg, x[:, 1:]], axis=1)
    if self.pre_norm is not None:
      x = self.pre_norm(x)
    return x

  def __call__(self, pixels) -> EncoderOutput:
    """pixels: ``[B, Hpx, Wpx, C]`` normalised -> EncoderOutput."""
    x = self.embed(pixels)
    # Each block writes its output into the stacked buffer and the next
    # block reads it from there: XLA:CPU then updates the buffer in place,
    # where `jnp.stack` of the 13 outputs copied them all at the end (24 ms
    # of a 1 s ViT-B/16 forward at batch 8; forwards 2-4% faster, the same
    # bits; docs/performance.md).
    states = jnp.zeros((len(self.blocks) + 1,) + x.shape, x.dtype)
    states = states.at[0].set(x)
    for i, block in enumerate(self.blocks):
      x = block(states[i])
      states = states.at[i + 1].set(x)
    return EncoderOutput(
      hidden_states=states,
      last_hidden_state=x if self.norm is None else self.norm(x),
    )
