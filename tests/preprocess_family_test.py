"""Each family's preprocessing against transformers' own image processors
(AutoImageProcessor from a saved preprocessor_config.json, fed PIL images)
and pytorch-fid's resize (torch's F.interpolate)."""

import json
import os
import types
import warnings

import numpy as np
import pytest
from PIL import Image

import ctjax
import ctjax.models as cm
from ctjax import embedding
from ctjax import preprocess as pp

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

IMAGENET = dict(
  image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]
)
# preprocessor_config.json of each kind, at small sizes (what the released
# checkpoints hold, scaled down).
PROCESSORS = {
  "vit": dict(
    image_processor_type="ViTImageProcessor",
    size={"height": 24, "width": 24},
    resample=2,
    image_mean=[0.5] * 3,
    image_std=[0.5] * 3,
  ),
  "swin": dict(
    feature_extractor_type="ViTFeatureExtractor",
    size=24,
    resample=3,
    **IMAGENET,
  ),
  "deit": dict(
    image_processor_type="DeiTImageProcessor",
    size={"height": 27, "width": 27},
    crop_size={"height": 24, "width": 24},
    resample=3,
    **IMAGENET,
  ),
  "dinov2": dict(
    image_processor_type="BitImageProcessor",
    size={"shortest_edge": 27},
    crop_size={"height": 24, "width": 24},
  ),
  "clip": dict(
    image_processor_type="CLIPImageProcessor",
    size={"shortest_edge": 24},
    crop_size={"height": 24, "width": 24},
  ),
  "convnext": dict(
    feature_extractor_type="ConvNextFeatureExtractor",
    size=24,
    crop_pct=0.875,
    resample=3,
    **IMAGENET,
  ),
  "convnext-384": dict(
    image_processor_type="ConvNextImageProcessor",
    size={"shortest_edge": 384},
    resample=3,
  ),
}
# Landscape, portrait, square, upscaled and strongly shrunk inputs.
SIZES = [(37, 50), (50, 37), (24, 24), (16, 16), (120, 90), (29, 31)]
DEVICE_SIZES = [(37, 50), (50, 37), (16, 16), (120, 90)]  # one compile each


def _folder(tmp_path, d):
  with open(tmp_path / "preprocessor_config.json", "w") as f:
    json.dump(d, f)
  return tmp_path


def _images(rng, hw, n=3):
  """Noise, plus one smooth image (natural images are smooth)."""
  images = rng.integers(0, 256, (n, *hw, 3), dtype=np.uint8)
  yy, xx = np.mgrid[: hw[0], : hw[1]]
  images[0] = (127 + 120 * np.sin(xx / 3.0) * np.cos(yy / 4.0))[..., None]
  return images


def _transformers(folder, images):
  proc = tf.AutoImageProcessor.from_pretrained(str(folder))
  out = proc([Image.fromarray(im) for im in images], return_tensors="np")
  return out["pixel_values"].transpose(0, 2, 3, 1)


@pytest.mark.parametrize("kind", sorted(PROCESSORS))
def test_host_path_equals_transformers(kind, tmp_path, rng):
  """host_resize_crop (what embed uses for these recipes) is transformers'
  output up to float32 rounding of the normalisation."""
  folder = _folder(tmp_path, PROCESSORS[kind])
  config = pp.read_processor_file(str(folder / "preprocessor_config.json"))
  assert config.pil_rounding and config.crop_rounding == "floor"
  for hw in SIZES:
    images = _images(rng, hw)
    want = _transformers(folder, images)
    host = np.stack(
      [pp.host_resize_crop(Image.fromarray(im), config) for im in images]
    )
    got = np.asarray(pp.preprocess(host, config, resize=False))
    assert got.shape == want.shape, (hw, got.shape, want.shape)
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)


@pytest.mark.parametrize("kind", sorted(PROCESSORS))
def test_device_path_against_transformers(kind, tmp_path, rng):
  """The on-device emulation of PIL's fixed-point passes (width, then
  height, as Pillow's Resample.c): exact for 27 of these 28 (kind, size)
  pairs (41 of 42 with all of SIZES). Pillow 13's binary differs for some
  shrinks (here DeiT's 50x37 -> 27x27: up to 5 levels of 8 bits on noise,
  1 on the smooth image, 0.23 on average); the bounds hold those residuals."""
  folder = _folder(tmp_path, PROCESSORS[kind])
  config = pp.read_processor_file(str(folder / "preprocessor_config.json"))
  lsb = 1 / 255 / min(config.std)
  exact = 0
  for hw in DEVICE_SIZES:
    images = _images(rng, hw)
    want = _transformers(folder, images)
    got = np.asarray(pp.preprocess(images, config))
    diff = np.abs(got - want)
    assert diff.max() <= 8 * lsb + 1e-5, (hw, diff.max() / lsb)
    assert diff.mean() <= 0.5 * lsb, (hw, diff.mean() / lsb)
    assert diff[0].max() <= 2 * lsb + 1e-5, hw  # the smooth image
    exact += diff.max() < 1e-5
  assert exact >= len(DEVICE_SIZES) - 1


def test_pil_weights_are_pillows(rng):
  """One pass on a 1-pixel-high image is one of PIL's 1-D passes: exact."""
  for n_in, n_out in [(16, 24), (37, 27), (300, 7)]:
    row = rng.integers(0, 256, (1, n_in), dtype=np.uint8)
    for name, code in (
      ("bilinear", Image.BILINEAR),
      ("bicubic", Image.BICUBIC),
    ):
      want = np.asarray(Image.fromarray(row).resize((n_out, 1), code))
      got = pp._pil_pass(  # pylint: disable=protected-access
        np.asarray(row, np.float32)[None, :, :, None], 2, n_out, name
      )
      np.testing.assert_array_equal(np.asarray(got)[0, :, :, 0], want)


def test_family_defaults_are_the_released_processors():
  """Without a preprocessor_config.json, each family gets the recipe of its
  released checkpoints' file (scaled to S = image_size)."""
  files = {
    cm.SwinConfig(): dict(
      feature_extractor_type="ViTFeatureExtractor",
      size=224,
      resample=3,
      **IMAGENET,
    ),
    cm.ResNetConfig(): dict(
      feature_extractor_type="ConvNextFeatureExtractor",
      size=224,
      crop_pct=0.875,
      resample=3,
      **IMAGENET,
    ),
    cm.ConvNextConfig(): dict(
      feature_extractor_type="ConvNextFeatureExtractor",
      size=224,
      crop_pct=0.875,
      resample=3,
      **IMAGENET,
    ),
    cm.preset("B/16", model_type="deit"): dict(
      feature_extractor_type="DeiTFeatureExtractor",
      size=256,
      crop_size=224,
      resample=3,
      **IMAGENET,
    ),
    cm.preset("B/14", model_type="dinov2"): dict(
      image_processor_type="BitImageProcessor",
      size={"shortest_edge": 256},
      crop_size={"height": 224, "width": 224},
      resample=3,
      **IMAGENET,
    ),
    cm.preset("B/16", model_type="clip_vision_model"): dict(
      image_processor_type="CLIPImageProcessor",
      size={"shortest_edge": 224},
      crop_size={"height": 224, "width": 224},
      resample=3,
    ),
  }
  for config, d in files.items():
    want = pp.from_processor_dict(d).identity()
    assert pp.family_default(config).identity() == want, config.model_type
  vit = pp.family_default(cm.preset("B/16"))
  assert vit == pp.PreprocessConfig(224)  # the paper's pipeline
  assert pp.family_default(cm.InceptionConfig()) == pp.fid(299)


def test_fid_recipe_is_pytorch_fids_resize(rng):
  """Device (inception.preprocess) and host (NumPy) paths against torch's
  F.interpolate(bilinear, align_corners=False) then 2 x - 1 (float32
  rounding: a few 1e-6)."""
  config = pp.family_default(cm.InceptionConfig(image_size=29))
  assert config.recipe == "pytorch-fid"
  for hw in [(40, 23), (12, 17)]:
    images = rng.integers(0, 256, (2, *hw, 3), dtype=np.uint8)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 255)
    want = torch.nn.functional.interpolate(
      x, size=(29, 29), mode="bilinear", align_corners=False
    )
    want = (2 * want - 1).numpy().transpose(0, 2, 3, 1)
    got = np.asarray(pp.preprocess(images, config))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    host = np.stack(
      [pp.host_resize_crop(Image.fromarray(im), config) for im in images]
    )
    assert host.dtype == np.float32
    got = np.asarray(pp.preprocess(host, config, resize=False))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_bad_processor_files_are_named(tmp_path):
  name = "x/preprocessor_config.json"
  base = dict(PROCESSORS["clip"])
  with pytest.raises(ValueError, match=f"{name}: resample 1 \\(lanczos\\)"):
    pp.from_processor_dict(dict(base, resample=1), name)
  with pytest.raises(ValueError, match="not square"):
    pp.from_processor_dict(
      dict(base, crop_size={"height": 24, "width": 20}), name
    )
  with pytest.raises(ValueError, match="rescale_factor"):
    pp.from_processor_dict(dict(base, rescale_factor=1.0), name)
  with pytest.raises(ValueError, match="non-square"):
    pp.from_processor_dict(dict(base, do_center_crop=False), name)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    got = pp.from_processor_dict(
      dict(image_processor_type="FooImageProcessor", size=32), name
    )
  assert got.image_size == 32 and "FooImageProcessor" in str(caught[0].message)
  p = tmp_path / "bad.json"
  p.write_text("{not json")
  with pytest.raises(ValueError, match=str(p)):
    pp.read_processor_file(str(p))


@pytest.fixture(scope="module")
def resnet_folder(tmp_path_factory):
  """A tiny HF ResNet with a ConvNeXt-style preprocessor_config.json."""
  from tests.models.conftest import randomize_batch_norm, save_tiny

  folder, model = save_tiny(
    tmp_path_factory.mktemp("prep"),
    tf.ResNetModel,
    tf.ResNetConfig,
    embedding_size=8,
    hidden_sizes=[8, 16],
    depths=[1, 1],
    layer_type="basic",
  )
  randomize_batch_norm(model)
  model.save_pretrained(folder, safe_serialization=True)
  d = dict(PROCESSORS["convnext"], size=32)
  with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
    json.dump(d, f)
  return folder, model


def test_embed_follows_the_checkpoints_processor(resnet_folder, rng, tmp_path):
  """embed of raw images == transformers' processor + PyTorch model, pooled;
  the recipe is part of the cache key."""
  folder, model = resnet_folder
  encoder = ctjax.models.from_pretrained(folder)
  assert encoder.preprocessor_path == os.path.join(
    folder, "preprocessor_config.json"
  )
  config = pp.PreprocessConfig.from_encoder(encoder)
  assert config.recipe == "ConvNextImageProcessor" and config.resize_side == 36
  images = rng.integers(0, 256, (5, 41, 30, 3), dtype=np.uint8)
  got = embedding.embed(encoder, images, pool="mean", progress=False)
  pixels = _transformers(folder, images)
  with torch.no_grad():
    out = model(
      torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))),
      output_hidden_states=True,
    )
  want = [h.numpy().mean(axis=(2, 3)) for h in out.hidden_states]
  assert len(got) == len(want)
  for g, w in zip(got, want, strict=True):
    np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-4)
  # Another recipe: another cache entry, other embeddings.
  cache = tmp_path / "cache"
  a = embedding.embed(
    encoder, images, pool="mean", progress=False, cache_dir=cache
  )
  b = embedding.embed(
    encoder,
    images,
    pool="mean",
    progress=False,
    cache_dir=cache,
    preprocess="paper",
  )
  assert len(os.listdir(cache)) == 2
  assert not np.allclose(a[-1], b[-1])
  for x, y in zip(a, got, strict=True):
    np.testing.assert_array_equal(x, y)


def test_host_resized_sources_agree(rng, tmp_path):
  """For a transformers recipe, embed resizes arrays (uint8, float, grey)
  and folders with PIL on the host: all give the same embeddings."""
  encoder = cm.from_config(
    cm.ResNetConfig(
      embedding_size=4,
      hidden_sizes=(8, 4),
      depths=(1, 1),
      layer_type="basic",
      image_size=16,
    ),
    seed=1,
  )
  assert pp.PreprocessConfig.from_encoder(encoder).pil_rounding
  grey = rng.integers(0, 256, (3, 21, 17), dtype=np.uint8)
  rgb = np.repeat(grey[..., None], 3, axis=-1)
  kw = dict(pool="mean", progress=False, batch_size=2)
  want = embedding.embed(encoder, rgb, **kw)
  folder = tmp_path / "imgs"
  folder.mkdir()
  for i, im in enumerate(grey):
    Image.fromarray(im).save(folder / f"{i}.png")
  for other in (grey, rgb.astype(np.float32) / 255.0, str(folder)):
    got = embedding.embed(encoder, other, **kw)
    for g, w in zip(got, want, strict=True):
      np.testing.assert_allclose(g, w, atol=1e-6, rtol=0)


def test_reference_meta_carries_the_recipe():
  """run.py records the recipe with a reference and refuses another."""
  from ctjax import cli  # pylint: disable=g-import-not-at-top

  encoder = cm.from_config(cm.SwinConfig(embed_dim=4, depths=(1,), num_heads=(1,), image_size=8, window_size=2, patch_size=4))  # fmt: skip
  meta = cli.reference_meta("x", encoder, "mean")
  assert meta["preprocess"] == pp.family_default(encoder.config).identity()
  ref = types.SimpleNamespace(meta=meta)  # all check_reference_meta reads
  other = dict(meta, preprocess=pp.PreprocessConfig(8).identity())
  with pytest.raises(cli.UserError, match="preprocess"):
    cli.check_reference_meta(ref, other, "r.npz")
  cli.check_reference_meta(ref, meta, "r.npz")
