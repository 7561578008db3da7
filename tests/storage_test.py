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


# ---------------------------------------------------- cache validation
def test_damaged_cache_entries_are_recomputed_with_a_warning(tmp_path, rng):
  parts = {"x": 2, "n": 4}
  entry = storage.EmbeddingCache(str(tmp_path), parts)
  good = rng.normal(size=(3, 4, 5)).astype(np.float32)
  entry.put_chunk(0, 4, good, [])
  got, _ = entry.get_chunk(0, 4, 3, 5)
  np.testing.assert_array_equal(got, good)
  # Wrong width (another encoder's entry under this name), wrong layers.
  with pytest.warns(UserWarning, match="damaged.*shape"):
    assert entry.get_chunk(0, 4, 3, 6) is None
  with pytest.warns(UserWarning, match="damaged.*shape"):
    assert entry.get_chunk(0, 4, 2, 5) is None
  # Too many items for the chunk's range.
  entry.put_chunk(0, 2, good, [])
  with pytest.warns(UserWarning, match="damaged"):
    assert entry.get_chunk(0, 2, 3, 5) is None
  # An entry written under another key.
  other = storage.EmbeddingCache(str(tmp_path), {"x": 3, "n": 4})
  other.put_chunk(0, 4, good, [])
  os.replace(other._chunk_path(0, 4), entry._chunk_path(0, 4))  # pylint: disable=protected-access
  with pytest.warns(UserWarning, match="damaged.*key"):
    assert entry.get_chunk(0, 4, 3, 5) is None
  # A truncated chunk.
  entry.put_chunk(0, 4, good, [])
  path = entry._chunk_path(0, 4)  # pylint: disable=protected-access
  data = open(path, "rb").read()
  open(path, "wb").write(data[: len(data) // 2])
  with pytest.warns(UserWarning, match="damaged"):
    assert entry.get_chunk(0, 4, 3, 5) is None
  # A finished entry: good, then an integer array, then a truncated file.
  entry.finish(good, [])
  got, skipped = entry.load(3, 5)
  np.testing.assert_array_equal(got, good)
  final = os.path.join(entry.folder, "embeddings.npy")
  np.save(final, good.astype(np.int32))
  with pytest.warns(UserWarning, match="damaged.*dtype"):
    assert entry.load(3, 5) is None
  np.save(final, good[:, :3])
  with pytest.warns(UserWarning, match="damaged.*shape"):
    assert entry.load(3, 5) is None
  np.save(final, good)
  data = open(final, "rb").read()
  open(final, "wb").write(data[:100])
  with pytest.warns(UserWarning, match="damaged"):
    assert entry.load(3, 5) is None


def test_file_lock_serialises_processes(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  counter = tmp_path / "n.txt"
  counter.write_text("0")
  worker = (
    "import sys, time\n"
    "from ctjax import storage\n"
    "p = sys.argv[1]\n"
    "for _ in range(30):\n"
    "  with storage.file_lock(p):\n"
    "    n = int(open(p).read())\n"
    "    time.sleep(0.001)\n"
    "    storage.write_bytes(str(n + 1).encode(), p)\n"
  )
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root)
  procs = [
    subprocess.Popen([sys.executable, "-c", worker, str(counter)], env=env)
    for _ in range(4)
  ]
  assert [p.wait(timeout=120) for p in procs] == [0] * 4
  assert counter.read_text() == "120"


def test_outputs_honour_the_umask(tmp_path):
  old = os.umask(0o022)
  try:
    path = storage.write_bytes(b"x", tmp_path / "f")
  finally:
    os.umask(old)
  assert os.stat(path).st_mode & 0o777 == 0o644
