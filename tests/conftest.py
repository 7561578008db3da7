"""Shared fixtures: a seeded NumPy generator and a float64 switch."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import jax
import numpy as np
import pytest


@pytest.fixture
def rng():
  return np.random.default_rng(0)


@pytest.fixture
def enable_x64():
  """Runs the test with jax_enable_x64 on, restoring the old value after."""
  with jax.enable_x64(True):
    yield
