"""Scale benchmark: score time and memory vs |T|, and 1 / 2 / 8 devices.

  python benchmarks/bench_scale.py                 # the full table
  python benchmarks/bench_scale.py --sizes 10000 100000 --devices 1 2

Every configuration runs in a fresh subprocess (XLA_FLAGS sets the number of
simulated CPU devices; peak RSS is per process). A reference is built with
`CTReference.fit_streaming` on |T| projected-size points (64 dims, PCA to 64,
k-means on a 20,000-point sample) and a batch of m generated points is scored:
the warm time is the median of ``--repeats`` calls after one warm-up call.

Columns:
  score_s     warm score time of one batch (seconds)
  per_1e5     score time per 10^5 training points (flat = linear growth)
  nn_tmp_MiB  XLA temporary buffers of the compiled nearest-neighbour search
              (one layer) with the budgeted tiles: the working set the budget
              bounds
  ref_MiB     size of the reference's arrays
  rss_MiB     peak resident memory of the whole process (data generation,
              fit and score included)

On a CPU host, simulated devices share the same cores: they show that the
sharded path works and what it costs, not a speed-up.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _one(args):
  """Runs one configuration in this process; prints a JSON line."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  sys.path.insert(0, _ROOT)
  import ctjax  # pylint: disable=g-import-not-at-top
  from ctjax import sharding  # pylint: disable=g-import-not-at-top
  from ctjax.stats import neighbors as nb  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  d, k = 64, 10
  centers = rng.normal(size=(k, d)).astype(np.float32) * 3

  def sample(count, chunk=100_000):
    out = np.empty((1, count, d), np.float32)
    for s in range(0, count, chunk):
      c = min(chunk, count - s)
      out[0, s : s + c] = centers[rng.integers(0, k, c)] + rng.normal(
        size=(c, d)
      ).astype(np.float32)
    return out

  n_train = args.one
  train = sample(n_train)
  test = sample(args.n_test)
  gen = sample(args.m)
  mesh = sharding.make_mesh() if args.mesh else None
  t0 = time.perf_counter()
  ref = ctjax.CTReference.fit_streaming(
    train,
    test,
    n_components=d,
    n_cells=k,
    n_init=3,
    sample_size=20_000,
    chunk_size=65_536,
    memory_budget=args.budget,
    mesh=mesh,
  )
  fit_s = time.perf_counter() - t0
  del train
  cfg = ref.config
  index = jax.tree_util.tree_map(lambda x: x[0], ref.fitted.index)
  ref.score(gen, mesh=mesh)  # warm-up
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    res = ref.score(gen, mesh=mesh)
    times.append(time.perf_counter() - t0)
  # Working set of the search alone, from XLA's buffer assignment.
  search = jax.jit(
    lambda i, q, c: nb.nearest_in_cell(
      i, q, c, tile_queries=cfg.tile_queries, tile_train=cfg.tile_train
    )
  )
  q = jnp.zeros((args.m, d), jnp.float32)
  mem = (
    search.lower(index, q, jnp.zeros(args.m, jnp.int32))
    .compile()
    .memory_analysis()
  )
  tmp = getattr(mem, "temp_size_in_bytes", None) if mem is not None else None
  ref_bytes = sum(
    np.asarray(v).nbytes for v in jax.tree_util.tree_leaves(ref.fitted)
  )
  print(
    json.dumps(
      dict(
        n_train=n_train,
        devices=jax.device_count(),
        mesh=bool(args.mesh),
        fit_s=fit_s,
        score_s=statistics.median(times),
        tile_queries=cfg["tile_queries"],
        tile_train=cfg["tile_train"],
        nn_tmp=tmp,
        ref_bytes=ref_bytes,
        ct=float(res.ct[0]),
        rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      )
    )
  )


def _spawn(n_train, devices, mesh, args):
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
  )
  cmd = [
    sys.executable,
    os.path.abspath(__file__),
    "--one",
    str(n_train),
    "--m",
    str(args.m),
    "--n-test",
    str(args.n_test),
    "--budget",
    str(args.budget),
    "--repeats",
    str(args.repeats),
  ]
  if mesh:
    cmd.append("--mesh")
  out = subprocess.run(
    cmd, env=env, capture_output=True, text=True, check=False
  )
  if out.returncode:
    raise RuntimeError(f"{cmd} failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def _mib(x):
  return "-" if x is None else f"{x / 2**20:.1f}"


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument(
    "--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000]
  )
  p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 8])
  p.add_argument(
    "--device-size",
    type=int,
    default=100_000,
    help="|T| for the device comparison",
  )
  p.add_argument("--m", type=int, default=500, help="generated batch size")
  p.add_argument("--n-test", type=int, default=2000)
  p.add_argument(
    "--budget",
    type=int,
    default=8 << 20,
    help="nearest-neighbour tile budget (bytes)",
  )
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--one", type=int, help=argparse.SUPPRESS)
  p.add_argument("--mesh", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.one:
    return _one(args)

  print(
    f"m = {args.m} generated, n = {args.n_test} test, d = 64, k = 10, "
    f"budget = {_mib(args.budget)} MiB; {os.cpu_count()} CPU cores"
  )
  print("\n|T| scaling (one device, no mesh)")
  head = (
    f"{'|T|':>9} {'tiles':>10} {'fit_s':>7} {'score_s':>8} "
    f"{'per_1e5':>8} {'nn_tmp_MiB':>10} {'ref_MiB':>8} {'rss_MiB':>8}"
  )
  print(head)
  rows = []
  for n in args.sizes:
    r = _spawn(n, 1, False, args)
    rows.append(r)
    print(
      f"{n:>9} {r['tile_queries']:>4}x{r['tile_train']:<5} "
      f"{r['fit_s']:>7.2f} {r['score_s']:>8.4f} "
      f"{r['score_s'] / n * 1e5:>8.4f} {_mib(r['nn_tmp']):>10} "
      f"{_mib(r['ref_bytes']):>8} {_mib(r['rss']):>8}",
      flush=True,
    )
  for a, b in zip(rows, rows[1:]):
    print(
      f"  x{b['n_train'] / a['n_train']:.0f} |T| -> score time "
      f"x{b['score_s'] / a['score_s']:.1f}"
    )

  print(f"\nsimulated devices, |T| = {args.device_size}")
  print(
    f"{'devices':>8} {'mesh':>5} {'score_s':>8} {'fit_s':>7} "
    f"{'rss_MiB':>8} {'C_T':>9}"
  )
  base = None
  for s in args.devices:
    for mesh in (False, True) if s == 1 else (True,):
      r = _spawn(args.device_size, s, mesh, args)
      base = base if base is not None else r["score_s"]
      print(
        f"{s:>8} {'yes' if mesh else 'no':>5} {r['score_s']:>8.4f} "
        f"{r['fit_s']:>7.2f} {_mib(r['rss']):>8} {r['ct']:>9.5f}  "
        f"(x{r['score_s'] / base:.2f} vs 1 device)",
        flush=True,
      )


if __name__ == "__main__":
  main()
