"""Parity of ctjax's ResNet with transformers' ResNetModel, every hidden state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as tf

import ctjax.models as cm
from tests.models.conftest import (
  assert_states_close,
  perturbed,
  randomize_batch_norm,
  torch_feature_maps,
)

CASES = [
  # (id, ResNetConfig kwargs, image sizes (h, w))
  (
    "basic",
    dict(
      embedding_size=8,
      hidden_sizes=[8, 16, 24],
      depths=[1, 2, 1],
      layer_type="basic",
    ),
    [(32, 32), (40, 24)],
  ),
  (
    "bottleneck",
    dict(embedding_size=8, hidden_sizes=[16, 32], depths=[2, 1]),
    [(32, 32)],
  ),
  (
    "bottleneck-downsample-first-stage-and-in-bottleneck",
    dict(
      embedding_size=8,
      hidden_sizes=[16, 32],
      depths=[1, 2],
      downsample_in_first_stage=True,
      downsample_in_bottleneck=True,
    ),
    [(36, 36)],
  ),
  (
    "basic-downsample-first-stage-gelu",
    dict(
      embedding_size=8,
      hidden_sizes=[8, 16],
      depths=[1, 1],
      layer_type="basic",
      downsample_in_first_stage=True,
      hidden_act="gelu",
    ),
    [(33, 31)],
  ),
]


def save_resnet(tmp_path, seed=0, **config):
  torch.manual_seed(seed)
  model = tf.ResNetModel(tf.ResNetConfig(**config))
  model = randomize_batch_norm(perturbed(model, seed=seed), seed=seed)
  folder = tmp_path / f"resnet-{seed}"
  model.save_pretrained(folder, safe_serialization=True)
  return str(folder), model


@pytest.mark.parametrize("name,config,sizes", CASES, ids=[c[0] for c in CASES])
def test_every_hidden_state_matches_transformers(
  tmp_path, rng, name, config, sizes
):
  folder, model = save_resnet(tmp_path, **config)
  encoder = cm.from_pretrained(folder)
  assert isinstance(encoder.config, cm.ResNetConfig)
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


def test_running_statistics_are_used(tmp_path, rng):
  # Same weights, BatchNorm statistics reset to mean 0 / var 1: the outputs
  # must change (a port ignoring running stats would not see the difference).
  folder, model = save_resnet(tmp_path, **CASES[1][1])
  encoder = cm.from_pretrained(folder)
  pixels = rng.normal(size=(1, 32, 32, 3)).astype(np.float32)
  base = np.asarray(encoder.hidden_states(pixels)[0])
  for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.reset_running_stats()
  want, _ = torch_feature_maps(model, pixels)
  assert np.abs(base - want[0]).max() > 1e-2


def test_parameter_count_and_random_init(tmp_path, rng):
  folder, model = save_resnet(tmp_path, **CASES[2][1])
  encoder = cm.from_pretrained(folder)
  ours = sum(x.size for x in jax.tree.leaves(encoder.params))
  theirs = sum(p.numel() for p in model.parameters()) + sum(
    b.numel()
    for n, b in model.named_buffers()
    if n.endswith(("running_mean", "running_var"))
  )
  assert ours == theirs
  random = cm.from_config(model.config, seed=0)
  assert random.identity.startswith("resnet-bottleneck-E8-W16x32-N1x2-F11-")
  assert random.layer_names == ("stem", "stage1", "stage2")
  assert random.widths == (8, 16, 32) and not random.stacked
  assert random.identity != encoder.identity
  pixels = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
  # The encoder's call is ctjax's compiled forward (`jit_forward`, XLA:CPU
  # options of its own); a user's plain jit of the pure function agrees to
  # rounding.
  args = (random.graphdef, random.params, pixels, jnp.dtype(jnp.float32))
  ours = cm.jit_forward()(*args)
  plain = jax.jit(cm.forward, static_argnums=(0, 3))(*args)
  for a, b, c in zip(
    ours.hidden_states, random.hidden_states(pixels), plain.hidden_states
  ):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(c, b, rtol=1e-5, atol=1e-6)


def test_classification_checkpoint_and_errors(tmp_path, rng):
  config = tf.ResNetConfig(**CASES[0][1], num_labels=3)
  torch.manual_seed(0)
  model = randomize_batch_norm(
    perturbed(tf.ResNetForImageClassification(config))
  )
  model.save_pretrained(tmp_path / "cls")
  encoder = cm.from_pretrained(str(tmp_path / "cls"))
  pixels = rng.normal(size=(1, 32, 32, 3)).astype(np.float32)
  want, _ = torch_feature_maps(model.resnet, pixels)
  assert_states_close(encoder.hidden_states(pixels), want, "classifier")
  from safetensors.numpy import load_file, save_file

  path = tmp_path / "cls" / "model.safetensors"
  tensors = load_file(path)
  del tensors[
    "resnet.encoder.stages.1.layers.0.shortcut.normalization.running_var"
  ]
  tensors["resnet.embedder.embedder.convolution.weight"] = np.zeros(
    (8, 3, 3, 3), np.float32
  )
  save_file(tensors, path)
  with pytest.raises(ValueError) as err:
    cm.from_pretrained(str(tmp_path / "cls"))
  msg = str(err.value)
  assert (
    "missing tensors (1)" in msg and "shortcut.normalization.running_var" in msg
  )
  assert "shape mismatches (1)" in msg and "expected (8, 3, 7, 7)" in msg
