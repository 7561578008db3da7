"""ctjax.environment: what a run ran on."""

import json
import os
from unittest import mock

import flax
import jax
import numpy as np
import scipy
import sklearn

from ctjax import environment
from ctjax.stats import native


def test_versions_are_the_imported_packages():
  env = environment.describe(native_kernels=False)
  pk = env["packages"]
  # The metadata read without importing agrees with the modules themselves.
  assert pk["jax"] == jax.__version__
  assert pk["numpy"] == np.__version__
  assert pk["scipy"] == scipy.__version__
  assert pk["scikit-learn"] == sklearn.__version__
  assert pk["flax"] == flax.__version__
  assert set(pk) == set(environment.PACKAGES)
  assert env["backend"] == jax.default_backend()
  assert env["devices"]["count"] == len(jax.devices())
  assert env["cpu_cores"] == len(os.sched_getaffinity(0))
  assert "native_kernels" not in env
  json.dumps(env)  # JSON-ready as it is


def test_reachable_from_the_package():
  import ctjax  # pylint: disable=g-import-not-at-top

  assert ctjax.environment is environment


def test_missing_package_is_none():
  assert environment.package_version("no-such-distribution-ctjax") is None


def test_variables_kept_are_the_ones_that_change_numbers():
  jax.devices()  # XLA reads XLA_FLAGS when its backend starts: not this one
  with mock.patch.dict(
    os.environ,
    {"XLA_FLAGS": "--xla_cpu_foo", "CTJAX_NATIVE": "0", "HOME_ISH": "x"},
  ):
    env = environment.describe(native_kernels=False)
  assert env["variables"]["XLA_FLAGS"] == "--xla_cpu_foo"
  assert env["variables"]["CTJAX_NATIVE"] == "0"
  assert "HOME_ISH" not in env["variables"]


def test_native_kernels_say_why_they_are_off():
  with native.turned_off():
    env = environment.describe()
  assert env["native_kernels"].startswith("off: they are turned off")
  line = environment.summary(env)
  assert f"jax {jax.__version__}" in line
  assert f"numpy {np.__version__}" in line
  assert line.endswith(env["native_kernels"])
  assert line.startswith(f"{jax.default_backend()} (")
  assert env["cpu"] in line


def test_vector_isa_is_one_the_cpu_lists():
  isa = environment.cpu_vector_isa()
  if not os.path.exists("/proc/cpuinfo"):
    assert isa is None
    return
  with open("/proc/cpuinfo") as f:
    flags = f.read().split()
  assert isa in flags
  # Nothing wider that it skipped.
  wider = environment.VECTOR_ISAS[: environment.VECTOR_ISAS.index(isa)]
  assert not set(wider) & set(flags)
