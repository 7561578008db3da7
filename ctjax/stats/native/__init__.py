"""ctjax's compiled CPU kernels, called from XLA programs through its FFI.

Eight kernels, each an XLA FFI handler, so they run inside ctjax's jitted
programs (and a user's `jax.jit`, `jax.vmap`, `lax.scan`) like any other
operation:

- ``nearest.cc``, the same-cell search (``search="native"``). XLA:CPU runs
  the search's products at the GEMM rate but writes each ``[rows, queries]``
  block to memory and reads it back for the minimum, which costs as much
  again (README, "C_T engine"); the kernel keeps the products of a few rows
  with a block of queries in registers and reduces them there.
- ``lloyd.cc``, k-means (`ctjax.stats.kmeans`): the k-means++ seeding and
  the Lloyd iterations of all restarts at once, each pass over x shared by
  every restart still running, where XLA ran the Lloyd iterations one
  restart after another.
- ``scatter.cc``, the PCA's scatter matrix Σ (x − mean)(x − mean)ᵀ
  (`ctjax.stats.pca.covariance`): it multiplies only the register tiles that
  touch the upper triangle (about half of XLA's ``xᵀx``), reads x from
  memory once, and sums in float64 across row panels.
- ``depthwise.cc``, ConvNeXt's 7x7 depthwise convolution
  (`ctjax.models.layers.conv2d`): channels as vector lanes, a tile of output
  columns in registers, each input vector loaded once per kernel row, where
  XLA:CPU ran one fused loop of 49 shifted multiply-adds.
- ``attention.cc``, the ViT family's attention without a bias
  (`ctjax.models.layers.attention`): one (batch, head) per work item, the
  logits of a block of query rows, their softmax and the block's output
  computed in cache, where XLA wrote the ``[B, H, T, T]`` logits to memory
  between two batched products.
- ``layernorm.cc``, the encoders' LayerNorm (`ctjax.models.layers.LayerNorm`):
  two passes over each row (mean, centred variance) with channel vectors,
  rows split across threads.
- ``mlp.cc``, narrow exact-GELU MLPs (`ctjax.models.layers.mlp`: ConvNeXt's
  and Swin's first two stages): the hidden layer of 32 rows at a time kept
  in cache, where XLA wrote it to memory, read it for the GELU and again
  for the second product.
- ``dense.cc``, the encoders' dense layers on an AVX-512 CPU with at
  most 2 cores (`ctjax.models.layers.Dense`, `ctjax.models.layers.mlp`): ``x @ w + b``
  (and GELU) with each thread's block of output columns, its weights packed
  to stay in that core's L2, where XLA:CPU's products split between two
  cores ran 1.7x one core's rate.

They share ``pool.h``'s helper threads and are compiled together, on first
use, by the host's C++ compiler (``$CXX``, else ``c++``/``g++``/``clang++``)
with ``-O3 -march=native`` against the FFI headers that ship with jaxlib, into
``$CTJAX_NATIVE_CACHE`` (default ``~/.cache/ctjax/native``), once per source,
compiler, jaxlib and CPU. The file is written atomically, so concurrent
processes are safe. Where there is no compiler, or it fails, or
``CTJAX_NATIVE=0``, `available` is False (`reason` says why), and
``"auto"`` choices keep XLA's programs.

The search: both rank with the same score and break ties to the lowest index,
and the returned distance is recomputed from the winner; only the float32
rounding of the ranking score differs (the kernel sums the d products in
order, XLA's GEMM in blocks). So where two training points are within that
rounding of the same distance, either may win. On the tests' random data the
neighbours are identical.

Only float32 on a CPU backend: other dtypes (``jax_enable_x64``) and other
backends use XLA.
"""

import contextlib
import ctypes
import functools
import hashlib
import math
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

_HERE = Path(__file__).parent
# Compiled into one library (they share pool.h's helper threads).
SOURCES = (
  _HERE / "nearest.cc",
  _HERE / "scatter.cc",
  _HERE / "lloyd.cc",
  _HERE / "depthwise.cc",
  _HERE / "attention.cc",
  _HERE / "layernorm.cc",
  _HERE / "mlp.cc",
  _HERE / "dense.cc",
)
HEADERS = (_HERE / "pool.h", _HERE / "simd.h")
# FFI target name -> the library's handler symbol.
TARGETS = {
  "ctjax_nearest_in_cell": "CtjaxNearestInCell",
  "ctjax_scatter": "CtjaxScatter",
  "ctjax_lloyd": "CtjaxLloyd",
  "ctjax_kmeans_plus_plus": "CtjaxKmeansPlusPlus",
  "ctjax_depthwise": "CtjaxDepthwise",
  "ctjax_attention": "CtjaxAttention",
  "ctjax_layer_norm": "CtjaxLayerNorm",
  "ctjax_mlp": "CtjaxMlp",
  "ctjax_dense": "CtjaxDense",
}
FLAGS = (
  "-O3",
  "-march=native",
  "-std=c++17",
  "-ffp-contract=fast",
  "-shared",
  "-fPIC",
  "-w",
)
METRIC_CODES = {"l2": 0, "cosine": 1}

_lock = threading.Lock()
_state = {"loaded": None, "reason": None}
_off = threading.local()  # depth of `turned_off` in this thread


def cache_dir() -> Path:
  """Where compiled kernels are kept (``$CTJAX_NATIVE_CACHE``)."""
  env = os.environ.get("CTJAX_NATIVE_CACHE")
  if env:
    return Path(env)
  return Path.home() / ".cache" / "ctjax" / "native"


def _compiler() -> list[str] | None:
  """The compiler command: ``$CXX`` (split like a shell word list, so
  ``CXX="ccache g++"`` works), else the first of c++, g++, clang++."""
  cxx = os.environ.get("CXX")
  if cxx:
    return shlex.split(cxx)
  for name in ("c++", "g++", "clang++"):
    if shutil.which(name):
      return [name]
  return None


def _cpu_signature() -> str:
  """The CPU's model and feature flags (-march=native code runs only on a
  CPU that has them)."""
  try:
    text = Path("/proc/cpuinfo").read_text()
  except OSError:
    return platform.processor() or platform.machine()
  keep = [
    line
    for line in text.splitlines()
    if line.startswith(("model name", "flags", "Features", "CPU part"))
  ]
  return "\n".join(sorted(set(keep)))


def _build(cxx: list[str]) -> Path:
  """Compiles `SOURCES` (or finds them compiled) and returns the library."""
  version = subprocess.run(
    [*cxx, "--version"], capture_output=True, text=True, timeout=60
  ).stdout
  key = hashlib.sha256(
    "\0".join(
      [
        *(f.read_text() for f in SOURCES + HEADERS),
        version,
        " ".join(cxx + list(FLAGS)),
        jax.__version__,
        platform.machine(),
        _cpu_signature(),
      ]
    ).encode()
  ).hexdigest()[:20]
  out = cache_dir() / f"ctjax-native-{key}.so"
  if out.exists():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".so.tmp")
  os.close(fd)
  objects = tempfile.mkdtemp(dir=out.parent, suffix=".o.tmp")
  try:
    # One compiler per source, all at once (one process compiling them in
    # turn took 14 s on 2 cores), then one link.
    jobs = []
    for src in SOURCES:
      obj = os.path.join(objects, src.stem + ".o")
      cmd = [*cxx, *FLAGS, "-c", f"-I{jax.ffi.include_dir()}", str(src)]
      cmd += ["-o", obj]
      jobs.append((cmd, subprocess.Popen(cmd, stderr=subprocess.PIPE)))
    link = [*cxx, *FLAGS, *(c[-1] for c, _ in jobs), "-o", tmp]
    for cmd, job in jobs + [(link, None)]:
      if job is None:
        job = subprocess.Popen(cmd, stderr=subprocess.PIPE)
      _, err = job.communicate(timeout=600)
      if job.returncode != 0:
        for _, other in jobs:
          other.kill()
        raise RuntimeError(
          f"{' '.join(cmd)} failed ({job.returncode}): "
          f"{err.decode(errors='replace')[-2000:]}"
        )
    os.replace(tmp, out)  # atomic: a concurrent process sees all or nothing
  finally:
    shutil.rmtree(objects, ignore_errors=True)
    if os.path.exists(tmp):
      os.remove(tmp)
  return out


def _load() -> bool:
  if os.environ.get("CTJAX_NATIVE", "1") == "0":
    _state["reason"] = "disabled by CTJAX_NATIVE=0"
    return False
  cxx = _compiler()
  if cxx is None:
    _state["reason"] = "no C++ compiler found ($CXX, c++, g++, clang++)"
    return False
  try:
    lib = ctypes.cdll.LoadLibrary(str(_build(cxx)))
    if "lib" not in _state:  # XLA keeps the first handler of a name
      for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(
          target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu"
        )
      _state["lib"] = lib  # keep the registered library loaded
  except Exception as e:  # pylint: disable=broad-except
    _state["reason"] = f"{type(e).__name__}: {e}"
    return False
  return True


def available() -> bool:
  """Whether the kernel is compiled, loaded and registered (builds it on the
  first call; False, with `reason`, where it cannot be)."""
  with _lock:
    if _state["loaded"] is None:
      _state["loaded"] = _load()
    return _state["loaded"]


def reason() -> str | None:
  """Why `available` is False (None when it is True or was not asked)."""
  return _state["reason"]


def _require():
  """Raises where the kernels are not available (with `reason`)."""
  if not available():
    raise RuntimeError(f"the native kernels are unavailable: {reason()}")


def _kernel(target: str, result):
  """The FFI call of ``target`` returning ``result`` (a ShapeDtypeStruct or
  a tuple of them); under `jax.vmap` it runs once per batch element.
  Raises where the kernels are not available."""
  _require()
  return jax.ffi.ffi_call(target, result, vmap_method="sequential")


@contextlib.contextmanager
def turned_off():
  """Within it (in this thread), `why_not` says the kernels are turned off,
  so what is traced or resolved there uses XLA's forms: the encoders'
  layers, the covariance and k-means ("auto" methods) and the search
  (``search="auto"`` is "tiled"; "native" is an error). E.g. to train
  exactly as before the kernels existed. A function already traced keeps
  what it was traced with."""
  depth = getattr(_off, "depth", 0)
  _off.depth = depth + 1
  try:
    yield
  finally:
    _off.depth = depth


@functools.cache
def has_avx512() -> bool:
  """Whether this CPU has AVX-512 (``avx512f`` in /proc/cpuinfo): `dense`
  was measured to win against XLA's products there only."""
  return " avx512f" in _cpu_signature()


def why_not(dtype=jnp.float32, backend: str | None = None) -> str | None:
  """Why the kernels cannot take ``dtype`` data on ``backend`` (default
  ``jax.default_backend()``), or None where they can (builds them on the
  first call)."""
  if getattr(_off, "depth", 0):
    return "they are turned off here (ctjax.stats.native.turned_off)"
  backend = backend or jax.default_backend()
  if backend != "cpu":
    return f"they run on a CPU backend only, not {backend!r}"
  if jnp.dtype(dtype) != jnp.float32:
    return f"they take float32 data, not {jnp.dtype(dtype).name}"
  if not available():
    return f"they are unavailable: {reason()}"
  return None


def resolve(
  what: str, method: str, dtype=jnp.float32, backend: str | None = None
) -> str:
  """``method`` ("auto", "native" or "xla") of step ``what`` as "native" or
  "xla": "auto" is "native" where `why_not` finds nothing; "native" where
  it finds something is a ValueError that says what."""
  if method not in ("auto", "native", "xla"):
    raise ValueError(
      f"{what} method must be 'auto', 'native' or 'xla', got {method!r}"
    )
  if method == "xla":
    return method
  why = why_not(dtype, backend)
  if why is None:
    return "native"
  if method == "native":
    raise ValueError(f"{what} method 'native' cannot run: {why}")
  return "xla"


def _reset_for_tests():
  with _lock:
    _state.update(loaded=None, reason=None)


def nearest(points, row_base, aux, starts, queries, q_cells, metric: str):
  """Best sorted row of the query's own cell, for every query.

  Args:
    points: ``[R, d]`` float32 training rows; the layer's N rows start at
      ``row_base`` (an int or int32 scalar).
    aux: ``[N]`` the index's ``aux`` (‖t‖² for "l2", 1/‖t‖ for "cosine").
    starts: ``[k + 2]`` int32 cell starts (`neighbors.CellIndex`).
    queries: ``[m, d]`` float32; q_cells: ``[m]`` int32 (outside [0, k):
      padding).
    metric: "l2" or "cosine".

  Returns:
    ``(score [m] float32, row [m] int32)``: the winning ranking score and
    sorted row (``inf`` / -1 where there is none). Under `jax.vmap` the
    call runs once per batch element.
  """
  m = queries.shape[0]
  call = _kernel(
    "ctjax_nearest_in_cell",
    (
      jax.ShapeDtypeStruct((m,), jnp.float32),
      jax.ShapeDtypeStruct((m,), jnp.int32),
    ),
  )
  return call(
    points,
    jnp.asarray(row_base, jnp.int32),
    aux,
    starts.astype(jnp.int32),
    queries,
    q_cells.astype(jnp.int32),
    metric=np.int32(METRIC_CODES[metric]),
  )


def scatter(x, mean):
  """Scatter matrix Σ (x_i − mean)(x_i − mean)ᵀ ``[D, D]`` (symmetric).

  Args:
    x: ``[N, D]`` float32 rows.
    mean: ``[D]`` float32 centre.

  Returns:
    ``[D, D]`` float32, summed in float64 across row panels of 256 and
    rounded once. Memory: about 12 D² bytes per CPU thread. Under
    `jax.vmap` the call runs once per batch element.
  """
  d = x.shape[1]
  call = _kernel("ctjax_scatter", jax.ShapeDtypeStruct((d, d), jnp.float32))
  return call(x, mean)


def lloyd(x, x_sq, seeds, tol, max_iter: int):
  """Lloyd iterations of every k-means restart (`ctjax.stats.kmeans`).

  Args:
    x: ``[N, d]`` float32 points; x_sq: ``[N]`` their squared norms.
    seeds: ``[R, k, d]`` float32 starting centres of R restarts.
    tol: ``[]`` a restart stops when the squared shift of its centres is
      <= tol, or after ``max_iter`` iterations.

  Returns:
    ``(centers [R, k, d] float32, n_iter [R] int32, inertia [R] float32)``
    (inertia: the sum of squared distances to the final centres).
  """
  call = _kernel(
    "ctjax_lloyd",
    (
      jax.ShapeDtypeStruct(seeds.shape, jnp.float32),
      jax.ShapeDtypeStruct(seeds.shape[:1], jnp.int32),
      jax.ShapeDtypeStruct(seeds.shape[:1], jnp.float32),
    ),
  )
  return call(
    x, x_sq, seeds, jnp.asarray(tol, jnp.float32), max_iter=np.int32(max_iter)
  )


def kmeans_plus_plus(x, x_sq, first, draws):
  """Greedy k-means++ seeds of R restarts (`ctjax.stats.kmeans`).

  Args:
    x: ``[N, d]`` float32 points; x_sq: ``[N]`` their squared norms.
    first: ``[R]`` int32 row of each restart's first centre.
    draws: ``[R, k - 1, trials]`` float32 uniforms in [0, 1): step i of
      restart r draws its candidates with ``draws[r, i - 1]``.

  Returns:
    ``[R, k, d]`` float32 starting centres.
  """
  n_restarts, k1, _ = draws.shape
  call = _kernel(
    "ctjax_kmeans_plus_plus",
    jax.ShapeDtypeStruct((n_restarts, k1 + 1, x.shape[1]), jnp.float32),
  )
  return call(x, x_sq, first.astype(jnp.int32), draws.astype(jnp.float32))


def depthwise_conv2d(x, w, bias, padding):
  """Depthwise convolution, stride 1, of channels-last maps (ConvNeXt's).

  Args:
    x: ``[B, H, W, C]`` float32.
    w: ``[kh, kw, C]`` float32 (one filter per channel).
    bias: ``[C]`` float32.
    padding: ``(ph, pw)`` zeros on both sides.

  Returns:
    ``[B, H + 2 ph - kh + 1, W + 2 pw - kw + 1, C]`` float32: ``bias[c] +
    Σ_{p,q} x[b, i + p - ph, j + q - pw, c] · w[p, q, c]``, summed from the
    bias in the order of the taps. Under `jax.vmap` the call runs once per
    batch element.
  """
  b, h, wd, c = x.shape
  kh, kw, _ = w.shape
  ph, pw = padding
  out = (b, h + 2 * ph - kh + 1, wd + 2 * pw - kw + 1, c)
  if min(out) <= 0:
    raise ValueError(
      f"depthwise convolution of {x.shape} by {w.shape} "
      f"with padding {padding} is empty"
    )
  call = _kernel("ctjax_depthwise", jax.ShapeDtypeStruct(out, jnp.float32))
  return call(x, w, bias, pad_h=np.int32(ph), pad_w=np.int32(pw))


def attention(q, k, v, scale: float):
  """Multi-head self-attention ``softmax(scale q kᵀ) v`` without a bias.

  Args:
    q, k, v: ``[B, T, H, K]`` float32.
    scale: the logits' scale.

  Returns:
    ``[B, T, H, K]`` float32; the softmax in float32 (row maximum
    subtracted, a polynomial exp within ~2 ulp of expf). Under `jax.vmap`
    the call runs once per batch element.
  """
  call = _kernel("ctjax_attention", jax.ShapeDtypeStruct(q.shape, jnp.float32))
  return call(q, k, v, scale=np.float32(scale))


def layer_norm(x, scale, bias, eps: float):
  """LayerNorm over the last axis, as torch's (biased variance, two passes).

  Args:
    x: ``[..., D]`` float32; scale, bias: ``[D]`` float32.
    eps: added to the variance.

  Returns:
    ``[..., D]`` float32. Under `jax.vmap` the call runs once per batch
    element.
  """
  d = x.shape[-1]
  call = _kernel(
    "ctjax_layer_norm",
    jax.ShapeDtypeStruct((math.prod(x.shape[:-1]), d), jnp.float32),
  )
  y = call(x.reshape(-1, d), scale, bias, eps=np.float32(eps))
  return y.reshape(x.shape)


def mlp_gelu(x, w1, b1, w2, b2):
  """``gelu(x @ w1 + b1) @ w2 + b2`` with exact (erf) GELU, the hidden
  layer kept in cache.

  Args:
    x: ``[..., C]`` float32; w1 ``[C, F]``, b1 ``[F]``, w2 ``[F, E]``, b2
      ``[E]`` float32, F and E multiples of 32.

  Returns:
    ``[..., E]`` float32. Under `jax.vmap` the call runs once per batch
    element.
  """
  c, e = x.shape[-1], w2.shape[-1]
  rows = math.prod(x.shape[:-1])
  call = _kernel("ctjax_mlp", jax.ShapeDtypeStruct((rows, e), jnp.float32))
  return call(x.reshape(rows, c), w1, b1, w2, b2).reshape(*x.shape[:-1], e)


# `dense`'s activations, as the kernel numbers them.
DENSE_ACTIVATIONS = {None: 0, "gelu": 1, "quick_gelu": 2}


def dense(x, w, b, act: str | None = None):
  """``act(x @ w + b)``.

  Args:
    x: ``[..., K]`` float32; w ``[K, N]``, b ``[N]`` float32.
    act: None, "gelu" (exact, erf form; simd.h's erf within 1.5e-7) or
      "quick_gelu" (CLIP's ``x * sigmoid(1.702 x)``).

  Returns:
    ``[..., N]`` float32; each output is the bias plus the K products
    summed in order in blocks of at most 768 (XLA's product sums in another
    order, so the two differ by float32 rounding). Under `jax.vmap` the
    call runs once per batch element.
  """
  if act not in DENSE_ACTIVATIONS:
    raise ValueError(
      f"act must be one of {list(DENSE_ACTIVATIONS)}, got {act!r}"
    )
  k, n = w.shape
  rows = math.prod(x.shape[:-1])
  call = _kernel("ctjax_dense", jax.ShapeDtypeStruct((rows, n), jnp.float32))
  y = call(x.reshape(rows, k), w, b, act=np.int32(DENSE_ACTIVATIONS[act]))
  return y.reshape(*x.shape[:-1], n)
