"""Tests for the family registry, presets and cached fit/sample."""

import dataclasses
import os

import numpy as np
import pytest

from ctjax.audit import generators
from ctjax.audit.generators import common, registry


def test_registry_has_the_issue_families():
  assert set(generators.FAMILIES) == {
    "kde",
    "gmm",
    "vae",
    "gan",
    "ddpm",
    "ddim",
  }
  assert generators.FAMILIES["ddim"].trainer == "ddpm"
  assert generators.FAMILIES["ddim"].train is generators.FAMILIES["ddpm"].train
  assert (
    generators.FAMILIES["ddim"].sample is not generators.FAMILIES["ddpm"].sample
  )
  assert generators.SEEDS == (0, 1, 2)


def test_hparams_presets_and_overrides():
  assert generators.hparams_for("vae", "digits") == common.hparams_dict(
    generators.FAMILIES["vae"].config()
  )
  fm = generators.hparams_for("ddpm", "fashion_mnist")
  assert fm["hidden"] > generators.hparams_for("ddpm", "digits")["hidden"]
  assert (
    generators.hparams_for("kde", "unknown_set", bandwidth=3.0)["bandwidth"]
    == 3.0
  )
  with pytest.raises(ValueError, match="nope"):
    generators.hparams_for("kde", "digits", nope=1)
  with pytest.raises(ValueError, match="biggan"):
    generators.get_family("biggan")


def test_fit_or_load_caches_and_reloads(tmp_path, tiny_images, monkeypatch):
  hp = {"bandwidth": 5.0}
  m1 = generators.fit_or_load("kde", "toy", tiny_images, 0, tmp_path, hp)
  files = list((tmp_path / "toy" / "kde").iterdir())
  assert len(files) == 1 and files[0].name.startswith("model-seed0-")

  def boom(*a, **k):
    raise AssertionError("trained again instead of loading the cache")

  monkeypatch.setitem(
    registry.FAMILIES,
    "kde",
    dataclasses.replace(registry.FAMILIES["kde"], train=boom),
  )
  m2 = generators.fit_or_load("kde", "toy", tiny_images, 0, tmp_path, hp)
  np.testing.assert_array_equal(m1.params["train"], m2.params["train"])
  assert m2.hparams == m1.hparams
  # Another seed, other hyperparameters or other data miss the cache.
  for args in [
    ("kde", "toy", tiny_images, 1, tmp_path, hp),
    ("kde", "toy", tiny_images, 0, tmp_path, {"bandwidth": 6.0}),
    ("kde", "toy", tiny_images[:-1], 0, tmp_path, hp),
  ]:
    with pytest.raises(AssertionError, match="trained again"):
      generators.fit_or_load(*args)


def test_samples_or_load(tmp_path, tiny_images, monkeypatch):
  s1 = generators.samples_or_load(
    "gmm",
    "toy",
    tiny_images,
    2,
    30,
    tmp_path,
    hparams={"n_components": 2, "n_pca": 3},
  )
  assert s1.shape == (30, 8, 8) and s1.dtype == np.uint8
  monkeypatch.setitem(
    registry.FAMILIES,
    "gmm",
    dataclasses.replace(registry.FAMILIES["gmm"], train=None, sample=None),
  )
  s2 = generators.samples_or_load(
    "gmm",
    "toy",
    tiny_images,
    2,
    30,
    tmp_path,
    hparams={"n_components": 2, "n_pca": 3},
  )
  np.testing.assert_array_equal(s1, s2)


def test_uncached_runs_are_seeded(tiny_images):
  a = generators.samples_or_load("kde", "toy", tiny_images, 0, 10)
  b = generators.samples_or_load("kde", "toy", tiny_images, 0, 10)
  c = generators.samples_or_load(
    "kde", "toy", tiny_images, 0, 10, sample_seed=7
  )
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_ddim_reuses_the_ddpm_network(tmp_path, tiny_images, monkeypatch):
  calls = []

  def fake_train(images, seed, progress=True, **hp):
    calls.append(seed)
    return common.GeneratorModel(
      "ddpm", images.shape[1:], seed, hp, {"w": np.ones(2)}
    )

  for name in ("ddpm", "ddim"):
    monkeypatch.setitem(
      registry.FAMILIES,
      name,
      dataclasses.replace(registry.FAMILIES[name], train=fake_train),
    )
  generators.fit_or_load("ddpm", "toy", tiny_images, 0, tmp_path)
  model = generators.fit_or_load("ddim", "toy", tiny_images, 0, tmp_path)
  assert calls == [0] and model.family == "ddpm"
  assert os.listdir(tmp_path / "toy") == ["ddpm"]


def test_samples_for_all_reports_times(tmp_path, tiny_images):
  samples, seconds = generators.samples_for_all(
    "toy",
    tiny_images,
    12,
    seeds=(0, 1),
    families=("kde",),
    cache_dir=tmp_path,
    progress=False,
  )
  assert [s.shape for s in samples["kde"]] == [(12, 8, 8)] * 2
  assert seconds["kde"] >= 0
