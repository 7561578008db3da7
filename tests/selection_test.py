"""select_layers: the right layer per kind on data built to have one; AUC
against scikit-learn, Cohen's d and the bootstrap against brute force."""

import json
import types

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import ctjax
from ctjax import selection

# The reference's shapes and settings are reference_test's, so a whole-suite
# run compiles the fit once.
L, N, n, D = 3, 600, 300, 12
POOL, BATCH, N_BATCHES, TAU = 90, 30, 6, 0.05


def _sample(rng, centers, k):
  return centers[rng.integers(0, len(centers), k)] + rng.normal(size=(k, D))


@pytest.fixture(scope="module")
def data():
  """Three independent clustered layers. Kind "early" copies training points
  in layer 0 only, "late" in layer 2 only, "middle" in layer 1 only (fresh
  points elsewhere); the null is fresh in every layer."""
  rng = np.random.default_rng(3)
  centers = [rng.normal(size=(5, D)) * 4 for _ in range(L)]
  train = np.stack([_sample(rng, centers[l], N) for l in range(L)])
  test = np.stack([_sample(rng, centers[l], n) for l in range(L)])

  def fresh():
    return np.stack([_sample(rng, centers[l], POOL) for l in range(L)])

  def copies_in(layer):
    pool = fresh()
    pool[layer] = train[layer, rng.choice(N, POOL, replace=False)]
    return pool

  probes = {"early": copies_in(0), "middle": copies_in(1), "late": copies_in(2)}
  ref = ctjax.CTReference.fit(
    train.astype(np.float32),
    test.astype(np.float32),
    n_components=8,
    n_cells=5,
    metric="cosine",
    seed=0,
    layer_names=["l0", "l1", "l2"],
  )
  f32 = {k: v.astype(np.float32) for k, v in probes.items()}
  return ref, f32, fresh().astype(np.float32)


@pytest.fixture(scope="module")
def result(data):
  ref, probes, null = data
  return selection.select_layers(
    ref,
    probes,
    null,
    n_batches=N_BATCHES,
    batch_size=BATCH,
    tau=TAU,
    n_bootstrap=200,
    seed=0,
  )


def test_recommends_the_copying_layer(result):
  assert result.kinds == ("early", "middle", "late")
  assert result.layer_names == ("l0", "l1", "l2")
  assert result.recommended == {"early": "l0", "middle": "l1", "late": "l2"}
  np.testing.assert_array_equal(result.recommended_index, [0, 1, 2])
  for k in range(3):
    assert result.auc[k, k] == 1.0
    assert result.effect[k, k] > 3
    assert result.auc_low[k, k] == 1.0
    # The copying layer is clearly ahead of the layers with fresh points.
    others = [l for l in range(L) if l != k]
    assert result.effect[k, k] > result.effect_high[k, others].max()
    assert result.probe_ct[k, :, k].max() < -3


def test_auc_matches_sklearn_and_effect_recomputed(result):
  k_, n1, _ = result.probe_ct.shape
  n0 = result.null_ct.shape[0]
  assert result.probe_ct.shape == (3, N_BATCHES, L)
  assert result.null_ct.shape == (N_BATCHES, L)
  labels = np.r_[np.ones(n1), np.zeros(n0)]
  for k in range(k_):
    for l in range(L):
      p, q = result.probe_ct[k, :, l], result.null_ct[:, l]
      want = roc_auc_score(labels, -np.r_[p, q])
      np.testing.assert_allclose(result.auc[k, l], want, rtol=1e-12)
      pooled = np.sqrt(
        ((n1 - 1) * p.var(ddof=1) + (n0 - 1) * q.var(ddof=1)) / (n1 + n0 - 2)
      )
      np.testing.assert_allclose(
        result.effect[k, l], (q.mean() - p.mean()) / pooled, rtol=1e-9
      )
      assert result.auc_low[k, l] <= result.auc[k, l] + 1e-12
      assert result.auc[k, l] <= result.auc_high[k, l] + 1e-12


def test_draws_depend_on_seed_and_kind_name_only():
  rng = np.random.default_rng(5)
  null = rng.normal(size=(2, 60, 3))
  pools = {k: rng.normal(size=(2, 60, 3)) for k in ("x", "y")}
  kw = dict(n_batches=4, batch_size=20, n_bootstrap=10, seed=3)
  a = selection.select_layers(_MeanReference(2), pools, null, **kw)
  b = selection.select_layers(
    _MeanReference(2), {"y": pools["y"], "x": pools["x"]}, null, **kw
  )
  np.testing.assert_array_equal(a.probe_ct[::-1], b.probe_ct)
  np.testing.assert_array_equal(a.null_ct, b.null_ct)
  draw = np.random.default_rng([3, 0, selection.zlib.crc32(b"y")])
  first = pools["y"][:, draw.choice(60, 20, replace=False)]
  np.testing.assert_array_equal(a.probe_ct[1, 0], first[..., 0].mean(-1))
  # score_many, when present, is used and agrees with scoring one by one;
  # batches given as a list are used as they are.
  batches = [null[:, :20], null[:, 20:40], null[:, 40:]]
  c = selection.select_layers(_ManyReference(2), pools, batches, **kw)
  d = selection.select_layers(_MeanReference(2), pools, batches, **kw)
  assert _ManyReference.calls == 3  # the null and each kind once
  np.testing.assert_allclose(c.probe_ct, a.probe_ct, rtol=1e-12)
  np.testing.assert_allclose(c.null_ct, d.null_ct, rtol=1e-12)
  np.testing.assert_allclose(
    c.null_ct, [x[..., 0].mean(-1) for x in batches], rtol=1e-12
  )


class _MeanReference:
  """Stand-in reference with C_T = the batch mean of coordinate 0 per layer
  (so the measures can be checked on arbitrary layer counts)."""

  def __init__(self, n_layers):
    self.layer_names = tuple(f"layer{i}" for i in range(n_layers))

  def score(self, gen, tau=None):
    del tau
    return types.SimpleNamespace(ct=np.asarray(gen)[..., 0].mean(-1))


class _ManyReference(_MeanReference):
  calls = 0

  def score(self, gen, tau=None):
    raise AssertionError("score_many should be used")

  def score_many(self, gens, tau=None):
    del tau
    type(self).calls += 1
    return types.SimpleNamespace(ct=np.asarray(gens)[..., 0].mean(-1))


@pytest.mark.parametrize("n_layers", [1, 5])
def test_any_number_of_layers(n_layers):
  rng = np.random.default_rng(0)
  null = rng.normal(size=(n_layers, 200, 2))
  shifted = rng.normal(size=(n_layers, 200, 2))
  best = n_layers - 1
  shifted[best, :, 0] -= 1.0  # lower "C_T" on the last layer only
  if n_layers == 1:
    null, shifted = null[0], shifted[0]  # [M, D] for one layer
  res = selection.select_layers(
    _MeanReference(n_layers),
    {"shift": shifted},
    null,
    n_batches=10,
    batch_size=40,
    n_bootstrap=100,
  )
  assert res.effect.shape == res.auc.shape == (1, n_layers)
  assert res.recommended == {"shift": f"layer{best}"}
  assert res.auc[0, best] > 0.9
  rows = res.to_rows()
  assert [r["rank"] for r in rows] == list(range(1, n_layers + 1))
  assert rows[0]["recommended"] and rows[0]["layer"] == f"layer{best}"


def test_bootstrap_matches_brute_force_resampling():
  rng = np.random.default_rng(1)
  null = rng.normal(size=(2, 300, 1))
  pool = rng.normal(size=(2, 300, 1)) - np.array([0.2, 0.6])[:, None, None]
  n_boot, level = 60, 0.8
  res = selection.select_layers(
    _MeanReference(2),
    {"a": pool},
    null,
    n_batches=12,
    batch_size=25,
    n_bootstrap=n_boot,
    level=level,
    seed=4,
  )
  # Same resampling weights as the implementation (seed [seed, 2]), applied
  # by repeating batches, and every statistic recomputed from scratch.
  p, q = res.probe_ct[0], res.null_ct
  n1, n0 = len(p), len(q)
  boot = np.random.default_rng([4, 2])
  w1 = boot.multinomial(n1, np.full(n1, 1 / n1), size=n_boot)
  w0 = boot.multinomial(n0, np.full(n0, 1 / n0), size=n_boot)
  aucs, ds = [], []
  for a, b in zip(w1, w0):
    pb, qb = np.repeat(p, a, axis=0), np.repeat(q, b, axis=0)
    labels = np.r_[np.ones(n1), np.zeros(n0)]
    aucs.append(
      [roc_auc_score(labels, -np.r_[pb[:, l], qb[:, l]]) for l in range(2)]
    )
    pooled = np.sqrt(
      ((n1 - 1) * pb.var(0, ddof=1) + (n0 - 1) * qb.var(0, ddof=1))
      / (n1 + n0 - 2)
    )
    ds.append((qb.mean(0) - pb.mean(0)) / pooled)
  lo, hi = (1 - level) / 2, (1 + level) / 2
  for got, boot_vals in (
    ((res.auc_low, res.auc_high), aucs),
    ((res.effect_low, res.effect_high), ds),
  ):
    want = np.quantile(boot_vals, [lo, hi], axis=0, method="inverted_cdf")
    np.testing.assert_allclose(got[0][0], want[0], rtol=1e-9)
    np.testing.assert_allclose(got[1][0], want[1], rtol=1e-9)


def test_rows_json_csv_and_ranking():
  rng = np.random.default_rng(2)
  null = rng.normal(size=(3, 100, 1))
  probes = {
    "a": rng.normal(size=(3, 100, 1)) - np.array([0, 1, 2])[:, None, None],
    "b": rng.normal(size=(3, 100, 1)) - np.array([2, 0, 0])[:, None, None],
  }
  res = selection.select_layers(
    _MeanReference(3), probes, null, n_batches=8, batch_size=30, n_bootstrap=50
  )
  assert res.recommended == {"a": "layer2", "b": "layer0"}
  rows = res.to_rows()
  assert len(rows) == 6
  for kind in "ab":
    mine = [r for r in rows if r["kind"] == kind]
    keys = [(-r["auc"], -r["effect"]) for r in mine]
    assert keys == sorted(keys)
    assert sum(r["recommended"] for r in mine) == 1
  d = json.loads(res.to_json())
  assert d["recommended"] == res.recommended and d["rows"] == rows
  assert d["batch_size"] == 30 and d["n_probe_batches"] == 8
  lines = res.to_csv().splitlines()
  assert lines[0].split(",")[:4] == ["kind", "layer", "layer_index", "rank"]
  assert len(lines) == 7 and lines[1].startswith("a,layer2,2,1,true,")


def test_degenerate_inputs():
  ref = _MeanReference(2)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 50, 1))
  # Constant C_T on both sides: d = 0 and AUC = 1/2; a constant shift: inf.
  flat = np.zeros((2, 50, 1))
  res = selection.select_layers(
    ref, {"same": flat, "below": flat - 1}, flat, n_batches=4, batch_size=10
  )
  np.testing.assert_array_equal(res.effect, [[0, 0], [np.inf, np.inf]])
  np.testing.assert_array_equal(res.auc, [[0.5, 0.5], [1, 1]])
  assert json.loads(res.to_json())["rows"][2]["effect"] is None
  # NaN C_T on every batch of a layer: NaN measures there, ranked last.
  nan = x.copy()
  nan[0] = np.nan
  res = selection.select_layers(
    ref, {"k": x - 1}, nan, n_batches=4, batch_size=10, n_bootstrap=20
  )
  assert np.isnan(res.auc[0, 0]) and np.isnan(res.effect_low[0, 0])
  assert res.recommended == {"k": "layer1"} and res.rank[0, 0] == 2
  assert res.n_null.tolist() == [0, 4] and res.n_probe.tolist() == [[4, 4]]
  with pytest.raises(ValueError, match="no kinds"):
    selection.select_layers(ref, {}, x)
  with pytest.raises(ValueError, match="layers=2"):
    selection.select_layers(ref, {"k": x[0]}, x)
  with pytest.raises(ValueError, match="fewer than batch_size"):
    selection.select_layers(ref, {"k": x}, x, batch_size=60)
  with pytest.raises(ValueError, match="at least 2"):
    selection.select_layers(ref, {"k": x}, x, n_batches=1)


def test_exported_from_ctjax():
  assert ctjax.select_layers is selection.select_layers


def test_nan_batches_are_left_out():
  rng = np.random.default_rng(6)
  null = rng.normal(size=(2, 200, 1))
  pool = rng.normal(size=(2, 200, 1)) - 0.5
  ref = _MeanReference(2)
  kw = dict(n_batches=10, batch_size=20, n_bootstrap=50, seed=1)
  clean = selection.select_layers(ref, {"k": pool}, null, **kw)
  # The same draws with NaN C_T on some batches of layer 1 only.
  holes = selection.select_layers(_HoleyReference(2), {"k": pool}, null, **kw)
  p, q = holes.probe_ct[0], holes.null_ct
  assert np.isnan(p[:, 1]).sum() == 3 and np.isnan(q[:, 1]).sum() == 3
  assert holes.n_probe.tolist() == [[10, 7]] and holes.n_null.tolist() == [
    10,
    7,
  ]
  np.testing.assert_array_equal(holes.auc[:, 0], clean.auc[:, 0])
  keep1, keep0 = np.isfinite(p[:, 1]), np.isfinite(q[:, 1])
  p1, q1 = p[keep1, 1], q[keep0, 1]
  labels = np.r_[np.ones(len(p1)), np.zeros(len(q1))]
  np.testing.assert_allclose(
    holes.auc[0, 1], roc_auc_score(labels, -np.r_[p1, q1]), rtol=1e-12
  )
  n1, n0 = len(p1), len(q1)
  pooled = np.sqrt(
    ((n1 - 1) * p1.var(ddof=1) + (n0 - 1) * q1.var(ddof=1)) / (n1 + n0 - 2)
  )
  np.testing.assert_allclose(
    holes.effect[0, 1], (q1.mean() - p1.mean()) / pooled, rtol=1e-9
  )
  assert (
    np.isfinite(holes.auc_low).all() and np.isfinite(holes.effect_high).all()
  )
  rows = holes.to_rows()
  assert {r["n_probe"] for r in rows} == {10, 7}
  np.testing.assert_allclose(
    [r["probe_ct_mean"] for r in sorted(rows, key=lambda r: r["layer_index"])],
    np.nanmean(p, axis=0),
  )


class _HoleyReference(_MeanReference):
  """_MeanReference with NaN C_T on layer 1 of the 3rd, 6th and 9th batch of
  the null (scored first) and of the kind."""

  def __init__(self, n_layers):
    super().__init__(n_layers)
    self.calls = 0

  def score(self, gen, tau=None):
    ct = super().score(gen, tau).ct.copy()
    if self.calls % 10 in (2, 5, 8):
      ct[1] = np.nan
    self.calls += 1
    return types.SimpleNamespace(ct=ct)


def test_two_sided_ranking():
  rng = np.random.default_rng(8)
  null = rng.normal(size=(2, 200, 1))
  # Far above the null on layer 0, a little below on layer 1.
  pool = rng.normal(size=(2, 200, 1)) + np.array([3.0, -0.7])[:, None, None]
  kw = dict(n_batches=8, batch_size=25, n_bootstrap=50)
  less = selection.select_layers(_MeanReference(2), {"k": pool}, null, **kw)
  both = selection.select_layers(
    _MeanReference(2), {"k": pool}, null, alternative="two-sided", **kw
  )
  assert less.recommended == {"k": "layer1"} and less.auc[0, 0] == 0.0
  assert both.recommended == {"k": "layer0"} and both.alternative == "two-sided"
  np.testing.assert_array_equal(both.auc, less.auc)
  np.testing.assert_array_equal(both.effect, less.effect)
  assert json.loads(both.to_json())["alternative"] == "two-sided"
  with pytest.raises(ValueError, match="alternative"):
    selection.select_layers(
      _MeanReference(2), {"k": pool}, null, alternative="greater"
    )
