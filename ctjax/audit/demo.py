"""The built-in default: an offline memorisation audit and fingerprinting
benchmark on real data and real generative models (``python run.py``).

Stages (each timed, each with a progress bar where it is slow):

  1. data      train split T; the test split is cut into the reference's
               test set P and a disjoint "fresh" pool for the null probe;
  2. encoders  the ViT shipped with ctjax, trained on this data set, and an
               untrained copy of it (the control);
  3. reference embeddings of T and P on every layer; one CTReference each;
  4. probes    rotated / noisy / downsampled / block-shuffled / segmented
               training images, exact copies, fresh test images: one
               C_T-layer curve each;
  5. selection `ctjax.select_layers` on the probes against the fresh images
               (the null), per encoder: which layer detects which kind;
  6. generators KDE, GMM, VAE, GAN and one DDPM network sampled as DDPM and as
               DDIM, three training runs (seeds) each, trained on T only
               (cached: a second run reuses them);
  7. post-processing  every sample JPEG-encoded (quality 75, 50), shrunk to
               half size and back, histogram-matched to T (`TRANSFORMS`);
  8. curves    each run's samples cut into batches; per batch a C_T-layer
               curve and the richer fingerprints of `ctjax.fingerprint.
               features` (clean samples on both encoders, post-processed ones
               on the trained encoder);
  9. fingerprints  enrol two runs per family, identify the held-out run's
               clean batches (every run held out in turn), for every rule;
 10. baselines and transforms  every method (C_T rules, richer fingerprints,
               pixel mean/std, Fréchet distance of final-layer embeddings, a
               CNN with a majority vote) enrolled on clean batches and queried
               with clean and post-processed ones; per-batch predictions kept;
 11. encoder families  the paper's Figure 3 in miniature (`depth`): the
               shipped ViT, ResNet and Swin, C_T of the probes and the
               generator samples against relative depth, with a verdict on
               "C_T rises with depth" per family;
 12. report    report.md, results.json and PNG plots in the output folder.
"""

import dataclasses
import os
import time
import warnings

import numpy as np

from ctjax import environment, fingerprint, report, selection
from ctjax import progress as progress_lib
from ctjax.audit import baselines, datasets, generators, probes
from ctjax.embedding import embed
from ctjax.reference import CTReference

# Columns of the transforms table: clean samples, then `probes.POSTPROCESS`.
TRANSFORMS = ("clean", *probes.POSTPROCESS)
# Probe kinds of the layer selection (the "test" probe is the null itself).
SELECT_KINDS = tuple(p for p in probes.PROBES if p != "test")
# The paper's split (PROTOCOL.md, finding 1): changes of pixels, texture and
# background are flagged early, changes of the picture's geometry deep.
LOW_LEVEL_KINDS = ("noise", "downsample", "shuffle", "segment")
SEMANTIC_KINDS = ("rotate",)
# How the report names each fingerprint feature kind.
FEATURE_NAMES = {
  "ct": "C_T curve",
  "z": "per-cell Z",
  "occupancy": "cell shares",
  "dist": "distance quantiles",
}


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  """Sizes of the demo for one data set.

  Attributes:
    n_fresh: test images held out of P for the null probe.
    probe_size: images per probe.
    batch: generated images per C_T curve.
    batches_per_run: curves per generator run.
    n_cells: k-means cells of the reference.
    classifier_steps: Adam steps of the classifier baseline.
    families: generator families (None: all of ``generators.FAMILIES``).
    transforms: columns of the transforms table (names of `TRANSFORMS`;
      "clean" first).
    features: fingerprint feature kinds (`fingerprint.FEATURES`, "ct" first).
    select_batches: probe and null batches per kind of the layer selection.
    select_bootstrap: bootstrap resamples of its intervals.
    compare_families: also run the paper's Figure 3 in miniature
      (`ctjax.audit.depth`): the shipped ViT, ResNet and Swin, C_T of the
      probes and generator samples against depth, side by side.
  """

  n_fresh: int
  probe_size: int
  batch: int
  batches_per_run: int
  n_cells: int = 10
  classifier_steps: int = 400
  families: tuple | None = None
  transforms: tuple = TRANSFORMS
  features: tuple = fingerprint.FEATURES
  select_batches: int = 20
  select_bootstrap: int = 1000
  compare_families: bool = True


PRESETS = {
  # τ = 20/m = 0.1 against an average cell share of 0.2 (the paper: 0.04
  # against 0.1 with m = 500 and 10 cells).
  "digits": DemoConfig(
    n_fresh=197,
    probe_size=197,
    batch=200,
    batches_per_run=5,
    n_cells=5,
    classifier_steps=300,
  ),
  "fashion_mnist": DemoConfig(
    n_fresh=2000,
    probe_size=1000,
    batch=500,
    batches_per_run=10,
    n_cells=10,
    classifier_steps=1500,
  ),
}


class _Stages:
  """Wall time of each stage, printed as it ends."""

  def __init__(self, echo):
    self.seconds = {}
    self.echo = echo
    self._t0 = time.perf_counter()

  def __call__(self, name):
    stages = self

    class _Stage:
      def __enter__(self):
        self.t = time.perf_counter()
        stages.echo(f"[{time.perf_counter() - stages._t0:6.1f}s] {name} ...")

      def __exit__(self, *exc):
        stages.seconds[name] = time.perf_counter() - self.t

    return _Stage()


def _embed(encoder, images, cache_dir, batch_size=256):
  return embed(
    encoder, images, batch_size=batch_size, cache_dir=cache_dir, progress=True
  )


def _fold_queries(curves, held_out):
  """Enrolled (label, curve) and query (label, curve) pairs for one fold."""
  enrolled, queries = [], []
  for label, runs in curves.items():
    for r, run in enumerate(runs):
      target = queries if r == held_out else enrolled
      target += [(label, c) for c in run]
  return enrolled, queries


def fingerprint_accuracy(curves, reference, rule):
  """Mean held-out accuracy over folds; curves[label][run] is ``[b, L]``.

  ``rule`` is a short rule name (one of `fingerprint.RULES`).
  """
  similarity, aggregate = fingerprint.parse_rule(rule)
  n_runs = len(next(iter(curves.values())))
  accs, confusion, labels = [], None, None
  for h in range(n_runs):
    enrolled, queries = _fold_queries(curves, h)
    lib = fingerprint.FingerprintLibrary(
      similarity=similarity, aggregate=aggregate, reference=reference
    )
    for label, c in enrolled:
      lib.add(label, c)
    ev = fingerprint.evaluate(lib, queries)
    accs.append(ev.accuracy)
    confusion = ev.confusion if confusion is None else confusion + ev.confusion
    labels = ev.labels
  return float(np.mean(accs)), accs, confusion, labels


def baseline_accuracy(make, data, n_runs):
  """Held-out accuracy of a baseline; data[label][run] is a list of batches."""
  truth, preds = held_out_predictions(
    lambda enrolled: make().fit(enrolled).predict, {"clean": data}, n_runs
  )
  return fold_accuracy(truth, preds["clean"])


# ------------------------------------------------- enrol clean, query all
def held_out_predictions(fit, data, n_runs):
  """Per-fold answers of a method enrolled on clean batches.

  Fold h enrols runs ``!= h`` of ``data["clean"]`` and identifies every
  batch of run h under every transform.

  Args:
    fit: ``fit(enrolled) -> predict``; ``enrolled`` maps a label to a list
      of clean items (curves, images or embeddings), ``predict(item)``
      returns a label.
    data: transform -> label -> runs -> batches (items), the same labels,
      runs and batch counts under every transform; "clean" is enrolled.
    n_runs: runs per label.

  Returns:
    ``(truth, predictions)``: ``truth[h]`` the true labels of fold h's
    queries (labels in ``data`` order, then batches in order);
    ``predictions[transform][h]`` the answers, aligned with ``truth[h]``.
  """
  clean = data["clean"]
  truth, preds = [], {t: [] for t in data}
  for h in range(n_runs):
    enrolled = {
      l: [b for r, run in enumerate(runs) if r != h for b in run]
      for l, runs in clean.items()
    }
    predict = fit(enrolled)
    truth.append([l for l, runs in clean.items() for _ in runs[h]])
    for t, by_label in data.items():
      preds[t].append(
        [predict(b) for runs in by_label.values() for b in runs[h]]
      )
  return truth, preds


def fold_accuracy(truth, predictions):
  """(mean over folds, per-fold accuracies) of aligned label lists."""
  folds = [
    float(np.mean([p == t for p, t in zip(pr, tr)]))
    for pr, tr in zip(predictions, truth)
  ]
  return float(np.mean(folds)), folds


def library_fit(rule):
  """`held_out_predictions`' ``fit`` for a fingerprint rule (`RULES`)."""
  similarity, aggregate = fingerprint.parse_rule(rule)

  def fit(enrolled):
    lib = fingerprint.FingerprintLibrary(
      similarity=similarity, aggregate=aggregate
    )
    for label, items in enrolled.items():
      for c in items:
        lib.add(label, c)
    return lambda c: lib.identify(c, top_k=1)[0][0]

  return fit


def method_name(kind, rule):
  """Row name of a fingerprint feature kind and rule in the table."""
  return f"{FEATURE_NAMES[kind]}, {rule}"


def _batches_of(x, batch, n_batches):
  return [x[i * batch : (i + 1) * batch] for i in range(n_batches)]


# ------------------------------------------------------------- the demo
def run(
  dataset="digits",
  out="ctjax_out/demo-digits",
  seed=0,
  quick=False,
  cache_dir=".ctjax_cache",
  echo=print,
  config=None,
):
  """Runs the whole demo; returns the results dict written to results.json.

  Args:
    dataset: "digits" or "fashion_mnist".
    out: report folder.
    seed: seed of the split, probes, k-means and the control encoder.
    quick: fewer batches per run and classifier steps.
    cache_dir: embeddings and generators are cached below it (None: off).
    echo: where progress lines go.
    config: a `DemoConfig` replacing the data set's preset.
  """
  from ctjax.audit import encoder_training  # pylint: disable=g-import-not-at-top

  cfg = config or PRESETS.get(dataset)
  if cfg is None:
    raise ValueError(
      f"unknown demo data set {dataset!r}; choose one of {sorted(PRESETS)}"
    )
  if quick:
    cfg = dataclasses.replace(
      cfg,
      batches_per_run=max(2, cfg.batches_per_run // 3),
      classifier_steps=cfg.classifier_steps // 3,
    )
  _check_config(cfg)
  stage = _Stages(echo)
  os.makedirs(out, exist_ok=True)
  emb_cache = os.path.join(cache_dir, "embeddings") if cache_dir else None
  gen_cache = os.path.join(cache_dir, "generators") if cache_dir else None

  with stage("data"):
    data = datasets.load(dataset)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(data.test_images))
    fresh = data.test_images[perm[: cfg.n_fresh]]
    test = data.test_images[perm[cfg.n_fresh :]]
    train = data.train_images

  with stage("encoders"):
    encoders = {
      "trained": encoder_training.default_encoder(dataset),
      "random": encoder_training.random_encoder(dataset, seed),
    }

  refs = {}
  with stage("reference"):
    for name, enc in encoders.items():
      t_emb, p_emb = (_embed(enc, x, emb_cache) for x in (train, test))
      refs[name] = CTReference.fit(
        t_emb,
        p_emb,
        n_cells=cfg.n_cells,
        seed=seed,
        meta=dict(encoder=enc.identity, pool="cls", dataset=dataset),
      )
  layers = np.arange(refs["trained"].n_layers)

  probe_curves, probe_emb = {}, {}
  with stage("probes"):
    for name in probes.PROBES:
      imgs = make_probe_images(name, train, fresh, cfg.probe_size, seed)
      for enc_name, enc in encoders.items():
        e = _embed(enc, imgs, emb_cache)
        probe_emb.setdefault(enc_name, {})[name] = e
        probe_curves.setdefault(enc_name, {})[name] = refs[enc_name].score(e).ct

  with stage("layer selection"):
    selections = {
      enc_name: select_probe_layers(
        refs[enc_name],
        probe_emb[enc_name],
        _embed(enc, fresh, emb_cache),
        cfg,
        seed,
      )
      for enc_name, enc in encoders.items()
    }

  n_gen = cfg.batch * cfg.batches_per_run
  with stage("generators"):
    samples, gen_seconds = generators.samples_for_all(
      dataset, train, n_gen, families=cfg.families, cache_dir=gen_cache
    )
  families = list(samples)

  # images[t][family][run]: uint8 [n_gen, H, W(, C)] after transform t.
  with stage("post-processing"):
    images = {"clean": samples}
    jobs = [(t, f) for t in cfg.transforms[1:] for f in families]
    for t, f in progress_lib.bar(
      iterable=jobs, desc="post-processing", show=True, leave=False
    ):
      images.setdefault(t, {})[f] = [
        probes.postprocess(t, x, reference=train) for x in samples[f]
      ]

  # feats[enc][t][kind][family][run]: [batches_per_run, F]; final_emb
  # [t][family][run]: final-layer embedding batches (trained encoder).
  feats, final_emb = {}, {}
  with stage("curves"):
    jobs = [("trained", t) for t in cfg.transforms] + [("random", "clean")]
    for enc_name, t in jobs:
      by_kind = feats.setdefault(enc_name, {}).setdefault(t, {})
      for f in families:
        for x in images[t][f]:
          e = _embed(encoders[enc_name], x, emb_cache)
          fv = fingerprint.batch_features(
            e, refs[enc_name], cfg.batch, cfg.features
          )
          for kind, v in fv.items():
            by_kind.setdefault(kind, {}).setdefault(f, []).append(v)
          if enc_name == "trained":
            final_emb.setdefault(t, {}).setdefault(f, []).append(
              _batches_of(e[-1], cfg.batch, cfg.batches_per_run)
            )
  curves = {e: feats[e]["clean"]["ct"] for e in encoders}

  n_runs = len(generators.SEEDS)
  results_fp = {}
  with stage("fingerprints"):
    for enc_name in encoders:
      for rule in fingerprint.RULES:
        acc, folds, conf, labels = fingerprint_accuracy(
          curves[enc_name], refs[enc_name], rule
        )
        results_fp[f"C_T curves, {rule} ({enc_name} encoder)"] = dict(
          accuracy=acc, folds=folds
        )
        if enc_name == "trained" and rule == "paper":
          paper_conf, paper_labels = conf, labels

  with stage("baselines and transforms"):
    table = transforms_table(feats["trained"], images, final_emb, cfg, n_runs)
  results_bl = {
    name: dict(
      accuracy=table["accuracy"][name]["clean"],
      folds=table["folds"][name]["clean"],
    )
    for name in baseline_methods(cfg)
  }

  depth_res = None
  if cfg.compare_families:
    from ctjax.audit import depth  # pylint: disable=g-import-not-at-top

    with stage("encoder families"):
      depth_res = depth.compare_families(
        dataset,
        train,
        test,
        fresh,
        probe_size=cfg.probe_size,
        n_cells=cfg.n_cells,
        seed=seed,
        out=out,
        cache_dir=emb_cache,
        samples={f: samples[f] for f in families},
        echo=echo,
      )

  with stage("report"):
    results = write_report(
      out,
      dataset=dataset,
      cfg=cfg,
      refs=refs,
      layers=layers,
      probe_curves=probe_curves,
      curves=curves,
      results_fp=results_fp,
      results_bl=results_bl,
      table=table,
      selections=selections,
      paper_conf=paper_conf,
      paper_labels=paper_labels,
      gen_seconds=gen_seconds,
      stages=stage.seconds,
      n_train=len(train),
      n_test=len(test),
      n_fresh=len(fresh),
      depth=depth_res,
    )
  total = sum(stage.seconds.values())
  echo("\n" + report.format_table(*transforms_rows(table, best_only=True)))
  echo(
    "\n"
    + report.format_table(
      [
        (p, *(f"{c:+.1f}" for c in probe_curves["trained"][p][1:]))
        for p in probes.PROBES
      ],
      ["probe (trained encoder)", *(f"L{l}" for l in layers[1:])],
    )
  )
  for enc_name, sel in selections.items():
    echo(f"\nrecommended layers ({enc_name} encoder): {sel.recommended}")
  echo(f"\ntotal {total:.0f} s; report: {os.path.join(out, 'report.md')}")
  return results


def _check_config(cfg):
  if not cfg.transforms or cfg.transforms[0] != "clean":
    raise ValueError(
      f"DemoConfig.transforms must start with 'clean', got {cfg.transforms}"
    )
  bad = [t for t in cfg.transforms[1:] if t not in probes.POSTPROCESS]
  if bad:
    raise ValueError(
      f"DemoConfig.transforms: unknown {bad}; choose from {probes.POSTPROCESS}"
    )
  fingerprint.features.check_kinds(cfg.features)
  if cfg.features[0] != "ct":
    raise ValueError(
      f"DemoConfig.features must start with 'ct', got {cfg.features}"
    )


def make_probe_images(name, train, fresh, n, seed):
  return probes.make_probe(
    name, train, fresh, min(n, len(fresh)) if name == "test" else n, seed
  )


# ------------------------------------------------------- layer selection
def select_probe_layers(
  reference, probe_embeddings, fresh_embeddings, cfg, seed
):
  """`ctjax.select_layers` on the demo's probes (`SELECT_KINDS`).

  Batches of ``min(batch, pool / 2)`` points are drawn from each probe's
  embeddings and from the fresh test images' (the null); τ = 20 / batch.
  Two-sided: on small data sets most probes raise C_T above the null's
  rather than lowering it (see the probes table), and a layer that moves it
  either way detects the change.

  Args:
    reference: the fitted `CTReference`.
    probe_embeddings: probe name -> ``[L, n_probe, D]``.
    fresh_embeddings: ``[L, n_fresh, D]``.
  """
  pools = {k: probe_embeddings[k] for k in SELECT_KINDS}
  smallest = min(np.shape(p)[1] for p in [*pools.values(), fresh_embeddings])
  return selection.select_layers(
    reference,
    pools,
    fresh_embeddings,
    n_batches=cfg.select_batches,
    batch_size=max(2, min(cfg.batch, smallest // 2)),
    n_bootstrap=cfg.select_bootstrap,
    alternative="two-sided",
    seed=seed,
  )


def split_verdict(sel):
  """Does the paper's early-low-level / deep-semantic split hold?

  The encoder's blocks (layers 1..L-1; layer 0 is the embedding output) are
  cut in an early and a deep half (the middle block of an odd count goes to
  the early half). A kind of `LOW_LEVEL_KINDS` agrees with the paper when its
  recommended layer is early, one of `SEMANTIC_KINDS` when it is deep. The
  evidence is the best |Cohen's d| on each half: the split is *clear* for a
  kind when its own half's best |d| lies above the other half's best
  bootstrap interval (upper end of |d|'s interval there), else *weak*.

  Returns:
    one dict per kind of ``sel`` in `LOW_LEVEL_KINDS` + `SEMANTIC_KINDS`:
    kind, expected ("early"/"deep"), recommended layer name and half,
    best_early/best_deep (layer, |d|, AUC), holds (bool), clear (bool).
  """
  n = len(sel.layer_names)
  blocks = np.arange(1, n)
  early = blocks[: (len(blocks) + 1) // 2]
  deep = blocks[(len(blocks) + 1) // 2 :]
  rows = []
  for kind in [*LOW_LEVEL_KINDS, *SEMANTIC_KINDS]:
    if kind not in sel.kinds:
      continue
    k = sel.kinds.index(kind)
    d = np.abs(sel.effect[k])
    # |d|'s interval: the larger absolute end of the signed interval.
    d_hi = np.maximum(np.abs(sel.effect_low[k]), np.abs(sel.effect_high[k]))

    def best(half, d=d):
      finite = [l for l in half if np.isfinite(d[l])]
      return max(finite, key=lambda l: d[l]) if finite else None

    be, bd = best(early), best(deep)
    rec = int(sel.recommended_index[k])
    expected = "early" if kind in LOW_LEVEL_KINDS else "deep"
    half = "early" if rec in early else ("deep" if rec in deep else "none")
    own, other = (be, bd) if expected == "early" else (bd, be)
    clear = own is not None and other is not None and bool(d[own] > d_hi[other])
    row = dict(
      kind=kind,
      expected=expected,
      recommended=sel.layer_names[rec],
      recommended_half=half,
      holds=half == expected,
      clear=clear and half == expected,
    )
    for name, l in (("early", be), ("deep", bd)):
      row[f"best_{name}"] = (
        None
        if l is None
        else dict(
          layer=sel.layer_names[l],
          abs_effect=float(d[l]),
          abs_effect_high=float(d_hi[l]),
          auc=float(sel.auc[k, l]),
        )
      )
    rows.append(row)
  return rows


# ---------------------------------------------------------- transforms
def baseline_methods(cfg):
  """Baseline name -> (maker, data key) of the transforms table."""
  return {
    "pixel mean/std": (lambda: baselines.PixelStats(), "images"),
    "pixel mean/std + histogram": (
      lambda: baselines.PixelStats(histogram_bins=16, standardize=True),
      "images",
    ),
    "Fréchet distance, final-layer embeddings": (
      baselines.FrechetBaseline,
      "final",
    ),
    "CNN classifier + majority vote": (
      lambda: baselines.ClassifierBaseline(
        baselines.ClassifierConfig(num_steps=cfg.classifier_steps)
      ),
      "images",
    ),
  }


def transforms_table(feats, images, final_emb, cfg, n_runs):
  """Every method enrolled on clean batches, queried under every transform.

  Args:
    feats: ``feats[t][kind][family][run]`` ``[b, F]`` fingerprint features
      (trained encoder).
    images: ``images[t][family][run]`` uint8 samples ``[n_gen, ...]``.
    final_emb: ``final_emb[t][family][run]`` list of ``[batch, D]``.
    cfg: the `DemoConfig`.
    n_runs: runs per family (each held out in turn).

  Returns:
    a JSON-able dict: ``transforms``, ``methods`` (rows in order),
    ``labels``, ``truth[h]`` (fold h's true labels), ``predictions[method]
    [t][h]`` (aligned answers), ``accuracy[method][t]`` and ``folds[method]
    [t]`` (recomputable from the two before).
  """
  ts = list(cfg.transforms)
  jobs = [
    (method_name(kind, rule), library_fit(rule), ("feats", kind))
    for kind in cfg.features
    for rule in fingerprint.RULES
  ]
  jobs += [
    (name, lambda enrolled, make=make: make().fit(enrolled).predict, (key,))
    for name, (make, key) in baseline_methods(cfg).items()
  ]
  b, nb = cfg.batch, cfg.batches_per_run

  def data_for(source):
    if source[0] == "feats":
      return {
        t: {
          f: [list(r) for r in runs] for f, runs in feats[t][source[1]].items()
        }
        for t in ts
      }
    if source[0] == "final":
      return {t: final_emb[t] for t in ts}
    return {
      t: {
        f: [_batches_of(x, b, nb) for x in runs]
        for f, runs in images[t].items()
      }
      for t in ts
    }

  out = dict(transforms=ts, methods=[], predictions={}, accuracy={}, folds={})
  for name, fit, source in progress_lib.bar(
    iterable=jobs, desc="methods x transforms", show=True, leave=False
  ):
    truth, preds = held_out_predictions(fit, data_for(source), n_runs)
    out["truth"] = truth
    out["methods"].append(name)
    out["predictions"][name] = preds
    out["accuracy"][name], out["folds"][name] = {}, {}
    for t in ts:
      acc, folds = fold_accuracy(truth, preds[t])
      out["accuracy"][name][t], out["folds"][name][t] = acc, folds
  out["labels"] = list(images["clean"])
  return out


def transforms_rows(table, best_only=False):
  """(rows, header) of the transforms table; ``best_only``: the paper's
  rule, the best rule of each feature kind (by mean over transforms) and the
  baselines."""
  ts, methods = table["transforms"], list(table["methods"])
  acc = table["accuracy"]
  if best_only:
    keep, seen = [], {}
    for m in methods:
      kind = m.split(", ")[0]
      if kind not in FEATURE_NAMES.values():
        keep.append(m)
        continue
      score = np.mean([acc[m][t] for t in ts])
      if m == method_name("ct", "paper"):
        keep.append(m)
      if kind not in seen or score > seen[kind][1]:
        seen[kind] = (m, score)
    best = [v[0] for v in seen.values()]
    methods = [m for m in methods if m in best or m in keep]
  rows = [(m, *(f"{acc[m][t]:.1%}" for t in ts)) for m in methods]
  return rows, ["held-out run identification", *ts]


# -------------------------------------------------------------- report
def write_report(
  out,
  *,
  dataset,
  cfg,
  refs,
  layers,
  probe_curves,
  curves,
  results_fp,
  results_bl,
  table,
  selections,
  paper_conf,
  paper_labels,
  gen_seconds,
  stages,
  n_train,
  n_test,
  n_fresh,
  depth=None,
):
  """Writes report.md, results.json and the PNG plots; returns the results.

  ``depth`` is `ctjax.audit.depth.compare_families`'s dict (or None).
  """
  env = environment.describe()
  pngs = {}
  for enc_name, pc in probe_curves.items():
    pngs[f"probes_{enc_name}"] = report.plot_curves(
      pc,
      os.path.join(out, f"probes_{enc_name}.png"),
      layers=layers,
      title=f"C_T of the probes per layer ({enc_name} encoder)",
    )
  for enc_name, cv in curves.items():
    pngs[f"generators_{enc_name}"] = report.plot_curves(
      {f: np.concatenate(runs) for f, runs in cv.items()},
      os.path.join(out, f"generators_{enc_name}.png"),
      layers=layers,
      title=f"C_T curves of generator batches ({enc_name} encoder)",
    )
  # One mean curve per training run keeps the heat map readable.
  with warnings.catch_warnings():  # all-NaN layer 0 -> NaN, as intended
    warnings.simplefilter("ignore", RuntimeWarning)
    flat = [
      (f"{f} run {r}", np.nanmean(run, axis=0))
      for f, runs in curves["trained"].items()
      for r, run in enumerate(runs)
    ]
  sim = fingerprint.similarity_matrix(
    np.stack([c for _, c in flat]), similarity="paper"
  )
  pngs["similarity"] = report.plot_similarity_heatmap(
    sim,
    [f for f, _ in flat],
    os.path.join(out, "similarity.png"),
    title="Similarity of mean C_T curves per run (paper rule)",
  )
  pngs["confusion"] = report.plot_confusion(
    paper_conf,
    paper_labels,
    os.path.join(out, "confusion.png"),
    title="Held-out runs, paper rule, trained encoder (all folds)",
  )
  verdicts = {e: split_verdict(s) for e, s in selections.items()}
  for enc_name, sel in selections.items():
    pngs[f"selection_{enc_name}"] = report.plot_selection_effect(
      sel,
      os.path.join(out, f"selection_{enc_name}.png"),
      title=f"|Cohen's d| per layer ({enc_name} encoder)",
    )
  pngs["transforms"] = report.plot_method_table(
    [
      [table["accuracy"][m][t] for t in table["transforms"]]
      for m in table["methods"]
    ],
    table["methods"],
    table["transforms"],
    os.path.join(out, "transforms.png"),
    title="Held-out run identification under post-processing",
  )
  results = dict(
    dataset=dataset,
    config=dataclasses.asdict(cfg),
    sizes=dict(train=n_train, reference_test=n_test, fresh=n_fresh),
    reference={k: r.identity() for k, r in refs.items()},
    layers=layers,
    probes=probe_curves,
    generator_curves={
      e: {f: [r.tolist() for r in runs] for f, runs in cv.items()}
      for e, cv in curves.items()
    },
    fingerprinting=results_fp,
    baselines=results_bl,
    transforms=table,
    layer_selection={
      e: dict(**s.to_dict(), split=verdicts[e]) for e, s in selections.items()
    },
    stage_seconds=stages,
    generator_seconds=gen_seconds,
    plots={k: os.path.basename(v) for k, v in pngs.items()},
    environment=env,
  )
  if depth is not None:
    results["encoder_families"] = depth["results"]
    if depth.get("plot"):
      results["plots"]["depth"] = os.path.basename(depth["plot"])
  report.write_json(results, os.path.join(out, "results.json"))
  lines = [
    f"# ctjax demo: {dataset}",
    "",
    f"T = {n_train} training images, P = {n_test} test images, "
    f"{n_fresh} further test images for the null probe. Encoder: the "
    f"ViT shipped with ctjax (trained on T) and its untrained copy. "
    f"Reference: PCA {refs['trained'].n_components} dims, "
    f"{cfg.n_cells} k-means cells, 1 − |cos|, τ = 20/m.",
    "",
    f"Run on {environment.summary(env)}. The numbers repeat bit for bit "
    "on the same CPU features and package versions (results.json "
    "`environment`); elsewhere they can differ at rounding level, which "
    "training the generators can amplify.",
    "",
    "## Probes: C_T per layer (trained encoder)",
    "",
    "| probe | " + " | ".join(f"L{l}" for l in layers) + " |",
    "|---|" + "---|" * len(layers),
  ]
  for p, c in probe_curves["trained"].items():
    lines.append(
      f"| {p} | "
      + " | ".join("nan" if not np.isfinite(v) else f"{v:+.1f}" for v in c)
      + " |"
    )
  lines += ["", "![probes](probes_trained.png)", ""]
  lines += selection_lines(selections, verdicts)
  lines += [
    "## Fingerprinting: identification of held-out generator runs",
    "",
    f"{len(curves['trained'])} families × 3 runs; {cfg.batches_per_run}"
    f" batches of {cfg.batch} samples per run; two runs enrolled, the "
    f"third identified batch by batch, each run held out in turn.",
    "",
    "| method | accuracy | per fold |",
    "|---|---|---|",
  ]
  for k, v in {**results_fp, **results_bl}.items():
    lines.append(
      f"| {k} | {v['accuracy']:.1%} | "
      + ", ".join(f"{a:.0%}" for a in v["folds"])
      + " |"
    )
  lines += [
    "",
    "![generators](generators_trained.png)",
    "",
    "![similarity](similarity.png)",
    "",
    "![confusion](confusion.png)",
    "",
  ]
  lines += transforms_lines(table, cfg)
  if depth is not None:
    lines += [depth["markdown"].rstrip(), ""]
  lines += [
    "## Wall time per stage (s)",
    "",
    "| stage | seconds |",
    "|---|---|",
  ]
  lines += [f"| {k} | {v:.1f} |" for k, v in stages.items()]
  lines += [
    "",
    "Generator families (training or cache load + sampling, s): "
    + ", ".join(f"{k} {v:.1f}" for k, v in gen_seconds.items()),
    "",
  ]
  report.write_bytes("\n".join(lines).encode(), os.path.join(out, "report.md"))
  return results


def transforms_lines(table, cfg):
  """The report's section on attribution under post-processing."""
  ts = table["transforms"]
  n_q = len(table["truth"][0])
  lines = [
    "## Attribution under post-processing",
    "",
    "Every method is enrolled on clean batches of two runs per family and "
    "queried with the third run's batches as generated (clean) and after "
    "JPEG re-encoding at quality 75 and 50 (PIL/libjpeg), shrinking to half "
    "size and back (bilinear), or matching each image's histogram to the "
    f"training set's; each run held out in turn ({n_q} queries per fold). "
    "Fingerprint rows (trained encoder): the C_T curve (the paper's; rule "
    "`paper` is the paper's rule), the per-cell Z of every layer, the "
    "batch's share of every cell, and the test-set CDF at the batch's "
    "nearest-training-distance quantiles (`ctjax.fingerprint.features`). "
    "Per-batch answers are in results.json (`transforms.predictions`).",
    "",
    "| method | " + " | ".join(ts) + " |",
    "|---|" + "---|" * len(ts),
  ]
  acc = table["accuracy"]
  for m in table["methods"]:
    lines.append(
      f"| {m} | " + " | ".join(f"{acc[m][t]:.1%}" for t in ts) + " |"
    )
  lines += ["", "![transforms](transforms.png)", ""]
  lines += transforms_summary(table, cfg)
  return lines


def transforms_summary(table, cfg):
  """Closing lines: the best of each group per transform, and the margins."""
  ts, acc = table["transforms"], table["accuracy"]
  groups = {
    "C_T curve (any rule)": [method_name("ct", r) for r in fingerprint.RULES]
  }
  for kind in cfg.features[1:]:
    groups[f"{FEATURE_NAMES[kind]} (any rule)"] = [
      method_name(kind, r) for r in fingerprint.RULES
    ]
  groups["best baseline"] = list(baseline_methods(cfg))
  lines = [
    "Best of each group per transform (the best rule is picked per column, "
    "so these are optimistic):",
    "",
    "| group | " + " | ".join(ts) + " |",
    "|---|" + "---|" * len(ts),
  ]
  best = {}
  for g, ms in groups.items():
    best[g] = {t: max(ms, key=lambda m, t=t: acc[m][t]) for t in ts}
    lines.append(
      f"| {g} | "
      + " | ".join(f"{acc[best[g][t]][t]:.1%} ({best[g][t]})" for t in ts)
      + " |"
    )
  paper = method_name("ct", "paper")
  worst = min(acc[paper][t] for t in ts)
  lines += [
    "",
    f"The paper's rule: {', '.join(f'{t} {acc[paper][t]:.1%}' for t in ts)}"
    f" (lowest {worst:.1%}).",
    "",
  ]
  return lines


def selection_lines(selections, verdicts):
  """The report's layer-selection section."""
  lines = [
    "## Layer selection: which layer detects which kind",
    "",
    "`ctjax.select_layers` on the probes against fresh test images (the "
    "null), per kind and layer: ROC AUC of probe against null batches and "
    "Cohen's d (positive: probe C_T below the null's, like copying), "
    "95% bootstrap intervals over batches; layers ranked two-sided "
    "(|AUC − ½|, then |d|).",
    "",
  ]
  for enc_name, sel in selections.items():
    lines += [
      f"### {enc_name} encoder ({sel.probe_ct.shape[1]} probe and "
      f"{sel.null_ct.shape[0]} null batches of {sel.batch_size})",
      "",
      "| kind | recommended | AUC | d [95% CI] | "
      + " | ".join(f"d {l}" for l in sel.layer_names)
      + " |",
      "|---|---|---|---|" + "---|" * len(sel.layer_names),
    ]
    for k, kind in enumerate(sel.kinds):
      r = int(sel.recommended_index[k])
      lines.append(
        f"| {kind} | {sel.layer_names[r]} | {sel.auc[k, r]:.2f} | "
        f"{sel.effect[k, r]:+.1f} [{sel.effect_low[k, r]:+.1f}, "
        f"{sel.effect_high[k, r]:+.1f}] | "
        + " | ".join(_fmt(v, "+.1f") for v in sel.effect[k])
        + " |"
      )
    lines += ["", f"![selection](selection_{enc_name}.png)", ""]
    lines += [
      "The paper's split (low-level kinds "
      f"{', '.join(LOW_LEVEL_KINDS)} best detected in the early half of the "
      f"blocks, semantic kinds {', '.join(SEMANTIC_KINDS)} in the deep half; "
      "clear = the own half's best |d| above the other half's interval):",
      "",
      "| kind | expected | recommended | best early (\\|d\\|, AUC) | "
      "best deep (\\|d\\|, AUC) | holds |",
      "|---|---|---|---|---|---|",
    ]
    for v in verdicts[enc_name]:
      cells = []
      for h in ("early", "deep"):
        b = v[f"best_{h}"]
        cells.append(
          "—"
          if b is None
          else f"{b['layer']} ({b['abs_effect']:.1f}, {b['auc']:.2f})"
        )
      holds = (
        ("yes, clearly" if v["clear"] else "yes, weakly")
        if v["holds"]
        else "no"
      )
      lines.append(
        f"| {v['kind']} | {v['expected']} | {v['recommended']} "
        f"({v['recommended_half']}) | {cells[0]} | {cells[1]} | {holds} |"
      )
    n_hold = sum(v["holds"] for v in verdicts[enc_name])
    lines += [
      "",
      f"Holds for {n_hold} of {len(verdicts[enc_name])} kinds "
      f"({sum(v['clear'] for v in verdicts[enc_name])} clearly).",
      "",
    ]
  return lines


def _fmt(v, spec):
  return "nan" if not np.isfinite(v) else format(v, spec)
