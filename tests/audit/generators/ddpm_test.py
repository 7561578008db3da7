"""Tests for the DDPM network and its two samplers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctjax.audit.generators import ddpm

TINY = dict(
  hidden=16,
  depth=1,
  time_dim=8,
  timesteps=20,
  ddim_steps=5,
  num_steps=20,
  batch_size=16,
  sample_batch=32,
)


def test_cosine_schedule_matches_the_published_formula():
  t_max, s = 100, 0.008
  f = lambda t: math.cos((t / t_max + s) / (1 + s) * math.pi / 2) ** 2
  abar = ddpm.cosine_alpha_bar(t_max)
  # Without beta clipping alpha_bar(t) = f(t) / f(0) (Nichol & Dhariwal eq. 17).
  for t in (0, 10, 50, 90):
    np.testing.assert_allclose(abar[t], f(t + 1) / f(0), rtol=1e-10)
  assert np.all(np.diff(abar) < 0) and abar[-1] < 1e-3


def test_time_embedding_values():
  emb = ddpm.time_embedding(jnp.array([0, 3]), 4)
  freqs = np.exp(-np.log(10000.0) * np.arange(2) / 2)
  np.testing.assert_allclose(
    emb[1], np.r_[np.sin(3 * freqs), np.cos(3 * freqs)], rtol=1e-6
  )
  np.testing.assert_allclose(emb[0], [0, 0, 1, 1])


def test_ddim_timesteps():
  ts = ddpm.ddim_timesteps(100, 5)
  np.testing.assert_array_equal(ts, [99, 74, 50, 25, 0])
  assert len(ddpm.ddim_timesteps(20, 20)) == 20
  with pytest.raises(ValueError, match="ddim_steps"):
    ddpm.ddim_timesteps(20, 21)


def _gaussian_oracle(abar, m, s):
  """Exact E[eps | x_t] for data ~ N(m, s^2) per dimension."""
  abar = jnp.asarray(abar, jnp.float32)

  def eps_fn(x, t):
    a = abar[t]
    return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * m) / (a * s * s + 1 - a)

  return eps_fn


def _linear_coeffs(a, m, s):
  """x0_hat = k x + c for the Gaussian oracle at alpha_bar a."""
  k = math.sqrt(a) * s * s / (a * s * s + 1 - a)
  return k, m - k * math.sqrt(a) * m


def test_samplers_against_exact_gaussian_recursion():
  """With the exact noise predictor for Gaussian data every update is linear,
  so the output mean and variance follow a closed-form recursion."""
  m, s, t_max = 0.1, 0.2, 50
  abar = ddpm.cosine_alpha_bar(t_max)
  abar_prev = np.r_[1.0, abar[:-1]]
  eps_fn = _gaussian_oracle(abar, m, s)
  x = jax.random.normal(jax.random.PRNGKey(0), (8000, 4))
  # Ancestral: x' = c0 x0_hat + ct x + sqrt(var) z.
  mu, var = 0.0, 1.0
  for t in range(t_max - 1, -1, -1):
    beta = 1 - abar[t] / abar_prev[t]
    c0 = math.sqrt(abar_prev[t]) * beta / (1 - abar[t])
    ct = math.sqrt(1 - beta) * (1 - abar_prev[t]) / (1 - abar[t])
    k, c = _linear_coeffs(abar[t], m, s)
    a_lin, b_lin = c0 * k + ct, c0 * c
    noise = beta * (1 - abar_prev[t]) / (1 - abar[t]) if t > 0 else 0.0
    mu, var = a_lin * mu + b_lin, a_lin**2 * var + noise
  out = np.asarray(
    jax.jit(
      lambda x: ddpm.ancestral_loop(eps_fn, x, jax.random.PRNGKey(1), abar)
    )(x)
  )
  np.testing.assert_allclose(out.mean(), mu, atol=0.005)
  np.testing.assert_allclose(out.std(), math.sqrt(var), rtol=0.02)
  # DDIM: x' = sqrt(ap) x0_hat + sqrt(1 - ap) (x - sqrt(a) x0_hat)/sqrt(1 - a).
  ts = ddpm.ddim_timesteps(t_max, 10)
  mu, var = 0.0, 1.0
  for i, t in enumerate(ts):
    a = abar[t]
    ap = abar[ts[i + 1]] if i + 1 < len(ts) else 1.0
    k, c = _linear_coeffs(a, m, s)
    r = math.sqrt(1 - ap) / math.sqrt(1 - a)
    a_lin = math.sqrt(ap) * k + r * (1 - math.sqrt(a) * k)
    b_lin = math.sqrt(ap) * c - r * math.sqrt(a) * c
    mu, var = a_lin * mu + b_lin, a_lin**2 * var
  out = np.asarray(jax.jit(lambda x: ddpm.ddim_loop(eps_fn, x, abar, ts))(x))
  np.testing.assert_allclose(out.mean(), mu, atol=0.005)
  np.testing.assert_allclose(out.std(), math.sqrt(var), rtol=0.02)
  # And the DDIM map is deterministic: the same x_T gives the same output.
  again = np.asarray(jax.jit(lambda x: ddpm.ddim_loop(eps_fn, x, abar, ts))(x))
  np.testing.assert_array_equal(out, again)


def test_point_mass_data_is_recovered_exactly():
  """For data at one point x*, both samplers land on x* (clip is inactive)."""
  abar = jnp.asarray(ddpm.cosine_alpha_bar(30), jnp.float32)
  star = jnp.array([0.5, -0.25, 0.0])
  eps_fn = lambda x, t: (x - jnp.sqrt(abar[t]) * star) / jnp.sqrt(1 - abar[t])
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
  np.testing.assert_allclose(
    ddpm.ancestral_loop(eps_fn, x, jax.random.PRNGKey(1), abar),
    np.tile(star, (5, 1)),
    atol=1e-5,
  )
  np.testing.assert_allclose(
    ddpm.ddim_loop(eps_fn, x, abar, ddpm.ddim_timesteps(30, 6)),
    np.tile(star, (5, 1)),
    atol=1e-5,
  )


def test_train_and_both_samplers(tiny_images):
  model = ddpm.train(tiny_images, seed=0, progress=False, **TINY)
  assert model.family == "ddpm"
  for sampler in (ddpm.sample, ddpm.sample_ddim):
    s = sampler(model, 40, seed=0)
    assert s.shape == (40, 8, 8) and s.dtype == np.uint8 and s.std() > 0
    np.testing.assert_array_equal(s, sampler(model, 40, seed=0))
  assert not np.array_equal(
    ddpm.sample(model, 40, 0), ddpm.sample_ddim(model, 40, 0)
  )
  other = ddpm.train(tiny_images, seed=1, progress=False, **TINY)
  assert not np.array_equal(
    ddpm.sample_ddim(model, 8, 0), ddpm.sample_ddim(other, 8, 0)
  )
