"""All-layer embeddings of an image collection: ``embed(encoder, images)``.

Images (an array, a folder of PNG/JPEG, an .npy/.npz file) are streamed in
chunks; each batch is preprocessed and encoded in one jitted call (one
compilation per batch shape; the last batch is padded), pooled per layer
(CLS token or mean of patch tokens or of a feature map), and the
``[L+1, N, D]`` float32 result (a list of ``[N, D_l]`` arrays for encoders
whose layers differ in width: ResNet, ConvNeXt, Swin, Inception) is cached on
disk when ``cache_dir`` is given. With several local devices the
batch axis is sharded across them, and with several processes each embeds its
share of the inputs (both policies in `ctjax.sharding`).
"""

import copy
import dataclasses
import functools
import hashlib
import os
import warnings
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from ctjax import preprocess as pp
from ctjax import progress as progress_lib
from ctjax import sharding
from ctjax import xla_options
from ctjax.storage import EmbeddingCache

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
POOLS = ("cls", "mean")
CACHE_VERSION = 2


# ----------------------------------------------------------------- sources


class ArraySource:
  """Images held as one array ``[N, H, W, C]`` / ``[N, H, W]`` (or a memmap)."""

  resize = True

  def __init__(self, images, name: str = "array"):
    self.images = images
    self.name = name
    pp.check_images(images)
    if len(images) == 0:
      raise ValueError(f"{name} holds no images")
    if np.issubdtype(np.dtype(images.dtype), np.floating):
      lo, hi = float(np.min(images)), float(np.max(images))
      if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(
          f"float images in {name} must lie in [0, 1]; got [{lo:.3g}, {hi:.3g}] "
          "(pass uint8 for 0..255 data)"
        )

  def __len__(self):
    return len(self.images)

  def fingerprint(self) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(
      f"{np.dtype(self.images.dtype).str}|{tuple(self.images.shape)}|".encode()
    )
    step = 4096
    for i in range(0, len(self.images), step):
      h.update(np.ascontiguousarray(self.images[i : i + step]).tobytes())
    return h.hexdigest()

  def load(self, start: int, stop: int):
    """-> (images ``[n, H, W, C]``, names of skipped items)."""
    return np.asarray(self.images[start:stop]), []


class FolderSource:
  """PNG/JPEG files under a folder (recursive), in sorted relative-path order.

  Images of equal size are resized on device; if sizes differ, each image is
  resized and cropped on the host with PIL (the same pipeline) instead.
  """

  def __init__(self, folder: str, config: pp.PreprocessConfig, skip_bad: bool):
    self.folder = os.fspath(folder)
    self.config = config
    self.skip_bad = skip_bad
    paths = []
    for root, dirs, files in os.walk(self.folder):
      dirs.sort()
      paths += [
        os.path.join(root, f)
        for f in files
        if f.lower().endswith(IMAGE_EXTENSIONS)
      ]
    self.paths = sorted(
      paths, key=lambda p: os.path.relpath(p, self.folder).replace(os.sep, "/")
    )
    if not self.paths:
      raise ValueError(
        f"folder {self.folder} contains no {'/'.join(IMAGE_EXTENSIONS)} images"
      )
    sizes = {self._header_size(p) for p in self.paths} - {None}
    self.resize = len(sizes) <= 1

  def _header_size(self, path):
    from PIL import Image

    try:
      with Image.open(path) as im:
        return im.size
    except Exception as e:  # noqa: BLE001 -- PIL raises many types for bad files.
      if not self.skip_bad:
        raise ValueError(
          f"cannot read image {path}: {type(e).__name__}: {e}"
        ) from e
      return None

  def __len__(self):
    return len(self.paths)

  def fingerprint(self) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in self.paths:
      st = os.stat(p)
      h.update(
        f"{os.path.relpath(p, self.folder)}|{st.st_size}|{st.st_mtime_ns}\n".encode()
      )
    return h.hexdigest()

  def _read(self, path):
    from PIL import Image

    with Image.open(path) as im:
      im.load()
      im = pp.pil_to_rgb(im, path).convert("RGB")
      if self.resize:
        return np.asarray(im, np.uint8)
      return pp.host_resize_crop(im, self.config)

  def load(self, start: int, stop: int):
    """-> (uint8 images ``[n, H, W, 3]``, paths of unreadable files skipped)."""
    images, skipped = [], []
    for path in self.paths[start:stop]:
      try:
        images.append(self._read(path))
      except Exception as e:  # noqa: BLE001 -- PIL raises many types for bad files.
        if not self.skip_bad:
          raise ValueError(
            f"cannot read image {path}: {type(e).__name__}: {e}"
          ) from e
        skipped.append(path)
    if not images:
      return np.zeros((0, 1, 1, 3), np.uint8), skipped
    return np.stack(images), skipped


class HostResized:
  """An ArraySource resized and cropped on the host with PIL
  (`preprocess.host_resize_crop`): transformers' recipes, whose PIL resize
  is reproduced exactly this way (see `ctjax.preprocess`)."""

  resize = False

  def __init__(self, source: ArraySource, config: pp.PreprocessConfig):
    self.source = source
    self.config = config
    self.name = source.name

  def __len__(self):
    return len(self.source)

  def fingerprint(self) -> str:
    return self.source.fingerprint()

  def load(self, start: int, stop: int):
    """-> (uint8 images ``[n, S, S, 3]``, [])."""
    from PIL import Image

    images, _ = self.source.load(start, stop)
    if images.dtype != np.uint8:  # float in [0, 1]: to 8 bits, as PIL needs
      images = np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)
    if images.ndim == 4 and images.shape[-1] == 1:
      images = images[..., 0]
    out = [
      pp.host_resize_crop(Image.fromarray(im).convert("RGB"), self.config)
      for im in images
    ]
    if not out:
      s = self.config.image_size
      return np.zeros((0, s, s, 3), np.uint8), []
    return np.stack(out), []


def _npz_source(path: str) -> "ArraySource":
  """The images array of an .npz ('images', or its only array)."""
  with np.load(path, allow_pickle=False) as z:
    keys = list(z.keys())
    key = (
      "images" if "images" in keys else (keys[0] if len(keys) == 1 else None)
    )
    if key is None:
      raise ValueError(
        f"{path} holds arrays {keys}; name the images array 'images'"
      )
    return ArraySource(z[key], name=f"{path}:{key}")


def as_source(images, config: pp.PreprocessConfig, skip_bad: bool = False):
  """An ArraySource or FolderSource for an array, a folder, or an .npy/.npz file."""
  if isinstance(images, (str, os.PathLike)):
    path = os.fspath(images)
    if os.path.isdir(path):
      return FolderSource(path, config, skip_bad)
    if not os.path.exists(path):
      raise ValueError(f"no such file or folder: {path}")
    if path.endswith(".npy"):
      try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
      except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"cannot read image array {path}: {e}") from e
      return ArraySource(array, name=path)
    if path.endswith(".npz"):
      try:
        return _npz_source(path)
      except (OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(
          f"cannot read image archive {path}: {type(e).__name__}: {e}"
        ) from e
    raise ValueError(
      f"{path}: expected a folder of images, an .npy or an .npz file"
    )
  if isinstance(images, (list, tuple)):
    shapes = {np.shape(im) for im in images}
    if len(shapes) > 1:
      raise ValueError(
        f"images in the list differ in shape ({sorted(shapes)[:3]}...); "
        "pass a folder or resize them first"
      )
    images = (
      np.stack([np.asarray(im) for im in images])
      if images
      else np.zeros((0, 1, 1, 3))
    )
  if isinstance(images, jax.Array):
    images = np.asarray(images)
  if not isinstance(images, np.ndarray):
    raise ValueError(
      f"unsupported images of type {type(images).__name__}; pass an array "
      "[N, H, W, C], a folder, or an .npy/.npz path"
    )
  return ArraySource(images)


# ----------------------------------------------------------------- compute


@dataclasses.dataclass(frozen=True)
class _StepSpec:
  """Everything static about one jitted embedding step (hashable)."""

  graphdef: object
  preprocess: pp.PreprocessConfig
  resize: bool
  layers: tuple[int, ...]
  pool: str
  dtype: str
  num_prefix: int
  cpu_options: tuple  # sorted (name, value) XLA:CPU options (`_options_key`)


def _pool_map(h, pool: str, num_prefix: int):
  """One hidden state ``[B, T, D]`` or ``[B, H, W, D]`` -> ``[B, D]`` float32.

  "cls" takes the first token; "mean" averages the patch tokens (after
  ``num_prefix`` CLS/distillation/register tokens) or every spatial position.
  """
  if pool == "cls":
    return h[:, 0].astype(jnp.float32)
  h = h[:, num_prefix:] if h.ndim == 3 else h
  return h.astype(jnp.float32).mean(axis=tuple(range(1, h.ndim - 1)))


def _step_impl(spec: _StepSpec, params, images):
  """images ``[B, H, W, C]`` raw -> pooled ``[len(layers), B, D]`` float32.

  For an encoder whose hidden states are a tuple (ResNet, Swin...), a tuple
  of ``[B, D_l]`` arrays, stacked when the selected widths agree.
  """
  # Flax loads with the first encoder used, not with `import ctjax.embedding`
  # (which `from ctjax import *` does).
  from ctjax.models.encoder import forward  # pylint: disable=g-import-not-at-top

  pixels = pp.preprocess_fn(images, spec.preprocess, spec.resize)
  hidden = forward(
    spec.graphdef, params, pixels, jnp.dtype(spec.dtype)
  ).hidden_states
  if isinstance(hidden, (tuple, list)):
    pooled = [
      _pool_map(hidden[l], spec.pool, spec.num_prefix) for l in spec.layers
    ]
    if len({p.shape[-1] for p in pooled}) == 1:
      return jnp.stack(pooled)
    return tuple(pooled)
  if spec.layers != tuple(range(hidden.shape[0])):
    hidden = hidden[np.asarray(spec.layers)]
  if spec.pool == "cls":
    pooled = hidden[:, :, 0]
  else:
    pooled = hidden[:, :, spec.num_prefix :].astype(jnp.float32).mean(axis=2)
  return pooled.astype(jnp.float32)


_STEPS: dict = {}  # sorted XLA:CPU options -> `_step_impl` compiled with them


def _step(spec: _StepSpec, params, images):
  """`_step_impl` compiled with the XLA:CPU options `Encoder` uses for this
  encoder (``spec.cpu_options``; `ctjax.models.encoder.cpu_options`)."""
  fn = _STEPS.get(spec.cpu_options)
  if fn is None:
    # A partial of its own per set: jit functions of the same Python
    # function share one cache, so the sets' compilations would mix.
    fn = xla_options.cpu_jit(
      functools.partial(_step_impl), dict(spec.cpu_options), static_argnums=0
    )
    fn = _STEPS.setdefault(spec.cpu_options, fn)
  return fn(spec, params, images)


def _step_cache_size() -> int:
  """Compilations of `_step`, over every set of options (for tests)."""
  return sum(f._cache_size() for f in _STEPS.values())  # pylint: disable=protected-access


def _step_clear_cache():
  """Drops `_step`'s compilations (for tests)."""
  for f in _STEPS.values():
    f.clear_cache()


def _options_key(encoder) -> tuple:
  """The XLA:CPU options of ``encoder``'s forward, as a hashable key."""
  from ctjax.models.encoder import cpu_options  # pylint: disable=g-import-not-at-top

  return tuple(sorted(cpu_options(encoder.config).items()))


def _resolve_layers(layers, num_states: int) -> tuple[int, ...]:
  if layers is None:
    return tuple(range(num_states))
  out = []
  for layer in [layers] if isinstance(layers, int) else layers:
    if not -num_states <= int(layer) < num_states:
      raise ValueError(
        f"layer {layer} is out of range for an encoder with {num_states} "
        f"hidden states (0..{num_states - 1})"
      )
    out.append(int(layer) % num_states)
  if not out:
    raise ValueError("layers is empty")
  return tuple(out)


def embed(
  encoder,
  images,
  *,
  pool: str = "cls",
  layers=None,
  batch_size: int = 64,
  dtype="float32",
  cache_dir=None,
  skip_bad: bool = False,
  progress: bool = True,
  chunk_size: int | None = None,
  preprocess=None,
) -> np.ndarray | list[np.ndarray]:
  """Pooled embeddings of every (or the selected) hidden state.

  Args:
    encoder: a ctjax.models.Encoder.
    images: ``[N, H, W, C]`` (C in {1, 3}) or ``[N, H, W]`` array, uint8 or
      float in [0, 1]; or a folder of PNG/JPEG images (recursive, sorted by
      relative path); or an .npy / .npz file (array named "images" or the only one).
    pool: "cls" (the first token, as the paper) or "mean" (mean of the patch
      tokens, excluding CLS/distillation/register tokens; the global average
      of a feature map or token map for ResNet, ConvNeXt, Swin, Inception).
    layers: hidden-state indices to keep (0 = embedding output); None = all.
    batch_size: images per jitted call (rounded up to a multiple of the local
      device count); the last batch is padded, so there is one compilation.
    dtype: compute dtype, "float32" or "bfloat16" (accelerators).
    cache_dir: if set, results are cached under it, keyed by the encoder's
      identity, preprocessing, pool, layers, dtype and a fingerprint of the data;
      an interrupted run resumes from its finished chunks.
    skip_bad: unreadable images are skipped with a warning instead of an error.
    progress: show a tqdm progress bar (``CTJAX_PROGRESS=0`` turns every
      ctjax bar off).
    chunk_size: images per cached chunk (default 32 batches).
    preprocess: the preprocessing recipe: None (the encoder's:
      `ctjax.preprocess.PreprocessConfig.from_encoder`, from the checkpoint's
      preprocessor_config.json or the family's default), "paper" (the
      paper's pipeline at the encoder's size, mean and std), a
      preprocessor_config.json dict or path, or a PreprocessConfig. Its
      identity is part of the cache key.

  Returns:
    float32 array ``[len(layers), N, D]`` (N counts only readable images);
    for an encoder whose selected layers differ in width (ResNet, Swin...),
    a list of ``len(layers)`` float32 arrays ``[N, D_l]``.

  Raises:
    ValueError: ``pool="cls"`` on an encoder without a CLS token (every
      family but the ViT family and CLIP), bad arguments or unreadable data.
  """
  if pool not in POOLS:
    raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
  if pool == "cls" and not encoder.stacked:
    raise ValueError(
      f"pool='cls' needs a CLS token, and {encoder.config.model_type} "
      "encoders have none (their layers are feature maps or token maps); "
      "use pool='mean' (the global average of each layer)"
    )
  dtype = jnp.dtype(dtype).name
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"dtype must be float32 or bfloat16, got {dtype}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  layers = _resolve_layers(layers, encoder.num_hidden_states)
  pconfig = preprocess_config(encoder, preprocess)
  source = as_source(images, pconfig, skip_bad)
  if jax.process_count() > 1:
    # Several JAX processes (hosts): each embeds its contiguous share of the
    # inputs on its own devices; the shares come back in input order.
    n_total = len(source)
    local = _embed_source(
      encoder,
      _process_share(source, skip_bad),
      pconfig,
      layers,
      pool,
      dtype,
      batch_size,
      cache_dir,
      progress,
      chunk_size,
    )
    if isinstance(local, list):
      return [sharding.gather_in_order(x, n_total) for x in local]
    return np.moveaxis(
      sharding.gather_in_order(np.moveaxis(local, 1, 0), n_total), 0, 1
    )
  return _embed_source(
    encoder,
    source,
    pconfig,
    layers,
    pool,
    dtype,
    batch_size,
    cache_dir,
    progress,
    chunk_size,
  )


def preprocess_config(encoder, preprocess=None) -> pp.PreprocessConfig:
  """The PreprocessConfig ``embed(..., preprocess=...)`` uses (see there)."""
  if preprocess is None:
    return pp.PreprocessConfig.from_encoder(encoder)
  if isinstance(preprocess, pp.PreprocessConfig):
    return preprocess
  if isinstance(preprocess, dict):
    return pp.from_processor_dict(preprocess)
  if isinstance(preprocess, str) and preprocess == "paper":
    return pp.PreprocessConfig.paper(encoder)
  if isinstance(preprocess, (str, os.PathLike)) and os.path.isfile(preprocess):
    return pp.read_processor_file(os.fspath(preprocess))
  raise ValueError(
    f"preprocess must be None, 'paper', a preprocessor_config.json dict or "
    f"path, or a PreprocessConfig; got {preprocess!r}"
  )


def _process_share(source, skip_bad: bool):
  """This process's contiguous share of ``source`` (`sharding.process_share`)."""

  if skip_bad:
    raise ValueError(
      "skip_bad=True needs a single JAX process: with several, "
      "every share must keep its size to be gathered in order"
    )
  share = sharding.process_share(len(source))
  if isinstance(source, FolderSource):
    sub = copy.copy(source)
    sub.paths = source.paths[share]
    return sub
  return ArraySource(
    source.images[share], name=f"{source.name}[{share.start}:{share.stop}]"
  )


def _embed_source(
  encoder,
  source,
  pconfig,
  layers,
  pool,
  dtype,
  batch_size,
  cache_dir,
  progress,
  chunk_size,
):
  """`embed` of one source on this process's devices: ``[L, n, D]``, or a
  list of L ``[n, D_l]`` arrays when the layers' widths differ."""
  if pconfig.pil_rounding:
    # transformers' recipes: PIL on the host reproduces their processors
    # exactly (on device, only to within a few 8-bit levels).
    if isinstance(source, ArraySource):
      source = HostResized(source, pconfig)
    elif isinstance(source, FolderSource):
      source = copy.copy(source)
      source.resize = False
  n = len(source)
  widths = tuple(encoder.widths[l] for l in layers)
  mixed = len(set(widths)) > 1
  # The cache holds one [L, n, D] array; layers of different widths are
  # stored side by side along the feature axis as [1, n, sum(D_l)].
  c_layers, c_dim = (1, sum(widths)) if mixed else (len(layers), widths[0])
  entry = None
  if cache_dir is not None:
    entry = EmbeddingCache(
      cache_dir,
      {
        "version": CACHE_VERSION,
        "encoder": encoder.identity,
        "preprocess": pconfig.identity(),
        "host_resize": not source.resize,
        "pool": pool,
        "layers": list(layers),
        "dtype": dtype,
        "data": source.fingerprint(),
        "n": n,
        **({"layout": "concat"} if mixed else {}),
      },
    )
    done = entry.load(c_layers, c_dim)
    if done is not None:
      _warn_skipped(done[1])
      return _unpack(done[0], widths) if mixed else done[0]

  batch_size, params, put = sharding.data_parallel(encoder.params, batch_size)
  chunk_size = chunk_size or 32 * batch_size
  spec = _StepSpec(
    encoder.graphdef,
    pconfig,
    source.resize,
    layers,
    pool,
    dtype,
    encoder.num_prefix_tokens,
    _options_key(encoder),
  )
  bar = progress_lib.bar(total=n, unit="img", desc="embed", show=progress)
  chunks, skipped = [], []
  for start in range(0, n, chunk_size):
    stop = min(start + chunk_size, n)
    cached = (
      entry.get_chunk(start, stop, c_layers, c_dim)
      if entry is not None
      else None
    )
    if cached is None:
      batch, bad = source.load(start, stop)
      result = _encode(spec, params, put, batch, batch_size, widths)
      if entry is not None:
        entry.put_chunk(start, stop, _pack(result), bad)
    else:
      result, bad = cached
      result = _unpack(result, widths) if mixed else result
    chunks.append(result)
    skipped += bad
    bar.update(stop - start)
  bar.close()
  if mixed:
    out = [np.concatenate(c, axis=0) for c in zip(*chunks)]
  else:
    out = np.concatenate(chunks, axis=1)
  if out[0].shape[0 if mixed else 1] == 0:
    raise ValueError(f"none of the {n} images could be read")
  if entry is not None:
    entry.finish(_pack(out), skipped)
  _warn_skipped(skipped)
  return out


def _pack(result):
  """A list of ``[n, D_l]`` -> one ``[1, n, sum(D_l)]`` (arrays unchanged)."""
  if isinstance(result, list):
    return np.concatenate(result, axis=-1)[None]
  return result


def _unpack(packed: np.ndarray, widths) -> list:
  """`_pack`'s inverse: ``[1, n, sum(D_l)]`` -> a list of ``[n, D_l]``."""
  return np.split(packed[0], np.cumsum(widths)[:-1], axis=-1)


def _encode(
  spec: _StepSpec, params, put, images: np.ndarray, batch_size: int, widths
):
  """images ``[n, H, W, C]`` -> ``[len(layers), n, D]``, in padded batches.

  With layers of different ``widths``: a list of ``[n, D_l]`` arrays.
  """
  n = len(images)
  outs = []
  for start in range(0, n, batch_size):
    batch = images[start : start + batch_size]
    pad = batch_size - len(batch)
    if pad:
      batch = np.concatenate(
        [batch, np.zeros((pad,) + batch.shape[1:], batch.dtype)]
      )
    outs.append(
      (_step(spec, params, put(batch)), batch_size - pad)
    )  # dispatched async
  if len(set(widths)) > 1:
    if not outs:
      return [np.zeros((0, w), np.float32) for w in widths]
    return [
      np.concatenate([np.asarray(o[l])[:k] for o, k in outs])
      for l in range(len(widths))
    ]
  if not outs:
    return np.zeros((len(spec.layers), 0, widths[0]), np.float32)
  return np.concatenate([np.asarray(o)[:, :k] for o, k in outs], axis=1)


def _warn_skipped(skipped) -> None:
  if skipped:
    shown = ", ".join(skipped[:10]) + (" ..." if len(skipped) > 10 else "")
    warnings.warn(
      f"skipped {len(skipped)} unreadable image(s): {shown}", stacklevel=3
    )
