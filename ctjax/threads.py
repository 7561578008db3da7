"""Thread limits for host BLAS/LAPACK calls."""

import contextlib


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
