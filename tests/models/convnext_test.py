"""Parity of ctjax's ConvNeXt with transformers' ConvNextModel, every hidden state."""

import jax
import numpy as np
import pytest
import torch
import transformers as tf

import ctjax.models as cm
from tests.models.conftest import (
  assert_states_close,
  save_tiny,
  torch_feature_maps,
)

CASES = [
  # (id, ConvNextConfig kwargs, image sizes (h, w))
  (
    "layer-scale",
    dict(hidden_sizes=[8, 16, 24], depths=[1, 2, 1], num_stages=3),
    [(32, 32), (36, 28)],
  ),
  (
    "no-layer-scale-patch2-relu",
    dict(
      hidden_sizes=[8, 16],
      depths=[2, 1],
      num_stages=2,
      patch_size=2,
      layer_scale_init_value=0.0,
      hidden_act="relu",
    ),
    [(18, 18)],
  ),
  (
    # Widths of whole vectors and MLPs of multiples of 32: on a CPU the
    # native depthwise convolution's tiles, LayerNorm and MLP kernel run.
    "native-kernels-widths",
    dict(hidden_sizes=[32, 48], depths=[2, 1], num_stages=2),
    [(64, 72)],
  ),
  (
    "large-layer-scale",
    dict(
      hidden_sizes=[8, 8],
      depths=[1, 1],
      num_stages=2,
      layer_scale_init_value=0.5,
    ),
    [(32, 32)],
  ),
]


@pytest.mark.parametrize("name,config,sizes", CASES, ids=[c[0] for c in CASES])
def test_every_hidden_state_matches_transformers(
  tmp_path, rng, name, config, sizes
):
  folder, model = save_tiny(
    tmp_path, tf.ConvNextModel, tf.ConvNextConfig, **config
  )
  encoder = cm.from_pretrained(folder)
  assert isinstance(encoder.config, cm.ConvNextConfig)
  assert encoder.num_hidden_states == len(config["depths"]) + 1
  for h, w in sizes:
    pixels = rng.normal(size=(2, h, w, 3)).astype(np.float32)
    want, want_last = torch_feature_maps(model, pixels)
    out = encoder(pixels)
    assert_states_close(out.hidden_states, want, f"{name} {h}x{w}")
    np.testing.assert_allclose(
      out.last_hidden_state, want_last, atol=1e-4, rtol=0
    )


def test_parameter_count_layer_scale_and_classifier(tmp_path, rng):
  config = tf.ConvNextConfig(**CASES[0][1], num_labels=4)
  torch.manual_seed(0)
  model = tf.ConvNextForImageClassification(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn(p.shape))
  model.save_pretrained(tmp_path / "cls")
  encoder = cm.from_pretrained(str(tmp_path / "cls"))
  theirs = sum(
    p.numel()
    for n, p in model.convnext.named_parameters()
    if not n.startswith("layernorm.")
  )
  assert sum(x.size for x in jax.tree.leaves(encoder.params)) == theirs
  pixels = rng.normal(size=(1, 32, 32, 3)).astype(np.float32)
  want, _ = torch_feature_maps(model.convnext, pixels)
  assert_states_close(encoder.hidden_states(pixels), want, "classifier")
  random = cm.from_config(config, seed=0)
  assert random.identity.startswith("convnext-P4-W8x16x24-N1x2x1-LS1e-06-")
  ls = random.module.stages[1].layers[0].ls1.scale[...]
  np.testing.assert_array_equal(ls, np.full(16, 1e-6, np.float32))
