"""Image data sets for the built-in demo: scikit-learn digits and Fashion-MNIST.

Every loader returns a :class:`Dataset` of uint8 images on 0..255 with a fixed
train/test split, so C_T references, generators and probes all see the same
pixels on every machine.
"""

import dataclasses
import gzip
import os

import numpy as np

FASHION_MNIST_ENV = "CTJAX_FASHION_MNIST"
FASHION_MNIST_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
_FASHION_FILES = {
  "train_images": "train-images-idx3-ubyte.gz",
  "train_labels": "train-labels-idx1-ubyte.gz",
  "test_images": "t10k-images-idx3-ubyte.gz",
  "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# IDX type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {
  0x08: np.uint8,
  0x09: np.int8,
  0x0B: ">i2",
  0x0C: ">i4",
  0x0D: ">f4",
  0x0E: ">f8",
}

DIGITS_TEST_SIZE = 597  # 1,797 images -> 1,200 train / 597 test.
DIGITS_SPLIT_SEED = 0


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A labelled image data set with a fixed train/test split.

  Attributes:
    name: data set name ("digits", "fashion_mnist").
    train_images: uint8 ``[N, H, W]`` (or ``[N, H, W, C]``) on 0..255.
    train_labels: int64 ``[N]`` class indices.
    test_images: uint8 ``[n, H, W]`` (or ``[n, H, W, C]``).
    test_labels: int64 ``[n]``.
    num_classes: number of classes.
  """

  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int

  @property
  def image_shape(self):
    return tuple(self.train_images.shape[1:])


def read_idx(path):
  """Reads one IDX file (optionally gzip-compressed) into a NumPy array.

  Args:
    path: a ``.gz`` or plain IDX file.

  Returns:
    The array with the shape and dtype the IDX header declares.
  """
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise ValueError(f"{path}: not an IDX file (bad magic number).")
  code, ndim = data[2], data[3]
  if code not in _IDX_DTYPES:
    raise ValueError(f"{path}: unknown IDX data type code 0x{code:02x}.")
  header = 4 + 4 * ndim
  if len(data) < header:
    raise ValueError(f"{path}: truncated IDX header.")
  shape = tuple(int(s) for s in np.frombuffer(data, ">u4", ndim, offset=4))
  dtype = np.dtype(_IDX_DTYPES[code])
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(data) - header != expected:
    raise ValueError(
      f"{path}: header says shape {shape} ({expected} bytes) but the file "
      f"holds {len(data) - header} bytes of data."
    )
  arr = np.frombuffer(data, dtype, offset=header).reshape(shape)
  return arr.astype(dtype.newbyteorder("="))


def load_digits():
  """scikit-learn's 8x8 digits, 0..16 scaled to 0..255, stratified split."""
  from sklearn import datasets as skd
  from sklearn.model_selection import train_test_split

  bunch = skd.load_digits()
  images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
  labels = bunch.target.astype(np.int64)
  tr_x, te_x, tr_y, te_y = train_test_split(
    images,
    labels,
    test_size=DIGITS_TEST_SIZE,
    stratify=labels,
    random_state=DIGITS_SPLIT_SEED,
  )
  return Dataset("digits", tr_x, tr_y, te_x, te_y, 10)


def _fashion_root(root):
  if root is not None:
    return os.fspath(root)
  return os.environ.get(FASHION_MNIST_ENV, FASHION_MNIST_DEFAULT_ROOT)


def load_fashion_mnist(root=None):
  """Fashion-MNIST from its four IDX ``.gz`` files (60,000 / 10,000, 28x28).

  Args:
    root: folder holding the files; default ``$CTJAX_FASHION_MNIST`` or
      ``/usr/share/datasets/fashion-mnist`` (Debian's dataset-fashion-mnist).
  """
  root = _fashion_root(root)
  missing = [
    f
    for f in _FASHION_FILES.values()
    if not os.path.exists(os.path.join(root, f))
  ]
  if missing:
    raise ValueError(
      f"Fashion-MNIST not found in {root!r} (missing {', '.join(missing)}). "
      "Install it with `apt-get install dataset-fashion-mnist` or pass "
      f"root=<folder with the IDX .gz files> (or set ${FASHION_MNIST_ENV})."
    )
  arrs = {k: read_idx(os.path.join(root, f)) for k, f in _FASHION_FILES.items()}
  for split in ("train", "test"):
    x, y = arrs[f"{split}_images"], arrs[f"{split}_labels"]
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
      raise ValueError(
        f"{root}: Fashion-MNIST {split} images {x.shape} and labels "
        f"{y.shape} do not match."
      )
  return Dataset(
    "fashion_mnist",
    arrs["train_images"].astype(np.uint8),
    arrs["train_labels"].astype(np.int64),
    arrs["test_images"].astype(np.uint8),
    arrs["test_labels"].astype(np.int64),
    10,
  )


DATASETS = ("digits", "fashion_mnist")


def load(name, root=None):
  """Loads a data set by name.

  Args:
    name: "digits" or "fashion_mnist".
    root: folder of the data files (Fashion-MNIST only; digits ship with
      scikit-learn).

  Returns:
    A :class:`Dataset`.
  """
  if name == "digits":
    return load_digits()
  if name == "fashion_mnist":
    return load_fashion_mnist(root)
  raise ValueError(f"Unknown data set {name!r}; expected one of {DATASETS}.")
