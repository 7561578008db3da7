"""`CTReference`: fit PCA, cells and test distances once per layer; score many.

The numerics live in `ctjax.stats`: `stats.fitted.fit_layers` fits every layer
in one compiled call into a typed `stats.Fitted` pytree, and `stats.score`
scores a generated batch on device. This module is the host side around
them: input checks, warnings, the NaN policy, neighbours, sharded search over
a mesh, and save/load. `CTReference.score` takes the device's exact per-cell
2·U and counts and finishes Z and C_T on the host in float64
(`ct.z_and_ct`), so its results do not depend on the device's float width.
"""

import dataclasses
import functools
import hashlib
import io
import json
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ctjax import progress as progress_lib
from ctjax import sharding, threads
from ctjax.stats import bootstrap as bootstrap_lib
from ctjax.stats import compiling
from ctjax.stats import ct as ct_lib
from ctjax.stats import fitted as fitted_lib
from ctjax.stats import mannwhitney
from ctjax.stats import neighbors as nb
from ctjax.stats import pca as pca_lib
from ctjax.stats import scoring as score_lib
from ctjax.storage import atomic_write

FORMAT = "ctjax.CTReference"
# Files of a stacked reference are version 1; a reference of layers of
# different widths (one `Fitted` per width) is written as version 2.
VERSION = 2
STACKED_VERSION = 1
DEFAULT_COMPONENTS = fitted_lib.DEFAULT_COMPONENTS
# Generated batches are padded to a multiple of this many rows, so batches of
# nearby sizes share one compilation; padded rows count nowhere.
ROW_BUCKET = 128
# Device bytes one `score_many` chunk may use unless told otherwise.
DEFAULT_MEMORY_BUDGET = 1 << 30
# Where `CTReference.score` pads a NumPy batch (`_batch_to_device`): "auto"
# (the host on a CPU, the device elsewhere), "host" or "device".
PAD_BATCH = "auto"
# Programs `CTReference.fit`, `score` and `score_many` run at once on a
# single CPU device, each fitting or scoring layers from its own host
# thread (`ctjax.threads`): "auto" (one per host core, at most one per
# layer; one program on an accelerator or with several local devices, which
# split the layers instead), or an int (1: one program at a time).
LAYER_THREADS = "auto"


def _layer_threads(n_layers: int) -> int:
  """How many programs `LAYER_THREADS` runs at once for ``n_layers``."""
  n = LAYER_THREADS
  if n == "auto":
    if jax.default_backend() != "cpu" or jax.local_device_count() > 1:
      return 1
    n = threads.host_cores()
  return max(1, min(int(n), n_layers))


def _fit_staged(pca, fit, pt, test, *, config, mesh):
  """The `Fitted` reference from per-layer PCA and k-means (stacked over L)
  and projected T ``pt [L, N, d]``; test ``[L, n, D]``. Returns (fitted,
  sharded index or None)."""
  n_cells, metric = config.n_cells, config.metric
  index, pp, test_cells = fitted_lib.index_layers(
    pca, fit, pt, jnp.asarray(test), n_cells=n_cells, metric=metric
  )
  tiles = dict(tile_queries=config.tile_queries, tile_train=config.tile_train)
  sharded = None
  if mesh is None:
    dist, idx = fitted_lib.search_layers(
      index, pp, test_cells, search=config.search, **tiles
    )
  else:
    sharded = sharding.shard_index(
      index.points,
      index.cells,
      index.order,
      n_cells=n_cells,
      metric=metric,
      mesh=mesh,
    )
    dist, idx = sharding.nearest_in_cell(sharded, pp, test_cells, **tiles)
  fitted = fitted_lib.finish_layers(
    pca, fit, index, test_cells, dist, idx, n_cells=n_cells
  )
  return fitted, sharded


_STATIC = ("tile_queries", "tile_train", "search")
_project_layers = jax.jit(score_lib.project_layers)
_twice_u_layers = jax.jit(score_lib.twice_u_layers)
_query_parts = jax.jit(score_lib.query_parts, static_argnames=_STATIC)
_cell_scores = jax.jit(score_lib.cell_scores)


# XLA:CPU options of `_score_finite` (one batch; `CTReference.score`) and
# its layer-split form: the fit's (`fitted.CPU_COMPILER_OPTIONS`, the older
# loop emitters and LLVM -O1). Measured on this project's 2-core CPU, one
# process, L = 13, N = 50k, D = 768, medians of 4 rounds, against XLA's
# defaults: first call (compilation) 1.35 -> 0.66 s, the batch 126.7 ->
# 128.2 ms (level); a [1200, 16] layer's first call 0.94 -> 0.57 s; C_T
# and 2U bitwise the same. `score_many`'s merged search (`_score_chunk`)
# keeps XLA's defaults: these options ran it slower (72.2 -> 77.8 ms a
# batch). LLVM -O1 alone, with the fusion emitters on, ran both faster
# (113.7 and 67.1 ms) but crashed LLVM's instruction selection
# ("Cannot select ... SUBV_BROADCAST_LOAD", the process aborted) on the
# tests' [3, 200, 12] batches, so it is not used.
SCORE_CPU_OPTIONS = fitted_lib.CPU_COMPILER_OPTIONS


def _score_chunk_impl(fitted, gens, valid, tau, *, on_device, mode, **kw):
  """Scores a chunk of c batches. Returns finite flags ``[c, L]`` and `Scores`
  with a leading c axis (``on_device``) or per-query ``(tu, cells)``, each
  ``[c, L, m]``.

  ``mode``: "merge" searches the c batches' queries of a layer together
  (`stats.scoring.merged_parts`; ``gens [L, c, m, D]``, layer-major);
  "vmap" scores the batches at once, "map" one after another (both with
  ``gens [c, L, m, D]``). ``valid [c, m]``.
  """
  if mode == "merge":
    finite = jnp.all(jnp.isfinite(gens), axis=(2, 3)).T
    if on_device:
      return finite, score_lib.score_merged(fitted, gens, valid, tau=tau, **kw)
    return finite, score_lib.merged_parts(fitted, gens, valid, **kw)
  finite = jnp.all(jnp.isfinite(gens), axis=(2, 3))

  def one(g, v):
    if on_device:
      return score_lib.score_detailed(fitted, g, tau=tau, valid=v, **kw)[0]
    return score_lib.query_parts(fitted, g, v, **kw)[:2]

  if mode == "vmap":
    return finite, jax.vmap(one)(gens, valid)
  return finite, jax.lax.map(lambda a: one(*a), (gens, valid))


_score_chunk = jax.jit(
  _score_chunk_impl, static_argnames=_STATIC + ("on_device", "mode")
)


def _score_batches_impl(
  fitted, batches, valid, layer_start, tau, *, on_device, **kw
):
  """`score_many`'s merged search of a chunk given as a tuple of c
  ``[L', m, D]`` batches (`scoring.merged_batch_parts`; this part's layers
  start at ``layer_start``). Returns finite flags ``[c, L]`` and `Scores`
  with a leading c axis (``on_device``) or ``(tu, cells)``, each
  ``[c, L, m_pad]``."""
  finite, tu, cells = score_lib.merged_batch_parts(
    fitted, batches, valid, layer_start=layer_start, **kw
  )
  if not on_device:
    return finite, (tu, cells)
  return finite, jax.vmap(
    lambda t, c: score_lib.cell_scores(fitted, t, c, tau=tau)
  )(tu, cells)


_score_batches = jax.jit(
  _score_batches_impl, static_argnames=_STATIC + ("on_device",)
)


@jax.jit
def _finite_per_layer(x):
  return jnp.all(jnp.isfinite(x), axis=tuple(range(1, x.ndim)))


def _stack_layers(name, x, n_layers=None):
  """Returns ``x`` as float ``[L, P, D]`` (a single layer may be ``[P, D]``)."""
  x = np.asarray(x) if not isinstance(x, jax.Array) else x
  if x.ndim == 2:
    x = x[None]
  if x.ndim != 3:
    raise ValueError(
      f"{name} must be [layers, points, dims] (or [points, dims] "
      f"for one layer), got shape {tuple(x.shape)}"
    )
  if n_layers is not None and x.shape[0] != n_layers:
    raise ValueError(
      f"{name} has {x.shape[0]} layers but the reference has {n_layers}"
    )
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(np.float32)
  return x


def _check_finite(name, x, layer_names, ok=None):
  """Raises naming the layers of ``x`` with NaN/Inf (``ok [L]``: the finite
  flags, when already computed)."""
  ok = np.asarray(_finite_per_layer(x) if ok is None else ok)
  if not ok.all():
    bad = [layer_names[i] for i in np.flatnonzero(~ok)]
    raise ValueError(
      f"{name} has NaN or Inf values in layer(s) {', '.join(map(str, bad))}"
    )


# Byte alignment at which the CPU backend uses a NumPy array's memory as is.
_ALIGN = 64


def _aligned_empty(shape, dtype) -> np.ndarray:
  """An uninitialised C-contiguous array whose data starts at a multiple of
  `_ALIGN` bytes."""
  dtype = np.dtype(dtype)
  size = int(np.prod(shape)) * dtype.itemsize
  buf = np.empty(size + _ALIGN, np.uint8)
  skip = -buf.ctypes.data % _ALIGN
  return buf[skip : skip + size].view(dtype).reshape(shape)


def _aligned_copy(x: np.ndarray, dtype) -> np.ndarray:
  """A C-contiguous copy of ``x`` as ``dtype`` whose data starts at a multiple
  of `_ALIGN` bytes."""
  out = _aligned_empty(x.shape, dtype)
  np.copyto(out, x, casting="unsafe")
  return out


def _concat_on_host(parts, length=None):
  """Concatenates the leading axes of same-structured pytrees of CPU arrays
  into 64-byte-aligned host buffers the CPU device then uses in place: no
  compiled program (a `jnp.concatenate` per leaf shape compiled 15 small
  programs, ~1 s in a fresh process) and one copy. ``length``: keep only
  the first rows (default all)."""

  def cat(*xs):
    xs = [np.asarray(x) for x in xs]
    total = sum(len(x) for x in xs)
    n = total if length is None else min(length, total)
    out = _aligned_empty((n,) + xs[0].shape[1:], xs[0].dtype)
    at = 0
    for x in xs:
      take = min(len(x), n - at)
      out[at : at + take] = x[:take]
      at += take
    return jax.device_put(out)

  return jax.tree_util.tree_map(cat, *parts)


def _to_device(x):
  """One copy onto the default device (``jnp.asarray`` of a NumPy array
  briefly holds two on the CPU: 4 GB more instead of 2 for CIFAR-scale T)."""
  return x if isinstance(x, jax.Array) else jax.device_put(x)


def _fit_by_layer(train, test, keys, config, mesh=None):
  """`stats.fitted.fit_layers` (``with_finite``) of NumPy ``train [L, N, D]``
  and ``test [L, n, D]``, S layers at a time: one layer on the default device
  (``mesh=None``), or one per device of a `sharding.layer_mesh` of S
  devices, fitted together by one program (the last group padded with the
  last layer).

  Each layer is copied into an aligned host buffer of its device that the
  CPU device uses in place, reused for every group: T is copied once, mostly
  into memory already paged in, where a fresh 2 GB device copy of
  CIFAR-scale T costs ~1 s per GB of page faults on these VMs; only S layers
  are held twice. The results are gathered on the host, in layer order.
  """
  n_layers = train.shape[0]
  if mesh is None and _layer_threads(n_layers) > 1:
    return _fit_in_threads(train, test, keys, config)
  devs = [None] if mesh is None else list(mesh.devices.flat)
  s = len(devs)
  dtype = jax.dtypes.canonicalize_dtype(train.dtype)
  bufs = [
    [_aligned_copy(a[min(i, n_layers - 1)][None], dtype) for a in (train, test)]
    for i in range(s)
  ]
  keys = np.asarray(keys)  # sliced on the host: no compiled slice
  if mesh is None:
    run = lambda tr, te, k: fitted_lib.fit_layers(
      tr[0], te[0], k, config, with_finite=True
    )
  else:
    layout = NamedSharding(mesh, P(sharding.LAYERS))
    program = _split_fit(mesh, config)

    def run(tr, te, k):
      def whole(arrays):  # S one-layer arrays -> one [S, ...] array
        shape = (s,) + arrays[0].shape[1:]
        return jax.make_array_from_single_device_arrays(shape, layout, arrays)

      return program(whole(tr), whole(te), jax.device_put(k, layout))

  parts = []
  for start in progress_lib.bar(
    iterable=range(0, n_layers, s),
    desc="fit",
    unit="layer" if s == 1 else f"{s} layers",
    show=n_layers >= 4,
    leave=False,
  ):
    layers = [min(start + i, n_layers - 1) for i in range(s)]
    if start:
      for (tr, te), l in zip(bufs, layers):
        np.copyto(tr[0], train[l], casting="unsafe")
        np.copyto(te[0], test[l], casting="unsafe")
    on_device = [
      [jax.device_put(b, d) for b, d in zip(column, devs)]
      for column in zip(*bufs)
    ]
    # Wait for the group before its buffers are overwritten.
    parts.append(jax.block_until_ready(run(*on_device, keys[layers])))
    del on_device
  if len(parts) == 1 and s == 1:
    return parts[0]
  # Gathered on the host into buffers the default device uses in place, the
  # padding layers dropped (no compiled slice or concatenation).
  return _concat_on_host(parts, n_layers)


def _fit_in_threads(train, test, keys, config):
  """`_fit_by_layer` on one CPU device with `_layer_threads` host threads,
  each fitting its layers (t, t + T, ...) through its own aligned buffers:
  XLA:CPU runs a layer's small steps (k-means, the test-set search) on
  about one core, and programs from different threads run at once. The
  first layer runs alone, compiling the program once."""
  n_layers = train.shape[0]
  n_threads = _layer_threads(n_layers)
  dtype = jax.dtypes.canonicalize_dtype(train.dtype)
  bufs = [
    [_aligned_copy(a[t][None], dtype) for a in (train, test)]
    for t in range(n_threads)
  ]
  keys = np.asarray(keys)
  parts = [None] * n_layers

  def fit_layer(t, l):
    tr, te = bufs[t]
    if l != t:
      np.copyto(tr[0], train[l], casting="unsafe")
      np.copyto(te[0], test[l], casting="unsafe")
    # Waited for before this thread's buffers are overwritten.
    parts[l] = jax.block_until_ready(
      fitted_lib.fit_layers(
        jax.device_put(tr),
        jax.device_put(te),
        keys[l : l + 1],
        config,
        with_finite=True,
      )
    )
    bar.update(1)

  # The first fit of these shapes runs layer 0 alone (`threads.first_run`).
  first = threads.first_run(
    ("fit", train.shape[1:], test.shape[1:], str(dtype), config)
  )

  def worker(t):
    for l in range(t, n_layers, n_threads):
      if l or not first:
        fit_layer(t, l)

  with progress_lib.bar(
    total=n_layers,
    desc="fit",
    unit="layer",
    show=n_layers >= 4,
    leave=False,
  ) as bar:
    if first:
      fit_layer(0, 0)
    threads.run_concurrently(
      [functools.partial(worker, t) for t in range(n_threads)]
    )
  return _concat_on_host(parts, n_layers)


@functools.cache
def _split_fit(mesh, config: fitted_lib.FitConfig):
  """`stats.fitted.fit_layers` (``with_finite``) with the layers split over
  ``mesh`` (axis ``sharding.LAYERS``), one compiled program."""
  lay = P(sharding.LAYERS)
  return sharding.over_layers(
    lambda t, p, k: fitted_lib.fit_layers(
      t, p, k, config, with_finite=True, compiled=False
    ),
    mesh,
    (lay, lay, lay),
    lay,
    cpu_options=fitted_lib.CPU_COMPILER_OPTIONS,
  )


def _check_fit_finite(train, test, names, finite):
  """Raises for NaN/Inf in T or P, given the fit's ``finite [L, 2]`` flags
  (`stats.fitted.fit_layers`); the exact per-layer check runs only when a
  flag is down, to name the layers (or the overflow behind a false flag)."""
  finite = np.asarray(finite)
  if finite.all():
    return
  _check_finite("train", train, names)
  _check_finite("test", test, names)
  bad = [names[l] for l in np.flatnonzero(~finite.all(axis=1))]
  raise ValueError(
    f"train or test values too large for {train.dtype} sums (overflow) in "
    f"layer(s) {', '.join(map(str, bad))}; rescale the embeddings"
  )


@functools.partial(jax.jit, static_argnames=("seed", "n_layers"))
def _layer_keys(seed, n_layers):
  """k-means key of every layer: ``fold_in(PRNGKey(seed), l)``; ``[L, 2]``
  (one compiled call rather than a handful of eager ones)."""
  return jax.vmap(lambda l: jax.random.fold_in(jax.random.PRNGKey(seed), l))(
    jnp.arange(n_layers)
  )


@functools.partial(jax.jit, static_argnames=("m_pad",))
def _pad_batch(gen, m_pad):
  """``gen [L, m, D]`` padded with zero rows to ``[L, m_pad, D]``, the valid
  rows ``[m_pad]`` and the finite flags ``[L]``, in one compiled call."""
  n_layers, m, dim = gen.shape
  finite = jnp.all(jnp.isfinite(gen), axis=(1, 2))
  pad = jnp.zeros((n_layers, m_pad - m, dim), gen.dtype)
  valid = jnp.arange(m_pad) < m
  return jnp.concatenate([gen, pad], axis=1), valid, finite


def _aligned_padded(x: np.ndarray, shape) -> np.ndarray:
  """``x`` copied into the leading corner of a fresh `_aligned_empty` array
  of ``shape`` (each axis at least as long as x's), zeros elsewhere.

  One pass over x and over the padding only. ``np.zeros`` is no substitute:
  its large buffers start 16 bytes past a page, so the CPU device copies
  them again on `jax.device_put` (20 MB: 31 ms; a 16-batch chunk of 327 MB:
  0.47 s on this project's 2-core CPU), where an aligned one is used as is.
  """
  buf = _aligned_empty(shape, x.dtype)
  buf[tuple(slice(0, n) for n in x.shape)] = x
  for axis, n in enumerate(x.shape):
    if n < shape[axis]:
      buf[(slice(None),) * axis + (slice(n, None),)] = 0
  return buf


def _is_device_input(x) -> bool:
  """Whether ``x`` is a device array or a non-empty sequence of them."""
  if isinstance(x, jax.Array):
    return True
  return (
    isinstance(x, (list, tuple))
    and bool(x)
    and all(isinstance(a, jax.Array) for a in x)
  )


@functools.partial(jax.jit, static_argnames=("shape", "layer_major"))
def _device_padded(part, *, shape, layer_major):
  """A chunk of device batches ``part [b, L, m, D]`` zero-padded, on its
  device, to ``shape`` (``[L', c, m_pad, D]`` after moving the layer axis
  first when ``layer_major``, else ``[c, L, m_pad, D]``). A small program
  of its own, so that the score's program sees one chunk shape."""
  if layer_major:
    part = jnp.transpose(part, (1, 0, 2, 3))
  return jnp.pad(part, [(0, s - n) for s, n in zip(shape, part.shape)])


def _host_padded(gen, m_pad, n_layers_pad=None):
  """``gen [L, m, D]`` (NumPy) zero-padded to ``[L', m_pad, D]`` (L' =
  ``n_layers_pad``, default L) with at most one host copy, into a fresh
  aligned buffer (`_aligned_padded`) that the CPU device takes without
  copying it again; ``gen`` itself when no padding is needed. The device's
  copy and pad of `_pad_batch` cost as much again."""
  n_layers, m, dim = gen.shape
  n_layers_pad = n_layers if n_layers_pad is None else n_layers_pad
  if m == m_pad and n_layers == n_layers_pad:
    return gen
  return _aligned_padded(gen, (n_layers_pad, m_pad, dim))


def _batch_to_device(gen, m_pad, n_layers_pad=None):
  """NumPy ``gen [L, m, D]`` zero-padded to ``[L', m_pad, D]`` on the device.

  On a CPU: one host copy into an aligned buffer that the device uses in
  place (`_host_padded`; padding on the device measured level with it). On an
  accelerator the unpadded batch is sent and padded where it lands, so the
  host makes no copy (on an H200 the warm batch took 13 ms against the
  compiled score's 4 ms, the rest outside it: the padding copy, transfer
  and checks, not timed apart; ``benchmarks/engine_knobs.py`` times both
  ways, not yet run on a GPU).
  """
  n_layers, _, dim = gen.shape
  n_layers_pad = n_layers if n_layers_pad is None else n_layers_pad
  where = PAD_BATCH
  if where == "auto":
    where = "host" if jax.default_backend() == "cpu" else "device"
  if where == "host":
    return jax.device_put(_host_padded(gen, m_pad, n_layers_pad))
  return _device_padded(
    jax.device_put(gen), shape=(n_layers_pad, m_pad, dim), layer_major=False
  )


def _program_key(fitted, tiles) -> tuple:
  """What, besides the batch's shape, selects a compiled score program: the
  fitted reference's structure and leaf shapes/dtypes, and the tiles."""
  leaves, treedef = jax.tree_util.tree_flatten(fitted)
  return (
    treedef,
    tuple((x.shape, str(x.dtype)) for x in leaves),
    tuple(sorted(tiles.items())),
  )


@functools.partial(jax.jit, static_argnames=("groups",))
def _slice_groups(fitted, *, groups):
  """``fitted`` cut into the layer ranges ``groups`` (one program)."""
  return [
    jax.tree_util.tree_map(lambda x, s=s, e=e: x[s:e], fitted)
    for s, e in groups
  ]


def _score_finite_impl(fitted, gen, valid, tau, **kw):
  """`stats.scoring.score_detailed` and the finite flags ``[L]`` of ``gen``
  in one compiled call (the check reads ``gen`` beside the projection)."""
  finite = jnp.all(jnp.isfinite(gen), axis=(1, 2))
  return finite, score_lib.score_detailed(
    fitted, gen, tau=tau, valid=valid, **kw
  )


_score_finite = compiling.cpu_jit(
  _score_finite_impl, SCORE_CPU_OPTIONS, static_argnames=_STATIC
)


@functools.cache
def _split_score(mesh, tiles: tuple):
  """`_score_finite` with the layers split over ``mesh`` (axis
  ``sharding.LAYERS``): ``(fitted, gen [L', m, D], valid [m], tau)``, L' a
  multiple of the device count, to the same outputs over L' layers."""
  kw = dict(tiles)
  lay = P(sharding.LAYERS)
  return sharding.over_layers(
    lambda f, g, v, t: _score_finite_impl(f, g, v, t, **kw),
    mesh,
    (lay, lay, P(), P()),
    lay,
    cpu_options=SCORE_CPU_OPTIONS,
  )


@functools.cache
def _split_chunk(mesh, tiles: tuple):
  """`_score_chunk` ("merge", on device) with the layers split over
  ``mesh``: ``(fitted, gens [L', c, m, D], valid [c, m], tau)`` to finite
  flags ``[c, L']`` and `Scores` ``[c, L', ...]``."""
  kw = dict(tiles)
  lay = P(sharding.LAYERS)
  per_batch = P(None, sharding.LAYERS)
  return sharding.over_layers(
    lambda f, g, v, t: _score_chunk_impl(
      f, g, v, t, on_device=True, mode="merge", **kw
    ),
    mesh,
    (lay, lay, P(), P()),
    (per_batch, per_batch),
  )


def _layer_name_list(layer_names, n_layers):
  names = [
    str(x)
    for x in (layer_names if layer_names is not None else range(n_layers))
  ]
  if len(names) != n_layers:
    raise ValueError(f"{len(names)} layer_names for {n_layers} layers")
  return names


def _check_fit_args(n_layers, n_train, dim, test_shape, *, config):
  """Validates fit sizes; returns the config with ``n_components`` resolved."""
  if test_shape[0] != n_layers or test_shape[2] != dim:
    raise ValueError(
      f"train {(n_layers, n_train, dim)} and test "
      f"{tuple(test_shape)} must have the same number of "
      f"layers and dimension"
    )
  n_test, n_cells = test_shape[1], config.n_cells
  if n_train < n_cells:
    raise ValueError(
      f"fewer training points ({n_train}) than cells (n_cells={n_cells})"
    )
  if n_test < n_cells:
    raise ValueError(
      f"fewer test points ({n_test}) than cells "
      f"(n_cells={n_cells}); every cell needs a test point"
    )
  return config.resolve(n_train, dim)


def _pad_rows(m: int) -> int:
  return -(-m // ROW_BUCKET) * ROW_BUCKET


def _layer_list(x):
  """The list form: ``x`` as a list of L float arrays ``[P, D_l]`` when it
  is a list/tuple of 2-D arrays; None otherwise (the stacked form)."""
  if not isinstance(x, (list, tuple)) or not x:
    return None
  if not all(isinstance(a, (np.ndarray, jax.Array)) for a in x):
    return None
  if any(a.ndim != 2 for a in x):
    return None
  return [
    a if jnp.issubdtype(a.dtype, jnp.floating) else a.astype(np.float32)
    for a in x
  ]


def _stack_list(xs, axis=0):
  """Stacks same-shape layers (on device if any is a device array)."""
  if any(isinstance(a, jax.Array) for a in xs):
    return jnp.stack(xs, axis=axis)
  return np.stack(xs, axis=axis)


def _width_groups(widths) -> tuple[tuple[int, ...], ...]:
  """Layer indices grouped by width, in order of first appearance."""
  groups = {}
  for l, w in enumerate(widths):
    groups.setdefault(int(w), []).append(l)
  return tuple(tuple(g) for g in groups.values())


def _check_layer_list(name, xs, widths, names, point_axis=0):
  """Every layer of ``xs`` has its layer's width and the same point count."""
  if len(xs) != len(widths):
    raise ValueError(
      f"{name} has {len(xs)} layers but the reference has {len(widths)}"
    )
  for l, (x, w) in enumerate(zip(xs, widths)):
    if x.shape[-1] != w:
      raise ValueError(
        f"{name}: layer {names[l]} is {x.shape[-1]} wide but the reference's "
        f"layer {names[l]} is {w} wide"
      )
    if x.shape[: point_axis + 1] != xs[0].shape[: point_axis + 1]:
      raise ValueError(
        f"{name}: layer {names[l]} has shape {tuple(x.shape)} but layer "
        f"{names[0]} has {tuple(xs[0].shape)}; every layer needs the same "
        "points"
      )


_RESULT_FIELDS = (
  "ct",
  "z",
  "included",
  "test_frac",
  "gen_frac",
  "u",
  "n_test",
  "n_gen",
)


def _merge_results(results, groups, axis: int) -> ct_lib.CTResult:
  """Per-group `CTResult`s -> one, layers back in order along ``axis``."""
  inv = np.argsort(np.concatenate([np.asarray(g) for g in groups]))

  def cat(xs):
    return np.take(np.concatenate([np.asarray(x) for x in xs], axis), inv, axis)

  nbrs = None
  if results[0].neighbors is not None:
    nbrs = ct_lib.Neighbors(
      **{
        f.name: cat([getattr(r.neighbors, f.name) for r in results])
        for f in dataclasses.fields(ct_lib.Neighbors)
      }
    )
  boot = {}
  if results[0].ct_boot is not None:  # `score` only: the layer axis is 0
    boot = dict(
      ct_low=cat([r.ct_low for r in results]),
      ct_high=cat([r.ct_high for r in results]),
      ct_boot=np.take(
        np.concatenate([r.ct_boot for r in results], axis + 1), inv, axis + 1
      ),
      confidence=results[0].confidence,
      bootstrap=results[0].bootstrap,
    )
  return ct_lib.CTResult(
    **{k: cat([getattr(r, k) for r in results]) for k in _RESULT_FIELDS},
    tau=results[0].tau,
    neighbors=nbrs,
    **boot,
  )


# The file format: the header's "config" and one array per key below (the
# layout every version of this format has used); "pca_total_variance" was
# added later and is NaN when an older file lacks it.
_FILE_KEYS = {
  "pca_mean": lambda f: f.pca.mean,
  "pca_components": lambda f: f.pca.components,
  "pca_variances": lambda f: f.pca.variances,
  "pca_total_variance": lambda f: f.pca.total_variance,
  "centers": lambda f: f.centers,
  "inertia": lambda f: f.inertia,
  "points": lambda f: f.index.points,
  "aux": lambda f: f.index.aux,
  "cells": lambda f: f.index.cells,
  "starts": lambda f: f.index.starts,
  "order": lambda f: f.index.order,
  "test_sorted": lambda f: f.test.sorted_dist,
  "test_starts": lambda f: f.test.starts,
  "test_cells": lambda f: f.test.cells,
  "test_dist": lambda f: f.test.dist,
  "test_index": lambda f: f.test.index,
  "degenerate": lambda f: f.degenerate,
  "n_train_cells": lambda f: f.n_train_cells,
  "n_test_cells": lambda f: f.test.counts,
}


def _fitted_from_file(a: dict, metric: str) -> fitted_lib.Fitted:
  """Rebuilds the `Fitted` from the arrays of a reference file."""
  a = {k: jnp.asarray(v) for k, v in a.items()}
  total = a.get("pca_total_variance")
  if total is None:
    total = jnp.full(a["degenerate"].shape, jnp.nan, a["pca_mean"].dtype)
  return fitted_lib.Fitted(
    pca=pca_lib.PCA(
      mean=a["pca_mean"],
      components=a["pca_components"],
      variances=a["pca_variances"],
      total_variance=total,
    ),
    centers=a["centers"],
    index=nb.CellIndex(
      points=a["points"],
      aux=a["aux"],
      cells=a["cells"],
      starts=a["starts"],
      order=a["order"],
      metric=metric,
    ),
    test=fitted_lib.TestStats(
      sorted_dist=a["test_sorted"],
      starts=a["test_starts"],
      cells=a["test_cells"],
      dist=a["test_dist"],
      index=a["test_index"],
      counts=a["n_test_cells"],
    ),
    degenerate=a["degenerate"],
    n_train_cells=a["n_train_cells"],
    inertia=a["inertia"],
  )


@dataclasses.dataclass(frozen=True, eq=False)
class CTReference:
  """A reference (training set T and test set P) fitted for C_T on every layer.

  Build with `CTReference.fit`; score generated batches with `score` (one
  ``[L, m, D]`` batch) or `score_many` (``[B, L, m, D]``). For scoring
  inside your own jitted code, use ``ctjax.stats.score(ref.fitted, gen)``.

  Layers of different widths (ResNet, Swin...) come in the list form: a list
  of L arrays ``[N, D_l]`` (``[m, D_l]`` for a generated batch). The layers
  of each width are fitted and scored together in one compiled call, with no
  padding: a reference of W distinct widths compiles at most W shapes.

  Attributes:
    fitted: the `ctjax.stats.Fitted` pytree (every leaf has a leading layer
      axis L): PCA, k-means centres, cell index, test statistics. In the list
      form, a tuple of one `Fitted` per width group.
    config: the `ctjax.stats.FitConfig` it was fitted with (``n_components``
      resolved to an int; in the list form as requested, resolved per group).
    layer_names: ``L`` names used in messages.
    meta: JSON-able description kept with the reference (encoder, pooling,
      layers...); part of `identity`.
    groups: list form only: the layer indices of each `Fitted` in ``fitted``
      (``()`` for the stacked form).
  """

  fitted: fitted_lib.Fitted
  config: fitted_lib.FitConfig
  layer_names: tuple = ()
  meta: dict = dataclasses.field(default_factory=dict)
  groups: tuple = ()

  # ------------------------------------------------------------------ fit
  @classmethod
  def fit(
    cls,
    train,
    test,
    *,
    n_components: int | None = None,
    n_cells: int = 10,
    metric: str = "cosine",
    seed: int = 0,
    n_init: int = 10,
    meta: dict | None = None,
    layer_names=None,
    tile_queries: int | None = nb.TILE_QUERIES,
    tile_train: int = nb.TILE_TRAIN,
    search: str = "auto",
    mesh=None,
  ) -> "CTReference":
    """Fits PCA, k-means cells and test-set distances for every layer.

    Args:
      train: ``[L, N, D]`` training embeddings T (or ``[N, D]`` for one
        layer), or the list form: a list of L arrays ``[N, D_l]``.
      test: ``[L, n, D]`` held-out test embeddings P (list form with a
        list-form ``train``: L arrays ``[n, D_l]``).
      n_components: PCA dimension d; ``None`` means min(64, N, D). An explicit
        value outside [1, min(N, D)] is an error.
      n_cells: number of k-means cells k (k-means++ seeding, ``n_init``
        restarts, the lowest inertia kept).
      metric: "cosine" (1 − |cos|, the paper's) or "l2" (Meehan's).
      seed: seed of k-means; layer l uses ``fold_in(PRNGKey(seed), l)``.
      meta: JSON-able description kept with the reference (encoder, pooling,
        layers...); it is part of `identity`.
      layer_names: names used in messages (default "0", "1", ...).
      tile_queries, tile_train: nearest-neighbour tile sizes.
      search: "auto", "tiled", "dense" or "native" nearest-neighbour
        search (`neighbors.resolve_search`; the result is the same).
      mesh: ``None`` (one device), ``"all"`` (every device) or a
        `jax.sharding.Mesh` with a ``"data"`` axis: the test set's nearest
        neighbours are searched with the projected training points sharded
        over the mesh (`ctjax.sharding`); the result is the same.

    Raises:
      ValueError: NaN/Inf (naming the layer), mismatched shapes, fewer
        points than cells or components, a cell without a test point
        (naming layer and cell).
    """
    config = fitted_lib.FitConfig(
      n_components=n_components,
      n_cells=n_cells,
      n_init=n_init,
      metric=metric,
      seed=seed,
      tile_queries=tile_queries,
      tile_train=tile_train,
      search=search,
    )
    train_list = _layer_list(train)
    if train_list is not None and len({a.shape[1] for a in train_list}) > 1:
      return cls._fit_groups(train_list, test, config, layer_names, meta, mesh)
    train = _stack_layers("train", train)
    test = _stack_layers("test", test)
    n_layers, n_train, dim = train.shape
    config = _check_fit_args(n_layers, n_train, dim, test.shape, config=config)
    names = _layer_name_list(layer_names, n_layers)
    return cls._fit_arrays(
      train, test, _layer_keys(seed, n_layers), config, names, meta, mesh
    )

  @classmethod
  def _fit_arrays(cls, train, test, keys, config, names, meta, mesh):
    """`fit` of checked ``[L, N, D]``/``[L, n, D]`` with k-means ``keys``."""
    # T and P are copied once: layer by layer into a reused aligned buffer
    # (NumPy input on the CPU, `_fit_by_layer`) or whole (`_to_device`).
    # Without a mesh, the finite check is read off the fit's own sums (no
    # extra pass over T); with one, it runs on the device first.
    sharded = None
    if mesh is None:
      by_layer = jax.default_backend() == "cpu" and not any(
        isinstance(a, jax.Array) for a in (train, test)
      )
      if not by_layer:
        train, test = _to_device(train), _to_device(test)
      with threads.one_blas_thread():
        if by_layer:
          fitted, finite = _fit_by_layer(
            train, test, keys, config, sharding.layer_mesh(train.shape[0])
          )
        else:
          fitted, finite = jax.block_until_ready(
            fitted_lib.fit_layers(train, test, keys, config, with_finite=True)
          )
      _check_fit_finite(train, test, names, finite)
    else:
      train, test = _to_device(train), _to_device(test)
      _check_finite("train", train, names)
      _check_finite("test", test, names)
      mesh = sharding.resolve_mesh(mesh)
      pca, km_fit, pt = fitted_lib.pca_kmeans_layers(
        train,
        keys,
        n_components=config.n_components,
        n_cells=config.n_cells,
        n_init=config.n_init,
      )
      fitted, sharded = _fit_staged(
        pca, km_fit, pt, test, config=config, mesh=mesh
      )
    return cls._checked(fitted, config, names, meta, mesh, sharded)

  @classmethod
  def _fit_groups(cls, train, test, config, layer_names, meta, mesh):
    """`fit` of the list form: one stacked fit per width group.

    Layer l keeps its k-means key ``fold_in(PRNGKey(seed), l)``, so each
    layer equals the stacked fit of the same data.
    """
    n_layers = len(train)
    names = _layer_name_list(layer_names, n_layers)
    test = _layer_list(test)
    if test is None:
      raise ValueError(
        f"train is a list of {n_layers} layers of different widths; test "
        f"must be a list of {n_layers} arrays [n, D_l] too"
      )
    widths = [a.shape[1] for a in train]
    _check_layer_list("train", train, widths, names)
    _check_layer_list("test", test, widths, names)
    keys = _layer_keys(config.seed, n_layers)
    parts = []
    for g in _width_groups(widths):
      tr = _stack_list([train[l] for l in g])
      te = _stack_list([test[l] for l in g])
      cfg = _check_fit_args(
        len(g), tr.shape[1], tr.shape[2], te.shape, config=config
      )
      sub_names = [names[l] for l in g]
      parts.append(
        cls._fit_arrays(tr, te, keys[np.asarray(g)], cfg, sub_names, meta, mesh)
      )
    return cls._from_groups(parts, _width_groups(widths), config, names, meta)

  @classmethod
  def _from_groups(cls, parts, groups, config, names, meta) -> "CTReference":
    """The list-form reference of per-group stacked references ``parts``."""
    ref = cls(
      fitted=tuple(p.fitted for p in parts),
      config=config,
      layer_names=tuple(names),
      meta=dict(meta or {}),
      groups=tuple(tuple(int(l) for l in g) for g in groups),
    )
    ref.__dict__["_group_refs"] = list(zip(ref.groups, parts))
    return ref

  def _parts(self):
    """``[(layer indices, stacked CTReference)]``: one per width group (the
    reference itself for the stacked form)."""
    if not self.groups:
      return [(tuple(range(self.fitted.n_layers)), self)]
    if "_group_refs" not in self.__dict__:
      self.__dict__["_group_refs"] = [
        (
          g,
          CTReference(
            fitted=f,
            config=dataclasses.replace(
              self.config, n_components=int(f.n_components)
            ),
            layer_names=tuple(self.layer_names[l] for l in g),
            meta=dict(self.meta),
          ),
        )
        for g, f in zip(self.groups, self.fitted)
      ]
    return self.__dict__["_group_refs"]

  def _per_layer(self, get) -> tuple:
    """``get(stacked reference)`` of each layer's group, in layer order."""
    out = [None] * self.n_layers
    for g, sub in self._parts():
      for l in g:
        out[l] = get(sub)
    return tuple(out)

  @classmethod
  def fit_streaming(
    cls,
    train,
    test,
    *,
    n_components: int | None = None,
    n_cells: int = 10,
    metric: str = "cosine",
    seed: int = 0,
    n_init: int = 10,
    sample_size: int | None = 100_000,
    chunk_size: int = 8192,
    memory_budget: int | None = None,
    meta: dict | None = None,
    layer_names=None,
    search: str = "auto",
    mesh=None,
  ) -> "CTReference":
    """`fit` for a training set larger than memory, read in chunks.

    PCA comes from the covariance accumulated exactly over the chunks (two
    passes); a third pass projects T to d dimensions (kept, ``[L, N, d]``) and
    collects a seeded sample on which k-means runs; every projected point is
    then assigned to its cell in chunks. With ``sample_size=None`` (or ≥ N)
    k-means sees all of T and the result equals `fit` up to rounding. See
    `ctjax.stats.streaming`.

    Args:
      train: ``[L, N, D]`` array-like read in row chunks (``np.memmap``,
        ``np.ndarray``...), or a callable returning a fresh iterable of
        ``[L, c, D]`` chunks (called once per pass, three passes).
      test: ``[L, n, D]`` held-out test embeddings P (in memory).
      sample_size: training points k-means is fitted on (seeded by ``seed``).
      chunk_size: rows per chunk when ``train`` is an array.
      memory_budget: bytes for one nearest-neighbour tile's working set; sets
        ``tile_queries``/``tile_train`` (`streaming.tiles_for_budget`);
        ``None`` uses 64 queries x `stats.neighbors.STREAMING_TILE_TRAIN`
        rows.
      mesh: as in `fit`.
      Other arguments: as in `fit`.
    """
    from ctjax.stats import streaming  # pylint: disable=g-import-not-at-top

    test_list = _layer_list(test)
    if test_list is not None and len({a.shape[1] for a in test_list}) > 1:
      raise ValueError(
        "fit_streaming takes the stacked form [L, N, D]; fit layers of "
        "different widths with `fit` (list form) or one width at a time"
      )
    config = fitted_lib.FitConfig(
      n_components=n_components,
      n_cells=n_cells,
      n_init=n_init,
      metric=metric,
      seed=seed,
      tile_queries=nb.TILE_QUERIES,
      tile_train=nb.STREAMING_TILE_TRAIN,
      search=search,
    )
    source = streaming.ChunkSource(train, chunk_size)
    test = _to_device(_stack_layers("test", test))
    names = _layer_name_list(layer_names, source.n_layers)
    n_train, mean = streaming.mean_pass(source, names)
    config = _check_fit_args(
      source.n_layers, n_train, source.dim, test.shape, config=config
    )
    _check_finite("test", test, names)
    pca = streaming.pca_pass(source, mean, n_train, config.n_components)
    pt, km_fit = streaming.kmeans_pass(
      source,
      pca,
      _layer_keys(seed, source.n_layers),
      n_cells=n_cells,
      n_init=n_init,
      sample_size=sample_size,
      seed=seed,
    )
    if memory_budget is not None:
      tq, tt = streaming.tiles_for_budget(
        memory_budget, config.n_components, n_train
      )
      config = dataclasses.replace(config, tile_queries=tq, tile_train=tt)
    if sample_size is not None and sample_size < n_train:
      config = dataclasses.replace(config, kmeans_sample=int(sample_size))
    mesh = None if mesh is None else sharding.resolve_mesh(mesh)
    fitted, sharded = _fit_staged(
      pca, km_fit, pt, test, config=config, mesh=mesh
    )
    return cls._checked(fitted, config, names, meta, mesh, sharded)

  @classmethod
  def _checked(
    cls, fitted, config, names, meta, mesh, sharded
  ) -> "CTReference":
    """The reference, after per-layer checks (degenerate layers, empty cells)."""
    degenerate = np.asarray(fitted.degenerate)
    n_train_c = np.asarray(fitted.n_train_cells)
    n_test_c = np.asarray(fitted.test.counts)
    for l, name in enumerate(names):
      if degenerate[l]:
        warnings.warn(
          f"layer {name}: every embedding is the same (zero "
          f"variance); its C_T is undefined and reported as NaN",
          RuntimeWarning,
          stacklevel=3,
        )
      else:
        ct_lib.check_cells(
          n_train_c[l],
          n_test_c[l],
          layer=name,
          n_cells_arg=config.n_cells,
        )
    ref = cls(
      fitted=fitted,
      config=config,
      layer_names=tuple(names),
      meta=dict(meta or {}),
    )
    if sharded is not None:
      ref._sharded_index_cache()[mesh] = sharded
    return ref

  # ----------------------------------------------------------- properties
  @property
  def n_layers(self) -> int:
    """L."""
    if self.groups:
      return sum(len(g) for g in self.groups)
    return self.fitted.n_layers

  @property
  def dim(self):
    """D, the embedding width (list form: the tuple `widths`)."""
    return self.widths if self.groups else self.fitted.dim

  @property
  def widths(self) -> tuple[int, ...]:
    """``[L]`` width D_l of each layer."""
    return self._per_layer(lambda sub: int(sub.fitted.dim))

  @property
  def n_train(self) -> int:
    """N, the training points."""
    return self._parts()[0][1].fitted.n_train

  @property
  def n_test(self) -> int:
    """n, the test points."""
    return self._parts()[0][1].fitted.n_test

  @property
  def n_components(self):
    """d, the PCA dimension (list form: a tuple, one per layer)."""
    if self.groups:
      return self._per_layer(lambda sub: int(sub.fitted.n_components))
    return self.fitted.n_components

  @property
  def test_cells(self) -> np.ndarray:
    """``[L, n]`` cell of each test point, per layer (either form)."""
    out = np.empty((self.n_layers, self.n_test), np.int32)
    for g, sub in self._parts():
      out[list(g)] = np.asarray(sub.fitted.test.cells)
    return out

  @property
  def n_cells(self) -> int:
    """k, the k-means cells."""
    return self._parts()[0][1].fitted.n_cells

  @property
  def metric(self) -> str:
    return self.config.metric

  # ---------------------------------------------------------------- score
  def _tiles(self, search: str | None = None) -> dict:
    c = self.config
    if search is not None and search not in fitted_lib.SEARCHES:
      raise ValueError(
        f"search must be one of {fitted_lib.SEARCHES}, got {search!r}"
      )
    return dict(
      tile_queries=c.tile_queries,
      tile_train=c.tile_train,
      search=c.search if search is None else search,
    )

  def _gen_list(self, gen) -> list:
    """Validates a list-form generated batch: L arrays ``[m, D_l]``."""
    gen_list = _layer_list(gen)
    if gen_list is None:
      shape = getattr(gen, "shape", None) or f"a {type(gen).__name__}"
      raise ValueError(
        f"this reference's layers differ in width {self.widths}: gen must "
        f"be a list of {self.n_layers} arrays [m, D_l], got {shape}"
      )
    _check_layer_list("gen", gen_list, self.widths, self.layer_names)
    return gen_list

  def _gens_list(self, gens) -> list:
    """List-form batches: L arrays ``[B, m, D_l]`` (or B lists of L
    ``[m, D_l]``) -> L arrays ``[B, m, D_l]`` (device arrays stay on their
    device)."""
    if (
      isinstance(gens, (list, tuple))
      and gens
      and all(isinstance(b, (list, tuple)) for b in gens)
    ):
      batches = [self._gen_list(b) for b in gens]
      gens = [
        _stack_list([b[l] for b in batches]) for l in range(self.n_layers)
      ]
    if not isinstance(gens, (list, tuple)) or any(
      np.ndim(g) != 3 for g in gens
    ):
      raise ValueError(
        f"this reference's layers differ in width {self.widths}: gens must "
        f"be a list of {self.n_layers} arrays [batches, m, D_l] (or a list "
        "of batches, each a list of [m, D_l])"
      )
    gens = [g if isinstance(g, jax.Array) else np.asarray(g) for g in gens]
    _check_layer_list("gens", gens, self.widths, self.layer_names, 1)
    return gens

  def _check_gen(self, gen):
    """Validates ``gen [..., L, m, D]``; returns m."""
    if gen.shape[-1] != self.dim:
      raise ValueError(
        f"gen has dimension {gen.shape[-1]} but the reference "
        f"was fitted on dimension {self.dim}"
      )
    m = gen.shape[-2]
    if m == 0:
      raise ValueError("gen holds no points")
    return m

  def score(
    self,
    gen,
    *,
    tau: float | None = None,
    return_neighbors: bool = False,
    search: str | None = None,
    mesh=None,
    split_layers: bool | None = None,
    n_bootstrap: int = 0,
    bootstrap: str = "gen",
    confidence: float = bootstrap_lib.DEFAULT_CONFIDENCE,
    seed: int = 0,
  ) -> ct_lib.CTResult:
    """C_T of a generated batch on every layer.

    Args:
      gen: ``[L, m, D]`` generated embeddings Q (``[m, D]`` for a one-layer
        reference).
      tau: threshold on a cell's generated share; ``None`` = 20/m.
      return_neighbors: also return, per layer, each generated and test
        point's nearest same-cell training index and distance.
      search: "auto", "tiled", "dense" or "native" search; ``None`` uses
        the fit's (`FitConfig.search`). The result is the same.
      mesh: ``None`` (one device), ``"all"`` or a `jax.sharding.Mesh` with a
        ``"data"`` axis: the projected training points are sharded over the
        mesh (dealt out once per mesh and cached) and the nearest neighbours
        reduced across devices (`ctjax.sharding`); the result is the same.
      split_layers: with ``mesh=None``: split the layers between the local
        devices, each searching its layers (`ctjax.sharding.layer_mesh`;
        one compiled program, the result is the same). ``None`` (default)
        splits when the process has several local devices, e.g. a CPU split
        with `ctjax.use_cpu_devices` (what ``run.py`` does), so that every
        core searches; ``False`` keeps one device.
      n_bootstrap: bootstrap replicates B; 0 (the default) computes none.
        With B > 0 the result carries per-layer percentile intervals
        ``ct_low``/``ct_high [L]`` and the replicates ``ct_boot [B, L]``.
        The fitted cells and every nearest-neighbour distance stay fixed; a
        replicate reweights the points (`ctjax.stats.bootstrap`): no new
        search runs. At B = 1000 resampling the generated points adds a
        fraction of one warm score, the test points a few
        (benchmarks/bench_bootstrap.py).
      bootstrap: what is resampled: "gen" (the generated points), "test"
        (the test points) or "gen+test" (both, independently).
      confidence: the intervals' nominal level, in (0, 1).
      seed: seed of the resampling; replicate b uses the indices
        ``ctjax.stats.bootstrap.resample_indices(seed, B, m, n)[.][b]``.

    Returns:
      A `CTResult`: ``ct [L]``, ``z``/``included``/``test_frac``/
      ``gen_frac``/``u``/``n_test``/``n_gen [L, k]`` (and the bootstrap
      fields when ``n_bootstrap > 0``).

    Raises:
      ValueError: bad shapes, τ, NaN/Inf in ``gen``, or bad bootstrap
        arguments (``n_bootstrap`` not an integer ≥ 0, ``confidence``
        outside (0, 1), an unknown ``bootstrap``).
    """
    n_bootstrap, confidence, bootstrap = bootstrap_lib.check_args(
      n_bootstrap, confidence, bootstrap
    )
    boot_kw = dict(
      n_bootstrap=n_bootstrap,
      bootstrap=bootstrap,
      confidence=confidence,
      seed=seed,
    )
    if self.groups:
      # Each width group draws the same indices (same seed, m and n), so the
      # merged replicates are whole curves.
      gen = self._gen_list(gen)
      return _merge_results(
        [
          sub.score(
            _stack_list([gen[l] for l in g]),
            tau=tau,
            return_neighbors=return_neighbors,
            search=search,
            mesh=mesh,
            split_layers=split_layers,
            **boot_kw,
          )
          for g, sub in self._parts()
        ],
        self.groups,
        axis=0,
      )
    gen = _stack_layers("gen", gen, self.n_layers)
    m = self._check_gen(gen)
    tau = ct_lib.default_tau(m) if tau is None else ct_lib.check_tau(tau, m)
    m_pad = _pad_rows(m)
    f = self.fitted
    tiles = self._tiles(search)
    on_device = _sums_on_device(self.n_test, m_pad)
    if n_bootstrap:
      bootstrap_lib.check_sizes(self.n_test, m)  # before the search
    u2 = n_gen = None
    # The common case, a NumPy batch: padded on its way to the device
    # (`_batch_to_device`: one host copy on a CPU, none elsewhere), the
    # finite check fused into the score (a bad batch raises once it is
    # scored), on one device or with the layers split between the local
    # devices.
    host = mesh is None and on_device and not isinstance(gen, jax.Array)
    split = self._layer_mesh(split_layers) if host else None
    if host:
      valid = np.arange(m_pad) < m
      groups = self._score_groups(tiles, m_pad) if split is None else None
      if groups is not None:
        finite, out = self._score_in_threads(
          groups, _host_padded(gen, m_pad), valid, tau, tiles
        )
      elif split is None:
        gen = _batch_to_device(gen, m_pad)
        finite, out = _score_finite(f, gen, valid, tau, **tiles)
      else:
        n_layers = self.n_layers
        gen = jax.device_put(
          _batch_to_device(gen, m_pad, sharding.padded_layers(n_layers, split)),
          NamedSharding(split, P(sharding.LAYERS)),
        )
        finite, out = _split_score(split, tuple(sorted(tiles.items())))(
          self._split_fitted(split), gen, valid, np.float32(tau)
        )
        # The real layers, back on the first device (with the reference).
        finite, out = jax.device_put(
          jax.tree_util.tree_map(lambda x: x[:n_layers], (finite, out)),
          split.devices.flat[0],
        )
      _check_finite("gen", gen, self.layer_names, ok=finite)
      scores, cells, dist, idx = out
      u2, n_gen = scores.u2, scores.n_gen
    else:
      gen, valid, finite = _pad_batch(_to_device(gen), m_pad=m_pad)
      _check_finite("gen", gen, self.layer_names, ok=finite)
      if mesh is None and on_device:
        scores, cells, dist, idx = score_lib.score_detailed(
          f, gen, tau=tau, valid=valid, **tiles
        )
        u2, n_gen = scores.u2, scores.n_gen
      elif mesh is None:
        tu, cells, dist, idx = _query_parts(f, gen, valid, **tiles)
      else:
        pg, cells = _project_layers(f, gen, valid)
        dist, idx = sharding.nearest_in_cell(
          self.sharded_index(mesh),
          pg,
          cells,
          tile_queries=self.config.tile_queries,
          tile_train=self.config.tile_train,
        )
        tu = _twice_u_layers(f, dist, cells)
      if on_device and u2 is None:
        scores = _cell_scores(f, tu, cells)
        u2, n_gen = scores.u2, scores.n_gen
    cells = np.asarray(cells)[:, :m]
    if u2 is None:  # 2·n·m beyond int32 without x64: exact int64 on the host
      k = self.n_cells
      u2 = mannwhitney.cell_sums(np.asarray(tu)[:, :m], cells, k)
      n_gen = np.stack([np.bincount(c, minlength=k)[:k] for c in cells])
    res = ct_lib.z_and_ct(
      np.asarray(u2),
      np.asarray(f.test.counts),
      np.asarray(n_gen),
      tau,
      degenerate=np.asarray(f.degenerate),
      layer_names=list(self.layer_names),
    )
    if n_bootstrap:
      res = _with_bootstrap(
        res, f, dist[:, :m], cells, tau=tau, degenerate=f.degenerate, **boot_kw
      )
    if return_neighbors:
      res = dataclasses.replace(
        res,
        neighbors=ct_lib.Neighbors(
          gen_index=np.asarray(idx)[:, :m],
          gen_dist=np.asarray(dist)[:, :m],
          test_index=np.asarray(f.test.index),
          test_dist=np.asarray(f.test.dist),
          gen_cells=cells,
        ),
      )
    return res

  def score_many(
    self,
    gens,
    *,
    tau: float | None = None,
    memory_budget: int | None = None,
    batch_size: int | None = None,
    search: str | None = None,
    vectorize: bool | None = None,
    split_layers: bool | None = None,
    progress: bool | None = None,
  ) -> ct_lib.CTResult:
    """C_T of B generated batches of the same size, in one call.

    The batches go to the device in chunks of ``c`` (a power of two at most
    ``batch_size``, or what ``memory_budget`` allows), each scored by one
    vmapped, compiled call; the last chunk is padded, so the number of
    compilations does not grow with B. Chunk i+1 is padded and sent while
    chunk i is scored, so two chunks are held at once.

    Args:
      gens: ``[B, L, m, D]`` generated embeddings (or a sequence of B
        ``[L, m, D]`` arrays). A NumPy array stays on the host and goes to
        the device a chunk at a time; a device array (`jax.Array`, e.g.
        embeddings computed on a GPU) is chunked and padded where it lies,
        never copied to the host.
      tau: as in `score` (one τ for every batch).
      memory_budget: device bytes for one chunk (default 1 GiB).
      batch_size: batches per chunk (overrides ``memory_budget``).
      search: as in `score`.
      vectorize: ``None`` (default) searches the queries of a chunk's
        batches together, one search per layer (the fastest on any
        backend); ``True`` scores the batches with `jax.vmap`, ``False``
        one after another (`lax.map`). The result is the same.
      split_layers: as in `score` (with the default ``vectorize``).
      progress: a tqdm progress bar over the batches; ``None`` (default)
        shows one when there are at least 4 chunks (``CTJAX_PROGRESS=0``
        turns every ctjax bar off).

    Returns:
      A `CTResult` whose fields have a leading batch axis: ``ct [B, L]``,
      ``z``/``included``/``test_frac``/``gen_frac``/``u``/``n_test``/
      ``n_gen [B, L, k]``; each batch's values equal ``score(gens[b])``.

    Raises:
      ValueError: bad shapes, τ, or NaN/Inf (naming the batch and layers).
    """
    if self.groups:
      gens = self._gens_list(gens)
      kw = dict(
        tau=tau,
        memory_budget=memory_budget,
        batch_size=batch_size,
        search=search,
        vectorize=vectorize,
        split_layers=split_layers,
        progress=progress,
      )
      return _merge_results(
        [
          sub.score_many(_stack_list([gens[l] for l in g], axis=1), **kw)
          for g, sub in self._parts()
        ],
        self.groups,
        axis=1,
      )
    on_dev = _is_device_input(gens)
    if isinstance(gens, (list, tuple)):
      gens = (
        jnp.stack(gens) if on_dev else np.stack([np.asarray(g) for g in gens])
      )
    gens = gens if on_dev else np.asarray(gens)
    if gens.ndim != 4 or gens.shape[1] != self.n_layers:
      raise ValueError(
        f"gens must be [batches, layers={self.n_layers}, points, dims], got "
        f"shape {gens.shape}"
      )
    if not jnp.issubdtype(gens.dtype, jnp.floating):
      gens = gens.astype(np.float32)
    m = self._check_gen(gens)
    n_batches = gens.shape[0]
    if n_batches == 0:
      raise ValueError("gens holds no batches")
    tau = ct_lib.default_tau(m) if tau is None else ct_lib.check_tau(tau, m)
    m_pad = _pad_rows(m)
    on_device = _sums_on_device(self.n_test, m_pad)
    tiles = self._tiles(search)
    mode = {None: "merge", True: "vmap", False: "map"}[vectorize]
    if batch_size is None:
      per = score_lib.batch_bytes(
        self.fitted,
        m_pad,
        tile_queries=tiles["tile_queries"],
        tile_train=tiles["tile_train"],
      )
      budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
      batch_size = max(1, int(budget) // max(per, 1))
    chunk = min(int(batch_size), 1 << (n_batches - 1).bit_length())
    chunk = 1 << (max(chunk, 1).bit_length() - 1)  # a power of two
    u2s, n_gens = [], []
    k = self.n_cells
    n_layers = self.n_layers
    split = None
    if mode == "merge" and on_device:
      split = self._layer_mesh(split_layers)
    n_layers_pad = (
      n_layers if split is None else sharding.padded_layers(n_layers, split)
    )
    if mode == "merge":  # layer-major [L', c, m, D]
      shape = (n_layers_pad, chunk, m_pad, self.dim)
    else:
      shape = (chunk, n_layers, m_pad, self.dim)

    # NumPy batches go to the device one by one, and the merged program
    # gathers each layer's queries from them (`_score_batches`): no
    # layer-major copy of the chunk is made. On a CPU a fresh 320 MB
    # buffer's page faults cost more than copying into it (16 batches at
    # CIFAR scale: 205 ms to send them as one array, 33-108 ms one by one).
    # A device array is padded and made layer-major where it lies.
    by_batch = mode == "merge" and split is None and not on_dev
    # On one CPU device with XLA's searches, the layer groups of a chunk are
    # scored by concurrent programs, one thread each (`LAYER_THREADS`); the
    # native search spreads over the CPUs itself.
    groups = None
    if mode == "merge" and on_device and split is None:
      groups = self._score_groups(tiles, chunk * m_pad)
    if groups is not None:
      parts = self._group_fitted(groups)
      size = groups[0][1] - groups[0][0]
      group_shape = (size, chunk, m_pad, self.dim)

    def group_task(part, batches, valid, i):
      """Layer group i of a chunk: from the per-batch arrays ``batches``
      (NumPy input), else from the device array ``part``."""
      start, stop = groups[i]
      if batches is not None:
        finite, out = _score_batches(
          parts[i],
          batches,
          valid,
          np.int32(start),
          tau,
          on_device=True,
          **tiles,
        )
      else:
        buf = _device_padded(
          jax.device_put(part[:, start:stop]),
          shape=group_shape,
          layer_major=True,
        )
        finite, out = _score_chunk(
          parts[i], buf, valid, tau, on_device=True, mode="merge", **tiles
        )
      return jax.device_get((finite, (out.u2, out.n_gen)))

    def dispatch(start):
      """Pads chunk ``start`` and starts its (asynchronous) score."""
      part = gens[start : start + chunk]
      b = part.shape[0]
      valid = np.zeros((chunk, m_pad), bool)
      valid[:b, :m] = True
      batches = None
      if by_batch:
        # The last batch stands in for the missing ones of a partial chunk
        # (no copy; their rows are not valid).
        batches = [jax.device_put(part[j]) for j in range(b)]
        batches = tuple(batches + batches[-1:] * (chunk - b))
      if groups is not None:
        futures = threads.start_groups(
          (
            "score_many",
            by_batch,
            group_shape,
            m,
            _program_key(parts[0], tiles),
          ),
          [
            functools.partial(group_task, part, batches, valid, i)
            for i in range(len(groups))
          ],
        )
        return start, b, None, futures
      if by_batch:
        finite, out = _score_batches(
          self.fitted,
          batches,
          jax.device_put(valid),
          np.int32(0),
          tau,
          on_device=on_device,
          **tiles,
        )
      else:
        # Padded (and transposed) on the device, where a device array lies.
        buf = _device_padded(
          jax.device_put(part), shape=shape, layer_major=mode == "merge"
        )
        if split is not None:
          finite, out = _split_chunk(split, tuple(sorted(tiles.items())))(
            self._split_fitted(split),
            jax.device_put(buf, NamedSharding(split, P(sharding.LAYERS))),
            valid,
            np.float32(tau),
          )
          finite, out = jax.tree_util.tree_map(
            lambda x: x[:, :n_layers], (finite, out)
          )
        else:
          finite, out = _score_chunk(
            self.fitted,
            jax.device_put(buf),
            jax.device_put(valid),
            tau,
            on_device=on_device,
            mode=mode,
            **tiles,
          )
      if on_device:
        out = (out.u2, out.n_gen)
      return start, b, finite, out

    def collect(start, b, finite, out):
      """Waits for a dispatched chunk; checks it and keeps its sums."""
      if groups is not None:  # out: the groups' futures
        res = [r.result() for r in out]
        finite, out = threads.merge_groups(groups, res, axis=1)
      else:
        finite, out = jax.device_get((finite, out))
      bar.update(b)
      finite = finite[:b]
      if not finite.all():
        i, bad = np.flatnonzero(~finite.all(axis=1))[0], ~finite
        layers = [self.layer_names[l] for l in np.flatnonzero(bad[i])]
        raise ValueError(
          f"gens[{start + i}] has NaN or Inf values in layer(s) "
          f"{', '.join(layers)}"
        )
      if on_device:
        u2s.append(out[0][:b])
        n_gens.append(out[1][:b])
      else:
        tu, cells = (x[:b, :, :m] for x in out)
        u2s.append(mannwhitney.cell_sums(tu, cells, k))
        n_gens.append(
          np.apply_along_axis(
            lambda c: np.bincount(c, minlength=k)[:k], -1, cells
          )
        )

    # Chunk i+1 is padded and sent while chunk i is scored (the device runs
    # asynchronously); at most two chunks are held at once.
    n_chunks = -(-n_batches // chunk)
    with progress_lib.bar(
      total=n_batches,
      desc="score_many",
      unit="batch",
      show=progress if progress is not None else n_chunks >= 4,
      leave=False,
    ) as bar:
      pending = None
      for start in range(0, n_batches, chunk):
        running = dispatch(start)
        if pending is not None:
          collect(*pending)
        pending = running
      collect(*pending)
    u2 = np.concatenate(u2s).reshape(-1, k)
    n_gen = np.concatenate(n_gens).reshape(-1, k)
    names = [
      f"{name} of batch {b}"
      for b in range(n_batches)
      for name in self.layer_names
    ]
    flat = ct_lib.z_and_ct(
      u2,
      np.tile(np.asarray(self.fitted.test.counts), (n_batches, 1)),
      n_gen,
      tau,
      degenerate=np.tile(np.asarray(self.fitted.degenerate), n_batches),
      layer_names=names,
    )
    lead = (n_batches, self.n_layers)
    return dataclasses.replace(
      flat,
      **{
        name: getattr(flat, name).reshape(lead + getattr(flat, name).shape[1:])
        for name in (
          "ct",
          "z",
          "included",
          "test_frac",
          "gen_frac",
          "u",
          "n_test",
          "n_gen",
        )
      },
    )

  def _score_groups(self, tiles, n_queries) -> list[tuple[int, int]] | None:
    """The layer groups `score` and `score_many` run as concurrent programs
    (`LAYER_THREADS`; `threads.layer_groups`), or None for one program.

    ``tiles``: the search settings (`_tiles`); ``n_queries``: queries a
    layer. One program with the native search, whose kernel spreads over
    the CPUs itself (one program against two groups, CIFAR scale on 2
    cores: `score_many` 34.8 against 39.5 ms a batch, `score` 47.1 against
    49.6 ms).
    """
    search = nb.resolve_search(tiles["search"], n_queries, tiles["tile_train"])
    if search == "native":
      return None
    n = _layer_threads(self.n_layers)
    return threads.layer_groups(self.n_layers, n) if n > 1 else None

  def _group_fitted(self, groups) -> list:
    """``self.fitted`` cut into the layer ranges ``groups`` (cached)."""
    cache = self.__dict__.setdefault("_group_fitteds", {})
    key = tuple(groups)
    if key not in cache:
      cache[key] = _slice_groups(self.fitted, groups=key)
    return cache[key]

  def _score_in_threads(self, groups, padded, valid, tau, tiles):
    """`_score_finite` of each layer group of the host batch ``padded
    [L, m_pad, D]``, one thread each, merged (on the host) to the outputs
    of one call. Every group has the same shape (`threads.layer_groups`),
    so one program serves them all."""
    parts = self._group_fitted(groups)

    def one(i):
      start, stop = groups[i]
      return jax.device_get(
        _score_finite(
          parts[i], jax.device_put(padded[start:stop]), valid, tau, **tiles
        )
      )

    size = groups[0][1] - groups[0][0]
    key = ("score", (size,) + padded.shape[1:], _program_key(parts[0], tiles))
    futures = threads.start_groups(
      key, [functools.partial(one, i) for i in range(len(groups))]
    )
    return threads.merge_groups(groups, [f.result() for f in futures])

  def _layer_mesh(self, split_layers: bool | None):
    """The mesh `score` splits the layers over (None: one device)."""
    if split_layers is False:
      return None
    if split_layers not in (None, True):
      raise ValueError(
        f"split_layers must be None, True or False, got {split_layers!r}"
      )
    return sharding.layer_mesh(self.n_layers)

  def _split_fitted(self, mesh) -> fitted_lib.Fitted:
    """``self.fitted`` split over ``mesh``'s devices by layer (cached)."""
    cache = self.__dict__.setdefault("_split_fitteds", {})
    if mesh not in cache:
      cache[mesh] = sharding.split_layers(self.fitted, mesh)
    return cache[mesh]

  def _sharded_index_cache(self) -> dict:
    return self.__dict__.setdefault("_sharded_indexes", {})

  def sharded_index(self, mesh) -> "sharding.ShardedIndex":
    """The projected training points dealt out over ``mesh`` (cached).

    Stacked form only; in the list form ``score(mesh=...)`` shards each
    width group's own index.
    """
    if self.groups:
      raise ValueError(
        "sharded_index is per width group in the list form; call "
        "score(gen, mesh=...) instead"
      )
    mesh = sharding.resolve_mesh(mesh)
    cache = self._sharded_index_cache()
    if mesh not in cache:
      index = self.fitted.index
      cache[mesh] = sharding.shard_index(
        index.points,
        index.cells,
        index.order,
        n_cells=self.n_cells,
        metric=self.metric,
        mesh=mesh,
      )
    return cache[mesh]

  # ------------------------------------------------------------- identity
  def _settings(self) -> dict:
    """The file header's config: settings, sizes, names and meta."""
    c = self.config
    grouped = bool(self.groups)
    out = dict(
      n_components=(
        list(self.n_components) if grouped else int(self.n_components)
      ),
      n_cells=int(c.n_cells),
      n_init=int(c.n_init),
      metric=c.metric,
      seed=int(c.seed),
      n_layers=int(self.n_layers),
      dim=list(self.widths) if grouped else int(self.dim),
      n_train=int(self.n_train),
      n_test=int(self.n_test),
      layer_names=list(self.layer_names),
      meta=dict(self.meta),
      tile_queries=c.tile_queries,
      tile_train=int(c.tile_train),
      search=c.search,
    )
    if c.kmeans_sample is not None:
      out["kmeans_sample"] = int(c.kmeans_sample)
    if grouped:
      out["groups"] = [list(g) for g in self.groups]
      out["n_components_arg"] = c.n_components
    return out

  @property
  def _version(self) -> int:
    return VERSION if self.groups else STACKED_VERSION

  def identity(self) -> dict:
    """JSON-able settings and a hash of the fitted reference.

    Two references with the same ``hash`` give the same curves for the same
    generated batch; fingerprints are only comparable under one hash.
    """
    cfg = {
      k: v
      for k, v in self._settings().items()
      if k not in ("tile_queries", "tile_train", "search")
    }
    return dict(format=FORMAT, version=self._version, **cfg, hash=self.hash)

  @functools.cached_property
  def hash(self) -> str:
    h = hashlib.sha256()
    cfg = self._settings()
    settings = {
      k: cfg[k]
      for k in (
        "n_components",
        "n_cells",
        "n_init",
        "metric",
        "seed",
        "n_layers",
        "dim",
        "n_train",
        "n_test",
      )
    }
    if self.groups:
      settings["groups"] = cfg["groups"]
    h.update(json.dumps(settings, sort_keys=True).encode())
    for _, sub in self._parts():
      f = sub.fitted
      for x in (f.pca.mean, f.pca.components, f.centers, f.test.sorted_dist):
        h.update(np.ascontiguousarray(np.asarray(x)).tobytes())
    return h.hexdigest()[:16]

  # ------------------------------------------------------------ save/load
  def save(self, path) -> None:
    """Writes the reference to one ``.npz`` file, atomically."""
    buf = io.BytesIO()
    # The list form keeps each width group's arrays under "g<j>_<key>".
    arrays = {
      (f"g{j}_{k}" if self.groups else k): np.asarray(get(sub.fitted))
      for j, (_, sub) in enumerate(self._parts())
      for k, get in _FILE_KEYS.items()
    }
    header = dict(format=FORMAT, version=self._version, config=self._settings())
    np.savez(
      buf,
      __header__=np.frombuffer(json.dumps(header).encode(), np.uint8),
      **arrays,
    )
    atomic_write(os.fspath(path), lambda f: f.write(buf.getvalue()))

  @classmethod
  def load(cls, path) -> "CTReference":
    """Reads a reference written by `save` (by this or an earlier ctjax)."""
    try:
      with np.load(path, allow_pickle=False) as z:
        header = json.loads(bytes(z["__header__"]).decode())
        arrays = {k: z[k] for k in z.files if k != "__header__"}
    except (OSError, KeyError, ValueError) as e:
      raise ValueError(f"{path}: not a ctjax reference file ({e})") from e
    if header.get("format") != FORMAT:
      raise ValueError(f"{path}: not a ctjax reference file")
    if header.get("version", 0) > VERSION:
      raise ValueError(
        f"{path}: written by a newer ctjax (format version "
        f"{header['version']} > {VERSION})"
      )
    cfg = header["config"]
    groups = [tuple(int(l) for l in g) for g in cfg.get("groups", [])]
    prefixes = [f"g{j}_" for j in range(len(groups))] if groups else [""]
    need = set(_FILE_KEYS) - {"pca_total_variance"}
    missing = sorted({p + k for p in prefixes for k in need} - set(arrays))
    if missing:
      raise ValueError(f"{path}: reference file lacks {', '.join(missing)}")
    n_comp = cfg.get("n_components_arg") if groups else cfg["n_components"]
    config = fitted_lib.FitConfig(
      n_components=None if n_comp is None else int(n_comp),
      n_cells=int(cfg["n_cells"]),
      n_init=int(cfg["n_init"]),
      metric=cfg["metric"],
      seed=int(cfg["seed"]),
      tile_queries=cfg.get("tile_queries", nb.TILE_QUERIES),
      tile_train=int(cfg.get("tile_train", nb.TILE_TRAIN)),
      search=cfg.get("search", "auto"),
      kmeans_sample=cfg.get("kmeans_sample"),
    )
    if groups:
      fitted = tuple(
        _fitted_from_file(
          {k[len(p) :]: v for k, v in arrays.items() if k.startswith(p)},
          config.metric,
        )
        for p in prefixes
      )
      return cls(
        fitted=fitted,
        config=config,
        layer_names=tuple(cfg["layer_names"]),
        meta=dict(cfg.get("meta", {})),
        groups=tuple(groups),
      )
    return cls(
      fitted=_fitted_from_file(arrays, config.metric),
      config=config,
      layer_names=tuple(cfg["layer_names"]),
      meta=dict(cfg.get("meta", {})),
    )

  def __repr__(self):
    return (
      f"CTReference(layers={self.n_layers}, N={self.n_train}, "
      f"n={self.n_test}, D={self.dim}, d={self.n_components}, "
      f"k={self.n_cells}, metric={self.metric!r}, hash={self.hash})"
    )


def _with_bootstrap(
  res,
  f,
  dist,
  cells,
  *,
  tau,
  degenerate,
  n_bootstrap,
  bootstrap,
  confidence,
  seed,
) -> ct_lib.CTResult:
  """``res`` with bootstrap intervals from the scored batch's L(q)
  ``dist [L, m]`` and ``cells [L, m]`` (`ctjax.stats.bootstrap`)."""
  n_layers, m = cells.shape
  u2, n_gen, n_test = bootstrap_lib.replicates(
    f.test,
    jnp.asarray(dist),
    jnp.asarray(cells, jnp.int32),
    jax.random.PRNGKey(seed),
    n_boot=n_bootstrap,
    m=m,
    mode=bootstrap,
    batch_size=bootstrap_lib.chunk_size(n_layers, f.n_test, m, bootstrap),
  )
  boot = bootstrap_lib.finish(
    u2, n_test, n_gen, tau, degenerate=np.asarray(degenerate, bool)
  )
  low, high = bootstrap_lib.percentile_interval(boot, confidence)
  bad = ~np.isfinite(res.ct)
  return dataclasses.replace(
    res,
    ct_low=np.where(bad, np.nan, low),
    ct_high=np.where(bad, np.nan, high),
    ct_boot=boot,
    confidence=confidence,
    bootstrap=bootstrap,
  )


def _sums_on_device(n_test: int, m: int) -> bool:
  """Whether per-cell 2·U sums are exact on device (`stats.scoring.u2_dtype`)."""
  try:
    score_lib.u2_dtype(n_test, m)
  except ValueError:
    return False
  return True


def ct_curve(train, test, gen, **kwargs) -> ct_lib.CTResult:
  """`CTReference.fit(train, test, **fit_kwargs).score(gen, **score_kwargs)`.

  Keyword arguments ``tau``, ``return_neighbors``, ``n_bootstrap``,
  ``bootstrap`` and ``confidence`` go to `score` (``seed`` is the fit's), the
  rest to `fit`. Shapes: train ``[L, N, D]``, test ``[L, n, D]``, gen
  ``[L, m, D]`` (or the list form, L arrays ``[N, D_l]``, ``[n, D_l]``,
  ``[m, D_l]``).
  """
  score_kw = {
    k: kwargs.pop(k)
    for k in (
      "tau",
      "return_neighbors",
      "n_bootstrap",
      "bootstrap",
      "confidence",
    )
    if k in kwargs
  }
  return CTReference.fit(train, test, **kwargs).score(gen, **score_kw)


def ct_score(
  train,
  test,
  gen,
  *,
  n_components: int | None = None,
  n_cells: int = 10,
  tau: float | None = None,
  metric: str = "cosine",
  seed: int = 0,
  return_neighbors: bool = False,
) -> ct_lib.CTResult:
  """C_T of one layer end to end: PCA and k-means fitted on ``train``, then scored.

  Args:
    train: ``[N, D]`` training embeddings T.
    test: ``[n, D]`` held-out test embeddings P.
    gen: ``[m, D]`` generated embeddings Q.
    n_components: PCA dimension; ``None`` means min(64, N, D).
    n_cells: number of k-means cells.
    tau: threshold; ``None`` = 20/m.
    metric: "cosine" (1 − |cos|, the paper's) or "l2".
    seed: k-means seed.

  Returns:
    A `CTResult` with ``ct`` a float and ``[k]`` per-cell fields.
  """
  ref = CTReference.fit(
    np.asarray(train)[None],
    np.asarray(test)[None],
    n_components=n_components,
    n_cells=n_cells,
    metric=metric,
    seed=seed,
  )
  res = ref.score(
    np.asarray(gen)[None], tau=tau, return_neighbors=return_neighbors
  )
  return res.squeeze()
