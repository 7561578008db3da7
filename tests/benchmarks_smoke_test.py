"""The device-run scripts work before a device is spent on them.

`benchmarks/device_ct.sh` runs `benchmarks/consistency.py` and the pure /
cross-backend checks of `benchmarks/bench_ct.py` on an accelerator, where a
broken script wastes minutes of lent time. Tiny shapes on this CPU.
"""

import importlib.util
import json
import os

import numpy as np
import pytest

import ctjax
from ctjax.stats import pca as pca_lib

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _load(name):
  path = os.path.join(ROOT, "benchmarks", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"bench_{name}_mod", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.fixture(scope="module")
def small():
  bench = _load("bench_ct")
  train, test, gen = bench.synthetic(
    np.random.default_rng(0), 2, 800, 200, 60, 16
  )
  ref = ctjax.CTReference.fit(train, test, n_components=8, n_cells=4)
  return bench, ref, gen, ref.score(gen)


def test_consistency_script_counts_the_same_2u(tmp_path, monkeypatch):
  mod = _load("consistency")
  out = tmp_path / "c.json"
  monkeypatch.setattr(
    "sys.argv",
    [
      "consistency.py",
      "--shape",
      "2,600,200,200,16",
      "--batches",
      "2",
      "--settings",
      "dot",
      "--json",
      str(out),
    ],
  )
  before = pca_lib.PROJECTION
  mod.main()
  # The script sets the process-wide projection per setting; it must leave
  # it as it found it (tests after this one in the worker read the default).
  assert pca_lib.PROJECTION == before
  (res,) = json.loads(out.read_text())["results"]
  assert res["projection"] == "dot"
  assert set(res["u2_cells_differing_from_ref_score"].values()) == {0}
  assert all(v for k, v in res["projection_bitwise"].items() if "==" in k)


def test_pure_device_rows_agree_with_score(small):
  bench, ref, gen, res = small
  gens = np.stack([gen, gen])
  out = bench.pure_device(ref, gen, gens, res.ct, reps=1)
  assert len(out) >= 3
  for row in out.values():
    assert row["max_ct_err"] < 1e-5
    assert row["s_per_batch"] > 0


def test_host_cpu_check(small):
  bench, ref, gen, res = small
  out = bench.same_on_host_cpu(ref, gen, res)
  assert out["u2_equal"] and out["u2_cells_differing"] == 0
  assert out["max_ct_diff"] < 1e-5


def test_engine_knobs_phases_and_throughput(small):
  _, ref, gen, _ = small
  knobs = _load("engine_knobs")
  phases = knobs.host_phases(ref, gen, reps=1)
  assert set(phases) == {
    "host padding copy",
    "host-to-device transfer",
    "host-to-device transfer, unpadded",
    "padding on the device",
    "compiled score, input on the device",
    "whole CTReference.score, padded on the host",
    "whole CTReference.score, padded on the device",
  }
  from ctjax import reference  # pylint: disable=g-import-not-at-top

  assert reference.PAD_BATCH == "auto"  # restored
  assert all(v > 0 for v in phases.values())
  out = knobs.vmap_throughput(ref, gen, [2], reps=1)
  assert out[2] > 0


def test_engine_knobs_score_many_modes(small):
  _, ref, gen, _ = small
  knobs = _load("engine_knobs")
  out = knobs.score_many_modes(ref, gen, 2, reps=1)
  assert len(out) == 9
  assert all(isinstance(v, float) and v > 0 for v in out.values())
