"""Host threads: limits for BLAS/LAPACK calls, and layer groups scored by
concurrent programs on one CPU device."""

import concurrent.futures
import contextlib
import functools
import os

import jax
import numpy as np


def _load_jax_lapack():
  """Loads the LAPACK that XLA's CPU linear algebra (eigh) calls: SciPy's
  OpenBLAS, which JAX otherwise loads at its first decomposition. A limit
  set before a library is loaded does not reach it: a fresh process's first
  fit then ran its eigh with every OpenBLAS thread, whose spinning took half
  of the 2 cores for the whole fit (the first CIFAR-scale fit of 4 layers
  took 26 s of user CPU against 3.8 s for the second)."""
  try:
    import scipy.linalg.cython_lapack  # noqa: F401  pylint: disable=g-import-not-at-top
  except ImportError:
    pass


@contextlib.contextmanager
def one_blas_thread():
  """Runs the block with one BLAS/LAPACK thread.

  XLA's eigh on the CPU and NumPy/SciPy's linear algebra call the OpenBLAS
  that SciPy and NumPy ship; its spinning worker threads slow small D x D
  decompositions down by orders of magnitude (~20x measured) when the cores
  are shared with other work, and one thread costs next to nothing for
  them. XLA's own matrix products do not use OpenBLAS and are unaffected.
  Without threadpoolctl the block runs unchanged.
  """
  try:
    from threadpoolctl import threadpool_limits  # pylint: disable=g-import-not-at-top
  except ImportError:
    yield
    return
  _load_jax_lapack()
  with threadpool_limits(limits=1, user_api="blas"):
    yield


def host_cores() -> int:
  """Cores this process may run on (its CPU affinity where known)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def layer_groups(n_layers: int, n_groups: int) -> list[tuple[int, int]]:
  """``n_groups`` contiguous layer ranges ``(start, stop)`` of equal length
  S = ceil(L / n_groups) covering ``range(n_layers)``; the last ones are
  moved back to end at L, so they may overlap the one before (those layers
  are scored twice, their second result dropped) and every group has the
  same shape, hence one compiled program."""
  n_groups = max(1, min(n_groups, n_layers))
  size = -(-n_layers // n_groups)
  starts = sorted({min(i * size, n_layers - size) for i in range(n_groups)})
  return [(s, s + size) for s in starts]


# Programs already run once in this process (`first_run`).
_RUN = set()


def first_run(key) -> bool:
  """True the first time ``key`` (a program's name and shapes) is seen in
  this process. That call runs its groups one after another, so the
  program is compiled once (two threads starting together would both
  compile it); later calls start every thread at once."""
  if key in _RUN:
    return False
  _RUN.add(key)
  return True


@functools.cache
def _pool(n: int) -> concurrent.futures.ThreadPoolExecutor:
  return concurrent.futures.ThreadPoolExecutor(
    max_workers=n, thread_name_prefix="ctjax-layers"
  )


def submit_all(fns) -> list[concurrent.futures.Future]:
  """Starts every function of ``fns`` in a pool of ``len(fns)`` threads
  (one pool per size, kept for the process); returns their futures.

  XLA:CPU runs one program of small operations (the search's tiles) on
  about one core, and two programs dispatched from one thread run one
  after the other; dispatched from two threads, they run at once.
  """
  fns = list(fns)
  pool = _pool(len(fns))
  return [pool.submit(f) for f in fns]


def start_groups(key, fns) -> list[concurrent.futures.Future]:
  """Starts ``fns`` (one per layer group of one compiled program, ``key``
  its name and shapes) and returns their futures, in order.

  The first time ``key`` is seen (`first_run`) they run one after another
  in this thread, so the program compiles once, and their results come
  back as completed futures; later calls start them at once
  (`submit_all`)."""
  fns = list(fns)
  if not first_run(key):
    return submit_all(fns)
  done = []
  for f in fns:
    fut = concurrent.futures.Future()
    fut.set_result(f())
    done.append(fut)
  return done


def run_concurrently(fns) -> list:
  """`submit_all`, then the results in order (the first exception raised
  by any, if one is)."""
  return [f.result() for f in submit_all(fns)]


def merge_groups(groups, results, axis: int = 0):
  """One pytree from per-group results: along ``axis`` (the layer axis of
  every leaf), each layer's slice is taken from the first group holding it
  (`layer_groups`). ``results``: pytrees of NumPy arrays, one per group."""
  ranges, done = [], 0
  for start, stop in groups:
    ranges.append((done - start, stop - start))
    done = stop

  def merge(*xs):
    return np.concatenate(
      [
        np.take(x, np.arange(lo, hi), axis=axis)
        for x, (lo, hi) in zip(xs, ranges)
      ],
      axis=axis,
    )

  return jax.tree_util.tree_map(merge, *results)
