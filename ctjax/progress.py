"""Progress bars of ctjax's long calls (fit, score_many, embed).

Each call decides whether it shows a bar (e.g. `CTReference.fit` from four
layers up); ``CTJAX_PROGRESS=0`` in the environment turns every bar off,
e.g. for batch jobs whose logs would otherwise fill with redrawn bars.
"""

import os


def enabled(show: bool) -> bool:
  """``show``, unless ``CTJAX_PROGRESS=0`` turns bars off."""
  return bool(show) and os.environ.get("CTJAX_PROGRESS", "1") != "0"


def bar(*, show: bool, **kwargs):
  """A `tqdm.auto.tqdm` bar (``kwargs`` as tqdm's, e.g. ``total``,
  ``desc``), disabled unless `enabled(show)`."""
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

  return tqdm(disable=not enabled(show), **kwargs)
