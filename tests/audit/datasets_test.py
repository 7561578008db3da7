"""Tests for ctjax.audit.datasets against scikit-learn's arrays and the IDX spec."""

import gzip
import os

import numpy as np
import pytest
from sklearn import datasets as skd

from ctjax.audit import datasets


def _write_idx(path, arr, code=0x08):
  """Writes an IDX file by the published layout (independent of read_idx)."""
  header = bytes([0, 0, code, arr.ndim])
  header += b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(header + arr.tobytes())


def test_digits_shapes_and_split():
  ds = datasets.load("digits")
  assert ds.name == "digits" and ds.num_classes == 10
  assert ds.train_images.shape == (1200, 8, 8)
  assert ds.test_images.shape == (597, 8, 8)
  assert ds.train_images.dtype == np.uint8
  assert ds.train_labels.shape == (1200,) and ds.test_labels.shape == (597,)
  # Stratified: every class in both splits, in proportion.
  full = np.bincount(skd.load_digits().target, minlength=10)
  tr = np.bincount(ds.train_labels, minlength=10)
  assert np.all(np.abs(tr - full * 1200 / 1797) <= 1)
  # Values scaled 0..16 -> 0..255.
  assert ds.train_images.max() == 255 and ds.train_images.min() == 0


def test_digits_match_sklearn_arrays():
  ds = datasets.load("digits")
  bunch = skd.load_digits()
  ref = np.round(bunch.images * 255 / 16).astype(np.uint8)
  # Every split image is one of sklearn's, with its label, and the union is
  # exactly sklearn's set (as a multiset).
  both = np.concatenate([ds.train_images, ds.test_images]).reshape(1797, -1)
  labels = np.concatenate([ds.train_labels, ds.test_labels])
  key = lambda x, y: sorted(zip(map(bytes, x), y.tolist()))
  assert key(both, labels) == key(ref.reshape(1797, -1), bunch.target)


def test_digits_split_is_fixed():
  a, b = datasets.load("digits"), datasets.load("digits")
  np.testing.assert_array_equal(a.train_images, b.train_images)
  np.testing.assert_array_equal(a.test_labels, b.test_labels)


@pytest.mark.parametrize(
  "code,dtype", [(0x08, np.uint8), (0x0C, ">i4"), (0x0D, ">f4")]
)
@pytest.mark.parametrize("suffix", [".gz", ""])
def test_read_idx_round_trip(tmp_path, rng, code, dtype, suffix):
  arr = (rng.integers(0, 200, size=(5, 3, 4))).astype(dtype)
  path = os.fspath(tmp_path / ("x.idx" + suffix))
  _write_idx(path, arr, code)
  out = datasets.read_idx(path)
  assert out.shape == (5, 3, 4)
  np.testing.assert_array_equal(
    out, arr.astype(np.dtype(dtype).newbyteorder("="))
  )


def test_read_idx_rejects_bad_files(tmp_path):
  bad = tmp_path / "bad.idx"
  bad.write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x02ab")
  with pytest.raises(ValueError, match="magic"):
    datasets.read_idx(os.fspath(bad))
  short = tmp_path / "short.idx"
  short.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05ab")
  with pytest.raises(ValueError, match="short.idx"):
    datasets.read_idx(os.fspath(short))


def _fake_fashion(folder, rng, n_train=7, n_test=3):
  files = {
    "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)),
    "train-labels-idx1-ubyte.gz": rng.integers(0, 10, (n_train,)),
    "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28)),
    "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, (n_test,)),
  }
  for name, arr in files.items():
    _write_idx(os.path.join(folder, name), arr.astype(np.uint8))
  return files


def test_fashion_mnist_from_given_root(tmp_path, rng):
  files = _fake_fashion(os.fspath(tmp_path), rng)
  ds = datasets.load("fashion_mnist", root=tmp_path)
  assert (
    ds.train_images.shape == (7, 28, 28) and ds.test_images.dtype == np.uint8
  )
  np.testing.assert_array_equal(
    ds.train_images, files["train-images-idx3-ubyte.gz"]
  )
  np.testing.assert_array_equal(
    ds.test_labels, files["t10k-labels-idx1-ubyte.gz"]
  )


def test_fashion_mnist_env_var(tmp_path, rng, monkeypatch):
  _fake_fashion(os.fspath(tmp_path), rng, n_train=4)
  monkeypatch.setenv(datasets.FASHION_MNIST_ENV, os.fspath(tmp_path))
  assert datasets.load("fashion_mnist").train_images.shape == (4, 28, 28)


def test_fashion_mnist_missing_says_how_to_install(tmp_path):
  with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist"):
    datasets.load("fashion_mnist", root=tmp_path)


def test_unknown_name():
  with pytest.raises(ValueError, match="cifar"):
    datasets.load("cifar")


@pytest.mark.skipif(
  not os.path.exists(
    os.path.join(
      datasets.FASHION_MNIST_DEFAULT_ROOT, "train-labels-idx1-ubyte.gz"
    )
  ),
  reason="dataset-fashion-mnist not installed",
)
def test_real_fashion_mnist_published_facts():
  ds = datasets.load("fashion_mnist", root=datasets.FASHION_MNIST_DEFAULT_ROOT)
  assert ds.train_images.shape == (60000, 28, 28)
  assert ds.test_images.shape == (10000, 28, 28)
  # Balanced classes: 6,000 train and 1,000 test images per class.
  np.testing.assert_array_equal(np.bincount(ds.train_labels), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(ds.test_labels), [1000] * 10)
  # First training labels: ankle boot, T-shirt, T-shirt, dress, T-shirt, ...
  np.testing.assert_array_equal(
    ds.train_labels[:10], [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
  )
