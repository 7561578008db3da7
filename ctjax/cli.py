"""The work behind run.py's commands, as plain functions (testable in-process).

Every command takes keyword arguments that map one to one onto run.py's
flags, writes its files into an output folder, and returns a small dict of
what it computed. Bad input raises `UserError` (a ValueError) with one line
that names the path or setting; run.py prints it and exits with code 2.
"""

import hashlib
import os
import sys
import zipfile

import numpy as np

from ctjax import embedding_files
from ctjax import environment
from ctjax import report
from ctjax import storage
from ctjax.reference import CTReference
from ctjax.stats import bootstrap as bootstrap_lib


class UserError(ValueError):
  """Bad input named in one line (a missing path, a mismatched reference)."""


# Bootstrap replicates of `score` unless told otherwise: resampling the
# generated points costs well under one warm score at B = 1000
# (benchmarks/bench_bootstrap.py), and 1000 replicates put about 25 in each
# tail of a 95% interval, so its ends move little from seed to seed.
DEFAULT_BOOTSTRAP = 1000


# What reading a damaged or foreign file raises (NumPy, zipfile, JSON).
LOAD_ERRORS = (
  OSError,
  ValueError,
  EOFError,
  KeyError,
  TypeError,
  zipfile.BadZipFile,
)


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


# ------------------------------------------------------------------- flags
def check_positive_int(value, flag: str, minimum: int = 1):
  """``value`` as an int >= ``minimum``, or UserError naming ``--flag``."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise UserError(f"--{flag} must be an integer, got {value!r}")
  if value < minimum:
    raise UserError(f"--{flag} must be >= {minimum}, got {value}")
  return int(value)


def check_tau_flag(tau):
  """``tau`` in [0, 1) (or None), or UserError naming --tau."""
  if tau is None:
    return None
  try:
    tau = float(tau)
  except (TypeError, ValueError):
    raise UserError(f"--tau must be a number, got {tau!r}") from None
  if not (np.isfinite(tau) and 0.0 <= tau < 1.0):
    raise UserError(f"--tau must be in [0, 1), got {tau}")
  return tau


def check_out_folder(out, flag: str = "out"):
  """Creates the output folder now, so a bad --out fails before any work."""
  out = os.fspath(out)
  if os.path.exists(out) and not os.path.isdir(out):
    raise UserError(f"--{flag} {out} is a file, not a folder")
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    raise UserError(
      f"--{flag} {out}: cannot create the folder ({e.strerror or e})"
    ) from None
  return out


# ------------------------------------------------------------------ inputs
def load_encoder(spec: str):
  """An encoder from a spec.

  ``PATH`` (a Hugging Face folder or cached repo id), ``default:DATASET`` (the
  shipped encoder trained on DATASET) or ``random:DATASET[:SEED]`` (the same
  architecture, untrained: the control).
  """
  from ctjax import models  # pylint: disable=g-import-not-at-top

  if spec.startswith(("default:", "random:")):
    from ctjax.audit import encoder_training  # pylint: disable=g-import-not-at-top

    kind, _, rest = spec.partition(":")
    name, _, seed = rest.partition(":")
    if kind == "default":
      if seed:
        raise UserError(f"--encoder {spec!r}: default:DATASET takes no seed")
      return encoder_training.default_encoder(name)
    try:
      seed = int(seed or 0)
    except ValueError:
      raise UserError(
        f"--encoder {spec!r}: the seed {seed!r} is not an integer "
        "(random:DATASET[:SEED])"
      ) from None
    return encoder_training.random_encoder(name, seed)
  if not os.path.exists(spec) and os.sep in spec:
    raise UserError(f"encoder not found: {spec}")
  return models.from_pretrained(spec)


def is_embedding_file(path, what: str = "input") -> bool:
  """True for an .npz of embeddings: an 'embeddings' array ``[L, N, D]``, or
  per-layer arrays 'embeddings_00', 'embeddings_01', ... ``[N, D_l]``
  (`ctjax.embedding_files`).

  Raises:
    UserError: the .npz cannot be read (truncated, damaged, not a zip file).
  """
  path = os.fspath(path)
  if not (path.endswith(".npz") and os.path.isfile(path)):
    return False
  try:
    with np.load(path, allow_pickle=False) as z:
      return embedding_files.is_embedding_archive(z.files)
  except LOAD_ERRORS as e:
    raise UserError(
      f"--{what}: cannot read {path} ({type(e).__name__}: {_first_line(e)})"
    ) from None


def load_embeddings(
  path, encoder=None, *, pool="cls", batch_size=64, cache_dir=None, what="input"
):
  """``[L, N, D]`` float32 embeddings of a path, or a list of L ``[N, D_l]``.

  Args:
    path: an .npz of embeddings (used as is; either layout of
      `ctjax.embedding_files`, a list for the per-layer one, carrying its
      ``layer_names``), or images: a folder, an .npy/.npz image array
      (embedded with ``encoder``).
    encoder: needed for images.
    what: the flag name, for messages.
  """
  if path is None:
    raise UserError(f"--{what} is required")
  path = os.fspath(path)
  if not os.path.exists(path):
    raise UserError(f"--{what}: no such file or folder: {path}")
  if is_embedding_file(path, what):
    try:
      return embedding_files.load(path)
    except (ValueError, TypeError) as e:
      raise UserError(f"--{what}: {_first_line(e)}") from None
  if encoder is None:
    raise UserError(f"--{what}: {path} holds images; pass --encoder")
  from ctjax.embedding import embed  # pylint: disable=g-import-not-at-top

  try:
    emb = embed(
      encoder, path, pool=pool, batch_size=batch_size, cache_dir=cache_dir
    )
  except ValueError as e:
    raise UserError(f"--{what}: {_first_line(e)}") from None
  # A list of [N, D_l] arrays when the encoder's layers differ in width.
  if (len(emb[0]) if isinstance(emb, list) else emb.shape[1]) == 0:
    raise UserError(f"--{what}: {path} holds no images")
  return emb


def load_images(path):
  """uint8 images ``[N, H, W(, C)]`` of a path (for galleries), or None."""
  from ctjax import embedding, preprocess  # pylint: disable=g-import-not-at-top

  if path is None or is_embedding_file(path):
    return None
  if not os.path.exists(path):
    return None
  # The size only matters for a folder of mixed image sizes.
  cfg = preprocess.PreprocessConfig(image_size=64)
  src = embedding.as_source(os.fspath(path), cfg)
  images, _ = src.load(0, len(src))
  images = np.asarray(images)
  if images.dtype != np.uint8:
    images = np.clip(np.round(images * 255), 0, 255).astype(np.uint8)
  return images


# --------------------------------------------------------------- reference
def reference_meta(encoder_spec, encoder, pool):
  meta = dict(
    encoder=encoder.identity if encoder is not None else None,
    encoder_spec=encoder_spec,
    pool=pool,
  )
  if encoder is not None:  # the recipe the images were preprocessed with
    from ctjax.preprocess import PreprocessConfig  # pylint: disable=g-import-not-at-top

    meta["preprocess"] = PreprocessConfig.from_encoder(encoder).identity()
  return meta


def check_reference_meta(ref: CTReference, meta: dict, path):
  mine = ref.meta
  for key in ("encoder", "pool", "preprocess"):
    if meta.get(key) and mine.get(key) and meta[key] != mine[key]:
      raise UserError(
        f"reference {path} was fitted with {key}={mine[key]!r},"
        f" not {meta[key]!r}; refit it or pass the matching "
        f"--encoder/--pool"
      )


def load_reference(path, what: str = "reference") -> CTReference:
  """`CTReference.load`, with a damaged or foreign file named in one line."""
  path = os.fspath(path)
  if os.path.isdir(path):
    raise UserError(f"--{what} {path} is a folder, not a reference .npz")
  try:
    return CTReference.load(path)
  except LOAD_ERRORS as e:
    raise UserError(
      f"--{what} {path}: not a readable ctjax reference "
      f"({type(e).__name__}: {_first_line(e)})"
    ) from None


def input_identity(path) -> str | None:
  """A hash of an input: a file's bytes, or a folder's names/sizes/mtimes."""
  if path is None:
    return None
  path = os.fspath(path)
  h = hashlib.blake2b(digest_size=12)
  if os.path.isdir(path):
    for root, dirs, files in os.walk(path):
      dirs.sort()
      for name in sorted(files):
        p = os.path.join(root, name)
        st = os.stat(p)
        rel = os.path.relpath(p, path).replace(os.sep, "/")
        h.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return "folder:" + h.hexdigest()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return "file:" + h.hexdigest()


def fit_request(metric, n_cells, n_components, seed, *, defaults: bool):
  """The fit settings asked for; with ``defaults``, unset ones take theirs.

  Without ``defaults`` (an explicit --reference) only the settings given
  (not None) are requested. ``n_components=None`` with defaults means "auto".
  """
  given = dict(metric=metric, n_cells=n_cells, seed=seed)
  if defaults:
    base = dict(metric="cosine", n_cells=10, seed=0)
    req = {k: base[k] if v is None else v for k, v in given.items()}
    req["n_components"] = n_components
    return req
  req = {k: v for k, v in given.items() if v is not None}
  if n_components is not None:
    req["n_components"] = n_components
  return req


def reference_differences(ref, request, inputs, meta, *, strict) -> list[str]:
  """What a stored reference differs in from the requested fit, one per item.

  Args:
    ref: the stored CTReference.
    request: `fit_request`'s dict.
    inputs: {"train": identity or None, "test": ...} of the given inputs.
    meta: `reference_meta` of this run (encoder, pool).
    strict: count inputs the reference has no record of as different (an
      implicit reference in --out may be refitted; an explicit one is not).
  """
  fit = ref.meta.get("fit") or {}
  diffs = []
  actual = dict(metric=ref.metric, n_cells=ref.n_cells, seed=ref.config.seed)
  for k in ("metric", "n_cells", "seed"):
    if k in request and request[k] != actual[k]:
      diffs.append(f"--{k} {request[k]} (reference: {actual[k]})")
  if "n_components" in request:
    want = request["n_components"]
    have = fit.get("n_components", ref.n_components if want else None)
    if "n_components" in fit or want is not None:
      if want != have:
        diffs.append(
          f"--n_components {want or 'auto'} (reference: {have or 'auto'})"
        )
  for k in ("encoder", "pool"):
    mine = ref.meta.get(k)
    if meta.get(k) and mine and meta[k] != mine:
      diffs.append(f"--{k} {meta[k]!r} (reference: {mine!r})")
  for k, ident in inputs.items():
    if ident is None:
      continue
    stored = fit.get(k)
    if stored is None and not strict:
      continue
    if stored != ident:
      was = ref.meta.get(k)
      diffs.append(
        f"--{k} (the reference was fitted on "
        f"{'other data' if not was else 'other data at ' + str(was)})"
      )
  return diffs


def fit_or_load_reference(
  path,
  train,
  test,
  *,
  meta,
  n_components,
  n_cells,
  metric,
  seed,
  train_path=None,
  test_path=None,
  layer_names=None,
):
  """Loads ``path`` if it exists (checking its meta), else fits and saves."""
  if path and os.path.exists(path):
    ref = load_reference(path)
    check_reference_meta(ref, meta, path)
    return ref, False
  if train is None or test is None:
    raise UserError(
      f"reference {path} does not exist; pass --train and --test to fit it"
    )
  meta = dict(
    meta,
    train=train_path and os.fspath(train_path),
    test=test_path and os.fspath(test_path),
    fit=dict(
      n_components=n_components,
      train=input_identity(train_path),
      test=input_identity(test_path),
    ),
  )
  if n_cells is not None:
    check_positive_int(n_cells, "n_cells")
  if n_components is not None:
    check_positive_int(n_components, "n_components")
  ref = CTReference.fit(
    train,
    test,
    n_components=n_components,
    n_cells=n_cells,
    metric=metric,
    seed=seed,
    meta=meta,
    layer_names=layer_names,
  )
  if path:
    ref.save(path)
  return ref, True


# ------------------------------------------------------------------- score
def _stage_names(encoder, emb):
  """The encoder's layer names (embeddings/blockN, stem/stageN) when
  ``emb`` has one layer per hidden state; else None (numbered layers)."""
  names = getattr(encoder, "layer_names", None) or getattr(
    emb, "layer_names", None
  )  # an embeddings file's own names (`embedding_files.LayerList`)
  return list(names) if names and len(names) == len(emb) else None


def _ranking(gen_dist, gen_cells, test_cells, test_dist, k):
  """Generated points from most to least copy-like.

  A point's score is L(q) divided by the median L(p) of the test points in
  its cell: 0 for an exact copy, about 1 for a typical fresh sample.

  Returns:
    ``(order [m], ratio [m])``.
  """
  med = np.array(
    [
      np.median(test_dist[test_cells == c])
      if np.any(test_cells == c)
      else np.nan
      for c in range(k)
    ]
  )
  scale = med[np.clip(gen_cells, 0, k - 1)]
  ratio = gen_dist / np.where(scale > 0, scale, np.inf)
  return np.argsort(ratio, kind="stable"), ratio


def score(
  *,
  train=None,
  test=None,
  gen,
  encoder=None,
  reference=None,
  out="ctjax_out/score",
  pool="cls",
  batch_size=64,
  metric=None,
  n_components=None,
  n_cells=None,
  tau=None,
  seed=None,
  cache_dir=None,
  gallery_layer=None,
  gallery_size=16,
  band=report.DEFAULT_BAND,
  bootstrap=DEFAULT_BOOTSTRAP,
  confidence=bootstrap_lib.DEFAULT_CONFIDENCE,
  bootstrap_mode="gen",
  echo=print,
):
  """C_T of a generated set on every layer, with files in ``out``.

  Writes ct_curve.json, ct_curve.csv, ct_curve.png, reference.npz (unless
  ``reference`` names another path), copy_gallery.png and copy_gallery.csv
  (no gallery when the chosen layer's C_T is not finite).

  With ``bootstrap`` = B > 0 replicates (default `DEFAULT_BOOTSTRAP`), every
  layer's C_T gets a ``confidence`` percentile interval resampling
  ``bootstrap_mode`` ("gen", "test" or "gen+test"; `CTReference.score`):
  columns ct_low/ct_high in the CSV, the bounds in the JSON, a band in the
  plot. The resampling seed is ``seed`` (0 when not given).

  The fit settings ``metric``, ``n_cells``, ``n_components`` and ``seed``
  default (None) to cosine, 10, auto and 0. A reference already in ``out``
  is reused only if it was fitted with the requested settings on the same
  --train/--test (and encoder, pool); otherwise it is refitted there. An
  explicit ``reference`` that differs in a requested setting or input is
  refused, naming what differs.
  """
  # Every flag is checked before any work.
  batch_size = check_positive_int(batch_size, "embed_batch_size")
  gallery_size = check_positive_int(gallery_size, "gallery_size", 0)
  if gallery_layer is not None:
    gallery_layer = check_positive_int(gallery_layer, "gallery_layer", 0)
  if n_cells is not None:
    check_positive_int(n_cells, "n_cells")
  if n_components is not None:
    check_positive_int(n_components, "n_components")
  if seed is not None:
    check_positive_int(seed, "seed", -(2**63))
  tau = check_tau_flag(tau)
  bootstrap = check_positive_int(bootstrap, "bootstrap", 0)
  try:
    _, confidence, bootstrap_mode = bootstrap_lib.check_args(
      bootstrap, confidence, bootstrap_mode
    )
  except ValueError as e:
    raise UserError(f"--confidence/--bootstrap_mode: {e}") from None
  for flag, path in (("train", train), ("test", test), ("gen", gen)):
    if path is not None and not os.path.exists(path):
      raise UserError(f"--{flag}: no such file or folder: {path}")
  if gen is None:
    raise UserError("--gen is required")
  explicit = reference is not None
  ref_path = (
    os.fspath(reference) if explicit else os.path.join(out, "reference.npz")
  )
  check_out_folder(out)

  enc = load_encoder(encoder) if encoder else None
  meta = reference_meta(encoder, enc, pool)
  request = fit_request(
    metric, n_cells, n_components, seed, defaults=not explicit
  )
  ref = None
  if os.path.exists(ref_path):
    ref = load_reference(ref_path)
    if explicit:
      check_reference_meta(ref, meta, ref_path)
    inputs = dict(train=input_identity(train), test=input_identity(test))
    diffs = reference_differences(
      ref, request, inputs, meta, strict=not explicit
    )
    if diffs:
      what = "; ".join(diffs)
      if explicit:
        raise UserError(
          f"--reference {ref_path} does not match the requested fit: {what};"
          " pass the matching flags, or drop --reference to fit a new one"
        )
      if train is None or test is None:
        raise UserError(
          f"{ref_path} was fitted differently ({what}); pass --train and "
          "--test to refit it"
        )
      echo(f"refitting {ref_path}: {what}")
      ref = None
  elif train is None or test is None:
    raise UserError(
      f"reference {ref_path} does not exist; pass --train and --test to fit it"
    )
  ge = load_embeddings(
    gen, enc, pool=pool, batch_size=batch_size, cache_dir=cache_dir, what="gen"
  )
  if gallery_layer is not None and gallery_layer >= len(ge):
    raise UserError(
      f"--gallery_layer {gallery_layer} is outside 0..{len(ge) - 1}"
    )
  fitted = ref is None
  if fitted:
    tr, te = (
      load_embeddings(
        path,
        enc,
        pool=pool,
        batch_size=batch_size,
        cache_dir=cache_dir,
        what=what,
      )
      for path, what in ((train, "train"), (test, "test"))
    )
    fit_args = fit_request(metric, n_cells, n_components, seed, defaults=True)
    ref, _ = fit_or_load_reference(
      None,
      tr,
      te,
      meta=meta,
      n_components=n_components,
      n_cells=fit_args["n_cells"],
      metric=fit_args["metric"],
      seed=fit_args["seed"],
      train_path=train,
      test_path=test,
      layer_names=_stage_names(enc, tr),
    )
  ge_widths = (
    tuple(x.shape[1] for x in ge)
    if isinstance(ge, list)
    else (ge.shape[2],) * ge.shape[0]
  )
  if ge_widths != tuple(ref.widths):
    shape = [x.shape for x in ge] if isinstance(ge, list) else ge.shape
    raise UserError(
      f"--gen embeddings {shape} do not match the reference "
      f"({ref.n_layers} layers, D={ref.dim}): "
      f"mismatched reference {ref_path}"
    )
  res = ref.score(
    ge,
    tau=tau,
    return_neighbors=True,
    n_bootstrap=bootstrap,
    bootstrap=bootstrap_mode,
    confidence=confidence,
    seed=0 if seed is None else seed,
  )
  if fitted:
    ref.save(ref_path)
  names = ref.layer_names
  bounds = (
    [(res.ct_low[l], res.ct_high[l]) for l in range(ref.n_layers)]
    if bootstrap
    else [()] * ref.n_layers
  )
  rows = [
    (
      names[l],
      res.ct[l],
      *bounds[l],
      int(res.included[l].sum()),
      report.verdict(res.ct[l], band),
    )
    for l in range(ref.n_layers)
  ]
  headers = ["layer", "C_T"]
  headers += ["ct_low", "ct_high"] if bootstrap else []
  headers += ["cells used", "verdict"]
  echo(report.format_table(rows, headers))
  if bootstrap:
    echo(
      f"ct_low/ct_high: {confidence:.0%} bootstrap intervals ({bootstrap} "
      f"replicates resampling {bootstrap_mode}; cells and distances fixed)"
    )
  report.write_table_csv(rows, headers, os.path.join(out, "ct_curve.csv"))
  summary = dict(
    layers=names,
    ct=res.ct,
    verdict=[r[3] for r in rows],
    cells_used=[r[2] for r in rows],
    z=res.z,
    included=res.included,
    test_frac=res.test_frac,
    gen_frac=res.gen_frac,
    tau=res.tau,
    n_gen=int(len(ge[0]) if isinstance(ge, list) else ge.shape[1]),
    reference=ref.identity(),
    reference_path=os.fspath(ref_path),
    reference_fitted_now=fitted,
    environment=environment.describe(),
  )
  if bootstrap:
    summary.update(
      ct_low=res.ct_low,
      ct_high=res.ct_high,
      confidence=confidence,
      n_bootstrap=bootstrap,
      bootstrap=bootstrap_mode,
      bootstrap_seed=0 if seed is None else seed,
    )
  report.write_json(summary, os.path.join(out, "ct_curve.json"))
  label = os.path.basename(os.fspath(gen)) or "gen"
  report.plot_curves(
    {label: res.ct},
    os.path.join(out, "ct_curve.png"),
    layers=np.arange(ref.n_layers),
    band=band,
    title="C_T per layer (negative: copying)"
    + (f"; {confidence:.0%} bootstrap band" if bootstrap else ""),
    intervals={label: (res.ct_low, res.ct_high)} if bootstrap else None,
  )
  gallery_files = [
    os.path.join(out, n) for n in ("copy_gallery.csv", "copy_gallery.png")
  ]
  finite = np.where(np.isfinite(res.ct), res.ct, np.inf)
  layer = (
    int(np.argmin(finite)) if gallery_layer is None else int(gallery_layer)
  )
  nb = res.neighbors
  test_cells = ref.test_cells[layer]
  why_not = None
  if not np.isfinite(res.ct[layer]):
    why_not = (
      f"C_T is not finite at layer {names[layer]}"
      + (" (nor at any layer)" if not np.isfinite(res.ct).any() else "")
      + "; a gallery there would show arbitrary pairs"
    )
  elif not np.any(np.asarray(nb.test_dist[layer]) > 0):
    why_not = f"layer {names[layer]} is degenerate (every distance is 0)"
  if why_not is not None:
    for path in gallery_files:
      if os.path.exists(path):
        os.remove(path)  # the gallery of an earlier run into this folder
    echo(f"no copy gallery: {why_not}")
    echo(f"wrote {out}/ (ct_curve.json/.csv/.png); reference: {ref_path}")
    return dict(result=res, reference=ref, gallery_layer=None, gallery=[])
  order, ratio = _ranking(
    nb.gen_dist[layer],
    nb.gen_cells[layer],
    test_cells,
    nb.test_dist[layer],
    ref.n_cells,
  )
  top = order[:gallery_size]
  g_rows = [
    (
      int(i),
      int(nb.gen_index[layer, i]),
      float(nb.gen_dist[layer, i]),
      float(ratio[i]),
    )
    for i in top
  ]
  report.write_table_csv(
    g_rows,
    [
      "gen_index",
      "nearest_train_index",
      "distance",
      "distance / cell median test",
    ],
    gallery_files[0],
  )
  gen_imgs = load_images(gen)
  train_imgs = load_images(train) if train is not None else None
  drawn = gen_imgs is not None and train_imgs is not None and g_rows
  if drawn:
    report.image_gallery(
      [
        (gen_imgs[g], train_imgs[t], f"#{g}->{t} r={r:.2f}")
        for g, t, _, r in g_rows
      ],
      gallery_files[1],
    )
  elif os.path.exists(gallery_files[1]):
    os.remove(gallery_files[1])  # the gallery of an earlier run
  echo(
    f"wrote {out}/ (ct_curve.json/.csv/.png, copy_gallery.csv"
    f"{'/.png' if drawn else ''}"
    f"; gallery at layer {names[layer]}); reference: {ref_path}"
  )
  return dict(result=res, reference=ref, gallery_layer=layer, gallery=g_rows)


# ------------------------------------------------------------ fingerprints
def _library(
  path, reference, similarity="paper", aggregate="nearest", create=False
):
  """The library file at ``path``, or a new one (with ``create``).

  An existing file keeps the rule it was created with.
  """
  from ctjax.fingerprint import FingerprintLibrary  # pylint: disable=g-import-not-at-top

  if not path:
    raise UserError("--library is required")
  if os.path.exists(path):
    try:
      lib = FingerprintLibrary.load(path)
    except (ValueError, OSError) as e:
      raise UserError(f"--library: {_first_line(e)}") from None
    try:
      lib.check_reference(reference)
    except ValueError as e:
      raise UserError(f"--library {path}: {_first_line(e)}") from None
    return lib
  if not create:
    raise UserError(f"library not found: {path}")
  return FingerprintLibrary(
    similarity=similarity, aggregate=aggregate, reference=reference
  )


def _reference(path, meta):
  if not path:
    raise UserError("--reference is required (fit one with `run.py score`)")
  if not os.path.exists(path):
    raise UserError(f"reference not found: {path}")
  ref = load_reference(path)
  check_reference_meta(ref, meta, path)
  return ref


def _curves(
  path, enc, ref, *, what, pool, embed_batch_size, cache_dir, batch_size, tau
):
  """Batch curves ``[n, L]`` of the embeddings of ``path`` (``--what``); a
  batch with no finite C_T is refused."""
  from ctjax.fingerprint import batch_curves  # pylint: disable=g-import-not-at-top

  emb = load_embeddings(
    path,
    enc,
    pool=pool,
    batch_size=embed_batch_size,
    cache_dir=cache_dir,
    what=what,
  )
  try:
    curves = batch_curves(emb, ref, batch_size=batch_size, tau=tau)
  except ValueError as e:
    raise UserError(f"--{what} {path}: {_first_line(e)}") from None
  empty = [i for i, c in enumerate(curves) if not np.isfinite(c).any()]
  if empty:
    shown = "default 20/batch_size" if tau is None else tau
    raise UserError(
      f"--{what} {path}: batch(es) {empty[:10]} give no finite C_T on any "
      f"layer (batch_size={batch_size}, tau={shown}); pass a larger "
      "--batch_size or a smaller --tau"
    )
  return curves


def _check_fp_flags(batch_size, embed_batch_size, tau):
  check_positive_int(batch_size, "batch_size")
  check_positive_int(embed_batch_size, "embed_batch_size")
  return check_tau_flag(tau)


def add_to_library(
  library,
  label,
  curves,
  reference,
  *,
  similarity="paper",
  aggregate="nearest",
  allow_duplicates=False,
  source=None,
):
  """Enrols ``curves`` ``[n, L]`` under ``label`` in the library file.

  The file is read, extended and atomically replaced while holding the
  advisory lock ``<library>.lock``, so concurrent processes lose nothing.

  Args:
    reference: the CTReference (or its identity dict) of the curves.
    allow_duplicates: enrol curves already enrolled under ``label`` again
      (refused otherwise: the same batch twice).
    source: the --gen path, for messages.

  Returns:
    The updated FingerprintLibrary.
  """
  try:
    with storage.file_lock(library):
      lib = _library(
        library,
        reference,
        similarity=similarity,
        aggregate=aggregate,
        create=True,
      )
      dup = lib.duplicates(label, curves)
      if dup and not allow_duplicates:
        raise UserError(
          f"--gen {source}: {len(dup)} of its {len(curves)} curve(s) are "
          f"already enrolled under {label!r} in {library} (the same batch "
          "twice?); pass --allow_duplicates to enrol them again"
        )
      for c in curves:
        lib.add(label, c)
      lib.save(library)
  except OSError as e:
    raise UserError(
      f"--library {library}: cannot lock or write it ({e.strerror or e})"
    ) from None
  return lib


def enroll(
  *,
  library,
  label,
  gen,
  reference,
  encoder=None,
  pool="cls",
  batch_size=500,
  embed_batch_size=64,
  similarity="paper",
  aggregate="nearest",
  tau=None,
  allow_duplicates=False,
  cache_dir=None,
  echo=print,
):
  """Adds the batch curves of a generator's samples to a library file.

  ``similarity`` and ``aggregate`` set the rule of a new library file (see
  `ctjax.fingerprint.rules`). The library is read, extended and replaced
  under an advisory lock (``<library>.lock``), so concurrent enrolments all
  land. A batch with no finite C_T is refused, and so is a curve already
  enrolled under the label (unless ``allow_duplicates``).
  """
  if not label:
    raise UserError("--label is required")
  if not library:
    raise UserError("--library is required")
  if os.path.isdir(library):
    raise UserError(f"--library {library} is a folder, not a file")
  tau = _check_fp_flags(batch_size, embed_batch_size, tau)
  enc = load_encoder(encoder) if encoder else None
  ref = _reference(reference, reference_meta(encoder, enc, pool))
  _library(
    library, ref, similarity=similarity, aggregate=aggregate, create=True
  )  # a bad library file is named before the embedding work
  curves = _curves(
    gen,
    enc,
    ref,
    what="gen",
    pool=pool,
    embed_batch_size=embed_batch_size,
    cache_dir=cache_dir,
    batch_size=batch_size,
    tau=tau,
  )
  lib = add_to_library(
    library,
    label,
    curves,
    ref,
    similarity=similarity,
    aggregate=aggregate,
    allow_duplicates=allow_duplicates,
    source=gen,
  )
  echo(
    f"enrolled {len(curves)} curve(s) of {label!r} into {library} "
    f"({len(lib)} curves, labels {lib.label_set})"
  )
  return dict(curves=curves, library=lib)


def identify(
  *,
  library,
  gen,
  reference,
  encoder=None,
  pool="cls",
  batch_size=500,
  embed_batch_size=64,
  top_k=3,
  tau=None,
  cache_dir=None,
  echo=print,
):
  """Labels each batch of a query set and votes over the batches."""
  top_k = check_positive_int(top_k, "top_k")
  tau = _check_fp_flags(batch_size, embed_batch_size, tau)
  enc = load_encoder(encoder) if encoder else None
  ref = _reference(reference, reference_meta(encoder, enc, pool))
  lib = _library(library, ref)
  if not len(lib):
    raise UserError(f"--library {library} holds no curves; enroll some first")
  curves = _curves(
    gen,
    enc,
    ref,
    what="gen",
    pool=pool,
    embed_batch_size=embed_batch_size,
    cache_dir=cache_dir,
    batch_size=batch_size,
    tau=tau,
  )
  rows = []
  for i, c in enumerate(curves):
    ranked = lib.identify(c, top_k=top_k)
    rows.append(
      (
        i,
        ranked[0][0],
        ranked[0][1],
        ", ".join(f"{l} {s:.3f}" for l, s in ranked[1:]),
      )
    )
  echo(report.format_table(rows, ["batch", "label", "score", "next"]))
  vote = lib.identify_set(curves)
  echo(
    f"vote over {len(curves)} batch(es): {vote[0][0]} "
    f"({vote[0][1]:.0%} of batches)"
  )
  return dict(curves=curves, per_batch=rows, vote=vote)


def evaluate(
  *,
  library,
  queries,
  reference,
  encoder=None,
  pool="cls",
  batch_size=500,
  embed_batch_size=64,
  out="ctjax_out/evaluate",
  tau=None,
  cache_dir=None,
  echo=print,
):
  """Accuracy of a library on labelled query sets; heat map and confusion PNGs.

  Args:
    queries: list of "LABEL=PATH" strings.
  """
  from ctjax import fingerprint as fp  # pylint: disable=g-import-not-at-top

  if not queries:
    raise UserError("--query LABEL=PATH is required (one or more)")
  tau = _check_fp_flags(batch_size, embed_batch_size, tau)
  parsed = []
  for q in queries:
    label, sep, path = q.partition("=")
    if not sep or not label or not path:
      raise UserError(f"--query {q!r}: expected LABEL=PATH")
    if not os.path.exists(path):
      raise UserError(f"--query {q!r}: no such file or folder: {path}")
    parsed.append((label, path))
  check_out_folder(out)
  enc = load_encoder(encoder) if encoder else None
  ref = _reference(reference, reference_meta(encoder, enc, pool))
  lib = _library(library, ref)
  if not len(lib):
    raise UserError(f"--library {library} holds no curves; enroll some first")
  for label in dict.fromkeys(l for l, _ in parsed):
    if label not in lib.label_set:
      print(
        f"warning: query label {label!r} is not enrolled in {library} "
        f"(labels {lib.label_set}); its batches can only count as wrong",
        file=sys.stderr,
      )
  pairs = []
  for label, path in parsed:
    curves = _curves(
      path,
      enc,
      ref,
      what="query",
      pool=pool,
      embed_batch_size=embed_batch_size,
      cache_dir=cache_dir,
      batch_size=batch_size,
      tau=tau,
    )
    pairs += [(label, c) for c in curves]
  ev = fp.evaluate(lib, pairs)
  report.write_json(
    dict(ev.to_dict(), environment=environment.describe()),
    os.path.join(out, "evaluation.json"),
  )
  report.plot_confusion(
    ev.confusion, ev.labels, os.path.join(out, "confusion.png")
  )
  all_curves = np.concatenate([lib.curves, np.stack([c for _, c in pairs])])
  names = [f"{l} (enrolled)" for l in lib.labels] + [
    f"{l} (query)" for l, _ in pairs
  ]
  sim = fp.similarity_matrix(
    all_curves, similarity=lib.similarity, alpha=lib.alpha
  )
  report.plot_similarity_heatmap(
    sim, names, os.path.join(out, "similarity.png")
  )
  echo(
    f"accuracy {ev.accuracy:.1%} ({ev.n_correct}/{ev.n_queries}); "
    f"wrote {out}/ (evaluation.json, confusion.png, similarity.png)"
  )
  return dict(evaluation=ev)


# ------------------------------------------------------------------ select
def _probe_embeddings(folder, enc, emb_kw):
  """Kind -> ``[L, M, D]`` for every entry of a probe folder: KIND.npz
  (embeddings or images), KIND.npy (images) or a KIND/ image folder."""
  if not os.path.isdir(folder):
    raise ValueError(f"--probes: no such folder: {folder}")
  kinds = {}
  for name in sorted(os.listdir(folder)):
    path = os.path.join(folder, name)
    kind, ext = os.path.splitext(name)
    if name.startswith(".") or not (
      os.path.isdir(path) or ext in (".npz", ".npy")
    ):
      continue
    kinds[kind if ext else name] = load_embeddings(
      path, enc, what="probes", **emb_kw
    )
  if not kinds:
    raise ValueError(
      f"--probes: {folder} holds no KIND.npz, KIND.npy or KIND/ entries"
    )
  return kinds


def select(
  *,
  train,
  test,
  encoder=None,
  probes=None,
  out="ctjax_out/select",
  pool="cls",
  embed_batch_size=64,
  batch_size=None,
  n_batches=20,
  n_probe=None,
  tau=None,
  metric="cosine",
  n_cells=10,
  n_components=None,
  seed=0,
  cache_dir=None,
  echo=print,
):
  """Which layer detects which kind of memorisation (`ctjax.select_layers`).

  --test is split at random in two halves: one fits the reference with
  --train, the other is the null (images the reference never saw). Probe
  kinds come from ``probes`` (a folder, see `_probe_embeddings`) or, when it
  is None, are built from the --train images as the audit builds them
  (every `ctjax.audit.probes.PROBES` kind but the null), ``n_probe`` images
  each (default: as many as the null half).

  Writes selection.json, selection.csv and selection.png (AUC heat map,
  kind x layer) into ``out``; prints the recommended layer per kind.
  """
  from ctjax import selection as selection_lib  # pylint: disable=g-import-not-at-top

  for flag, path in (("train", train), ("test", test)):
    if path is None:
      raise ValueError(f"--{flag} is required")
    if not os.path.exists(path):
      raise ValueError(f"--{flag}: no such file or folder: {path}")
  if int(n_batches) < 2:
    raise ValueError(f"--n_batches must be at least 2, got {n_batches}")
  enc = load_encoder(encoder) if encoder else None
  emb_kw = dict(pool=pool, batch_size=embed_batch_size, cache_dir=cache_dir)
  t_emb = load_embeddings(train, enc, what="train", **emb_kw)
  p_emb = load_embeddings(test, enc, what="test", **emb_kw)
  order = np.random.default_rng(seed).permutation(p_emb.shape[1])
  half = p_emb.shape[1] // 2
  if half < 2:
    raise ValueError(f"--test: {test} needs at least 4 points (got fewer)")
  fit_p, null = p_emb[:, order[:half]], p_emb[:, order[half:]]
  if probes is not None:
    kinds = _probe_embeddings(probes, enc, emb_kw)
  else:
    from ctjax.audit import probes as probes_lib  # pylint: disable=g-import-not-at-top
    from ctjax.embedding import embed  # pylint: disable=g-import-not-at-top

    t_img, p_img = load_images(train), load_images(test)
    if t_img is None or p_img is None or enc is None:
      raise ValueError(
        "select builds its probes from --train/--test images with --encoder;"
        " with embedding inputs pass --probes DIR"
      )
    n = int(n_probe or null.shape[1])
    kinds = {
      name: embed(
        enc,
        probes_lib.make_probe(name, t_img, p_img, n, seed),
        progress=False,
        **emb_kw,
      )
      for name in probes_lib.PROBES
      if name != "test"
    }
  names = getattr(enc, "layer_names", None)
  ref = CTReference.fit(
    t_emb,
    fit_p,
    n_components=n_components,
    n_cells=n_cells,
    metric=metric,
    seed=seed,
    meta=reference_meta(encoder, enc, pool),
    layer_names=list(names) if names and len(names) == len(t_emb) else None,
  )
  sel = selection_lib.select_layers(
    ref,
    kinds,
    null,
    n_batches=int(n_batches),
    batch_size=batch_size,
    tau=tau,
    seed=seed,
  )
  os.makedirs(out, exist_ok=True)
  report.write_json(
    dict(sel.to_dict(), environment=environment.describe()),
    os.path.join(out, "selection.json"),
  )
  report.write_bytes(sel.to_csv().encode(), os.path.join(out, "selection.csv"))
  report.plot_selection(sel, os.path.join(out, "selection.png"))
  for kind, layer in sel.recommended.items():
    k = sel.kinds.index(kind)
    l = sel.layer_names.index(layer)
    echo(
      f"{kind}: layer {layer} (AUC {sel.auc[k, l]:.2f} "
      f"[{sel.auc_low[k, l]:.2f}, {sel.auc_high[k, l]:.2f}], "
      f"d {sel.effect[k, l]:.2f})"
    )
  echo(f"wrote {out}/ (selection.json, selection.csv, selection.png)")
  return dict(selection=sel, reference=ref)
