"""Parity of ctjax's Swin with transformers' SwinModel, every hidden state."""

import jax
import numpy as np
import pytest
import transformers as tf

import ctjax.models as cm
from ctjax.models import swin
from tests.models.conftest import (
  assert_states_close,
  save_tiny,
  torch_feature_maps,
)

CASES = [
  # (id, SwinConfig kwargs, image sizes (h, w))
  (
    "shifted-windows-smaller-than-map",
    dict(
      image_size=32,
      patch_size=2,
      embed_dim=8,
      depths=[2, 2],
      num_heads=[2, 4],
      window_size=4,
    ),
    [(40, 24)],
  ),
  (
    "padding-odd-merge-abs-pos-noqkvbias",
    dict(
      image_size=28,
      patch_size=2,
      embed_dim=8,
      depths=[2, 2, 1],
      num_heads=[1, 2, 2],
      window_size=4,
      use_absolute_embeddings=True,
      qkv_bias=False,
      mlp_ratio=2.0,
      layer_norm_eps=1e-6,
    ),
    [(28, 28)],
  ),
]


@pytest.mark.parametrize("name,config,sizes", CASES, ids=[c[0] for c in CASES])
def test_every_hidden_state_matches_transformers(
  tmp_path, rng, name, config, sizes
):
  folder, model = save_tiny(tmp_path, tf.SwinModel, tf.SwinConfig, **config)
  encoder = cm.from_pretrained(folder)
  assert isinstance(encoder.config, cm.SwinConfig)
  assert encoder.num_hidden_states == len(config["depths"]) + 1
  for h, w in sizes:
    pixels = rng.normal(size=(2, h, w, 3)).astype(np.float32)
    want, want_last = torch_feature_maps(model, pixels)
    out = encoder(pixels)
    assert [s.shape[-1] for s in out.hidden_states] == list(
      encoder.config.widths
    )
    assert_states_close(out.hidden_states, want, f"{name} {h}x{w}")
    np.testing.assert_allclose(
      out.last_hidden_state, want_last, atol=1e-4, rtol=0
    )


def test_relative_position_index_and_shift_mask_match_transformers():
  import torch

  module = tf.models.swin.modeling_swin.SwinRelativePositionBias(2, (5, 5))
  np.testing.assert_array_equal(
    swin.relative_position_index(5).reshape(-1),
    module.relative_position_index.numpy(),
  )
  layer = tf.models.swin.modeling_swin.SwinLayer(
    tf.SwinConfig(window_size=4, embed_dim=8),
    dim=8,
    input_resolution=(8, 12),
    num_heads=2,
    shift_size=2,
  )
  want = layer.get_attn_mask(8, 12, torch.float32, "cpu").numpy()
  np.testing.assert_array_equal(swin.shift_mask(8, 12, 4, 2), want)


def test_parameter_count_and_random_init(tmp_path):
  folder, model = save_tiny(
    tmp_path, tf.SwinModel, tf.SwinConfig, **CASES[1][1]
  )
  encoder = cm.from_pretrained(folder)
  theirs = sum(
    p.numel() for n, p in model.named_parameters() if not n.startswith("pooler")
  )
  assert sum(x.size for x in jax.tree.leaves(encoder.params)) == theirs
  random = cm.from_config(model.config, seed=0)
  assert random.identity.startswith("swin-P2-C8-N2x2x1-H1x2x2-W4-A1-S28-")
  with pytest.raises(ValueError, match="absolute position embeddings"):
    random.hidden_states(np.zeros((1, 32, 32, 3), np.float32))
