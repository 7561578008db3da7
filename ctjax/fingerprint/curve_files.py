"""The authors' published curve files (He et al. 2024), read and scored.

Format: one curve a line, ``ARCH_train_batch: [v0, v1, ...]``. The label is
the text before the first ``_``; ``train`` lines are enrolled curves and
``test`` lines queries. Values may be ``nan``.
"""

import os
import re
from typing import NamedTuple

import numpy as np

from ctjax.fingerprint.evaluation import Evaluation, evaluate
from ctjax.fingerprint.library import FingerprintLibrary


class CurveFile(NamedTuple):
  """Curves read from one of the authors' text files.

  Attributes:
    enrolled: [(label, curve [L])] from ``*_train_batch`` lines.
    queries: [(label, curve [L])] from ``*_test_batch`` lines.
  """

  enrolled: list
  queries: list


_LINE = re.compile(r"^\s*([^:\s]+)\s*:\s*\[(.*)\]\s*$")


def read_curve_file(path) -> CurveFile:
  """Reads one file (see the module docstring).

  Values are kept as written (no NaN replacement, nothing dropped).
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise ValueError(f"curve file {path} does not exist")
  enrolled, queries = [], []
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      m = _LINE.match(line)
      if m is None:
        raise ValueError(f"{path}:{lineno}: expected 'NAME: [v0, v1, ...]'")
      key, body = m.groups()
      label, _, role = key.partition("_")
      if not label:
        raise ValueError(f"{path}:{lineno}: empty label in {key!r}")
      try:
        curve = np.array([float(v) for v in body.split(",")], dtype=np.float64)
      except ValueError as e:
        raise ValueError(f"{path}:{lineno}: bad value ({e})") from e
      if role.startswith("train"):
        enrolled.append((label, curve))
      elif role.startswith("test"):
        queries.append((label, curve))
      else:
        raise ValueError(
          f"{path}:{lineno}: {key!r} is neither a *_train_* "
          "nor a *_test_* curve"
        )
  lengths = {len(c) for _, c in enrolled + queries}
  if len(lengths) > 1:
    raise ValueError(f"{path}: curves of different lengths {sorted(lengths)}")
  if not enrolled or not queries:
    raise ValueError(
      f"{path}: needs both train (enrolled) and test (query) curves"
    )
  return CurveFile(enrolled, queries)


def evaluate_curve_file(
  path,
  *,
  drop_first: int = 1,
  similarity: str = "paper",
  aggregate: str = "nearest",
  alpha: float = 0.5,
) -> tuple[FingerprintLibrary, Evaluation]:
  """The authors' rule on one of their files.

  Drops the first ``drop_first`` values of every curve (the authors' layer 0),
  enrols the train curves and identifies the test ones (NaN read as 0).

  Returns:
    (the library of the file's train curves, the evaluation of its test ones).
  """
  data = read_curve_file(path)
  lib = FingerprintLibrary(
    similarity=similarity, aggregate=aggregate, alpha=alpha
  )
  for label, curve in data.enrolled:
    lib.add(label, curve[drop_first:])
  queries = [(label, curve[drop_first:]) for label, curve in data.queries]
  return lib, evaluate(lib, queries)
