"""ctjax.sharding: sharded fit/score equal the single-device ones.

The multi-device runs happen in subprocesses (this file run as a module) so
the rest of the suite keeps one CPU device: 8 simulated devices via
XLA_FLAGS, and two jax.distributed processes with 2 devices each on
127.0.0.1 (they score a reference the parent fitted and saved). The parent compares their saved results with its own unsharded
fit/score and with a brute-force NumPy oracle.
"""

import os
import socket
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest

import ctjax
from ctjax import sharding
from ctjax.stats import neighbors as nb
from tests.stats import oracle

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
L, N, n, m, D = 2, 1001, 300, 250, 12  # N not a multiple of 8: padding
FIT = dict(n_components=8, n_cells=5, seed=0, n_init=3, tile_train=128)


def _data(seed=1):
  """Clustered layers; gen copies training points (exact copies included)."""
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(6, D)) * 4

  def sample(k):
    return centers[rng.integers(0, 6, k)] + rng.normal(size=(k, D))

  train = np.stack([sample(N) for _ in range(L)]).astype(np.float32)
  test = np.stack([sample(n) for _ in range(L)]).astype(np.float32)
  gen = np.stack(
    [
      train[l, :m] + rng.normal(size=(m, D)) * s
      for l, s in enumerate([0.05, 1.0])
    ]
  ).astype(np.float32)
  gen[:, :20] = train[:, 100:120]
  return train, test, gen


def _result_arrays(prefix, ref, res):
  out = {
    f"{prefix}/ct": res.ct,
    f"{prefix}/u": res.u,
    f"{prefix}/gen_cells": res.neighbors.gen_cells,
    f"{prefix}/gen_index": res.neighbors.gen_index,
    f"{prefix}/gen_dist": res.neighbors.gen_dist,
  }
  f = ref.fitted
  for k, v in dict(
    cells=f.index.cells,
    order=f.index.order,
    test_cells=f.test.cells,
    test_index=f.test.index,
    test_dist=f.test.dist,
    centers=f.centers,
    pca_components=f.pca.components,
  ).items():
    out[f"{prefix}/{k}"] = np.asarray(v)
  return out


# ---------------------------------------------------------------- workers
def _kernel_case(seed=4):
  """Random points for the bare sharded kernel (N not a multiple of 8). Rows
  500-599 duplicate rows 0-99 (other devices: 500 mod 8 = 4) and the first
  20 queries are copies of rows 0, 5, ..., 95: the lower index must win."""
  rng = np.random.default_rng(seed)
  pts = rng.normal(size=(2, 1001, 6)).astype(np.float32)
  cells = rng.integers(0, 4, (2, 1001)).astype(np.int32)
  pts[:, 500:600], cells[:, 500:600] = pts[:, :100], cells[:, :100]
  queries = rng.normal(size=(2, 200, 6)).astype(np.float32)
  q_cells = rng.integers(0, 5, (2, 200)).astype(np.int32)  # 4 = padding
  queries[:, :20], q_cells[:, :20] = pts[:, :100:5], cells[:, :100:5]
  return pts, cells, queries, q_cells


def _worker_devices(out_path):
  """8 simulated devices: fit and score on a mesh of 8, score on 2; the bare
  kernel (both metrics, ties)."""
  assert jax.device_count() == 8, jax.devices()
  train, test, gen = _data()
  ref8 = ctjax.CTReference.fit(train, test, metric="cosine", mesh="all", **FIT)
  out = _result_arrays(
    "eight", ref8, ref8.score(gen, return_neighbors=True, mesh="all")
  )
  out.update(
    _result_arrays(
      "two",
      ref8,
      ref8.score(gen, return_neighbors=True, mesh=jax.devices()[:2]),
    )
  )
  mesh = sharding.make_mesh()
  pts, cells, queries, q_cells = _kernel_case()
  for metric in ("cosine", "l2"):
    index = sharding.shard_index(
      pts, cells, n_cells=4, metric=metric, mesh=mesh
    )
    dist, idx = sharding.nearest_in_cell(
      index, queries, q_cells, tile_queries=32, tile_train=64
    )
    out[f"kernel/{metric}/dist"] = np.asarray(dist)
    out[f"kernel/{metric}/idx"] = np.asarray(idx)
  np.savez(out_path, **out)


def _worker_distributed(out_path, ref_path, port, pid):
  """One of two jax.distributed processes (2 local devices each): scores the
  parent's reference on a mesh spanning both processes."""
  jax.distributed.initialize(
    f"127.0.0.1:{port}",
    num_processes=2,
    process_id=pid,
    initialization_timeout=60,
  )
  try:
    assert jax.process_count() == 2 and jax.device_count() == 4
    _, _, gen = _data()
    ref = ctjax.CTReference.load(ref_path)
    out = _result_arrays(
      "dist", ref, ref.score(gen, return_neighbors=True, mesh="all")
    )
    items = list(range(11))
    out["gathered"] = sharding.map_in_order(
      lambda xs: np.array([[3 * x, jax.process_index()] for x in xs]), items
    )
    np.savez(out_path, **out)
  finally:
    jax.distributed.shutdown()


def _start(args, n_devices):
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}",
  )
  return subprocess.Popen(
    [sys.executable, "-m", "tests.sharding_test", *args],
    cwd=_ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _wait(proc, timeout, what):
  try:
    out, _ = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, _ = proc.communicate()
    pytest.fail(f"{what}: timed out after {timeout}s:\n{out[-3000:]}")
  assert proc.returncode == 0, f"{what} failed:\n{out[-3000:]}"


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# ----------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def runs():
  """Starts the 8-device worker and the two distributed processes, computes
  the unsharded fit/score here meanwhile, then collects their results."""
  with tempfile.TemporaryDirectory() as tmp:
    eight_path = os.path.join(tmp, "eight.npz")
    ref_path = os.path.join(tmp, "ref.npz")
    dist_paths = [os.path.join(tmp, f"p{i}.npz") for i in range(2)]
    procs = [(_start(["devices", eight_path], 8), "8-device worker")]
    try:
      train, test, gen = _data()
      ref = ctjax.CTReference.fit(train, test, metric="cosine", **FIT)
      ref.save(ref_path)
      port = str(_free_port())
      procs += [
        (
          _start(["distributed", dist_paths[i], ref_path, port, str(i)], 2),
          f"distributed process {i}",
        )
        for i in range(2)
      ]
      res = ref.score(gen, return_neighbors=True)
    finally:
      for proc, what in procs:
        _wait(proc, 300, what)
    eight = dict(np.load(eight_path))
    dist = [dict(np.load(p)) for p in dist_paths]
  yield dict(
    ref=ref,
    res=res,
    data=(train, test, gen),
    eight=eight,
    dist=dist,
    want=_result_arrays("one", ref, res),
  )


# -------------------------------------------------------------------- tests
def _assert_same(a, b):
  """Same cells and neighbours; distances and C_T within 1e-6."""
  for k in (
    "cells",
    "order",
    "test_cells",
    "test_index",
    "gen_cells",
    "gen_index",
    "centers",
    "pca_components",
  ):
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  for k in ("test_dist", "gen_dist"):
    np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6, err_msg=k)
  np.testing.assert_allclose(a["ct"], b["ct"], rtol=0, atol=1e-6)
  np.testing.assert_array_equal(a["u"], b["u"])


def _part(d, prefix):
  return {
    k[len(prefix) + 1 :]: v for k, v in d.items() if k.startswith(prefix + "/")
  }


@pytest.mark.parametrize("how", ["eight", "two"])
def test_sharded_fit_and_score_equal_unsharded(runs, how):
  want = _part(runs["want"], "one")
  _assert_same(_part(runs["eight"], how), want)
  assert want["ct"][0] < -3 < want["ct"][1]  # the copied layer shows


def test_sharded_neighbours_match_brute_force(runs):
  ref, (train, _, gen) = runs["ref"], runs["data"]
  got = _part(runs["eight"], "eight")
  f = ref.fitted
  for l in range(L):
    mean = np.asarray(f.pca.mean[l], np.float64)
    comp = np.asarray(f.pca.components[l], np.float64)
    pt, pg = ((x[l] - mean) @ comp for x in (train, gen))
    c_tr = np.empty(N, int)
    c_tr[np.asarray(f.index.order[l])] = np.asarray(f.index.cells[l])
    d, i = oracle.nearest_in_cell(pg, got["gen_cells"][l], pt, c_tr, "cosine")
    np.testing.assert_allclose(got["gen_dist"][l], d, atol=1e-5)
    assert np.mean(got["gen_index"][l] == i) > 0.99
    np.testing.assert_array_equal(got["gen_dist"][l][:20], 0.0)  # copies


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_sharded_kernel_equals_engine_kernel_ties_to_lowest_index(runs, metric):
  pts, cells, queries, q_cells = _kernel_case()
  got_d = runs["eight"][f"kernel/{metric}/dist"]
  got_i = runs["eight"][f"kernel/{metric}/idx"]
  for l in range(2):
    index = nb.build_index(pts[l], cells[l], 4, metric)
    d, i = nb.nearest_in_cell(index, queries[l], q_cells[l])
    np.testing.assert_array_equal(got_i[l], i)
    np.testing.assert_allclose(got_d[l], d, rtol=1e-6, atol=1e-6)
    pad = q_cells[l] == 4
    assert pad.any() and np.all(got_i[l][pad] == -1)
    assert np.all(np.isinf(got_d[l][pad]))
    # Exact copies present twice, on different devices: the lower index.
    np.testing.assert_array_equal(got_i[l][:20], np.arange(0, 100, 5))
    np.testing.assert_allclose(got_d[l][:20], 0.0, atol=1e-6)


def test_two_processes_on_loopback(runs):
  want = _part(runs["want"], "one")
  for out in runs["dist"]:
    _assert_same(_part(out, "dist"), want)
    np.testing.assert_array_equal(
      out["gathered"], np.array([[3 * x, int(x >= 6)] for x in range(11)])
    )


def test_one_device_mesh_in_process(runs):
  ref, res, (_, _, gen) = runs["ref"], runs["res"], runs["data"]
  got = ref.score(gen, return_neighbors=True, mesh="all")
  np.testing.assert_allclose(got.ct, res.ct, rtol=0, atol=1e-6)
  np.testing.assert_array_equal(
    got.neighbors.gen_index, res.neighbors.gen_index
  )
  assert ref.sharded_index("all") is ref.sharded_index(sharding.make_mesh())


def test_process_share_covers_inputs_in_order():
  for n_items in (0, 1, 7, 10, 11):
    for count in (1, 2, 3, 4):
      shares = [sharding.process_share(n_items, p, count) for p in range(count)]
      got = [i for s in shares for i in range(n_items)[s]]
      assert got == list(range(n_items))
      sizes = [s.stop - s.start for s in shares]
      assert max(sizes) - min(sizes) <= 1
  with pytest.raises(ValueError, match="process_index"):
    sharding.process_share(5, 2, 2)
  np.testing.assert_array_equal(
    sharding.gather_in_order(np.arange(4), 4), np.arange(4)
  )
  with pytest.raises(ValueError, match="share"):
    sharding.gather_in_order(np.arange(3), 4)


def test_bad_mesh_is_named():
  with pytest.raises(ValueError, match="'all'"):
    sharding.resolve_mesh("everything")
  other = jax.sharding.Mesh(np.asarray(jax.devices()), ("model",))
  with pytest.raises(ValueError, match="'data'"):
    sharding.resolve_mesh(other)
  with pytest.raises(ValueError, match="dimension"):
    sharding.nearest_in_cell(
      sharding.shard_index(
        np.zeros((1, 8, 3), np.float32),
        np.zeros((1, 8), np.int32),
        n_cells=1,
        metric="l2",
        mesh=sharding.make_mesh(),
      ),
      np.zeros((1, 2, 4), np.float32),
      np.zeros((1, 2), np.int32),
    )


if __name__ == "__main__":
  if sys.argv[1] == "devices":
    _worker_devices(sys.argv[2])
  else:
    _worker_distributed(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
