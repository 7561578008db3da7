"""Tests for ctjax.report: files written, PNGs decode, JSON/CSV round trip."""

import csv
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from ctjax import fingerprint as fp
from ctjax import report

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "paper-curves")


def _png_size(path):
  with Image.open(path) as im:
    im.load()  # decodes the whole image, not only the header
    assert im.format == "PNG"
    return im.size


def test_write_json_round_trip_and_strictness(tmp_path):
  obj = {
    "a": np.arange(3),
    "b": np.float32(1.5),
    "c": [math.nan, math.inf],
    "d": {"e": (1, "x")},
    7: np.int64(4),
  }
  path = report.write_json(obj, tmp_path / "sub" / "o.json")
  text = open(path).read()
  assert "NaN" not in text and "Infinity" not in text
  assert json.loads(text) == {
    "a": [0, 1, 2],
    "b": 1.5,
    "c": [None, None],
    "d": {"e": [1, "x"]},
    "7": 4,
  }
  # Objects with to_dict (e.g. an Evaluation) are written through it.
  _, ev = fp.evaluate_curve_file(os.path.join(FIXTURES, "Fsmall_score.txt"))
  path = report.write_json(ev, tmp_path / "ev.json")
  d = json.load(open(path))
  assert d["n_correct"] == 5 and d["n_queries"] == 6
  np.testing.assert_array_equal(d["confusion"], ev.confusion)


def test_atomic_write_leaves_no_temp_files_and_keeps_old_on_error(tmp_path):
  path = tmp_path / "o.json"
  report.write_json({"v": 1}, path)
  with pytest.raises(TypeError):
    report.write_json({"v": object()}, path)
  assert json.load(open(path)) == {"v": 1}
  assert os.listdir(tmp_path) == ["o.json"]


def test_write_table_csv_round_trip(tmp_path):
  rows = [
    [0, -1.2345678901234567, "copying"],
    [1, math.nan, "undefined"],
    [np.int64(2), np.float64(0.1), "fine, ok"],
  ]
  path = report.write_table_csv(
    rows, ["layer", "ct", "verdict"], tmp_path / "t.csv"
  )
  with open(path, newline="") as f:
    got = list(csv.reader(f))
  assert got[0] == ["layer", "ct", "verdict"]
  assert got[1] == ["0", "-1.2345678901234567", "copying"]
  assert float(got[1][1]) == -1.2345678901234567  # full precision
  assert got[2][1] == "nan" and math.isnan(float(got[2][1]))
  assert got[3] == ["2", "0.1", "fine, ok"]
  with pytest.raises(ValueError, match="row 1 has 2 cells"):
    report.write_table_csv(
      [[1, 2, 3], [1, 2]], ["a", "b", "c"], tmp_path / "x.csv"
    )


def test_format_table():
  text = report.format_table(
    [[0, -1.23456, "copying"], [12, 10.0, "fine"]], ["layer", "C_T", "verdict"]
  )
  lines = text.splitlines()
  assert lines[0].split() == ["layer", "C_T", "verdict"]
  assert set(lines[1]) <= {"-", " "}
  assert lines[2].split() == ["0", "-1.235", "copying"]
  assert lines[3].split() == ["12", "10.000", "fine"]
  # Numbers are right-aligned: the numeric column ends at the same offset.
  assert lines[2].index("-1.235") + 6 == lines[3].index("10.000") + 6
  assert lines[2].find("copying") == lines[3].find("fine")


def test_verdict():
  assert report.verdict(-5.0) == "copying"
  assert report.verdict(5.0) == "under-fitting"
  assert report.verdict(1.9) == "fine"
  assert report.verdict(math.nan) == "undefined"
  assert report.verdict(-1.0, band=0.5) == "copying"


def _curve_lines(fig):
  """(x, y) of every data line of a `curves_figure` (after the zero line)."""
  lines = fig.axes[0].get_lines()
  np.testing.assert_array_equal(lines[0].get_ydata(), [0.0, 0.0])  # axhline
  return [
    (np.asarray(l.get_xdata()), np.asarray(l.get_ydata())) for l in lines[1:]
  ]


def test_plot_curves(tmp_path):
  data = fp.read_curve_file(os.path.join(FIXTURES, "ffull_scores.txt"))
  curves = {}
  for label, c in data.enrolled:
    curves.setdefault(label, []).append(c)  # first value NaN: a gap
  fig = report.curves_figure(curves, title="paper curves (ffull)")
  lines = _curve_lines(fig)
  want = [c for cs in curves.values() for c in cs]
  assert len(lines) == len(want) == 12
  for (x, y), c in zip(lines, want):
    np.testing.assert_array_equal(x, np.arange(13))
    np.testing.assert_array_equal(y, c)  # NaN kept: drawn as a gap
  legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
  assert legend[2:] == list(curves)  # two shaded bands, then one per label
  assert fig.axes[0].get_title() == "paper curves (ffull)"
  path = report.plot_curves(
    curves, tmp_path / "curves.png", title="paper curves (ffull)"
  )
  assert _png_size(path) == (800, 420)
  one = np.linspace(-20, 20, 5)
  fig = report.curves_figure({"only": one}, layers=[1, 2, 3, 4, 5])
  ((x, y),) = _curve_lines(fig)
  np.testing.assert_array_equal(x, [1, 2, 3, 4, 5])
  np.testing.assert_array_equal(y, one)
  lo, hi = fig.axes[0].get_ylim()
  assert lo < -20 and hi > 20  # every point inside the axes
  with pytest.raises(ValueError, match="different lengths"):
    report.plot_curves({"a": [1.0, 2.0], "b": [1.0]}, tmp_path / "x.png")
  with pytest.raises(ValueError, match="layers has shape"):
    report.plot_curves({"a": [1.0, 2.0]}, tmp_path / "x.png", layers=[1])


def _annotations(ax):
  return {
    (round(t.get_position()[1]), round(t.get_position()[0])): t.get_text()
    for t in ax.texts
  }


def test_heatmap_and_confusion(tmp_path):
  data = fp.read_curve_file(os.path.join(FIXTURES, "Ffull_score.txt"))
  curves = np.stack([c for _, c in data.enrolled])
  labels = [l for l, _ in data.enrolled]
  sim = fp.similarity_matrix(curves)
  ax = report.similarity_figure(sim, labels).axes[0]
  np.testing.assert_array_equal(ax.get_images()[0].get_array(), sim)
  assert [t.get_text() for t in ax.get_yticklabels()] == labels
  if len(labels) <= 20:
    notes = _annotations(ax)
    assert notes[(0, 1)] == format(sim[0, 1], ".2f")
    assert len(notes) == sim.size
  path = report.plot_similarity_heatmap(sim, labels, tmp_path / "heat.png")
  w, h = _png_size(path)
  assert 500 <= w <= 2200 and 400 <= h <= 2000
  _, ev = fp.evaluate_curve_file(os.path.join(FIXTURES, "fsmall_scores.txt"))
  ax = report.confusion_figure(ev.confusion, ev.labels).axes[0]
  np.testing.assert_array_equal(ax.get_images()[0].get_array(), ev.confusion)
  assert [t.get_text() for t in ax.get_xticklabels()] == ev.labels
  assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted", "true")
  notes = _annotations(ax)
  k = len(ev.labels)
  assert {notes[i, j] for i in range(k) for j in range(k)} == {
    str(v) for v in ev.confusion.ravel()
  }
  assert all(
    notes[i, j] == str(ev.confusion[i, j]) for i in range(k) for j in range(k)
  )
  path = report.plot_confusion(ev.confusion, ev.labels, tmp_path / "conf.png")
  w, h = _png_size(path)
  assert 300 <= w <= 2200 and 300 <= h <= 2000
  with pytest.raises(ValueError, match="matrix has shape"):
    report.plot_confusion(ev.confusion, ev.labels[:-1], tmp_path / "x.png")


def test_image_gallery(tmp_path, rng):
  gray = rng.integers(0, 256, size=(8, 8), dtype=np.uint8)
  rgb = rng.integers(0, 256, size=(32, 16, 3), dtype=np.uint8)
  items = [
    (gray, gray, "d=0.001 gen 5 / train 17"),
    (rgb, rgb[..., :1], "d=0.02"),
    (gray, rgb, "x" * 80),
  ]
  path = report.image_gallery(items, tmp_path / "g.png", cell=64, columns=2)
  with Image.open(path) as im:
    a = np.asarray(im.convert("RGB"))
  gap, text_h, head_h = 6, 14, 16
  assert a.shape == (
    head_h + 2 * (64 + 2 * text_h + gap) + gap,
    2 * (2 * 64 + gap) + 3 * 2 * gap,
    3,
  )
  # The first generated image, upscaled 8x with nearest neighbour, sits in the
  # first cell.
  y0, x0 = head_h, 2 * gap
  np.testing.assert_array_equal(a[y0 : y0 + 64 : 8, x0 : x0 + 64 : 8, 0], gray)
  with pytest.raises(ValueError, match="item 0 image 0 must be uint8"):
    report.image_gallery([(gray.astype(float), gray, "")], tmp_path / "x.png")
  with pytest.raises(ValueError, match="at least one"):
    report.image_gallery([], tmp_path / "x.png")
