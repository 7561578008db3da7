"""one_blas_thread reaches the LAPACK that XLA's eigh calls."""

import subprocess
import sys

import pytest

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
