"""Denoising diffusion probabilistic model with an MLP noise predictor.

One network, two samplers (two "architectures" for fingerprinting, as the
paper's DDPM/DDIM/PNDM share one network):

* ``sample`` -- ancestral DDPM sampling (Ho et al. 2020, Alg. 2) over all
  ``timesteps`` with the posterior variance beta-tilde;
* ``sample_ddim`` -- deterministic DDIM (Song et al. 2021, eta = 0) over
  ``ddim_steps`` evenly spaced timesteps.

Both predict x0 from the noise estimate and clip it to [-1, 1] before each
update (as diffusers' ``clip_sample``). Pixels live on [-1, 1]; the noise
schedule is the cosine schedule of Nichol & Dhariwal (2021).
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ctjax.audit.generators import common


@dataclasses.dataclass(frozen=True)
class Config:
  """DDPM hyperparameters.

  Attributes:
    hidden: width of the residual MLP.
    depth: residual blocks.
    time_dim: sinusoidal time-embedding features.
    timesteps: diffusion steps T (ancestral sampling uses all of them).
    ddim_steps: DDIM sampling steps.
    num_steps: Adam steps.
    batch_size: images per step.
    learning_rate: peak Adam learning rate (cosine decay to 10%).
    ema_decay: decay of the exponential moving average used for sampling.
    sample_batch: images per jitted sampling call.
  """

  hidden: int = 128
  depth: int = 2
  time_dim: int = 32
  timesteps: int = 100
  ddim_steps: int = 20
  num_steps: int = 2000
  batch_size: int = 64
  learning_rate: float = 2e-3
  ema_decay: float = 0.995
  sample_batch: int = 500


PRESETS = {
  "digits": Config(),
  "fashion_mnist": Config(
    hidden=512,
    depth=2,
    time_dim=64,
    timesteps=200,
    ddim_steps=40,
    num_steps=4000,
    batch_size=128,
    learning_rate=1e-3,
    ema_decay=0.998,
  ),
}


def cosine_alpha_bar(timesteps):
  """Cumulative signal fraction ``alpha_bar[t]``, t = 0..T-1, float64 ``[T]``.

  Nichol & Dhariwal (2021) eq. 17 with s = 0.008, betas clipped at 0.999.
  """
  s = 0.008
  f = lambda t: np.cos((t / timesteps + s) / (1 + s) * math.pi / 2) ** 2
  t = np.arange(timesteps + 1, dtype=np.float64)
  betas = np.clip(1.0 - f(t[1:]) / f(t[:-1]), 0.0, 0.999)
  return np.cumprod(1.0 - betas)


def time_embedding(t, dim):
  """Sinusoidal embedding of integer timesteps ``[B]`` -> ``[B, dim]``."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half) / half)
  angles = t.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class Block(nnx.Module):
  """Pre-norm residual MLP block conditioned on the time embedding."""

  def __init__(self, hidden, *, rngs):
    self.norm = nnx.LayerNorm(hidden, rngs=rngs)
    self.dense1 = nnx.Linear(hidden, hidden, rngs=rngs)
    self.temb = nnx.Linear(hidden, hidden, rngs=rngs)
    self.dense2 = nnx.Linear(hidden, hidden, rngs=rngs)

  def __call__(self, h, temb):
    """``h`` ``[B, hidden]``, ``temb`` ``[B, hidden]`` -> ``[B, hidden]``."""
    u = jax.nn.silu(self.dense1(jax.nn.silu(self.norm(h))) + self.temb(temb))
    return h + self.dense2(u)


class NoiseNet(nnx.Module):
  """eps-prediction network: ``x_t [B, dim]``, ``t [B]`` -> ``[B, dim]``."""

  def __init__(self, dim, cfg, *, rngs):
    self.time_dim = cfg.time_dim
    self.time1 = nnx.Linear(cfg.time_dim, cfg.hidden, rngs=rngs)
    self.time2 = nnx.Linear(cfg.hidden, cfg.hidden, rngs=rngs)
    self.inp = nnx.Linear(dim, cfg.hidden, rngs=rngs)
    self.blocks = nnx.List(
      [Block(cfg.hidden, rngs=rngs) for _ in range(cfg.depth)]
    )
    self.norm = nnx.LayerNorm(cfg.hidden, rngs=rngs)
    self.out = nnx.Linear(cfg.hidden, dim, rngs=rngs)

  def __call__(self, x, t):
    temb = self.time2(jax.nn.silu(self.time1(time_embedding(t, self.time_dim))))
    h = self.inp(x)
    for block in self.blocks:
      h = block(h, temb)
    return self.out(jax.nn.silu(self.norm(h)))


def _build(cfg, dim, seed=0):
  return NoiseNet(dim, cfg, rngs=nnx.Rngs(seed))


def _opt(cfg):
  sched = optax.cosine_decay_schedule(cfg.learning_rate, cfg.num_steps, 0.1)
  return optax.adam(sched)


def _step(carry, data, key, static):
  graphdef, cfg = static
  params, ema, opt_state = carry
  k_idx, k_t, k_eps = jax.random.split(key, 3)
  x0 = data[jax.random.randint(k_idx, (cfg.batch_size,), 0, data.shape[0])]
  t = jax.random.randint(k_t, (cfg.batch_size,), 0, cfg.timesteps)
  eps = jax.random.normal(k_eps, x0.shape)
  abar = jnp.asarray(cosine_alpha_bar(cfg.timesteps), jnp.float32)[t][:, None]
  xt = jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * eps

  def loss_fn(p):
    return jnp.mean((nnx.merge(graphdef, p)(xt, t) - eps) ** 2)

  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = _opt(cfg).update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  ema = jax.tree.map(
    lambda e, p: cfg.ema_decay * e + (1 - cfg.ema_decay) * p, ema, params
  )
  return (params, ema, opt_state), loss


def train(images, seed=0, progress=True, **hparams):
  """Trains the noise predictor on uint8 ``[N, H, W(, C)]`` images.

  The returned model holds the EMA parameters (used by both samplers).
  """
  cfg = common.make_config(Config, hparams)
  images = common.check_images(images)
  data = common.to_signed(images)
  graphdef, params = nnx.split(_build(cfg, data.shape[1], seed), nnx.Param)
  carry = (params, params, _opt(cfg).init(params))
  (_, ema, _), _ = common.train_loop(
    _step,
    (graphdef, cfg),
    carry,
    data,
    jax.random.PRNGKey(seed + 1),
    cfg.num_steps,
    desc=f"ddpm seed {seed}",
    progress=progress,
  )
  return common.GeneratorModel(
    "ddpm",
    images.shape[1:],
    int(seed),
    common.hparams_dict(cfg),
    common.flatten_params(ema),
  )


def restore(model):
  """GeneratorModel -> (graphdef, params State, Config)."""
  if model.family != "ddpm":
    raise ValueError(f"expected a 'ddpm' model, got {model.family!r}.")
  cfg = common.make_config(Config, model.hparams)
  abstract = nnx.eval_shape(lambda: _build(cfg, model.dim))
  graphdef, template = nnx.split(abstract, nnx.Param)
  return (
    graphdef,
    common.unflatten_params(template, model.params, "ddpm parameters"),
    cfg,
  )


def _predict_x0(eps_fn, x, t, abar_t):
  """Noise estimate -> x0 clipped to [-1, 1] and the eps consistent with it."""
  eps = eps_fn(x, t)
  x0 = jnp.clip((x - jnp.sqrt(1 - abar_t) * eps) / jnp.sqrt(abar_t), -1, 1)
  eps = (x - jnp.sqrt(abar_t) * x0) / jnp.sqrt(1 - abar_t)
  return x0, eps


def ancestral_loop(eps_fn, x, key, abar):
  """Ancestral DDPM sampling from ``x`` = x_T down to x_0.

  Args:
    eps_fn: ``(x [B, D], t scalar int) -> eps [B, D]`` noise estimate.
    x: ``[B, D]`` starting noise.
    key: PRNG key of the per-step noise.
    abar: ``[T]`` cumulative alphas.

  Returns:
    ``[B, D]`` samples.
  """
  abar = jnp.asarray(abar, jnp.float32)
  abar_prev = jnp.concatenate([jnp.ones((1,), jnp.float32), abar[:-1]])
  beta = 1.0 - abar / abar_prev

  def body(x, inp):
    t, k = inp
    x0, _ = _predict_x0(eps_fn, x, t, abar[t])
    # Posterior q(x_{t-1} | x_t, x0) (Ho et al. 2020, eqs. 6-7).
    c0 = jnp.sqrt(abar_prev[t]) * beta[t] / (1 - abar[t])
    ct = jnp.sqrt(1 - beta[t]) * (1 - abar_prev[t]) / (1 - abar[t])
    var = beta[t] * (1 - abar_prev[t]) / (1 - abar[t])
    noise = jax.random.normal(k, x.shape) * (t > 0)
    return c0 * x0 + ct * x + jnp.sqrt(var) * noise, None

  steps = abar.shape[0]
  ts = jnp.arange(steps - 1, -1, -1)
  x, _ = jax.lax.scan(body, x, (ts, jax.random.split(key, steps)))
  return x


def ddim_timesteps(timesteps, steps):
  """Evenly spaced DDIM timesteps, descending, int ``[steps]``."""
  if not 1 <= steps <= timesteps:
    raise ValueError(f"ddim_steps must be in [1, {timesteps}], got {steps}.")
  return np.unique(
    np.round(np.linspace(0, timesteps - 1, steps)).astype(np.int32)
  )[::-1].copy()


def ddim_loop(eps_fn, x, abar, ts):
  """Deterministic DDIM (eta = 0) from ``x`` = x_T over timesteps ``ts``.

  Args:
    eps_fn: ``(x [B, D], t scalar int) -> eps [B, D]``.
    x: ``[B, D]`` starting noise.
    abar: ``[T]`` cumulative alphas.
    ts: descending int ``[S]`` timesteps (``ddim_timesteps``).
  """
  abar = jnp.asarray(abar, jnp.float32)
  ts = np.asarray(ts, np.int32)
  prev = np.concatenate([ts[1:], [-1]]).astype(np.int32)

  def body(x, inp):
    t, tp = inp
    x0, eps = _predict_x0(eps_fn, x, t, abar[t])
    abar_p = jnp.where(tp >= 0, abar[jnp.maximum(tp, 0)], 1.0)
    return jnp.sqrt(abar_p) * x0 + jnp.sqrt(1 - abar_p) * eps, None

  x, _ = jax.lax.scan(body, x, (jnp.asarray(ts), jnp.asarray(prev)))
  return x


def _eps_fn(net):
  return lambda x, t: net(x, jnp.full((x.shape[0],), t))


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "dim"))
def _draw_ancestral(params, key, *, graphdef, cfg, dim):
  k0, kloop = jax.random.split(key)
  x = jax.random.normal(k0, (cfg.sample_batch, dim))
  return ancestral_loop(
    _eps_fn(nnx.merge(graphdef, params)),
    x,
    kloop,
    cosine_alpha_bar(cfg.timesteps),
  )


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "dim"))
def _draw_ddim(params, key, *, graphdef, cfg, dim):
  x = jax.random.normal(key, (cfg.sample_batch, dim))
  return ddim_loop(
    _eps_fn(nnx.merge(graphdef, params)),
    x,
    cosine_alpha_bar(cfg.timesteps),
    ddim_timesteps(cfg.timesteps, cfg.ddim_steps),
  )


def _sample(draw, model, n, seed):
  graphdef, params, cfg = restore(model)
  x = common.sample_in_batches(
    lambda k: draw(params, k, graphdef=graphdef, cfg=cfg, dim=model.dim),
    seed,
    n,
    cfg.sample_batch,
  )
  return common.from_signed(x.reshape(n, -1), model.image_shape)


def sample(model, n, seed):
  """Ancestral DDPM samples: uint8 ``[n, *model.image_shape]``."""
  return _sample(_draw_ancestral, model, n, seed)


def sample_ddim(model, n, seed):
  """Deterministic DDIM samples (eta = 0): uint8 ``[n, *image_shape]``."""
  return _sample(_draw_ddim, model, n, seed)
