"""The exporter inverts the conversion rules of every hierarchical family."""

import numpy as np
import pytest
import transformers as tf
from safetensors.numpy import load_file

import ctjax.models as cm
from ctjax.models import export
from tests.models.conftest import randomize_batch_norm, save_tiny

CASES = [
  (
    tf.ResNetModel,
    tf.ResNetConfig,
    dict(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 2]),
    (".num_batches_tracked",),
  ),
  (
    tf.ConvNextModel,
    tf.ConvNextConfig,
    dict(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2),
    ("layernorm.",),
  ),
  (
    tf.SwinModel,
    tf.SwinConfig,
    dict(
      image_size=16,
      patch_size=2,
      embed_dim=8,
      depths=[2, 1],
      num_heads=[2, 2],
      window_size=4,
      use_absolute_embeddings=True,
    ),
    (),
  ),
  (
    tf.CLIPVisionModel,
    tf.CLIPVisionConfig,
    dict(
      hidden_size=16,
      intermediate_size=32,
      num_hidden_layers=1,
      num_attention_heads=2,
      image_size=16,
      patch_size=8,
    ),
    ("post_layernorm.",),
  ),
]


@pytest.mark.parametrize(
  "model_cls,config_cls,config,ignored",
  CASES,
  ids=[c[0].__name__ for c in CASES],
)
def test_to_hf_tensors_gives_back_the_checkpoint(
  tmp_path, model_cls, config_cls, config, ignored
):
  folder, model = save_tiny(tmp_path, model_cls, config_cls, **config)
  if model_cls is tf.ResNetModel:  # non-trivial running statistics
    randomize_batch_norm(model)
    model.save_pretrained(folder)
  encoder = cm.from_pretrained(folder)
  saved = {
    k: v
    for k, v in load_file(f"{folder}/model.safetensors").items()
    if not (k.startswith(ignored) or k.endswith(ignored))
  }
  exported = export.to_hf_tensors(encoder)
  assert sorted(exported) == sorted(saved)
  for name, value in saved.items():
    np.testing.assert_array_equal(exported[name], value, err_msg=name)
