"""Position-grid resampling against torch.nn.functional.interpolate."""

import numpy as np
import pytest

from ctjax.models import posemb

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize(
  "g,new", [(3, (5, 5)), (4, (2, 2)), (4, (3, 6)), (6, (4, 9)), (2, (2, 2))]
)
def test_matches_torch_bicubic(rng, g, new, antialias):
  grid = rng.normal(size=(g, g, 5)).astype(np.float32)
  want = (
    torch.nn.functional.interpolate(
      torch.from_numpy(grid.transpose(2, 0, 1)[None]),
      size=new,
      mode="bicubic",
      align_corners=False,
      antialias=antialias,
    )[0]
    .numpy()
    .transpose(1, 2, 0)
  )
  got = posemb.resample_grid(grid, new, antialias=antialias)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_same_size_is_identity():
  for make in (posemb.bicubic_matrix, posemb.bicubic_aa_matrix):
    np.testing.assert_allclose(make(7, 7), np.eye(7), atol=1e-12)
