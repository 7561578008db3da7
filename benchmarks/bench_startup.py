"""Start-up cost of run.py against a bare `import jax`, in one run.

  python benchmarks/bench_startup.py [--repeats 3]

Times, as fresh interpreters (median wall seconds of --repeats runs):
  import jax             python -c "import jax" (the floor)
  run.py --help
  score (fit)            run.py score on tiny embedding files, fitting
  score (reuse)          the same again, reusing the reference in --out
and prints each one's difference to and ratio over the bare import, and
whether transformers or torch were imported (they should not be: embedding
inputs need no encoder). The goal (issue 11): score on embedding files at
most 2 s above the bare JAX import; --help no slower than the import.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs run.py as __main__ and reports, at exit, the heavy modules it loaded.
_PROBE = (
  "import atexit, runpy, sys\n"
  "def _report():\n"
  "  heavy = [m for m in ('transformers', 'torch', 'flax') if m in sys.modules]\n"
  "  sys.stderr.write('HEAVY:' + ','.join(heavy) + '\\n')\n"
  "atexit.register(_report)\n"
  "sys.argv = sys.argv[1:]\n"
  "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def _time(cmd, cwd, env, ok=(0,)):
  t0 = time.perf_counter()
  r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
  dt = time.perf_counter() - t0
  if r.returncode not in ok:
    raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
  heavy = ""
  for line in r.stderr.splitlines():
    if line.startswith("HEAVY:"):
      heavy = line[len("HEAVY:") :] or "-"
  return dt, heavy


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args()
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  with tempfile.TemporaryDirectory() as d:
    rng = np.random.default_rng(0)
    for name, n in (("train", 200), ("test", 100), ("gen", 100)):
      x = rng.normal(size=(3, n, 16)).astype(np.float32)
      np.savez(os.path.join(d, f"{name}.npz"), embeddings=x)
    score = ["score"] + [
      f"--{k}={os.path.join(d, k + '.npz')}" for k in ("train", "test", "gen")
    ]
    score += ["--n_cells=5", "--cache_dir=", f"--out={os.path.join(d, 'o')}"]
    probe = [sys.executable, "-c", _PROBE, os.path.join(ROOT, "run.py")]
    rows = {
      "import jax": [sys.executable, "-c", "import jax"],
      "run.py --help": probe + ["--help"],
      "score (fit)": probe + score,
      "score (reuse)": probe + score,
    }
    times = {k: [] for k in rows}
    heavy = {}
    for _ in range(args.repeats):
      # Interleaved, so load on a shared machine hits every row alike.
      for name, cmd in rows.items():
        if name == "score (fit)":
          ref = os.path.join(d, "o", "reference.npz")
          if os.path.exists(ref):
            os.remove(ref)
        dt, h = _time(cmd, d, env, ok=(0, 1) if "--help" in cmd else (0,))
        times[name].append(dt)
        heavy[name] = h
  base = statistics.median(times["import jax"])
  print(f"{'command':<16} {'median s':>9} {'- jax s':>8} {'/ jax':>6}  heavy")
  for name, ts in times.items():
    m = statistics.median(ts)
    print(
      f"{name:<16} {m:9.2f} {m - base:8.2f} {m / base:6.2f}  "
      f"{heavy.get(name) or ''}"
    )


if __name__ == "__main__":
  main()
