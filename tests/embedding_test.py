"""embed(): pooling, batching, sources, bad input, cache and data parallelism."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from PIL import Image

import ctjax
from ctjax import embedding
from ctjax import preprocess as pp

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """A perturbed tiny HF ViT (S=32, P=16, 2 blocks) and the ctjax encoder of it."""
  from tests.models.conftest import save_tiny

  folder, model = save_tiny(
    tmp_path_factory.mktemp("ckpt"),
    tf.ViTModel,
    tf.ViTConfig,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=32,
    patch_size=16,
  )
  return ctjax.models.from_pretrained(folder), model


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(1).integers(
    0, 256, size=(7, 24, 30, 3), dtype=np.uint8
  )


def torch_pooled(model, encoder, images, pool):
  """Reference: torch hidden states of the preprocessed images, pooled in NumPy."""
  from tests.models.conftest import torch_hidden_states

  pixels = np.asarray(
    pp.preprocess(images, pp.PreprocessConfig.from_encoder(encoder))
  )
  hidden, _ = torch_hidden_states(model, pixels)
  return hidden[:, :, 0] if pool == "cls" else hidden[:, :, 1:].mean(axis=2)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_matches_torch_with_padded_last_batch(tiny, images, pool):
  encoder, model = tiny
  embedding._step_clear_cache()
  got = ctjax.embed(encoder, images, pool=pool, batch_size=3, progress=False)
  assert got.shape == (3, 7, 32) and got.dtype == np.float32
  np.testing.assert_allclose(
    got, torch_pooled(model, encoder, images, pool), atol=1e-4
  )
  assert (
    embedding._step_cache_size() == 1
  )  # 7 images in batches of 3: one compilation
  sub = ctjax.embed(
    encoder, images, pool=pool, layers=[-1, 0], batch_size=4, progress=False
  )
  np.testing.assert_allclose(sub, got[[2, 0]], atol=1e-5)


def test_bfloat16_close(tiny, images):
  encoder, _ = tiny
  f32 = ctjax.embed(encoder, images, progress=False)
  bf16 = ctjax.embed(encoder, images, dtype="bfloat16", progress=False)
  assert bf16.dtype == np.float32
  np.testing.assert_allclose(bf16, f32, atol=0.05 * np.abs(f32).max())


def write_images(folder, images, fmt="png"):
  paths = []
  for i, im in enumerate(images):
    sub = (
      folder / ("b" if i % 2 else "a") / f"{i:02d}.{fmt}"
    )  # nested, sorted a/* then b/*
    sub.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(im).save(sub)
    paths.append(sub)
  return paths


def test_folder_npy_npz_sources_equal_the_array(tiny, images, tmp_path):
  encoder, _ = tiny
  want = ctjax.embed(encoder, images, progress=False)
  write_images(tmp_path / "imgs", images)
  order = [0, 2, 4, 6, 1, 3, 5]  # a/00, a/02, ... then b/01, ...
  got = ctjax.embed(encoder, str(tmp_path / "imgs"), progress=False)
  np.testing.assert_allclose(got, want[:, order], atol=1e-5)
  np.save(tmp_path / "x.npy", images)
  np.savez(tmp_path / "x.npz", images=images, labels=np.arange(7))
  np.testing.assert_allclose(
    ctjax.embed(encoder, str(tmp_path / "x.npy"), progress=False),
    want,
    atol=1e-5,
  )
  np.testing.assert_allclose(
    ctjax.embed(encoder, tmp_path / "x.npz", progress=False), want, atol=1e-5
  )


def test_mixed_size_folder_and_grayscale_jpeg(tiny, tmp_path, rng):
  encoder, _ = tiny
  a = rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
  b = rng.integers(0, 256, size=(33, 33), dtype=np.uint8)
  Image.fromarray(a).save(tmp_path / "a.png")
  Image.fromarray(b).save(tmp_path / "b.jpg")
  got = ctjax.embed(encoder, str(tmp_path), progress=False)
  config = pp.PreprocessConfig.from_encoder(encoder)
  crops = []
  for name in ("a.png", "b.jpg"):
    with Image.open(tmp_path / name) as im:
      crops.append(pp.host_resize_crop(im.convert("RGB"), config))
  # Sizes differ, so each image is resized and cropped in PIL on the host.
  pixels = pp.preprocess(np.stack(crops), config, resize=False)
  direct = np.asarray(encoder.hidden_states(pixels))[:, :, 0]
  np.testing.assert_allclose(got, direct, atol=1e-5)


def test_bad_inputs(tiny, images, tmp_path):
  encoder, _ = tiny
  paths = write_images(tmp_path / "imgs", images[:3])
  paths[1].write_bytes(b"not an image at all")
  with pytest.raises(ValueError, match=str(paths[1].name)):
    ctjax.embed(encoder, str(tmp_path / "imgs"), progress=False)
  with pytest.warns(
    UserWarning, match=r"skipped 1 unreadable image\(s\): .*01.png"
  ):
    got = ctjax.embed(
      encoder, str(tmp_path / "imgs"), skip_bad=True, progress=False
    )
  assert got.shape == (3, 2, 32)
  truncated = tmp_path / "trunc"
  write_images(truncated, images[:1])
  png = truncated / "a" / "00.png"
  png.write_bytes(png.read_bytes()[:200])
  with pytest.raises(ValueError, match="00.png"):
    ctjax.embed(encoder, str(truncated), progress=False)
  (tmp_path / "empty" / "sub").mkdir(parents=True)
  with pytest.raises(ValueError, match="contains no"):
    ctjax.embed(encoder, str(tmp_path / "empty"), progress=False)
  with pytest.raises(ValueError, match="4 channels"):
    ctjax.embed(encoder, np.zeros((2, 32, 32, 4), np.uint8), progress=False)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    ctjax.embed(
      encoder, np.full((2, 32, 32, 3), 255.0, np.float32), progress=False
    )
  with pytest.raises(ValueError, match="pool"):
    ctjax.embed(encoder, images, pool="max", progress=False)
  with pytest.raises(ValueError, match="layer 3 is out of range"):
    ctjax.embed(encoder, images, layers=[0, 3], progress=False)


def test_cache_hit_and_resume_after_interruption(
  tiny, images, tmp_path, monkeypatch
):
  encoder, _ = tiny
  want = ctjax.embed(encoder, images, batch_size=2, progress=False)
  calls = []
  real_encode = embedding._encode

  def counting(spec, params, put, batch, *args):
    calls.append(len(batch))
    if len(calls) == 3 and fail:
      raise KeyboardInterrupt  # dies in the third chunk
    return real_encode(spec, params, put, batch, *args)

  monkeypatch.setattr(embedding, "_encode", counting)
  fail = True
  with pytest.raises(KeyboardInterrupt):
    ctjax.embed(
      encoder,
      images,
      batch_size=2,
      chunk_size=2,
      cache_dir=tmp_path,
      progress=False,
    )
  fail, calls[:] = False, []
  got = ctjax.embed(
    encoder,
    images,
    batch_size=2,
    chunk_size=2,
    cache_dir=tmp_path,
    progress=False,
  )
  assert calls == [2, 1]  # chunks [4:6) and [6:7) only
  np.testing.assert_allclose(got, want, atol=1e-6)
  calls[:] = []
  again = ctjax.embed(
    encoder,
    images,
    batch_size=2,
    chunk_size=2,
    cache_dir=tmp_path,
    progress=False,
  )
  assert calls == [] and np.array_equal(again, got)
  other = ctjax.embed(
    encoder,
    images[::-1].copy(),
    batch_size=2,
    cache_dir=tmp_path,
    progress=False,
  )
  assert calls and np.allclose(
    other, want[:, ::-1], atol=1e-5
  )  # new data -> new key
  assert len([d for d in os.listdir(tmp_path)]) == 2


def test_data_parallel_over_two_devices(tiny, images, tmp_path):
  encoder, _ = tiny
  want = ctjax.embed(encoder, images, batch_size=3, progress=False)
  np.save(tmp_path / "images.npy", images)
  script = textwrap.dedent(f"""
      import jax, numpy as np, ctjax
      assert jax.local_device_count() == 2
      enc = ctjax.models.from_pretrained({encoder.source!r})
      out = ctjax.embed(enc, {str(tmp_path / "images.npy")!r}, batch_size=3, progress=False)
      np.save({str(tmp_path / "out.npy")!r}, out)
  """)
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=2",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=os.getcwd(),
  )
  subprocess.run(
    [sys.executable, "-c", script], check=True, env=env, timeout=300
  )
  np.testing.assert_allclose(np.load(tmp_path / "out.npy"), want, atol=1e-5)


def test_process_shares_cover_inputs_in_order(monkeypatch, tmp_path):
  """Several JAX processes: each takes a contiguous share, in input order."""
  from PIL import Image
  from ctjax import embedding, preprocess

  cfg = preprocess.PreprocessConfig(image_size=8)
  images = np.arange(7 * 4 * 4 * 3, dtype=np.uint8).reshape(7, 4, 4, 3)
  for i, im in enumerate(images):
    Image.fromarray(im).save(tmp_path / f"{i:02d}.png")
  monkeypatch.setattr(jax, "process_count", lambda: 3)
  arrays, paths = [], []
  for p in range(3):
    monkeypatch.setattr(jax, "process_index", lambda p=p: p)
    arrays.append(
      embedding._process_share(embedding.as_source(images, cfg), False).load(
        0, 7
      )[0]
    )
    paths += embedding._process_share(
      embedding.as_source(str(tmp_path), cfg), False
    ).paths
  assert [len(a) for a in arrays] == [3, 2, 2]
  np.testing.assert_array_equal(np.concatenate(arrays), images)
  assert [os.path.basename(p) for p in paths] == [
    f"{i:02d}.png" for i in range(7)
  ]
  with pytest.raises(
    ValueError, match="skip_bad=True needs a single JAX process"
  ):
    embedding._process_share(embedding.as_source(images, cfg), True)


# ------------------------------------------------------------ image modes
def _folder_read(tmp_path, name, image, **save):
  folder = tmp_path / name
  folder.mkdir()
  image.save(folder / "a.png" if not save else folder / "a.tif", **save)
  src = embedding.FolderSource(
    str(folder), pp.PreprocessConfig(image_size=8), False
  )
  images, skipped = src.load(0, 1)
  assert not skipped
  return images[0]


def test_image_modes_read_at_their_real_intensity(tmp_path):
  """Every mode against its 8-bit rendering (the old reader clipped 16-bit)."""
  rng = np.random.default_rng(0)
  grey = rng.integers(0, 256, (8, 8)).astype(np.uint8)
  rgb = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
  want_grey = np.repeat(grey[..., None], 3, -1)
  # 16-bit greyscale PNG: v * 257 is the 16-bit rendering of v.
  sixteen = Image.fromarray(grey.astype(np.uint16) * 257)
  assert sixteen.mode.startswith("I")
  np.testing.assert_array_equal(
    _folder_read(tmp_path, "i16", sixteen), want_grey
  )
  # Mode "I" (32-bit integers holding 16-bit values) and "F" (0..1 floats).
  as_i = Image.fromarray(grey.astype(np.int32) * 257, "I")
  np.testing.assert_array_equal(
    np.asarray(pp.pil_to_rgb(as_i).convert("RGB")), want_grey
  )
  as_f = Image.fromarray(grey.astype(np.float32) / 255, "F")
  np.testing.assert_array_equal(
    np.asarray(pp.pil_to_rgb(as_f).convert("RGB")), want_grey
  )
  # Palette, LA and RGBA (alpha dropped), CMYK: PIL's 8-bit rendering.
  pal = Image.fromarray(rgb).quantize(16)
  np.testing.assert_array_equal(
    _folder_read(tmp_path, "p", pal), np.asarray(pal.convert("RGB"))
  )
  la = Image.merge("LA", [Image.fromarray(grey), Image.fromarray(grey[::-1])])
  np.testing.assert_array_equal(_folder_read(tmp_path, "la", la), want_grey)
  cmyk = Image.fromarray(rgb).convert("CMYK")
  np.testing.assert_array_equal(
    np.asarray(pp.pil_to_rgb(cmyk)), np.asarray(cmyk.convert("RGB"))
  )
  # What has no honest 8-bit reading is refused by name.
  with pytest.raises(ValueError, match="x.tif.*mode F.*0, 1"):
    pp.pil_to_rgb(Image.fromarray(grey.astype(np.float32), "F"), "x.tif")
  with pytest.raises(ValueError, match="x.tif.*16-bit range"):
    pp.pil_to_rgb(Image.fromarray(np.full((2, 2), 70000, np.int32)), "x.tif")
  with pytest.raises(ValueError, match="x.tif.*unsupported image mode 'HSV'"):
    pp.pil_to_rgb(Image.fromarray(rgb).convert("HSV"), "x.tif")
