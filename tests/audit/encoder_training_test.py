"""The shipped default encoders, their training code and the Hugging Face exporter."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ctjax.models as cm
from ctjax.audit import datasets as ds
from ctjax.audit import encoder_training as et
from ctjax import preprocess as pp
from ctjax.models import convert, export

SHIPPED = [
  d
  for d in et.DEFAULTS
  if os.path.exists(
    os.path.join(et.ASSETS_DIR, f"vit-{d}", "model.safetensors")
  )
]


def _fashion_available():
  try:
    ds.load("fashion_mnist")
  except ValueError:
    return False
  return True


@pytest.fixture(scope="module")
def digits():
  return ds.load("digits")


@pytest.fixture(scope="module")
def digits_encoder():
  return et.default_encoder("digits")


def test_digits_and_fashion_are_shipped():
  assert "digits" in SHIPPED
  assert "fashion_mnist" in SHIPPED


def _pure(encoder):
  return dict(convert.jax_flat(nnx.to_pure_dict(encoder.params)))


@pytest.mark.parametrize("dataset", SHIPPED)
def test_shipped_folder_loads_with_its_training_config(dataset):
  folder = et.asset_folder(dataset)
  for name in (
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    et.HEAD_FILE,
    et.REPORT_FILE,
  ):
    assert os.path.exists(os.path.join(folder, name)), name
  encoder = cm.from_pretrained(folder)
  assert encoder.config == et.DEFAULTS[dataset].encoder
  report = et.training_report(dataset)
  assert report["dataset"] == dataset
  assert report["command"].startswith(
    f"python -m ctjax.audit.encoder_training --dataset {dataset}"
  )
  for key in ("seed", "steps", "train_seconds", "test_accuracy"):
    assert key in report, key
  head = et.default_head(dataset)
  assert head.kernel.shape == (
    encoder.config.hidden_size,
    10,
  ) and head.bias.shape == (10,)
  # The shipped weights are trained: far from the random control.
  control = et.random_encoder(dataset, seed=report["seed"])
  assert control.config == encoder.config
  trained, random = _pure(encoder), _pure(control)
  assert trained.keys() == random.keys()
  assert not np.allclose(
    trained[("pos_embed",)], random[("pos_embed",)], atol=1e-2
  )


def test_shipped_package_is_small():
  sizes = {
    folder: sum(
      os.path.getsize(os.path.join(et.ASSETS_DIR, folder, f))
      for f in os.listdir(os.path.join(et.ASSETS_DIR, folder))
    )
    for folder in os.listdir(et.ASSETS_DIR)
  }
  assert all(size < 2 * 2**20 for size in sizes.values()), sizes
  # Six folders: {vit, resnet, swin} x {digits, fashion_mnist}.
  assert sum(sizes.values()) < 8 * 2**20, sizes


def test_digits_accuracy_matches_training_report(digits, digits_encoder):
  report = et.training_report("digits")
  acc = et.accuracy(
    digits_encoder,
    et.default_head("digits"),
    digits.test_images,
    digits.test_labels,
  )
  assert abs(acc - report["test_accuracy"]) <= 0.005
  assert acc >= 0.9


@pytest.mark.skipif(
  "fashion_mnist" not in SHIPPED or not _fashion_available(),
  reason="Fashion-MNIST files or shipped weights missing",
)
def test_fashion_mnist_accuracy_matches_training_report():
  data = ds.load("fashion_mnist")
  report = et.training_report("fashion_mnist")
  acc = et.accuracy(
    et.default_encoder("fashion_mnist"),
    et.default_head("fashion_mnist"),
    data.test_images,
    data.test_labels,
    batch_size=1000,
  )
  assert abs(acc - report["test_accuracy"]) <= 0.005
  assert acc >= 0.8


def test_random_encoder_is_seeded():
  a, b, c = (et.random_encoder("digits", seed=s) for s in (0, 0, 1))
  assert a.weights_hash == b.weights_hash != c.weights_hash
  assert a.config == et.default_encoder("digits").config


def test_unknown_dataset_and_missing_head_raise(tmp_path):
  with pytest.raises(ValueError, match="cifar"):
    et.default_encoder("cifar")
  with pytest.raises(ValueError, match="head.safetensors"):
    et.load_head(str(tmp_path))


# ------------------------------------------------------------------ training


def test_training_input_is_the_embedding_pipeline_input(digits):
  config = et.DEFAULTS["digits"].encoder
  images = digits.test_images[:64]
  resized = et.resized_images(images, config)
  assert resized.shape == (64, 18, 18, 1)
  ours = et._normalise(
    jnp.asarray(et.centre_crop(resized, config.image_size)), config
  )
  want = pp.preprocess(
    images, pp.PreprocessConfig.from_encoder(cm.from_config(config))
  )
  np.testing.assert_allclose(ours, want, atol=1e-6, rtol=0)


def test_augment_crops_windows_of_the_padded_image(rng):
  x = rng.random((6, 10, 10, 1)).astype(np.float32)
  for pad, flip in ((0, False), (2, True)):
    out = np.asarray(
      et.augment(jax.random.key(3), jnp.asarray(x), 8, pad, flip)
    )
    assert out.shape == (6, 8, 8, 1)
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    span = 10 + 2 * pad - 8 + 1
    for i in range(6):
      windows = [
        padded[i, r : r + 8, c : c + 8]
        for r in range(span)
        for c in range(span)
      ]
      if flip:
        windows += [w[:, ::-1] for w in windows]
      assert any(np.array_equal(out[i], w) for w in windows), (pad, flip, i)


def test_twenty_steps_on_a_subset_decrease_the_loss(digits):
  config = et.TrainConfig(
    dataset="digits",
    encoder=et._vit(16, 4, 32, 1, 2, 64),
    steps=20,
    batch_size=64,
    learning_rate=1e-2,
    warmup_steps=2,
    label_smoothing=0.0,
    train_subset=128,
    pad=1,
    seed=0,
  )
  result = et.train(config, digits, log_every=0)
  assert result.losses.shape == (20,)
  # Zero-initialised head: the first loss is exactly log(10).
  np.testing.assert_allclose(result.losses[0], np.log(10), rtol=1e-5)
  assert result.losses[-5:].mean() < result.losses[:5].mean()
  # Cross-entropy on the un-augmented subset (log-sum-exp minus the true logit).
  images, labels = digits.train_images[:128], digits.train_labels[:128]
  pixels = pp.preprocess(images, et.preprocess_config(config.encoder))
  logits = np.asarray(
    et.logits_fn(
      result.encoder.graphdef, result.encoder.params, result.head, pixels
    ),
    np.float64,
  )
  loss = np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(128), labels])
  assert loss < np.log(10) - 0.05
  assert (
    result.encoder.weights_hash
    != cm.from_config(config.encoder, seed=0).weights_hash
  )


# ------------------------------------------------------------------ export


def test_to_hf_tensors_round_trips_through_from_pretrained(tmp_path, rng):
  config = et._vit(16, 4, 32, 2, 2, 48)
  encoder = cm.from_config(config, seed=5)
  folder = et.export(str(tmp_path / "vit"), encoder)
  loaded = cm.from_pretrained(folder)
  assert loaded.config == config
  assert loaded.weights_hash == encoder.weights_hash
  pixels = rng.normal(size=(3, 16, 16, 3)).astype(np.float32)
  np.testing.assert_array_equal(
    loaded.hidden_states(pixels), encoder.hidden_states(pixels)
  )


@pytest.mark.parametrize(
  "overrides",
  [
    dict(model_type="deit"),
    dict(model_type="dinov2", layer_scale=True, layerscale_value=0.1),
    dict(model_type="dinov2", layer_scale=True, swiglu=True, qkv_bias=False),
    dict(model_type="dinov2_with_registers", layer_scale=True, num_registers=2),
  ],
  ids=["deit", "dinov2", "dinov2-swiglu", "dinov2-registers"],
)
def test_to_hf_tensors_inverts_load_state_for_every_family(overrides):
  config = cm.EncoderConfig(
    hidden_size=16,
    num_layers=2,
    num_heads=2,
    head_dim=8,
    mlp_dim=24,
    patch_size=4,
    image_size=8,
    **overrides,
  )
  encoder = cm.from_config(config, seed=2)
  _, state = cm.load_state(config, export.to_hf_tensors(encoder))
  back = dict(convert.jax_flat(nnx.to_pure_dict(state)))
  for path, value in _pure(encoder).items():
    np.testing.assert_array_equal(back[path], value, err_msg=str(path))


def test_shipped_digits_folder_matches_transformers(
  tmp_path, digits, digits_encoder
):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  folder = et.asset_folder("digits")
  model = transformers.ViTModel.from_pretrained(
    folder, add_pooling_layer=False
  ).eval()
  pixels = np.asarray(
    pp.preprocess(
      digits.test_images[:32], pp.PreprocessConfig.from_encoder(digits_encoder)
    )
  )
  torch_pixels = torch.from_numpy(
    np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))
  )
  with torch.no_grad():
    out = model(torch_pixels, output_hidden_states=True)
  ours = digits_encoder(pixels)
  assert len(out.hidden_states) == ours.hidden_states.shape[0] == 5
  for layer, want in enumerate(out.hidden_states):
    np.testing.assert_allclose(
      ours.hidden_states[layer],
      want.numpy(),
      atol=1e-4,
      rtol=0,
      err_msg=f"hidden state {layer}",
    )
  np.testing.assert_allclose(
    ours.last_hidden_state, out.last_hidden_state.numpy(), atol=1e-4, rtol=0
  )
  # The head is ViTForImageClassification's classifier: same logits in torch.
  from safetensors.numpy import save_file

  head = et.default_head("digits")
  clf_folder = tmp_path / "clf"
  export.hf_config(digits_encoder.config, num_labels=10).save_pretrained(
    clf_folder
  )
  tensors = {
    f"vit.{k}": v for k, v in export.to_hf_tensors(digits_encoder).items()
  }
  save_file(
    {**tensors, **et.head_tensors(head)}, str(clf_folder / "model.safetensors")
  )
  clf, info = transformers.ViTForImageClassification.from_pretrained(
    clf_folder, output_loading_info=True
  )
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  clf.eval()
  with torch.no_grad():
    want_logits = clf(torch_pixels).logits.numpy()
  logits = et.logits_fn(
    digits_encoder.graphdef, digits_encoder.params, head, jnp.asarray(pixels)
  )
  np.testing.assert_allclose(logits, want_logits, atol=1e-4, rtol=0)


def test_preprocessor_config_describes_the_pipeline(digits, digits_encoder):
  transformers = pytest.importorskip("transformers")
  folder = et.asset_folder("digits")
  with open(os.path.join(folder, "preprocessor_config.json")) as f:
    saved = json.load(f)
  assert saved["crop_size"] == {"height": 16, "width": 16}
  assert saved["size"] == {"height": 18, "width": 18}
  processor = transformers.DeiTImageProcessorPil(
    **{k: v for k, v in saved.items() if k != "image_processor_type"}
  )
  from PIL import Image

  images = digits.test_images[:8]
  want = processor(
    [Image.fromarray(im).convert("RGB") for im in images], return_tensors="np"
  )["pixel_values"]
  ours = np.asarray(
    pp.preprocess(images, pp.PreprocessConfig.from_encoder(digits_encoder))
  )
  # PIL resizes on uint8 (rounding); ctjax in float: within 2/255 on 0..1, i.e. 4/255 after /0.5.
  np.testing.assert_allclose(
    ours, want.transpose(0, 2, 3, 1), atol=4 / 255 + 1e-6, rtol=0
  )


# ------------------------------------------------------- ResNet and Swin

FAMILY_SHIPPED = [
  (f, d)
  for f in ("resnet", "swin")
  for d in et.DEFAULTS
  if os.path.exists(
    os.path.join(et.ASSETS_DIR, f"{f}-{d}", "model.safetensors")
  )
]


def _tiny(family, image_size=16):
  if family == "resnet":
    return et._resnet(image_size, 8, (8, 16), (1, 1))
  return et._swin(image_size, 4, 2, 8, (2,), (1,))


def test_family_names_are_checked():
  with pytest.raises(ValueError, match="convnext"):
    et.default_config("digits", "convnext")
  with pytest.raises(ValueError, match="cifar"):
    et.default_config("cifar", "resnet")
  assert et.default_config("digits") is et.DEFAULTS["digits"]
  for family in ("resnet", "swin"):
    cfg = et.default_config("fashion_mnist", family)
    assert et.family_of(cfg.encoder) == family
    # Trained the way the ViT is: same data, pixels, augmentation, optimiser.
    vit = et.DEFAULTS["fashion_mnist"]
    for field in ("batch_size", "learning_rate", "pad", "flip", "seed"):
      assert getattr(cfg, field) == getattr(vit, field), field
    assert cfg.encoder.image_size == vit.encoder.image_size


@pytest.mark.parametrize("family", ["resnet", "swin"])
def test_family_training_is_seeded_and_reproducible(family, digits):
  config = et.TrainConfig(
    dataset="digits",
    encoder=_tiny(family),
    steps=3,
    batch_size=16,
    learning_rate=1e-2,
    warmup_steps=1,
    label_smoothing=0.0,
    train_subset=64,
    pad=1,
    seed=0,
  )
  a, b = (et.train(config, digits, log_every=0) for _ in range(2))
  c = et.train(dataclasses.replace(config, seed=1), digits, log_every=0)
  np.testing.assert_allclose(a.losses[0], np.log(10), rtol=1e-5)
  np.testing.assert_array_equal(a.losses, b.losses)
  assert a.encoder.weights_hash == b.encoder.weights_hash
  assert c.encoder.weights_hash != a.encoder.weights_hash
  assert a.encoder.weights_hash != cm.from_config(config.encoder).weights_hash
  if family == "resnet":  # running statistics moved off their (0, 1) start
    stats = et.split_stats(a.encoder.params)[1]
    means = [np.asarray(x) for x in jax.tree.leaves(stats)]
    assert means and not all(
      np.allclose(m, 0) or np.allclose(m, 1) for m in means
    )


def test_train_mode_resnet_matches_torch_train_mode(tmp_path, rng):
  """Training-mode logits and the running statistics after one forward
  equal transformers' ResNetForImageClassification in train() mode."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  config = et._resnet(16, 8, (8, 16), (1, 1))
  encoder = cm.from_config(config, seed=3)
  params, stats = et.split_stats(encoder.params)
  # Non-trivial running statistics and affine parameters.
  stats = jax.tree.map(
    lambda x: jnp.asarray(rng.uniform(0.5, 1.5, x.shape), jnp.float32), stats
  )
  params = jax.tree.map(
    lambda x: x + jnp.asarray(rng.normal(0, 0.1, x.shape), jnp.float32),
    params,
  )
  encoder = cm.Encoder(config, encoder.graphdef, nnx.merge_state(params, stats))
  head = et.Head(
    jnp.asarray(rng.normal(size=(16, 10)), jnp.float32),
    jnp.asarray(rng.normal(size=(10,)), jnp.float32),
  )
  folder = et.export(str(tmp_path / "r"), encoder, head)
  hf = et.hf_config_for(config)
  hf.architectures, hf.num_labels = ["ResNetForImageClassification"], 10
  hf.save_pretrained(tmp_path / "clf")
  from safetensors.numpy import load_file, save_file

  tensors = {
    f"resnet.{k}": v
    for k, v in load_file(os.path.join(folder, "model.safetensors")).items()
  }
  tensors.update(load_file(os.path.join(folder, et.HEAD_FILE)))
  save_file(tensors, str(tmp_path / "clf" / "model.safetensors"))
  model = transformers.ResNetForImageClassification.from_pretrained(
    tmp_path / "clf"
  ).train()
  pixels = rng.normal(size=(6, 16, 16, 3)).astype(np.float32)
  with torch.no_grad():
    want = model(torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())).logits
  logits, new_stats = et.train_logits_fn(
    encoder.graphdef, params, stats, head, jnp.asarray(pixels)
  )
  np.testing.assert_allclose(logits, want.numpy(), atol=1e-4, rtol=0)
  updated = et.export(
    str(tmp_path / "u"),
    cm.Encoder(config, encoder.graphdef, nnx.merge_state(params, new_stats)),
  )
  ours = load_file(os.path.join(updated, "model.safetensors"))
  theirs = {
    k[len("resnet.") :]: v.numpy() for k, v in model.state_dict().items()
  }
  n = 0
  for name, value in ours.items():
    if "running_" in name:
      np.testing.assert_allclose(
        value, theirs[name], atol=1e-5, rtol=1e-5, err_msg=name
      )
      n += 1
  assert n == 2 * 6  # stem, 2 + 2 convs, 1 shortcut


@pytest.mark.parametrize("family", ["vit", "resnet", "swin"])
def test_export_writes_config_json_as_save_pretrained(
  family, tmp_path, monkeypatch
):
  config = _tiny(family) if family != "vit" else et._vit(16, 4, 16, 1, 2, 24)
  written = []
  real = et.storage.write_bytes
  monkeypatch.setattr(
    et.storage,
    "write_bytes",
    lambda data, path: (
      written.append(os.path.basename(path)) or real(data, path)
    ),
  )
  folder = et.export(str(tmp_path / family), cm.from_config(config, seed=1))
  assert "config.json" in written  # through the atomic writer
  et.hf_config_for(config).save_pretrained(tmp_path / "ref")
  with open(os.path.join(folder, "config.json")) as f:
    ours = json.load(f)
  with open(tmp_path / "ref" / "config.json") as f:
    assert ours == json.load(f)
  loaded = cm.from_pretrained(folder)
  assert loaded.config == config
  assert loaded.weights_hash == cm.from_config(config, seed=1).weights_hash


def test_head_names_follow_the_transformers_classifiers(tmp_path):
  head = et.Head(jnp.ones((4, 3)), jnp.arange(3.0))
  assert set(et.head_tensors(head, "resnet")) == {
    "classifier.1.weight",
    "classifier.1.bias",
  }
  from safetensors.numpy import save_file

  for family in ("vit", "resnet", "swin"):
    save_file(et.head_tensors(head, family), str(tmp_path / et.HEAD_FILE))
    back = et.load_head(str(tmp_path))
    np.testing.assert_array_equal(back.kernel, head.kernel)
    np.testing.assert_array_equal(back.bias, head.bias)
  save_file({"w": np.ones(2, np.float32)}, str(tmp_path / et.HEAD_FILE))
  with pytest.raises(ValueError, match="classifier"):
    et.load_head(str(tmp_path))


def test_resnet_and_swin_are_shipped_for_fashion_mnist():
  assert ("resnet", "fashion_mnist") in FAMILY_SHIPPED
  assert ("swin", "fashion_mnist") in FAMILY_SHIPPED


@pytest.mark.parametrize(
  "family,dataset", FAMILY_SHIPPED, ids=[f"{f}-{d}" for f, d in FAMILY_SHIPPED]
)
def test_shipped_family_folder_gives_its_recorded_logits(family, dataset):
  folder = et.asset_folder(dataset, family)
  size = sum(
    os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)
  )
  assert size < 2 * 2**20
  encoder = cm.from_pretrained(folder)
  config = et.default_config(dataset, family)
  assert encoder.config == config.encoder
  report = et.training_report(dataset, family)
  assert report["family"] == family and report["dataset"] == dataset
  assert report["steps"] == config.steps
  assert report["command"].startswith(
    f"python -m ctjax.audit.encoder_training --family {family} "
    f"--dataset {dataset}"
  )
  if dataset == "fashion_mnist" and not _fashion_available():
    pytest.skip(
      "Fashion-MNIST files missing (apt-get install dataset-fashion-mnist)"
    )
  data = ds.load(dataset)
  head = et.default_head(dataset, family)
  pixels = pp.preprocess(
    data.test_images[:8], et.preprocess_config(encoder.config)
  )
  logits = et.logits_fn(encoder.graphdef, encoder.params, head, pixels)
  np.testing.assert_allclose(
    logits, report["test_logits_first_8"], atol=1e-4, rtol=0
  )
  n = 1000 if dataset == "fashion_mnist" else len(data.test_images)
  acc = et.accuracy(
    encoder, head, data.test_images[:n], data.test_labels[:n], batch_size=200
  )
  want = report["test_accuracy_first_1000" if n == 1000 else "test_accuracy"]
  assert acc == pytest.approx(want, abs=1 / n)
  assert report["test_accuracy"] >= 0.8
  control = et.random_encoder(dataset, seed=0, family=family)
  assert control.config == encoder.config
  assert control.weights_hash != encoder.weights_hash


@pytest.mark.parametrize(
  "family,cls",
  [
    ("resnet", "ResNetForImageClassification"),
    ("swin", "SwinForImageClassification"),
  ],
)
def test_shipped_digits_family_head_matches_transformers(family, cls, tmp_path):
  if (family, "digits") not in FAMILY_SHIPPED:
    pytest.skip(f"{family}-digits not shipped")
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from safetensors.numpy import load_file, save_file

  folder = et.asset_folder("digits", family)
  encoder = et.default_encoder("digits", family)
  hf = et.hf_config_for(encoder.config)
  hf.architectures, hf.num_labels = [cls], 10
  hf.save_pretrained(tmp_path)
  tensors = {
    f"{family}.{k}": v
    for k, v in load_file(os.path.join(folder, "model.safetensors")).items()
  }
  tensors.update(load_file(os.path.join(folder, et.HEAD_FILE)))
  save_file(tensors, str(tmp_path / "model.safetensors"))
  model, info = getattr(transformers, cls).from_pretrained(
    tmp_path, output_loading_info=True
  )
  assert not info["unexpected_keys"], info
  assert all("num_batches_tracked" in k for k in info["missing_keys"]), info
  pixels = np.asarray(
    pp.preprocess(
      ds.load("digits").test_images[:16], et.preprocess_config(encoder.config)
    )
  )
  with torch.no_grad():
    want = model.eval()(
      torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())
    ).logits.numpy()
  got = et.logits_fn(
    encoder.graphdef, encoder.params, et.default_head("digits", family), pixels
  )
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
