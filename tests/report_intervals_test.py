"""report.curves_figure(intervals=...): bootstrap bands around curves."""

import numpy as np
import pytest

from ctjax import report


def test_interval_band_drawn_around_its_curve(tmp_path):
  low = np.array([-3.0, np.nan, 0.5])
  high = np.array([1.0, np.nan, 40.0])
  fig = report.curves_figure(
    {"a": [-1.0, np.nan, 2.0], "b": [1.0, 2.0, 3.0]},
    intervals={"a": (low, high)},
  )
  ax = fig.axes[0]
  (band,) = ax.collections  # only "a" has one
  verts = np.concatenate([p.vertices for p in band.get_paths()])
  # the band spans exactly low..high at each finite layer; the NaN is a gap
  for x, lo, hi in ((0, -3.0, 1.0), (2, 0.5, 40.0)):
    ys = verts[verts[:, 0] == x, 1]
    assert ys.min() == lo and ys.max() == hi
  assert not np.any(verts[:, 0] == 1)
  assert np.allclose(
    band.get_facecolor()[0][:3], ax.get_lines()[1].get_color()[:3]
  )
  assert ax.get_ylim()[1] > 40  # the band is inside the axes
  path = report.plot_curves(
    {"a": [-1.0, 0.0, 2.0]}, tmp_path / "c.png", intervals={"a": (low, high)}
  )
  assert path.endswith("c.png")


def test_interval_errors():
  with pytest.raises(ValueError, match="which has no curve"):
    report.curves_figure({"a": [1.0, 2.0]}, intervals={"b": ([0, 0], [1, 1])})
  with pytest.raises(ValueError, match=r"must be \(low \[L\], high \[L\]\)"):
    report.curves_figure(
      {"a": [1.0, 2.0]}, intervals={"a": ([0, 0, 0], [1, 1, 1])}
    )
