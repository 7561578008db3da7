"""Atomic writes and per-chunk resumption of the embedding cache."""

import json
import os

import numpy as np
import pytest

from ctjax import storage


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
  path = tmp_path / "x.bin"
  path.write_bytes(b"old")

  def crash(f):
    f.write(b"partial")
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    storage.atomic_write(str(path), crash)
  assert path.read_bytes() == b"old"
  assert os.listdir(tmp_path) == ["x.bin"]
  storage.atomic_write(str(path), lambda f: f.write(b"new"))
  assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["x.bin"]


def test_key_depends_on_every_part_not_on_order():
  a = storage.cache_key({"encoder": "e", "pool": "cls", "data": "d"})
  assert a == storage.cache_key({"data": "d", "pool": "cls", "encoder": "e"})
  assert a != storage.cache_key({"encoder": "e", "pool": "mean", "data": "d"})
  assert a != storage.cache_key({"encoder": "e", "pool": "cls", "data": "d2"})


def test_chunks_roundtrip_then_finish(tmp_path, rng):
  entry = storage.EmbeddingCache(str(tmp_path), {"x": 1})
  assert entry.load() is None and entry.get_chunk(0, 4) is None
  first = rng.normal(size=(3, 4, 5)).astype(np.float32)
  entry.put_chunk(0, 4, first, ["bad.png"])
  got, skipped = entry.get_chunk(0, 4)
  np.testing.assert_array_equal(got, first)
  assert skipped == ["bad.png"]
  assert entry.get_chunk(0, 8) is None  # other boundaries are not reused
  assert (
    storage.EmbeddingCache(str(tmp_path), {"x": 1}).get_chunk(0, 4) is not None
  )
  entry.finish(first, ["bad.png"])
  emb, skipped = storage.EmbeddingCache(str(tmp_path), {"x": 1}).load()
  np.testing.assert_array_equal(emb, first)
  assert skipped == ["bad.png"]
  assert sorted(os.listdir(entry.folder)) == [
    "done.json",
    "embeddings.npy",
    "meta.json",
  ]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_mode_honours_umask(tmp_path, umask):
  # What `open(path, "w")` gives under the same umask is the reference.
  old = os.umask(umask)
  try:
    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"x")
    path = storage.atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x"))
    replaced = tmp_path / "old.bin"
    replaced.write_bytes(b"old")
    os.chmod(replaced, 0o600)
    storage.write_bytes(b"new", replaced)
  finally:
    os.umask(old)
  want = plain.stat().st_mode & 0o777
  assert want == 0o666 & ~umask
  assert os.stat(path).st_mode & 0o777 == want
  assert replaced.stat().st_mode & 0o777 == want  # a new file, new mode
  assert replaced.read_bytes() == b"new"


def test_write_json_normalises_numpy_and_non_finite(tmp_path):
  class HasDict:
    def to_dict(self):
      return {"k": np.float32(0.5)}

  obj = {
    1: np.arange(2, dtype=np.int64),
    "f": (np.float64("nan"), -np.inf, 2.5),
    "o": HasDict(),
    "s": np.str_("t"),
    "b": np.bool_(True),
  }
  want = {
    "1": [0, 1],
    "f": [None, None, 2.5],
    "o": {"k": 0.5},
    "s": "t",
    "b": True,
  }
  assert storage.to_jsonable(obj) == want
  path = storage.write_json(obj, tmp_path / "sub" / "o.json", sort_keys=True)
  text = open(path).read()
  assert text.endswith("\n") and "NaN" not in text
  assert json.loads(text) == want
  assert list(json.loads(text)) == sorted(want)
  with pytest.raises(TypeError):
    storage.write_json({"x": object()}, path)
  assert json.loads(open(path).read()) == want  # the old file is kept
