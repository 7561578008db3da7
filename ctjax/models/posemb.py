"""Resampling a position-embedding grid to another image size.

transformers resamples the ``[G, G, D]`` patch grid with
``torch.nn.functional.interpolate(mode="bicubic", align_corners=False)``:
ViT, DeiT and DINOv2 without antialiasing (Keys cubic, a = -0.75, border
pixels repeated), DINOv2-with-registers with ``antialias=True`` (a = -0.5,
kernel widened by the downscale factor, weights renormalised at the border).
Both are separable, so each is a ``[out, in]`` matrix per axis, built here in
NumPy from the static sizes and applied with one einsum.
"""

import math

import jax.numpy as jnp
import numpy as np


def _cubic(x, a):
  x = np.abs(x)
  return np.where(
    x <= 1,
    ((a + 2) * x - (a + 3)) * x * x + 1,
    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0),
  )


def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """``[out, in]`` weights of torch's bicubic resize (align_corners=False, no antialias)."""
  scale = in_size / out_size
  m = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    src = (i + 0.5) * scale - 0.5  # not clamped at 0 for cubic, as torch
    base = math.floor(src)
    t = src - base
    for tap in range(-1, 3):
      m[i, min(max(base + tap, 0), in_size - 1)] += _cubic(tap - t, -0.75)
  return m


def bicubic_aa_matrix(in_size: int, out_size: int) -> np.ndarray:
  """``[out, in]`` weights of torch's bicubic resize with ``antialias=True``."""
  scale = in_size / out_size
  support = 2.0 * scale if scale >= 1.0 else 2.0
  invscale = 1.0 / scale if scale >= 1.0 else 1.0
  m = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    center = scale * (i + 0.5)
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), in_size)
    j = np.arange(lo, hi)
    w = _cubic((j - center + 0.5) * invscale, -0.5)
    total = w.sum()
    m[i, lo:hi] = w / total if total != 0 else w
  return m


def resample_grid(grid, new_hw: tuple[int, int], antialias: bool):
  """Resamples a patch-position grid.

  Args:
    grid: ``[G, G, D]`` position embeddings of the patches.
    new_hw: (gh, gw), the new number of patches per column and row.
    antialias: torch's ``antialias`` flag (True for DINOv2 with registers).

  Returns:
    ``[gh, gw, D]`` in the dtype of ``grid`` (computed in float32).
  """
  g_h, g_w = grid.shape[:2]
  make = bicubic_aa_matrix if antialias else bicubic_matrix
  mh = jnp.asarray(make(g_h, new_hw[0]), jnp.float32)
  mw = jnp.asarray(make(g_w, new_hw[1]), jnp.float32)
  out = jnp.einsum(
    "ih,jw,hwd->ijd", mh, mw, grid.astype(jnp.float32), precision="highest"
  )
  return out.astype(grid.dtype)
