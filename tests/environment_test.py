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


def test_cpu_generation_reads_vendor_family_and_model():
  info = {"vendor_id": "AuthenticAMD", "cpu family": "26", "model": "2"}
  assert environment.cpu_generation(info) == "AuthenticAMD family 26 model 2"
  assert environment.cpu_generation({"model name": "AMD EPYC"}) is None


def test_cpu_caches_read_a_sysfs_tree(tmp_path):
  for i, (level, kind, size) in enumerate(
    [
      ("1", "Data", "48K"),
      ("1", "Instruction", "32K"),
      ("2", "Unified", "1024K"),
    ]
  ):
    d = tmp_path / f"index{i}"
    d.mkdir()
    (d / "level").write_text(level + "\n")
    (d / "type").write_text(kind + "\n")
    (d / "size").write_text(size + "\n")
  (tmp_path / "uevent").write_text("")  # not a cache: skipped
  assert environment.cpu_caches(str(tmp_path)) == {
    "L1d": "48K",
    "L1i": "32K",
    "L2": "1024K",
  }
  assert environment.cpu_caches(str(tmp_path / "missing")) == {}


def test_summary_names_generation_and_l2():
  env = environment.describe(native_kernels=False)
  env.update(
    cpu="AMD EPYC",
    cpu_vector_isa="avx512f",
    cpu_generation="AuthenticAMD family 26 model 2",
    cpu_caches={"L2": "1024K"},
  )
  assert (
    "on AMD EPYC (avx512f; AuthenticAMD family 26 model 2; L2 1024K), "
    in environment.summary(env)
  )
  env.update(cpu_vector_isa=None, cpu_generation=None, cpu_caches={})
  assert "on AMD EPYC, " in environment.summary(env)
