"""Tests for the atomic npz cache of models and samples."""

import os

import numpy as np
import pytest

from ctjax.audit.generators import cache, common


def _model():
  return common.GeneratorModel(
    "vae",
    (8, 8),
    3,
    {"hidden": 4, "channels": [1, 2], "name": "x"},
    {
      "['enc']['kernel'].value": np.arange(6, dtype=np.float32).reshape(2, 3),
      "train": np.arange(4, dtype=np.uint8),
    },
  )


def test_model_round_trip(tmp_path):
  path = os.fspath(tmp_path / "a" / "m.npz")
  cache.save_model(path, _model())
  back = cache.load_model(path)
  assert back.family == "vae" and back.image_shape == (8, 8) and back.seed == 3
  assert back.hparams == {"hidden": 4, "channels": [1, 2], "name": "x"}
  for k, v in _model().params.items():
    np.testing.assert_array_equal(back.params[k], v)
    assert back.params[k].dtype == v.dtype
  assert os.listdir(tmp_path / "a") == ["m.npz"]  # no temporary left behind


def test_samples_round_trip(tmp_path, rng):
  x = rng.integers(0, 256, size=(5, 4, 4)).astype(np.uint8)
  path = os.fspath(tmp_path / "s.npz")
  cache.save_samples(path, x, {"family": "gan", "seed": 1})
  y, meta = cache.load_samples(path)
  np.testing.assert_array_equal(x, y)
  assert meta == {"family": "gan", "seed": 1}


def test_failed_write_leaves_old_file_intact(tmp_path):
  path = os.fspath(tmp_path / "m.npz")
  cache.save_model(path, _model())

  class Boom:
    def __array__(self, *a, **k):
      raise RuntimeError("disk full")

  with pytest.raises(RuntimeError, match="disk full"):
    cache.save_npz_atomic(path, {"x": Boom()})
  assert cache.load_model(path).seed == 3
  assert os.listdir(tmp_path) == ["m.npz"]


def test_corrupt_file_names_the_path(tmp_path):
  path = tmp_path / "bad.npz"
  path.write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="bad.npz"):
    cache.load_model(os.fspath(path))
  np.savez(tmp_path / "nometa.npz", x=np.zeros(2))
  with pytest.raises(ValueError, match="__meta__"):
    cache.load_model(os.fspath(tmp_path / "nometa.npz"))
