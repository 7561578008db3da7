"""Thread limits for host BLAS/LAPACK calls."""

import contextlib


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
  with threadpool_limits(limits=1, user_api="blas"):
    yield
