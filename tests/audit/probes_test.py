"""Probes against PIL references and the relations they are meant to have."""

import collections
import fractions
import io

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


# ------------------------------------------------------------ post-processing
def _pil_jpeg(img, quality):
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="JPEG", quality=quality)
  return np.asarray(Image.open(io.BytesIO(buf.getvalue())))


# JPEG standard (ITU-T T.81) Annex K, table K.1: the luminance quantisation
# table, natural order; libjpeg scales it by quality q with
# s = 5000 / q (q < 50) or 200 - 2 q, entries (t s + 50) // 100 in 1..255.
_ANNEX_K1 = np.array(
  [
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99],
  ]
)


@pytest.mark.parametrize("shape", [(5, 28, 28), (3, 32, 32, 3), (2, 16, 16, 1)])
@pytest.mark.parametrize("quality", [75, 50])
def test_jpeg_equals_pil_round_trip(rng, shape, quality):
  x = rng.integers(0, 256, size=shape).astype(np.uint8)
  out = probes.jpeg(x, quality)
  assert out.shape == x.shape and out.dtype == np.uint8
  squeeze = x[..., 0] if x.shape[-1] == 1 else x
  want = np.stack([_pil_jpeg(i, quality) for i in squeeze]).reshape(shape)
  np.testing.assert_array_equal(out, want)
  assert not np.array_equal(out, x)  # lossy on noise


@pytest.mark.parametrize("quality", [90, 75, 50, 20])
def test_jpeg_uses_the_standard_tables(rng, quality):
  x = rng.integers(0, 256, size=(16, 16)).astype(np.uint8)
  table = Image.open(io.BytesIO(probes.encode_jpeg(x, quality))).quantization
  s = 5000 // quality if quality < 50 else 200 - 2 * quality
  want = np.clip((_ANNEX_K1 * s + 50) // 100, 1, 255)
  np.testing.assert_array_equal(np.reshape(table[0], (8, 8)), want)


def test_jpeg_error_grows_as_quality_drops(images):
  smooth = np.kron(images, np.ones((1, 4, 4), np.uint8))  # 32x32
  err = [
    np.abs(probes.jpeg(smooth, q).astype(int) - smooth).mean()
    for q in (95, 75, 50, 10)
  ]
  assert err == sorted(err) and err[0] < err[-1] / 3
  with pytest.raises(ValueError, match="quality"):
    probes.jpeg(smooth, 0)


def _tent_half_and_back(img):
  """Independent NumPy model of PIL's bilinear 2x shrink (tent filter of
  half-width 2 input pixels: weights 1/8, 3/8, 3/8, 1/8, renormalised at the
  edges) and 2x enlargement (half-pixel centres, clamped edges), float."""

  def shrink_matrix(n):
    m = np.zeros((n // 2, n))
    for i in range(n // 2):
      for x, w in zip(range(2 * i - 1, 2 * i + 3), (1, 3, 3, 1)):
        if 0 <= x < n:
          m[i, x] = w
    return m / m.sum(1, keepdims=True)

  def grow_matrix(n):
    m = np.zeros((n, n // 2))
    pos = np.clip((np.arange(n) + 0.5) / 2 - 0.5, 0, n // 2 - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n // 2 - 1)
    np.add.at(m, (np.arange(n), lo), 1 - (pos - lo))
    np.add.at(m, (np.arange(n), hi), pos - lo)
    return m

  h, w = img.shape[:2]
  small = np.einsum(
    "ih,jw,hw...->ij...", shrink_matrix(h), shrink_matrix(w), img
  )
  small = np.clip(np.rint(small), 0, 255)
  return np.einsum("hi,wj,ij...->hw...", grow_matrix(h), grow_matrix(w), small)


@pytest.mark.parametrize("shape", [(4, 28, 28), (3, 32, 32, 3), (2, 8, 8, 1)])
def test_downscale_half_equals_pil(rng, shape):
  x = rng.integers(0, 256, size=shape).astype(np.uint8)
  out = probes.downscale_half(x)
  assert out.shape == x.shape and out.dtype == np.uint8
  h, w = shape[1], shape[2]
  squeeze = x[..., 0] if x.shape[-1] == 1 else x
  want = np.stack(
    [
      np.asarray(
        Image.fromarray(i)
        .resize((w // 2, h // 2), Image.BILINEAR)
        .resize((w, h), Image.BILINEAR)
      )
      for i in squeeze
    ]
  ).reshape(shape)
  np.testing.assert_array_equal(out, want)
  # ... and agrees with the filter written out in NumPy (PIL rounds in
  # fixed point between the passes: a couple of levels).
  model = np.stack([_tent_half_and_back(i.astype(float)) for i in x])
  assert np.abs(out - model).max() <= 2


def _channel_hist(x, c=0, width=1):
  """Normalised histogram of channel c in bins of ``width`` levels."""
  x = np.asarray(x).reshape(np.shape(x)[:3] + (-1,))
  v = x[..., c].ravel() // width
  return np.bincount(v, minlength=256 // width) / v.size


def test_match_histograms_follows_the_reference(rng):
  # Dark, low-contrast sources matched to bright, wide references.
  x = rng.normal(60, 10, size=(6, 28, 28, 3)).clip(0, 255).astype(np.uint8)
  ref = rng.beta(2, 1, size=(40, 28, 28, 3)) * 255
  ref = ref.astype(np.uint8)
  out = probes.match_histograms(x, ref)
  assert out.shape == x.shape and out.dtype == np.uint8
  for c in range(3):
    # Each image's histogram (16-level bins) lands on the reference's.
    coarse = _channel_hist(ref, c, 16)
    for i in range(len(x)):
      before = np.abs(_channel_hist(x[i : i + 1], c, 16) - coarse).sum()
      after = np.abs(_channel_hist(out[i : i + 1], c, 16) - coarse).sum()
      assert before > 1.5 and after < 0.2, (before, after)
    target = _channel_hist(ref, c)
    # Cumulative histograms agree to within the source's largest bin.
    cdf_gap = np.abs(np.cumsum(_channel_hist(out, c)) - np.cumsum(target)).max()
    assert cdf_gap < 0.06
    # Monotone per pixel value: a brighter source pixel never ends darker.
    for i in range(len(x)):
      v, o = x[i, ..., c].ravel(), out[i, ..., c].ravel()
      order = np.lexsort((o, v))
      assert np.all(np.diff(o[order].astype(int)) >= 0)
      # One source value, one output value.
      for val in np.unique(v)[:10]:
        assert len(np.unique(o[v == val])) == 1


def _brute_force_match(src, ref):
  """Histogram matching of one channel, pixel by pixel in exact rationals.

  A source value v sits at F = #{src <= v} / |src|; it goes to the reference
  quantile at F, read off the reference's CDF G over its distinct levels
  r_0 < r_1 < ... by linear interpolation between the two levels whose G
  brackets F (r_0 when F <= G(r_0)), rounded half to even. Returns the
  exact targets (Fractions) and the rounded uint8 image.
  """
  src, ref = src.ravel().tolist(), sorted(ref.ravel().tolist())
  levels = sorted(set(ref))
  g = [fractions.Fraction(sum(r <= lv for r in ref), len(ref)) for lv in levels]
  exact = []
  for v in src:
    f = fractions.Fraction(sum(s <= v for s in src), len(src))
    if f <= g[0]:
      exact.append(fractions.Fraction(levels[0]))
      continue
    j = next(i for i in range(1, len(g)) if g[i - 1] < f <= g[i])
    t = (f - g[j - 1]) / (g[j] - g[j - 1])
    exact.append(levels[j - 1] + t * (levels[j] - levels[j - 1]))
  return exact, np.array([round(e) for e in exact])


@pytest.mark.parametrize("channels", [None, 3])
def test_match_histograms_equals_brute_force_quantile_mapping(rng, channels):
  shape = (3, 9, 7) if channels is None else (2, 6, 5, channels)
  x = rng.integers(20, 90, size=shape).astype(np.uint8)
  ref = rng.beta(2, 5, size=(4, 6, 6) + shape[3:]) * 255
  ref = ref.astype(np.uint8)
  out = probes.match_histograms(x, ref)
  pooled = probes.match_histograms(x, ref, per_image=False)
  xc = x.reshape(x.shape[:3] + (-1,))
  rc = ref.reshape(ref.shape[:3] + (-1,))
  oc = out.reshape(xc.shape)
  pc = pooled.reshape(xc.shape)
  for c in range(xc.shape[-1]):
    groups = [(xc[i : i + 1], oc[i : i + 1]) for i in range(len(x))]
    for src, got in groups + [(xc, pc)]:
      exact, want = _brute_force_match(src[..., c], rc[..., c])
      got = got[..., c].ravel().astype(int)
      # Equal, except that a target exactly halfway between two levels may
      # round either way in floating point.
      tie = np.array(
        [e - np.floor(e) == fractions.Fraction(1, 2) for e in exact]
      )
      np.testing.assert_array_equal(got[~tie], want[~tie])
      assert np.all(np.abs(got[tie] - want[tie]) <= 1)


def test_match_histograms_exact_cases(rng):
  x = rng.integers(0, 128, size=(3, 16, 16)).astype(np.uint8)
  # Matching to itself is the identity; to a strictly increasing map of
  # itself, that map.
  np.testing.assert_array_equal(
    probes.match_histograms(x, x, per_image=False), x
  )
  f = (2 * x.astype(int) + 1).astype(np.uint8)
  np.testing.assert_array_equal(
    probes.match_histograms(x, f, per_image=False), f
  )
  for i in range(3):
    np.testing.assert_array_equal(
      probes.match_histograms(x[i : i + 1], x[i : i + 1]), x[i : i + 1]
    )
  # per_image: each image is matched on its own, so an image and a strictly
  # increasing map of it come out the same; pooled, they do not.
  pair = np.stack([x[0], (2 * x[0].astype(int) + 1).astype(np.uint8)])
  out = probes.match_histograms(pair, x[1:])
  np.testing.assert_array_equal(out[0], out[1])
  pooled = probes.match_histograms(pair, x[1:], per_image=False)
  assert not np.array_equal(pooled[0], pooled[1])
  with pytest.raises(ValueError, match="channels"):
    probes.match_histograms(np.zeros((1, 4, 4, 3), np.uint8), x)


def test_postprocess_names(images):
  ref = images[::-1]
  for name in probes.POSTPROCESS:
    out = probes.postprocess(name, images, reference=ref)
    assert out.shape == images.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(
    probes.postprocess("jpeg50", images), probes.jpeg(images, 50)
  )
  with pytest.raises(ValueError, match="reference"):
    probes.postprocess("histogram", images)
  with pytest.raises(ValueError, match="unknown"):
    probes.postprocess("blur", images)
