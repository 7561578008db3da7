"""Tiny random Hugging Face checkpoints saved to temporary folders."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def perturbed(model, seed=0, scale=0.05):
  """Adds N(0, scale²) noise to every parameter (biases, tokens, layer scale...)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(scale * torch.randn(p.shape, generator=gen))
  return model.eval()


def save_tiny(tmp_path, model_cls, config_cls, seed=0, **config):
  """Builds, perturbs and saves a tiny HF model; returns (folder, torch model)."""
  torch.manual_seed(seed)
  model = perturbed(model_cls(config_cls(**config)), seed=seed)
  folder = tmp_path / f"{model_cls.__name__}-{seed}"
  model.save_pretrained(folder, safe_serialization=True)
  return str(folder), model


def torch_hidden_states(model, pixels, **kwargs):
  """pixels [B, H, W, C] numpy -> ([L+1, B, T, D], last_hidden_state [B, T, D])."""
  with torch.no_grad():
    out = model(
      torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))),
      output_hidden_states=True,
      **kwargs,
    )
  return (
    np.stack([h.numpy() for h in out.hidden_states]),
    out.last_hidden_state.numpy(),
  )
