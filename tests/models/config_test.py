"""EncoderConfig from transformers configs and presets."""

import pytest
import transformers as tf

from ctjax.models import config as cfg


def test_from_hf_dinov2_swiglu_width_and_defaults():
  c = cfg.from_hf_config(
    tf.Dinov2Config(
      hidden_size=1536,
      num_attention_heads=24,
      use_swiglu_ffn=True,
      patch_size=14,
      image_size=518,
    )
  )
  assert (c.mlp_dim, c.layer_scale, c.swiglu, c.layer_norm_eps) == (
    4096,
    True,
    True,
    1e-6,
  )
  assert c.image_mean == cfg.IMAGENET_MEAN and c.grid_size == 37


def test_from_hf_vit_and_registers():
  v = cfg.from_hf_config(tf.ViTConfig())
  assert v == cfg.preset("B/16")
  r = cfg.from_hf_config(
    tf.Dinov2WithRegistersConfig(
      num_register_tokens=4, patch_size=14, image_size=518
    )
  )
  assert r.num_registers == 4 and r.num_tokens() == 1 + 4 + 37 * 37


def test_preset_names_and_errors():
  assert (
    cfg.preset("H/14").hidden_size == 1280
    and cfg.preset("H/14").patch_size == 14
  )
  assert cfg.preset("g/14", model_type="dinov2").swiglu
  with pytest.raises(ValueError, match="unknown variant"):
    cfg.preset("XL/16")
  with pytest.raises(ValueError, match="model_type .beit."):
    cfg.from_hf_config(
      {
        "model_type": "beit",
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 1,
      }
    )
  with pytest.raises(ValueError, match="not a multiple"):
    cfg.EncoderConfig(image_size=30, patch_size=16)
