"""Where a warm batch's time goes, and which engine settings are fastest on
this backend (issue 10; prepared for an accelerator, runs anywhere).

At the CIFAR-10 scale (L = 13, N = 50k, n = 10k, m = 500, D = 768; or
--shape), one fitted reference, in one process:

1. `CTReference.score`, split into its host and device phases: the padding
   copy on the host, the host-to-device transfer, the compiled score with
   the input already on the device, and the whole call.
2. The pure `ctjax.stats.score` under each setting of its static knobs
   (search "dense"/"tiled", ``tile_train``, layers "vmap"/"map", rank
   "merge"/"search"), each checked to count the same 2U as
   `CTReference.score`.
3. `jax.vmap(score)` over B device-resident batches, for several B:
   batches per second.
4. `CTReference.score_many` of --many host batches under each
   ``vectorize`` mode and chunk size: seconds per batch.

Every time is the median of --reps warm calls after one compiling call
(`consistency.warm`).

  python benchmarks/engine_knobs.py [--shape L,N,n,m,D] [--reps 10]
      [--json FILE]
"""

import argparse
import itertools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(
  0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
)
import ctjax  # noqa: E402
from ctjax import reference as ref_lib  # noqa: E402
from ctjax.stats import scoring  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from consistency import data, warm  # noqa: E402


def host_phases(ref, gen, reps):
  """`CTReference.score`'s phases, in seconds."""
  m = gen.shape[1]
  m_pad = ref_lib._pad_rows(m)
  tiles = ref._tiles(None)
  valid = np.arange(m_pad) < m
  padded = ref_lib._host_padded(gen, m_pad)
  on_device = jax.device_put(padded)
  valid_d = jax.device_put(valid)
  tau = 20 / m
  compiled = lambda: ref_lib._score_finite(
    ref.fitted, on_device, valid_d, tau, **tiles
  )
  unpadded = jax.device_put(gen)
  shape = (gen.shape[0], m_pad, gen.shape[2])
  out = {
    "host padding copy": warm(
      lambda: ref_lib._host_padded(gen, m_pad), reps=reps
    ),
    "host-to-device transfer": warm(lambda: jax.device_put(padded), reps=reps),
    "host-to-device transfer, unpadded": warm(
      lambda: jax.device_put(gen), reps=reps
    ),
    "padding on the device": warm(
      lambda: ref_lib._device_padded(unpadded, shape=shape, layer_major=False),
      reps=reps,
    ),
    "compiled score, input on the device": warm(compiled, reps=reps),
  }
  # The whole call with the batch padded on each side (`PAD_BATCH`).
  default = ref_lib.PAD_BATCH
  try:
    for where in ("host", "device"):
      ref_lib.PAD_BATCH = where
      out[f"whole CTReference.score, padded on the {where}"] = warm(
        lambda: ref.score(gen).ct, reps=reps
      )
  finally:
    ref_lib.PAD_BATCH = default
  return out


def knob_grid(ref, gen, want_u2, reps, n_train):
  """The pure score under each knob setting: seconds and same-2U flags."""
  g = jax.device_put(jnp.asarray(gen))
  tile_q = ref.config.tile_queries
  tiles = sorted({4096, 16384, 1 << (max(n_train, 2) - 1).bit_length()})
  rows = []
  for search, tile_train, layers, rank in itertools.product(
    ("dense", "tiled"), tiles, ("vmap", "map"), ("merge", "search")
  ):
    if search == "tiled" and tile_train > 16384:
      continue  # a CPU's search: large steps are not its regime
    kw = dict(
      search=search,
      tile_train=tile_train,
      tile_queries=tile_q,
      layers=layers,
      rank=rank,
    )
    fn = jax.jit(lambda f, x, kw=kw: scoring.score(f, x, **kw))
    try:
      out = fn(ref.fitted, g)
      same = bool(np.array_equal(np.asarray(out.u2, np.float64), want_u2))
      sec = warm(lambda fn=fn: fn(ref.fitted, g).ct, reps=reps)
    except Exception as e:  # e.g. out of memory: report and go on
      rows.append(dict(kw, error=f"{type(e).__name__}: {e}"[:200]))
      print(f"{kw}: {rows[-1]['error']}", flush=True)
      continue
    rows.append(dict(kw, seconds=sec, same_2u=same))
    print(
      f"search={search:5s} tile_train={tile_train:6d} layers={layers:4s} "
      f"rank={rank:6s}: {sec * 1e3:8.2f} ms, same 2U: {same}",
      flush=True,
    )
  return rows


def vmap_throughput(ref, gen, batches, reps):
  """Batches per second of `jax.vmap(score)` on device-resident input."""
  fn = jax.jit(jax.vmap(scoring.score, in_axes=(None, 0)))
  out = {}
  for b in batches:
    gs = jax.device_put(jnp.asarray(np.broadcast_to(gen, (b,) + gen.shape)))
    try:
      sec = warm(lambda gs=gs: fn(ref.fitted, gs).ct, reps=reps)
    except Exception as e:
      out[b] = f"{type(e).__name__}: {e}"[:200]
      print(f"vmap B={b}: {out[b]}", flush=True)
      continue
    out[b] = b / sec
    print(f"vmap(score) B={b}: {b / sec:,.0f} batches/s", flush=True)
  return out


def score_many_modes(ref, gen, n_batches, reps):
  """`CTReference.score_many` of ``n_batches`` host batches, seconds per
  batch, for each ``vectorize`` (None: the merged search, True: vmap,
  False: one after another) and chunk size (None: by the memory budget)."""
  gens = np.stack([gen] * n_batches)
  out = {}
  for vectorize, batch_size in itertools.product(
    (None, True, False), (None, 8, n_batches)
  ):
    name = f"vectorize={vectorize}, batch_size={batch_size}"
    run = lambda: (
      ref.score_many(gens, vectorize=vectorize, batch_size=batch_size).ct
    )
    try:
      out[name] = warm(run, reps=max(1, reps // 3)) / n_batches
    except Exception as e:
      out[name] = f"{type(e).__name__}: {e}"[:200]
      print(f"score_many {name}: {out[name]}", flush=True)
      continue
    print(f"score_many {name}: {out[name] * 1e3:.2f} ms per batch", flush=True)
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--shape", default="13,50000,10000,500,768")
  ap.add_argument("--reps", type=int, default=10)
  ap.add_argument("--batches", default="16,64,256")
  ap.add_argument(
    "--many", type=int, default=64, help="batches for score_many's modes"
  )
  ap.add_argument("--json", help="write the results here")
  args = ap.parse_args()
  shape = tuple(int(v) for v in args.shape.split(","))
  print(
    f"{jax.devices()[0].device_kind} ({jax.default_backend()}), jax "
    f"{jax.__version__}, L,N,n,m,D={shape}",
    flush=True,
  )
  train, test, gen = data(shape)
  t = time.perf_counter()
  ref = ctjax.CTReference.fit(train, test)
  print(f"fit with compilation: {time.perf_counter() - t:.1f} s", flush=True)
  want_u2 = np.asarray(ref.score(gen).u, np.float64) * 2
  phases = host_phases(ref, gen, args.reps)
  for k, v in phases.items():
    print(f"{k}: {v * 1e3:.2f} ms", flush=True)
  grid = knob_grid(ref, gen, want_u2, args.reps, shape[1])
  throughput = vmap_throughput(
    ref, gen, [int(b) for b in args.batches.split(",")], args.reps
  )
  many = score_many_modes(ref, gen, args.many, args.reps)
  if args.json:
    with open(args.json, "w") as fh:
      json.dump(
        dict(
          shape=shape,
          device=str(jax.devices()[0]),
          phases_s=phases,
          knobs=grid,
          vmap_batches_per_s={str(k): v for k, v in throughput.items()},
          score_many_s_per_batch=many,
        ),
        fh,
        indent=1,
      )


if __name__ == "__main__":
  main()
