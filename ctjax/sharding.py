"""All of ctjax's sharding policy: meshes, the sharded nearest-neighbour search,
and the helpers for several processes (hosts).

Layout. A mesh has one axis, ``"data"`` (`make_mesh`). The projected training
points of every layer are dealt out along that axis (`shard_index`): with S
devices, row r of the cell-sorted training set goes to device ``r mod S``, so
every device holds about 1/S of *every* cell (balanced work, whatever cells the
queries fall in) and each device builds its own cell index with
`ctjax.stats.neighbors.build_index`.

Search (`nearest_in_cell`). Queries (a generated batch, or the test set at fit
time: small) are replicated. Each device searches its share with the engine's
tiled kernel, then the pair (distance, global training index) is reduced across
devices: the smallest distance wins and, among equal distances, the smallest
training index. The distance of a winning pair is recomputed by the engine from
the two vectors alone, so the sharded result equals the single-device one.

Encoders (`data_parallel`). The batch of images is split over the local
devices along ``"data"`` and the parameters are replicated.

Several hosts. Call ``jax.distributed.initialize(...)`` first; `make_mesh` then
spans every process's devices. Arrays that each process holds in full (the
reference, a generated batch) become global arrays with
``jax.make_array_from_callback``, so a process only ever copies its own shards
to its devices. `process_share` and `gather_in_order` split a list of inputs
(files) between processes and put the per-process results back in input order.
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ctjax import xla_options
from ctjax.stats import neighbors as nb

AXIS = "data"
_NO_INDEX = np.iinfo(np.int32).max


# ------------------------------------------------------------------- meshes
def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis ``"data"`` over ``devices`` (default: all devices of
  all processes, ``jax.devices()``)."""
  devices = jax.devices() if devices is None else list(devices)
  if not devices:
    raise ValueError("make_mesh needs at least one device")
  return Mesh(np.asarray(devices, dtype=object), (AXIS,))


def resolve_mesh(mesh) -> Mesh:
  """Accepts a `Mesh` with a ``"data"`` axis, ``"all"`` (every device), or a
  sequence of devices; returns the mesh."""
  if isinstance(mesh, str):
    if mesh != "all":
      raise ValueError(
        f"mesh must be a jax.sharding.Mesh, 'all' or a list of "
        f"devices, got {mesh!r}"
      )
    return make_mesh()
  if isinstance(mesh, Mesh):
    if AXIS not in mesh.axis_names:
      raise ValueError(
        f"mesh has axes {mesh.axis_names}; ctjax shards the "
        f"training points along an axis named {AXIS!r}"
      )
    return mesh
  try:
    return make_mesh(list(mesh))
  except TypeError as e:
    raise ValueError(
      f"mesh must be a jax.sharding.Mesh, 'all' or a list of "
      f"devices, got {type(mesh).__name__}"
    ) from e


def n_shards(mesh: Mesh) -> int:
  """Number of devices along the ``"data"`` axis."""
  return int(mesh.shape[AXIS])


def data_parallel(params, batch_size: int):
  """The batch axis over all local devices, parameters replicated.

  The policy of `ctjax.embedding.embed`: an encoder's forward pass needs no
  communication, so each local device encodes its slice of every batch.

  Args:
    params: a pytree of parameters.
    batch_size: the requested batch size.

  Returns:
    (batch size rounded up to a multiple of the local device count, params
    placed on the devices, a function putting a host batch
    ``[batch_size, ...]`` on the devices, split along axis 0).
  """
  devices = jax.local_devices()
  if len(devices) == 1:
    return batch_size, params, jnp.asarray
  mesh = make_mesh(devices)
  batch_size = -(-batch_size // len(devices)) * len(devices)
  params = jax.device_put(params, NamedSharding(mesh, P()))
  batch_sharding = NamedSharding(mesh, P(AXIS))
  return batch_size, params, lambda x: jax.device_put(x, batch_sharding)


# ------------------------------------------------ host arrays <-> global ones
def put_global(x, sharding: NamedSharding) -> jax.Array:
  """Places ``x`` (held in full by every process) as a global array.

  One process: `jax.device_put`. Several: each process copies only the shards
  its own devices hold.
  """
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def replicate(x, mesh: Mesh) -> jax.Array:
  """``x`` replicated on every device of ``mesh``."""
  return put_global(x, NamedSharding(mesh, P()))


def local_value(x: jax.Array) -> jax.Array:
  """A fully replicated global array as an array on one local device."""
  if not x.is_fully_replicated:
    raise ValueError("local_value needs a fully replicated array")
  return x.addressable_data(0)


# ------------------------------------------------------- the sharded index
@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["points", "aux", "cells", "starts", "order"],
  meta_fields=["metric", "mesh"],
)
@dataclasses.dataclass(frozen=True)
class ShardedIndex:
  """Per-layer cell indexes of the training points, one per device.

  With S devices along ``"data"`` and B rows per device (N padded up to S·B),
  device s holds rows ``s·B:(s+1)·B`` of the second axis, a `CellIndex`
  sorted by cell on its own.

  Attributes:
    points: ``[L, S·B, d]`` training points.
    aux: ``[L, S·B]`` ‖t‖² ("l2") or 1/‖t‖ ("cosine").
    cells: ``[L, S·B]`` int32 cell of each row (padding rows: cell k).
    starts: ``[L, S·(k + 2)]`` int32 per-device cell starts.
    order: ``[L, S·B]`` int32 global training index of each row (-1: padding).
    metric: "l2" or "cosine".
    mesh: the mesh the arrays live on.
  """

  points: jax.Array
  aux: jax.Array
  cells: jax.Array
  starts: jax.Array
  order: jax.Array
  metric: str
  mesh: Mesh

  @property
  def n_cells(self) -> int:
    return self.starts.shape[1] // n_shards(self.mesh) - 2


def _deal(x: np.ndarray, n_dev: int, fill) -> np.ndarray:
  """Deals rows (axis 1) of ``x [L, N, ...]`` round-robin to ``n_dev`` devices:
  returns ``[L, n_dev·B, ...]`` with device s's rows in block s."""
  n_layers, n = x.shape[:2]
  rows = -(-n // n_dev)
  pad = rows * n_dev - n
  if pad:
    x = np.concatenate(
      [x, np.full((n_layers, pad) + x.shape[2:], fill, x.dtype)], axis=1
    )
  x = x.reshape((n_layers, rows, n_dev) + x.shape[2:])
  return np.swapaxes(x, 1, 2).reshape((n_layers, rows * n_dev) + x.shape[3:])


@functools.partial(jax.jit, static_argnames=("n_cells", "metric", "mesh"))
def _build_local(points, cells, order, *, n_cells, metric, mesh):
  def local(points, cells, order):
    def one(args):
      p, c, o = args
      # Padding rows carry cell k, build_index's sentinel: sorted last and
      # never matched by a real query.
      index = nb.build_index(p, c, n_cells, metric)
      return (
        index.points,
        index.aux,
        index.cells,
        index.starts,
        o[index.order],
      )

    return jax.lax.map(one, (points, cells, order))

  row = P(None, AXIS)
  return jax.shard_map(
    local,
    mesh=mesh,
    in_specs=(P(None, AXIS, None), row, row),
    out_specs=(P(None, AXIS, None), row, row, row, row),
  )(points, cells, order)


def shard_index(
  points, cells, order=None, *, n_cells: int, metric: str, mesh: Mesh
) -> ShardedIndex:
  """Deals the training points of every layer out to the devices of ``mesh``.

  Args:
    points: ``[L, N, d]`` projected training points (any order; the
      reference's cell-sorted points balance best).
    cells: ``[L, N]`` int cell of each point, in [0, n_cells).
    order: ``[L, N]`` int global index of each point (default ``arange(N)``);
      the search returns these indices.
    n_cells: k.
    metric: "l2" or "cosine".
    mesh: from `make_mesh` / `resolve_mesh`.

  Returns:
    A `ShardedIndex`; every process must call this with the same arrays.
  """
  nb.check_metric(metric)
  points = np.asarray(points)
  cells = np.asarray(cells, np.int32)
  if points.ndim != 3 or cells.shape != points.shape[:2]:
    raise ValueError(
      f"points must be [L, N, d] and cells [L, N]; got "
      f"{points.shape} and {cells.shape}"
    )
  if order is None:
    order = np.broadcast_to(
      np.arange(points.shape[1], dtype=np.int32), cells.shape
    )
  order = np.asarray(order, np.int32)
  s = n_shards(mesh)
  rows = NamedSharding(mesh, P(None, AXIS))
  pts = put_global(
    _deal(points, s, 0), NamedSharding(mesh, P(None, AXIS, None))
  )
  cel = put_global(_deal(cells, s, n_cells), rows)
  ordr = put_global(_deal(order, s, -1), rows)
  p, a, c, st, o = _build_local(
    pts, cel, ordr, n_cells=n_cells, metric=metric, mesh=mesh
  )
  return ShardedIndex(
    points=p, aux=a, cells=c, starts=st, order=o, metric=metric, mesh=mesh
  )


@functools.partial(jax.jit, static_argnames=("tile_queries", "tile_train"))
def _search(index: ShardedIndex, queries, q_cells, *, tile_queries, tile_train):
  metric = index.metric

  def local(points, aux, cells, starts, order, queries, q_cells):
    def one(args):
      p, a, c, st, o, q, qc = args
      local_index = nb.CellIndex(
        points=p, aux=a, cells=c, starts=st, order=o, metric=metric
      )
      return nb.nearest_in_cell(
        local_index, q, qc, tile_queries=tile_queries, tile_train=tile_train
      )

    dist, idx = jax.lax.map(
      one, (points, aux, cells, starts, order, queries, q_cells)
    )
    # (distance, index) minimum over devices: nearest first, then lowest index.
    # Padding rows (index -1) only ever match padding queries; these get
    # (inf, -1) as in the single-device search.
    dist = jnp.where(idx >= 0, dist, jnp.inf)
    best = jax.lax.pmin(dist, AXIS)
    cand = jnp.where((dist == best) & (idx >= 0), idx, _NO_INDEX)
    gidx = jax.lax.pmin(cand, AXIS)
    return best, jnp.where(gidx == _NO_INDEX, -1, gidx).astype(jnp.int32)

  # check_vma=False: the engine's loops start from constants that JAX's
  # varying-axis check would want cast; the outputs are replicated by the pmin.
  row = P(None, AXIS)
  return jax.shard_map(
    local,
    mesh=index.mesh,
    in_specs=(P(None, AXIS, None), row, row, row, row, P(), P()),
    out_specs=(P(), P()),
    check_vma=False,
  )(
    index.points,
    index.aux,
    index.cells,
    index.starts,
    index.order,
    queries,
    q_cells,
  )


def nearest_in_cell(
  index: ShardedIndex,
  queries,
  q_cells,
  *,
  tile_queries: int | None = 64,
  tile_train: int = 2048,
):
  """`ctjax.stats.neighbors.nearest_in_cell` over a sharded training set.

  Args:
    index: from `shard_index`.
    queries: ``[L, m, d]`` query points (every process passes the same).
    q_cells: ``[L, m]`` int cell of each query; ``>= k`` marks padding.
    tile_queries, tile_train: the per-device kernel's tile sizes.

  Returns:
    ``(dist [L, m], idx [L, m])`` on one local device: distance to the nearest
    training point of the same cell and its global index (``inf`` / ``-1``
    where there is none), equal to the single-device search.
  """
  queries = jnp.asarray(queries)
  if queries.ndim != 3 or queries.shape[0] != index.points.shape[0]:
    raise ValueError(
      f"queries must be [L={index.points.shape[0]}, m, d], got "
      f"{tuple(queries.shape)}"
    )
  if queries.shape[2] != index.points.shape[2]:
    raise ValueError(
      f"queries have dimension {queries.shape[2]} but the index "
      f"holds dimension {index.points.shape[2]}"
    )
  q_cells = jnp.asarray(q_cells, jnp.int32)
  dist, idx = _search(
    index,
    replicate(queries, index.mesh),
    replicate(q_cells, index.mesh),
    tile_queries=tile_queries,
    tile_train=tile_train,
  )
  return local_value(dist), local_value(idx)


# ----------------------------------------------------------- several hosts
def process_share(
  n_items: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> slice:
  """The contiguous share of ``n_items`` inputs that one process handles.

  Shares differ in size by at most one (as ``np.array_split``); concatenated
  in process order they give back the input order.
  """
  p = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if not 0 <= p < count:
    raise ValueError(f"process_index {p} not in [0, {count})")
  if n_items < 0:
    raise ValueError(f"n_items must be >= 0, got {n_items}")
  base, extra = divmod(n_items, count)
  start = p * base + min(p, extra)
  return slice(start, start + base + (p < extra))


def gather_in_order(local, n_items: int) -> np.ndarray:
  """Concatenates every process's results for its `process_share`.

  Args:
    local: ``[n_local, ...]`` this process's results, for the items
      ``process_share(n_items)``.
    n_items: total number of items.

  Returns:
    ``[n_items, ...]`` on every process, in input order.
  """
  local = np.asarray(local)
  count = jax.process_count()
  share = process_share(n_items)
  if local.shape[0] != share.stop - share.start:
    raise ValueError(
      f"process {jax.process_index()} holds {local.shape[0]} "
      f"results but its share is {share.stop - share.start} of "
      f"{n_items} items"
    )
  if count == 1:
    return local
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  rows = -(-n_items // count)
  pad = np.zeros((rows - local.shape[0],) + local.shape[1:], local.dtype)
  everything = np.asarray(
    multihost_utils.process_allgather(np.concatenate([local, pad]))
  )  # [count, rows, ...]
  parts = []
  for p in range(count):
    s = process_share(n_items, p, count)
    parts.append(everything[p, : s.stop - s.start])
  return np.concatenate(parts)


def map_in_order(fn: Callable[[Sequence], np.ndarray], items: Sequence):
  """``fn(items)`` computed by every process on its share of ``items``.

  ``fn`` maps a list of inputs (file names, say) to ``[len(list), ...]``
  results; the shares' results are gathered on every process in input order.
  """
  items = list(items)
  share = items[process_share(len(items))]
  return gather_in_order(fn(share), len(items))


# ------------------------------------------- layers over the local devices
# The scoring policy of `ctjax.CTReference.score` / `score_many` when a
# process has several local devices and no mesh is given: the layers are
# split between the devices (each holds its layers' whole reference and
# searches them), one compiled SPMD program for all of them. On a CPU this is
# how both cores work at once: XLA runs one device's program on one core for
# the small products of the search, and two programs on one device do not
# overlap (benchmarks/bench_ct.py).
LAYERS = "layers"


def layer_mesh(n_layers: int, devices=None) -> Mesh | None:
  """A 1-D mesh with axis ``"layers"`` to split ``n_layers`` layers over.

  Args:
    n_layers: L.
    devices: default ``jax.local_devices()`` (of the default backend).

  Returns:
    The mesh over the first ``min(len(devices), n_layers)`` devices, or
    ``None`` when that is fewer than 2 or the process is one of several
    (a multi-host job gives ``mesh=`` explicitly).
  """
  if devices is None:
    if jax.process_count() > 1:
      return None
    devices = jax.local_devices()
  n = min(len(devices), int(n_layers))
  if n < 2:
    return None
  return Mesh(np.array(list(devices)[:n]), (LAYERS,))


def padded_layers(n_layers: int, mesh: Mesh) -> int:
  """L rounded up to a multiple of the mesh's device count (every device
  gets the same number of layers: one compiled program)."""
  s = int(mesh.shape[LAYERS])
  return -(-int(n_layers) // s) * s


def split_layers(tree, mesh: Mesh):
  """Every leaf ``[L, ...]`` of ``tree`` padded to `padded_layers` (the last
  layer repeated: the padded layers' results are dropped) and placed on
  ``mesh`` split along its leading axis."""
  sharding = NamedSharding(mesh, P(LAYERS))

  def put(x):
    x = np.asarray(x)
    pad = padded_layers(x.shape[0], mesh) - x.shape[0]
    if pad:
      x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
    return jax.device_put(x, sharding)

  return jax.tree_util.tree_map(put, tree)


def over_layers(fn, mesh: Mesh, in_specs, out_specs, cpu_options=None):
  """``fn`` run on every device of ``mesh`` on its share of the layers
  (`jax.shard_map`, no communication), jit-compiled once for all devices.

  ``in_specs``/``out_specs`` as `jax.shard_map`'s, with `LAYERS` naming the
  layer axis of split arguments and results; ``cpu_options``: XLA options
  of the program on a CPU (`ctjax.xla_options.cpu_jit`).
  """
  # check_vma=False: the engine's loops start from constants that JAX's
  # varying-axis check would want cast; no value crosses devices.
  program = jax.shard_map(
    fn,
    mesh=mesh,
    in_specs=in_specs,
    out_specs=out_specs,
    check_vma=False,
  )
  if cpu_options:
    return xla_options.cpu_jit(program, cpu_options)
  return jax.jit(program)
