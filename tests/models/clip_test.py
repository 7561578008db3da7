"""Parity of ctjax's CLIP vision tower with transformers, every hidden state."""

import numpy as np
import pytest
import torch
import transformers as tf

import ctjax.models as cm
from ctjax.models import config as cfg
from tests.models.conftest import perturbed, save_tiny, torch_hidden_states

TINY = dict(
  hidden_size=32,
  intermediate_size=64,
  num_hidden_layers=2,
  num_attention_heads=2,
  image_size=32,
  patch_size=8,
)

CASES = [
  # (id, CLIPVisionConfig kwargs, image sizes (h, w) to run)
  ("quick-gelu", TINY, [(32, 32), (48, 40)]),
  (
    "gelu-eps-p16",
    dict(
      TINY,
      num_hidden_layers=3,
      patch_size=16,
      hidden_act="gelu",
      layer_norm_eps=1e-6,
    ),
    [(32, 32)],
  ),
]


def check(encoder, model, pixels, name):
  h, w = pixels.shape[1:3]
  interp = {"interpolate_pos_encoding": True} if (h, w) != (32, 32) else {}
  want, want_last = torch_hidden_states(model, pixels, **interp)
  out = encoder(pixels)
  assert out.hidden_states.shape == want.shape, (name, want.shape)
  for layer in range(want.shape[0]):
    np.testing.assert_allclose(
      out.hidden_states[layer],
      want[layer],
      atol=1e-4,
      rtol=0,
      err_msg=f"{name} {h}x{w} hidden state {layer}",
    )
  np.testing.assert_allclose(
    out.last_hidden_state, want_last, atol=1e-4, rtol=0
  )


@pytest.mark.parametrize("name,config,sizes", CASES, ids=[c[0] for c in CASES])
def test_every_hidden_state_matches_clip_vision_model(
  tmp_path, rng, name, config, sizes
):
  folder, model = save_tiny(
    tmp_path, tf.CLIPVisionModel, tf.CLIPVisionConfig, **config
  )
  encoder = cm.from_pretrained(folder)
  c = encoder.config
  assert c.model_type == "clip_vision_model" and encoder.stacked
  assert (c.image_mean, c.image_std) == (cfg.CLIP_MEAN, cfg.CLIP_STD)
  assert c.hidden_act == config.get("hidden_act", "quick_gelu")
  assert encoder.num_prefix_tokens == 1
  assert encoder.layer_names[:2] == ("embeddings", "block1")
  assert encoder.widths == (32,) * (config["num_hidden_layers"] + 1)
  for h, w in sizes:
    check(
      encoder, model, rng.normal(size=(2, h, w, 3)).astype(np.float32), name
    )


def test_clip_checkpoint_folder_gives_the_vision_tower(tmp_path, rng):
  torch.manual_seed(0)
  config = tf.CLIPConfig(
    vision_config=TINY,
    text_config=dict(
      hidden_size=16,
      intermediate_size=32,
      num_hidden_layers=1,
      num_attention_heads=2,
    ),
    projection_dim=8,
  )
  model = perturbed(tf.CLIPModel(config))
  model.save_pretrained(tmp_path / "clip")
  encoder = cm.from_pretrained(str(tmp_path / "clip"))
  assert encoder.config.model_type == "clip_vision_model"
  assert encoder.config.num_layers == 2
  pixels = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  check(encoder, model.vision_model, pixels, "CLIPModel")
