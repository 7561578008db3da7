"""The one fast pairwise-distance path: ‖x‖² + ‖y‖² − 2 xᵀy.

k-means (assignment, seeding) and the nearest-neighbour search both rank
candidates with these functions, so the two agree on how a squared distance is
formed. Cosine ranks by −|tᵀq| / ‖t‖ (``inv_norm``): 1 − |cos| is a function
of it within a query's column, and the row scale is applied to the products
rather than to a unit copy of the rows. Products run at
``Precision.HIGHEST`` so float32 inputs are not rounded to bfloat16 on
accelerators.
"""

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


def sq_norms(x: jax.Array) -> jax.Array:
  """Squared Euclidean norm ``[...]`` of every row of ``x [..., d]``."""
  return jnp.sum(x * x, axis=-1)


def inv_norm(x: jax.Array) -> jax.Array:
  """``1 / ‖x_i‖`` ``[n]`` for ``x [n, d]``; 0 for a zero row."""
  norm = jnp.sqrt(sq_norms(x))
  return jnp.where(norm > 0, 1.0 / jnp.where(norm > 0, norm, 1.0), 0.0)


def cross(x: jax.Array, y: jax.Array) -> jax.Array:
  """Inner products ``[n, r]`` of ``x [n, d]`` and ``y [r, d]``."""
  return jnp.matmul(x, y.T, precision=HIGHEST)


def sq_l2(
  x: jax.Array,
  y: jax.Array,
  x_sq: jax.Array | None = None,
  y_sq: jax.Array | None = None,
) -> jax.Array:
  """Squared Euclidean distances ``[n, r]`` of ``x [n, d]`` and ``y [r, d]``.

  Computed as (‖x‖² − 2 xᵀy) + ‖y‖², clamped at 0 (rounding can make the fast
  form slightly negative). ``x_sq [n]`` and ``y_sq [r]`` may be passed when
  already known.
  """
  if x_sq is None:
    x_sq = sq_norms(x)
  if y_sq is None:
    y_sq = sq_norms(y)
  return jnp.maximum(x_sq[:, None] - 2.0 * cross(x, y) + y_sq[None, :], 0.0)


def l2_rank(t: jax.Array, t_sq: jax.Array, q: jax.Array) -> jax.Array:
  """Ranking scores ``[r, b]`` of training rows ``t [r, d]`` for queries
  ``q [b, d]``: ‖t‖² − 2 tᵀq, lower is nearer.

  Equal to `sq_l2` minus ‖q‖², which is constant within a query's column and
  so does not change the ranking.
  """
  return t_sq[:, None] - 2.0 * cross(t, q)


def unit_rows(x: jax.Array) -> jax.Array:
  """``x [n, d]`` with every row scaled to unit norm (zero rows stay zero)."""
  return x * inv_norm(x)[:, None]


def cosine_rank(t: jax.Array, t_inv: jax.Array, q: jax.Array) -> jax.Array:
  """Ranking scores ``[r, b]`` for 1 − |cos|: −|tᵀq| / ‖t‖, lower is nearer.

  ``t [r, d]`` are raw training rows and ``t_inv [r]`` their `inv_norm`: the
  scale is applied to the ``[r, b]`` products (one multiply in the same
  pass as the absolute value) rather than to the rows, so no unit copy of
  the training rows is made per call. The query's norm is constant within
  its column and is left out (a zero query ties everywhere, as a
  normalised one would; a zero row scores 0, the worst).
  """
  return -jnp.abs(cross(t, q)) * t_inv[:, None]
