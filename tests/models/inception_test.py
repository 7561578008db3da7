"""Inception-v3 (pytorch-fid's FID network) against Keras' InceptionV3.

Keras 3 on its JAX backend is the independent oracle: its InceptionV3 has
TensorFlow's semantics (bias-free convolutions, BatchNorm eps 0.001, 'SAME'
average pools that skip the padding). Its weights are written into a state
dict in pytorch-fid's names and loaded through ctjax's key map. Keras'
BatchNorm has no scale (gamma = 1); the state dict gets a random scale g and
the running variance g^2 (v + eps) - eps, which gives the same function, so
a port that ignored or misplaced the scale would fail. Keras' last block
average-pools where the FID network max-pools: the "avg" variant is
compared block by block, and the FID variant's Mixed_7c pool branch is
recomputed with Keras' max pool and Keras' own layers.
"""

import os
import re

import jax
import numpy as np
import pytest
import torch
from flax import nnx

import ctjax.models as cm
from ctjax.models import convert, export, inception
from ctjax.models.encoder import Encoder

SIZE = 139  # the smallest side whose Mixed_7* maps are 3x3 (not 1x1)
EPS = 1e-3


def _uid(layer) -> int:
  """Creation index of a Keras auto-named layer ("conv2d_12" -> 12)."""
  m = re.fullmatch(r"[a-z_0-9]+?(?:_(\d+))?", layer.name)
  return int(m.group(1) or 0)


@pytest.fixture(scope="module")
def keras_oracle():
  """(Keras model with hidden-state outputs, conv layers, bn layers, state dict)."""
  os.environ["KERAS_BACKEND"] = "jax"
  keras = pytest.importorskip("keras")
  if keras.backend.backend() != "jax":
    pytest.skip("keras runs on another backend in this process")
  # Keras draws every initial kernel with a jitted PRNG call compiled per
  # shape (~1 min on 2 cores); the kernels are replaced below anyway.
  glorot = keras.initializers.GlorotUniform.__call__
  keras.initializers.GlorotUniform.__call__ = lambda self, shape, dtype=None: (
    np.zeros(shape, np.float32)
  )
  try:
    model = keras.applications.InceptionV3(
      weights=None, include_top=False, input_shape=(SIZE, SIZE, 3)
    )
  finally:
    keras.initializers.GlorotUniform.__call__ = glorot
  convs = sorted(
    (l for l in model.layers if isinstance(l, keras.layers.Conv2D)), key=_uid
  )
  bns = sorted(
    (l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)),
    key=_uid,
  )
  names = [s[0] for s in inception.STEM] + [
    f"{block}.{conv[0]}"
    for block in cm.config.INCEPTION_BLOCKS
    for conv in inception.block_convs(*inception.BLOCKS[block])
  ]
  assert len(convs) == len(bns) == len(names) == 94
  rng = np.random.default_rng(0)
  state = {}
  for name, conv, bn in zip(names, convs, bns):
    assert not conv.use_bias and not bn.scale and bn.epsilon == EPS
    kh, kw, c_in, c = conv.kernel.shape
    fan_in = kh * kw * c_in  # He scale: activations stay O(1)
    kernel = rng.normal(0, (2 / fan_in) ** 0.5, (kh, kw, c_in, c))
    kernel = kernel.astype(np.float32)
    conv.set_weights([kernel])
    beta = 0.2 * rng.standard_normal(c).astype(np.float32)
    mean = 0.2 * rng.standard_normal(c).astype(np.float32)
    var = rng.uniform(0.5, 1.5, c).astype(np.float32)
    bn.set_weights([beta, mean, var])
    gamma = rng.uniform(0.5, 2.0, c).astype(np.float32)
    state[f"{name}.conv.weight"] = np.ascontiguousarray(
      kernel.transpose(3, 2, 0, 1)
    )
    state[f"{name}.bn.weight"] = gamma
    state[f"{name}.bn.bias"] = beta
    state[f"{name}.bn.running_mean"] = mean
    state[f"{name}.bn.running_var"] = gamma**2 * (var + EPS) - EPS
    state[f"{name}.bn.num_batches_tracked"] = np.array(0, np.int64)
  # pytorch-fid's file also holds the 1008-class classifier (ignored).
  state["fc.weight"] = np.zeros((1008, 2048), np.float32)
  state["fc.bias"] = np.zeros((1008,), np.float32)
  pools = [l for l in model.layers if isinstance(l, keras.layers.MaxPooling2D)]
  outputs = [pools[1].output] + [
    model.get_layer(f"mixed{i}").output for i in range(11)
  ]
  probe = keras.Model(model.input, outputs)
  return keras, probe, convs, bns, state


def _pixels(batch=2, seed=1):
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, size=(batch, SIZE, SIZE, 3)).astype(np.float32)


def _close(got, want, what):
  scale = max(1.0, float(np.abs(want).max()))
  np.testing.assert_allclose(
    np.asarray(got), want, atol=1e-4 * scale, rtol=0, err_msg=what
  )


def test_every_mixed_block_matches_keras(keras_oracle, tmp_path):
  keras, probe, convs, bns, state = keras_oracle
  pixels = _pixels()
  want = [np.asarray(w) for w in probe.predict(pixels, verbose=0)]
  names = cm.InceptionConfig().layer_names

  # Keras' variant: average pool in Mixed_7c too.
  config = cm.InceptionConfig(last_pool="avg")
  graphdef, params = cm.load_state(config, state)
  avg = Encoder(config, graphdef, params)
  got = avg.hidden_states(pixels)
  assert len(got) == 12 and tuple(g.shape[-1] for g in got) == avg.widths
  assert avg.layer_names == names
  for name, g, w in zip(names, got, want):
    assert g.shape == w.shape, (name, g.shape, w.shape)
    _close(g, w, name)

  # pool3 (pytorch-fid's feature) is Keras' global average pool.
  pool = keras.layers.GlobalAveragePooling2D()(want[-1])
  _close(inception.pool3(got[-1]), np.asarray(pool), "pool3")

  # The FID variant, loaded from a .safetensors file in a folder: the same
  # weights; only Mixed_7c's pool branch differs, run here on its own.
  from safetensors.numpy import save_file

  folder = tmp_path / "fid"
  folder.mkdir()
  save_file(state, str(folder / "pt_inception-2015-12-05-test.safetensors"))
  fid = cm.from_pretrained(str(folder))
  assert fid.config.last_pool == "max" and not fid.stacked
  assert fid.weights_hash == avg.weights_hash
  graphdef, params = nnx.split(fid.module.blocks[-1])
  run = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))
  last = np.asarray(run(params, got[-2]))
  # Mixed_7c = [1x1 320 | 3x3 768 | 3x3dbl 768 | pool branch 192]: the first
  # 1856 channels do not depend on the pool; the pool branch is Keras' own
  # last conv + BatchNorm + ReLU after a 3x3 'SAME' max pool.
  _close(last[..., :1856], want[-1][..., :1856], "Mixed_7c branches")
  x = keras.layers.MaxPooling2D((3, 3), strides=(1, 1), padding="same")(
    want[-2]
  )
  branch = keras.ops.relu(bns[-1](convs[-1](x), training=False))
  _close(last[..., 1856:], np.asarray(branch), "Mixed_7c max-pool branch")
  assert np.abs(last[..., 1856:] - want[-1][..., 1856:]).max() > 1e-2


@pytest.fixture(scope="module")
def fid_state():
  """A random state dict in pytorch-fid's names (positive running variances)."""
  rng = np.random.default_rng(3)
  rules = convert.checkpoint_rules(cm.InceptionConfig())
  state = {}
  for name, shape, _ in rules.values():
    if name.endswith("running_var"):
      state[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:
      state[name] = (0.05 * rng.standard_normal(shape)).astype(np.float32)
  return state


def test_key_map_round_trips_through_pth(tmp_path, fid_state):
  # torchvision's names and layouts (pytorch-fid's file holds 94 BasicConv2d).
  assert len(fid_state) == 94 * 5
  assert fid_state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
  assert fid_state["Mixed_6b.branch7x7_2.conv.weight"].shape == (128, 128, 1, 7)
  assert fid_state["Mixed_6b.branch7x7dbl_2.conv.weight"].shape == (
    128,
    128,
    7,
    1,
  )
  assert fid_state["Mixed_7c.branch3x3dbl_3b.bn.running_var"].shape == (384,)
  path = tmp_path / "pt_inception-2015-12-05-test.pth"
  state = {k: torch.from_numpy(v) for k, v in fid_state.items()}
  state["fc.weight"] = torch.zeros(1008, 2048)
  state["fc.bias"] = torch.zeros(1008)
  state["Mixed_5b.branch1x1.bn.num_batches_tracked"] = torch.tensor(0)
  torch.save(state, path)
  encoder = cm.from_pretrained(str(path))
  assert encoder.config == cm.InceptionConfig()
  back = export.to_hf_tensors(encoder)
  assert back.keys() == fid_state.keys()
  for name, value in back.items():
    np.testing.assert_array_equal(value, fid_state[name], err_msg=name)
  # A folder without config.json holding the file is recognised too.
  assert convert.inception_weights_file(str(tmp_path)) == str(path)
  n_params = sum(x.size for x in jax.tree.leaves(encoder.params))
  assert n_params == sum(v.size for v in fid_state.values())


def test_key_map_reports_every_bad_tensor(tmp_path, fid_state):
  tensors = dict(fid_state)
  del tensors["Mixed_6e.branch7x7dbl_4.bn.running_mean"]
  tensors["Mixed_7a.branch3x3_2.conv.weight"] = np.zeros(
    (320, 192, 1, 3), np.float32
  )
  tensors["AuxLogits.fc.weight"] = np.zeros((1008, 768), np.float32)
  with pytest.raises(ValueError) as err:
    cm.load_state(cm.InceptionConfig(), tensors, source="fid.pth")
  msg = str(err.value)
  for part in (
    "missing tensors (1): Mixed_6e.branch7x7dbl_4.bn.running_mean",
    "unexpected tensors (1): AuxLogits.fc.weight",
    "shape mismatches (1)",
    "Mixed_7a.branch3x3_2.conv.weight: shape (320, 192, 1, 3), expected "
    "(320, 192, 3, 3)",
  ):
    assert part in msg, (part, msg)
  other = tmp_path / "other.safetensors"
  from safetensors.numpy import save_file

  save_file({"conv.weight": np.zeros((2, 3), np.float32)}, str(other))
  with pytest.raises(ValueError, match="not an Inception-v3 state dict"):
    cm.from_pretrained(str(other))


@pytest.mark.parametrize("shape", [(2, 37, 50, 3), (1, 400, 320, 3)])
def test_preprocess_is_pytorch_fids(shape):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=shape, dtype=np.uint8)
  got = np.asarray(inception.preprocess(images))
  x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 255)
  want = torch.nn.functional.interpolate(
    x, size=(299, 299), mode="bilinear", align_corners=False
  )
  want = (2 * want - 1).numpy().transpose(0, 2, 3, 1)
  assert got.shape == (shape[0], 299, 299, 3)
  np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)
  unit = images.astype(np.float32) / 255
  np.testing.assert_allclose(
    np.asarray(inception.preprocess(unit)), got, atol=1e-6
  )
  gray = np.asarray(inception.preprocess(images[..., 0]))
  np.testing.assert_allclose(gray[..., 2], got[..., 0], atol=1e-6)


def test_small_inputs_are_refused():
  config = cm.InceptionConfig()
  model = nnx.eval_shape(
    lambda: inception.InceptionV3(config, rngs=nnx.Rngs(0))
  )
  with pytest.raises(ValueError, match="at least 75x75"):
    model(np.zeros((1, 64, 80, 3), np.float32))
  with pytest.raises(ValueError, match="last_pool"):
    cm.InceptionConfig(last_pool="mean")
