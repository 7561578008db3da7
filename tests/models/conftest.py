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


def randomize_batch_norm(model, seed=0):
  """Sets every BatchNorm's running mean/var to non-trivial values (eval mode)."""
  gen = torch.Generator().manual_seed(seed)
  for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=gen))
      m.running_var.copy_(0.5 + 1.5 * torch.rand(m.num_features, generator=gen))
  return model.eval()


def torch_feature_maps(model, pixels, **kwargs):
  """pixels [B, H, W, C] numpy -> (hidden states as a list, last_hidden_state).

  Feature maps [B, C, H, W] are permuted to channels-last [B, H, W, C];
  token arrays [B, T, C] are returned as they are.
  """
  with torch.no_grad():
    out = model(
      torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))),
      output_hidden_states=True,
      **kwargs,
    )

  def layout(h):
    h = h.numpy()
    return h.transpose(0, 2, 3, 1) if h.ndim == 4 else h

  return [layout(h) for h in out.hidden_states], layout(out.last_hidden_state)


def assert_states_close(got, want, name, atol=1e-4):
  """Every hidden state of a tuple equal in shape and within atol."""
  assert isinstance(got, tuple) and len(got) == len(want), (
    name,
    type(got),
    len(got),
    len(want),
  )
  for i, (g, w) in enumerate(zip(got, want)):
    assert g.shape == w.shape, (name, i, g.shape, w.shape)
    np.testing.assert_allclose(
      np.asarray(g), w, atol=atol, rtol=0, err_msg=f"{name} hidden state {i}"
    )
