"""Disk cache of trained generators and their samples (atomic ``.npz`` files).

Files are written to a temporary name in the target folder and moved into
place with ``os.replace``, so a crash or a concurrent reader never sees a
half-written file. Metadata travels as a JSON string inside the archive, so
loading never unpickles anything.
"""

import json
import zipfile

import numpy as np

from ctjax.storage import atomic_write

from ctjax.audit.generators.common import GeneratorModel

_META = "__meta__"
_PARAM = "param:"


def save_npz_atomic(path, arrays):
  """Writes ``arrays`` (name -> array) to ``path`` atomically."""
  atomic_write(path, lambda f: np.savez(f, **arrays))


def _load_npz(path):
  try:
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
    raise ValueError(f"{path}: unreadable cache file ({e}).") from e
  if _META not in arrays:
    raise ValueError(f"{path}: cache file has no {_META} entry.")
  return json.loads(str(arrays.pop(_META))), arrays


def save_model(path, model):
  """Saves a :class:`GeneratorModel` to ``path`` (``.npz``)."""
  meta = {
    "family": model.family,
    "image_shape": list(model.image_shape),
    "seed": model.seed,
    "hparams": model.hparams,
  }
  arrays = {_PARAM + k: np.asarray(v) for k, v in model.params.items()}
  arrays[_META] = np.asarray(json.dumps(meta, sort_keys=True))
  save_npz_atomic(path, arrays)


def load_model(path):
  """Loads a :class:`GeneratorModel` written by :func:`save_model`."""
  meta, arrays = _load_npz(path)
  try:
    params = {
      k[len(_PARAM) :]: v for k, v in arrays.items() if k.startswith(_PARAM)
    }
    return GeneratorModel(
      meta["family"],
      tuple(meta["image_shape"]),
      int(meta["seed"]),
      meta["hparams"],
      params,
    )
  except KeyError as e:
    raise ValueError(f"{path}: cache metadata lacks field {e}.") from e


def save_samples(path, images, meta):
  """Saves uint8 images ``[n, H, W(, C)]`` and a JSON-able ``meta`` dict."""
  save_npz_atomic(
    path,
    {
      "images": np.asarray(images, np.uint8),
      _META: np.asarray(json.dumps(meta, sort_keys=True)),
    },
  )


def load_samples(path):
  """Returns ``(images, meta)`` written by :func:`save_samples`."""
  meta, arrays = _load_npz(path)
  if "images" not in arrays:
    raise ValueError(f"{path}: samples file has no 'images' entry.")
  return arrays["images"], meta
