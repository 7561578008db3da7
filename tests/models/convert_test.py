"""Checkpoint loading: errors list every bad tensor; HF cache, .bin, preprocessor config."""

import json
import os

import numpy as np
import pytest
import torch
import transformers as tf
from safetensors.numpy import load_file, save_file

import ctjax.models as cm
from ctjax.models import convert
from tests.models.conftest import save_tiny, torch_hidden_states

CONFIG = dict(
  hidden_size=32,
  num_hidden_layers=2,
  num_attention_heads=2,
  intermediate_size=64,
  image_size=32,
  patch_size=16,
)


@pytest.fixture
def vit_folder(tmp_path):
  return save_tiny(tmp_path, tf.ViTModel, tf.ViTConfig, **CONFIG)


def test_errors_list_all_missing_unexpected_and_misshaped(vit_folder):
  folder, _ = vit_folder
  path = os.path.join(folder, "model.safetensors")
  tensors = load_file(path)
  del tensors["encoder.layer.1.attention.attention.key.weight"]
  del tensors["layernorm.bias"]
  tensors["encoder.layer.7.mystery.weight"] = np.zeros(3, np.float32)
  tensors["embeddings.position_embeddings"] = np.zeros((1, 9, 32), np.float32)
  save_file(tensors, path)
  with pytest.raises(ValueError) as err:
    cm.from_pretrained(folder)
  msg = str(err.value)
  for name in (
    "encoder.layer.1.attention.attention.key.weight",
    "layernorm.bias",
    "encoder.layer.7.mystery.weight",
    "embeddings.position_embeddings",
    "(1, 9, 32)",
    "expected (1, 5, 32)",
    "missing tensors (2)",
    "unexpected tensors (1)",
    "shape mismatches (1)",
  ):
    assert name in msg, (name, msg)


def test_classification_checkpoint_prefix_and_heads_are_handled(tmp_path, rng):
  torch.manual_seed(0)
  cls_model = tf.ViTForImageClassification(
    tf.ViTConfig(num_labels=3, **CONFIG)
  ).eval()
  cls_model.save_pretrained(tmp_path, safe_serialization=True)
  assert any(
    k.startswith("vit.") for k in load_file(tmp_path / "model.safetensors")
  )
  encoder = cm.from_pretrained(str(tmp_path))
  pixels = rng.normal(size=(1, 32, 32, 3)).astype(np.float32)
  want, _ = torch_hidden_states(cls_model.vit, pixels)
  np.testing.assert_allclose(encoder.hidden_states(pixels), want, atol=1e-4)


def test_pytorch_bin_and_preprocessor_config(vit_folder, rng):
  folder, model = vit_folder
  os.remove(os.path.join(folder, "model.safetensors"))
  torch.save(model.state_dict(), os.path.join(folder, "pytorch_model.bin"))
  with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
    json.dump({"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]}, f)
  encoder = cm.from_pretrained(folder)
  assert encoder.image_mean == (0.1, 0.2, 0.3) and encoder.image_std == (
    0.4,
    0.5,
    0.6,
  )
  pixels = rng.normal(size=(1, 32, 32, 3)).astype(np.float32)
  np.testing.assert_allclose(
    encoder.hidden_states(pixels),
    torch_hidden_states(model, pixels)[0],
    atol=1e-4,
  )


def test_offline_hf_cache_repo_id(vit_folder, tmp_path, monkeypatch):
  import huggingface_hub.constants as hub

  folder, _ = vit_folder
  repo = tmp_path / "hub" / "models--someone--tiny-vit"
  snapshot = repo / "snapshots" / "0123abcd"
  snapshot.mkdir(parents=True)
  for name in ("config.json", "model.safetensors"):
    os.link(os.path.join(folder, name), snapshot / name)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text("0123abcd")
  monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
  monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
  encoder = cm.from_pretrained("someone/tiny-vit")
  assert encoder.identity == cm.from_pretrained(folder).identity
  with pytest.raises(ValueError, match="someone/absent"):
    cm.from_pretrained("someone/absent")


def test_folder_without_weights_or_config(tmp_path):
  with pytest.raises(ValueError, match="no config.json"):
    convert.read_config(str(tmp_path))
  with pytest.raises(ValueError, match="no model.safetensors"):
    convert.read_tensors(str(tmp_path))


def test_transformers5_in_memory_names_with_swiglu(tmp_path, rng):
  # state_dict() of transformers 5 uses q_proj/o_proj and split gate/up projections.
  folder, model = save_tiny(
    tmp_path,
    tf.Dinov2Model,
    tf.Dinov2Config,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=28,
    patch_size=14,
    use_swiglu_ffn=True,
  )
  names = list(model.state_dict())
  assert any("gate_proj" in n for n in names) and any(
    "q_proj" in n for n in names
  )
  save_file(
    {k: v.numpy() for k, v in model.state_dict().items()},
    os.path.join(folder, "model.safetensors"),
  )
  encoder = cm.from_pretrained(folder)
  pixels = rng.normal(size=(1, 28, 28, 3)).astype(np.float32)
  np.testing.assert_allclose(
    encoder.hidden_states(pixels),
    torch_hidden_states(model, pixels)[0],
    atol=1e-4,
  )
