"""Tiny training sets shared by the generator tests."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def tiny_images():
  """uint8 [40, 8, 8]: bright bars on a dark background."""
  rng = np.random.default_rng(0)
  x = rng.integers(0, 30, size=(40, 8, 8))
  rows = rng.integers(0, 8, size=40)
  x[np.arange(40), rows, :] = 230
  return x.astype(np.uint8)
