"""The package's import rules.

1. The library is light: ``import ctjax``, ``from ctjax import *``, fitting and
   scoring a `CTReference` and using a `FingerprintLibrary` load none of Flax,
   optax, matplotlib, absl, scikit-learn, torch or transformers (checked in a
   fresh interpreter, since this one has imported them all).
2. The arrows run one way (checked by reading every import statement, lazy
   ones inside functions included): ``ctjax/stats/`` imports nothing of ctjax
   outside ``stats/``; nothing outside ``ctjax/audit/`` imports it except
   ``ctjax/cli.py`` and ``run.py``; nothing imports ``ctjax/cli.py`` except
   ``run.py`` (and the tests).
"""

import ast
import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "ctjax")
HEAVY = (
  "flax",
  "optax",
  "matplotlib",
  "absl",
  "sklearn",
  "torch",
  "transformers",
)

# ----------------------------------------------------------------------------
# 1. What the library loads.

_SCRIPT = textwrap.dedent("""
  import json, sys
  HEAVY = {heavy!r}

  def loaded():
    return sorted({{m.split(".")[0] for m in sys.modules}} & set(HEAVY))

  stages = {{}}
  import ctjax
  stages["import ctjax"] = loaded()
  from ctjax import *
  stages["from ctjax import *"] = loaded()
  import numpy as np
  rng = np.random.default_rng(0)
  ref = CTReference.fit(
    rng.normal(size=(2, 60, 4)), rng.normal(size=(2, 40, 4)),
    n_components=2, n_cells=2, n_init=1,
  )
  ref.score(rng.normal(size=(2, 30, 4)))
  stages["CTReference.fit(...).score(...)"] = loaded()
  lib = FingerprintLibrary(similarity="cosine", aggregate="centroid")
  lib.add("a", [1.0, 0.0])
  lib.add("b", [0.0, 1.0])
  lib.identify([1.0, 0.2])
  lib.save({path!r})
  stages["FingerprintLibrary()"] = loaded()
  print(json.dumps(stages))
""")


def test_library_loads_no_heavy_dependency(tmp_path):
  script = _SCRIPT.format(heavy=HEAVY, path=str(tmp_path / "lib.json"))
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  p = subprocess.run(
    [sys.executable, "-c", script],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert p.returncode == 0, p.stderr[-3000:]
  stages = json.loads(p.stdout.strip().splitlines()[-1])
  assert list(stages) == [
    "import ctjax",
    "from ctjax import *",
    "CTReference.fit(...).score(...)",
    "FingerprintLibrary()",
  ]
  assert stages == {k: [] for k in stages}


def test_the_subprocess_check_sees_a_heavy_import(tmp_path):
  """The same check run after importing a model: Flax shows up."""
  script = "import json, sys, ctjax.models\n"
  script += "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  p = subprocess.run(
    [sys.executable, "-c", script],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert p.returncode == 0, p.stderr[-3000:]
  assert "flax" in json.loads(p.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------
# 2. Which part imports which.


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
  if rel[-1] == "__init__":
    rel = rel[:-1]
  return ".".join(rel)


def _is_module(name: str) -> bool:
  base = os.path.join(ROOT, *name.split("."))
  return os.path.isfile(base + ".py") or os.path.isdir(base)


def imported_modules(path: str) -> set[str]:
  """Every ctjax module the file at ``path`` imports, at any depth.

  ``from ctjax.x import y`` counts as importing ``ctjax.x.y`` when that is a
  module, else ``ctjax.x``; relative imports are resolved.
  """
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  me = _module_name(path)
  package = me if path.endswith("__init__.py") else me.rpartition(".")[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
      for a in node.names:
        full = f"{base}.{a.name}"
        found.add(full if _is_module(full) else base)
  return {m for m in found if m == "ctjax" or m.startswith("ctjax.")}


def _sources():
  files = [os.path.join(ROOT, "run.py")]
  for folder, _, names in os.walk(PACKAGE):
    files += [os.path.join(folder, n) for n in names if n.endswith(".py")]
  return {os.path.relpath(f, ROOT): imported_modules(f) for f in files}


def _inside(module: str, package: str) -> bool:
  return module == package or module.startswith(package + ".")


@pytest.fixture(scope="module")
def sources():
  return _sources()


def test_the_import_reader(sources):
  # Known edges, so the rules below cannot pass by reading nothing.
  assert "ctjax.audit.encoder_training" in sources["ctjax/cli.py"]
  assert "ctjax.cli" in sources["run.py"]  # a lazy import inside a function
  assert "ctjax.stats.neighbors" in sources["ctjax/stats/ct.py"]
  assert "ctjax.fingerprint.rules" in sources["ctjax/fingerprint/library.py"]
  assert "ctjax.storage" in sources["ctjax/report.py"]  # from ctjax import x


def test_stats_imports_only_stats(sources):
  bad = {
    f: sorted(m for m in mods if not _inside(m, "ctjax.stats"))
    for f, mods in sources.items()
    if f.startswith(os.path.join("ctjax", "stats") + os.sep)
  }
  assert {f: m for f, m in bad.items() if m} == {}


def test_only_cli_and_run_import_audit(sources):
  allowed = {os.path.join("ctjax", "cli.py"), "run.py"}
  bad = {
    f: sorted(m for m in mods if _inside(m, "ctjax.audit"))
    for f, mods in sources.items()
    if f not in allowed
    and not f.startswith(os.path.join("ctjax", "audit") + os.sep)
  }
  assert {f: m for f, m in bad.items() if m} == {}


def test_nothing_imports_cli(sources):
  bad = sorted(
    f
    for f, mods in sources.items()
    if f != "run.py" and any(_inside(m, "ctjax.cli") for m in mods)
  )
  assert bad == []
