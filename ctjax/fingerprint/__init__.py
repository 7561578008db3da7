"""Generator fingerprints from C_T-vs-layer curves: similarity rules, the
enrolment library, open-set calibration, evaluation and published curve files."""

from ctjax.fingerprint.library import (
  BASE_METRICS,
  METRICS,
  UNKNOWN,
  Calibration,
  Evaluation,
  FingerprintLibrary,
  batch_curves,
  evaluate,
  evaluate_curve_file,
  read_curve_file,
  reference_identity,
  similarity,
  similarity_matrix,
)
