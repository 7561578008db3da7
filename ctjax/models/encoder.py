"""A thin object over the pure forward function of an encoder.

Research code uses the pure function directly::

  graphdef, params = encoder.graphdef, encoder.params
  out = jax.jit(forward, static_argnums=0)(graphdef, params, pixels)

``Encoder`` bundles that with the config, the preprocessing statistics and a
stable identity string (used as a cache key by ctjax.embedding).
"""

import functools
import hashlib
import importlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ctjax import xla_options
from ctjax.models.config import (
  AnyConfig,
  ConvNextConfig,
  EncoderConfig,
  InceptionConfig,
  ResNetConfig,
  SwinConfig,
)
from ctjax.models.vit import EncoderOutput, VisionTransformer

PREPROCESSOR_FILE = "preprocessor_config.json"

# XLA:CPU options of ctjax's own compiled forward passes.
CPU_COMPILER_OPTIONS = xla_options.ENCODER_CPU_OPTIONS


def cpu_options(config: AnyConfig) -> dict:
  """The XLA:CPU options ctjax compiles ``config``'s forward pass with:
  `CPU_COMPILER_OPTIONS`, except XLA's defaults (``{}``) for Swin, whose
  window attention (logits with a bias and a mask, outside ctjax's native
  attention kernel) runs faster with YNNPACK's fusions. Swin-T, batch 8,
  six interleaved rounds in one process on a 2-core AMD EPYC (AVX2): 12.66
  img/s median with `CPU_COMPILER_OPTIONS`, 13.40 with XLA's defaults;
  level on a Sapphire Rapids (docs/performance.md). ConvNeXt-T in the same
  test: 14.14 against 13.91, ResNet-50 14.43 against 13.00."""
  return {} if isinstance(config, SwinConfig) else CPU_COMPILER_OPTIONS


# model_type -> (module of ctjax.models, class) of the hierarchical families.
FAMILIES = {
  "resnet": ("resnet", "ResNet"),
  "convnext": ("convnext", "ConvNext"),
  "swin": ("swin", "Swin"),
  "inception_v3": ("inception", "InceptionV3"),
}
_CONFIGS = (
  EncoderConfig,
  ResNetConfig,
  ConvNextConfig,
  SwinConfig,
  InceptionConfig,
)


def family_module(model_type: str):
  """The ctjax.models module of a hierarchical family (None: ViT family)."""
  if model_type not in FAMILIES:
    return None
  return importlib.import_module(f"ctjax.models.{FAMILIES[model_type][0]}")


def module_class(config: AnyConfig):
  """The nnx module class that implements a config's family."""
  if isinstance(config, EncoderConfig):
    return VisionTransformer
  if not isinstance(config, _CONFIGS):
    raise ValueError(f"not an encoder config: {config!r}")
  return getattr(
    family_module(config.model_type), FAMILIES[config.model_type][1]
  )


def build(config: AnyConfig, seed: int = 0):
  """An nnx module of the config's family (parameters initialised by nnx)."""
  return module_class(config)(config, rngs=nnx.Rngs(seed))


def forward(graphdef, params, pixels, dtype=jnp.float32) -> EncoderOutput:
  """Pure forward pass (jit it with ``static_argnums=(0, 3)``).

  Args:
    graphdef: the nnx GraphDef of an encoder module (static).
    params: its nnx.State (float32 parameters and BatchNorm statistics).
    pixels: ``[B, H, W, C]`` normalised images.
    dtype: compute dtype (float32, or bfloat16 on accelerators). LayerNorm
      statistics and softmax stay in float32.

  Returns:
    EncoderOutput in ``dtype``: for the ViT family (and CLIP)
    ``hidden_states [L+1, B, T, D]`` and ``last_hidden_state [B, T, D]``;
    for ResNet, ConvNeXt and Inception-v3 a tuple of L+1 maps
    ``[B, H_i, W_i, C_i]``, for
    Swin a tuple of L+1 token arrays ``[B, T_i, C_i]``.
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


def jit_forward(options: dict | None = None):
  """`forward` compiled as ctjax compiles it: ``(graphdef, params, pixels,
  dtype)`` with the graphdef and dtype static, and on a CPU the XLA options
  ``options`` (default `CPU_COMPILER_OPTIONS`; ``{}`` for XLA's defaults;
  `cpu_options` gives the ones `Encoder` and `ctjax.embed` use for a
  config).
  """
  options = CPU_COMPILER_OPTIONS if options is None else options
  return xla_options.cpu_jit(forward, options, static_argnums=(0, 3))


class Encoder:
  """An encoder: config, graphdef and parameters.

  Attributes:
    config: an EncoderConfig (ViT family, CLIP), ResNetConfig, ConvNextConfig,
      SwinConfig or InceptionConfig.
    graphdef: nnx GraphDef of the module (static structure).
    params: nnx.State of the parameters (a pytree of float32 arrays).
    source: where the weights came from (folder, repo id, or "random:<seed>").
  """

  def __init__(self, config: AnyConfig, graphdef, params, source: str = ""):
    self.config = config
    self.graphdef = graphdef
    self.params = jax.device_put(params)  # once, not on every call
    self.source = source
    self._jitted = jit_forward(cpu_options(config))

  @classmethod
  def from_module(cls, module: nnx.Module, source: str = "") -> "Encoder":
    graphdef, params = nnx.split(module)
    return cls(module.config, graphdef, params, source)

  @property
  def module(self) -> nnx.Module:
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

  def hidden_states(self, pixels, dtype=jnp.float32):
    """pixels ``[B, H, W, C]`` normalised -> every hidden state.

    ``[L+1, B, T, D]`` for the ViT family and CLIP; a tuple of L+1 arrays
    for families whose layers differ in shape: ``[B, H_i, W_i, C_i]`` maps
    (ResNet, ConvNeXt, Inception-v3), ``[B, T_i, C_i]`` tokens (Swin); in the
    order of transformers' ``hidden_states`` (Inception-v3: the stem, then
    Mixed_5b ... Mixed_7c).
    """
    return self(pixels, dtype).hidden_states

  @property
  def stacked(self) -> bool:
    """Whether hidden states come as one array (all layers of one shape)."""
    return isinstance(self.config, EncoderConfig)

  def last_hidden_state(self, pixels, dtype=jnp.float32) -> jax.Array:
    """pixels ``[B, H, W, C]`` -> transformers' ``last_hidden_state``."""
    return self(pixels, dtype).last_hidden_state

  @property
  def num_hidden_states(self) -> int:
    return self.config.num_layers + 1

  @property
  def layer_names(self) -> tuple[str, ...]:
    """One name per hidden state, for tables and plots.

    ViT family and CLIP: "embeddings", "block1" ... "blockL"; ResNet,
    ConvNeXt and Swin: "stem" (Swin's patch embedding), "stage1" ... "stageL";
    Inception-v3: "stem", "Mixed_5b" ... "Mixed_7c".
    """
    if hasattr(self.config, "layer_names"):
      return tuple(self.config.layer_names)
    n = self.config.num_layers
    if self.stacked:
      return ("embeddings",) + tuple(f"block{i}" for i in range(1, n + 1))
    return ("stem",) + tuple(f"stage{i}" for i in range(1, n + 1))

  @property
  def widths(self) -> tuple[int, ...]:
    """Channels D_l of each hidden state (all equal in the ViT family)."""
    if self.stacked:
      return (self.config.hidden_size,) * self.num_hidden_states
    return tuple(self.config.widths)

  @property
  def image_size(self) -> int:
    return self.config.image_size

  @property
  def image_mean(self) -> tuple[float, ...]:
    return self.config.image_mean

  @property
  def image_std(self) -> tuple[float, ...]:
    return self.config.image_std

  @functools.cached_property
  def preprocessor_path(self) -> str | None:
    """The checkpoint's preprocessor_config.json, or None.

    In the folder ``source`` names, or in the Hugging Face cache for a repo
    id (no download); None for random and Inception-v3 encoders.
    """
    source = str(self.source)
    if os.path.isdir(source):
      path = os.path.join(source, PREPROCESSOR_FILE)
      return path if os.path.isfile(path) else None
    if not source or source.startswith("random:") or os.path.exists(source):
      return None
    try:
      from huggingface_hub import try_to_load_from_cache

      path = try_to_load_from_cache(source, PREPROCESSOR_FILE)
    except Exception:  # noqa: BLE001 -- not a repo id: no file.
      return None
    return path if isinstance(path, str) and os.path.isfile(path) else None

  @functools.cached_property
  def preprocessor_config(self) -> dict | None:
    """The dict of `preprocessor_path` (None without one); assign a dict to
    give an encoder another recipe (`ctjax.preprocess.from_processor_dict`)."""
    if self.preprocessor_path is None:
      return None
    try:
      with open(self.preprocessor_path) as f:
        d = json.load(f)
    except (OSError, ValueError) as e:
      raise ValueError(f"cannot read {self.preprocessor_path}: {e}") from e
    if not isinstance(d, dict):
      raise ValueError(f"{self.preprocessor_path} does not hold a JSON object")
    return d

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
    return f"{self.config.tag}-{self.weights_hash}"

  def __repr__(self):
    return f"Encoder({self.identity}, source={self.source!r})"


def from_config(config: AnyConfig, seed: int = 0) -> Encoder:
  """A randomly initialised encoder (truncated normal 0.02, as transformers' init).

  Args:
    config: a ctjax config, or a transformers config / config.json dict.
    seed: PRNG seed of the initialisation.
  """
  if not isinstance(config, _CONFIGS):
    from ctjax.models.config import from_hf_config

    config = from_hf_config(config)
  cls = module_class(config)
  graphdef, state = nnx.split(
    nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0)))
  )
  nnx.replace_by_pure_dict(
    state, _random_params(nnx.to_pure_dict(state), config, seed)
  )
  return Encoder(config, graphdef, state, source=f"random:{seed}")


def _random_params(abstract, config: AnyConfig, seed: int, path=()):
  """NumPy initialisation of a pure-dict parameter tree (same rules as transformers).

  Kernels, tokens and position embeddings ~ N(0, 0.02²) truncated at 2 std;
  biases 0; LayerNorm/BatchNorm scales 1; layer scales
  ``config.layerscale_value``; BatchNorm running mean 0 and variance 1.
  Host-side because XLA:CPU compiles each PRNG call slowly.
  """
  if isinstance(abstract, dict):
    return {
      k: _random_params(v, config, seed, path + (k,))
      for k, v in abstract.items()
    }
  shape = abstract.shape
  if path[-1] in ("bias", "mean"):
    return np.zeros(shape, np.float32)
  if path[-1] == "var":
    return np.ones(shape, np.float32)
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
