"""Reports: plots (PNG), tables (CSV, plain text) and JSON, written atomically.

Plots use matplotlib's object API on the Agg canvas (no pyplot, no display,
no global state), imported only when a plot is drawn, so the table and JSON
helpers stay cheap. Every file is written atomically by `ctjax.storage`.
"""

import csv
import io
import math
from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np

from ctjax import storage

# C_T is a weighted mean of per-cell Z scores; |C_T| within this band reads as
# "fine" in tables and plots (about two standard errors).
DEFAULT_BAND = 2.0


# Files are written through `ctjax.storage` (atomic, strict JSON); these names
# stay here so a report is written with one module.
write_bytes = storage.write_bytes
write_json = storage.write_json


def _cell(v) -> str:
  if isinstance(v, (float, np.floating)):
    return "nan" if math.isnan(v) else repr(float(v))
  if isinstance(v, np.generic):
    return str(v.item())
  return str(v)


def write_table_csv(
  rows: Sequence[Sequence[Any]], headers: Sequence[str], path
) -> str:
  """Writes a CSV with a header line atomically; floats at full precision."""
  headers = list(headers)
  for i, row in enumerate(rows):
    if len(row) != len(headers):
      raise ValueError(
        f"table row {i} has {len(row)} cells, expected "
        f"{len(headers)} ({headers})"
      )
  buf = io.StringIO(newline="")
  w = csv.writer(buf)
  w.writerow(headers)
  for row in rows:
    w.writerow([_cell(v) for v in row])
  return storage.write_bytes(buf.getvalue().encode("utf-8"), path)


def format_table(
  rows: Sequence[Sequence[Any]], headers: Sequence[str], floatfmt: str = ".3f"
) -> str:
  """A plain-text table: numbers right-aligned, text left-aligned."""
  headers = [str(h) for h in headers]
  for i, row in enumerate(rows):
    if len(row) != len(headers):
      raise ValueError(
        f"table row {i} has {len(row)} cells, expected "
        f"{len(headers)} ({headers})"
      )

  def fmt(v):
    if isinstance(v, (float, np.floating)):
      return "nan" if math.isnan(v) else format(float(v), floatfmt)
    if isinstance(v, np.generic):
      return str(v.item())
    return str(v)

  cells = [[fmt(v) for v in row] for row in rows]
  numeric = [
    all(
      isinstance(r[j], (int, float, np.number)) and not isinstance(r[j], bool)
      for r in rows
    )
    and bool(rows)
    for j in range(len(headers))
  ]
  widths = [
    max([len(headers[j])] + [len(r[j]) for r in cells])
    for j in range(len(headers))
  ]

  def line(items):
    return "  ".join(
      s.rjust(w) if num else s.ljust(w)
      for s, w, num in zip(items, widths, numeric)
    ).rstrip()

  out = [line(headers), "  ".join("-" * w for w in widths)]
  out += [line(r) for r in cells]
  return "\n".join(out)


def verdict(ct: float, band: float = DEFAULT_BAND) -> str:
  """ "copying" (C_T < -band), "under-fitting" (> band), "fine", "undefined"."""
  if ct is None or math.isnan(ct):
    return "undefined"
  if ct < -band:
    return "copying"
  if ct > band:
    return "under-fitting"
  return "fine"


# ----------------------------------------------------------------------------
# Plots.


def _figure(width: float, height: float):
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def _save(fig, path) -> str:
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  return write_bytes(buf.getvalue(), path)


def plot_curves(
  curves: Mapping[str, Any],
  path,
  *,
  layers=None,
  title: str = "C_T per layer",
  ylabel: str = "C_T",
  band: float = DEFAULT_BAND,
  intervals: Mapping[str, Any] | None = None,
) -> str:
  """Writes `curves_figure` as a PNG to ``path``; returns the path."""
  fig = curves_figure(
    curves,
    layers=layers,
    title=title,
    ylabel=ylabel,
    band=band,
    intervals=intervals,
  )
  return _save(fig, path)


def curves_figure(
  curves: Mapping[str, Any],
  *,
  layers=None,
  title: str = "C_T per layer",
  ylabel: str = "C_T",
  band: float = DEFAULT_BAND,
  intervals: Mapping[str, Any] | None = None,
):
  """C_T against layer, one colour per label, as a matplotlib Figure.

  Args:
    curves: label -> one curve ``[L]`` or several ``[n, L]`` (NaN = gap).
    layers: ``[L]`` x-axis values (default 0..L-1).
    title, ylabel: text.
    band: C_T below -band is shaded as copying, above +band as under-fitting.
    intervals: label -> ``(low [L], high [L])``, e.g. bootstrap bounds
      (`CTResult.ct_low`/``ct_high``), drawn as a shaded band in the
      label's colour (NaN = gap).

  Returns:
    the Figure: one axes whose data lines are the curves, in the order given
    (a label's curves in row order), after one horizontal line at 0; the
    interval bands are its ``collections``, in the order of the curves.
  """
  if not curves:
    raise ValueError("plot_curves needs at least one curve")
  arrays = {}
  for label, c in curves.items():
    a = np.asarray(c, dtype=np.float64)
    a = a[None] if a.ndim == 1 else a
    if a.ndim != 2 or a.shape[1] == 0:
      raise ValueError(
        f"curves for {label!r} must be [L] or [n, L], got shape {np.shape(c)}"
      )
    arrays[str(label)] = a
  lengths = {a.shape[1] for a in arrays.values()}
  if len(lengths) != 1:
    raise ValueError(f"curves of different lengths {sorted(lengths)}")
  n_layers = lengths.pop()
  x = np.arange(n_layers) if layers is None else np.asarray(layers)
  if x.shape != (n_layers,):
    raise ValueError(
      f"layers has shape {x.shape}, curves have {n_layers} layers"
    )
  bounds = {}
  for label, lh in (intervals or {}).items():
    if str(label) not in arrays:
      raise ValueError(f"intervals for {label!r}, which has no curve")
    lh = np.asarray(lh, dtype=np.float64)
    if lh.shape != (2, n_layers):
      raise ValueError(
        f"intervals for {label!r} must be (low [L], high [L]) with "
        f"L={n_layers}, got shape {lh.shape}"
      )
    bounds[str(label)] = lh

  fig = _figure(8.0, 4.2)
  ax = fig.add_subplot()
  finite = np.concatenate(
    [a[np.isfinite(a)] for a in [*arrays.values(), *bounds.values()]]
  )
  lo = min(finite.min(), -band) if finite.size else -band
  hi = max(finite.max(), band) if finite.size else band
  pad = 0.08 * (hi - lo)
  lo, hi = lo - pad, hi + pad
  ax.axhspan(
    lo,
    -band,
    color="tab:red",
    alpha=0.10,
    lw=0,
    label="copying (C_T < -%g)" % band,
  )
  ax.axhspan(
    band,
    hi,
    color="tab:blue",
    alpha=0.08,
    lw=0,
    label="under-fitting (C_T > %g)" % band,
  )
  ax.axhline(0.0, color="black", lw=0.8)
  colours = _colours(len(arrays))
  for (label, a), colour in zip(arrays.items(), colours):
    if label in bounds:
      ax.fill_between(
        x, bounds[label][0], bounds[label][1], color=colour, alpha=0.25, lw=0
      )
    for j, c in enumerate(a):
      ax.plot(
        x,
        c,
        color=colour,
        marker="o",
        ms=3,
        lw=1.6 if len(a) == 1 else 1.0,
        alpha=1.0 if len(a) == 1 else 0.7,
        label=label if j == 0 else None,
      )
  ax.set_ylim(lo, hi)
  ax.set_xlabel("layer")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  if n_layers <= 30:
    ax.set_xticks(x)
  ax.grid(alpha=0.3)
  ax.legend(
    fontsize=8,
    loc="upper left",
    bbox_to_anchor=(1.01, 1.0),
    ncol=2 if len(arrays) > 14 else 1,
    frameon=False,
  )
  return fig


def _colours(n: int):
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top

  cmap = colormaps["tab10" if n <= 10 else "tab20"]
  return [cmap(i % cmap.N) for i in range(n)]


def _matrix_figure(
  matrix,
  labels,
  *,
  title,
  cbar_label,
  cmap,
  fmt,
  xlabel=None,
  ylabel=None,
  col_labels=None,
) -> str:
  m = np.asarray(matrix, dtype=np.float64)
  col_labels = labels if col_labels is None else col_labels
  if m.ndim != 2 or m.shape != (len(labels), len(col_labels)):
    raise ValueError(
      f"matrix has shape {m.shape}, labels give "
      f"({len(labels)}, {len(col_labels)})"
    )
  size = 1.6 + 0.42 * max(m.shape)
  fig = _figure(min(size + 1.6, 22.0), min(size, 20.0))
  ax = fig.add_subplot()
  im = ax.imshow(m, cmap=cmap, interpolation="nearest")
  fig.colorbar(im, ax=ax, label=cbar_label, shrink=0.85)
  ax.set_xticks(
    range(m.shape[1]),
    [str(l) for l in col_labels],
    rotation=60,
    ha="right",
    fontsize=8,
  )
  ax.set_yticks(range(m.shape[0]), [str(l) for l in labels], fontsize=8)
  if xlabel:
    ax.set_xlabel(xlabel)
  if ylabel:
    ax.set_ylabel(ylabel)
  ax.set_title(title)
  if max(m.shape) <= 20:
    finite = m[np.isfinite(m)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    _annotate(ax, m, fmt, white=lambda v: v > mid)
  return fig


def _annotate(ax, m, fmt: str, *, white) -> None:
  """Writes every finite ``m[i, j]`` (``fmt``; "d" rounds) at its cell of
  ``ax``'s image, in white where ``white(value)``, else in black."""
  for i, j in zip(*np.nonzero(np.isfinite(m))):
    v = int(round(m[i, j])) if fmt == "d" else m[i, j]
    ax.text(
      j,
      i,
      format(v, fmt),
      ha="center",
      va="center",
      fontsize=7,
      color="white" if white(m[i, j]) else "black",
    )


def plot_similarity_heatmap(
  matrix, labels: Sequence[str], path, *, title: str = "Curve similarity"
) -> str:
  """Writes `similarity_figure` as a PNG to ``path``; returns the path."""
  return _save(similarity_figure(matrix, labels, title=title), path)


def similarity_figure(
  matrix, labels: Sequence[str], *, title: str = "Curve similarity"
):
  """Heat map of pairwise curve similarity (cf. He et al. 2024, Fig. 6b).

  Args:
    matrix: ``[n, n]`` similarities (e.g. `fingerprint.similarity_matrix`).
    labels: ``[n]`` tick labels.

  Returns:
    the Figure; its first axes shows ``matrix`` as an image.
  """
  return _matrix_figure(
    matrix,
    list(labels),
    title=title,
    cbar_label="similarity",
    cmap="viridis",
    fmt=".2f",
  )


def plot_selection(selection, path, *, title: str | None = None) -> str:
  """Writes `selection_figure` as a PNG to ``path``; returns the path."""
  return _save(selection_figure(selection, title=title), path)


def selection_figure(selection, *, title: str | None = None):
  """Heat map of detection power, kind x layer (a `ctjax.selection.Selection`).

  Returns:
    the Figure; its first axes shows the ``[K, L]`` ROC AUC as an image.
  """
  return _matrix_figure(
    selection.auc,
    list(selection.kinds),
    col_labels=list(selection.layer_names),
    title=title or "Detection power per layer (ROC AUC, probe vs null)",
    cbar_label="AUC",
    cmap="viridis",
    fmt=".2f",
    xlabel="layer",
    ylabel="memorisation kind",
  )


def plot_selection_effect(selection, path, *, title: str | None = None) -> str:
  """Writes `selection_effect_figure` as a PNG to ``path``; returns it."""
  return _save(selection_effect_figure(selection, title=title), path)


def selection_effect_figure(selection, *, title: str | None = None):
  """Heat map of |Cohen's d|, kind x layer (a `ctjax.selection.Selection`):
  unlike the AUC, it does not saturate once probe and null batches part.

  Returns:
    the Figure; its first axes shows ``|selection.effect|`` ``[K, L]``.
  """
  return _matrix_figure(
    np.abs(np.asarray(selection.effect, np.float64)),
    list(selection.kinds),
    col_labels=list(selection.layer_names),
    title=title or "Detection power per layer (|Cohen's d|, probe vs null)",
    cbar_label="|d|",
    cmap="viridis",
    fmt=".1f",
    xlabel="layer",
    ylabel="memorisation kind",
  )


def plot_method_table(
  values, rows: Sequence[str], columns: Sequence[str], path, *, title: str
) -> str:
  """Writes `method_table_figure` as a PNG to ``path``; returns the path."""
  return _save(method_table_figure(values, rows, columns, title=title), path)


def method_table_figure(
  values, rows: Sequence[str], columns: Sequence[str], *, title: str
):
  """Heat map of accuracies ``[n_rows, n_cols]`` in [0, 1], e.g. methods x
  transforms, annotated in percent.

  Returns:
    the Figure; its first axes shows ``100 * values`` as an image.
  """
  v = 100.0 * np.asarray(values, np.float64)
  if v.ndim != 2 or v.shape != (len(rows), len(columns)):
    raise ValueError(
      f"values have shape {v.shape}, rows x columns give "
      f"({len(rows)}, {len(columns)})"
    )
  label_width = 0.075 * max([len(str(r)) for r in rows] + [10])
  fig = _figure(2.2 + label_width + 0.9 * v.shape[1], 1.4 + 0.3 * v.shape[0])
  ax = fig.add_subplot()
  im = ax.imshow(
    v, cmap="viridis", vmin=0, vmax=100, aspect="auto", interpolation="nearest"
  )
  fig.colorbar(im, ax=ax, label="accuracy (%)", shrink=0.85)
  ax.set_xticks(range(v.shape[1]), [str(c) for c in columns], fontsize=8)
  ax.set_yticks(range(v.shape[0]), [str(r) for r in rows], fontsize=8)
  ax.xaxis.tick_top()
  ax.set_title(title)
  _annotate(ax, v, ".0f", white=lambda x: x <= 60)
  return fig


def plot_confusion(
  confusion, labels: Sequence[str], path, *, title: str = "Confusion matrix"
) -> str:
  """Writes `confusion_figure` as a PNG to ``path``; returns the path."""
  return _save(confusion_figure(confusion, labels, title=title), path)


def confusion_figure(
  confusion, labels: Sequence[str], *, title: str = "Confusion matrix"
):
  """Confusion matrix ``[k, k]`` (rows = true label, columns = answer).

  Returns:
    the Figure; its first axes shows the counts as an image, each annotated.
  """
  c = np.asarray(confusion)
  fmt = "d" if np.issubdtype(c.dtype, np.integer) else ".2f"
  return _matrix_figure(
    c,
    list(labels),
    title=title,
    cbar_label="count",
    cmap="Blues",
    fmt=fmt,
    xlabel="predicted",
    ylabel="true",
  )


# ----------------------------------------------------------------------------
# Image gallery.


def _rgb(img, name: str) -> np.ndarray:
  a = np.asarray(img)
  if a.dtype != np.uint8:
    raise ValueError(f"{name} must be uint8, got {a.dtype}")
  if a.ndim == 3 and a.shape[-1] == 1:
    a = a[..., 0]
  if a.ndim == 2:
    a = np.repeat(a[..., None], 3, axis=-1)
  if a.ndim != 3 or a.shape[-1] != 3 or 0 in a.shape:
    raise ValueError(
      f"{name} must be [H, W] or [H, W, 3], got shape {np.shape(img)}"
    )
  return a


def image_gallery(
  items: Sequence[tuple[Any, Any, str]],
  path,
  *,
  cell: int = 96,
  columns: int = 4,
  left_title: str = "generated",
  right_title: str = "nearest train",
) -> str:
  """A PNG grid of (generated image, nearest training image, caption) pairs.

  Args:
    items: (gen ``[H, W]`` or ``[H, W, 3]`` uint8, train image likewise,
      caption) triples, shown in order, left to right then top to bottom.
    path: the PNG to write.
    cell: the side, in pixels, each image is scaled to (nearest neighbour for
      upscaling so pixels stay visible).
    columns: pairs per row.

  Returns:
    the path written.
  """
  from PIL import Image, ImageDraw, ImageFont  # pylint: disable=g-import-not-at-top

  items = list(items)
  if not items:
    raise ValueError(
      "image_gallery needs at least one (generated, train, caption) item"
    )
  font = ImageFont.load_default()
  gap, text_h, head_h = 6, 14, 16
  pair_w = 2 * cell + gap
  cols = max(1, min(columns, len(items)))
  rows = -(-len(items) // cols)
  width = cols * pair_w + (cols + 1) * 2 * gap
  height = head_h + rows * (cell + 2 * text_h + gap) + gap
  canvas = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(canvas)
  for c in range(cols):
    x0 = 2 * gap + c * (pair_w + 2 * gap)
    draw.text((x0, 2), left_title, fill="black", font=font)
    draw.text((x0 + cell + gap, 2), right_title, fill="black", font=font)
  for k, item in enumerate(items):
    if len(item) != 3:
      raise ValueError(f"gallery item {k} must be (generated, train, caption)")
    gen, train, caption = item
    r, c = divmod(k, cols)
    x0 = 2 * gap + c * (pair_w + 2 * gap)
    y0 = head_h + r * (cell + 2 * text_h + gap)
    for j, img in enumerate((gen, train)):
      a = _rgb(img, f"gallery item {k} image {j}")
      im = Image.fromarray(a)
      h, w = a.shape[:2]
      scale = cell / max(h, w)
      size = (max(1, round(w * scale)), max(1, round(h * scale)))
      resample = (
        Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
      )
      im = im.resize(size, resample)
      canvas.paste(
        im,
        (
          x0 + j * (cell + gap) + (cell - size[0]) // 2,
          y0 + (cell - size[1]) // 2,
        ),
      )
    text = str(caption)
    max_chars = max(4, pair_w // 6)
    lines = [text[i : i + max_chars] for i in range(0, len(text), max_chars)][
      :2
    ]
    for i, t in enumerate(lines):
      draw.text((x0, y0 + cell + 1 + i * text_h), t, fill="black", font=font)
  buf = io.BytesIO()
  canvas.save(buf, format="PNG")
  return write_bytes(buf.getvalue(), path)
