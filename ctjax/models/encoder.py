"""A thin object over the pure forward function of a ViT-family encoder.

Research code uses the pure function directly::

  graphdef, params = encoder.graphdef, encoder.params
  out = jax.jit(forward, static_argnums=0)(graphdef, params, pixels)

``Encoder`` bundles that with the config, the preprocessing statistics and a
stable identity string (used as a cache key by ctjax.embedding).
"""

import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ctjax.models.config import EncoderConfig
from ctjax.models.vit import EncoderOutput, VisionTransformer


def forward(graphdef, params, pixels, dtype=jnp.float32) -> EncoderOutput:
  """Pure forward pass (jit it with ``static_argnums=(0, 3)``).

  Args:
    graphdef: the nnx GraphDef of a VisionTransformer (static).
    params: its nnx.State (float32 parameters).
    pixels: ``[B, H, W, C]`` normalised images.
    dtype: compute dtype (float32, or bfloat16 on accelerators). LayerNorm
      statistics and softmax stay in float32.

  Returns:
    EncoderOutput with ``hidden_states [L+1, B, T, D]`` and
    ``last_hidden_state [B, T, D]``, both in ``dtype``.
  """
  dtype = jnp.dtype(dtype)
  if dtype != jnp.float32:
    params = jax.tree.map(
      lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p,
      params,
    )
  model = nnx.merge(graphdef, params)
  # float32 means float32: no TF32 matmuls on GPU (bfloat16 is the fast path).
  with jax.default_matmul_precision(
    "highest" if dtype == jnp.float32 else "default"
  ):
    return model(pixels.astype(dtype))


class Encoder:
  """A ViT-family encoder: config, graphdef and parameters.

  Attributes:
    config: the EncoderConfig.
    graphdef: nnx GraphDef of the VisionTransformer (static structure).
    params: nnx.State of the parameters (a pytree of float32 arrays).
    source: where the weights came from (folder, repo id, or "random:<seed>").
  """

  def __init__(self, config: EncoderConfig, graphdef, params, source: str = ""):
    self.config = config
    self.graphdef = graphdef
    self.params = jax.device_put(params)  # once, not on every call
    self.source = source
    self._jitted = jax.jit(forward, static_argnums=(0, 3))

  @classmethod
  def from_module(
    cls, module: VisionTransformer, source: str = ""
  ) -> "Encoder":
    graphdef, params = nnx.split(module)
    return cls(module.config, graphdef, params, source)

  @property
  def module(self) -> VisionTransformer:
    """A fresh nnx module holding the parameters (for inspection, fine-tuning)."""
    return nnx.merge(self.graphdef, self.params)

  def apply(self, params, pixels, dtype=jnp.float32) -> EncoderOutput:
    """Pure function (params, pixels) -> EncoderOutput; see ``forward``."""
    return forward(self.graphdef, params, pixels, dtype)

  def __call__(self, pixels, dtype=jnp.float32) -> EncoderOutput:
    """pixels ``[B, H, W, C]`` normalised -> EncoderOutput (jitted)."""
    return self._jitted(
      self.graphdef, self.params, jnp.asarray(pixels), jnp.dtype(dtype)
    )

  def hidden_states(self, pixels, dtype=jnp.float32) -> jax.Array:
    """pixels ``[B, H, W, C]`` normalised -> ``[L+1, B, T, D]`` hidden states."""
    return self(pixels, dtype).hidden_states

  def last_hidden_state(self, pixels, dtype=jnp.float32) -> jax.Array:
    """pixels ``[B, H, W, C]`` -> ``[B, T, D]`` after the final LayerNorm."""
    return self(pixels, dtype).last_hidden_state

  @property
  def num_hidden_states(self) -> int:
    return self.config.num_layers + 1

  @property
  def image_size(self) -> int:
    return self.config.image_size

  @property
  def image_mean(self) -> tuple[float, ...]:
    return self.config.image_mean

  @property
  def image_std(self) -> tuple[float, ...]:
    return self.config.image_std

  @property
  def num_prefix_tokens(self) -> int:
    """Tokens before the patches: CLS, DeiT's distillation token, registers."""
    return self.config.num_prefix_tokens + self.config.num_registers

  @functools.cached_property
  def weights_hash(self) -> str:
    """blake2b over every parameter's path, dtype, shape and bytes."""
    h = hashlib.blake2b(digest_size=16)
    for path, leaf in sorted(
      jax.tree_util.tree_flatten_with_path(self.params)[0],
      key=lambda kv: jax.tree_util.keystr(kv[0]),
    ):
      a = np.ascontiguousarray(np.asarray(leaf))
      h.update(
        f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode()
      )
      h.update(a.tobytes())
    return h.hexdigest()

  @property
  def identity(self) -> str:
    """Stable identity: family, sizes and a hash of the weights."""
    c = self.config
    return (
      f"{c.model_type}-L{c.num_layers}-D{c.hidden_size}-H{c.num_heads}"
      f"-P{c.patch_size}-S{c.image_size}-R{c.num_registers}-{self.weights_hash}"
    )

  def __repr__(self):
    return f"Encoder({self.identity}, source={self.source!r})"


def from_config(config: EncoderConfig, seed: int = 0) -> Encoder:
  """A randomly initialised encoder (truncated normal 0.02, as transformers' init).

  Args:
    config: an EncoderConfig, or a transformers config / config.json dict.
    seed: PRNG seed of the initialisation.
  """
  if not isinstance(config, EncoderConfig):
    from ctjax.models.config import from_hf_config

    config = from_hf_config(config)
  graphdef, state = nnx.split(
    nnx.eval_shape(lambda: VisionTransformer(config, rngs=nnx.Rngs(0)))
  )
  nnx.replace_by_pure_dict(
    state, _random_params(nnx.to_pure_dict(state), config, seed)
  )
  return Encoder(config, graphdef, state, source=f"random:{seed}")


def _random_params(abstract, config: EncoderConfig, seed: int, path=()):
  """NumPy initialisation of a pure-dict parameter tree (same rules as transformers).

  Kernels, tokens and position embeddings ~ N(0, 0.02²) truncated at 2 std;
  biases 0; LayerNorm scales 1; layer scales ``config.layerscale_value``.
  Host-side because XLA:CPU compiles each PRNG call slowly.
  """
  if isinstance(abstract, dict):
    return {
      k: _random_params(v, config, seed, path + (k,))
      for k, v in abstract.items()
    }
  shape = abstract.shape
  if path[-1] == "bias":
    return np.zeros(shape, np.float32)
  if path[-1] == "scale":
    value = config.layerscale_value if path[-2] in ("ls1", "ls2") else 1.0
    return np.full(shape, value, np.float32)
  key = hashlib.blake2b(
    "/".join(map(str, path)).encode(), digest_size=8
  ).digest()
  rng = np.random.default_rng([seed, int.from_bytes(key, "little")])
  x = rng.standard_normal(shape)
  bad = np.abs(x) > 2
  while bad.any():
    x[bad] = rng.standard_normal(int(bad.sum()))
    bad = np.abs(x) > 2
  return (0.02 * x).astype(np.float32)
