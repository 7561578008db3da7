"""Atomic writes and per-chunk resumption of the embedding cache."""

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
