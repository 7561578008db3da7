"""Generative adversarial network with MLP generator and discriminator.

Pixels on [-1, 1] (tanh output); non-saturating loss (Goodfellow et al. 2014):
the discriminator minimises softplus(-D(x)) + softplus(D(G(z))), the generator
softplus(-D(G(z))). One jitted step updates D, then G, with Adam (beta1 = 0.5).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ctjax.audit.generators import common


@dataclasses.dataclass(frozen=True)
class Config:
  """GAN hyperparameters.

  Attributes:
    hidden: width of the two hidden layers of G and D.
    latent: noise dimensions.
    num_steps: D+G update pairs.
    batch_size: images per step.
    learning_rate: Adam learning rate (both networks).
    beta1: Adam beta1.
    sample_batch: images per jitted sampling call.
  """

  hidden: int = 128
  latent: int = 16
  num_steps: int = 2000
  batch_size: int = 128
  learning_rate: float = 5e-4
  beta1: float = 0.5
  sample_batch: int = 500


PRESETS = {
  "digits": Config(),
  "fashion_mnist": Config(
    hidden=512, latent=64, num_steps=5000, learning_rate=2e-4
  ),
}


class Generator(nnx.Module):
  """``[B, latent]`` noise -> ``[B, dim]`` pixels on [-1, 1]."""

  def __init__(self, latent, hidden, dim, *, rngs):
    self.l1 = nnx.Linear(latent, hidden, rngs=rngs)
    self.l2 = nnx.Linear(hidden, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, dim, rngs=rngs)

  def __call__(self, z):
    h = jax.nn.leaky_relu(self.l2(jax.nn.leaky_relu(self.l1(z), 0.2)), 0.2)
    return jnp.tanh(self.out(h))


class Discriminator(nnx.Module):
  """``[B, dim]`` pixels -> ``[B]`` logits (real > 0)."""

  def __init__(self, dim, hidden, *, rngs):
    self.l1 = nnx.Linear(dim, hidden, rngs=rngs)
    self.l2 = nnx.Linear(hidden, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, 1, rngs=rngs)

  def __call__(self, x):
    h = jax.nn.leaky_relu(self.l2(jax.nn.leaky_relu(self.l1(x), 0.2)), 0.2)
    return self.out(h)[:, 0]


class GAN(nnx.Module):
  """Holds both networks so one split/merge covers the pair."""

  def __init__(self, dim, cfg, *, rngs):
    self.generator = Generator(cfg.latent, cfg.hidden, dim, rngs=rngs)
    self.discriminator = Discriminator(dim, cfg.hidden, rngs=rngs)


def _build(cfg, dim, seed=0):
  return GAN(dim, cfg, rngs=nnx.Rngs(seed))


def _opt(cfg):
  return optax.adam(cfg.learning_rate, b1=cfg.beta1)


def discriminator_loss(real_logits, fake_logits):
  """-log sigmoid(D(x)) - log(1 - sigmoid(D(G(z)))), batch mean.

  Args:
    real_logits: ``[B]`` D on real images.
    fake_logits: ``[B]`` D on generated images.
  """
  return jnp.mean(jax.nn.softplus(-real_logits) + jax.nn.softplus(fake_logits))


def generator_loss(fake_logits):
  """Non-saturating generator loss -log sigmoid(D(G(z))), batch mean."""
  return jnp.mean(jax.nn.softplus(-fake_logits))


def _step(carry, data, key, static):
  graphdef, cfg = static
  g_p, d_p, d_opt, g_opt = carry
  k_idx, k_z1, k_z2 = jax.random.split(key, 3)
  real = data[jax.random.randint(k_idx, (cfg.batch_size,), 0, data.shape[0])]
  z1 = jax.random.normal(k_z1, (cfg.batch_size, cfg.latent))
  z2 = jax.random.normal(k_z2, (cfg.batch_size, cfg.latent))

  def d_loss(d_params, g_params):
    gan = nnx.merge(
      graphdef, {"generator": g_params, "discriminator": d_params}
    )
    fake = jax.lax.stop_gradient(gan.generator(z1))
    return discriminator_loss(gan.discriminator(real), gan.discriminator(fake))

  def g_loss(g_params, d_params):
    gan = nnx.merge(
      graphdef, {"generator": g_params, "discriminator": d_params}
    )
    return generator_loss(gan.discriminator(gan.generator(z2)))

  ld, grads = jax.value_and_grad(d_loss)(d_p, g_p)
  updates, d_opt = _opt(cfg).update(grads, d_opt, d_p)
  d_p = optax.apply_updates(d_p, updates)
  lg, grads = jax.value_and_grad(g_loss)(g_p, d_p)
  updates, g_opt = _opt(cfg).update(grads, g_opt, g_p)
  g_p = optax.apply_updates(g_p, updates)
  return (g_p, d_p, d_opt, g_opt), jnp.stack([ld, lg])


def train(images, seed=0, progress=True, **hparams):
  """Trains a GAN on uint8 ``[N, H, W(, C)]`` images."""
  cfg = common.make_config(Config, hparams)
  images = common.check_images(images)
  data = common.to_signed(images)
  graphdef, params = nnx.split(_build(cfg, data.shape[1], seed), nnx.Param)
  g_p, d_p = params["generator"], params["discriminator"]
  carry = (g_p, d_p, _opt(cfg).init(d_p), _opt(cfg).init(g_p))
  (g_p, d_p, _, _), _ = common.train_loop(
    _step,
    (graphdef, cfg),
    carry,
    data,
    jax.random.PRNGKey(seed + 1),
    cfg.num_steps,
    desc=f"gan seed {seed}",
    progress=progress,
  )
  return common.GeneratorModel(
    "gan",
    images.shape[1:],
    int(seed),
    common.hparams_dict(cfg),
    common.flatten_params({"generator": g_p, "discriminator": d_p}),
  )


def restore(model):
  """GeneratorModel -> (graphdef, params State, Config)."""
  cfg = common.make_config(Config, model.hparams)
  abstract = nnx.eval_shape(lambda: _build(cfg, model.dim))
  graphdef, template = nnx.split(abstract, nnx.Param)
  return (
    graphdef,
    common.unflatten_params(template, model.params, "gan parameters"),
    cfg,
  )


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg"))
def _draw(params, key, *, graphdef, cfg):
  z = jax.random.normal(key, (cfg.sample_batch, cfg.latent))
  return nnx.merge(graphdef, params).generator(z)


def sample(model, n, seed):
  """Draws ``n`` images: uint8 ``[n, *model.image_shape]``."""
  graphdef, params, cfg = restore(model)
  x = common.sample_in_batches(
    lambda k: _draw(params, k, graphdef=graphdef, cfg=cfg),
    seed,
    n,
    cfg.sample_batch,
  )
  return common.from_signed(x.reshape(n, -1), model.image_shape)
