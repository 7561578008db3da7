"""Cost of bootstrap intervals on C_T against one warm score (issue 13).

Synthetic clustered embeddings at the CIFAR-10 scale of bench_ct.py: L = 13
layers, N = 50,000 train, n = 10,000 test, m = 500 generated, D = 768,
float32. In one process, after compiling each call once:

  * a warm `CTReference.score(gen)` (the baseline);
  * a warm `CTReference.score(gen, n_bootstrap=B, bootstrap=mode)` for each
    mode ("gen", "test", "gen+test"), whose extra time over the baseline is
    the bootstrap's overhead (the goal: B = 1000 adds at most one warm
    score's time).

The timings are medians of --reps calls, the calls interleaved so that a
change of machine load hits each alike. The fit (k-means restarts
--n-init, default 2: the fit is not what is measured) is timed once.
Usage:

  python benchmarks/bench_bootstrap.py           # CIFAR-10 scale
  python benchmarks/bench_bootstrap.py --quick   # small shapes, a smoke run
"""

import argparse
import json
import os
import time

import jax
import numpy as np
from tqdm import tqdm

import ctjax
from ctjax.stats import bootstrap as bootstrap_lib


def synthetic(rng, n_layers, n_train, n_test, m, dim, n_clusters=30):
  """``(train [L, N, D], test [L, n, D], gen [L, m, D])``: a mixture per
  layer; a tenth of gen are noisy copies of training points."""
  train = np.empty((n_layers, n_train, dim), np.float32)
  test = np.empty((n_layers, n_test, dim), np.float32)
  gen = np.empty((n_layers, m, dim), np.float32)
  for l in range(n_layers):
    centers = rng.standard_normal((n_clusters, dim), np.float32) * 3
    for out in (train[l], test[l], gen[l]):
      out[:] = rng.standard_normal(out.shape, np.float32)
      out += centers[rng.integers(0, n_clusters, len(out))]
    k = m // 10
    gen[l, :k] = train[l, :k] + 0.05 * rng.standard_normal((k, dim))
  return train, test, gen


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="small shapes")
  p.add_argument("--layers", type=int, default=13)
  p.add_argument("--n-train", type=int, default=50_000)
  p.add_argument("--n-test", type=int, default=10_000)
  p.add_argument("--m", type=int, default=500)
  p.add_argument("--dim", type=int, default=768)
  p.add_argument("--n-bootstrap", type=int, default=1000)
  p.add_argument("--n-init", type=int, default=2)
  p.add_argument("--reps", type=int, default=5)
  p.add_argument("--json", help="also write the numbers to this file")
  a = p.parse_args()
  if a.quick:
    a.layers, a.n_train, a.n_test, a.dim = 3, 5_000, 1_000, 64
    a.reps = min(a.reps, 3)
  rng = np.random.default_rng(0)
  train, test, gen = synthetic(rng, a.layers, a.n_train, a.n_test, a.m, a.dim)
  shape = (
    f"L={a.layers} N={a.n_train} n={a.n_test} m={a.m} D={a.dim} "
    f"B={a.n_bootstrap}"
  )
  print(f"{shape}; backend {jax.default_backend()}, load {os.getloadavg()}")
  t = time.perf_counter()
  ref = ctjax.CTReference.fit(train, test, n_init=a.n_init, seed=0)
  jax.block_until_ready(ref.fitted)
  print(f"fit: {time.perf_counter() - t:.1f} s")

  def plain():
    return ref.score(gen).ct

  def boot(mode):
    return lambda: (
      ref.score(gen, n_bootstrap=a.n_bootstrap, bootstrap=mode, seed=1).ct_boot
    )

  rows = {}
  calls = [("score", plain)] + [
    (f"score + bootstrap {mode}", boot(mode)) for mode in bootstrap_lib.MODES
  ]
  for name, f in calls:  # compile
    t = time.perf_counter()
    jax.block_until_ready(f())
    rows[name] = dict(first_s=time.perf_counter() - t, times=[])
  # Interleaved repetitions, so a change of machine load hits every call.
  for _ in tqdm(range(a.reps), desc="timing"):
    for name, f in calls:
      t = time.perf_counter()
      jax.block_until_ready(f())
      rows[name]["times"].append(time.perf_counter() - t)
  for r in rows.values():
    r["warm_s"] = float(np.median(r["times"]))
  base = rows["score"]["warm_s"]
  print(f"\n{'call':<28} {'first (s)':>10} {'warm (s)':>9} {'overhead':>9}")
  for name, r in rows.items():
    over = r["warm_s"] - base
    r["overhead_s"] = over
    r["overhead_over_score"] = over / base
    print(
      f"{name:<28} {r['first_s']:>10.3f} {r['warm_s']:>9.3f} "
      f"{over / base:>8.2f}x"
    )
  print(
    f"\nwarm score {base:.3f} s; bootstrap overhead (B={a.n_bootstrap}) in "
    "warm scores: "
    + ", ".join(
      f"{m}: {rows[f'score + bootstrap {m}']['overhead_over_score']:.2f}"
      for m in bootstrap_lib.MODES
    )
    + f"; load after: {os.getloadavg()}"
  )
  if a.json:
    with open(a.json, "w") as fh:
      json.dump(dict(shape=shape, rows=rows), fh, indent=1)


if __name__ == "__main__":
  main()
