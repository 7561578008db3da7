"""Numerics of the C_T test: PCA, k-means, cell-restricted nearest neighbours,
exact Mann-Whitney counts and C_T. Pure functions on arrays: no file I/O, no
meshes (those live in `ctjax.storage` and `ctjax.sharding`).

The on-device score: `score(fitted, gen)` with ``fitted`` a `Fitted`
(``CTReference.fitted``) returns `Scores`; it is jit-, vmap- and scan-able.
"""

from ctjax.stats.ct import CTResult, Neighbors, c_t
from ctjax.stats.fitted import FitConfig, Fitted, TestStats
from ctjax.stats.scoring import Scores, score, u2_dtype
