"""On-device preprocessing against the same pipeline in PIL + NumPy."""

import numpy as np
import pytest
from PIL import Image

from ctjax import preprocess as pp

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def pil_reference(image: np.ndarray, size: int) -> np.ndarray:
  """torchvision's Resize(int(256/224*S)) + CenterCrop(S) + ToTensor, written with PIL."""
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  w, h = pil.size
  short = int(256 / 224 * size)
  nw, nh = (
    (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
  )
  pil = pil.resize((nw, nh), Image.BILINEAR)
  top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
  out = (
    np.asarray(pil.crop((left, top, left + size, top + size)), np.float32)
    / 255.0
  )
  if out.ndim == 2:
    out = np.repeat(out[..., None], 3, axis=-1)
  return out


@pytest.mark.parametrize(
  "hw,channels,size",
  [
    ((32, 32), 3, 32),  # CIFAR-10 at S=32: upsample to 36, crop 32
    ((32, 32), 3, 224),  # CIFAR-10 at the paper's S=224
    ((28, 28), 1, 56),  # grayscale (Fashion-MNIST-like)
    ((40, 30), 3, 24),  # non-square, shrinking (antialiased)
    ((120, 200), 1, 48),  # strong shrink of a wide grayscale image
  ],
)
def test_matches_pil_within_2_over_255(rng, hw, channels, size):
  images = rng.integers(0, 256, size=(3, *hw, channels), dtype=np.uint8)
  images[0] = np.linspace(0, 255, hw[1], dtype=np.uint8)[
    None, :, None
  ]  # smooth ramp
  config = pp.PreprocessConfig(size, MEAN, STD)
  got = np.asarray(pp.preprocess(images, config))
  assert got.shape == (3, size, size, 3) and got.dtype == np.float32
  want = np.stack([pil_reference(im, size) for im in images])
  want = (want - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
  # 2/255 before normalisation == 2/255/std after it.
  err = np.abs(got - want) * np.array(STD, np.float32)
  assert err.max() <= 2 / 255, err.max()
  assert err.mean() < 0.5 / 255


def test_float_input_and_gray_without_channel_axis(rng):
  images = rng.integers(0, 256, size=(2, 20, 20), dtype=np.uint8)
  config = pp.PreprocessConfig(16)
  from_uint8 = pp.preprocess(images, config)
  from_float = pp.preprocess(images.astype(np.float32) / 255.0, config)
  np.testing.assert_allclose(from_float, from_uint8, atol=1e-6)
  np.testing.assert_allclose(from_uint8[..., 0], from_uint8[..., 2], atol=1e-6)


def test_host_resize_crop_matches_reference(rng):
  image = rng.integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
  config = pp.PreprocessConfig(32)
  got = pp.host_resize_crop(Image.fromarray(image), config)
  np.testing.assert_allclose(got / 255.0, pil_reference(image, 32), atol=1e-7)
  np.testing.assert_allclose(
    pp.preprocess(got[None], config, resize=False),
    pp.preprocess(image[None], config),
    atol=2 / 255 / 0.5,
  )


def test_bad_inputs():
  config = pp.PreprocessConfig(16)
  with pytest.raises(ValueError, match="4 channels"):
    pp.preprocess(np.zeros((1, 16, 16, 4), np.uint8), config)
  with pytest.raises(ValueError, match="dtype int64"):
    pp.preprocess(np.zeros((1, 16, 16, 3), np.int64), config)
  with pytest.raises(ValueError, match="shape"):
    pp.preprocess(np.zeros((16, 16), np.uint8), config)
