"""The paper's Figure 3 in miniature: C_T against depth for three encoder
families trained on the same data.

He et al. compare how C_T changes with depth across encoder families (ViT,
DINO, DeiT, Swin, ResNet, Inception-v3) and report that it rises with depth:
copying that is plain in early layers fades in the late, more semantic ones.
Here the three families ctjax ships for each demo data set (the audit's ViT
and a ResNet and a Swin trained the same way, `encoder_training`) each embed
the data on every layer, fit a reference, and score the built-in probes
(`probes.PROBES`) and optionally generator samples. Each family's curves are
drawn against the relative depth l / L (its L + 1 hidden states differ in
number and width), one panel per family, and every curve gets a verdict on
the trend (`trend_verdict`)::

  python -m ctjax.audit.depth --dataset fashion_mnist --out ctjax_out/depth

  compare_families(dataset, train, test, fresh, ...) -> dict(markdown, plot, results)
  trend_verdict(ct, depth)                            -> Trend
"""

import argparse
import dataclasses
import math
import os
import time
import warnings
from collections.abc import Mapping

import numpy as np
from scipy import stats as sps

from ctjax import storage
from ctjax.audit import datasets, encoder_training, probes
from ctjax.embedding import embed
from ctjax.reference import CTReference

FAMILIES = ("vit", "resnet", "swin")
FAMILY_NAMES = {"vit": "ViT", "resnet": "ResNet", "swin": "Swin"}
# Probes whose images are made from training images: the ones the paper's
# trend is about. "test" is the null (C_T ~ 0 on every layer expected).
MEMORISATION_PROBES = tuple(p for p in probes.PROBES if p != "test")

# The verdict rule (`trend_verdict`).
MIN_RHO = 0.6
MIN_RISE = 2.0  # report.DEFAULT_BAND: the width of the "fine" band of C_T


@dataclasses.dataclass(frozen=True)
class Trend:
  """The verdict on one C_T-versus-depth curve.

  Attributes:
    verdict: "rises", "falls", "flat" or "mixed" (or "undefined" with fewer
      than 3 finite layers).
    rho: Spearman correlation of C_T with depth over the finite layers.
    rise: C_T of the last finite layer minus that of the first.
    n_layers: finite layers used.
  """

  verdict: str
  rho: float
  rise: float
  n_layers: int

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def trend_verdict(
  ct, depth=None, *, min_rho: float = MIN_RHO, min_rise: float = MIN_RISE
) -> Trend:
  """Does C_T rise with depth? The rule:

  over the layers with a finite C_T (at least 3), rho = Spearman correlation
  of C_T with depth and rise = C_T(last) - C_T(first);
  "rises" if rho >= min_rho and rise >= min_rise, "falls" if
  rho <= -min_rho and rise <= -min_rise, "flat" if |rise| < min_rise and
  the curve's range max - min is below 2 * min_rise, "mixed" otherwise (a
  moving curve without a monotone trend).

  Args:
    ct: ``[L]`` C_T per layer (NaN: a layer without a value).
    depth: ``[L]`` increasing depths (default 0..L-1).
    min_rho: the correlation a trend needs.
    min_rise: the last-minus-first change a trend needs (C_T units).

  Returns:
    a `Trend`.
  """
  ct = np.asarray(ct, np.float64)
  if ct.ndim != 1:
    raise ValueError(f"ct must be one curve [L], got shape {ct.shape}")
  depth = (
    np.arange(len(ct), dtype=np.float64)
    if depth is None
    else np.asarray(depth, np.float64)
  )
  if depth.shape != ct.shape:
    raise ValueError(f"depth has shape {depth.shape}, ct has {ct.shape}")
  if np.any(np.diff(depth) <= 0):
    raise ValueError(f"depth must increase, got {depth.tolist()}")
  ok = np.isfinite(ct)
  n = int(ok.sum())
  if n < 3:
    return Trend("undefined", math.nan, math.nan, n)
  y, x = ct[ok], depth[ok]
  rise = float(y[-1] - y[0])
  spread = float(y.max() - y.min())
  if spread == 0.0:
    return Trend("flat", 0.0, 0.0, n)
  rho = float(sps.spearmanr(x, y).statistic)
  if rho >= min_rho and rise >= min_rise:
    verdict = "rises"
  elif rho <= -min_rho and rise <= -min_rise:
    verdict = "falls"
  elif abs(rise) < min_rise and spread < 2 * min_rise:
    verdict = "flat"
  else:
    verdict = "mixed"
  return Trend(verdict, rho, rise, n)


RULE_TEXT = (
  f"Rule: over the layers with a finite C_T, rho is the Spearman correlation "
  f"of C_T with depth and Δ = C_T(last layer) − C_T(first layer); a curve "
  f"*rises* when rho ≥ {MIN_RHO} and Δ ≥ {MIN_RISE}, *falls* when "
  f"rho ≤ −{MIN_RHO} and Δ ≤ −{MIN_RISE}, is *flat* when |Δ| < {MIN_RISE} "
  f"and its range is below {2 * MIN_RISE}, and *mixed* otherwise."
)


# ------------------------------------------------------------------ scoring


def pool_for(encoder) -> str:
  """The audit's pooling: the CLS token for the ViT (as the paper), the
  global average for the families without one."""
  return "cls" if encoder.stacked else "mean"


def relative_depth(n_states: int) -> np.ndarray:
  """``[L+1]`` depths l / L of the hidden states 0..L."""
  if n_states < 2:
    raise ValueError(f"need at least 2 hidden states, got {n_states}")
  return np.arange(n_states) / (n_states - 1)


def _as_runs(name, value) -> list:
  if isinstance(value, (list, tuple)):
    runs = [np.asarray(v) for v in value]
  else:
    runs = [np.asarray(value)]
  if not runs or any(r.dtype != np.uint8 or r.ndim not in (3, 4) for r in runs):
    raise ValueError(
      f"samples[{name!r}] must be uint8 images [m, H, W(, C)] or a list of "
      "them (one per run)"
    )
  return runs


def probe_images(name, train, fresh, n, seed):
  """The demo's probe sets (``test`` draws at most ``len(fresh)`` images)."""
  return probes.make_probe(
    name, train, fresh, min(n, len(fresh)) if name == "test" else n, seed
  )


def _family_summary(name: str, trends: Mapping[str, Trend]) -> str:
  """One sentence on whether C_T rises with depth for one family."""
  mem = {p: t for p, t in trends.items() if p in MEMORISATION_PROBES}
  by = {}
  for p, t in mem.items():
    by.setdefault(t.verdict, []).append(p)
  n = len(mem)
  rises = by.get("rises", [])
  if n and len(rises) == n:
    head = f"C_T rises with depth for all {n} memorisation probes"
  elif len(rises) * 2 > n:
    head = (
      f"C_T rises with depth for {len(rises)} of {n} memorisation probes "
      f"({', '.join(rises)})"
    )
  elif rises:
    head = (
      f"the trend holds only partly: C_T rises with depth for "
      f"{len(rises)} of {n} memorisation probes ({', '.join(rises)})"
    )
  else:
    head = (
      f"the trend does not hold: C_T rises with depth for none of the {n} "
      "memorisation probes"
    )
  verbs = {"falls": "falls", "flat": "is flat", "mixed": "is mixed"}
  rest = [
    f"{verbs.get(v, 'is ' + v)} for {', '.join(ps)}"
    for v, ps in sorted(by.items())
    if v != "rises"
  ]
  text = f"**{name}**: {head}"
  if rest:
    text += f"; it {'; it '.join(rest)}"
  if "test" in trends:
    t = trends["test"]
    text += (
      f". The null probe (fresh test images): {t.verdict} (Δ = {t.rise:+.1f})"
    )
  gens = [p for p in trends if p not in probes.PROBES]
  if gens:
    text += "; generators: " + ", ".join(
      f"{g} {trends[g].verdict}" for g in gens
    )
  return text + "."


def _fmt(v, spec="+.1f"):
  return "nan" if v is None or not np.isfinite(v) else format(v, spec)


def markdown_section(results: dict, plot_name: str | None = None) -> str:
  """The report section: the verdict table, one sentence per family."""
  fams = list(results["families"])
  lines = [
    "## C_T against depth in three encoder families (the paper's Figure 3 "
    "in miniature)",
    "",
    f"Data set {results['dataset']}; every family trained on its training "
    f"split the same way (`ctjax.audit.encoder_training`); reference "
    f"{results['n_train']} training / {results['n_test']} test images, "
    f"{results['n_cells']} cells; probes of {results['probe_size']} images. "
    "Depth is relative, l / L over the hidden states (ViT: embeddings and "
    "blocks, CLS token; ResNet and Swin: stem and stages, global average).",
    "",
    "| family | hidden states | widths | test accuracy |",
    "|---|---|---|---|",
  ]
  for f in fams:
    r = results["families"][f]
    acc = r.get("test_accuracy")
    lines.append(
      f"| {FAMILY_NAMES.get(f, f)} | {len(r['layers'])} | "
      f"{'/'.join(map(str, sorted(set(r['widths']))))} | "
      f"{'n/a' if acc is None else f'{acc:.1%}'} |"
    )
  lines += [
    "",
    "| curve | "
    + " | ".join(f"{FAMILY_NAMES.get(f, f)}: rho, Δ → verdict" for f in fams)
    + " |",
    "|---|" + "---|" * len(fams),
  ]
  names = list(results["families"][fams[0]]["trends"])
  for p in names:
    cells = []
    for f in fams:
      t = results["families"][f]["trends"][p]
      cells.append(
        f"{_fmt(t['rho'], '+.2f')}, {_fmt(t['rise'])} → {t['verdict']}"
      )
    lines.append(f"| {p} | " + " | ".join(cells) + " |")
  lines += ["", RULE_TEXT, ""]
  for f in fams:
    lines.append(f"- {results['families'][f]['summary']}")
  lines.append("")
  if plot_name:
    lines += [f"![C_T against depth]({plot_name})", ""]
  lines += [
    "C_T per layer:",
    "",
  ]
  for f in fams:
    r = results["families"][f]
    lines += [
      f"| {FAMILY_NAMES.get(f, f)} | "
      + " | ".join(f"{n} ({d:.2f})" for n, d in zip(r["layers"], r["depth"]))
      + " |",
      "|---|" + "---|" * len(r["layers"]),
    ]
    for p, c in r["curves"].items():
      lines.append(f"| {p} | " + " | ".join(_fmt(v) for v in c) + " |")
    lines.append("")
  return "\n".join(lines)


# ------------------------------------------------------------------ plot


def depth_figure(results: dict):
  """One panel per family: C_T against relative depth, one line per curve
  (probes solid, generators dashed), shared y axis. A matplotlib Figure."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fams = list(results["families"])
  fig = Figure(
    figsize=(4.2 * len(fams) + 1.6, 5.6), dpi=100, layout="constrained"
  )
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, len(fams), sharey=True, squeeze=False)[0]
  names = list(results["families"][fams[0]]["curves"])
  cmap = __import__("matplotlib").colormaps["tab10"]
  colours = {n: cmap(i % 10) for i, n in enumerate(names)}
  for ax, f in zip(axes, fams):
    r = results["families"][f]
    for n in names:
      c = np.asarray(r["curves"][n], np.float64)
      ax.plot(
        r["depth"],
        c,
        color=colours[n],
        marker="o",
        ms=3,
        lw=1.4,
        ls="-" if n in probes.PROBES else "--",
        label=f"{n} ({r['trends'][n]['verdict']})",
      )
    ax.axhline(0.0, color="black", lw=0.8)
    ax.axhspan(-MIN_RISE, MIN_RISE, color="grey", alpha=0.12, lw=0)
    acc = r.get("test_accuracy")
    ax.set_title(
      f"{FAMILY_NAMES.get(f, f)} ({len(r['depth'])} hidden states"
      + ("" if acc is None else f", acc {acc:.0%}")
      + ")"
    )
    ax.set_xlabel("relative depth l / L")
    ax.set_xticks(r["depth"])
    ax.set_xticklabels([f"{d:.2f}" for d in r["depth"]], fontsize=7)
    ax.grid(alpha=0.3)
    # Below the panel, so no curve is hidden (the verdicts are in the labels).
    ax.legend(
      fontsize=7,
      frameon=False,
      ncol=3,
      loc="upper center",
      bbox_to_anchor=(0.5, -0.16),
    )
  axes[0].set_ylabel("C_T")
  fig.suptitle(f"C_T against depth, {results['dataset']}")
  return fig


def plot_depth(results: dict, path) -> str:
  """Writes `depth_figure` as a PNG (atomically); returns the path."""
  import io  # pylint: disable=g-import-not-at-top

  buf = io.BytesIO()
  depth_figure(results).savefig(buf, format="png")
  return storage.write_bytes(buf.getvalue(), path)


# ------------------------------------------------------------------ main


def compare_families(
  dataset: str,
  train,
  test,
  fresh,
  *,
  probe_size: int,
  n_cells: int,
  seed: int = 0,
  out: str | None = None,
  cache_dir: str | None = None,
  samples: Mapping | None = None,
  echo=print,
  families=FAMILIES,
  encoders: Mapping | None = None,
  batch_size: int = 256,
  progress: bool = True,
) -> dict:
  """C_T against depth for each encoder family; the paper's Figure 3.

  Args:
    dataset: data set name (picks the shipped encoders).
    train: uint8 ``[N, H, W(, C)]`` training images T (the reference's).
    test: uint8 ``[n, H, W(, C)]`` held-out images P (the reference's).
    fresh: uint8 further held-out images (the "test" probe's source).
    probe_size: images per probe.
    n_cells: k-means cells of each reference.
    seed: seed of the probes and k-means.
    out: folder for depth.png (None: no plot).
    cache_dir: embeddings cache folder (None: off).
    samples: optional generator samples, name -> uint8 images ``[m, H, W]``
      or a list of them (runs; each run scored, the curves averaged).
    echo: where progress lines go.
    families: which of `FAMILIES`.
    encoders: family -> Encoder replacing the shipped one (tests).
    batch_size: images per embedding call.
    progress: embedding progress bars.

  Returns:
    dict(markdown=section text, plot=PNG path or None, results=dict with,
    per family, layer names, widths, depths, curves (probe or sample name ->
    ``[L+1]`` C_T), trends (name -> `Trend` dict), summary sentence and the
    training report's test accuracy).
  """
  unknown = [f for f in families if f not in FAMILIES]
  if unknown:
    raise ValueError(f"unknown families {unknown}; expected some of {FAMILIES}")
  samples = {k: _as_runs(k, v) for k, v in (samples or {}).items()}
  clash = [k for k in samples if k in probes.PROBES]
  if clash:
    raise ValueError(f"sample names {clash} clash with probe names")
  images = {
    p: probe_images(p, train, fresh, probe_size, seed) for p in probes.PROBES
  }
  results = dict(
    dataset=dataset,
    n_train=int(len(train)),
    n_test=int(len(test)),
    probe_size=int(probe_size),
    n_cells=int(n_cells),
    seed=int(seed),
    rule=dict(min_rho=MIN_RHO, min_rise=MIN_RISE, text=RULE_TEXT),
    families={},
  )
  for family in families:
    start = time.perf_counter()
    if encoders and family in encoders:
      enc, acc = encoders[family], None
    else:
      enc = encoder_training.default_encoder(dataset, family)
      acc = encoder_training.training_report(dataset, family).get(
        "test_accuracy"
      )
    pool = pool_for(enc)

    def emb(x, enc=enc, pool=pool):
      return embed(
        enc,
        x,
        pool=pool,
        batch_size=batch_size,
        cache_dir=cache_dir,
        progress=progress,
      )

    echo(f"[depth] {family}: embedding T and P ({enc.config.tag})")
    ref = CTReference.fit(
      emb(train),
      emb(test),
      n_cells=n_cells,
      seed=seed,
      meta=dict(encoder=enc.identity, pool=pool, dataset=dataset),
      layer_names=enc.layer_names,
    )
    curves = {}
    for p, imgs in images.items():
      curves[p] = np.asarray(ref.score(emb(imgs)).ct, np.float64)
    runs_ct = {}
    for name, runs in samples.items():
      cts = np.stack(
        [np.asarray(ref.score(emb(r)).ct, np.float64) for r in runs]
      )
      runs_ct[name] = cts
      with warnings.catch_warnings():  # an all-NaN layer stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        curves[name] = np.nanmean(cts, axis=0)
    depth = relative_depth(enc.num_hidden_states)
    trends = {n: trend_verdict(c, depth) for n, c in curves.items()}
    name = FAMILY_NAMES[family]
    results["families"][family] = dict(
      encoder=enc.identity,
      source=enc.source,
      pool=pool,
      layers=list(enc.layer_names),
      widths=[int(w) for w in enc.widths],
      depth=depth.tolist(),
      test_accuracy=acc,
      curves={n: c.tolist() for n, c in curves.items()},
      sample_runs={n: c.tolist() for n, c in runs_ct.items()},
      trends={n: t.to_dict() for n, t in trends.items()},
      summary=_family_summary(name, trends),
      seconds=round(time.perf_counter() - start, 1),
    )
    echo(f"[depth] {family}: {time.perf_counter() - start:.0f} s")
  plot = None
  if out is not None:
    os.makedirs(out, exist_ok=True)
    plot = plot_depth(results, os.path.join(out, "depth.png"))
  markdown = markdown_section(results, os.path.basename(plot) if plot else None)
  return dict(markdown=markdown, plot=plot, results=results)


def split(dataset: str, n_fresh: int, seed: int):
  """The demo's split: (train, test P, fresh) from a permutation of the test
  split seeded by ``seed``."""
  data = datasets.load(dataset)
  perm = np.random.default_rng(seed).permutation(len(data.test_images))
  fresh = data.test_images[perm[:n_fresh]]
  test = data.test_images[perm[n_fresh:]]
  return data.train_images, test, fresh


def main(argv=None) -> dict:
  from ctjax.audit import demo  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(
    description="C_T against depth for the ViT, ResNet and Swin trained on a "
    "demo data set (the paper's Figure 3 in miniature)."
  )
  parser.add_argument(
    "--dataset", default="fashion_mnist", choices=tuple(demo.PRESETS)
  )
  parser.add_argument(
    "--out",
    default=None,
    help="report folder (default ctjax_out/depth-<dataset>)",
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--train-size",
    type=int,
    default=None,
    help="use the first N training images as T (default: all)",
  )
  parser.add_argument("--probe-size", type=int, default=None)
  parser.add_argument("--n-cells", type=int, default=None)
  parser.add_argument("--cache-dir", default=".ctjax_cache")
  parser.add_argument(
    "--generators",
    default="",
    help="comma-separated generator families whose cached (or freshly "
    "trained) samples are scored too, e.g. kde,gmm",
  )
  args = parser.parse_args(argv)
  cfg = demo.PRESETS[args.dataset]
  out = args.out or f"ctjax_out/depth-{args.dataset}"
  train, test, fresh = split(args.dataset, cfg.n_fresh, args.seed)
  if args.train_size:
    train = train[: args.train_size]
  probe_size = args.probe_size or cfg.probe_size
  samples = None
  cache = args.cache_dir or None
  if args.generators:
    from ctjax.audit import generators  # pylint: disable=g-import-not-at-top

    fams = [g for g in args.generators.split(",") if g]
    samples, _ = generators.samples_for_all(
      args.dataset,
      train,
      cfg.batch,
      families=fams,
      cache_dir=os.path.join(cache, "generators") if cache else None,
    )
  res = compare_families(
    args.dataset,
    train,
    test,
    fresh,
    probe_size=probe_size,
    n_cells=args.n_cells or cfg.n_cells,
    seed=args.seed,
    out=out,
    cache_dir=os.path.join(cache, "embeddings") if cache else None,
    samples=samples,
  )
  storage.write_json(res["results"], os.path.join(out, "depth.json"), indent=1)
  storage.write_bytes(res["markdown"].encode(), os.path.join(out, "depth.md"))
  print(res["markdown"])
  print(f"wrote {out}/depth.md, depth.json, depth.png")
  return res


if __name__ == "__main__":
  main()
