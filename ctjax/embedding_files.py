"""Embedding files (.npz) as the command line reads and writes them.

Two layouts:
  stacked   ``embeddings``: float ``[L, N, D]`` (every layer D wide);
  per layer ``embeddings_00``, ``embeddings_01``, ...: float ``[N, D_l]``
            each (layers of different widths: ResNet, ConvNeXt, Swin and
            Inception-v3 stages), indices 0..L-1 with none missing.
Either may hold ``layer_names``: L strings (stage names in tables).
`save` writes the stacked layout for an array and the per-layer one for a
list; `load` returns an array or a `LayerList`.
"""

import os
import re
import zipfile

import numpy as np

from ctjax import storage

STACKED_KEY = "embeddings"
NAMES_KEY = "layer_names"
LAYER_KEY = re.compile(r"embeddings_(\d+)")
# What reading a damaged or foreign .npz raises (NumPy, zipfile).
READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


class LayerList(list):
  """A list of per-layer ``[N, D_l]`` arrays with optional ``layer_names``."""

  layer_names: list[str] | None = None


def layer_key(index: int) -> str:
  """The key of layer ``index`` in the per-layer layout."""
  return f"embeddings_{index:02d}"


def is_embedding_archive(keys) -> bool:
  """Whether an .npz's keys are an embeddings file's (either layout)."""
  return any(k == STACKED_KEY or LAYER_KEY.fullmatch(k) for k in keys)


def _float(a: np.ndarray, path: str, key: str) -> np.ndarray:
  if not (
    np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)
  ):
    raise ValueError(f"{path}: '{key}' has dtype {a.dtype}, not a number")
  return np.asarray(a, np.float32)


def load(path) -> np.ndarray | LayerList:
  """The embeddings of an .npz file (see the module docstring).

  Returns:
    float32 ``[L, N, D]`` (stacked layout) or a `LayerList` of L float32
    ``[N, D_l]`` arrays (per-layer layout).

  Raises:
    ValueError: naming the file and the key: unreadable archive, both
      layouts, a missing layer index, a layer that is not ``[N, D]``, layers
      that disagree on N, ``layer_names`` of the wrong length.
  """
  path = os.fspath(path)
  try:
    with np.load(path, allow_pickle=False) as z:
      keys = list(z.files)
      layer = {}
      for k in keys:
        m = LAYER_KEY.fullmatch(k)
        if m is None:
          continue
        i = int(m.group(1))
        if i in layer:
          raise ValueError(
            f"{path}: keys '{layer[i][0]}' and '{k}' both name layer {i}"
          )
        layer[i] = (k, z[k])
      stacked = z[STACKED_KEY] if STACKED_KEY in keys else None
      names = z[NAMES_KEY] if NAMES_KEY in keys else None
  except READ_ERRORS as e:
    if isinstance(e, ValueError) and str(e).startswith(path):
      raise
    raise ValueError(
      f"cannot read {path} ({type(e).__name__}: {str(e).strip() or '?'})"
    ) from None
  if stacked is not None and layer:
    raise ValueError(
      f"{path} holds both '{STACKED_KEY}' and per-layer keys "
      f"({layer[min(layer)][0]}, ...); keep one layout"
    )
  if stacked is None and not layer:
    raise ValueError(
      f"{path} holds no '{STACKED_KEY}' array and no per-layer "
      f"'{layer_key(0)}', '{layer_key(1)}', ... arrays (keys: {keys})"
    )
  if stacked is not None:
    out = _float(stacked, path, STACKED_KEY)
    if out.ndim != 3:
      raise ValueError(
        f"{path}: '{STACKED_KEY}' must be [layers, N, D], got shape {out.shape}"
      )
    n_layers = out.shape[0]
  else:
    n_layers = max(layer) + 1
    missing = [i for i in range(n_layers) if i not in layer]
    if missing:
      raise ValueError(
        f"{path}: layer index {missing[0]} is missing "
        f"('{layer_key(missing[0])}' absent; found "
        f"{sorted(k for k, _ in layer.values())})"
      )
    out = LayerList()
    for i in range(n_layers):
      key, a = layer[i]
      a = _float(a, path, key)
      if a.ndim != 2:
        raise ValueError(f"{path}: '{key}' must be [N, D], got shape {a.shape}")
      if out and len(a) != len(out[0]):
        raise ValueError(
          f"{path}: '{key}' has N={len(a)} rows but '{layer[0][0]}' has "
          f"N={len(out[0])}; every layer embeds the same images"
        )
      out.append(a)
  if names is not None:
    names = [str(s) for s in np.atleast_1d(names)]
    if len(names) != n_layers:
      raise ValueError(
        f"{path}: '{NAMES_KEY}' has {len(names)} names for {n_layers} layers"
      )
    if isinstance(out, LayerList):
      out.layer_names = names
  return out


def save(path, embeddings, layer_names=None) -> str:
  """Writes embeddings in the layout ``load`` reads.

  Args:
    path: the .npz file.
    embeddings: ``[L, N, D]`` (stacked layout) or a list of L ``[N, D_l]``
      arrays (per-layer layout, what ``ctjax.embed`` returns for encoders
      whose layers differ in width).
    layer_names: optional L names.
  """
  path = os.fspath(path)
  arrays = {}
  if isinstance(embeddings, (list, tuple)):
    n_layers = len(embeddings)
    for i, a in enumerate(embeddings):
      arrays[layer_key(i)] = np.asarray(a, np.float32)
  else:
    arrays[STACKED_KEY] = np.asarray(embeddings, np.float32)
    n_layers = len(arrays[STACKED_KEY])
  if layer_names is not None:
    if len(layer_names) != n_layers:
      raise ValueError(f"{len(layer_names)} layer names for {n_layers} layers")
    arrays[NAMES_KEY] = np.asarray([str(s) for s in layer_names], np.str_)
  storage.atomic_write(path, lambda f: np.savez(f, **arrays))
  return path
