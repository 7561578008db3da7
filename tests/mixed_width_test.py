"""Layers of different widths (ResNet, Swin) through embed, CTReference and
the fingerprint library: the list form ``[[N, D_l] for each layer]``."""

import jax
import numpy as np
import pytest

import ctjax
import ctjax.models as cm
from ctjax import embedding
from ctjax import preprocess as pp


# ------------------------------------------------------------------ embed


@pytest.fixture(scope="module")
def resnet():
  """Tiny random ResNet: stem 8 wide, stages 16, 8, 24 (widths differ)."""
  return cm.from_config(
    cm.ResNetConfig(
      embedding_size=8,
      hidden_sizes=(16, 8, 24),
      depths=(1, 1, 1),
      layer_type="basic",
      image_size=32,
    ),
    seed=3,
  )


@pytest.fixture(scope="module")
def swin():
  """Tiny random Swin: patch embedding 8 wide, two stages."""
  return cm.from_config(
    cm.SwinConfig(
      embed_dim=8,
      depths=(1, 1),
      num_heads=(1, 2),
      window_size=2,
      patch_size=4,
      image_size=16,
    ),
    seed=4,
  )


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(5).integers(
    0, 256, size=(7, 20, 18, 3), dtype=np.uint8
  )


def direct_pooled(encoder, images):
  """Oracle: enc.hidden_states of the preprocessed images, averaged in NumPy
  over every spatial position / token (one batch, no padding)."""
  pixels = pp.preprocess(images, pp.PreprocessConfig.from_encoder(encoder))
  hidden = encoder.hidden_states(pixels)
  assert isinstance(hidden, tuple)
  return [
    np.asarray(h, np.float64).reshape(h.shape[0], -1, h.shape[-1]).mean(1)
    for h in hidden
  ]


@pytest.mark.parametrize("name", ["resnet", "swin"])
def test_embed_list_form_matches_pooled_hidden_states(name, images, request):
  encoder = request.getfixturevalue(name)
  assert len(set(encoder.widths)) > 1
  before = embedding._step_cache_size()
  got = ctjax.embed(encoder, images, pool="mean", batch_size=4, progress=False)
  # 7 images in batches of 4: the padded last batch reuses the compilation.
  assert embedding._step_cache_size() - before == 1
  want = direct_pooled(encoder, images)
  assert isinstance(got, list) and len(got) == encoder.num_hidden_states
  for l, (g, w) in enumerate(zip(got, want)):
    assert g.dtype == np.float32
    assert g.shape == (len(images), encoder.widths[l])
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=str(l))


def test_swin_compiles_with_xla_defaults(resnet, swin, images):
  """Swin's forward (`Encoder` and `ctjax.embed`) is compiled with XLA's
  defaults, whose YNNPACK fusions show as custom fusions in the program;
  the other families keep ctjax's options, which turn them off."""
  from ctjax.models import encoder as encoder_lib

  assert encoder_lib.cpu_options(swin.config) == {}
  assert encoder_lib.cpu_options(resnet.config) == (
    encoder_lib.CPU_COMPILER_OPTIONS
  )
  for enc, fused in ((swin, True), (resnet, False)):
    pixels = pp.preprocess(images[:2], pp.PreprocessConfig.from_encoder(enc))
    text = (
      enc._jitted.lower(enc.graphdef, enc.params, pixels, np.dtype("float32"))
      .compile()
      .as_text()
    )
    assert ("kind=kCustom" in text) == fused, type(enc.config).__name__
  ctjax.embed(swin, images[:2], pool="mean", batch_size=2, progress=False)
  assert () in embedding._STEPS  # pylint: disable=protected-access


def test_embed_equal_widths_stay_stacked(resnet, images):
  # stem and stage2 are both 8 wide: the selection stacks as [L, N, D].
  got = ctjax.embed(
    resnet, images, pool="mean", layers=[0, 2], batch_size=8, progress=False
  )
  want = direct_pooled(resnet, images)
  assert isinstance(got, np.ndarray) and got.shape == (2, 7, 8)
  np.testing.assert_allclose(
    got, np.stack([want[0], want[2]]), rtol=1e-4, atol=1e-5
  )


def test_embed_list_form_gathers_each_layer_across_processes(
  resnet, images, monkeypatch
):
  """Several processes: every layer's [n_local, D_l] share is gathered."""
  import jax

  from ctjax import sharding

  gathered = []

  def fake_gather(local, n_items):
    # Stands in for the other process: it holds the same rows as this one.
    gathered.append(local.shape)
    return np.concatenate([local, local])[:n_items]

  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  monkeypatch.setattr(sharding, "gather_in_order", fake_gather)
  got = ctjax.embed(resnet, images, pool="mean", batch_size=4, progress=False)
  assert gathered == [(4, w) for w in resnet.widths]
  want = direct_pooled(resnet, images[:4])
  for g, w in zip(got, want):
    assert g.shape == (7, w.shape[1])
    np.testing.assert_allclose(g[:4], w, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(g[4:], g[:3])


def test_cls_pool_without_cls_token_is_an_error(resnet, images):
  with pytest.raises(ValueError, match=r"CLS token.*pool='mean'"):
    ctjax.embed(resnet, images, pool="cls", progress=False)


def test_embed_list_form_cache_hit_and_resume(
  resnet, images, tmp_path, monkeypatch
):
  kw = dict(pool="mean", batch_size=2, progress=False, chunk_size=4)
  first = ctjax.embed(resnet, images, cache_dir=tmp_path, **kw)
  entry = [p for p in tmp_path.iterdir() if p.is_dir()]
  assert len(entry) == 1 and (entry[0] / "done.json").exists()

  def boom(*a, **k):
    raise AssertionError("recomputed a cached entry")

  monkeypatch.setattr(embedding, "_encode", boom)
  again = ctjax.embed(resnet, images, cache_dir=tmp_path, **kw)
  assert [a.shape for a in again] == [f.shape for f in first]
  for a, f in zip(again, first):
    np.testing.assert_array_equal(a, f)
  monkeypatch.undo()
  # Interrupted after the first chunk of 4: the rerun encodes only the rest.
  calls = []
  real = embedding._encode

  def interrupted(spec, params, put, batch, *a):
    calls.append(len(batch))
    if len(calls) == 2:
      raise KeyboardInterrupt
    return real(spec, params, put, batch, *a)

  fresh = tmp_path / "fresh"
  monkeypatch.setattr(embedding, "_encode", interrupted)
  with pytest.raises(KeyboardInterrupt):
    ctjax.embed(resnet, images, cache_dir=fresh, **kw)
  calls.clear()
  monkeypatch.setattr(
    embedding, "_encode", lambda *a: calls.append(a) or real(*a)
  )
  resumed = ctjax.embed(resnet, images, cache_dir=fresh, **kw)
  assert [len(c[3]) for c in calls] == [3]
  for r, f in zip(resumed, first):
    np.testing.assert_array_equal(r, f)


# ------------------------------------------------------------- reference

# The widths of the tiny ResNet below (3 distinct), and the same sizes as
# the command-line test, so that both share their compilations.
WIDTHS = (8, 16, 8, 24)
NAMES = ("stem", "stage1", "stage2", "stage3")


@pytest.fixture(scope="module")
def layered():
  """train/test/gen in the list form, 5 layers of widths `WIDTHS`."""
  rng = np.random.default_rng(11)

  def make(n, shift=0.0):
    return [
      (rng.normal(size=(n, w)) + shift).astype(np.float32) for w in WIDTHS
    ]

  train, test = make(90), make(60)
  gens = [make(29, shift=0.3 * b) for b in range(3)]
  return train, test, gens


FIT = dict(n_cells=3, seed=7)
TAU = 0.1


@pytest.fixture(scope="module")
def mixed_ref(layered):
  from ctjax import reference
  from ctjax.stats import fitted as fitted_lib
  from ctjax.stats import scoring as score_lib

  train, test, _ = layered
  fits = fitted_lib._fit_layers._cache_size()
  ref = ctjax.CTReference.fit(train, test, layer_names=NAMES, **FIT)
  n_fit = fitted_lib._fit_layers._cache_size() - fits
  # A NumPy batch is scored through `_score_finite` (the score and the
  # finite check in one program), a device batch through `score_detailed`.
  progs = (score_lib.score_detailed, reference._score_finite)
  scores = sum(f._cache_size() for f in progs)
  res = ref.score(_gen(layered, 0), tau=TAU, return_neighbors=True)
  n_score = sum(f._cache_size() for f in progs) - scores
  return ref, res, n_fit, n_score


def _gen(layered, b):
  return layered[2][b]


def _one_layer_ref(train, test, l):
  """Oracle: layer l alone, fitted with the key it has in a stacked fit."""
  from ctjax import reference as ref_lib
  from ctjax.stats import fitted as fitted_lib

  config = fitted_lib.FitConfig(**FIT).resolve(len(train[l]), train[l].shape[1])
  keys = ref_lib._layer_keys(FIT["seed"], len(train))[l : l + 1]
  return ctjax.CTReference._fit_arrays(
    train[l][None], test[l][None], keys, config, [NAMES[l]], None, None
  )


def test_list_reference_equals_per_layer_references(layered, mixed_ref):
  train, test, _ = layered
  ref, res, _, _ = mixed_ref
  assert ref.groups == ((0, 2), (1,), (3,))
  # One stacked Fitted per width group, nothing padded.
  assert [f.n_layers for f in ref.fitted] == [2, 1, 1]
  assert [f.dim for f in ref.fitted] == [8, 16, 24]
  assert np.isfinite(res.ct).all()
  assert ref.widths == WIDTHS and ref.layer_names == NAMES
  assert ref.n_components == WIDTHS  # min(64, N, D_l) per layer
  gen = _gen(layered, 0)
  for l in range(len(WIDTHS)):
    one = _one_layer_ref(train, test, l).score(
      gen[l][None], tau=TAU, return_neighbors=True
    )
    for name in ("ct", "z", "u", "n_test", "n_gen", "included"):
      np.testing.assert_array_equal(
        getattr(res, name)[l], getattr(one, name)[0], err_msg=f"{name} {l}"
      )
    for name in ("gen_index", "gen_dist", "test_index", "gen_cells"):
      np.testing.assert_array_equal(
        getattr(res.neighbors, name)[l],
        getattr(one.neighbors, name)[0],
        err_msg=f"{name} {l}",
      )


def test_compilations_bounded_by_distinct_widths(mixed_ref):
  _, _, n_fit, n_score = mixed_ref
  assert 1 <= n_fit <= len(set(WIDTHS))
  assert 1 <= n_score <= len(set(WIDTHS))


def test_list_of_equal_widths_is_the_stacked_reference(layered):
  train, test, gens = layered
  lay = [0, 2]  # both 6 wide
  listed = ctjax.CTReference.fit(
    [train[l] for l in lay], [test[l] for l in lay], **FIT
  )
  stacked = ctjax.CTReference.fit(
    np.stack([train[l] for l in lay]), np.stack([test[l] for l in lay]), **FIT
  )
  assert listed.groups == () and listed.hash == stacked.hash


def test_score_many_save_load_identity(layered, mixed_ref, tmp_path):
  _, _, gens = layered
  ref, res, _, _ = mixed_ref
  many = ref.score_many(gens, tau=TAU)
  assert many.ct.shape == (3, len(WIDTHS))
  assert np.isfinite(many.ct).all()
  for b in range(3):
    one = ref.score(gens[b], tau=TAU)
    np.testing.assert_array_equal(many.ct[b], one.ct)
    np.testing.assert_array_equal(many.z[b], one.z)
  # Per-layer [B, m, D_l] arrays give the same.
  per_layer = [np.stack([g[l] for g in gens]) for l in range(len(WIDTHS))]
  np.testing.assert_array_equal(ref.score_many(per_layer, tau=TAU).ct, many.ct)
  # ... and so do the same arrays on the device.
  on_device = [jax.device_put(x) for x in per_layer]
  np.testing.assert_array_equal(ref.score_many(on_device, tau=TAU).ct, many.ct)
  path = tmp_path / "ref.npz"
  ref.save(path)
  back = ctjax.CTReference.load(path)
  assert back.groups == ref.groups and back.layer_names == NAMES
  assert back.hash == ref.hash and back.identity() == ref.identity()
  assert ref.identity()["dim"] == list(WIDTHS)
  again = back.score(_gen(layered, 0), tau=TAU, return_neighbors=True)
  np.testing.assert_array_equal(again.ct, res.ct)
  np.testing.assert_array_equal(
    again.neighbors.gen_index, res.neighbors.gen_index
  )
  assert "D=(8, 16, 8, 24)" in repr(back)


def test_mismatched_width_names_the_layer(layered, mixed_ref):
  ref = mixed_ref[0]
  gen = list(_gen(layered, 0))
  gen[3] = gen[3][:, :5]
  with pytest.raises(ValueError, match="layer stage3 is 5 wide.*24 wide"):
    ref.score(gen)
  with pytest.raises(ValueError, match="list of 4 arrays"):
    ref.score(np.zeros((4, 29, 8), np.float32))
  train, test, _ = layered
  bad = list(test)
  bad[1] = bad[1][:, :4]
  with pytest.raises(ValueError, match="layer stage1 is 4 wide"):
    ctjax.CTReference.fit(train, bad, layer_names=NAMES, **FIT)
  with pytest.raises(ValueError, match="fit_streaming takes the stacked"):
    ctjax.CTReference.fit_streaming(train, test, n_cells=3)
  with pytest.raises(ValueError, match="score\\(gen, mesh=...\\)"):
    ref.sharded_index("all")


def test_library_batches_in_the_list_form(layered, mixed_ref):
  from ctjax.fingerprint import FingerprintLibrary, batch_curves

  _, _, gens = layered
  ref = mixed_ref[0]
  # 3 batches of 29 side by side, plus 5 samples of a dropped remainder.
  joined = [
    np.concatenate([g[l] for g in gens] + [gens[0][l][:5]])
    for l in range(len(WIDTHS))
  ]
  curves = batch_curves(joined, ref, batch_size=29, tau=TAU)
  assert curves.shape == (3, len(WIDTHS))
  for b in range(3):
    np.testing.assert_array_equal(curves[b], ref.score(gens[b], tau=TAU).ct)
  lib = FingerprintLibrary()
  added = lib.add_batches("gen", joined, ref, batch_size=29, tau=TAU)
  np.testing.assert_array_equal(added, curves)
  assert lib.identify_batches(joined, ref, batch_size=29)[0][0] == "gen"
  with pytest.raises(ValueError, match="different sample counts"):
    batch_curves([joined[0], joined[1][:50]], ref, batch_size=29)


# -------------------------------------------------------------------- cli


def test_cli_score_with_a_resnet_folder(tmp_path):
  """`run.py score --encoder FOLDER --pool mean` for a tiny HF ResNet: the
  table names layers by stage; copies score negative; the reference reloads."""
  import json

  tf = pytest.importorskip("transformers")
  from ctjax import cli

  tf.ResNetModel(
    tf.ResNetConfig(
      embedding_size=8,
      hidden_sizes=[16, 8, 24],
      depths=[1, 1, 1],
      layer_type="basic",
      image_size=32,
    )
  ).save_pretrained(tmp_path / "enc")
  rng = np.random.default_rng(2)
  train = rng.integers(0, 256, (90, 20, 18, 3), dtype=np.uint8)
  np.save(tmp_path / "train.npy", train)
  np.save(
    tmp_path / "test.npy", rng.integers(0, 256, (60, 20, 18, 3), np.uint8)
  )
  np.save(tmp_path / "gen.npy", train[:60])
  kw = dict(
    train=str(tmp_path / "train.npy"),
    test=str(tmp_path / "test.npy"),
    gen=str(tmp_path / "gen.npy"),
    encoder=str(tmp_path / "enc"),
    pool="mean",
    batch_size=4,
    n_cells=3,
    tau=0.1,
    out=str(tmp_path / "out"),
  )
  lines = []
  r = cli.score(**kw, echo=lines.append)
  names = ["stem", "stage1", "stage2", "stage3"]
  assert r["reference"].groups and r["reference"].layer_names == tuple(names)
  summary = json.loads((tmp_path / "out" / "ct_curve.json").read_text())
  assert summary["layers"] == names
  assert all(c is not None and c < -3 for c in summary["ct"])  # copies
  assert all(n in lines[0] for n in names)
  assert r["gallery"] and r["gallery"][0][2] == pytest.approx(0, abs=1e-5)
  again = cli.score(**kw, echo=lines.append)
  assert not any(line.startswith("refitting") for line in lines)
  assert again["reference"].hash == r["reference"].hash
  np.testing.assert_array_equal(again["result"].ct, r["result"].ct)
  with pytest.raises(cli.UserError, match="pool='mean'"):
    cli.score(**dict(kw, pool="cls", out=str(tmp_path / "o2")), echo=print)
