"""ctjax.threads: one_blas_thread reaches the LAPACK that XLA's eigh calls;
layer groups, their merge and the thread pool."""

import subprocess
import sys

import numpy as np
import pytest

from ctjax import threads

_CHILD = """
import jax.numpy as jnp
from threadpoolctl import threadpool_info
from ctjax import threads
with threads.one_blas_thread():
  jnp.linalg.eigh(jnp.eye(4)).eigenvalues.block_until_ready()
  print(sorted({i["num_threads"] for i in threadpool_info()
               if i["user_api"] == "blas"}))
"""


def test_limit_reaches_lapack_loaded_by_eigh():
  # A fresh process: SciPy's OpenBLAS is not loaded before the block.
  pytest.importorskip("threadpoolctl")
  out = subprocess.run(
    [sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True
  )
  assert out.stdout.strip().splitlines()[-1] == "[1]"


def test_layer_groups_cover_every_layer_once_with_one_shape():
  for n_layers in range(1, 15):
    for n in range(1, 18):
      groups = threads.layer_groups(n_layers, n)
      sizes = {stop - start for start, stop in groups}
      assert len(sizes) == 1 and 1 <= len(groups) <= min(n, n_layers)
      assert groups[0][0] == 0 and groups[-1][1] == n_layers
      covered = sorted(
        {l for start, stop in groups for l in range(start, stop)}
      )
      assert covered == list(range(n_layers))
  assert threads.layer_groups(13, 2) == [(0, 7), (6, 13)]
  assert threads.layer_groups(3, 1) == [(0, 3)]


def test_merge_groups_takes_each_layer_from_its_first_group():
  groups = threads.layer_groups(5, 2)  # (0, 3), (2, 5): layer 2 twice
  full = np.arange(5 * 4).reshape(5, 4)
  res = [{"a": full[s:e].copy(), "b": full[s:e].T.copy()} for s, e in groups]
  res[1]["a"][0] = -1  # layer 2's second copy: must be dropped
  got = threads.merge_groups(groups, res)
  np.testing.assert_array_equal(got["a"], full)
  np.testing.assert_array_equal(
    threads.merge_groups(groups, [r["b"] for r in res], axis=1), full.T
  )


def test_run_concurrently_returns_in_order_and_raises():
  assert threads.run_concurrently([lambda i=i: i * i for i in range(3)]) == [
    0,
    1,
    4,
  ]

  def boom():
    raise RuntimeError("in a thread")

  with pytest.raises(RuntimeError, match="in a thread"):
    threads.run_concurrently([lambda: 1, boom])


def test_start_groups_runs_the_first_call_here_then_in_the_pool():
  """The first call of a key runs its functions one after another in the
  calling thread (one compilation); later calls run in the pool. Results
  come back in order either way."""
  import threading  # pylint: disable=g-import-not-at-top

  key = ("start_groups test", object())

  def where(i):
    return i, threading.current_thread().name

  first = [
    f.result()
    for f in threads.start_groups(key, [lambda i=i: where(i) for i in range(3)])
  ]
  assert [i for i, _ in first] == [0, 1, 2]
  assert {name for _, name in first} == {threading.current_thread().name}
  later = [
    f.result()
    for f in threads.start_groups(key, [lambda i=i: where(i) for i in range(3)])
  ]
  assert [i for i, _ in later] == [0, 1, 2]
  assert all(name.startswith("ctjax-layers") for _, name in later)
