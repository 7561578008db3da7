"""k-means with k-means++ seeding and restarts, under jit.

Restarts run one after another (`lax.map` over PRNG keys, so none waits for
the slowest as in a `vmap`) and the run of lowest inertia wins (as in
scikit-learn's ``n_init``). Lloyd iterations run in a `while_loop` until the
squared centre shift falls below ``tol`` times the mean per-feature variance
(scikit-learn's criterion) or ``max_iter`` is reached. Cluster sums use
`cluster_sums` (a scatter-add on a CPU, a one-hot product on an
accelerator, where float scatter-adds are atomic and change their order
from run to run); every buffer has a static shape. Distances use the shared
fast form of `ctjax.stats.distances`.

On a CPU where ctjax's kernels build, the seeding and the Lloyd iterations
of all restarts run in compiled kernels instead (`resolve_lloyd`,
`native.kmeans_plus_plus`, `native.lloyd`): the same random draws and rules
(distances in the same form, ties to the lowest centre, the same stopping
and empty-cell rules), with each pass over x shared by every restart still
running and the cell sums added in float64 across chunks of 4,096 rows.
The final labels are computed in XLA as before.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from ctjax.stats import distances, native


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["centers", "labels", "inertia", "n_iter"],
  meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class KMeans:
  """A k-means fit.

  Attributes:
    centers: ``[k, d]`` cluster centres.
    labels: ``[N]`` int32 cell of every training point.
    inertia: ``[]`` sum of squared distances to the assigned centre.
    n_iter: ``[]`` Lloyd iterations run by the winning restart.
  """

  centers: jax.Array
  labels: jax.Array
  inertia: jax.Array
  n_iter: jax.Array


def sq_distances(
  x: jax.Array, centers: jax.Array, x_sq: jax.Array | None = None
) -> jax.Array:
  """Squared Euclidean distances ``[n, k]`` between ``x [n, d]`` and
  ``centers [k, d]`` (``x_sq [n]``: ‖x‖², if known)."""
  return distances.sq_l2(x, centers, x_sq)


def assign(x: jax.Array, centers: jax.Array) -> jax.Array:
  """Index ``[n]`` (int32) of the nearest centre for each row of ``x [n, d]``."""
  return jnp.argmin(sq_distances(x, centers), axis=1).astype(jnp.int32)


_BLOCK = 256  # points per block of the two-level D² sampling


def _count_le(sums, values):
  """Per value, how many of the non-decreasing ``sums`` (``[s]``, or one row
  ``[t, s]`` per value) are <= it: ``searchsorted(sums, values,
  side="right")``, int32 ``[t]``."""
  sums = jnp.broadcast_to(sums, values.shape + sums.shape[-1:])
  return jnp.sum(sums <= values[:, None], axis=1, dtype=jnp.int32)


def _sample_d2(u, weights):
  """Indices ``[trials]`` drawn with probability proportional to ``weights
  [n]`` (>= 0; uniform when they sum to 0) by the uniforms ``u [trials]``,
  by inverting the cumulative sum.

  Two levels, so no cumulative sum runs over all n points (XLA's CPU scan of
  50,000 values costs more than the rest of a seeding step): the block of
  each draw is found from the ``n / _BLOCK`` block totals, then the point
  within that block from its own ``_BLOCK`` running sums.
  """
  n = weights.shape[0]
  n_blocks = -(-n // _BLOCK)
  w = jnp.pad(jnp.maximum(weights, 0.0), (0, n_blocks * _BLOCK - n))
  w = w.reshape(n_blocks, _BLOCK)
  block_cum = jnp.cumsum(jnp.sum(w, axis=1))
  total = block_cum[-1]
  u = u.astype(w.dtype)
  # All weights zero (every point on a centre): uniform over the n points.
  uniform = jnp.floor(u * n).astype(jnp.int32)
  target = u * total
  # searchsorted(side="right") into the non-decreasing running sums, as a
  # count of the sums <= the target: one fused compare-and-sum (the binary
  # search is a loop of small kernels, slower to compile, and no faster).
  block = jnp.clip(_count_le(block_cum, target), 0, n_blocks - 1)
  w_block = w[block]  # [trials, _BLOCK]
  within = target - (block_cum[block] - jnp.sum(w_block, axis=1))
  pos = _count_le(jnp.cumsum(w_block, axis=1), within)
  # Rounding can put a draw past its block's last positive weight: take the
  # last point of the block with positive weight instead.
  last = _BLOCK - 1 - jnp.argmax(w_block[:, ::-1] > 0, axis=1)
  idx = block * _BLOCK + jnp.minimum(pos, last)
  idx = jnp.where(total > 0, idx, uniform)
  return jnp.clip(idx, 0, n - 1)


def _seed_draws(key, n, k, dtype):
  """The random numbers of one restart's k-means++: the first centre's row
  ``[]`` and the uniforms ``[k - 1, trials]`` of steps 1..k-1."""
  trials = 2 + int(math.log(k))
  key, sub = jax.random.split(key)
  first = jax.random.randint(sub, (), 0, n)

  def step(key, _):
    key, sub = jax.random.split(key)
    return key, jax.random.uniform(sub, (trials,), dtype)

  _, u = jax.lax.scan(step, key, None, length=k - 1)
  return first, u


def _kmeans_plus_plus(first, u, x, x_sq, k):
  """Greedy k-means++ (several candidates per step, keep the best potential)
  from one restart's `_seed_draws`."""
  centers = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[first])
  if k == 1:  # no draws (u is [0, trials])
    return centers
  closest = sq_distances(x, x[first][None], x_sq)[:, 0]

  def body(i, carry):
    centers, closest = carry
    cand = _sample_d2(u[i - 1], closest)
    d_cand = sq_distances(x, x[cand], x_sq)  # [n, trials]
    new_closest = jnp.minimum(closest[:, None], d_cand)
    best = jnp.argmin(jnp.sum(new_closest, axis=0))
    centers = centers.at[i].set(x[cand[best]])
    return centers, new_closest[:, best]

  centers, _ = jax.lax.fori_loop(1, k, body, (centers, closest))
  return centers


# How `cluster_sums` adds: "scatter", "onehot" or "auto" (by backend).
SUMS = "auto"


def cluster_sums(x, labels, k: int, *, method: str | None = None):
  """Sum of the rows of ``x [N, d]`` in each cluster: ``[k, d]``.

  Args:
    x: ``[N, d]`` points.
    labels: ``[N]`` int cluster of each point (in ``[0, k)``).
    k: clusters.
    method: "scatter" (`jax.ops.segment_sum`: a CPU adds in row order),
      "onehot" (the ``[k, N]`` one-hot matrix times ``x``: one matrix
      product, the same bits on every run on a GPU, where a float
      scatter-add is atomic and its order, so its rounding, varies from run
      to run, and the seeded fit with it), or ``None``: `SUMS` ("auto":
      "scatter" on a CPU, "onehot" elsewhere).
  """
  method = SUMS if method is None else method
  if method == "auto":
    method = "scatter" if jax.default_backend() == "cpu" else "onehot"
  if method == "scatter":
    return jax.ops.segment_sum(x, labels, num_segments=k)
  if method != "onehot":
    raise ValueError(
      f"method must be 'auto', 'scatter' or 'onehot', got {method!r}"
    )
  onehot = (labels[None, :] == jnp.arange(k)[:, None]).astype(x.dtype)
  return jnp.matmul(onehot, x, precision=jax.lax.Precision.HIGHEST)


def _lloyd(x, x_sq, centers, max_iter, tol_abs):
  """Lloyd iterations from ``centers``; returns (centres, n_iter)."""
  k = centers.shape[0]

  def update(centers):
    d2 = sq_distances(x, centers, x_sq)
    labels = jnp.argmin(d2, axis=1)
    sums = cluster_sums(x, labels, k)
    # Sums of ones are exact in any order (N < 2^24).
    counts = jax.ops.segment_sum(jnp.ones_like(x_sq), labels, num_segments=k)
    new = sums / jnp.maximum(counts, 1.0)[:, None]
    empty = counts == 0

    def refill(new):
      # An empty cluster is moved onto one of the points farthest from their
      # centres (one distinct point per empty cluster), as scikit-learn does.
      far = jax.lax.top_k(jnp.min(d2, axis=1), k)[1]
      # rank = cumsum(empty) - 1, as a [k, k] masked sum (fewer kernels).
      below = jnp.arange(k)[None, :] <= jnp.arange(k)[:, None]
      rank = jnp.sum(below & empty[None, :], axis=1) - 1
      return jnp.where(empty[:, None], x[far[jnp.clip(rank, 0, k - 1)]], new)

    # The O(N log k) top_k runs only in the rare step that left a cell empty.
    return jax.lax.cond(jnp.any(empty), refill, lambda new: new, new)

  def cond(state):
    _, shift, it = state
    return (it < max_iter) & (shift > tol_abs)

  def body(state):
    centers, _, it = state
    new = update(centers)
    return new, jnp.sum((new - centers) ** 2), it + 1

  init = (centers, jnp.array(jnp.inf, x.dtype), jnp.array(0, jnp.int32))
  centers, _, n_iter = jax.lax.while_loop(cond, body, init)
  return centers, n_iter


def kmeans(
  x: jax.Array,
  k: int,
  key: jax.Array,
  *,
  n_init: int = 10,
  max_iter: int = 300,
  tol: float = 1e-4,
  lloyd: str | None = None,
) -> KMeans:
  """k-means on ``x [N, d]`` into ``k`` cells.

  Jit-compiled (k, n_init, max_iter static); callable inside other jits.

  Args:
    x: ``[N, d]`` points.
    k: number of cells.
    key: PRNG key; restart i uses ``split(key, n_init)[i]``.
    n_init: restarts (run one after another); the lowest inertia wins.
    max_iter: Lloyd iteration cap per restart.
    tol: relative tolerance on the squared centre shift (scaled by the mean
      per-feature variance of ``x``, as in scikit-learn).
    lloyd: how the seeding and Lloyd iterations run, "auto", "native" or
      "xla" (`resolve_lloyd`).

  Returns:
    A `KMeans` with the winning restart's centres and the final assignment.
  """
  x = jnp.asarray(x)
  if x.shape[0] < k:
    raise ValueError(f"k-means needs at least k={k} points, got {x.shape[0]}")
  lloyd = resolve_lloyd(lloyd, x.dtype)
  return _kmeans(
    x, k, key, n_init=n_init, max_iter=max_iter, tol=tol, lloyd=lloyd
  )


# How the seeding and Lloyd iterations run: "auto", "native" or "xla"
# (`resolve_lloyd`).
LLOYD = "auto"


def resolve_lloyd(
  method: str | None = None, dtype=jnp.float32, backend: str | None = None
) -> str:
  """``method`` (default `LLOYD`) as "native" (the compiled kernels, float32
  on a CPU where they build) or "xla" (vmapped seeding, then a `while_loop`
  per restart)."""
  method = LLOYD if method is None else method
  return native.resolve("Lloyd", method, dtype, backend)


@functools.partial(
  jax.jit, static_argnames=("k", "n_init", "max_iter", "lloyd")
)
def _kmeans(x, k, key, *, n_init, max_iter, tol, lloyd):
  x_sq = distances.sq_norms(x)
  tol_abs = tol * jnp.mean(jnp.var(x, axis=0))

  # Seeding has a fixed number of steps, so the restarts are seeded together
  # (`vmap`): each step reads x once for all of them. The Lloyd runs stop
  # after different numbers of iterations and run one after another.
  first, u = jax.vmap(lambda key: _seed_draws(key, x.shape[0], k, x.dtype))(
    jax.random.split(key, n_init)
  )
  if lloyd == "native":
    seeds = native.kmeans_plus_plus(x, x_sq, first, u)
  else:
    seeds = jax.vmap(lambda f, u: _kmeans_plus_plus(f, u, x, x_sq, k))(first, u)

  def inertia_of(centers):
    return jnp.sum(jnp.min(sq_distances(x, centers, x_sq), axis=1))

  if lloyd == "native":
    centers, n_iter, inertia = native.lloyd(x, x_sq, seeds, tol_abs, max_iter)
  else:

    def one_run(centers):
      centers, n_iter = _lloyd(x, x_sq, centers, max_iter, tol_abs)
      return centers, inertia_of(centers), n_iter

    centers, inertia, n_iter = jax.lax.map(one_run, seeds)
  best = jnp.argmin(inertia)
  centers = centers[best]
  d2 = sq_distances(x, centers, x_sq)
  labels = jnp.argmin(d2, axis=1).astype(jnp.int32)
  return KMeans(
    centers=centers,
    labels=labels,
    inertia=jnp.sum(jnp.min(d2, axis=1)),
    n_iter=n_iter[best],
  )
