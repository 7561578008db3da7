"""Export: a ctjax encoder as a Hugging Face checkpoint (the inverse of
`ctjax.models.convert`).

  to_hf_tensors(encoder)       -> {name: array}  under transformers' names
  hf_config(config, num_labels) -> transformers.ViTConfig
"""

import numpy as np
from flax import nnx

from ctjax.models import convert
from ctjax.models.config import EncoderConfig
from ctjax.models.encoder import Encoder


def to_hf_tensors(encoder: Encoder) -> dict[str, np.ndarray]:
  """The encoder's parameters under transformers' names and layouts.

  The inverse of ``ctjax.models.convert.load_state``: each conversion rule
  there (transpose, reshape, slice) only moves elements, so applying it to an
  array of element indices tells where every ctjax value goes in the
  checkpoint tensor.

  Args:
    encoder: any ctjax Encoder.

  Returns:
    name -> float32 array, e.g. ``encoder.layer.0.attention.attention.query.weight``
    ``[H*K, D]``; loadable by transformers' ``ViTModel.from_pretrained`` (and
    the DeiT/DINOv2 classes for those families).
  """
  rules = convert.checkpoint_rules(encoder.config)
  pure = nnx.to_pure_dict(encoder.params)
  flat, filled, shapes = {}, {}, {}
  for path, leaf in convert.jax_flat(pure):
    if path not in rules:
      raise ValueError(
        f"no checkpoint name for ctjax parameter {'/'.join(map(str, path))}"
      )
    name, hf_shape, fn = rules[path]
    value = np.asarray(leaf, np.float32)
    size = int(np.prod(hf_shape))
    index = np.asarray(fn(np.arange(size).reshape(hf_shape)))
    if index.shape != value.shape:
      raise ValueError(
        f"{name}: rule gives shape {index.shape}, parameter has {value.shape}"
      )
    if name not in flat:
      flat[name], filled[name] = (
        np.zeros(size, np.float32),
        np.zeros(size, bool),
      )
      shapes[name] = tuple(hf_shape)
    flat[name][index.ravel()] = value.ravel()
    filled[name][index.ravel()] = True
  unfilled = [n for n, f in filled.items() if not f.all()]
  if unfilled:
    raise ValueError(
      f"checkpoint tensors not fully covered by parameters: {unfilled}"
    )
  return {name: values.reshape(shapes[name]) for name, values in flat.items()}


def hf_config(config: EncoderConfig, num_labels: int | None = None):
  """A transformers ViTConfig describing a ctjax "vit" EncoderConfig."""
  import transformers

  if (
    config.model_type != "vit"
    or config.head_dim * config.num_heads != config.hidden_size
  ):
    raise ValueError(
      f"only plain ViT configs with head_dim*num_heads == hidden_size export "
      f"to a ViTConfig; got {config}"
    )
  kwargs = {"num_labels": num_labels} if num_labels else {}
  return transformers.ViTConfig(
    hidden_size=config.hidden_size,
    num_hidden_layers=config.num_layers,
    num_attention_heads=config.num_heads,
    intermediate_size=config.mlp_dim,
    hidden_act=config.hidden_act,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    layer_norm_eps=config.layer_norm_eps,
    image_size=config.image_size,
    patch_size=config.patch_size,
    num_channels=config.num_channels,
    qkv_bias=config.qkv_bias,
    architectures=["ViTModel"],
    **kwargs,
  )
