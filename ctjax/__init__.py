"""ctjax: the C_T data-copying statistic on every layer of a vision encoder.

Public API (see README.md, and docs/method.md for the method):

  c_t, ct_score, ct_curve, CTReference, CTResult   the C_T engine
  embed                                             all-layer embeddings
  FingerprintLibrary                                C_T-curve fingerprints
  use_cpu_devices                                   every CPU core at once
  select_layers                                     which layer detects what

Subpackages and modules, loaded on first use: stats (numerics), models
(encoders; the only part that needs Flax), embedding, preprocess, fingerprint,
sharding, storage, report. The built-in audit (``ctjax.audit``) and the
command line (``ctjax.cli``, run.py) sit on top of the library; nothing here
imports them.
"""

import importlib

from ctjax.devices import use_cpu_devices
from ctjax.reference import CTReference, ct_curve, ct_score
from ctjax.stats.ct import CTResult, c_t

__version__ = "0.1.0"

_LAZY_ATTRS = {
  "embed": ("ctjax.embedding", "embed"),
  "FingerprintLibrary": ("ctjax.fingerprint", "FingerprintLibrary"),
  "select_layers": ("ctjax.selection", "select_layers"),
}
_LAZY_MODULES = (
  "models",
  "embedding",
  "environment",
  "preprocess",
  "fingerprint",
  "report",
  "selection",
  "sharding",
  "storage",
)

__all__ = [
  "CTResult",
  "CTReference",
  "c_t",
  "ct_score",
  "ct_curve",
  "enable_compilation_cache",
  "use_cpu_devices",
  *_LAZY_ATTRS,
]


def __getattr__(name):
  # Heavy parts (Flax models, plotting) load on first use, so `import ctjax`
  # stays cheap for code that only needs the statistics.
  if name in _LAZY_ATTRS:
    module, attr = _LAZY_ATTRS[name]
    return getattr(importlib.import_module(module), attr)
  if name in _LAZY_MODULES:
    return importlib.import_module(f"ctjax.{name}")
  raise AttributeError(f"module 'ctjax' has no attribute {name!r}")


def enable_compilation_cache(path: str | None = None) -> str:
  """Turns on JAX's persistent compilation cache (off by default in JAX).

  The fit and score kernels take tens of seconds to compile on a CPU; with the
  cache a second process reuses the compiled code. run.py and the benchmarks
  call this; a library user may too. Returns the folder used
  (default ``$CTJAX_JAX_CACHE`` or ``~/.cache/ctjax/jax``).
  """
  import os  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  path = (
    path
    or os.environ.get("CTJAX_JAX_CACHE")
    or os.path.join(os.path.expanduser("~"), ".cache", "ctjax", "jax")
  )
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path
