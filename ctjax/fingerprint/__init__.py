"""Generator fingerprints from C_T-vs-layer curves (He et al. 2024, Sec. 5).

Modules:
  rules        the similarities and aggregates, and the rule names (`RULES`)
  library      `FingerprintLibrary`: enrolment, matching, JSON files
  calibration  the open-set threshold from leave-one-out scores
  evaluation   accuracy and confusion of a library on labelled queries
  curve_files  the authors' published curve files
  features     richer fingerprints: per-cell Z, cell shares, distance quantiles
"""

from ctjax.fingerprint.calibration import Calibration
from ctjax.fingerprint.curve_files import (
  CurveFile,
  evaluate_curve_file,
  read_curve_file,
)
from ctjax.fingerprint.evaluation import Evaluation, evaluate
from ctjax.fingerprint.features import (
  FEATURES,
  QUANTILES,
  batch_features,
  distance_quantiles,
  result_features,
)
from ctjax.fingerprint.library import (
  UNKNOWN,
  FingerprintLibrary,
  batch_curves,
  reference_identity,
)
from ctjax.fingerprint.rules import (
  AGGREGATES,
  RULES,
  SIMILARITIES,
  parse_rule,
  rule_name,
  similarity,
  similarity_matrix,
)

# Names of ctjax before the rule was split into similarity + aggregate.
BASE_METRICS = SIMILARITIES
METRICS = RULES
