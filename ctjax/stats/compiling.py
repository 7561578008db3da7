"""Per-program XLA compiler options (`cpu_jit`), see `ctjax.xla_options`."""

import jax


class cpu_jit:  # pylint: disable=invalid-name
  """``jax.jit(fun, **jit_kw)``, compiled with ``options`` on a CPU backend.

  The backend is read at the first call (not at construction, so that
  `ctjax.use_cpu_devices` can still run after import). On an accelerator,
  or where this XLA rejects an option (a version without it), the program
  is compiled with the defaults. ``lower`` is `jax.jit`'s.
  """

  def __init__(self, fun, options: dict, **jit_kw):
    self._plain = jax.jit(fun, **jit_kw)
    # No options: one function (a second jit of it with empty options
    # shares its compilations, and would count them twice).
    self._tuned = (
      jax.jit(fun, compiler_options=dict(options), **jit_kw)
      if options
      else self._plain
    )
    self._use_tuned = None  # decided at the first call
    self.__wrapped__ = fun
    self.__doc__ = getattr(fun, "__doc__", None)

  def _chosen(self):
    if self._use_tuned is None:
      self._use_tuned = jax.default_backend() == "cpu"
    return self._tuned if self._use_tuned else self._plain

  def __call__(self, *args, **kwargs):
    if self._use_tuned is not False:
      try:
        return self._chosen()(*args, **kwargs)
      except jax.errors.JaxRuntimeError as e:
        if "option" not in str(e):
          raise
        self._use_tuned = False  # this XLA does not know an option
    return self._plain(*args, **kwargs)

  def lower(self, *args, **kwargs):
    return self._chosen().lower(*args, **kwargs)

  def clear_cache(self):
    self._plain.clear_cache()
    self._tuned.clear_cache()

  def _cache_size(self) -> int:
    """Compiled programs of both variants (for tests that count them)."""
    n = self._plain._cache_size()  # pylint: disable=protected-access
    if self._tuned is self._plain:
      return n
    return n + self._tuned._cache_size()  # pylint: disable=protected-access
