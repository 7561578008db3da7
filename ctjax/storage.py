"""An on-disk cache of embeddings: atomic writes, resumable per chunk.

Layout: ``<root>/<key>/`` with ``meta.json`` (what the key encodes, for
humans), ``chunk-<start>-<stop>.npz`` while a run is in progress and
``embeddings.npy`` + ``done.json`` once it is finished. Every file is
written to a temporary name in the same folder and renamed with
``os.replace``, so a crash leaves either the old state or the new one,
never a truncated file; a rerun reuses every finished chunk.
"""

import glob
import hashlib
import json
import os
import tempfile

import numpy as np


def atomic_write(path: str, write) -> None:
  """Calls ``write(fileobj)`` on a temporary file, then renames it to ``path``."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(
    dir=folder, prefix=".tmp-", suffix=os.path.basename(path)
  )
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def cache_key(parts: dict) -> str:
  """sha256 of the canonical JSON of ``parts`` (first 32 hex digits)."""
  text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()[:32]


class EmbeddingCache:
  """Cache entry for one (encoder, preprocessing, pooling, data) combination.

  Attributes:
    parts: the JSON-able dict the key is computed from.
    key: its hash.
    folder: ``<root>/<key>``.
  """

  def __init__(self, root: str, parts: dict):
    self.parts = parts
    self.key = cache_key(parts)
    self.folder = os.path.join(os.fspath(root), self.key)

  def _write_json(self, name: str, obj) -> None:
    text = json.dumps(obj, indent=1, sort_keys=True).encode()
    atomic_write(os.path.join(self.folder, name), lambda f: f.write(text))

  def _chunk_path(self, start: int, stop: int) -> str:
    return os.path.join(self.folder, f"chunk-{start:09d}-{stop:09d}.npz")

  def load(self):
    """(embeddings ``[L, N, D]``, skipped names) of a finished run, or None."""
    done = os.path.join(self.folder, "done.json")
    if not os.path.exists(done):
      return None
    with open(done) as f:
      skipped = json.load(f)["skipped"]
    return np.load(os.path.join(self.folder, "embeddings.npy")), skipped

  def get_chunk(self, start: int, stop: int):
    """(embeddings ``[L, n, D]``, skipped names) of items [start, stop), or None."""
    path = self._chunk_path(start, stop)
    if not os.path.exists(path):
      return None
    with np.load(path) as z:
      return z["embeddings"], [str(s) for s in z["skipped"]]

  def put_chunk(
    self, start: int, stop: int, embeddings: np.ndarray, skipped
  ) -> None:
    if not os.path.exists(os.path.join(self.folder, "meta.json")):
      self._write_json("meta.json", self.parts)
    skipped = np.asarray(list(skipped), dtype=np.str_)
    atomic_write(
      self._chunk_path(start, stop),
      lambda f: np.savez(f, embeddings=embeddings, skipped=skipped),
    )

  def finish(self, embeddings: np.ndarray, skipped) -> None:
    """Writes the final array, then marks the entry done and drops the chunks."""
    if not os.path.exists(os.path.join(self.folder, "meta.json")):
      self._write_json("meta.json", self.parts)
    atomic_write(
      os.path.join(self.folder, "embeddings.npy"),
      lambda f: np.save(f, embeddings),
    )
    self._write_json(
      "done.json", {"skipped": list(skipped), "shape": list(embeddings.shape)}
    )
    for path in glob.glob(os.path.join(self.folder, "chunk-*.npz")):
      os.remove(path)
