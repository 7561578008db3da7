"""Numerics of the C_T test: PCA, k-means, cell-restricted nearest neighbours,
exact Mann-Whitney counts, C_T, and the fit-once/score-many reference."""
from ctjax.stats.ct import CTResult, Neighbors, c_t, ct_score
from ctjax.stats.reference import CTReference, ct_curve
