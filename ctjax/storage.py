"""Everything ctjax writes to disk goes through here.

- `atomic_write`: the one writer. The bytes go to a temporary file in the
  target folder, are flushed and fsynced, and the file is renamed over the
  target with ``os.replace``, so a crash leaves either the old file or the new
  one, never a truncated one. The new file gets the mode any other tool's
  output gets (``0o666`` less the umask), not the ``0o600`` of a temporary
  file.
- `to_jsonable` / `write_json`: the one JSON normaliser (NumPy arrays and
  scalars become lists and numbers, NaN and ±inf become null, objects with a
  ``to_dict()`` are written through it) and the strict JSON file writer.
- `EmbeddingCache`: an on-disk cache of embeddings, resumable per chunk.
  Layout: ``<root>/<key>/`` with ``meta.json`` (what the key encodes, for
  humans), ``chunk-<start>-<stop>.npz`` while a run is in progress and
  ``embeddings.npy`` + ``done.json`` once it is finished; a rerun reuses every
  finished chunk.
"""

import contextlib
import fcntl
import glob
import hashlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import numpy as np


# ----------------------------------------------------------------------------
# The atomic writer.


def _umask() -> int:
  """The process's umask, read without changing it where the OS allows."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  # Elsewhere the only portable way is to set it and put it back.
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def _fsync_folder(folder: str) -> None:
  # Makes the rename itself durable; not every OS or file system allows it.
  try:
    fd = os.open(folder, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def atomic_write(path, write_fn: Callable[[BinaryIO], Any]) -> str:
  """Calls ``write_fn(fileobj)`` on a temporary binary file, then renames it.

  Args:
    path: the file to create or replace; its folder is created if needed.
    write_fn: writes the content to the open binary file object it is given.

  Returns:
    ``path`` as a string.
  """
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(
    dir=folder, prefix=".tmp-", suffix=os.path.basename(path)
  )
  try:
    os.fchmod(fd, 0o666 & ~_umask())
    with os.fdopen(fd, "wb") as f:
      write_fn(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise
  _fsync_folder(folder)
  return path


def write_bytes(data: bytes, path) -> str:
  """Writes ``data`` to ``path`` atomically; returns the path."""
  return atomic_write(path, lambda f: f.write(data))


@contextlib.contextmanager
def file_lock(path):
  """Holds an exclusive advisory lock on ``<path>.lock`` (POSIX ``flock``).

  Every writer that reads, modifies and replaces ``path`` under this lock
  sees the previous writer's result, so concurrent processes lose nothing.
  The lock file is left in place (removing it would race with a waiter).
  """
  lock_path = os.fspath(path) + ".lock"
  folder = os.path.dirname(os.path.abspath(lock_path))
  os.makedirs(folder, exist_ok=True)
  fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield lock_path
  finally:
    with contextlib.suppress(OSError):
      fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


# ----------------------------------------------------------------------------
# JSON.


def to_jsonable(x):
  """``x`` as plain JSON types.

  NumPy arrays and scalars become lists and Python numbers, tuples lists,
  mapping keys strings, NaN and ±inf None (strict JSON has neither), and an
  object with a ``to_dict()`` method its dict. Anything else is returned as
  is, so `json.dumps` rejects what it cannot store.
  """
  if isinstance(x, Mapping):
    return {str(k): to_jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [to_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return to_jsonable(x.tolist())
  if isinstance(x, np.generic):
    return to_jsonable(x.item())
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if hasattr(x, "to_dict"):
    return to_jsonable(x.to_dict())
  return x


def json_text(obj: Any, indent: int | None = 1, sort_keys: bool = False):
  """Strict JSON text of ``to_jsonable(obj)`` (raises TypeError if it can't)."""
  return json.dumps(
    to_jsonable(obj), indent=indent, sort_keys=sort_keys, allow_nan=False
  )


def write_json(obj: Any, path, indent: int = 1, sort_keys: bool = False):
  """Writes ``obj`` as strict JSON with a final newline, atomically.

  See `to_jsonable` for what is converted. Returns the path.
  """
  text = json_text(obj, indent=indent, sort_keys=sort_keys) + "\n"
  return write_bytes(text.encode("utf-8"), path)


# ----------------------------------------------------------------------------
# The embedding cache.


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

  def _write_meta(self) -> None:
    path = os.path.join(self.folder, "meta.json")
    if not os.path.exists(path):
      write_json(self.parts, path, sort_keys=True)

  def _chunk_path(self, start: int, stop: int) -> str:
    return os.path.join(self.folder, f"chunk-{start:09d}-{stop:09d}.npz")

  def _damaged(self, path: str, why: str) -> None:
    warnings.warn(
      f"embedding cache entry {path} is damaged ({why}); recomputing it",
      stacklevel=3,
    )

  def _check(self, emb, n_layers, n_items, dim) -> str | None:
    """Why ``emb`` is not a valid ``[n_layers, n, dim]`` entry, or None.

    ``n_items`` is ``(fewest, most)`` items: skipped inputs may be absent.
    """
    if not isinstance(emb, np.ndarray) or emb.dtype.kind != "f":
      return f"dtype {getattr(emb, 'dtype', type(emb).__name__)}, not float"
    lo, hi = n_items
    want = (n_layers, None, dim)
    if (
      emb.ndim != 3
      or any(w is not None and g != w for g, w in zip(emb.shape, want))
      or (hi is not None and not lo <= emb.shape[1] <= hi)
    ):
      n = "?" if hi is None else (f"{lo}..{hi}" if lo != hi else hi)
      shown = ", ".join(
        str(x) for x in ("?" if n_layers is None else n_layers, n, dim or "?")
      )
      return f"shape {emb.shape}, expected ({shown})"
    return None

  def load(self, n_layers: int | None = None, dim: int | None = None):
    """(embeddings ``[L, N, D]``, skipped names) of a finished run, or None.

    An entry whose key, shape or dtype does not match (``n_layers``/``dim``
    when given, the item count of ``parts['n']``) or that cannot be read is
    treated as missing, with a warning.
    """
    done = os.path.join(self.folder, "done.json")
    if not os.path.exists(done):
      return None
    path = os.path.join(self.folder, "embeddings.npy")
    try:
      with open(done, encoding="utf-8") as f:
        info = json.load(f)
      skipped = [str(x) for x in info["skipped"]]
      emb = np.load(path, allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError, EOFError) as e:
      self._damaged(path, f"{type(e).__name__}: {e}")
      return None
    why = None
    if info.get("key", self.key) != self.key:
      why = f"key {info.get('key')!r}, expected {self.key!r}"
    n = self.parts.get("n")
    n_items = (None, None) if n is None else (n - len(skipped), n)
    why = why or self._check(emb, n_layers, n_items, dim)
    if why is None and list(emb.shape) != list(info.get("shape", emb.shape)):
      why = f"shape {emb.shape} but done.json says {info.get('shape')}"
    if why is not None:
      self._damaged(path, why)
      return None
    return emb, skipped

  def get_chunk(
    self, start: int, stop: int, n_layers: int | None = None, dim=None
  ):
    """(embeddings ``[L, n, D]``, skipped names) of items [start, stop), or None.

    A chunk that cannot be read or does not match (key, item count,
    ``n_layers``/``dim`` when given) is treated as missing, with a warning.
    """
    path = self._chunk_path(start, stop)
    if not os.path.exists(path):
      return None
    try:
      with np.load(path, allow_pickle=False) as z:
        emb = z["embeddings"]
        skipped = [str(s) for s in z["skipped"]]
        key = str(z["key"]) if "key" in z.files else self.key
    except Exception as e:  # noqa: BLE001 -- zipfile/NumPy raise many types.
      self._damaged(path, f"{type(e).__name__}: {e}")
      return None
    why = None if key == self.key else f"key {key!r}, expected {self.key!r}"
    n_items = (stop - start - len(skipped), stop - start)
    why = why or self._check(emb, n_layers, n_items, dim)
    if why is not None:
      self._damaged(path, why)
      return None
    return emb, skipped

  def put_chunk(
    self, start: int, stop: int, embeddings: np.ndarray, skipped
  ) -> None:
    """Stores the embeddings ``[L, n, D]`` of items [start, stop)."""
    self._write_meta()
    skipped = np.asarray(list(skipped), dtype=np.str_)
    atomic_write(
      self._chunk_path(start, stop),
      lambda f: np.savez(
        f, embeddings=embeddings, skipped=skipped, key=np.str_(self.key)
      ),
    )

  def finish(self, embeddings: np.ndarray, skipped) -> None:
    """Writes the final array, then marks the entry done and drops the chunks."""
    self._write_meta()
    atomic_write(
      os.path.join(self.folder, "embeddings.npy"),
      lambda f: np.save(f, embeddings),
    )
    write_json(
      {
        "key": self.key,
        "skipped": list(skipped),
        "shape": list(embeddings.shape),
      },
      os.path.join(self.folder, "done.json"),
      sort_keys=True,
    )
    for path in glob.glob(os.path.join(self.folder, "chunk-*.npz")):
      os.remove(path)
