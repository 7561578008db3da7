"""What a run ran on: CPU, package versions, backend, native kernels.

Numbers from ctjax repeat bit for bit only on the same CPU features and
package versions: XLA compiles for the CPU it runs on (AVX-512 or AVX2
vectors sum in different orders) and changes its code generation between
releases, the native kernels are built for the host (``-march=native``),
and a generator trained for a few hundred steps amplifies rounding
differences into different samples. (The built-in demo's results.json, from
the same ctjax commit, differed between a Sapphire Rapids machine and an
AMD EPYC one with other package versions by up to 2 in C_T on its GAN
curves and by a few held-out batches in some accuracies; each repeated
itself bit for bit.) `describe` is what ``run.py`` writes into its results
files, so that two results can be told apart from two environments.

  env = ctjax.environment.describe()
  env["packages"]["jax"]         # "0.10.2"
  ctjax.environment.summary(env) # one line for a report
"""

import os
import platform
import sys
from importlib import metadata
from typing import Any

import jax

from ctjax import threads

# Packages whose versions decide ctjax's numbers (or its tests' oracles).
PACKAGES = (
  "ctjax",
  "jax",
  "jaxlib",
  "flax",
  "optax",
  "numpy",
  "scipy",
  "scikit-learn",
  "transformers",
  "safetensors",
  "pillow",
  "torch",
)


def package_version(name: str) -> str | None:
  """The installed distribution's version, or None where it is not installed
  (read from its metadata: nothing is imported)."""
  try:
    return metadata.version(name)
  except metadata.PackageNotFoundError:
    return None


# Vector instruction sets, widest first, as /proc/cpuinfo names them.
VECTOR_ISAS = ("avx512f", "avx2", "avx", "sse4_2", "sve", "asimd")


def _cpuinfo() -> dict[str, str]:
  """The first value of each /proc/cpuinfo key (empty where there is no
  such file)."""
  info = {}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, sep, value = line.partition(":")
        if sep:
          info.setdefault(key.strip(), value.strip())
  except OSError:
    pass
  return info


def cpu_vector_isa(info: dict[str, str] | None = None) -> str | None:
  """The widest of `VECTOR_ISAS` this CPU has (Linux), else None; ``info``
  is `_cpuinfo`'s (read when None)."""
  info = _cpuinfo() if info is None else info
  have = set(info.get("flags", info.get("Features", "")).split())
  return next((isa for isa in VECTOR_ISAS if isa in have), None)


def cpu_model(info: dict[str, str] | None = None) -> str:
  """The CPU's model name (Linux: /proc/cpuinfo), else what `platform`
  knows; ``info`` as in `cpu_vector_isa`."""
  info = _cpuinfo() if info is None else info
  return info.get("model name") or platform.processor() or platform.machine()


def cpu_generation(info: dict[str, str] | None = None) -> str | None:
  """Vendor, family and model numbers (Linux), e.g. ``"AuthenticAMD family
  26 model 2"`` (Zen 5), which tell apart CPUs whose model name a virtual
  machine shortens to "AMD EPYC"; None where /proc/cpuinfo lacks them.
  ``info`` as in `cpu_vector_isa`."""
  info = _cpuinfo() if info is None else info
  if "cpu family" not in info or "model" not in info:
    return None
  vendor = info.get("vendor_id", "")
  return f"{vendor} family {info['cpu family']} model {info['model']}".strip()


def cpu_caches(root: str = "/sys/devices/system/cpu/cpu0/cache") -> dict:
  """The first core's caches as Linux's sysfs lists them, e.g. ``{"L1d":
  "48K", "L1i": "32K", "L2": "1024K", "L3": "32768K"}`` (empty elsewhere);
  the native kernels' speed depends on them (their blocks are sized for a
  2 MB L2)."""

  def read(entry, name):
    with open(os.path.join(root, entry, name)) as f:
      return f.read().strip()

  caches = {}
  try:
    entries = sorted(os.listdir(root))
  except OSError:
    return caches
  for entry in entries:
    try:
      level, kind, size = (read(entry, n) for n in ("level", "type", "size"))
    except OSError:
      continue
    suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
    caches[f"L{level}{suffix}"] = size
  return caches


# Environment variables that change what XLA or ctjax compute or how.
ENV_PREFIXES = ("XLA_", "JAX_", "CTJAX_")


def describe(native_kernels: bool = True) -> dict[str, Any]:
  """The environment of this process, as a JSON-ready dict.

  Starts JAX's default backend if nothing has yet. Keys:
  - ``python``; ``platform`` (OS and machine); ``cpu`` (the CPU's model);
    ``cpu_vector_isa`` (its widest vector instructions, e.g. "avx2");
    ``cpu_generation`` (vendor, family and model numbers); ``cpu_caches``
    (one core's, e.g. ``{"L2": "1024K"}``);
    ``cpu_cores`` (this process's affinity mask);
  - ``packages``: name -> version, or None where not installed (`PACKAGES`);
  - ``backend``; ``devices``: count and kind of its devices;
  - ``variables``: the process's ``XLA_*``, ``JAX_*`` and ``CTJAX_*``
    environment variables;
  - with ``native_kernels``, ``native_kernels``: "on" or "off: <why>"
    (`ctjax.stats.native.why_not`, which builds the kernels on its first
    call on a CPU).
  """
  devices = jax.devices()
  info = _cpuinfo()
  env = {
    "python": sys.version.split()[0],
    "platform": f"{platform.system()} {platform.release()} "
    f"({platform.machine()})",
    "cpu": cpu_model(info),
    "cpu_vector_isa": cpu_vector_isa(info),
    "cpu_generation": cpu_generation(info),
    "cpu_caches": cpu_caches(),
    "cpu_cores": threads.host_cores(),
    "packages": {p: package_version(p) for p in PACKAGES},
    "backend": jax.default_backend(),
    "devices": {"count": len(devices), "kind": devices[0].device_kind},
    "variables": {
      k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)
    },
  }
  if native_kernels:
    from ctjax.stats import native  # pylint: disable=g-import-not-at-top

    why = native.why_not()
    env["native_kernels"] = "on" if why is None else f"off: {why}"
  return env


def summary(env: dict[str, Any]) -> str:
  """One line for a report: backend, devices, CPU, cores and the versions
  that decide the numbers, e.g. ``cpu (1 × cpu) on AMD EPYC (avx2), 2
  cores; python 3.11.7, jax 0.10.2, ...; native kernels on``, where the
  parenthesis also names the CPU's generation and L2 when known."""
  pk = env["packages"]
  versions = ", ".join(
    f"{p} {pk[p]}"
    for p in ("jax", "jaxlib", "flax", "optax", "numpy", "scikit-learn")
    if pk.get(p)
  )
  dev = env["devices"]
  details = [env.get("cpu_vector_isa"), env.get("cpu_generation")]
  l2 = env.get("cpu_caches", {}).get("L2")
  details.append(f"L2 {l2}" if l2 else None)
  details = "; ".join(d for d in details if d)
  cpu = env.get("cpu", "") + (f" ({details})" if details else "")
  line = (
    f"{env['backend']} ({dev['count']} × {dev['kind']}) on {cpu}, "
    f"{env['cpu_cores']} cores; python {env['python']}, {versions}"
  )
  if "native_kernels" in env:
    line += f"; native kernels {env['native_kernels']}"
  return line
