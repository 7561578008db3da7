"""How many XLA devices this host's CPU is split into.

XLA runs one CPU device's program on one core wherever its operations are
too small to split across threads (the C_T search is: 64-query tiles), and
two programs on one device do not overlap. Split into several devices, the
CPU runs one program per device at once, and `ctjax.CTReference.score` /
`score_many` split the layers between them (`ctjax.sharding.layer_mesh`).
JAX fixes the count when it first runs something, so `use_cpu_devices`
must come before any computation; ``run.py`` calls it first thing.

Where the native search kernel builds (`ctjax.stats.native`), the search
spreads over the cores by itself and one device is the default. On this
project's 2-core CPU, ``run.py`` with its trained generators and encoders
already cached (the stages that compute C_T) took 40–41 s on one device
against 45–49 s on two (alternating runs, empty compilation caches); from
scratch, 97 and 103 s on one device against 104 s on two.
"""

import os
import re

import jax

# The count measured on a 2-core host (benchmarks/bench_ct.py): one device
# per core. More devices than cores only queue programs; more than 2 were
# not measured.
MAX_DEFAULT = 2
_FLAG = re.compile(r"--xla_force_host_platform_device_count=(\d+)")


def default_count() -> int:
  """1 where the native search kernel is available (it uses every core
  itself), else the cores this process may run on (its affinity mask), at
  most `MAX_DEFAULT`; the environment variable ``CTJAX_CPU_DEVICES``
  overrides."""
  env = os.environ.get("CTJAX_CPU_DEVICES", "").strip()
  if env:
    if not env.isdigit() or int(env) < 1:
      raise ValueError(
        f"CTJAX_CPU_DEVICES must be a whole number >= 1, got {env!r}"
      )
    return int(env)
  from ctjax.stats import native  # pylint: disable=g-import-not-at-top

  if native.available():  # builds it on first use; starts no JAX backend
    return 1
  from ctjax import threads  # pylint: disable=g-import-not-at-top

  return max(1, min(threads.host_cores(), MAX_DEFAULT))


def _initialised() -> bool:
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top

  return xla_bridge.backends_are_initialized()


def use_cpu_devices(n: int | None = None) -> int:
  """Splits the host CPU into ``n`` XLA devices (``jax_num_cpu_devices``).

  Call it right after importing ctjax, before anything runs on JAX. A count
  the user already chose (``XLA_FLAGS=--xla_force_host_platform_device_count``)
  is kept. Accelerators are not affected; on a GPU/TPU host the split
  applies to the CPU backend only, which ctjax then does not use.

  Args:
    n: devices; ``None`` is `default_count` (1 with the native search
      kernel, else one per core, at most 2).

  Returns:
    The number of CPU devices JAX will have.

  Raises:
    RuntimeError: JAX already runs with a different count (it was used
      before this call).
    ValueError: ``n`` < 1.
  """
  if n is None:
    n = default_count()
  if int(n) < 1:
    raise ValueError(f"n must be >= 1, got {n}")
  n = int(n)
  flag = _FLAG.search(os.environ.get("XLA_FLAGS", ""))
  if flag:
    return int(flag.group(1))
  if _initialised():
    have = len(jax.devices("cpu"))
    if have != n:
      raise RuntimeError(
        f"JAX already started with {have} CPU device(s); call "
        f"ctjax.use_cpu_devices({n}) before anything runs on JAX (or set "
        f"XLA_FLAGS=--xla_force_host_platform_device_count={n})"
      )
    return have
  jax.config.update("jax_num_cpu_devices", n)
  return n
