"""Probes against PIL references and the relations they are meant to have."""

import collections

import numpy as np
import pytest
from PIL import Image

from ctjax.audit import probes


@pytest.fixture
def images(rng):
  """Digit-like uint8 images [12, 8, 8]: a bright blob on black."""
  x = np.zeros((12, 8, 8))
  x[:, 2:6, 3:5] = rng.integers(100, 256, size=(12, 4, 2))
  x[:, 1:7, 1:7] += rng.integers(0, 60, size=(12, 6, 6))
  return np.clip(x, 0, 255).astype(np.uint8)


def _pil_rotate(img, angle):
  return np.asarray(Image.fromarray(img).rotate(angle, resample=Image.BILINEAR))


@pytest.mark.parametrize("side", [8, 28])
def test_rotate_matches_pil(rng, side):
  x = rng.integers(0, 256, size=(6, side, side)).astype(np.uint8)
  angles = np.array([0.0, 7.3, -23.0, 30.0, -30.0, 45.0])
  out = probes.rotate(x, angles)
  ref = np.stack([_pil_rotate(i, a) for i, a in zip(x, angles)])
  assert np.abs(out.astype(int) - ref).max() <= 1


def test_rotate_identity_and_quarter_turn(images):
  np.testing.assert_array_equal(probes.rotate(images, np.zeros(12)), images)
  # Counter-clockwise quarter turn == np.rot90 (exact on a square grid).
  np.testing.assert_array_equal(
    probes.rotate(images, np.full(12, 90.0)), np.rot90(images, 1, axes=(1, 2))
  )


def test_rotate_rgb_rotates_each_channel(rng):
  x = rng.integers(0, 256, size=(3, 8, 8, 3)).astype(np.uint8)
  out = probes.rotate(x, np.array([10.0, -20.0, 25.0]))
  for c in range(3):
    np.testing.assert_array_equal(
      out[..., c], probes.rotate(x[..., c], np.array([10.0, -20.0, 25.0]))
    )


def test_rotate_probe_angles_in_range(images):
  out, info = probes.make_probe(
    "rotate", images, images, 10, seed=3, return_info=True
  )
  assert np.all(np.abs(info["angles"]) <= 30)
  ref = probes.rotate(images[info["indices"]], info["angles"])
  np.testing.assert_array_equal(out, ref)


def test_noise_residual_std():
  rng = np.random.default_rng(1)
  mid = np.full((200, 16, 16), 128, np.uint8)  # far from 0 and 255
  out = probes.add_noise(mid, rng)
  resid = out.astype(float) - 128
  assert abs(resid.std() - 25.0) < 0.5 and abs(resid.mean()) < 0.3
  # Clipped at both ends.
  extremes = probes.add_noise(np.array([[[0, 255]]] * 500, np.uint8), rng)
  assert extremes.min() == 0 and extremes.max() == 255


def test_noise_probe_unclipped_pixels(images):
  out, info = probes.make_probe(
    "noise", images, images, 12, seed=0, return_info=True
  )
  src = images[info["indices"]].astype(float)
  resid = out.astype(float) - src
  inner = (out > 0) & (out < 255)
  assert 15 < resid[inner].std() < 30  # clipping trims the tails a little


@pytest.mark.parametrize("side,factor", [(8, 4), (28, 4), (32, 4), (12, 2)])
def test_downsample_matches_pil(rng, side, factor):
  x = rng.integers(0, 256, size=(4, side, side)).astype(np.uint8)
  out = probes.downsample(x, factor)
  small = side // factor
  ref = np.stack(
    [
      np.asarray(
        Image.fromarray(i.astype(np.float32), mode="F")
        .resize((small, small), Image.BOX)
        .resize((side, side), Image.BILINEAR)
      )
      for i in x
    ]
  )
  assert np.abs(out.astype(float) - ref).max() <= 0.51


def test_downsample_constant_blocks_are_fixed_points():
  x = np.kron(np.arange(4).reshape(2, 2) * 60, np.ones((4, 4)))
  const = np.full((1, 8, 8), 77, np.uint8)
  np.testing.assert_array_equal(probes.downsample(const), const)
  # Block means survive the down-sampling exactly.
  out = probes.downsample(x[None].astype(np.uint8)).astype(float)
  assert abs(out.mean() - x.mean()) < 1


def test_downsample_rejects_indivisible_side():
  with pytest.raises(ValueError, match="divisible"):
    probes.downsample(np.zeros((1, 10, 10), np.uint8))


def test_shuffle_preserves_blocks(images):
  out, info = probes.make_probe(
    "shuffle", images, images, 12, seed=5, return_info=True
  )
  src = images[info["indices"]]
  for o, s, perm in zip(out, src, info["permutations"]):
    blocks = lambda im: [
      im[r : r + 2, c : c + 2].tobytes()
      for r in range(0, 8, 2)
      for c in range(0, 8, 2)
    ]
    assert collections.Counter(blocks(o)) == collections.Counter(blocks(s))
    # Block k of the output is block perm[k] of the source.
    bs, bo = blocks(s), blocks(o)
    assert all(bo[k] == bs[p] for k, p in enumerate(perm))
  assert not all(np.array_equal(p, np.arange(16)) for p in info["permutations"])


def test_shuffle_identity_permutation(images):
  ident = np.tile(np.arange(16), (12, 1))
  np.testing.assert_array_equal(probes.shuffle_blocks(images, ident), images)


def test_segment_keeps_foreground_and_fills_noise():
  rng = np.random.default_rng(0)
  x = np.zeros((50, 8, 8), np.uint8)
  x[:, 3:5, 3:5] = 200
  out = probes.paste_on_noise(x, rng)
  np.testing.assert_array_equal(out[:, 3:5, 3:5], 200)
  bg = np.ones((8, 8), bool)
  bg[3:5, 3:5] = False
  vals = out[:, bg]
  assert abs(vals.mean() - 127.5) < 5 and vals.min() < 10 and vals.max() > 245


def test_copy_and_test_probes(images, rng):
  test = rng.integers(0, 256, size=(7, 8, 8)).astype(np.uint8)
  out, info = probes.make_probe(
    "copy", images, test, 5, seed=1, return_info=True
  )
  np.testing.assert_array_equal(out, images[info["indices"]])
  assert len(set(info["indices"].tolist())) == 5  # without replacement
  out, info = probes.make_probe(
    "test", images, test, 7, seed=1, return_info=True
  )
  np.testing.assert_array_equal(out, test[info["indices"]])
  assert sorted(info["indices"].tolist()) == list(range(7))


@pytest.mark.parametrize("name", probes.PROBES)
def test_every_probe_shape_dtype_and_seed(images, name):
  a = probes.make_probe(name, images, images[:6], 9, seed=2)
  b = probes.make_probe(name, images, images[:6], 9, seed=2)
  c = probes.make_probe(name, images, images[:6], 9, seed=3)
  assert a.shape == (9, 8, 8) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_unknown_probe(images):
  with pytest.raises(ValueError, match="blur"):
    probes.make_probe("blur", images, images, 3, 0)
