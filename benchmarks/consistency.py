"""Do all scoring paths count the same 2U on this backend? (issue 10)

On a CPU every path (`CTReference.score`, the pure `ctjax.stats.score`,
`jax.vmap` of it, `score_merged`, `score_many`) gives the same exact 2U per
cell; the tests check it. On a GPU, a matrix product may be computed by
another kernel for another number of rows, so a query's projection can
differ in its last bits between a batch of 500, the same batch padded to
512, and 8 batches vmapped together; distances then differ at rounding level
and can flip a Mann-Whitney comparison. This script fits one reference per
projection setting (`ctjax.stats.pca.PROJECTION`: "dot", a matrix product;
"reduce", a row reduction in a fixed order) and reports, per path, whether
the projected queries are bitwise equal to the single batch's and how many
cells' 2U differ from `CTReference.score`'s, with the warm time of the pure
score.

  python benchmarks/consistency.py [--shape L,N,n,m,D] [--batches 8]
"""

import argparse
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
from ctjax.stats import pca as pca_lib  # noqa: E402
from ctjax.stats import scoring  # noqa: E402


def data(shape, seed=0):
  """Clustered synthetic layers (half of gen copies train, slightly moved)."""
  n_layers, n_train, n_test, m, dim = shape
  rng = np.random.default_rng(seed)
  centers = rng.standard_normal((n_layers, 30, dim), np.float32) * 3

  def draw(k):
    x = rng.standard_normal((n_layers, k, dim), np.float32)
    pick = rng.integers(0, 30, (n_layers, k))
    return x + np.take_along_axis(centers, pick[..., None], axis=1)

  train, test, gen = draw(n_train), draw(n_test), draw(m)
  gen[:, : m // 2] = train[:, : m // 2] + 0.05 * rng.standard_normal(
    (n_layers, m // 2, dim), np.float32
  )
  return train, test, gen


def warm(fn, *a, reps=5):
  jax.block_until_ready(fn(*a))
  ts = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn(*a))
    ts.append(time.perf_counter() - t)
  return float(np.median(ts))


def one_setting(projection, train, test, gen, n_batches):
  jax.clear_caches()
  pca_lib.PROJECTION = projection
  n_layers, m = gen.shape[:2]
  t = time.perf_counter()
  ref = ctjax.CTReference.fit(train, test)
  fit_s = time.perf_counter() - t
  f, c = ref.fitted, ref.config
  kw = dict(tile_queries=c.tile_queries, tile_train=c.tile_train)
  kw["search"] = c.search
  res = ref.score(gen)
  want = np.asarray(res.u, np.float64) * 2  # [L, k]
  gens = np.stack([gen] * n_batches)
  g = jnp.asarray(gen)
  m_pad = -(-m // 128) * 128
  g_pad = jnp.asarray(np.pad(gen, ((0, 0), (0, m_pad - m), (0, 0))))
  valid_pad = jnp.arange(m_pad) < m

  # Projections of the same queries under three shapes.
  proj = jax.jit(lambda f, x, v: scoring.project_layers(f, x, v)[0])
  p_single = np.asarray(proj(f, g, jnp.ones(m, bool)))
  p_padded = np.asarray(proj(f, g_pad, valid_pad))[:, :m]
  p_vmap = np.asarray(
    jax.jit(jax.vmap(proj, in_axes=(None, 0, None)))(
      f, jnp.asarray(gens), jnp.ones(m, bool)
    )
  )[n_batches - 1]

  pure = jax.jit(lambda f, x: scoring.score(f, x, **kw))
  many = jax.jit(jax.vmap(lambda f, x: scoring.score(f, x, **kw), (None, 0)))
  gl = jnp.asarray(np.swapaxes(gens, 0, 1))
  vb = jnp.ones((n_batches, m), bool)
  merged = jax.jit(lambda f, x: scoring.score_merged(f, x, vb, **kw))
  paths = {
    "pure score": lambda: np.asarray(pure(f, g).u2, np.float64),
    "pure score, padded": lambda: np.asarray(
      jax.jit(lambda f, x, v: scoring.score(f, x, valid=v, **kw))(
        f, g_pad, valid_pad
      ).u2,
      np.float64,
    ),
    f"vmap(score) B={n_batches}": lambda: np.asarray(
      many(f, jnp.asarray(gens)).u2, np.float64
    )[-1],
    f"score_merged B={n_batches}": lambda: np.asarray(
      merged(f, gl).u2, np.float64
    )[-1],
    f"score_many B={n_batches}": lambda: (
      np.asarray(ref.score_many(gens).u, np.float64) * 2
    )[-1],
  }
  out = dict(
    projection=pca_lib.resolve_projection(),
    fit_s_with_compile=fit_s,
    ct=np.asarray(res.ct).tolist(),
    projection_bitwise={
      "padded == single": bool(np.array_equal(p_padded, p_single)),
      "vmapped == single": bool(np.array_equal(p_vmap, p_single)),
      "max |padded - single|": float(np.abs(p_padded - p_single).max()),
      "max |vmapped - single|": float(np.abs(p_vmap - p_single).max()),
    },
    u2_cells_differing_from_ref_score={
      name: int(np.sum(fn() != want)) for name, fn in paths.items()
    },
    warm_pure_score_s=warm(pure, f, g),
    warm_vmap_per_batch_s=warm(many, f, jnp.asarray(gens)) / n_batches,
  )
  if jax.default_backend() != "cpu":
    cpu = jax.devices("cpu")[0]
    on_cpu = jax.jit(scoring.score)(
      jax.device_put(f, cpu), jax.device_put(g, cpu)
    )
    out["u2_cells_differing_host_cpu"] = int(
      np.sum(np.asarray(on_cpu.u2, np.float64) != want)
    )
  print(json.dumps(out, indent=1), flush=True)
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--shape", default="4,50000,10000,500,768")
  ap.add_argument("--batches", type=int, default=8)
  ap.add_argument("--settings", default="dot,reduce")
  ap.add_argument("--json", help="write the results here")
  args = ap.parse_args()
  shape = tuple(int(v) for v in args.shape.split(","))
  print(
    f"{jax.devices()[0].device_kind}, jax {jax.__version__}, L,N,n,m,D={shape}",
    flush=True,
  )
  train, test, gen = data(shape)
  setting = pca_lib.PROJECTION
  try:
    results = [
      one_setting(s, train, test, gen, args.batches)
      for s in args.settings.split(",")
    ]
  finally:  # the process-wide setting as it was (tests call main in-process)
    pca_lib.PROJECTION = setting
  if args.json:
    with open(args.json, "w") as fh:
      json.dump(
        dict(shape=shape, device=str(jax.devices()[0]), results=results),
        fh,
        indent=1,
      )


if __name__ == "__main__":
  main()
