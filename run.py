"""ctjax's command line: C_T scores, fingerprints, and the built-in demo.

  python run.py                      # the built-in default (digits demo)
  python run.py --dataset fashion_mnist
  python run.py score --train T --test P --gen Q --encoder ENC [--reference R]
  python run.py enroll --library L.json --label NAME --gen Q --reference R --encoder ENC
  python run.py identify --library L.json --gen Q --reference R --encoder ENC
  python run.py evaluate --library L.json --query NAME=Q ... --reference R --encoder ENC
  python run.py select --train T --test P --encoder ENC [--probes DIR]

Inputs (--train/--test/--gen/--query) are image folders (PNG/JPEG), .npy/.npz
image arrays [N, H, W(, C)], or .npz files of embeddings (no encoder
needed): an 'embeddings' array [layers, N, D], or, for encoders whose layers
differ in width (ResNet, ConvNeXt, Swin, Inception-v3), one array per layer
'embeddings_00', 'embeddings_01', ... [N, D_l] with an optional
'layer_names' (ctjax.embedding_files.save writes both). --encoder is a Hugging
Face folder (config.json + model.safetensors), default:DATASET for the shipped
encoder, or random:DATASET[:SEED] for its untrained control.
Errors in the input print one line and exit with code 2.
"""

import sys

from absl import app
from absl import flags
from absl import logging

# The choices of the enum flags, written out so that `run.py --help` (and any
# flag error) answers without importing JAX. tests/cli_faults_test.py checks
# them against ctjax.stats.neighbors.METRICS and ctjax.fingerprint.rules.
METRICS = ("l2", "cosine")
SIMILARITIES = ("paper", "cosine", "l2")
AGGREGATES = ("nearest", "centroid")
BOOTSTRAP_MODES = ("gen", "test", "gen+test")
RULES = (
  "paper",
  "cosine",
  "l2",
  "paper-centroid",
  "cosine-centroid",
  "l2-centroid",
)

COMMANDS = ("demo", "score", "enroll", "identify", "evaluate", "select")

flags.DEFINE_string("train", None, "Training set T: images or embeddings.")
flags.DEFINE_string("test", None, "Held-out test set P: images or embeddings.")
flags.DEFINE_string("gen", None, "Generated set Q: images or embeddings.")
flags.DEFINE_string(
  "encoder",
  None,
  "Encoder: HF folder, default:DATASET or random:DATASET[:SEED].",
)
flags.DEFINE_string(
  "reference",
  None,
  "Fitted reference (.npz): loaded if it exists, else fitted "
  "from --train/--test and saved there (score).",
)
flags.DEFINE_string("out", None, "Output folder (default ctjax_out/<command>).")
flags.DEFINE_enum("pool", "cls", ["cls", "mean"], "Token pooling per layer.")
flags.DEFINE_enum(
  "metric",
  "cosine",
  list(METRICS),
  "Distance: 1 - |cos| (the paper) or Euclidean (Meehan).",
)
flags.DEFINE_integer(
  "n_components", None, "PCA dimension per layer (default min(64, N, D))."
)
flags.DEFINE_integer("n_cells", 10, "k-means cells per layer.")
flags.DEFINE_float("tau", None, "Generated-share threshold (default 20/m).")
flags.DEFINE_integer(
  "seed", 0, "Seed of k-means (and of the demo, and of score's bootstrap)."
)
flags.DEFINE_integer("embed_batch_size", 64, "Images per encoder call.")
flags.DEFINE_string(
  "cache_dir", ".ctjax_cache", "Embedding cache folder ('' disables the cache)."
)
flags.DEFINE_integer(
  "gallery_layer",
  None,
  "Layer of the copy gallery (default: most negative C_T).",
)
flags.DEFINE_integer("gallery_size", 16, "Pairs shown in the copy gallery.")
flags.DEFINE_integer(
  "bootstrap",
  1000,
  "score: bootstrap replicates for C_T intervals (0: none).",
)
flags.DEFINE_float(
  "confidence", 0.95, "score: nominal level of the bootstrap intervals."
)
flags.DEFINE_enum(
  "bootstrap_mode",
  "gen",
  list(BOOTSTRAP_MODES),
  "score: points the bootstrap resamples (cells and distances stay fixed).",
)
flags.DEFINE_string("library", None, "Fingerprint library (.json).")
flags.DEFINE_string("label", None, "Generator label to enrol.")
flags.DEFINE_multi_string("query", [], "LABEL=PATH query set (evaluate).")
flags.DEFINE_integer("batch_size", 500, "Generated images per C_T curve.")
flags.DEFINE_enum(
  "similarity",
  "paper",
  list(SIMILARITIES),
  "Curve similarity of a new library (enroll).",
)
flags.DEFINE_enum(
  "aggregate",
  "nearest",
  list(AGGREGATES),
  "Score per label of a new library: nearest curve or mean curve (enroll).",
)
flags.DEFINE_enum(
  "library_metric",
  None,
  list(RULES),
  "Deprecated: the rule's short name; use --similarity and --aggregate.",
)
flags.DEFINE_integer("top_k", 3, "Labels listed per query batch (identify).")
flags.DEFINE_string(
  "probes",
  None,
  "select: folder of probe kinds (KIND.npz/.npy or KIND/); default: "
  "built from --train.",
)
flags.DEFINE_integer("n_batches", 20, "select: batches per probe kind.")
flags.DEFINE_bool(
  "allow_duplicates",
  False,
  "enroll: enrol curves already in the library under the label again.",
)
flags.DEFINE_string(
  "dataset", "digits", "Demo data set: digits or fashion_mnist."
)
flags.DEFINE_bool("quick", False, "Demo: fewer generator runs and samples.")

FLAGS = flags.FLAGS


def _run(command):
  import ctjax  # pylint: disable=g-import-not-at-top
  from ctjax import cli  # pylint: disable=g-import-not-at-top

  ctjax.enable_compilation_cache()
  f = FLAGS

  def given(name):
    # A fit setting the user did not pass is not "requested" (see cli.score).
    return getattr(f, name) if f[name].present else None

  cache = f.cache_dir or None
  out = f.out or f"ctjax_out/{command}"
  common = dict(encoder=f.encoder, pool=f.pool, cache_dir=cache)
  if command == "demo":
    from ctjax.audit import demo  # pylint: disable=g-import-not-at-top

    return demo.run(
      dataset=f.dataset,
      out=f.out or f"ctjax_out/demo-{f.dataset}",
      seed=f.seed,
      quick=f.quick,
      cache_dir=cache,
    )
  if command == "score":
    return cli.score(
      train=f.train,
      test=f.test,
      gen=f.gen,
      reference=f.reference,
      out=out,
      batch_size=f.embed_batch_size,
      metric=given("metric"),
      n_components=f.n_components,
      n_cells=given("n_cells"),
      tau=f.tau,
      seed=given("seed"),
      gallery_layer=f.gallery_layer,
      gallery_size=f.gallery_size,
      bootstrap=f.bootstrap,
      confidence=f.confidence,
      bootstrap_mode=f.bootstrap_mode,
      **common,
    )
  if command == "select":
    return cli.select(
      train=f.train,
      test=f.test,
      probes=f.probes,
      out=out,
      embed_batch_size=f.embed_batch_size,
      batch_size=f.batch_size if f["batch_size"].present else None,
      n_batches=f.n_batches,
      tau=f.tau,
      metric=f.metric,
      n_cells=f.n_cells,
      n_components=f.n_components,
      seed=f.seed,
      **common,
    )
  fp = dict(
    library=f.library,
    reference=f.reference,
    batch_size=f.batch_size,
    embed_batch_size=f.embed_batch_size,
    tau=f.tau,
    **common,
  )
  if command == "enroll":
    similarity, aggregate = f.similarity, f.aggregate
    if f.library_metric is not None:
      from ctjax.fingerprint import rules  # pylint: disable=g-import-not-at-top

      similarity, aggregate = rules.parse_rule(f.library_metric)
    return cli.enroll(
      label=f.label,
      gen=f.gen,
      similarity=similarity,
      aggregate=aggregate,
      allow_duplicates=f.allow_duplicates,
      **fp,
    )
  if command == "identify":
    return cli.identify(gen=f.gen, top_k=f.top_k, **fp)
  return cli.evaluate(queries=f.query, out=out, **fp)


def main(argv):
  logging.set_verbosity(logging.WARNING)
  args = argv[1:]
  command = args[0] if args else "demo"
  if command not in COMMANDS or len(args) > 1:
    print(
      f"error: unknown command {' '.join(args)!r}; choose one of "
      f"{', '.join(COMMANDS)} (see --help)",
      file=sys.stderr,
    )
    sys.exit(2)
  import ctjax  # pylint: disable=g-import-not-at-top

  # Set before JAX starts: one XLA device where the native search kernel
  # builds (it runs on every core itself), else one per core (at most 2),
  # the layers split between them; CTJAX_CPU_DEVICES overrides
  # (ctjax/devices.py).
  ctjax.use_cpu_devices()
  try:
    _run(command)
  except ValueError as e:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)
  except OSError as e:
    # A file system refusal (permissions, a name too long, a full disk):
    # something the user fixes, named with its path.
    where = f": {e.filename}" if e.filename else ""
    print(f"error: {e.strerror or e}{where}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
