"""The generator families, their data-set presets, and cached fit/sample.

``FAMILIES[name]`` gives ``train(images, seed, progress, **hparams) -> model``
and ``sample(model, n, seed) -> uint8 images``. "ddpm" and "ddim" share one
trained network (``Family.trainer == "ddpm"``): two samplers, two
"architectures" for fingerprinting, as in the paper's DDPM/DDIM/PNDM.

Training a family costs from nothing (KDE) to minutes (the DDPM network on
Fashion-MNIST), which is why trained models and samples are cached; the costs
measured for the presets are listed in docs/audit.md.
"""

import dataclasses
import hashlib
import json
import os
import time
from typing import Any
from collections.abc import Callable, Mapping

import numpy as np

from ctjax import progress as progress_lib
from ctjax.audit.generators import cache, common, ddpm, gan, gmm, kde, vae


@dataclasses.dataclass(frozen=True)
class Family:
  """One generator family.

  Attributes:
    name: family name (the fingerprint label).
    trainer: family whose trained model this one samples from.
    train: ``(images, seed, progress=True, **hparams) -> GeneratorModel``.
    sample: ``(model, n, seed) -> uint8 [n, *image_shape]``.
    config: hyperparameter dataclass (defaults = the digits preset).
    presets: data-set name -> config instance.
  """

  name: str
  trainer: str
  train: Callable
  sample: Callable
  config: type
  presets: Mapping[str, Any]


def _family(name, module, sample=None, trainer=None):
  return Family(
    name,
    trainer or name,
    module.train,
    sample or module.sample,
    module.Config,
    module.PRESETS,
  )


FAMILIES = {
  "kde": _family("kde", kde),
  "gmm": _family("gmm", gmm),
  "vae": _family("vae", vae),
  "gan": _family("gan", gan),
  "ddpm": _family("ddpm", ddpm),
  "ddim": _family("ddim", ddpm, sample=ddpm.sample_ddim, trainer="ddpm"),
}
SEEDS = (0, 1, 2)


def get_family(name):
  if name not in FAMILIES:
    raise ValueError(
      f"unknown generator family {name!r}; expected one of {sorted(FAMILIES)}."
    )
  return FAMILIES[name]


def hparams_for(family, dataset_name, **overrides):
  """The family's preset for ``dataset_name`` (else its defaults) + overrides.

  Returns:
    JSON-able dict of every hyperparameter.
  """
  fam = get_family(family)
  base = fam.presets.get(dataset_name, fam.config())
  merged = dict(common.hparams_dict(base), **overrides)
  return common.hparams_dict(common.make_config(fam.config, merged))


def data_digest(images):
  """Short SHA-256 of the images' shape and bytes."""
  images = np.ascontiguousarray(images)
  h = hashlib.sha256(repr((images.shape, str(images.dtype))).encode())
  h.update(images.tobytes())
  return h.hexdigest()[:16]


def model_key(family, dataset_name, images, seed, hparams):
  """Cache key of a trained model: trainer, data set, data, seed, hparams."""
  fam = get_family(family)
  spec = {
    "trainer": fam.trainer,
    "dataset": dataset_name,
    "seed": int(seed),
    "hparams": hparams,
    "data": data_digest(images),
  }
  return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[
    :16
  ]


def model_path(cache_dir, family, dataset_name, images, seed, hparams):
  fam = get_family(family)
  key = model_key(family, dataset_name, images, seed, hparams)
  return os.path.join(
    cache_dir, dataset_name, fam.trainer, f"model-seed{seed}-{key}.npz"
  )


def fit_or_load(
  family,
  dataset_name,
  images,
  seed,
  cache_dir=None,
  hparams=None,
  progress=True,
):
  """Trains family ``family`` on ``images`` with ``seed``, or loads the cache.

  Args:
    family: a key of FAMILIES ("ddim" trains/loads the "ddpm" network).
    dataset_name: names the preset and the cache folder.
    images: uint8 ``[N, H, W(, C)]`` training images.
    seed: training seed (one "run").
    cache_dir: folder of the cache; None trains without caching.
    hparams: overrides of the data set's preset.
    progress: show progress bars.

  Returns:
    A GeneratorModel.
  """
  fam = get_family(family)
  images = common.check_images(images, "training images")
  hp = hparams_for(family, dataset_name, **(hparams or {}))
  path = None
  if cache_dir is not None:
    path = model_path(cache_dir, family, dataset_name, images, seed, hp)
    if os.path.exists(path):
      return cache.load_model(path)
  model = fam.train(images, seed, progress=progress, **hp)
  if path is not None:
    cache.save_model(path, model)
  return model


def default_sample_seed(seed):
  """Sampling seed used when none is given: distinct from training seeds."""
  return 1000 + int(seed)


def samples_or_load(
  family,
  dataset_name,
  images,
  seed,
  n,
  cache_dir=None,
  sample_seed=None,
  hparams=None,
  progress=True,
):
  """``n`` samples of run ``seed`` of ``family``, from the cache if present.

  Returns:
    uint8 ``[n, *images.shape[1:]]``.
  """
  fam = get_family(family)
  if sample_seed is None:
    sample_seed = default_sample_seed(seed)
  images = common.check_images(images, "training images")
  hp = hparams_for(family, dataset_name, **(hparams or {}))
  path = None
  if cache_dir is not None:
    key = model_key(family, dataset_name, images, seed, hp)
    path = os.path.join(
      cache_dir,
      dataset_name,
      family,
      f"samples-seed{seed}-n{n}-s{sample_seed}-{key}.npz",
    )
    if os.path.exists(path):
      return cache.load_samples(path)[0]
  model = fit_or_load(
    family, dataset_name, images, seed, cache_dir, hparams, progress
  )
  out = fam.sample(model, n, sample_seed)
  if path is not None:
    cache.save_samples(
      path,
      out,
      {
        "family": family,
        "seed": int(seed),
        "sample_seed": int(sample_seed),
        "dataset": dataset_name,
        "hparams": hp,
      },
    )
  return out


def samples_for_all(
  dataset_name,
  images,
  n,
  seeds=SEEDS,
  families=None,
  cache_dir=None,
  progress=True,
):
  """Samples of every run of every family, with wall times.

  Returns:
    ``(samples, seconds)``: ``samples[family][i]`` uint8 ``[n, H, W(, C)]``
    for ``seeds[i]``; ``seconds[family]`` the wall time of all its runs
    (training, or cache loading, plus sampling).
  """
  families = tuple(families or FAMILIES)
  samples, seconds = {}, {}
  with progress_lib.bar(
    total=len(families) * len(seeds),
    desc="generator runs",
    show=progress,
  ) as bar:
    for family in families:
      start = time.perf_counter()
      samples[family] = []
      for s in seeds:
        bar.set_postfix_str(f"{family} seed {s}")
        samples[family].append(
          samples_or_load(
            family, dataset_name, images, s, n, cache_dir, progress=progress
          )
        )
        bar.update(1)
      seconds[family] = time.perf_counter() - start
  return samples, seconds
