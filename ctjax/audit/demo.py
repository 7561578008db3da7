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
  5. generators KDE, GMM, VAE, GAN and one DDPM network sampled as DDPM and as
               DDIM, three training runs (seeds) each, trained on T only
               (cached: a second run reuses them);
  6. curves    each run's samples cut into batches, a C_T-layer curve per batch;
  7. fingerprints  enrol two runs per family, identify the held-out run's
               batches (every run held out in turn), for every matching rule;
  8. baselines pixel mean/std matching, Fréchet distance of final-layer
               embeddings, a CNN classifier with a majority vote;
  9. report    report.md, results.json and PNG plots in the output folder.
"""

import dataclasses
import os
import time
import warnings

import numpy as np

from ctjax import fingerprint, report
from ctjax.audit import baselines, datasets, generators, probes
from ctjax.embedding import embed
from ctjax.reference import CTReference


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
  """

  n_fresh: int
  probe_size: int
  batch: int
  batches_per_run: int
  n_cells: int = 10
  classifier_steps: int = 400
  families: tuple | None = None


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
  accs = []
  for h in range(n_runs):
    enrolled = {
      l: [b for r, run in enumerate(runs) if r != h for b in run]
      for l, runs in data.items()
    }
    model = make().fit(enrolled)
    hits = [model.predict(b) == l for l, runs in data.items() for b in runs[h]]
    accs.append(float(np.mean(hits)))
  return float(np.mean(accs)), accs


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

  probe_curves = {}
  with stage("probes"):
    for name in probes.PROBES:
      imgs = make_probe_images(name, train, fresh, cfg.probe_size, seed)
      for enc_name, enc in encoders.items():
        ct = refs[enc_name].score(_embed(enc, imgs, emb_cache)).ct
        probe_curves.setdefault(enc_name, {})[name] = ct

  n_gen = cfg.batch * cfg.batches_per_run
  with stage("generators"):
    samples, gen_seconds = generators.samples_for_all(
      dataset, train, n_gen, families=cfg.families, cache_dir=gen_cache
    )
  families = list(samples)

  curves, final_emb = {}, {}
  with stage("curves"):
    for enc_name, enc in encoders.items():
      curves[enc_name] = {}
      for fam in families:
        runs = []
        for r, imgs in enumerate(samples[fam]):
          e = _embed(enc, imgs, emb_cache)
          runs.append(fingerprint.batch_curves(e, refs[enc_name], cfg.batch))
          if enc_name == "trained":
            final_emb.setdefault(fam, []).append(
              [
                e[-1, i * cfg.batch : (i + 1) * cfg.batch]
                for i in range(cfg.batches_per_run)
              ]
            )
        curves[enc_name][fam] = runs

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

  image_batches = {
    f: [
      [
        imgs[i * cfg.batch : (i + 1) * cfg.batch]
        for i in range(cfg.batches_per_run)
      ]
      for imgs in samples[f]
    ]
    for f in families
  }
  results_bl = {}
  with stage("baselines"):
    for name, make, data_ in (
      ("pixel mean/std", lambda: baselines.PixelStats(), image_batches),
      (
        "pixel mean/std + histogram",
        lambda: baselines.PixelStats(histogram_bins=16, standardize=True),
        image_batches,
      ),
      (
        "Fréchet distance, final-layer embeddings",
        baselines.FrechetBaseline,
        final_emb,
      ),
      (
        "CNN classifier + majority vote",
        lambda: baselines.ClassifierBaseline(
          baselines.ClassifierConfig(num_steps=cfg.classifier_steps)
        ),
        image_batches,
      ),
    ):
      acc, folds = baseline_accuracy(make, data_, n_runs)
      results_bl[name] = dict(accuracy=acc, folds=folds)

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
      paper_conf=paper_conf,
      paper_labels=paper_labels,
      gen_seconds=gen_seconds,
      stages=stage.seconds,
      n_train=len(train),
      n_test=len(test),
      n_fresh=len(fresh),
    )
  total = sum(stage.seconds.values())
  rows = [
    (k, f"{v['accuracy']:.1%}")
    for k, v in results_fp.items()
    if "paper" in k or "l2 (" in k
  ] + [(k, f"{v['accuracy']:.1%}") for k, v in results_bl.items()]
  echo(
    "\n"
    + report.format_table(rows, ["held-out run identification", "accuracy"])
  )
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
  echo(f"\ntotal {total:.0f} s; report: {os.path.join(out, 'report.md')}")
  return results


def make_probe_images(name, train, fresh, n, seed):
  return probes.make_probe(
    name, train, fresh, min(n, len(fresh)) if name == "test" else n, seed
  )


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
  paper_conf,
  paper_labels,
  gen_seconds,
  stages,
  n_train,
  n_test,
  n_fresh,
):
  """Writes report.md, results.json and the PNG plots; returns the results."""
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
    stage_seconds=stages,
    generator_seconds=gen_seconds,
    plots={k: os.path.basename(v) for k, v in pngs.items()},
  )
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
  lines += [
    "",
    "![probes](probes_trained.png)",
    "",
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
