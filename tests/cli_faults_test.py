"""Faults a user meets with run.py: the right answer or exit 2 and one line.

run.py's `main` is driven in-process (absl flags parsed, then reset); real
subprocesses only where a process boundary is the point (concurrent enrolment,
the exit status of a real interpreter). Every refusal asserts exit 2, one
line naming the file or flag, no traceback, and that no existing output
changed.
"""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ctjax import cli
from ctjax.fingerprint import FingerprintLibrary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import run  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

L, D = 2, 4
N_CELLS = 3


def _draw(rng, centers, k):
  idx = rng.integers(0, len(centers), k)
  return np.stack(
    [centers[idx] + rng.normal(size=(k, D)) * (1 + 0.3 * l) for l in range(L)]
  ).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("faults")
  rng = np.random.default_rng(0)
  c = rng.normal(size=(4, D)) * 3
  tr = _draw(rng, c, 60)
  arrays = dict(
    train=tr,
    train2=_draw(rng, c, 60),
    test=_draw(rng, c, 40),
    gen=np.concatenate([tr[:, :20] + 0.01, _draw(rng, c, 20)], 1),
    genB=_draw(rng, c, 40),
  )
  for k, v in arrays.items():
    np.savez(d / f"{k}.npz", embeddings=v)
  ref_out = d / "ref"
  cli.score(
    train=d / "train.npz",
    test=d / "test.npz",
    gen=d / "gen.npz",
    out=str(ref_out),
    n_cells=N_CELLS,
    echo=lambda *_: None,
  )
  return d, arrays, str(ref_out / "reference.npz")


def _snapshot(folder):
  """{relative path: sha256} of every file under ``folder``."""
  out = {}
  for root, _, names in os.walk(folder):
    for n in names:
      p = os.path.join(root, n)
      with open(p, "rb") as f:
        out[os.path.relpath(p, folder)] = hashlib.sha256(f.read()).hexdigest()
  return out


def main(argv, capsys):
  """run.py's main in-process: (exit code, stdout, stderr)."""
  run.FLAGS.unparse_flags()
  args = run.FLAGS(["run.py", *map(str, argv)])
  code = 0
  try:
    run.main(args)
  except SystemExit as e:
    code = e.code
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def refused(argv, capsys, *names, folder=None):
  """Asserts exit 2 and one error line naming ``names``; nothing altered."""
  before = _snapshot(folder) if folder else None
  code, _, err = main(argv, capsys)
  lines = [l for l in err.splitlines() if l.startswith("error:")]
  assert code == 2, err
  assert len(lines) == 1 and "Traceback" not in err, err
  for n in names:
    assert str(n) in lines[0], (n, lines[0])
  if folder:
    assert _snapshot(folder) == before
  return lines[0]


def _ct(path):
  with open(os.path.join(path, "ct_curve.json")) as f:
    return np.array([np.nan if v is None else v for v in json.load(f)["ct"]])


# ------------------------------------------------------ stale references
def test_stale_reference_in_out_is_refitted(files, tmp_path, capsys):
  d, _, _ = files
  out = tmp_path / "o"
  base = ["score", "--gen", d / "gen.npz", "--test", d / "test.npz"]
  assert main([*base, "--train", d / "train.npz", "--out", out,
               "--n_cells", N_CELLS], capsys)[0] == 0  # fmt: skip
  # Another --train into the same --out: the curve of a fresh fit on it.
  code, stdout, _ = main(
    [*base, "--train", d / "train2.npz", "--out", out, "--n_cells", N_CELLS],
    capsys,
  )
  assert code == 0 and "refitting" in stdout and "--train" in stdout
  fresh = tmp_path / "fresh"
  assert main([*base, "--train", d / "train2.npz", "--out", fresh,
               "--n_cells", N_CELLS], capsys)[0] == 0  # fmt: skip
  np.testing.assert_array_equal(_ct(out), _ct(fresh))
  # A changed --seed refits (same compiled shapes: cheap) ...
  argv = [*base, "--train", d / "train2.npz", "--out", out, "--n_cells", 3]
  code, stdout, _ = main([*argv, "--seed", 3], capsys)
  assert code == 0 and "refitting" in stdout and "--seed" in stdout, stdout
  assert cli.load_reference(out / "reference.npz").config.seed == 3
  code, stdout, _ = main([*argv, "--seed", 3], capsys)  # ... once.
  assert code == 0 and "refitting" not in stdout
  # ... and so does every other fit setting (compared without fitting).
  ref = cli.load_reference(out / "reference.npz")
  same = cli.fit_request("cosine", N_CELLS, None, 3, defaults=True)
  inputs = dict(
    train=cli.input_identity(d / "train2.npz"),
    test=cli.input_identity(d / "test.npz"),
  )
  meta = dict(encoder=None, pool="cls")
  assert cli.reference_differences(ref, same, inputs, meta, strict=True) == []
  for key, value in (("metric", "l2"), ("n_cells", 4), ("n_components", 2)):
    request = dict(same, **{key: value})
    diffs = cli.reference_differences(ref, request, inputs, meta, strict=True)
    assert len(diffs) == 1 and diffs[0].startswith(f"--{key} {value}"), diffs
  diffs = cli.reference_differences(
    ref, same, dict(inputs, test=cli.input_identity(d / "genB.npz")), meta,
    strict=True,
  )  # fmt: skip
  assert len(diffs) == 1 and diffs[0].startswith("--test"), diffs
  diffs = cli.reference_differences(
    ref, same, inputs, dict(meta, pool="mean"), strict=True
  )
  assert len(diffs) == 1 and diffs[0].startswith("--pool"), diffs


def test_explicit_reference_that_differs_is_refused(files, tmp_path, capsys):
  d, _, ref = files
  out = tmp_path / "o"
  base = ["score", "--gen", d / "gen.npz", "--reference", ref, "--out", out]
  assert main(base, capsys)[0] == 0
  refused([*base, "--metric", "l2"], capsys, "--metric", ref,
          folder=out)  # fmt: skip
  refused([*base, "--n_cells", 7], capsys, "--n_cells", folder=out)
  refused([*base, "--seed", 1], capsys, "--seed", folder=out)
  refused(
    [*base, "--train", d / "train2.npz", "--test", d / "test.npz"],
    capsys,
    "--train",
    folder=out,
  )
  # The matching settings and inputs are accepted.
  code, _, err = main(
    [*base, "--n_cells", N_CELLS, "--train", d / "train.npz"], capsys
  )
  assert code == 0, err


# ---------------------------------------------------------- tau reaches
def test_tau_reaches_enroll_identify_evaluate(files, tmp_path, capsys):
  d, arrays, ref_path = files
  ref = cli.load_reference(ref_path)
  lib = tmp_path / "lib.json"
  fp = ["--reference", ref_path, "--library", lib, "--batch_size", 20]
  # Default tau = 20/20 = 1 is invalid; the message must not blame --tau
  # when it was given, and must not hint at it when it was not.
  refused(["enroll", *fp, "--label", "A", "--gen", d / "gen.npz",
           "--tau", 1.5], capsys, "--tau")  # fmt: skip
  assert not lib.exists()
  code, _, err = main(
    ["enroll", *fp, "--label", "A", "--gen", d / "gen.npz", "--tau", 0.05],
    capsys,
  )
  assert code == 0, err
  want = np.stack(
    [
      np.asarray(ref.score(arrays["gen"][:, i : i + 20], tau=0.05).ct)
      for i in (0, 20)
    ]
  )
  np.testing.assert_array_equal(FingerprintLibrary.load(lib).curves, want)
  r = cli.identify(
    library=str(lib),
    gen=d / "gen.npz",
    reference=ref_path,
    batch_size=20,
    tau=0.05,
    echo=lambda *_: None,
  )
  np.testing.assert_array_equal(r["curves"], want)
  r = cli.evaluate(
    library=str(lib),
    queries=[f"A={d / 'gen.npz'}"],
    reference=ref_path,
    batch_size=20,
    tau=0.05,
    out=str(tmp_path / "ev"),
    echo=lambda *_: None,
  )
  assert r["evaluation"].accuracy == 1.0


def test_all_nan_curve_is_not_enrolled(files, tmp_path, capsys):
  d, _, ref_path = files
  lib = tmp_path / "lib.json"
  # tau = 0.9: no cell holds 90% of a batch, so every layer is NaN.
  msg = refused(
    ["enroll", "--reference", ref_path, "--library", lib, "--label", "A",
     "--gen", d / "gen.npz", "--batch_size", 40, "--tau", 0.9],
    capsys, "no finite C_T", "--tau",
  )  # fmt: skip
  assert "gen.npz" in msg and not lib.exists()


# ------------------------------------------------------------- locking
_WORKER = textwrap.dedent(
  """
  import sys
  import numpy as np
  from ctjax import cli
  lib, label, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
  ident = {"hash": "h", "n_layers": 2}
  for i in range(n):
    curve = np.array([[float(i), float(len(label))]])
    cli.add_to_library(lib, label, curve, ident)
  """
)


def test_concurrent_enrolments_all_land(tmp_path):
  lib = str(tmp_path / "lib.json")
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  labels, n = ["a", "bb", "ccc"], 12
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", _WORKER, lib, label, str(n)],
      env=env,
      stderr=subprocess.PIPE,
    )
    for label in labels
  ]
  for p in procs:
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err.decode()
  got = FingerprintLibrary.load(lib)
  assert len(got) == n * len(labels)
  for label in labels:
    assert got.labels.count(label) == n


def test_same_batch_twice_is_refused(files, tmp_path, capsys):
  d, _, ref_path = files
  lib = tmp_path / "lib.json"
  argv = ["enroll", "--reference", ref_path, "--library", lib, "--label",
          "A", "--gen", d / "gen.npz", "--batch_size", 20, "--tau", 0.05]  # fmt: skip
  assert main(argv, capsys)[0] == 0
  refused(argv, capsys, "already enrolled", "--allow_duplicates",
          folder=tmp_path)  # fmt: skip
  assert main([*argv, "--allow_duplicates"], capsys)[0] == 0
  assert len(FingerprintLibrary.load(lib)) == 4


# --------------------------------------------------------------- gallery
def test_no_gallery_at_an_all_nan_layer(files, tmp_path, capsys):
  d, _, ref_path = files
  out = tmp_path / "o"
  code, stdout, _ = main(
    ["score", "--gen", d / "gen.npz", "--reference", ref_path, "--out", out,
     "--tau", 0.9], capsys)  # fmt: skip
  assert code == 0
  assert np.isnan(_ct(out)).all()
  assert "no copy gallery" in stdout and "not finite" in stdout
  assert not (out / "copy_gallery.csv").exists()
  assert not (out / "copy_gallery.png").exists()


# ----------------------------------------------- damaged and wrong files
def _damaged(tmp_path, src, how):
  data = open(src, "rb").read()
  if how == "empty":
    data = b""
  elif how == "truncated":
    data = data[: len(data) // 2]
  else:
    data = bytearray(data)
    data[len(data) // 2] ^= 0x40
    data = bytes(data)
  p = tmp_path / f"{how}-{os.path.basename(src)}"
  p.write_bytes(data)
  return p


@pytest.mark.parametrize("how", ["empty", "truncated", "flipped"])
def test_damaged_files_named(files, tmp_path, capsys, how):
  d, _, ref_path = files
  out = tmp_path / "o"
  bad_ref = _damaged(tmp_path, ref_path, how)
  refused(["score", "--gen", d / "gen.npz", "--reference", bad_ref,
           "--out", out], capsys, bad_ref)  # fmt: skip
  bad_emb = _damaged(tmp_path, d / "gen.npz", how)
  refused(["score", "--gen", bad_emb, "--reference", ref_path,
           "--out", out], capsys, bad_emb, "--gen")  # fmt: skip
  assert not out.exists() or not os.listdir(out)


def test_damaged_image_arrays_named(tmp_path):
  from ctjax import embedding, preprocess  # pylint: disable=g-import-not-at-top

  cfg = preprocess.PreprocessConfig(image_size=8)
  imgs = np.zeros((3, 8, 8), np.uint8)
  np.save(tmp_path / "i.npy", imgs)
  np.savez(tmp_path / "i.npz", images=imgs)
  for name in ("i.npy", "i.npz"):
    bad = _damaged(tmp_path, tmp_path / name, "truncated")
    with pytest.raises(ValueError, match=str(bad)):
      embedding.as_source(str(bad), cfg)


def test_bad_library_files_named(files, tmp_path, capsys):
  d, _, ref_path = files
  fp = ["identify", "--reference", ref_path, "--gen", d / "gen.npz",
        "--batch_size", 20, "--tau", 0.05]  # fmt: skip
  folder = tmp_path / "libdir"
  folder.mkdir()
  refused([*fp, "--library", folder], capsys, folder, "folder")
  latin = tmp_path / "latin.json"
  latin.write_bytes('{"format": "\xe9"}'.encode("latin-1"))
  refused([*fp, "--library", latin], capsys, latin, "UTF-8")
  typed = tmp_path / "typed.json"
  typed.write_text(
    json.dumps(
      {
        "format": "ctjax.FingerprintLibrary",
        "version": 2,
        "similarity": "paper",
        "aggregate": "nearest",
        "alpha": "half",
        "curves": [],
      }
    )
  )
  refused([*fp, "--library", typed], capsys, typed)
  refused(["enroll", *fp[1:], "--library", folder, "--label", "A"], capsys,
          folder)  # fmt: skip


def test_bad_flags_refused_before_any_work(files, tmp_path, capsys):
  d, _, ref_path = files
  out = tmp_path / "o"
  score = ["score", "--gen", d / "gen.npz", "--reference", ref_path]
  a_file = tmp_path / "file"
  a_file.write_text("x")
  refused([*score, "--out", a_file], capsys, "--out", a_file)
  refused([*score, "--out", tmp_path / ("x" * 300)], capsys, "--out")
  refused([*score, "--out", out, "--gallery_size", -1], capsys,
          "--gallery_size")  # fmt: skip
  refused([*score, "--out", out, "--gallery_layer", L], capsys,
          "--gallery_layer")  # fmt: skip
  refused([*score, "--out", out, "--gallery_layer", -1], capsys,
          "--gallery_layer")  # fmt: skip
  assert not out.exists() or not os.listdir(out)
  msg = refused([*score, "--out", out, "--tau", 1.5], capsys, "--tau")
  assert "pass tau explicitly" not in msg
  fp = ["identify", "--reference", ref_path, "--gen", d / "gen.npz",
        "--library", tmp_path / "none.json"]  # fmt: skip
  refused([*fp, "--top_k", 0], capsys, "--top_k")
  refused([*fp, "--top_k", -2], capsys, "--top_k")
  refused([*fp, "--batch_size", 0], capsys, "--batch_size")
  with pytest.raises(cli.UserError, match="seed 'abc'"):
    cli.load_encoder("random:digits:abc")
  with pytest.raises(cli.UserError, match="--n_cells must be an integer"):
    cli.score(gen=d / "gen.npz", reference=ref_path, n_cells=2.5,
              out=str(out))  # fmt: skip


def test_query_label_missing_from_library_warns(files, tmp_path, capsys):
  d, _, ref_path = files
  lib = tmp_path / "lib.json"
  common = ["--reference", ref_path, "--library", lib, "--batch_size", 20,
            "--tau", 0.05]  # fmt: skip
  assert main(["enroll", *common, "--label", "A", "--gen", d / "gen.npz"],
              capsys)[0] == 0  # fmt: skip
  code, _, err = main(
    ["evaluate", *common, "--query", f"Z={d / 'genB.npz'}", "--out",
     tmp_path / "ev"], capsys)  # fmt: skip
  assert code == 0
  assert "warning: query label 'Z' is not enrolled" in err


def test_exit_code_of_a_real_process(files, tmp_path):
  d, _, _ = files
  r = subprocess.run(
    [sys.executable, os.path.join(ROOT, "run.py"), "score", "--gen",
     str(d / "gen.npz"), "--reference", str(tmp_path / "none.npz"),
     "--out", str(tmp_path / "o")],
    capture_output=True, text=True, timeout=120, cwd=tmp_path,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )  # fmt: skip
  assert r.returncode == 2, r.stderr
  assert "Traceback" not in r.stderr
  assert r.stderr.strip().splitlines()[-1].startswith("error: reference")


# ------------------------------------------------------------------- fuzz
def _fuzz_cases(data, rng, n=20):
  for _ in range(n):
    yield data[: int(rng.integers(0, len(data)))]
  for _ in range(n):
    b = bytearray(data)
    b[int(rng.integers(0, len(b)))] ^= int(rng.integers(1, 256))
    yield bytes(b)


def test_fuzz_reference_library_embeddings(files, tmp_path):
  import jax  # pylint: disable=g-import-not-at-top

  d, arrays, ref_path = files
  rng = np.random.default_rng(11)
  ref = cli.load_reference(ref_path)
  want = jax.tree_util.tree_leaves(ref.fitted)
  lib = FingerprintLibrary(reference={"hash": "h"})
  lib.add("A", [0.5, float("nan")])
  lib.add("B", [-1.25, 3.0])
  lib_path = tmp_path / "lib.json"
  lib.save(lib_path)
  checks = [
    (ref_path, "r.npz"),
    (d / "gen.npz", "e.npz"),
    (lib_path, "l.json"),
  ]
  outcomes = {"error": 0, "same": 0}
  for src, name in checks:
    for i, data in enumerate(_fuzz_cases(open(src, "rb").read(), rng)):
      p = tmp_path / f"{i}-{name}"
      p.write_bytes(data)
      try:
        if name == "r.npz":
          got = cli.load_reference(p)
          leaves = jax.tree_util.tree_leaves(got.fitted)
          assert got.config == ref.config and got.meta == ref.meta
          for a, b in zip(leaves, want, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        elif name == "e.npz":
          got = cli.load_embeddings(p, what="gen")
          np.testing.assert_array_equal(got, arrays["gen"])
        else:
          got = cli._library(str(p), None)  # pylint: disable=protected-access
          assert got.to_dict() == lib.to_dict()
        outcomes["same"] += 1
      except cli.UserError as e:
        assert str(p) in str(e) and "\n" not in str(e).strip()
        outcomes["error"] += 1
  assert outcomes["error"] > 40


def test_run_py_flag_choices_match_the_library():
  from ctjax.fingerprint import rules  # pylint: disable=g-import-not-at-top
  from ctjax.stats import neighbors  # pylint: disable=g-import-not-at-top

  assert run.METRICS == tuple(neighbors.METRICS)
  assert run.SIMILARITIES == tuple(rules.SIMILARITIES)
  assert run.AGGREGATES == tuple(rules.AGGREGATES)
  assert run.RULES == tuple(rules.RULES)
