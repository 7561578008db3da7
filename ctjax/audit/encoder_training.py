"""The built-in default encoders: small ViTs, ResNets and Swins trained on
each demo data set.

Neither pretrained weights nor ImageNet-scale data are available offline, so
ctjax ships small encoders trained here on the training split of each data
set (ctjax/audit/assets/<family>-<dataset>/, Hugging Face layout:
config.json, model.safetensors, preprocessor_config.json, plus
head.safetensors and training_report.json). The ViT is the audit's default;
the ResNet and the Swin (transformers' ResNetModel and SwinModel
architectures) are trained the same way on the same pixels for the paper's
comparison of encoder families (ctjax.audit.depth). Reproduce a folder with::

  python -m ctjax.audit.encoder_training --dataset digits --seed 0 --out ctjax/audit/assets/vit-digits
  python -m ctjax.audit.encoder_training --family resnet --dataset fashion_mnist --seed 0 --out ctjax/audit/assets/resnet-fashion_mnist

Training sees exactly the pixels the embedding pipeline (ctjax.preprocess)
produces: each image is resized (shorter side to int(256/224 * S), bilinear,
antialiased) and the S x S centre crop is the evaluation input. Augmentation
is a random S x S crop of the resized image (optionally zero-padded first)
and, where it makes sense (clothes, not digits), a horizontal flip.

The classifier is a linear head on the pooled final output, as transformers'
<Family>ForImageClassification: the CLS token of the layer-normed output
(``last_hidden_state[:, 0]``) for the ViT, the global average of the last
feature map for the ResNet, the mean of the layer-normed tokens for the Swin.
It is stored in PyTorch layout under that class's names
(``classifier.weight [C, D]`` and ``classifier.bias [C]``; the ResNet's
classifier is ``classifier.1``, after a Flatten).

BatchNorm (the ResNet) trains on batch statistics and keeps running
statistics (momentum 0.1 and the unbiased variance, as torch); evaluation and
the exported folder use the running statistics.

  default_encoder(dataset, family="vit")       -> Encoder  the shipped weights
  random_encoder(dataset, seed, family="vit")  -> Encoder  same config, random init (control)
  default_head(dataset, family="vit")          -> Head
  to_hf_tensors(encoder)         -> {name: array}   inverse of convert.load_state
  train(config) / export(...)    -> train, then write a folder
"""

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ctjax.audit import datasets as ds
from ctjax import preprocess as pp
from ctjax import storage
from ctjax.stats import native
from ctjax.models import convert, layers, resnet
from ctjax.models.export import hf_config, to_hf_tensors
from ctjax.models.config import (
  AnyConfig,
  EncoderConfig,
  ResNetConfig,
  SwinConfig,
)
from ctjax.models.encoder import Encoder, forward, from_config

ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
HEAD_FILE = "head.safetensors"
REPORT_FILE = "training_report.json"
CONFIG_FILE = "config.json"
# Encoder families trained here; "vit" is the audit's default encoder.
FAMILIES = ("vit", "resnet", "swin")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How one default encoder is trained.

  Attributes:
    dataset: data set name (ctjax.audit.datasets.DATASETS).
    encoder: the encoder's config, 3 channels: a ViT EncoderConfig (model_type
      "vit"), a ResNetConfig or a SwinConfig.
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
  encoder: AnyConfig
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


def _resnet(image_size, embedding, widths, depths):
  return ResNetConfig(
    embedding_size=embedding,
    hidden_sizes=widths,
    depths=depths,
    layer_type="basic",
    image_size=image_size,
    image_mean=(0.5, 0.5, 0.5),
    image_std=(0.5, 0.5, 0.5),
  )


def _swin(image_size, patch, window, dim, depths, heads):
  return SwinConfig(
    patch_size=patch,
    embed_dim=dim,
    depths=depths,
    num_heads=heads,
    window_size=window,
    mlp_ratio=2.0,
    image_size=image_size,
    image_mean=(0.5, 0.5, 0.5),
    image_std=(0.5, 0.5, 0.5),
  )


# The ResNet and Swin of the family comparison: the ViT's data, image size,
# preprocessing, augmentation, optimiser and batch size; only the
# architecture and the step count differ (chosen so that each trains in
# minutes on a 2-core CPU). Fashion-MNIST at 28 px: the ResNet stem (7x7
# stride 2, max pool) gives 7x7 maps, then basic-block stages at 7, 4, 2 and
# 1 px (widths 16..128); the Swin embeds 4x4 patches (7x7 tokens), attends in
# 2x2 windows (shifted in odd blocks) and merges to 4x4 and 2x2 tokens
# (widths 32, 64, 128). Digits at 16 px: the same designs one size down.
FAMILY_DEFAULTS = {
  ("resnet", "fashion_mnist"): dataclasses.replace(
    DEFAULTS["fashion_mnist"],
    encoder=_resnet(28, 16, (16, 32, 64, 128), (1, 1, 1, 1)),
    steps=6000,
  ),
  ("swin", "fashion_mnist"): dataclasses.replace(
    DEFAULTS["fashion_mnist"],
    encoder=_swin(28, 4, 2, 32, (2, 2, 2), (2, 4, 8)),
    steps=3000,
  ),
  ("resnet", "digits"): dataclasses.replace(
    DEFAULTS["digits"],
    encoder=_resnet(16, 16, (16, 32, 64), (1, 1, 1)),
  ),
  ("swin", "digits"): dataclasses.replace(
    DEFAULTS["digits"],
    encoder=_swin(16, 2, 2, 24, (2, 2, 2), (2, 4, 8)),
  ),
}


def _check_family(family: str):
  if family not in FAMILIES:
    raise ValueError(
      f"unknown encoder family {family!r}; expected one of {FAMILIES}"
    )


def default_config(dataset: str, family: str = "vit") -> TrainConfig:
  """The TrainConfig of a shipped encoder (family "vit", "resnet" or "swin")."""
  _check_family(family)
  if dataset not in DEFAULTS:
    raise ValueError(
      f"no default encoder for data set {dataset!r}; expected one of "
      f"{tuple(DEFAULTS)}"
    )
  if family == "vit":
    return DEFAULTS[dataset]
  return FAMILY_DEFAULTS[(family, dataset)]


def family_of(config: AnyConfig) -> str:
  """ "vit", "resnet" or "swin" for a config this module trains."""
  if isinstance(config, EncoderConfig) and config.model_type == "vit":
    return "vit"
  if isinstance(config, ResNetConfig):
    return "resnet"
  if isinstance(config, SwinConfig):
    return "swin"
  raise ValueError(
    f"encoder training supports ViT, ResNet and Swin configs, got {config!r}"
  )


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


def pooled(config: AnyConfig, last_hidden_state):
  """What the head sees, as transformers' classification models.

  ViT: the CLS token of ``[B, T, D]``; ResNet: the global average of
  ``[B, H, W, C]``; Swin: the mean over the tokens of ``[B, T, C]``.
  Returns ``[B, D]``.
  """
  if isinstance(config, EncoderConfig):
    return last_hidden_state[:, 0]
  return last_hidden_state.mean(
    axis=tuple(range(1, last_hidden_state.ndim - 1))
  )


def logits_fn(graphdef, params, head: Head, pixels):
  """pixels ``[B, S, S, 3]`` normalised -> class logits ``[B, C]``.

  BatchNorm (if any) uses the running statistics in ``params``.
  """
  config = nnx.merge(graphdef, params).config  # static; trace time only
  h = forward(graphdef, params, pixels).last_hidden_state
  return pooled(config, h) @ head.kernel + head.bias


class _TrainBatchNorm(layers.BatchNorm):
  """BatchNorm in training mode: normalises with the batch statistics and
  moves the running ones towards them (torch's momentum 0.1; the running
  variance takes the unbiased batch variance, as torch)."""

  momentum = 0.1

  def __call__(self, x):
    """x: ``[..., C]`` -> ``[..., C]``; statistics over all but the last axis."""
    x32 = x.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    mean = x32.mean(axes)
    var = jnp.square(x32 - mean).mean(axes)
    n = x.size // x.shape[-1]
    m = self.momentum
    stat_mean, stat_var = jax.lax.stop_gradient((mean, var))
    self.mean[...] = (1 - m) * self.mean[...] + m * stat_mean
    self.var[...] = (1 - m) * self.var[...] + m * stat_var * (n / max(n - 1, 1))
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * self.scale[...] + self.bias[...]).astype(x.dtype)


def _max_pool(x, window: int, stride: int, padding: int):
  """layers.max_pool with a NumPy init value, which jax differentiates under
  jit (a jnp init value is a tracer there, and jax only knows the gradient of
  the max window reduction when the init value is a constant -inf)."""
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return jax.lax.reduce_window(
    x,
    np.array(-np.inf, x.dtype),
    jax.lax.max,
    (1, window, window, 1),
    (1, stride, stride, 1),
    pad,
  )


class _TrainResNet(resnet.ResNet):
  """ResNet.__call__ with a differentiable stem max pool (same values)."""

  def __call__(self, pixels):
    x = _max_pool(self.act(self.stem(pixels)), 3, 2, 1)
    states = [x]
    for stage in self.stages:
      x = stage(x)
      states.append(x)
    return resnet.EncoderOutput(
      hidden_states=tuple(states), last_hidden_state=x
    )


def train_logits_fn(graphdef, params, stats, head: Head, pixels):
  """Training-mode logits: BatchNorm on batch statistics.

  Args:
    graphdef: the encoder's GraphDef.
    params: its trainable nnx.State (everything but BatchStat).
    stats: its nnx.State of BatchStat (running statistics; empty for the
      ViT and the Swin).
    head: the Head.
    pixels: ``[B, S, S, 3]`` normalised.

  Returns:
    (logits ``[B, C]``, the updated running statistics).
  """
  model = nnx.merge(graphdef, params, stats, copy=True)
  for _, module in nnx.iter_modules(model):
    # This merged copy lives only inside the trace.
    if type(module) is layers.BatchNorm:  # pylint: disable=unidiomatic-typecheck
      module.__class__ = _TrainBatchNorm
    elif type(module) is resnet.ResNet:  # pylint: disable=unidiomatic-typecheck
      module.__class__ = _TrainResNet
  with jax.default_matmul_precision("highest"):
    h = model(pixels).last_hidden_state
  logits = pooled(model.config, h) @ head.kernel + head.bias
  return logits, nnx.state(model, nnx.BatchStat)


def split_stats(state):
  """An encoder's nnx.State -> (trainable State, BatchStat State)."""
  stats, params = nnx.split_state(state, nnx.BatchStat, ...)
  return params, stats


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
  """A jitted ``(params, stats, opt_state, data, labels, idx, step, seed) -> (params, stats, opt_state, loss)``.

  ``params`` is (trainable encoder nnx.State, Head) and ``stats`` the
  encoder's BatchStat State (`split_stats`); ``data`` ``[N, R, R, C]`` and
  ``labels`` ``[N]`` stay on device; ``idx`` ``[B]`` picks the batch;
  ``seed`` (int32, an argument so that one compilation serves every seed)
  and ``step`` key the augmentation. ``config.seed`` is not used.
  """
  enc = config.encoder

  def loss_fn(params, stats, pixels, labels):
    logits, stats = train_logits_fn(
      graphdef, params[0], stats, params[1], pixels
    )
    targets = optax.smooth_labels(
      jax.nn.one_hot(labels, num_classes), config.label_smoothing
    )
    return optax.softmax_cross_entropy(logits, targets).mean(), stats

  def step_fn(params, stats, opt_state, data, labels, idx, step, seed):
    key = jax.random.fold_in(jax.random.key(seed), step)
    x = augment(key, data[idx], enc.image_size, config.pad, config.flip)
    # XLA's forms of every layer, as when the shipped encoders were trained
    # (their weights are reproduced bit for bit); the native kernels would
    # change the forward pass at rounding level.
    with native.turned_off():
      (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, stats, _normalise(x, enc), labels[idx]
      )
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, loss

  return jax.jit(step_fn, donate_argnums=(0, 1, 2))


@functools.lru_cache(maxsize=8)
def _cached_step(config: TrainConfig, num_classes: int):
  """`make_train_step`, compiled once per (config but seed and subset,
  classes) in a process (the GraphDef follows from the config)."""
  graphdef = from_config(config.encoder).graphdef
  return make_train_step(graphdef, config, make_optimizer(config), num_classes)


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
  family_of(config.encoder)
  resized = jnp.asarray(resized_images(images, config.encoder))
  labels_d = jnp.asarray(labels, jnp.int32)
  encoder = from_config(config.encoder, seed=config.seed)
  trainable, stats = split_stats(encoder.params)
  params = (trainable, init_head(config.encoder, data.num_classes))
  optimizer = make_optimizer(config)
  opt_state = optimizer.init(params)
  step_fn = _cached_step(
    dataclasses.replace(config, seed=0, train_subset=None),
    data.num_classes,
  )
  seed = np.int32(config.seed)
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
    params, stats, opt_state, loss = step_fn(
      params, stats, opt_state, resized, labels_d, idx, np.int32(step), seed
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
    nnx.merge_state(params[0], stats),
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


# The classifier's tensor prefix in transformers' <Family>ForImageClassification
# (ResNet's classifier is Sequential(Flatten, Linear)).
HEAD_PREFIX = {
  "vit": "classifier",
  "resnet": "classifier.1",
  "swin": "classifier",
}


def head_tensors(head: Head, family: str = "vit") -> dict[str, np.ndarray]:
  """PyTorch layout, as <Family>ForImageClassification's classifier."""
  _check_family(family)
  prefix = HEAD_PREFIX[family]
  return {
    f"{prefix}.weight": np.ascontiguousarray(
      np.asarray(head.kernel, np.float32).T
    ),
    f"{prefix}.bias": np.asarray(head.bias, np.float32),
  }


def hf_config_for(config: AnyConfig):
  """The transformers config (ViTConfig, ResNetConfig, SwinConfig) of a
  ctjax config; ``image_size`` is kept in the ResNet's too (ctjax reads it)."""
  import transformers  # pylint: disable=g-import-not-at-top

  family = family_of(config)
  if family == "vit":
    return hf_config(config)
  if family == "resnet":
    return transformers.ResNetConfig(
      num_channels=config.num_channels,
      embedding_size=config.embedding_size,
      hidden_sizes=list(config.hidden_sizes),
      depths=list(config.depths),
      layer_type=config.layer_type,
      hidden_act=config.hidden_act,
      downsample_in_first_stage=config.downsample_in_first_stage,
      downsample_in_bottleneck=config.downsample_in_bottleneck,
      image_size=config.image_size,
      architectures=["ResNetModel"],
    )
  return transformers.SwinConfig(
    image_size=config.image_size,
    patch_size=config.patch_size,
    num_channels=config.num_channels,
    embed_dim=config.embed_dim,
    depths=list(config.depths),
    num_heads=list(config.num_heads),
    window_size=config.window_size,
    mlp_ratio=config.mlp_ratio,
    qkv_bias=config.qkv_bias,
    hidden_act=config.hidden_act,
    use_absolute_embeddings=config.use_absolute_embeddings,
    layer_norm_eps=config.layer_norm_eps,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    drop_path_rate=0.0,
    architectures=["SwinModel"],
  )


def write_hf_config(config: AnyConfig, folder: str) -> str:
  """Writes config.json atomically (ctjax.storage): the text transformers'
  ``save_pretrained`` writes (``to_json_string(use_diff=True)``), without its
  non-atomic write. Returns the path."""
  text = hf_config_for(config).to_json_string(use_diff=True)
  return storage.write_bytes(text.encode(), os.path.join(folder, CONFIG_FILE))


def export(
  folder: str,
  encoder: Encoder,
  head: Head | None = None,
  report: dict | None = None,
) -> str:
  """Writes a Hugging Face folder that ``ctjax.models.from_pretrained`` loads.

  Files: config.json, model.safetensors, preprocessor_config.json, and when
  given head.safetensors and training_report.json; each written atomically.
  The encoder is a ViT, ResNet or Swin (`family_of`).
  """
  from safetensors.numpy import save

  def write_tensors(tensors, name):
    data = save(tensors, metadata={"format": "pt"})
    storage.write_bytes(data, os.path.join(folder, name))

  family = family_of(encoder.config)
  os.makedirs(folder, exist_ok=True)
  write_hf_config(encoder.config, folder)
  write_tensors(to_hf_tensors(encoder), "model.safetensors")
  _write_json(
    os.path.join(folder, "preprocessor_config.json"),
    preprocessor_dict(encoder.config),
  )
  if head is not None:
    write_tensors(head_tensors(head, family), HEAD_FILE)
  if report is not None:
    _write_json(os.path.join(folder, REPORT_FILE), report)
  return folder


def _write_json(path, obj):
  storage.write_json(obj, path, indent=2, sort_keys=True)


# ------------------------------------------------------------------ loading


def _command(dataset: str, family: str, folder: str) -> str:
  flag = "" if family == "vit" else f"--family {family} "
  return (
    f"python -m ctjax.audit.encoder_training {flag}--dataset {dataset} "
    f"--out {folder}"
  )


def asset_folder(dataset: str = "digits", family: str = "vit") -> str:
  """The shipped folder of a data set's encoder of one family
  (assets/<family>-<dataset>)."""
  default_config(dataset, family)  # checks both names
  folder = os.path.join(ASSETS_DIR, f"{family}-{dataset}")
  if not os.path.exists(os.path.join(folder, "model.safetensors")):
    raise ValueError(
      f"{folder} holds no model.safetensors; recreate it with "
      f"`{_command(dataset, family, folder)}`"
    )
  return folder


def default_encoder(dataset: str = "digits", family: str = "vit") -> Encoder:
  """The shipped encoder of ``family`` ("vit": the audit's default,
  "resnet", "swin") trained on ``dataset``'s training split."""
  return convert.from_pretrained(asset_folder(dataset, family))


def random_encoder(
  dataset: str = "digits", seed: int = 0, family: str = "vit"
) -> Encoder:
  """The control: the shipped encoder's config with random weights."""
  config = convert.read_config(asset_folder(dataset, family))
  return from_config(config, seed=seed)


def load_head(folder: str) -> Head:
  """head.safetensors of a folder -> Head (any `HEAD_PREFIX` naming)."""
  from safetensors.numpy import load_file

  path = os.path.join(folder, HEAD_FILE)
  if not os.path.exists(path):
    raise ValueError(f"{folder} has no {HEAD_FILE}")
  t = load_file(path)
  for prefix in sorted(set(HEAD_PREFIX.values())):
    names = (f"{prefix}.weight", f"{prefix}.bias")
    if all(n in t for n in names):
      return Head(jnp.asarray(t[names[0]].T), jnp.asarray(t[names[1]]))
  raise ValueError(
    f"{path} lacks classifier.weight/classifier.bias (or classifier.1.*); "
    f"it holds {sorted(t)}"
  )


def default_head(dataset: str = "digits", family: str = "vit") -> Head:
  """The shipped classifier of a shipped encoder."""
  return load_head(asset_folder(dataset, family))


def training_report(dataset: str = "digits", family: str = "vit") -> dict:
  """The shipped training_report.json."""
  with open(os.path.join(asset_folder(dataset, family), REPORT_FILE)) as f:
    return json.load(f)


# ------------------------------------------------------------------ script


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", default="digits", choices=tuple(DEFAULTS))
  parser.add_argument("--family", default="vit", choices=FAMILIES)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--steps", type=int, default=None, help="override the default step count"
  )
  parser.add_argument(
    "--out", default=None, help="folder to write (default: print only)"
  )
  args = parser.parse_args(argv)
  config = dataclasses.replace(
    default_config(args.dataset, args.family), seed=args.seed
  )
  if args.steps is not None:
    config = dataclasses.replace(config, steps=args.steps)
  data = ds.load(args.dataset)
  print(f"training a {args.family} on {args.dataset}: {config.encoder}")
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
      f"--family {args.family}" if args.family != "vit" else "",
      f"--dataset {args.dataset}",
      f"--seed {args.seed}",
      f"--steps {args.steps}" if args.steps is not None else "",
      f"--out {args.out}" if args.out else "",
    )
    if a
  )
  # What a test checks the shipped folder against, cheaply: the accuracy on
  # the first 1000 test images and the logits of the first 8.
  first = data.test_images[:1000]
  pixels = pp.preprocess(first[:8], preprocess_config(config.encoder))
  logits = logits_fn(
    result.encoder.graphdef, result.encoder.params, result.head, pixels
  )
  report = {
    "dataset": args.dataset,
    "test_accuracy_first_1000": accuracy(
      result.encoder, result.head, first, data.test_labels[:1000]
    ),
    "test_logits_first_8": np.asarray(logits, np.float64).round(6).tolist(),
    "family": args.family,
    "parameters": int(
      sum(
        np.size(x)
        for x in jax.tree.leaves(split_stats(result.encoder.params)[0])
      )
    ),
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
