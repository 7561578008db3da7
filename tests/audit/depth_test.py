"""C_T against depth across encoder families (ctjax.audit.depth)."""

import math
import os

import numpy as np
import pytest

import ctjax.models as cm
from ctjax.audit import datasets as ds
from ctjax.audit import depth
from ctjax.audit import encoder_training as et
from ctjax.audit import probes


def _ranks(x):
  """Average ranks (ties share their mean rank), by brute force."""
  x = np.asarray(x, np.float64)
  return np.array([(x < v).sum() + ((x == v).sum() + 1) / 2 for v in x])


def _spearman(x, y):
  rx, ry = _ranks(x), _ranks(y)
  rx, ry = rx - rx.mean(), ry - ry.mean()
  return float((rx * ry).sum() / np.sqrt((rx**2).sum() * (ry**2).sum()))


def test_verdicts_on_curves_known_by_construction(rng):
  d = depth.relative_depth(7)
  np.testing.assert_allclose(d, np.arange(7) / 6)
  rising = np.array([-30.0, -25, -18, -12, -6, -2, 1])
  falling = rising[::-1].copy()
  flat = rng.normal(0, 0.4, 7)
  zigzag = np.array([-10.0, 10, -10, 10, -10, 10, -10])
  t = depth.trend_verdict(rising, d)
  assert t.verdict == "rises" and t.rho == 1.0 and t.rise == 31.0
  assert t.n_layers == 7
  t = depth.trend_verdict(falling, d)
  assert t.verdict == "falls" and t.rho == -1.0 and t.rise == -31.0
  assert depth.trend_verdict(flat, d).verdict == "flat"
  assert depth.trend_verdict(zigzag, d).verdict == "mixed"
  # Monotone but small: flat, not a trend.
  assert depth.trend_verdict(np.linspace(0, 1.5, 7), d).verdict == "flat"
  # Noisy rise: rho against a brute-force Spearman (ties included).
  noisy = np.array([-9.0, -9, -4, -6, -1, 2, 2])
  t = depth.trend_verdict(noisy, d)
  assert t.rho == pytest.approx(_spearman(d, noisy), abs=1e-12)
  assert t.verdict == "rises"
  # A layer without a value (the ViT's constant CLS at layer 0) is skipped.
  with_nan = np.concatenate([[np.nan], rising[1:]])
  t = depth.trend_verdict(with_nan, d)
  assert t.n_layers == 6 and t.rise == rising[-1] - rising[1]
  t = depth.trend_verdict([np.nan, 1.0, 2.0, np.nan])
  assert t.verdict == "undefined" and math.isnan(t.rho)
  assert depth.trend_verdict([3.0, 3.0, 3.0]).verdict == "flat"


def test_verdict_rejects_bad_input():
  with pytest.raises(ValueError, match="one curve"):
    depth.trend_verdict(np.zeros((2, 3)))
  with pytest.raises(ValueError, match="depth has shape"):
    depth.trend_verdict(np.zeros(3), np.arange(4))
  with pytest.raises(ValueError, match="increase"):
    depth.trend_verdict(np.zeros(3), [0.0, 0.5, 0.5])


def test_family_sentence_is_honest():
  t = lambda v, rise=0.0: depth.Trend(v, 0.0, rise, 5)  # noqa: E731
  trends = {p: t("rises", 5.0) for p in depth.MEMORISATION_PROBES}
  trends["test"] = t("flat")
  s = depth._family_summary("ViT", trends)
  assert "for all 6 memorisation probes" in s and "null probe" in s
  trends.update(copy=t("falls", -4), noise=t("mixed"), rotate=t("falls"))
  s = depth._family_summary("ResNet", trends)
  assert "3 of 6" in s and "falls for rotate, copy" in s
  assert "is mixed for noise" in s
  trends = {p: t("flat") for p in depth.MEMORISATION_PROBES}
  s = depth._family_summary("Swin", trends)
  assert "does not hold" in s


@pytest.fixture(scope="module")
def digits_split():
  data = ds.load("digits")
  rng = np.random.default_rng(0)
  perm = rng.permutation(len(data.test_images))
  return (
    data.train_images[:300],
    data.test_images[perm[100:300]],
    data.test_images[perm[:100]],
  )


@pytest.fixture(scope="module")
def tiny_encoders():
  """Random ViT, ResNet and Swin of one width (16) at the digits' 16 px: the
  ViT and the ResNet share the reference's compiled shapes, so the test is
  fast; the shipped encoders' loading is tested in encoder_training_test."""
  return {
    "vit": cm.from_config(et._vit(16, 4, 16, 2, 2, 32), seed=1),
    "resnet": cm.from_config(et._resnet(16, 16, (16, 16), (1, 1)), seed=1),
    "swin": cm.from_config(et._swin(16, 4, 2, 16, (2,), (2,)), seed=1),
  }


def test_compare_families_end_to_end_on_a_digits_subset(
  digits_split, tiny_encoders, tmp_path
):
  train, test, fresh = digits_split
  lines = []
  res = depth.compare_families(
    "digits",
    train,
    test,
    fresh,
    probe_size=100,
    n_cells=3,
    seed=0,
    out=str(tmp_path),
    samples={"train copies": [train[:100], train[100:200]]},
    echo=lines.append,
    encoders=tiny_encoders,
    progress=False,
  )
  assert os.path.getsize(res["plot"]) > 10_000
  fams = res["results"]["families"]
  assert list(fams) == list(depth.FAMILIES)
  for f, r in fams.items():
    enc = tiny_encoders[f]
    n = enc.num_hidden_states
    assert len(r["layers"]) == len(r["depth"]) == n
    assert r["widths"] == list(enc.widths)
    assert r["encoder"] == enc.identity and r["test_accuracy"] is None
    assert r["pool"] == ("cls" if f == "vit" else "mean")
    assert set(r["curves"]) == set(probes.PROBES) | {"train copies"}
    for name, c in r["curves"].items():
      assert len(c) == n
      want = depth.trend_verdict(c, r["depth"]).to_dict()
      assert r["trends"][name]["verdict"] == want["verdict"], (f, name)
    # Exact copies of training images are memorised wherever C_T has a
    # value, whatever the encoder.
    copy = np.asarray(r["curves"]["copy"])
    assert np.isfinite(copy).any() and np.nanmax(copy) < 0, (f, copy)
    # Two runs of copies: the curve is their mean.
    runs = np.asarray(r["sample_runs"]["train copies"])
    assert runs.shape == (2, n)
    np.testing.assert_allclose(
      r["curves"]["train copies"], np.nanmean(runs, 0), equal_nan=True
    )
    assert r["summary"].startswith(f"**{depth.FAMILY_NAMES[f]}**")
    assert r["summary"] in res["markdown"]
  md = res["markdown"]
  assert md.startswith("## C_T against depth")
  assert depth.RULE_TEXT in md and "depth.png" in md
  assert "| copy |" in md and "| train copies |" in md
  assert any("[depth] swin" in line for line in lines)


def test_compare_families_rejects_bad_arguments(digits_split):
  train, test, fresh = digits_split
  kw = dict(probe_size=10, n_cells=3, echo=lambda _: None)
  with pytest.raises(ValueError, match="unknown families"):
    depth.compare_families(
      "digits", train, test, fresh, families=("convnext",), **kw
    )
  with pytest.raises(ValueError, match="clash"):
    depth.compare_families(
      "digits", train, test, fresh, samples={"copy": train[:5]}, **kw
    )
  with pytest.raises(ValueError, match="uint8"):
    depth.compare_families(
      "digits",
      train,
      test,
      fresh,
      samples={"g": train[:5].astype(np.float32)},
      **kw,
    )
