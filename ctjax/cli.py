"""The work behind run.py's commands, as plain functions (testable in-process).

Every command takes keyword arguments that map one to one onto run.py's
flags, writes its files into an output folder, and returns a small dict of
what it computed. Bad input raises `UserError` (a ValueError) with one line
that names the path or setting; run.py prints it and exits with code 2.
"""

import os

import numpy as np

from ctjax import report
from ctjax.reference import CTReference


class UserError(ValueError):
  """Bad input named in one line (a missing path, a mismatched reference)."""


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
      return encoder_training.default_encoder(name)
    return encoder_training.random_encoder(name, int(seed or 0))
  if not os.path.exists(spec) and os.sep in spec:
    raise UserError(f"encoder not found: {spec}")
  return models.from_pretrained(spec)


def is_embedding_file(path) -> bool:
  """True for an .npz holding an 'embeddings' array ``[L, N, D]``."""
  path = os.fspath(path)
  if not (path.endswith(".npz") and os.path.isfile(path)):
    return False
  with np.load(path) as z:
    return "embeddings" in z.files


def load_embeddings(
  path, encoder=None, *, pool="cls", batch_size=64, cache_dir=None, what="input"
):
  """``[L, N, D]`` float32 embeddings of a path.

  Args:
    path: an .npz with an 'embeddings' array (used as is), or images: a
      folder, an .npy/.npz image array (embedded with ``encoder``).
    encoder: needed for images.
    what: the flag name, for messages.
  """
  if path is None:
    raise UserError(f"--{what} is required")
  path = os.fspath(path)
  if not os.path.exists(path):
    raise UserError(f"--{what}: no such file or folder: {path}")
  if is_embedding_file(path):
    with np.load(path) as z:
      emb = np.asarray(z["embeddings"], np.float32)
    if emb.ndim != 3:
      raise UserError(
        f"--{what}: {path}: 'embeddings' must be [layers, N, D],"
        f" got shape {emb.shape}"
      )
    return emb
  if encoder is None:
    raise UserError(f"--{what}: {path} holds images; pass --encoder")
  from ctjax.embedding import embed  # pylint: disable=g-import-not-at-top

  emb = embed(
    encoder, path, pool=pool, batch_size=batch_size, cache_dir=cache_dir
  )
  if emb.shape[1] == 0:
    raise UserError(f"--{what}: {path} holds no images")
  return emb


def load_images(path):
  """uint8 images ``[N, H, W(, C)]`` of a path (for galleries), or None."""
  from ctjax import embedding, preprocess  # pylint: disable=g-import-not-at-top

  if path is None or is_embedding_file(path):
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
  return dict(
    encoder=encoder.identity if encoder is not None else None,
    encoder_spec=encoder_spec,
    pool=pool,
  )


def check_reference_meta(ref: CTReference, meta: dict, path):
  mine = ref.meta
  for key in ("encoder", "pool"):
    if meta.get(key) and mine.get(key) and meta[key] != mine[key]:
      raise UserError(
        f"reference {path} was fitted with {key}={mine[key]!r},"
        f" not {meta[key]!r}; refit it or pass the matching "
        f"--encoder/--pool"
      )


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
):
  """Loads ``path`` if it exists (checking its meta), else fits and saves."""
  if path and os.path.exists(path):
    ref = CTReference.load(path)
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
  )
  ref = CTReference.fit(
    train,
    test,
    n_components=n_components,
    n_cells=n_cells,
    metric=metric,
    seed=seed,
    meta=meta,
  )
  if path:
    ref.save(path)
  return ref, True


# ------------------------------------------------------------------- score
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
  metric="cosine",
  n_components=None,
  n_cells=10,
  tau=None,
  seed=0,
  cache_dir=None,
  gallery_layer=None,
  gallery_size=16,
  band=report.DEFAULT_BAND,
  echo=print,
):
  """C_T of a generated set on every layer, with files in ``out``.

  Writes ct_curve.json, ct_curve.csv, ct_curve.png, reference.npz (unless
  ``reference`` names another path), copy_gallery.png and copy_gallery.csv.
  """
  enc = load_encoder(encoder) if encoder else None
  meta = reference_meta(encoder, enc, pool)
  ref_path = reference or os.path.join(out, "reference.npz")
  need_fit = not os.path.exists(ref_path)
  tr = (
    load_embeddings(
      train,
      enc,
      pool=pool,
      batch_size=batch_size,
      cache_dir=cache_dir,
      what="train",
    )
    if need_fit
    else None
  )
  te = (
    load_embeddings(
      test,
      enc,
      pool=pool,
      batch_size=batch_size,
      cache_dir=cache_dir,
      what="test",
    )
    if need_fit
    else None
  )
  ge = load_embeddings(
    gen, enc, pool=pool, batch_size=batch_size, cache_dir=cache_dir, what="gen"
  )
  ref, fitted = fit_or_load_reference(
    ref_path,
    tr,
    te,
    meta=meta,
    n_components=n_components,
    n_cells=n_cells,
    metric=metric,
    seed=seed,
    train_path=train,
    test_path=test,
  )
  if ge.shape[0] != ref.n_layers or ge.shape[2] != ref.dim:
    raise UserError(
      f"--gen embeddings {ge.shape} do not match the reference "
      f"({ref.n_layers} layers, D={ref.dim}): "
      f"mismatched reference {ref_path}"
    )
  res = ref.score(ge, tau=tau, return_neighbors=True)
  names = ref.layer_names
  rows = [
    (
      names[l],
      res.ct[l],
      int(res.included[l].sum()),
      report.verdict(res.ct[l], band),
    )
    for l in range(ref.n_layers)
  ]
  headers = ["layer", "C_T", "cells used", "verdict"]
  echo(report.format_table(rows, headers))
  os.makedirs(out, exist_ok=True)
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
    n_gen=int(ge.shape[1]),
    reference=ref.identity(),
    reference_path=os.fspath(ref_path),
    reference_fitted_now=fitted,
  )
  report.write_json(summary, os.path.join(out, "ct_curve.json"))
  report.plot_curves(
    {os.path.basename(os.fspath(gen)) or "gen": res.ct},
    os.path.join(out, "ct_curve.png"),
    layers=np.arange(ref.n_layers),
    band=band,
    title="C_T per layer (negative: copying)",
  )
  finite = np.where(np.isfinite(res.ct), res.ct, np.inf)
  layer = (
    int(np.argmin(finite)) if gallery_layer is None else int(gallery_layer)
  )
  if not 0 <= layer < ref.n_layers:
    raise UserError(f"--gallery_layer {layer} is outside 0..{ref.n_layers - 1}")
  nb = res.neighbors
  test_cells = np.asarray(ref.fitted.test.cells[layer])
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
    os.path.join(out, "copy_gallery.csv"),
  )
  gen_imgs = load_images(gen)
  train_imgs = load_images(train) if train is not None else None
  if gen_imgs is not None and train_imgs is not None:
    report.image_gallery(
      [
        (gen_imgs[g], train_imgs[t], f"#{g}->{t} r={r:.2f}")
        for g, t, _, r in g_rows
      ],
      os.path.join(out, "copy_gallery.png"),
    )
  echo(
    f"wrote {out}/ (ct_curve.json/.csv/.png, copy_gallery.csv"
    f"{'/.png' if gen_imgs is not None and train_imgs is not None else ''}"
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

  if path and os.path.exists(path):
    lib = FingerprintLibrary.load(path)
    lib.check_reference(reference)
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
  ref = CTReference.load(path)
  check_reference_meta(ref, meta, path)
  return ref


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
  cache_dir=None,
  echo=print,
):
  """Adds the batch curves of a generator's samples to a library file.

  ``similarity`` and ``aggregate`` set the rule of a new library file (see
  `ctjax.fingerprint.rules`).
  """
  if not label:
    raise UserError("--label is required")
  enc = load_encoder(encoder) if encoder else None
  ref = _reference(reference, reference_meta(encoder, enc, pool))
  lib = _library(
    library, ref, similarity=similarity, aggregate=aggregate, create=True
  )
  emb = load_embeddings(
    gen,
    enc,
    pool=pool,
    batch_size=embed_batch_size,
    cache_dir=cache_dir,
    what="gen",
  )
  curves = lib.add_batches(label, emb, ref, batch_size=batch_size)
  lib.save(library)
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
  cache_dir=None,
  echo=print,
):
  """Labels each batch of a query set and votes over the batches."""
  enc = load_encoder(encoder) if encoder else None
  ref = _reference(reference, reference_meta(encoder, enc, pool))
  lib = _library(library, ref)
  emb = load_embeddings(
    gen,
    enc,
    pool=pool,
    batch_size=embed_batch_size,
    cache_dir=cache_dir,
    what="gen",
  )
  from ctjax.fingerprint import batch_curves  # pylint: disable=g-import-not-at-top

  curves = batch_curves(emb, ref, batch_size=batch_size)
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
  enc = load_encoder(encoder) if encoder else None
  ref = _reference(reference, reference_meta(encoder, enc, pool))
  lib = _library(library, ref)
  pairs = []
  for q in queries:
    label, sep, path = q.partition("=")
    if not sep or not label or not path:
      raise UserError(f"--query {q!r}: expected LABEL=PATH")
    emb = load_embeddings(
      path,
      enc,
      pool=pool,
      batch_size=embed_batch_size,
      cache_dir=cache_dir,
      what="query",
    )
    pairs += [(label, c) for c in fp.batch_curves(emb, ref, batch_size)]
  ev = fp.evaluate(lib, pairs)
  os.makedirs(out, exist_ok=True)
  report.write_json(ev.to_dict(), os.path.join(out, "evaluation.json"))
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
