"""Numerics of the C_T test: PCA, k-means, cell-restricted nearest neighbours,
exact Mann-Whitney counts and C_T. Pure functions on arrays: no file I/O, no
meshes (those live in `ctjax.storage` and `ctjax.sharding`)."""

from ctjax.stats.ct import CTResult, Neighbors, c_t
