"""Embedding-space selection: which layer detects which kind of memorisation.

`select_layers` scores repeated batches of each probe kind (copies, noisy
copies, rotations, ... or any user-supplied kind) and of fresh held-out images
(the null) against a fitted `CTReference`, and measures per kind and layer how
well C_T separates the two:

  effect  Cohen's d of the null's C_T over the probe's:
          ``(mean(ct_null) - mean(ct_probe)) / s_pooled`` with the pooled
          standard deviation (ddof = 1). Positive when the probe looks like
          copying (C_T below the null's).
  auc     ROC AUC of telling probe batches from null batches by low C_T:
          ``P(ct_probe < ct_null) + P(ct_probe == ct_null) / 2`` over all
          (probe batch, null batch) pairs.

Intervals are percentile bootstrap intervals over batches: probe and null
batches are resampled with replacement (the null batches jointly for every
kind), with the scores already computed (no new search). Within a kind the
layers are ranked by AUC, then effect; the first is the recommendation.
With ``alternative="two-sided"`` the ranking uses the distance of the AUC from
1/2 and |d| instead, so a layer where the probe's C_T sits far *above* the
null's (the probe looks unlike the training set rather than copied, as
transformed 8x8 digits do) can be chosen too; the measures stay signed.
A batch whose C_T is NaN on a layer (no cell above tau, common with small
batches) is left out of that layer's measures (`Selection.n_probe`/`n_null`).

The null must be images the reference was not fitted on (neither T nor P):
its C_T is then ~0 on every layer, as for a generator that does not copy.
"""

import dataclasses
import json
import warnings
import zlib
from collections.abc import Mapping

import numpy as np

DEFAULT_N_BATCHES = 20
DEFAULT_N_BOOTSTRAP = 1000
DEFAULT_LEVEL = 0.95

_ROW_FIELDS = (
  "kind",
  "layer",
  "layer_index",
  "rank",
  "recommended",
  "auc",
  "auc_low",
  "auc_high",
  "effect",
  "effect_low",
  "effect_high",
  "probe_ct_mean",
  "null_ct_mean",
  "n_probe",
  "n_null",
)


@dataclasses.dataclass(frozen=True, eq=False)
class Selection:
  """Detection power of every layer for every memorisation kind.

  K kinds, L layers, ``n_probe`` probe batches per kind, ``n_null`` null
  batches.

  Attributes:
    kinds: ``K`` kind names, in the order given.
    layer_names: ``L`` layer names.
    effect: ``[K, L]`` Cohen's d (positive: probe C_T below the null's).
    effect_low, effect_high: ``[K, L]`` bootstrap interval of ``effect``.
    auc: ``[K, L]`` ROC AUC of probe against null batches (low C_T = probe).
    auc_low, auc_high: ``[K, L]`` bootstrap interval of ``auc``.
    probe_ct: ``[K, n_probe, L]`` C_T of every probe batch.
    null_ct: ``[n_null, L]`` C_T of every null batch.
    n_probe: ``[K, L]`` int, probe batches with a finite C_T (the others, NaN
      when no cell holds more than tau of the batch, are left out).
    n_null: ``[L]`` int, null batches with a finite C_T.
    rank: ``[K, L]`` int, 1 = best layer of the kind (AUC, then effect,
      then the earlier layer; |AUC - 1/2| and |effect| when ``alternative``
      is "two-sided"); layers with NaN measures rank last.
    alternative: "less" (probe C_T below the null's, copying) or
      "two-sided".
    level: confidence level of the intervals.
    n_bootstrap: bootstrap resamples behind the intervals.
    batch_size: points per batch (``None`` when the batches were given).
    seed: seed of the batch draws and the bootstrap.
  """

  kinds: tuple
  layer_names: tuple
  effect: np.ndarray
  effect_low: np.ndarray
  effect_high: np.ndarray
  auc: np.ndarray
  auc_low: np.ndarray
  auc_high: np.ndarray
  probe_ct: np.ndarray
  null_ct: np.ndarray
  n_probe: np.ndarray
  n_null: np.ndarray
  rank: np.ndarray
  alternative: str
  level: float
  n_bootstrap: int
  batch_size: int | None
  seed: int

  @property
  def recommended_index(self) -> np.ndarray:
    """``[K]`` index of the recommended layer of each kind."""
    return np.argmin(self.rank, axis=1)

  @property
  def recommended(self) -> dict:
    """Kind -> name of its recommended layer."""
    return {
      k: self.layer_names[i] for k, i in zip(self.kinds, self.recommended_index)
    }

  def to_rows(self) -> list:
    """One dict per (kind, layer), by kind then rank; JSON-able (NaN and
    infinities as ``None``)."""
    rows = []
    probe_mean = _nanfree_mean(self.probe_ct, axis=1)
    null_mean = _nanfree_mean(self.null_ct, axis=0)
    for k, kind in enumerate(self.kinds):
      for l in np.argsort(self.rank[k], kind="stable"):
        rows.append(
          {
            "kind": kind,
            "layer": self.layer_names[l],
            "layer_index": int(l),
            "rank": int(self.rank[k, l]),
            "recommended": bool(self.rank[k, l] == 1),
            "auc": _num(self.auc[k, l]),
            "auc_low": _num(self.auc_low[k, l]),
            "auc_high": _num(self.auc_high[k, l]),
            "effect": _num(self.effect[k, l]),
            "effect_low": _num(self.effect_low[k, l]),
            "effect_high": _num(self.effect_high[k, l]),
            "probe_ct_mean": _num(probe_mean[k, l]),
            "null_ct_mean": _num(null_mean[l]),
            "n_probe": int(self.n_probe[k, l]),
            "n_null": int(self.n_null[l]),
          }
        )
    return rows

  def to_dict(self) -> dict:
    """JSON-able summary: settings, recommendation and `to_rows`."""
    return {
      "kinds": list(self.kinds),
      "layers": list(self.layer_names),
      "recommended": self.recommended,
      "alternative": self.alternative,
      "level": self.level,
      "n_bootstrap": self.n_bootstrap,
      "n_probe_batches": int(self.probe_ct.shape[1]),
      "n_null_batches": int(self.null_ct.shape[0]),
      "batch_size": self.batch_size,
      "seed": self.seed,
      "rows": self.to_rows(),
    }

  def to_json(self, **kwargs) -> str:
    """`to_dict` as strict JSON text."""
    return json.dumps(self.to_dict(), allow_nan=False, **kwargs)

  def to_csv(self) -> str:
    """`to_rows` as CSV text (empty cell for a missing number)."""
    lines = [",".join(_ROW_FIELDS)]
    for row in self.to_rows():
      lines.append(
        ",".join(
          "" if row[f] is None else _csv_cell(row[f]) for f in _ROW_FIELDS
        )
      )
    return "\n".join(lines) + "\n"


def _csv_cell(v):
  if isinstance(v, str):
    return f'"{v}"' if ("," in v or '"' in v) else v
  if isinstance(v, bool):
    return str(v).lower()
  return repr(v)


def _num(x):
  x = float(x)
  return x if np.isfinite(x) else None


def _nanfree_mean(x, axis):
  """Mean of the finite values (NaN when there are none)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    return np.nanmean(np.where(np.isfinite(x), x, np.nan), axis=axis)


# ------------------------------------------------------------------ batches
def _as_layers(x, n_layers, what):
  x = np.asarray(x)
  if x.ndim == 2 and n_layers == 1:
    x = x[None]
  if x.ndim != 3 or x.shape[0] != n_layers:
    raise ValueError(
      f"{what} must be [layers={n_layers}, points, dims], got {x.shape}"
    )
  return x


def _batches(pool, n_layers, n_batches, batch_size, rng, what):
  """A pool ``[L, M, D]`` -> ``n_batches`` subsamples ``[L, batch_size, D]``
  (without replacement within a batch); a sequence of arrays -> themselves."""
  if isinstance(pool, (list, tuple)):
    out = [_as_layers(b, n_layers, f"{what}[{i}]") for i, b in enumerate(pool)]
    if not out:
      raise ValueError(f"{what} holds no batches")
    return out
  pool = _as_layers(pool, n_layers, what)
  if batch_size > pool.shape[1]:
    raise ValueError(
      f"{what} holds {pool.shape[1]} points, fewer than batch_size={batch_size}"
    )
  return [
    pool[:, rng.choice(pool.shape[1], batch_size, replace=False)]
    for _ in range(n_batches)
  ]


def _pool_size(pool, n_layers, what):
  if isinstance(pool, (list, tuple)):
    return None
  return _as_layers(pool, n_layers, what).shape[1]


def _score(reference, batches, tau):
  """``[B]`` batches ``[L, m_b, D]`` -> C_T ``[B, L]``: one `score_many`
  call when the reference has it and the batches share m, else `score`."""
  same = len({b.shape for b in batches}) == 1
  if same and hasattr(reference, "score_many"):
    return np.asarray(reference.score_many(np.stack(batches), tau=tau).ct)
  return np.stack([np.asarray(reference.score(b, tau=tau).ct) for b in batches])


# ------------------------------------------------------------------ measures
def cohens_d(probe_ct, null_ct):
  """Cohen's d of ``null`` over ``probe`` along axis -2, NaN batches left out.

  Args:
    probe_ct: ``[..., n1, L]``; null_ct: ``[..., n0, L]``.

  Returns:
    ``[..., L]`` ``(mean(null) - mean(probe)) / s_pooled``, ddof = 1; 0 when
    both means and the pooled deviation are 0, ``±inf`` when only the latter;
    NaN with fewer than 2 finite batches on a side.
  """
  p, q = np.asarray(probe_ct, np.float64), np.asarray(null_ct, np.float64)
  return _weighted_d(
    np.isfinite(p).astype(float),
    np.nan_to_num(p),
    np.isfinite(q).astype(float),
    np.nan_to_num(q),
  )


def _weighted_d(w1, x1, w0, x0):
  """Cohen's d of ``x [..., n, L]`` with integer weights ``w`` (same shape):
  multiplicities of a bootstrap resample times 0/1 for finite values."""
  c1, c0 = w1.sum(-2), w0.sum(-2)
  with np.errstate(divide="ignore", invalid="ignore"):
    m1 = (w1 * x1).sum(-2) / c1
    m0 = (w0 * x0).sum(-2) / c0
    ss1 = (w1 * x1**2).sum(-2) - c1 * m1**2
    ss0 = (w0 * x0**2).sum(-2) - c0 * m0**2
    pooled = np.sqrt(np.maximum(ss1 + ss0, 0.0) / (c1 + c0 - 2))
    diff = m0 - m1
    # Sums of squares round off: a pooled deviation below ~1e-12 of the
    # scale is zero.
    scale = np.maximum(np.abs(m1), np.abs(m0)) + 1.0
    zero = pooled <= 1e-12 * scale
    d = np.where(
      zero,
      np.where(diff == 0, 0.0, np.sign(diff) * np.inf),
      diff / np.where(zero, 1.0, pooled),
    )
  return np.where((c1 >= 2) & (c0 >= 2), d, np.nan)


def _auc(a1, wins, a0):
  """Weighted AUC: ``a1 [..., K, n1, L]``, ``wins [K, L, n1, n0]``,
  ``a0 [..., n0, L]`` -> ``[..., K, L]`` (NaN where a side has no weight)."""
  num = np.einsum("...kil,klij,...jl->...kl", a1, wins, a0, optimize=True)
  den = a1.sum(-2) * a0.sum(-2)[..., None, :]
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _pair_wins(probe_ct, null_ct):
  """``[K, n1, L]``, ``[n0, L]`` -> ``[K, L, n1, n0]``: 1 where the probe
  batch's C_T is below the null batch's, 1/2 on ties."""
  p = np.moveaxis(probe_ct, 1, 2)[..., :, None]  # [K, L, n1, 1]
  q = null_ct.T[None, :, None, :]  # [1, L, 1, n0]
  return (p < q) + 0.5 * (p == q)


def select_layers(
  reference,
  probes: Mapping,
  null,
  *,
  n_batches: int = DEFAULT_N_BATCHES,
  batch_size: int | None = None,
  tau: float | None = None,
  n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
  level: float = DEFAULT_LEVEL,
  alternative: str = "less",
  seed: int = 0,
) -> Selection:
  """Measures, per memorisation kind and layer, how well C_T detects it.

  Args:
    reference: a fitted `ctjax.CTReference` (anything with ``layer_names``
      and ``score(gen [L, m, D])``; ``score_many(gens [B, L, m, D])`` is used
      when present).
    probes: kind name -> probe embeddings: a pool ``[L, M, D]`` (``n_batches``
      batches of ``batch_size`` points are drawn from it, without replacement
      within a batch) or a sequence of batches ``[L, m_b, D]`` used as given.
      ``[M, D]`` is accepted for a one-layer reference.
    null: embeddings of fresh held-out images (not in the reference's T or
      P), a pool ``[L, M0, D]`` or a sequence of batches, as for ``probes``.
    n_batches: batches drawn from each pool (at least 2).
    batch_size: points per drawn batch; ``None`` = half the smallest pool.
    tau: as in `CTReference.score` (``None`` = 20 / batch size).
    n_bootstrap: bootstrap resamples for the intervals.
    level: confidence level of the intervals.
    alternative: "less" ranks layers by how far the probe's C_T falls below
      the null's (copying); "two-sided" by separation either way.
    seed: seed of the batch draws and of the bootstrap. Each kind's draws
      depend on its name and the seed only (not on the other kinds).

  Returns:
    A `Selection`.

  Raises:
    ValueError: no kinds, bad shapes, fewer than 2 batches, or a batch size
      above a pool's size.
  """
  if not probes:
    raise ValueError("probes holds no kinds")
  if not 0.0 < level < 1.0:
    raise ValueError(f"level must be in (0, 1), got {level}")
  if alternative not in ("less", "two-sided"):
    raise ValueError(
      f"alternative must be 'less' or 'two-sided', got {alternative!r}"
    )
  n_layers = len(reference.layer_names)
  kinds = tuple(str(k) for k in probes)
  if len(set(kinds)) != len(kinds):
    raise ValueError(f"kind names must be distinct, got {kinds}")
  pools = [probes[k] for k in probes]
  if batch_size is None:
    sizes = [
      s
      for s in [
        _pool_size(p, n_layers, f"probes[{k!r}]") for k, p in zip(kinds, pools)
      ]
      + [_pool_size(null, n_layers, "null")]
      if s is not None
    ]
    batch_size = max(1, min(sizes) // 2) if sizes else None
  drawn = batch_size is not None and any(
    not isinstance(p, (list, tuple)) for p in [*pools, null]
  )
  if drawn and n_batches < 2:
    raise ValueError(f"n_batches must be at least 2, got {n_batches}")

  null_batches = _batches(
    null,
    n_layers,
    n_batches,
    batch_size,
    np.random.default_rng([seed, 1]),
    "null",
  )
  null_ct = _score(reference, null_batches, tau)
  probe_cts = []
  for kind, pool in zip(kinds, pools):
    rng = np.random.default_rng([seed, 0, zlib.crc32(kind.encode())])
    b = _batches(
      pool, n_layers, n_batches, batch_size, rng, f"probes[{kind!r}]"
    )
    probe_cts.append(_score(reference, b, tau))
  n1 = {len(c) for c in probe_cts}
  if len(n1) != 1:
    raise ValueError(
      f"every kind needs the same number of batches, got "
      f"{dict(zip(kinds, map(len, probe_cts)))}"
    )
  probe_ct = np.stack(probe_cts).astype(np.float64)  # [K, n1, L]
  null_ct = null_ct.astype(np.float64)  # [n0, L]
  n1, n0 = probe_ct.shape[1], null_ct.shape[0]
  if n1 < 2 or n0 < 2:
    raise ValueError(
      f"need at least 2 probe and 2 null batches, got {n1} and {n0}"
    )

  # A batch whose C_T is NaN on a layer (no cell above tau) is left out of
  # that layer's measures; fewer than 2 finite batches on a side: NaN.
  v1 = np.isfinite(probe_ct).astype(float)  # [K, n1, L]
  v0 = np.isfinite(null_ct).astype(float)  # [n0, L]
  p0, q0 = np.nan_to_num(probe_ct), np.nan_to_num(null_ct)
  n_probe, n_null = v1.sum(1).astype(int), v0.sum(0).astype(int)
  valid = (n_probe >= 2) & (n_null >= 2)[None]
  nan = np.where(valid, 0.0, np.nan)
  wins = _pair_wins(p0, q0)  # [K, L, n1, n0]
  auc = _auc(v1, wins, v0) + nan
  effect = _weighted_d(v1, p0, v0[None], q0[None]) + nan

  rng = np.random.default_rng([seed, 2])
  w1 = rng.multinomial(n1, np.full(n1, 1.0 / n1), size=n_bootstrap)
  w0 = rng.multinomial(n0, np.full(n0, 1.0 / n0), size=n_bootstrap)
  a1 = w1[:, None, :, None] * v1[None]  # [b, K, n1, L]
  a0 = w0[:, :, None] * v0[None]  # [b, n0, L]
  boot_auc = _auc(a1, wins, a0)  # [b, K, L]
  boot_d = _weighted_d(a1, p0[None], a0[:, None], q0[None, None])
  alpha = (1.0 - level) / 2.0

  def interval(boot):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN layers
      lo, hi = np.nanquantile(
        boot, [alpha, 1.0 - alpha], axis=0, method="inverted_cdf"
      )
    return lo + nan, hi + nan

  auc_low, auc_high = interval(boot_auc)
  effect_low, effect_high = interval(boot_d)

  # Rank within a kind: AUC, then effect, then the earlier layer; NaN last.
  key_auc, key_d = auc, effect
  if alternative == "two-sided":
    key_auc, key_d = np.abs(auc - 0.5), np.abs(effect)
  rank = np.empty(auc.shape, int)
  for k in range(len(kinds)):
    order = sorted(
      range(n_layers),
      key=lambda l: (
        not valid[k, l],
        -key_auc[k, l] if valid[k, l] else 0.0,
        -key_d[k, l] if valid[k, l] else 0.0,
        l,
      ),
    )
    rank[k, order] = np.arange(1, n_layers + 1)

  return Selection(
    kinds=kinds,
    layer_names=tuple(reference.layer_names),
    effect=effect,
    effect_low=effect_low,
    effect_high=effect_high,
    auc=auc,
    auc_low=auc_low,
    auc_high=auc_high,
    probe_ct=probe_ct,
    null_ct=null_ct,
    n_probe=n_probe,
    n_null=n_null,
    rank=rank,
    alternative=alternative,
    level=float(level),
    n_bootstrap=int(n_bootstrap),
    batch_size=batch_size,
    seed=int(seed),
  )


__all__ = ["Selection", "cohens_d", "select_layers"]
