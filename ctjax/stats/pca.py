"""PCA fitted from an exact covariance matrix.

The scatter matrix is computed one of two ways (`resolve_covariance`):

- "native" (float32 on a CPU where ctjax's kernels build): the compiled
  kernel `ctjax.stats.native.scatter`, which multiplies only the register
  tiles that touch the upper triangle (about half the flops of xᵀx), reads
  x once and sums in float64 across panels of 256 rows.
- "xla": accumulated over row chunks (static size; the last chunk is padded
  with the mean, which adds exactly zero), and, for wide inputs, only the
  upper block triangle of XᵀX can be multiplied, one product per row panel
  (``block``). That saves a quarter of the flops at D = 768 but, measured on
  a 2-core x86 CPU, no time: the two smaller products run as much slower as
  they are smaller, so the default is the plain product (one GEMM per chunk,
  at the machine's GEMM rate).

The eigendecomposition is `jnp.linalg.eigh` of the D x D covariance: no
randomisation, no truncation.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from ctjax.stats import native

_HI = jax.lax.Precision.HIGHEST


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["mean", "components", "variances", "total_variance"],
  meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class PCA:
  """A fitted PCA.

  Attributes:
    mean: ``[D]`` the training mean.
    components: ``[D, k]`` orthonormal principal axes, as columns, by
      decreasing variance.
    variances: ``[k]`` variance of the data along each axis (eigenvalues of the
      covariance with the unbiased 1/(N-1) normalisation, as scikit-learn's
      ``explained_variance_``).
    total_variance: ``[]`` trace of the covariance (all D axes).
  """

  mean: jax.Array
  components: jax.Array
  variances: jax.Array
  total_variance: jax.Array


def _upper_panels(xc: jax.Array, block: int) -> jax.Array:
  """The upper block triangle of xcᵀ xc ``[D, D]`` for ``xc [r, D]``, as one
  product per row panel: rows ``a:a + block`` of the result are
  ``xc[:, a:a + block]ᵀ xc[:, a:]`` (zeros left of the diagonal block).

  With ``block`` of about D/2 this is two large products per chunk: fewer,
  larger GEMMs run closer to the machine's peak than the many square blocks
  of the same triangle, and compile to fewer kernels.
  """
  d = xc.shape[1]
  rows = []
  for a0 in range(0, d, block):
    a1 = min(a0 + block, d)
    panel = jax.lax.dot_general(
      xc[:, a0:a1], xc[:, a0:], (((0,), (0,)), ((), ())), precision=_HI
    )
    rows.append(jnp.pad(panel, ((0, 0), (a0, 0))))
  return jnp.concatenate(rows) if len(rows) > 1 else rows[0]


CHUNK = 10_000  # rows per step of the covariance (and of `transform` off a CPU)
# Rows per step of `transform` on a CPU, where a chunk of 1,024 rows
# (centred copy 3 MB at D = 768) stays in cache: [50000, 768] onto 64 axes,
# 2-core AMD EPYC, best of 15: 55 ms in chunks of 10,000, 42 ms in chunks
# of 1,024, the same bits.
CPU_TRANSFORM_CHUNK = 1024
# Row panel of the symmetric product (`_upper_panels`); None: the plain xᵀx.
# Panels of 384 at D = 768 (3/4 of the work) took the same time as the plain
# product on this project's 2-core CPU (262 vs 267 ms per 50k x 768 layer).
BLOCK = None
# How `covariance` computes: "auto", "native" or "xla" (`resolve_covariance`).
COVARIANCE = "auto"


def resolve_covariance(
  method: str | None = None, dtype=jnp.float32, backend: str | None = None
) -> str:
  """``method`` (default `COVARIANCE`) as "native" or "xla".

  "auto" is "native" for float32 data on a CPU backend where ctjax's
  kernels are available (`native.available`; built on the first call), else
  "xla". "native" elsewhere is an error that says why.
  """
  method = COVARIANCE if method is None else method
  return native.resolve("covariance", method, dtype, backend)


def covariance(
  x: jax.Array,
  mean: jax.Array,
  *,
  chunk: int = CHUNK,
  block: int | None = BLOCK,
  method: str | None = None,
) -> jax.Array:
  """Unnormalised scatter matrix Σ (x_i − mean)(x_i − mean)ᵀ.

  Args:
    x: ``[N, D]`` data.
    mean: ``[D]`` centre.
    chunk: rows per step of the "xla" method; its memory is
      O(chunk · D + D²) ("native": about 12 D² bytes per CPU thread).
    block: row panel of the "xla" method's symmetric product (``None`` or
      ``>= D``: the plain xᵀx).
    method: "auto", "native" or "xla" (`resolve_covariance`).

  Returns:
    ``[D, D]`` scatter matrix (divide by N − 1 for the covariance), exactly
    symmetric.
  """
  if resolve_covariance(method, x.dtype) == "native":
    return native.scatter(x, mean.astype(x.dtype))
  n, d = x.shape
  block = d if block is None else block
  chunk = max(1, min(chunk, n))
  n_chunks = -(-n // chunk)
  pad = n_chunks * chunk - n
  if pad:
    # Padding with the mean contributes exactly zero after centring.
    x = jnp.concatenate([x, jnp.broadcast_to(mean, (pad, d)).astype(x.dtype)])
  xs = x.reshape(n_chunks, chunk, d)

  def step(acc, xb):
    return acc + _upper_panels(xb - mean, block), None

  acc0 = jnp.zeros((d, d), jnp.result_type(x.dtype, jnp.float32))
  upper, _ = jax.lax.scan(step, acc0, xs)
  # The upper triangle mirrored (the diagonal blocks' own lower halves are
  # replaced by it: the result is exactly symmetric, whatever order the GEMM
  # summed the two halves in).
  rows, cols = jnp.arange(d)[:, None], jnp.arange(d)[None, :]
  return jnp.where(rows <= cols, upper, upper.T)


@functools.partial(
  jax.jit, static_argnames=("n_components", "chunk", "block", "method")
)
def fit_pca(
  x: jax.Array,
  n_components: int,
  *,
  chunk: int = CHUNK,
  block: int | None = BLOCK,
  method: str | None = None,
) -> PCA:
  """Fits PCA on ``x [N, D]`` (centred), keeping ``n_components`` axes.

  Jit-able with ``n_components`` static. Signs are fixed so that the entry of
  largest magnitude of each axis is positive (deterministic output).
  ``chunk``, ``block``, ``method``: see `covariance`.
  """
  n, d = x.shape
  if not 1 <= n_components <= min(n, d):
    raise ValueError(
      f"n_components={n_components} must be in [1, min(N, D)] = "
      f"[1, {min(n, d)}] for data of shape {x.shape}"
    )
  mean = jnp.mean(x, axis=0)
  scatter = covariance(x, mean, chunk=chunk, block=block, method=method)
  cov = scatter / max(n - 1, 1)
  evals, evecs = jnp.linalg.eigh(cov)
  evals = evals[::-1][:n_components]
  evecs = evecs[:, ::-1][:, :n_components]
  pivot = jnp.take_along_axis(
    evecs, jnp.argmax(jnp.abs(evecs), axis=0)[None], axis=0
  )
  evecs = evecs * jnp.where(pivot < 0, -1.0, 1.0).astype(evecs.dtype)
  return PCA(
    mean=mean,
    components=evecs,
    variances=jnp.maximum(evals, 0.0),
    total_variance=jnp.trace(cov),
  )


# How `transform` multiplies: "dot" (a matrix product), "reduce" (products
# summed by a row reduction over D, in an order that does not depend on the
# number of rows) or "auto" ("reduce" on a GPU, "dot" elsewhere).
PROJECTION = "auto"


def resolve_projection(projection: str | None = None) -> str:
  """``projection`` (default `PROJECTION`) as "dot" or "reduce".

  A CPU's matrix product sums each output over D in the same order whatever
  the number of rows, so a query projects to the same bits alone, padded or
  in a batch. A GPU library may choose another kernel (split over D, other
  tiles) for another row count, and the projection then differs in its last
  bits between `score`, a padded `CTReference.score` and a vmapped batch;
  rounding-level changes in distances can flip Mann-Whitney comparisons.
  The row reduction keeps one order there: on an H200 (XLA:GPU, jax
  0.11.2) its bits were the same for 500 rows, 512 rows and 8 vmapped
  batches of 500, where the product's differed by up to 5e-5, and every
  scoring path then counted the same 2U (`benchmarks/consistency.py`).
  XLA:CPU vectorises that reduction differently by row count, so a CPU
  keeps the product. A TPU keeps it too: neither way has been measured on
  one, and there the reduction would run on the vector units, not the
  matrix units.
  """
  projection = PROJECTION if projection is None else projection
  if projection == "auto":
    return "reduce" if jax.default_backend() == "gpu" else "dot"
  if projection not in ("dot", "reduce"):
    raise ValueError(
      f"projection must be 'auto', 'dot' or 'reduce', got {projection!r}"
    )
  return projection


def transform(
  pca: PCA,
  x: jax.Array,
  *,
  chunk: int | None | str = "auto",
  projection: str | None = None,
) -> jax.Array:
  """Projects ``x [n, D]`` onto the axes: ``[n, k]``.

  With more than ``chunk`` rows the product runs ``chunk`` rows at a time
  (``None``: all at once; "auto": `CPU_TRANSFORM_CHUNK` on a CPU, `CHUNK`
  elsewhere): each row's result is the same, but the centred copy of ``x``
  is never materialised whole. The last chunk ends at row n (it overlaps
  the one before and computes a few rows again, to the same bits), so
  ``x`` is never padded or copied. ``projection``: see
  `resolve_projection`.
  """
  if chunk == "auto":
    chunk = CPU_TRANSFORM_CHUNK if jax.default_backend() == "cpu" else CHUNK
  n = x.shape[0]
  if resolve_projection(projection) == "dot":
    project = lambda xb: jnp.matmul(
      xb - pca.mean, pca.components, precision=_HI
    )
  else:
    axes = pca.components.T  # [k, D]: D minor, a row reduction per output
    project = lambda xb: jnp.sum(
      (xb - pca.mean)[:, None, :] * axes[None, :, :], axis=-1
    )
  if chunk is None or n <= chunk:
    return project(x)

  def step(i, out):
    start = jnp.minimum(i * chunk, n - chunk)
    part = project(jax.lax.dynamic_slice_in_dim(x, start, chunk))
    return jax.lax.dynamic_update_slice_in_dim(out, part, start, axis=0)

  k = pca.components.shape[1]
  out = jnp.zeros((n, k), jnp.result_type(x.dtype, pca.components.dtype))
  return jax.lax.fori_loop(0, -(-n // chunk), step, out)
