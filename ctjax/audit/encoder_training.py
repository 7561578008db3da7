"""The built-in default encoders: small ViTs trained on each demo data set.

Neither pretrained ViT weights nor ImageNet-scale data are available offline,
so ctjax ships small ViTs trained here on the training split of each data set
(ctjax/audit/assets/vit-<dataset>/, Hugging Face layout: config.json,
model.safetensors, preprocessor_config.json, plus head.safetensors and
training_report.json). Reproduce a folder with::

  python -m ctjax.audit.encoder_training --dataset digits --seed 0 --out ctjax/audit/assets/vit-digits

Training sees exactly the pixels the embedding pipeline (ctjax.preprocess)
produces: each image is resized (shorter side to int(256/224 * S), bilinear,
antialiased) and the S x S centre crop is the evaluation input. Augmentation
is a random S x S crop of the resized image (optionally zero-padded first)
and, where it makes sense (clothes, not digits), a horizontal flip.

The classifier is a linear head on the CLS token of the final layer-normed
output (``last_hidden_state[:, 0]``), as transformers'
ViTForImageClassification; it is stored in PyTorch layout
(``classifier.weight [C, D]``, ``classifier.bias [C]``).

  default_encoder(dataset)       -> Encoder    the shipped weights
  random_encoder(dataset, seed)  -> Encoder    same config, random init (control)
  default_head(dataset)          -> Head
  to_hf_tensors(encoder)         -> {name: array}   inverse of convert.load_state
  train(config) / export(...)    -> train, then write a folder
"""

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ctjax.audit import datasets as ds
from ctjax import preprocess as pp
from ctjax import storage
from ctjax.models import convert
from ctjax.models.export import hf_config, to_hf_tensors
from ctjax.models.config import EncoderConfig
from ctjax.models.encoder import Encoder, forward, from_config

ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
HEAD_FILE = "head.safetensors"
REPORT_FILE = "training_report.json"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How one default encoder is trained.

  Attributes:
    dataset: data set name (ctjax.audit.datasets.DATASETS).
    encoder: the EncoderConfig of the ViT (model_type "vit", 3 channels).
    steps: optimiser steps.
    batch_size: images per step.
    learning_rate: peak AdamW learning rate (linear warm-up, cosine decay to 0).
    warmup_steps: warm-up length.
    weight_decay: AdamW decoupled weight decay on kernels only.
    label_smoothing: label smoothing of the cross-entropy.
    grad_clip: global-norm gradient clipping.
    pad: zero padding (pixels per side) of the resized image before the random crop.
    flip: random horizontal flips.
    seed: seed of the initialisation, batch order and augmentation.
    train_subset: use only the first n training images (None: all); for tests.
  """

  dataset: str
  encoder: EncoderConfig
  steps: int
  batch_size: int = 128
  learning_rate: float = 1e-3
  warmup_steps: int = 100
  weight_decay: float = 0.05
  label_smoothing: float = 0.1
  grad_clip: float = 1.0
  pad: int = 0
  flip: bool = False
  seed: int = 0
  train_subset: int | None = None


def _vit(image_size, patch_size, hidden, layers, heads, mlp):
  return EncoderConfig(
    model_type="vit",
    hidden_size=hidden,
    num_layers=layers,
    num_heads=heads,
    head_dim=hidden // heads,
    mlp_dim=mlp,
    patch_size=patch_size,
    image_size=image_size,
    num_channels=3,
    qkv_bias=True,
    layer_norm_eps=1e-12,
    hidden_act="gelu",
  )


# The shipped encoders. Digits: 8x8 images upsampled to 18 and cropped to 16,
# 4x4 patches (16 patch tokens). Fashion-MNIST: 28x28 from a 32x32 resize,
# 7x7 patches (16 patch tokens). The step counts are those the shipped
# weights were trained with; each asset folder's training_report.json records
# the accuracy they reached. Fewer steps (``--steps``) give a weaker encoder.
DEFAULTS = {
  "digits": TrainConfig(
    dataset="digits",
    encoder=_vit(16, 4, 64, 4, 4, 128),
    steps=600,
    batch_size=128,
    learning_rate=2e-3,
    warmup_steps=60,
    weight_decay=0.05,
    pad=1,
    flip=False,
  ),
  "fashion_mnist": TrainConfig(
    dataset="fashion_mnist",
    encoder=_vit(28, 7, 96, 6, 4, 192),
    steps=15000,
    batch_size=64,
    learning_rate=2e-3,
    warmup_steps=50,
    weight_decay=0.05,
    label_smoothing=0.0,
    pad=0,
    flip=True,
  ),
}


class Head(NamedTuple):
  """Linear classifier on the CLS token of ``last_hidden_state``.

  Attributes:
    kernel: ``[D, C]``.
    bias: ``[C]``.
  """

  kernel: jax.Array
  bias: jax.Array


# ------------------------------------------------------------------ data


def preprocess_config(config: EncoderConfig) -> pp.PreprocessConfig:
  """The embedding pipeline's preprocessing for this encoder."""
  return pp.PreprocessConfig(
    config.image_size, tuple(config.image_mean), tuple(config.image_std)
  )


def resized_images(
  images, config: EncoderConfig, chunk: int = 4096
) -> np.ndarray:
  """The embedding pipeline's resize, without its centre crop.

  Args:
    images: uint8 ``[N, H, W]`` grayscale (or ``[N, H, W, C]``).
    config: the encoder config (image_size S).
    chunk: images per jitted call.

  Returns:
    float32 ``[N, R, R', C']`` in [0, 1] (R = int(256/224 * S) on the shorter
    side; C' = 1 for grayscale input, else 3). The pipeline's input is the
    centre S x S crop (``centre_crop``).
  """
  shape = pp.check_images(images)
  rh, rw = pp.resized_hw(
    shape[1], shape[2], preprocess_config(config).resize_side
  )
  if rh != rw:
    raise ValueError(f"training needs square images, got {shape[1]}x{shape[2]}")
  # The pipeline's resize with a crop of the full resized size (a no-op).
  full = pp.PreprocessConfig(image_size=rh, resize_ratio=1.0)
  grayscale = images.ndim == 3 or shape[-1] == 1
  fn = jax.jit(lambda x: pp.resize_crop(x, full))
  out = []
  for i in range(0, len(images), chunk):
    x = np.asarray(fn(jnp.asarray(images[i : i + chunk])))
    out.append(x[..., :1] if grayscale else x)
  return np.concatenate(out)


def centre_crop(x, image_size: int):
  """x ``[N, R, R, C]`` -> the centred ``[N, S, S, C]`` crop (preprocess's offsets)."""
  top, left = pp.crop_offsets(x.shape[1], x.shape[2], image_size)
  return x[:, top : top + image_size, left : left + image_size]


def augment(key, x, image_size: int, pad: int, flip: bool):
  """Random crop (after zero padding) and optional horizontal flip.

  Args:
    key: PRNG key.
    x: ``[B, R, R, C]`` resized images in [0, 1].
    image_size: crop side S.
    pad: zero padding per side before cropping.
    flip: flip half of the images left-right.

  Returns:
    ``[B, S, S, C]``.
  """
  b, r, _, c = x.shape
  if pad:
    x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  span = r + 2 * pad - image_size + 1
  k_off, k_flip = jax.random.split(key)
  offsets = jax.random.randint(k_off, (b, 2), 0, span)
  crop = jax.vmap(
    lambda im, o: jax.lax.dynamic_slice(
      im, (o[0], o[1], 0), (image_size, image_size, c)
    )
  )(x, offsets)
  if flip:
    do = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1))
    crop = jnp.where(do, crop[:, :, ::-1], crop)
  return crop


def _normalise(x, config: EncoderConfig):
  """``[B, S, S, C]`` in [0, 1] -> ``[B, S, S, 3]`` normalised (as ctjax.preprocess)."""
  x = jnp.broadcast_to(x, x.shape[:-1] + (3,))
  return pp.normalize(x, preprocess_config(config))


# ------------------------------------------------------------------ model


def logits_fn(graphdef, params, head: Head, pixels):
  """pixels ``[B, S, S, 3]`` normalised -> class logits ``[B, C]``."""
  cls = forward(graphdef, params, pixels).last_hidden_state[:, 0]
  return cls @ head.kernel + head.bias


def _decay_mask(tree):
  """Weight decay on matrices (kernels) only; not on biases, norms, tokens."""

  def is_kernel(path, _):
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    return "kernel" in names

  return jax.tree_util.tree_map_with_path(is_kernel, tree)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(
    0.0,
    config.learning_rate,
    config.warmup_steps,
    max(config.steps, config.warmup_steps + 1),
    end_value=0.0,
  )
  return optax.chain(
    optax.clip_by_global_norm(config.grad_clip),
    optax.adamw(
      schedule,
      b1=0.9,
      b2=0.999,
      weight_decay=config.weight_decay,
      mask=_decay_mask,
    ),
  )


def init_head(config: EncoderConfig, num_classes: int) -> Head:
  """Zero-initialised head (the usual choice for a fresh classifier)."""
  return Head(
    jnp.zeros((config.hidden_size, num_classes), jnp.float32),
    jnp.zeros((num_classes,), jnp.float32),
  )


def make_train_step(graphdef, config: TrainConfig, optimizer, num_classes: int):
  """A jitted ``(params, opt_state, data, labels, idx, step) -> (params, opt_state, loss)``.

  ``params`` is (encoder nnx.State, Head); ``data`` ``[N, R, R, C]`` and
  ``labels`` ``[N]`` stay on device; ``idx`` ``[B]`` picks the batch.
  """
  enc = config.encoder
  base_key = jax.random.key(config.seed)

  def loss_fn(params, pixels, labels):
    logits = logits_fn(graphdef, params[0], params[1], pixels)
    targets = optax.smooth_labels(
      jax.nn.one_hot(labels, num_classes), config.label_smoothing
    )
    return optax.softmax_cross_entropy(logits, targets).mean()

  def step_fn(params, opt_state, data, labels, idx, step):
    key = jax.random.fold_in(base_key, step)
    x = augment(key, data[idx], enc.image_size, config.pad, config.flip)
    loss, grads = jax.value_and_grad(loss_fn)(
      params, _normalise(x, enc), labels[idx]
    )
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step_fn, donate_argnums=(0, 1))


class TrainResult(NamedTuple):
  """Attributes:
  encoder: the trained Encoder.
  head: its Head.
  losses: float32 ``[steps]`` training loss of every step.
  train_seconds: wall time of the optimisation loop (compilation included).
  """

  encoder: Encoder
  head: Head
  losses: np.ndarray
  train_seconds: float


def train(
  config: TrainConfig,
  data: ds.Dataset | None = None,
  log_every: int = 500,
  log=print,
) -> TrainResult:
  """Trains the encoder and head on the training split.

  Args:
    config: the TrainConfig.
    data: the data set (default: ``ctjax.audit.datasets.load(config.dataset)``).
    log_every: print the mean loss every this many steps (0: never).
    log: where progress lines go.
  """
  data = data if data is not None else ds.load(config.dataset)
  images, labels = data.train_images, data.train_labels
  if config.train_subset is not None:
    images, labels = (
      images[: config.train_subset],
      labels[: config.train_subset],
    )
  if len(images) < config.batch_size:
    raise ValueError(
      f"batch_size {config.batch_size} exceeds the {len(images)} training images"
    )
  resized = jnp.asarray(resized_images(images, config.encoder))
  labels_d = jnp.asarray(labels, jnp.int32)
  encoder = from_config(config.encoder, seed=config.seed)
  params = (encoder.params, init_head(config.encoder, data.num_classes))
  optimizer = make_optimizer(config)
  opt_state = optimizer.init(params)
  step_fn = make_train_step(
    encoder.graphdef, config, optimizer, data.num_classes
  )
  rng = np.random.default_rng(config.seed)
  per_epoch = len(images) // config.batch_size
  order = None
  losses = []
  start = time.perf_counter()
  for step in range(config.steps):
    if step % per_epoch == 0:  # reshuffle every epoch; drop the ragged tail
      order = rng.permutation(len(images))[: per_epoch * config.batch_size]
      order = order.reshape(per_epoch, config.batch_size).astype(np.int32)
    idx = order[step % per_epoch]
    params, opt_state, loss = step_fn(
      params, opt_state, resized, labels_d, idx, np.int32(step)
    )
    losses.append(loss)
    if log_every and (step + 1) % log_every == 0:
      recent = float(jnp.mean(jnp.stack(losses[-log_every:])))
      log(
        f"step {step + 1}/{config.steps}  loss {recent:.4f}  "
        f"{time.perf_counter() - start:.0f}s"
      )
  losses = (
    np.asarray(jnp.stack(losses)) if losses else np.zeros((0,), np.float32)
  )
  seconds = time.perf_counter() - start
  trained = Encoder(
    config.encoder,
    encoder.graphdef,
    params[0],
    source=f"trained:{config.dataset}",
  )
  return TrainResult(trained, params[1], losses, seconds)


def predict(
  encoder: Encoder, head: Head, images, batch_size: int = 500
) -> np.ndarray:
  """Class predictions through the embedding pipeline's preprocessing.

  Args:
    encoder: the Encoder.
    head: its Head.
    images: uint8 ``[N, H, W]`` or ``[N, H, W, C]``.
    batch_size: images per jitted call (the last batch is padded).

  Returns:
    int ``[N]`` predicted classes.
  """
  pp.check_images(images)
  pre = preprocess_config(encoder.config)
  graphdef = encoder.graphdef

  @jax.jit
  def run(params, head, x):
    return jnp.argmax(
      logits_fn(graphdef, params, head, pp.preprocess_fn(x, pre)), -1
    )

  out = []
  for i in range(0, len(images), batch_size):
    chunk = np.asarray(images[i : i + batch_size])
    n = len(chunk)
    if n < batch_size:
      chunk = np.concatenate(
        [chunk, np.zeros((batch_size - n,) + chunk.shape[1:], chunk.dtype)]
      )
    out.append(np.asarray(run(encoder.params, head, jnp.asarray(chunk)))[:n])
  return np.concatenate(out)


def accuracy(
  encoder: Encoder, head: Head, images, labels, batch_size: int = 500
) -> float:
  """Fraction of ``images`` ``[N, H, W]`` classified as ``labels`` ``[N]``."""
  return float(
    np.mean(predict(encoder, head, images, batch_size) == np.asarray(labels))
  )


# ------------------------------------------------------------------ export


def preprocessor_dict(config: EncoderConfig) -> dict:
  """preprocessor_config.json: resize to int(256/224*S), centre-crop S (DeiT's processor)."""
  pre = preprocess_config(config)
  return {
    "image_processor_type": "DeiTImageProcessor",
    "do_resize": True,
    "size": {"height": pre.resize_side, "width": pre.resize_side},
    "resample": 2,  # PIL bilinear
    "do_center_crop": True,
    "crop_size": {"height": config.image_size, "width": config.image_size},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": list(pre.mean),
    "image_std": list(pre.std),
  }


def head_tensors(head: Head) -> dict[str, np.ndarray]:
  """PyTorch layout, as ViTForImageClassification's ``classifier``."""
  return {
    "classifier.weight": np.ascontiguousarray(
      np.asarray(head.kernel, np.float32).T
    ),
    "classifier.bias": np.asarray(head.bias, np.float32),
  }


def export(
  folder: str,
  encoder: Encoder,
  head: Head | None = None,
  report: dict | None = None,
) -> str:
  """Writes a Hugging Face folder that ``ctjax.models.from_pretrained`` loads.

  Files: config.json, model.safetensors, preprocessor_config.json, and when
  given head.safetensors and training_report.json.
  """
  from safetensors.numpy import save

  def write_tensors(tensors, name):
    data = save(tensors, metadata={"format": "pt"})
    storage.write_bytes(data, os.path.join(folder, name))

  os.makedirs(folder, exist_ok=True)
  hf_config(encoder.config).save_pretrained(folder)
  write_tensors(to_hf_tensors(encoder), "model.safetensors")
  _write_json(
    os.path.join(folder, "preprocessor_config.json"),
    preprocessor_dict(encoder.config),
  )
  if head is not None:
    write_tensors(head_tensors(head), HEAD_FILE)
  if report is not None:
    _write_json(os.path.join(folder, REPORT_FILE), report)
  return folder


def _write_json(path, obj):
  storage.write_json(obj, path, indent=2, sort_keys=True)


# ------------------------------------------------------------------ loading


def asset_folder(dataset: str = "digits") -> str:
  """The shipped folder of a data set's default encoder."""
  if dataset not in DEFAULTS:
    raise ValueError(
      f"no default encoder for data set {dataset!r}; expected one of "
      f"{tuple(DEFAULTS)}"
    )
  folder = os.path.join(ASSETS_DIR, f"vit-{dataset}")
  if not os.path.exists(os.path.join(folder, "model.safetensors")):
    raise ValueError(
      f"{folder} holds no model.safetensors; recreate it with `python -m "
      f"ctjax.audit.encoder_training --dataset {dataset} --out {folder}`"
    )
  return folder


def default_encoder(dataset: str = "digits") -> Encoder:
  """The shipped encoder trained on ``dataset``'s training split."""
  return convert.from_pretrained(asset_folder(dataset))


def random_encoder(dataset: str = "digits", seed: int = 0) -> Encoder:
  """The control: the default encoder's config with random weights."""
  encoder = from_config(convert.read_config(asset_folder(dataset)), seed=seed)
  return encoder


def load_head(folder: str) -> Head:
  """head.safetensors of a folder -> Head."""
  from safetensors.numpy import load_file

  path = os.path.join(folder, HEAD_FILE)
  if not os.path.exists(path):
    raise ValueError(f"{folder} has no {HEAD_FILE}")
  t = load_file(path)
  missing = {"classifier.weight", "classifier.bias"} - set(t)
  if missing:
    raise ValueError(f"{path} lacks {sorted(missing)}")
  return Head(
    jnp.asarray(t["classifier.weight"].T), jnp.asarray(t["classifier.bias"])
  )


def default_head(dataset: str = "digits") -> Head:
  """The shipped classifier of the default encoder."""
  return load_head(asset_folder(dataset))


def training_report(dataset: str = "digits") -> dict:
  """The shipped training_report.json."""
  with open(os.path.join(asset_folder(dataset), REPORT_FILE)) as f:
    return json.load(f)


# ------------------------------------------------------------------ script


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", default="digits", choices=tuple(DEFAULTS))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--steps", type=int, default=None, help="override the default step count"
  )
  parser.add_argument(
    "--out", default=None, help="folder to write (default: print only)"
  )
  args = parser.parse_args(argv)
  config = dataclasses.replace(DEFAULTS[args.dataset], seed=args.seed)
  if args.steps is not None:
    config = dataclasses.replace(config, steps=args.steps)
  data = ds.load(args.dataset)
  print(f"training {args.dataset}: {config.encoder}")
  print(
    f"  {config.steps} steps x {config.batch_size} images on {jax.devices()[0].platform}"
  )
  start = time.perf_counter()
  result = train(config, data, log_every=max(1, config.steps // 10))
  test_acc = accuracy(
    result.encoder, result.head, data.test_images, data.test_labels
  )
  train_acc = accuracy(
    result.encoder,
    result.head,
    data.train_images[:10000],
    data.train_labels[:10000],
  )
  command = "python -m ctjax.audit.encoder_training " + " ".join(
    a
    for a in (
      f"--dataset {args.dataset}",
      f"--seed {args.seed}",
      f"--steps {args.steps}" if args.steps is not None else "",
      f"--out {args.out}" if args.out else "",
    )
    if a
  )
  report = {
    "dataset": args.dataset,
    "seed": args.seed,
    "steps": config.steps,
    "batch_size": config.batch_size,
    "train_config": {
      k: v for k, v in dataclasses.asdict(config).items() if k != "encoder"
    },
    "encoder_config": config.encoder.to_dict(),
    "train_images": int(len(data.train_images)),
    "test_images": int(len(data.test_images)),
    "test_accuracy": test_acc,
    "train_accuracy_first_10000": train_acc,
    "final_loss_mean_last_100": float(np.mean(result.losses[-100:])),
    "train_seconds": round(result.train_seconds, 1),
    "total_seconds": round(time.perf_counter() - start, 1),
    "platform": f"{jax.devices()[0].platform} ({os.cpu_count()} cores)",
    "versions": {
      "jax": jax.__version__,
      "optax": optax.__version__,
      "flax": _version("flax"),
      "python": sys.version.split()[0],
    },
    "command": command,
  }
  print(
    f"test accuracy {test_acc:.4f}  train accuracy {train_acc:.4f}  "
    f"({report['train_seconds']}s training)"
  )
  if args.out:
    export(args.out, result.encoder, result.head, report)
    print(f"wrote {args.out}")
  return report


def _version(package: str) -> str:
  from importlib.metadata import version

  return version(package)


if __name__ == "__main__":
  main()
