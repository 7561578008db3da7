"""Layers of different widths (ResNet, Swin) through embed, CTReference and
the fingerprint library: the list form ``[[N, D_l] for each layer]``."""

import numpy as np
import pytest

import ctjax
import ctjax.models as cm
from ctjax import embedding
from ctjax import preprocess as pp


# ------------------------------------------------------------------ embed


@pytest.fixture(scope="module")
def resnet():
  """Tiny random ResNet: stem 8 wide, stages 8, 16, 24 (widths differ)."""
  return cm.from_config(
    cm.ResNetConfig(
      embedding_size=8,
      hidden_sizes=(8, 16, 24),
      depths=(1, 1, 1),
      layer_type="basic",
      image_size=32,
    ),
    seed=3,
  )


@pytest.fixture(scope="module")
def swin():
  """Tiny random Swin: patch embedding 8 wide, two stages."""
  return cm.from_config(
    cm.SwinConfig(
      embed_dim=8,
      depths=(1, 1),
      num_heads=(1, 2),
      window_size=2,
      patch_size=4,
      image_size=16,
    ),
    seed=4,
  )


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(5).integers(
    0, 256, size=(7, 20, 18, 3), dtype=np.uint8
  )


def direct_pooled(encoder, images):
  """Oracle: enc.hidden_states of the preprocessed images, averaged in NumPy
  over every spatial position / token (one batch, no padding)."""
  pixels = pp.preprocess(images, pp.PreprocessConfig.from_encoder(encoder))
  hidden = encoder.hidden_states(pixels)
  assert isinstance(hidden, tuple)
  return [
    np.asarray(h, np.float64).reshape(h.shape[0], -1, h.shape[-1]).mean(1)
    for h in hidden
  ]


@pytest.mark.parametrize("name", ["resnet", "swin"])
def test_embed_list_form_matches_pooled_hidden_states(name, images, request):
  encoder = request.getfixturevalue(name)
  assert len(set(encoder.widths)) > 1
  before = embedding._step._cache_size()
  got = ctjax.embed(encoder, images, pool="mean", batch_size=4, progress=False)
  # 7 images in batches of 4: the padded last batch reuses the compilation.
  assert embedding._step._cache_size() - before == 1
  want = direct_pooled(encoder, images)
  assert isinstance(got, list) and len(got) == encoder.num_hidden_states
  for l, (g, w) in enumerate(zip(got, want)):
    assert g.dtype == np.float32
    assert g.shape == (len(images), encoder.widths[l])
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=str(l))


def test_embed_equal_widths_stay_stacked(resnet, images):
  # stem and stage1 are both 8 wide: the selection stacks as [L, N, D].
  got = ctjax.embed(
    resnet, images, pool="mean", layers=[0, 1], batch_size=8, progress=False
  )
  want = direct_pooled(resnet, images)
  assert isinstance(got, np.ndarray) and got.shape == (2, 7, 8)
  np.testing.assert_allclose(got, np.stack(want[:2]), rtol=1e-4, atol=1e-5)
  got = ctjax.embed(
    resnet, images, pool="mean", layers=[-1, 2], batch_size=8, progress=False
  )
  assert [g.shape for g in got] == [(7, 24), (7, 16)]
  np.testing.assert_allclose(got[0], want[3], rtol=1e-4, atol=1e-5)


def test_cls_pool_without_cls_token_is_an_error(resnet, images):
  with pytest.raises(ValueError, match=r"CLS token.*pool='mean'"):
    ctjax.embed(resnet, images, pool="cls", progress=False)


def test_embed_list_form_cache_hit_and_resume(
  resnet, images, tmp_path, monkeypatch
):
  kw = dict(pool="mean", batch_size=2, progress=False, chunk_size=4)
  first = ctjax.embed(resnet, images, cache_dir=tmp_path, **kw)
  entry = [p for p in tmp_path.iterdir() if p.is_dir()]
  assert len(entry) == 1 and (entry[0] / "done.json").exists()

  def boom(*a, **k):
    raise AssertionError("recomputed a cached entry")

  monkeypatch.setattr(embedding, "_encode", boom)
  again = ctjax.embed(resnet, images, cache_dir=tmp_path, **kw)
  assert [a.shape for a in again] == [f.shape for f in first]
  for a, f in zip(again, first):
    np.testing.assert_array_equal(a, f)
  monkeypatch.undo()
  # Interrupted after the first chunk of 4: the rerun encodes only the rest.
  calls = []
  real = embedding._encode

  def interrupted(spec, params, put, batch, *a):
    calls.append(len(batch))
    if len(calls) == 2:
      raise KeyboardInterrupt
    return real(spec, params, put, batch, *a)

  fresh = tmp_path / "fresh"
  monkeypatch.setattr(embedding, "_encode", interrupted)
  with pytest.raises(KeyboardInterrupt):
    ctjax.embed(resnet, images, cache_dir=fresh, **kw)
  calls.clear()
  monkeypatch.setattr(
    embedding, "_encode", lambda *a: calls.append(a) or real(*a)
  )
  resumed = ctjax.embed(resnet, images, cache_dir=fresh, **kw)
  assert [len(c[3]) for c in calls] == [3]
  for r, f in zip(resumed, first):
    np.testing.assert_array_equal(r, f)
