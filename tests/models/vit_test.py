"""Parity of ctjax's ViT family with transformers' PyTorch models, every layer."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers as tf
from flax import nnx

import ctjax.models as cm
from tests.models.conftest import save_tiny, torch_hidden_states

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
SMALL = cm.EncoderConfig(
  hidden_size=32,
  num_layers=2,
  num_heads=2,
  head_dim=16,
  mlp_dim=64,
  image_size=32,
  patch_size=16,
)

CASES = [
  # (id, torch model, config class, config, image sizes (h, w) to run)
  (
    "vit-p16",
    tf.ViTModel,
    tf.ViTConfig,
    dict(TINY, intermediate_size=64, image_size=32, patch_size=16),
    [(32, 32), (48, 32)],
  ),
  (
    "vit-p14-noqkvbias-eps-tanh",
    tf.ViTModel,
    tf.ViTConfig,
    dict(
      TINY,
      num_hidden_layers=3,
      intermediate_size=48,
      image_size=42,
      patch_size=14,
      qkv_bias=False,
      layer_norm_eps=1e-5,
      hidden_act="gelu_pytorch_tanh",
    ),
    [(42, 42), (28, 28)],
  ),
  (
    "deit-p16",
    tf.DeiTModel,
    tf.DeiTConfig,
    dict(
      TINY,
      intermediate_size=64,
      image_size=32,
      patch_size=16,
      layer_norm_eps=1e-6,
    ),
    [(32, 32), (56, 56)],
  ),
  (
    "dinov2-p14",
    tf.Dinov2Model,
    tf.Dinov2Config,
    dict(TINY, image_size=28, patch_size=14, mlp_ratio=2),
    [(28, 28), (56, 42)],
  ),
  (
    "dinov2-swiglu-noqkvbias",
    tf.Dinov2Model,
    tf.Dinov2Config,
    dict(
      TINY,
      num_attention_heads=4,
      image_size=42,
      patch_size=14,
      use_swiglu_ffn=True,
      qkv_bias=False,
      layer_norm_eps=1e-5,
    ),
    [(28, 28)],
  ),
  (
    "dinov2-registers",
    tf.Dinov2WithRegistersModel,
    tf.Dinov2WithRegistersConfig,
    dict(
      TINY, image_size=42, patch_size=14, num_register_tokens=4, mlp_ratio=2
    ),
    [(42, 42), (28, 28), (28, 56)],
  ),
  (
    "dinov2-registers-swiglu-p16",
    tf.Dinov2WithRegistersModel,
    tf.Dinov2WithRegistersConfig,
    dict(
      TINY,
      image_size=32,
      patch_size=16,
      num_register_tokens=2,
      use_swiglu_ffn=True,
    ),
    [(48, 48)],
  ),
]


@pytest.mark.parametrize(
  "name,model_cls,config_cls,config,sizes", CASES, ids=[c[0] for c in CASES]
)
def test_every_hidden_state_matches_transformers(
  tmp_path, rng, name, model_cls, config_cls, config, sizes
):
  folder, model = save_tiny(tmp_path, model_cls, config_cls, **config)
  encoder = cm.from_pretrained(folder)
  interp = (
    {"interpolate_pos_encoding": True}
    if model_cls in (tf.ViTModel, tf.DeiTModel)
    else {}
  )
  for h, w in sizes:
    pixels = rng.normal(size=(2, h, w, 3)).astype(np.float32)
    want, want_last = torch_hidden_states(model, pixels, **interp)
    out = encoder(pixels)
    assert (
      out.hidden_states.shape
      == want.shape
      == (
        config["num_hidden_layers"] + 1,
        2,
        encoder.config.num_tokens(h, w),
        32,
      )
    )
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
    np.testing.assert_array_equal(
      encoder.hidden_states(pixels), out.hidden_states
    )


def test_parameter_count_matches_transformers(tmp_path):
  # Guards against blocks silently dropped from the nnx state (list handling).
  folder, model = save_tiny(
    tmp_path,
    tf.Dinov2WithRegistersModel,
    tf.Dinov2WithRegistersConfig,
    **dict(
      TINY,
      num_hidden_layers=3,
      image_size=28,
      patch_size=14,
      use_swiglu_ffn=True,
    ),
  )
  encoder = cm.from_pretrained(folder)
  ours = sum(x.size for x in jax.tree.leaves(encoder.params))
  theirs = sum(
    p.numel() for n, p in model.named_parameters() if "mask_token" not in n
  )
  assert ours == theirs
  assert len(encoder.module.blocks) == 3


def test_pure_function_under_jit_equals_method(rng):
  encoder = cm.from_config(SMALL, seed=1)
  pixels = jnp.asarray(rng.normal(size=(3, 32, 32, 3)), jnp.float32)
  args = (encoder.graphdef, encoder.params, pixels, jnp.dtype(jnp.float32))
  np.testing.assert_array_equal(
    cm.jit_forward()(*args).hidden_states, encoder.hidden_states(pixels)
  )
  # A plain jit (XLA's default options) agrees to rounding.
  out = jax.jit(cm.forward, static_argnums=(0, 3))(*args)
  np.testing.assert_allclose(
    out.hidden_states, encoder.hidden_states(pixels), rtol=1e-5, atol=1e-6
  )
  # Gradients flow through the pure function (research use).
  one = cm.from_config(dataclasses.replace(SMALL, num_layers=1), seed=1)
  grads = jax.jit(
    jax.grad(lambda p: one.apply(p, pixels).hidden_states[-1, :, 0].sum())
  )(one.params)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert float(jnp.abs(grads["cls_token"][...]).sum()) > 0


def test_bfloat16_close_to_float32(rng):
  encoder = cm.from_config(SMALL, seed=2)
  pixels = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  f32 = np.asarray(encoder.hidden_states(pixels))
  bf16 = encoder.hidden_states(pixels, dtype=jnp.bfloat16)
  assert bf16.dtype == jnp.bfloat16
  np.testing.assert_allclose(
    np.asarray(bf16, np.float32), f32, atol=0.1 * np.abs(f32).max()
  )


def test_random_init_is_seeded_and_identity_tracks_weights():
  config = cm.preset("Ti/16", num_layers=1, image_size=32, model_type="deit")
  a, b, c = (
    cm.from_config(config, 0),
    cm.from_config(config, 0),
    cm.from_config(config, 1),
  )
  assert a.identity == b.identity != c.identity
  assert a.identity.startswith("deit-L1-D192-H3-P16-S32-R0-")
  assert a.image_mean == (0.485, 0.456, 0.406)
  tree = nnx.to_pure_dict(a.params)
  assert tree["pos_embed"].shape == (
    2 + 4,
    192,
  )  # CLS + distillation + 2x2 patches
  assert (
    0.015 < float(np.std(tree["blocks"][0]["mlp"]["fc1"]["kernel"])) < 0.025
  )
  from_hf = cm.from_config(
    tf.Dinov2WithRegistersConfig(**TINY, image_size=28, patch_size=14), 3
  )
  assert from_hf.identity.startswith(
    "dinov2_with_registers-L2-D32-H2-P14-S28-R4-"
  )


def test_wrong_channel_count_is_rejected():
  encoder = cm.from_config(SMALL)
  with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
    encoder.hidden_states(np.zeros((1, 32, 32, 4), np.float32))
