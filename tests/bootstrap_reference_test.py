"""CTReference.score(n_bootstrap=...): replicates against rescoring with new
searches, coverage where the target is known, determinism, errors."""

import dataclasses

import numpy as np
import pytest

import ctjax
from ctjax.stats import bootstrap as bl

L, N, n, m, D = 3, 400, 240, 160, 6
FIT = dict(n_components=4, n_cells=3, seed=0, n_init=2)


def _draw(rng, centers, k, n_layers=L):
  return np.stack(
    [
      centers[rng.integers(0, len(centers), k)] + rng.normal(size=(k, D))
      for _ in range(n_layers)
    ]
  ).astype(np.float32)


@pytest.fixture(scope="module")
def case():
  rng = np.random.default_rng(3)
  centers = rng.normal(size=(4, D)) * 2
  train, test, gen = (_draw(rng, centers, k) for k in (N, n, m))
  gen[:, :40] = train[:, :40]  # some copies: ties at L(q) = 0
  ref = ctjax.CTReference.fit(train, test, **FIT)
  return ref, train, test, gen


def test_gen_replicates_equal_rescoring(case):
  """Replicate b is exactly `score` of the resampled batch (new search)."""
  ref, _, _, gen = case
  res = ref.score(gen, n_bootstrap=5, seed=7)
  plain = ref.score(gen)
  np.testing.assert_array_equal(res.ct, plain.ct)
  np.testing.assert_array_equal(res.u, plain.u)
  assert res.ct_boot.shape == (5, L)
  assert res.confidence == 0.95 and res.bootstrap == "gen"
  gen_idx, test_idx = bl.resample_indices(7, 5, m)
  assert test_idx is None
  for b in range(5):
    np.testing.assert_array_equal(
      ref.score(gen[:, gen_idx[b]]).ct, res.ct_boot[b]
    )
  low, high = bl.percentile_interval(res.ct_boot, 0.95)
  np.testing.assert_array_equal(res.ct_low, low)
  np.testing.assert_array_equal(res.ct_high, high)


def test_gen_test_replicates_equal_refit(case):
  """With test points resampled too, replicate b is the C_T of a reference
  refitted on the resampled test set (new searches for every point; the
  cells depend on T only) scoring the resampled batch."""
  ref, train, test, gen = case
  res = ref.score(gen, n_bootstrap=2, bootstrap="gen+test", seed=1)
  gen_idx, test_idx = bl.resample_indices(1, 2, m, n)
  for b in range(2):
    refit = ctjax.CTReference.fit(train, test[:, test_idx[b]], **FIT)
    np.testing.assert_array_equal(
      np.asarray(refit.fitted.centers), np.asarray(ref.fitted.centers)
    )
    want = refit.score(gen[:, gen_idx[b]]).ct
    np.testing.assert_allclose(res.ct_boot[b], want, rtol=1e-12, atol=0)


def test_seed_determinism_and_default(case):
  ref, _, _, gen = case
  a = ref.score(gen, n_bootstrap=20, seed=3, bootstrap="gen+test")
  b = ref.score(gen, n_bootstrap=20, seed=3, bootstrap="gen+test")
  c = ref.score(gen, n_bootstrap=20, seed=4, bootstrap="gen+test")
  np.testing.assert_array_equal(a.ct_boot, b.ct_boot)
  assert not np.array_equal(a.ct_boot, c.ct_boot)
  assert np.all(a.ct_low <= a.ct_high)
  plain = ref.score(gen)
  for f in ("ct_low", "ct_high", "ct_boot", "confidence", "bootstrap"):
    assert getattr(plain, f) is None
  narrow = ref.score(gen, n_bootstrap=20, seed=3, confidence=0.5)
  wide = ref.score(gen, n_bootstrap=20, seed=3, confidence=0.99)
  assert np.all(wide.ct_low <= narrow.ct_low)
  assert np.all(narrow.ct_high <= wide.ct_high)


@pytest.mark.parametrize(
  "kw, match",
  [
    (dict(n_bootstrap=-5), "n_bootstrap must be an integer >= 0"),
    (dict(n_bootstrap=1.5), "n_bootstrap"),
    (dict(n_bootstrap=10, confidence=1.2), "confidence must be in"),
    (dict(n_bootstrap=10, bootstrap="both"), "bootstrap must be one of"),
  ],
)
def test_bad_bootstrap_arguments(case, kw, match):
  ref, _, _, gen = case
  with pytest.raises(ValueError, match=match):
    ref.score(gen, **kw)


def test_save_load_and_squeeze(case, tmp_path):
  ref, _, _, gen = case
  ref.save(tmp_path / "r.npz")
  loaded = ctjax.CTReference.load(tmp_path / "r.npz")
  a = ref.score(gen, n_bootstrap=10, bootstrap="test", seed=2)
  b = loaded.score(gen, n_bootstrap=10, bootstrap="test", seed=2)
  np.testing.assert_array_equal(a.ct_boot, b.ct_boot)
  one = dataclasses.replace(
    a,
    **{
      f: getattr(a, f)[:1]
      for f in ("ct", "z", "included", "test_frac", "gen_frac", "u")
      + ("n_test", "n_gen", "ct_low", "ct_high")
    },
    ct_boot=a.ct_boot[:, :1],
  ).squeeze()
  assert one.ct_low == a.ct_low[0] and one.ct_high == a.ct_high[0]
  np.testing.assert_array_equal(one.ct_boot, a.ct_boot[:, 0])


def test_list_form(case):
  """Layers of different widths: each width group draws the same indices,
  so replicate b is the rescored resampled batch on every layer."""
  ref, train, test, gen = case
  cut = [slice(None), slice(None, 4), slice(None)]  # layer 1 is narrower
  listed = ctjax.CTReference.fit(
    [train[l][:, c] for l, c in enumerate(cut)],
    [test[l][:, c] for l, c in enumerate(cut)],
    **FIT,
  )
  g = [gen[l][:, c] for l, c in enumerate(cut)]
  res = listed.score(g, n_bootstrap=4, seed=9)
  assert res.ct_boot.shape == (4, L) and res.ct_low.shape == (L,)
  gen_idx, _ = bl.resample_indices(9, 4, m)
  for b in (0, 3):
    want = listed.score([x[gen_idx[b]] for x in g]).ct
    np.testing.assert_array_equal(res.ct_boot[b], want)


def test_coverage_of_resampling_generated_points():
  """A fixed reference and generated batches drawn from the test set's
  distribution: the target is C_T's mean over batches (Monte Carlo, 1000
  batches); nominal 90% intervals from 200 replicates should cover it in
  about 90% of 100 batches (seeded, so the count is fixed)."""
  n_layers, m_q = 2, 150
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(4, 4)) * 2

  def draw(k, r):
    return np.stack(
      [centers[r.integers(0, 4, k)] + r.normal(size=(k, 4)) for _ in "ab"]
    ).astype(np.float32)

  ref = ctjax.CTReference.fit(
    draw(300, rng), draw(200, rng), n_components=3, n_cells=3, n_init=2
  )
  many = np.stack(
    [draw(m_q, np.random.default_rng(10**6 + i)) for i in range(1000)]
  )
  target = ref.score_many(many).ct.mean(axis=0)
  covered = np.zeros((100, n_layers), bool)
  widths = []
  for rep in range(100):
    r = ref.score(
      draw(m_q, np.random.default_rng(rep)),
      n_bootstrap=200,
      confidence=0.9,
      seed=rep,
    )
    covered[rep] = (r.ct_low <= target) & (target <= r.ct_high)
    widths.append(r.ct_high - r.ct_low)
  rate = covered.mean()
  assert 0.80 <= rate <= 0.97, (rate, covered.mean(axis=0))
  # and the intervals are not trivially wide: about 2·1.645 sd of C_T
  sd = ref.score_many(many[:200]).ct.std(axis=0)
  ratio = np.mean(widths, axis=0) / (2 * 1.645 * sd)
  assert np.all((0.7 < ratio) & (ratio < 1.3)), ratio


def test_ct_curve_passes_bootstrap_to_score(case):
  ref, train, test, gen = case
  res = ctjax.ct_curve(
    train, test, gen, n_bootstrap=3, bootstrap="test", confidence=0.8, **FIT
  )
  want = ref.score(gen, n_bootstrap=3, bootstrap="test", confidence=0.8)
  np.testing.assert_array_equal(res.ct_boot, want.ct_boot)
  assert res.confidence == 0.8 and res.bootstrap == "test"
