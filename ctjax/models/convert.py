"""Loading Hugging Face checkpoints into ctjax encoders.

Families: ViT, DeiT, DINOv2 (with registers), CLIP's vision tower (a
CLIPVisionModel, or the ``vision_model.`` tensors of a CLIPModel), ResNet,
ConvNeXt and Swin.

A table maps every ctjax parameter to a checkpoint tensor and a transpose
rule. The abstract model comes from ``nnx.eval_shape``; tensors are read with
safetensors' NumPy loader (torch is only needed for ``pytorch_model.bin``);
every missing, unexpected or mis-shaped tensor is collected and reported in
one ValueError before anything is merged.
"""

import json
import os
import re
from collections.abc import Callable, Mapping

import numpy as np
from flax import nnx

from ctjax.models.config import AnyConfig, EncoderConfig, from_hf_config
from ctjax.models.encoder import Encoder, family_module, module_class

# Prefixes of task models (ViTForImageClassification etc.) around the encoder.
_PREFIXES = ("vit.", "deit.", "dinov2.", "dinov2_with_registers.")
# Tensors outside the encoder that checkpoints may carry; ignored.
_IGNORED = (
  "pooler.",
  "classifier.",
  "cls_classifier.",
  "distillation_classifier.",
  "embeddings.mask_token",
  "decoder.",
  "lm_head.",
)

# Rule = (checkpoint name, checkpoint shape, function checkpoint array -> ctjax array).
Rule = tuple[str, tuple[int, ...], Callable[[np.ndarray], np.ndarray]]


def _t(w):
  return w.T


def _linear(
  prefix: str, n_in: int, n_out: int, bias: bool = True
) -> dict[str, Rule]:
  rules = {"kernel": (f"{prefix}.weight", (n_out, n_in), _t)}
  if bias:
    rules["bias"] = (f"{prefix}.bias", (n_out,), lambda b: b)
  return rules


def _norm(prefix: str, d: int) -> dict[str, Rule]:
  return {
    "scale": (f"{prefix}.weight", (d,), lambda w: w),
    "bias": (f"{prefix}.bias", (d,), lambda b: b),
  }


def _block_rules(c: EncoderConfig, i: int) -> dict:
  d, h, k, f = c.hidden_size, c.num_heads, c.head_dim, c.mlp_dim
  if c.model_type == "clip_vision_model":
    return _clip_block_rules(c, i)
  p = f"encoder.layer.{i}"
  dino = c.model_type.startswith("dinov2")

  def qkv(name):
    rules = {
      "kernel": (
        f"{p}.attention.attention.{name}.weight",
        (h * k, d),
        lambda w: w.T.reshape(d, h, k),
      )
    }
    if c.qkv_bias:
      rules["bias"] = (
        f"{p}.attention.attention.{name}.bias",
        (h * k,),
        lambda b: b.reshape(h, k),
      )
    return rules

  block = {
    "norm1": _norm(f"{p}.norm1" if dino else f"{p}.layernorm_before", d),
    "norm2": _norm(f"{p}.norm2" if dino else f"{p}.layernorm_after", d),
    "attn": {
      "query": qkv("query"),
      "key": qkv("key"),
      "value": qkv("value"),
      "out": {
        "kernel": (
          f"{p}.attention.output.dense.weight",
          (d, h * k),
          lambda w: w.T.reshape(h, k, d),
        ),
        "bias": (f"{p}.attention.output.dense.bias", (d,), lambda b: b),
      },
    },
  }
  if c.swiglu:  # weights_in stacks [gate; up] along the output axis.
    block["mlp"] = {
      "gate": {
        "kernel": (f"{p}.mlp.weights_in.weight", (2 * f, d), lambda w: w[:f].T),
        "bias": (f"{p}.mlp.weights_in.bias", (2 * f,), lambda b: b[:f]),
      },
      "up": {
        "kernel": (f"{p}.mlp.weights_in.weight", (2 * f, d), lambda w: w[f:].T),
        "bias": (f"{p}.mlp.weights_in.bias", (2 * f,), lambda b: b[f:]),
      },
      "down": _linear(f"{p}.mlp.weights_out", f, d),
    }
  elif dino:
    block["mlp"] = {
      "fc1": _linear(f"{p}.mlp.fc1", d, f),
      "fc2": _linear(f"{p}.mlp.fc2", f, d),
    }
  else:
    block["mlp"] = {
      "fc1": _linear(f"{p}.intermediate.dense", d, f),
      "fc2": _linear(f"{p}.output.dense", f, d),
    }
  if c.layer_scale:
    block["ls1"] = {"scale": (f"{p}.layer_scale1.lambda1", (d,), lambda w: w)}
    block["ls2"] = {"scale": (f"{p}.layer_scale2.lambda1", (d,), lambda w: w)}
  return block


def _clip_block_rules(c: EncoderConfig, i: int) -> dict:
  d, h, k, f = c.hidden_size, c.num_heads, c.head_dim, c.mlp_dim
  p = f"encoder.layers.{i}"

  def qkv(name):
    return {
      "kernel": (
        f"{p}.self_attn.{name}.weight",
        (h * k, d),
        lambda w: w.T.reshape(d, h, k),
      ),
      "bias": (
        f"{p}.self_attn.{name}.bias",
        (h * k,),
        lambda b: b.reshape(h, k),
      ),
    }

  return {
    "norm1": _norm(f"{p}.layer_norm1", d),
    "norm2": _norm(f"{p}.layer_norm2", d),
    "attn": {
      "query": qkv("q_proj"),
      "key": qkv("k_proj"),
      "value": qkv("v_proj"),
      "out": {
        "kernel": (
          f"{p}.self_attn.out_proj.weight",
          (d, h * k),
          lambda w: w.T.reshape(h, k, d),
        ),
        "bias": (f"{p}.self_attn.out_proj.bias", (d,), lambda b: b),
      },
    },
    "mlp": {
      "fc1": _linear(f"{p}.mlp.fc1", d, f),
      "fc2": _linear(f"{p}.mlp.fc2", f, d),
    },
  }


def _clip_tree(c: EncoderConfig) -> dict:
  d, pch = c.hidden_size, c.patch_size
  n_pos = 1 + c.grid_size**2
  return {
    "patch_embed": {
      "proj": {
        "kernel": (
          "embeddings.patch_embedding.weight",
          (d, c.num_channels, pch, pch),
          lambda w: w.transpose(2, 3, 1, 0),
        )
      }
    },
    "cls_token": ("embeddings.class_embedding", (d,), lambda t: t[None]),
    "pos_embed": (
      "embeddings.position_embedding.weight",
      (n_pos, d),
      lambda t: t,
    ),
    "pre_norm": _norm("pre_layrnorm", d),
    "blocks": {i: _clip_block_rules(c, i) for i in range(c.num_layers)},
  }


def checkpoint_rules(c: AnyConfig) -> dict[tuple, Rule]:
  """ctjax parameter path -> (checkpoint name, checkpoint shape, transform)."""
  family = family_module(c.model_type)
  if family is not None:
    tree = family.checkpoint_rules(c)
  elif c.model_type == "clip_vision_model":
    tree = _clip_tree(c)
  else:
    tree = _vit_tree(c)
  flat = {}

  def walk(node, path):
    if isinstance(node, tuple):
      flat[path] = node
    else:
      for key, child in node.items():
        walk(child, path + (key,))

  walk(tree, ())
  return flat


def _vit_tree(c: EncoderConfig) -> dict:
  d, pch = c.hidden_size, c.patch_size
  n_pos = c.num_prefix_tokens + c.grid_size**2
  tree = {
    "patch_embed": {
      "proj": {
        "kernel": (
          "embeddings.patch_embeddings.projection.weight",
          (d, c.num_channels, pch, pch),
          lambda w: w.transpose(2, 3, 1, 0),
        ),
        "bias": (
          "embeddings.patch_embeddings.projection.bias",
          (d,),
          lambda b: b,
        ),
      }
    },
    "cls_token": ("embeddings.cls_token", (1, 1, d), lambda t: t.reshape(1, d)),
    "pos_embed": (
      "embeddings.position_embeddings",
      (1, n_pos, d),
      lambda t: t[0],
    ),
    "blocks": {i: _block_rules(c, i) for i in range(c.num_layers)},
    "norm": _norm("layernorm", d),
  }
  if c.model_type == "deit":
    tree["dist_token"] = (
      "embeddings.distillation_token",
      (1, 1, d),
      lambda t: t.reshape(1, d),
    )
  if c.num_registers:
    tree["register_tokens"] = (
      "embeddings.register_tokens",
      (1, c.num_registers, d),
      lambda t: t[0],
    )
  return tree


# transformers >= 5 names its modules differently in memory (state_dict());
# save_pretrained writes the names above. Both are accepted.
_QKV = {"q": "query", "k": "key", "v": "value"}


def _rename_v5(name: str, model_type: str) -> str:
  name = re.sub(r"^layers\.(\d+)\.", r"encoder.layer.\1.", name)
  name = re.sub(
    r"\.attention\.([qkv])_proj\.",
    lambda m: f".attention.attention.{_QKV[m.group(1)]}.",
    name,
  )
  name = name.replace(".attention.o_proj.", ".attention.output.dense.")
  name = name.replace(".mlp.down_proj.", ".mlp.weights_out.")
  if model_type in ("vit", "deit"):
    name = name.replace(".mlp.fc1.", ".intermediate.dense.").replace(
      ".mlp.fc2.", ".output.dense."
    )
  return name


def canonical_tensors(
  tensors: Mapping[str, np.ndarray], model_type: str
) -> dict:
  """Encoder-relative checkpoint name -> (original name, array).

  Strips task-model prefixes ("vit." ...), drops heads outside the encoder
  (pooler, classifiers, mask token) and maps transformers-5 in-memory names
  (layers.N.attention.q_proj, mlp.gate_proj/up_proj) to the saved ones.
  """
  family = family_module(model_type)
  if family is not None:
    return _family_tensors(tensors, family)
  if model_type == "clip_vision_model":
    return _clip_tensors(tensors)
  out = {}
  for name, array in tensors.items():
    short = name
    for prefix in _PREFIXES:
      if short.startswith(prefix):
        short = short[len(prefix) :]
        break
    if short.startswith(_IGNORED):
      continue
    out[_rename_v5(short, model_type)] = (name, array)
  for key in [
    k for k in out if ".mlp.gate_proj." in k
  ]:  # re-fuse SwiGLU [gate; up]
    up_key = key.replace(".gate_proj.", ".up_proj.")
    if up_key in out:
      gate_name, gate = out.pop(key)
      _, up = out.pop(up_key)
      out[key.replace(".gate_proj.", ".weights_in.")] = (
        gate_name.replace("gate_proj", "gate_proj+up_proj"),
        np.concatenate([np.asarray(gate), np.asarray(up)], axis=0),
      )
  return out


def _family_tensors(tensors: Mapping[str, np.ndarray], family) -> dict:
  """Strips the task-model prefix, drops heads and buffers outside the encoder."""
  out = {}
  for name, array in tensors.items():
    short = name
    for prefix in family.PREFIXES:
      if short.startswith(prefix):
        short = short[len(prefix) :]
        break
    if short.startswith(family.IGNORED) or short.endswith(
      family.IGNORED_SUFFIXES
    ):
      continue
    out[short] = (name, array)
  return out


# CLIPModel / CLIPVisionModelWithProjection tensors outside the vision tower.
_CLIP_IGNORED = ("post_layernorm.", "embeddings.position_ids")


def _clip_tensors(tensors: Mapping[str, np.ndarray]) -> dict:
  """The vision tower's tensors, ``vision_model.`` stripped.

  A CLIPModel checkpoint names them ``vision_model.*`` beside
  ``text_model.*``, the projections and ``logit_scale`` (all ignored); a
  CLIPVisionModel saved by transformers 5 has no prefix.
  """
  prefixed = any(n.startswith("vision_model.") for n in tensors)
  out = {}
  for name, array in tensors.items():
    if prefixed:
      if not name.startswith("vision_model."):
        continue
      short = name[len("vision_model.") :]
    else:
      short = name
    if short.startswith(_CLIP_IGNORED) or short in (
      "visual_projection.weight",
    ):
      continue
    out[short] = (name, array)
  return out


def load_state(
  config: AnyConfig,
  tensors: Mapping[str, np.ndarray],
  source: str = "checkpoint",
):
  """Converts checkpoint tensors into (graphdef, nnx.State) of an encoder module.

  Args:
    config: the encoder's config (any family).
    tensors: checkpoint name -> array (PyTorch layout), e.g. a safetensors file.
    source: what to call the checkpoint in error messages.

  Raises:
    ValueError listing every missing, unexpected and mis-shaped tensor.
  """
  cls = module_class(config)
  abstract = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  rules = checkpoint_rules(config)
  found = canonical_tensors(tensors, config.model_type)
  pure = nnx.to_pure_dict(state)
  used, missing, mismatched = set(), [], []
  for path, leaf in jax_flat(pure):
    if path not in rules:
      raise AssertionError(
        f"no checkpoint rule for ctjax parameter {path}"
      )  # a ctjax bug
    name, hf_shape, fn = rules[path]
    if name not in found:
      if name not in missing:
        missing.append(name)
      continue
    used.add(name)
    original, array = found[name]
    array = np.asarray(array)
    if tuple(array.shape) != tuple(hf_shape):
      msg = (
        f"{original}: shape {tuple(array.shape)}, expected {tuple(hf_shape)}"
      )
      if msg not in mismatched:
        mismatched.append(msg)
      continue
    value = np.asarray(fn(array), dtype=np.float32)
    assert value.shape == tuple(leaf.shape), (path, value.shape, leaf.shape)
    _set(pure, path, value)
  unexpected = sorted(found[n][0] for n in set(found) - used)
  if missing or unexpected or mismatched:
    parts = [f"cannot load {source} into a {config.tag} encoder:"]
    if missing:
      parts.append(f"  missing tensors ({len(missing)}): {', '.join(missing)}")
    if unexpected:
      parts.append(
        f"  unexpected tensors ({len(unexpected)}): {', '.join(unexpected)}"
      )
    if mismatched:
      parts.append(
        f"  shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}"
      )
    raise ValueError("\n".join(parts))
  nnx.replace_by_pure_dict(state, pure)
  return graphdef, state


def jax_flat(tree, path=()):
  """(path tuple, leaf) pairs of a nested dict, depth first."""
  if isinstance(tree, dict):
    for key, child in tree.items():
      yield from jax_flat(child, path + (key,))
  else:
    yield path, tree


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree[key]
  tree[path[-1]] = value


def resolve(path_or_repo_id: str) -> str:
  """A local folder: the path itself, or the repo's snapshot in the HF cache.

  Set HF_HUB_OFFLINE=1 to resolve from the cache without network access.
  """
  if os.path.isdir(path_or_repo_id):
    return path_or_repo_id
  if os.path.exists(path_or_repo_id):
    raise ValueError(
      f"{path_or_repo_id!r} is a file; pass the checkpoint folder "
      "(config.json + model.safetensors)"
    )
  from huggingface_hub import snapshot_download

  try:
    return snapshot_download(
      path_or_repo_id,
      allow_patterns=[
        "config.json",
        "preprocessor_config.json",
        "*.safetensors",
        "model.safetensors.index.json",
      ],
    )
  except Exception as e:  # noqa: BLE001 -- many hub error types; re-raised with context.
    raise ValueError(
      f"{path_or_repo_id!r} is neither a folder nor a repo id found in the "
      f"Hugging Face cache ({type(e).__name__}: {e})"
    ) from e


def read_tensors(folder: str) -> dict[str, np.ndarray]:
  """All tensors of model.safetensors (sharded or not), else pytorch_model.bin."""
  from safetensors import safe_open

  index = os.path.join(folder, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
  elif os.path.exists(os.path.join(folder, "model.safetensors")):
    files = ["model.safetensors"]
  else:
    files = []
  tensors = {}
  for name in files:
    with safe_open(os.path.join(folder, name), framework="numpy") as f:
      for key in f.keys():
        tensors[key] = f.get_tensor(key)
  if files:
    return tensors
  bin_path = os.path.join(folder, "pytorch_model.bin")
  if os.path.exists(bin_path):
    try:
      import torch
    except ImportError:
      raise ValueError(
        f"{bin_path} needs torch to read; install torch or convert the "
        "checkpoint to model.safetensors"
      ) from None
    state = torch.load(bin_path, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in state.items()}
  raise ValueError(
    f"{folder} holds no model.safetensors, model.safetensors.index.json "
    "or pytorch_model.bin"
  )


def read_config(folder: str) -> AnyConfig:
  """The ctjax config from config.json (via AutoConfig) and preprocessor_config.json."""
  from transformers import AutoConfig

  if not os.path.exists(os.path.join(folder, "config.json")):
    raise ValueError(f"{folder} has no config.json")
  hf_config = AutoConfig.from_pretrained(folder)
  mean = std = None
  pre = os.path.join(folder, "preprocessor_config.json")
  if os.path.exists(pre):
    with open(pre) as f:
      pre_cfg = json.load(f)
    mean, std = pre_cfg.get("image_mean"), pre_cfg.get("image_std")
  return from_hf_config(hf_config, image_mean=mean, image_std=std)


def from_pretrained(path_or_repo_id: str) -> Encoder:
  """Loads a ViT / DeiT / DINOv2 (with registers) / CLIP / ResNet / ConvNeXt /
  Swin checkpoint (the family comes from config.json's ``model_type``), or
  pytorch-fid's Inception-v3 weights file.

  Args:
    path_or_repo_id: a folder with config.json and model.safetensors (or
      pytorch_model.bin), or a Hugging Face repo id present in the local cache
      (downloaded if the hub is reachable and HF_HUB_OFFLINE is unset); or an
      Inception-v3 state dict in torchvision's names -- pytorch-fid's
      ``pt_inception-2015-12-05-*.pth`` or the same tensors as
      ``.safetensors`` --, given as the file or a folder without config.json
      holding it.
  """
  weights = inception_weights_file(path_or_repo_id)
  if weights is not None:
    from ctjax.models.config import InceptionConfig

    config = InceptionConfig()
    graphdef, state = load_state(
      config, read_weights_file(weights), source=weights
    )
    return Encoder(config, graphdef, state, source=str(path_or_repo_id))
  folder = resolve(path_or_repo_id)
  config = read_config(folder)
  graphdef, state = load_state(config, read_tensors(folder), source=folder)
  return Encoder(config, graphdef, state, source=str(path_or_repo_id))


_WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors")


def read_weights_file(path: str) -> dict[str, np.ndarray]:
  """All tensors of one ``.safetensors`` file or one ``.pth`` state dict.

  torch is imported only for ``.pth`` (read with ``weights_only=True``).
  """
  if path.endswith(".safetensors"):
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
      return {key: f.get_tensor(key) for key in f.keys()}
  try:
    import torch
  except ImportError:
    raise ValueError(
      f"{path} needs torch to read; install torch or convert the state dict "
      "to .safetensors"
    ) from None
  state = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(state, Mapping):
    raise ValueError(f"{path} does not hold a state dict")
  return {
    k: v.float().numpy() if v.is_floating_point() else v.numpy()
    for k, v in state.items()
  }


def _tensor_names(path: str) -> list[str]:
  if path.endswith(".safetensors"):
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
      return list(f.keys())
  return list(read_weights_file(path))


def inception_weights_file(path: str) -> str | None:
  """The Inception-v3 weights file ``path`` names, or None.

  ``path`` is such a file (``.pth``/``.pt``/``.safetensors`` holding
  ``Mixed_5b.branch1x1.conv.weight``), or a folder without config.json
  holding exactly one: ``pt_inception*`` files first, else any weights file
  with that tensor.
  """
  from ctjax.models.inception import SIGNATURE

  if os.path.isfile(path):
    if path.endswith(_WEIGHT_SUFFIXES) and SIGNATURE in _tensor_names(path):
      return path
    if path.endswith(_WEIGHT_SUFFIXES):
      raise ValueError(
        f"{path} is a weights file without {SIGNATURE!r}: not an "
        "Inception-v3 state dict in torchvision's names; other families load "
        "from their folder (config.json + model.safetensors)"
      )
    return None
  if not os.path.isdir(path) or os.path.exists(
    os.path.join(path, "config.json")
  ):
    return None
  files = sorted(
    os.path.join(path, n)
    for n in os.listdir(path)
    if n.endswith(_WEIGHT_SUFFIXES)
  )
  named = [f for f in files if os.path.basename(f).startswith("pt_inception")]
  found = named or [f for f in files if SIGNATURE in _tensor_names(f)]
  if len(found) > 1:
    raise ValueError(
      f"{path} holds several Inception-v3 weights files: {found}; pass one"
    )
  return found[0] if found else None
