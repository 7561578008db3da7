"""ctjax.devices and the layer split of `CTReference.score`/`score_many`.

The split runs in a subprocess (this file run as a module) that calls
`ctjax.use_cpu_devices(2)` first, as run.py does; the rest of the suite keeps
one CPU device. Three layers over two devices: the layer axis is padded.
"""

import os
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest

import ctjax
from ctjax import devices
from ctjax import reference
from ctjax import sharding

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
L, N, n, m, D = 3, 700, 240, 150, 10
FIT = dict(n_components=6, n_cells=4, seed=0, n_init=2, tile_train=64)


def _data(seed=2):
  """Clustered layers (5 centres, unit noise); the odd generated batches
  copy training points, every batch holds 10 exact copies."""
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(5, D)) * 4
  draw = lambda *shape: (
    centers[rng.integers(0, 5, shape[:-1])] + rng.normal(size=shape)
  ).astype(np.float32)
  train, test = draw(L, N, D), draw(L, n, D)
  gens = draw(5, L, m, D)
  gens[1::2] = train[None, :, :m] + 0.1 * rng.normal(size=(L, m, D))
  gens[:, :, :10] = train[:, 50:60]
  return train, test, gens


def _fit_parts(ref):
  f = ref.fitted
  return dict(
    centers=f.centers,
    components=f.pca.components,
    order=f.index.order,
    test_cells=f.test.cells,
    test_dist=f.test.dist,
  )


def _worker(out_path):
  n_dev = ctjax.use_cpu_devices(2)
  assert n_dev == 2 and jax.device_count() == 2, jax.devices()
  train, test, gens = _data()
  ref = ctjax.CTReference.fit(train, test, metric="cosine", **FIT)
  mesh = sharding.layer_mesh(ref.n_layers)
  assert mesh is not None and mesh.shape[sharding.LAYERS] == 2
  out = {f"fit/{k}": np.asarray(v) for k, v in _fit_parts(ref).items()}
  for name, kw in (("split", {}), ("one", {"split_layers": False})):
    res = ref.score(gens[0], return_neighbors=True, **kw)
    out[f"{name}/ct"] = res.ct
    out[f"{name}/u"] = res.u
    out[f"{name}/gen_index"] = res.neighbors.gen_index
    out[f"{name}/gen_dist"] = res.neighbors.gen_dist
    out[f"{name}/gen_cells"] = res.neighbors.gen_cells
    boot = ref.score(gens[1], n_bootstrap=50, seed=3, **kw)
    out[f"{name}/ct_boot"] = boot.ct_boot
    many = ref.score_many(gens, batch_size=2, **kw)  # 3 chunks, last padded
    out[f"{name}/many_ct"] = many.ct
    out[f"{name}/many_u"] = many.u
  for g in gens:  # more batches: no more compilations
    ref.score(g)
  tiles = tuple(sorted(ref._tiles().items()))  # pylint: disable=protected-access
  out["score_programs"] = reference._split_score(mesh, tiles)._cache_size()  # pylint: disable=protected-access
  out["chunk_programs"] = reference._split_chunk(mesh, tiles)._cache_size()  # pylint: disable=protected-access
  bad = gens[0].copy()
  bad[2, 7, 1] = np.nan
  try:
    ref.score(bad)
    out["nan_error"] = ""
  except ValueError as e:
    out["nan_error"] = str(e)
  np.savez(out_path, **out)


@pytest.fixture(scope="module")
def split_run():
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "out.npz")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    env.pop("CTJAX_CPU_DEVICES", None)
    proc = subprocess.run(
      [sys.executable, "-m", "tests.devices_test", path],
      cwd=_ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    yield dict(np.load(path))


def test_split_score_equals_one_device(split_run):
  r = split_run
  for k in ("u", "gen_index", "gen_cells", "many_u"):
    np.testing.assert_array_equal(r[f"split/{k}"], r[f"one/{k}"], err_msg=k)
  for k in ("ct", "gen_dist", "many_ct", "ct_boot"):
    np.testing.assert_allclose(
      r[f"split/{k}"], r[f"one/{k}"], rtol=0, atol=1e-6, err_msg=k
    )
  assert r["split/ct"].shape == (L,) and r["split/many_ct"].shape == (5, L)


def test_split_fit_and_score_equal_one_device_in_this_process(split_run):
  # The worker's fit split its 3 layers over 2 devices (the second group
  # padded); this process fits on one device: the same cells, neighbours
  # and 2U.
  train, test, gens = _data()
  ref = ctjax.CTReference.fit(train, test, metric="cosine", **FIT)
  for k, v in _fit_parts(ref).items():
    got = split_run[f"fit/{k}"]
    if np.issubdtype(got.dtype, np.integer):
      np.testing.assert_array_equal(got, np.asarray(v), err_msg=k)
    else:
      np.testing.assert_allclose(got, np.asarray(v), atol=1e-5, err_msg=k)
  np.testing.assert_array_equal(ref.score(gens[0]).u, split_run["split/u"])


def test_split_compiles_once(split_run):
  assert int(split_run["score_programs"]) == 1
  assert int(split_run["chunk_programs"]) == 1


def test_split_names_the_nan_layer(split_run):
  assert "NaN or Inf" in str(split_run["nan_error"])
  assert "2" in str(split_run["nan_error"])


def test_one_device_has_no_layer_mesh():
  assert jax.device_count() == 1
  assert sharding.layer_mesh(13) is None
  assert sharding.layer_mesh(1, jax.devices() * 2) is None  # one layer
  with pytest.raises(ValueError, match="split_layers"):
    ctjax.CTReference.fit(*_data()[:2], **FIT).score(
      _data()[2][0], split_layers="yes"
    )


def test_use_cpu_devices_after_start_is_refused(monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)  # tests/conftest.py's
  jax.devices()  # JAX has started with one CPU device
  assert ctjax.use_cpu_devices(1) == 1
  with pytest.raises(RuntimeError, match="before anything runs"):
    ctjax.use_cpu_devices(2)
  with pytest.raises(ValueError, match=">= 1"):
    ctjax.use_cpu_devices(0)


def test_use_cpu_devices_keeps_the_users_flag(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
  assert ctjax.use_cpu_devices(2) == 3


def test_default_count(monkeypatch):
  from ctjax.stats import native  # pylint: disable=g-import-not-at-top

  monkeypatch.delenv("CTJAX_CPU_DEVICES", raising=False)
  monkeypatch.setattr(native, "available", lambda: False)
  want = min(len(os.sched_getaffinity(0)), devices.MAX_DEFAULT)
  assert devices.default_count() == want
  # The native search kernel spreads over the cores itself: one device.
  monkeypatch.setattr(native, "available", lambda: True)
  assert devices.default_count() == 1
  monkeypatch.setenv("CTJAX_CPU_DEVICES", "1")
  assert devices.default_count() == 1
  monkeypatch.setenv("CTJAX_CPU_DEVICES", "two")
  with pytest.raises(ValueError, match="CTJAX_CPU_DEVICES"):
    devices.default_count()


if __name__ == "__main__":
  _worker(sys.argv[1])
