"""Variational auto-encoder with MLP encoder and decoder (flax.nnx, optax).

Pixels on [0, 1] with a Bernoulli (sigmoid cross-entropy) likelihood and a
standard-normal prior; a sample is the decoder's mean for z ~ N(0, I).
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
  """VAE hyperparameters.

  Attributes:
    hidden: width of the two hidden layers of encoder and decoder.
    latent: latent dimensions.
    num_steps: Adam steps.
    batch_size: images per step.
    learning_rate: Adam learning rate.
    beta: weight of the KL term.
    sample_batch: images per jitted sampling call.
  """

  hidden: int = 128
  latent: int = 8
  num_steps: int = 1500
  batch_size: int = 128
  learning_rate: float = 2e-3
  beta: float = 1.0
  sample_batch: int = 500


PRESETS = {
  "digits": Config(),
  "fashion_mnist": Config(hidden=512, latent=16, num_steps=5000),
}


class VAE(nnx.Module):
  """MLP VAE on flattened images ``[B, dim]``."""

  def __init__(self, dim, hidden, latent, *, rngs):
    self.enc1 = nnx.Linear(dim, hidden, rngs=rngs)
    self.enc2 = nnx.Linear(hidden, hidden, rngs=rngs)
    self.enc_out = nnx.Linear(hidden, 2 * latent, rngs=rngs)
    self.dec1 = nnx.Linear(latent, hidden, rngs=rngs)
    self.dec2 = nnx.Linear(hidden, hidden, rngs=rngs)
    self.dec_out = nnx.Linear(hidden, dim, rngs=rngs)

  def encode(self, x):
    """``[B, dim]`` -> mean, log-variance ``[B, latent]`` each."""
    h = jax.nn.gelu(self.enc2(jax.nn.gelu(self.enc1(x))))
    mu, logvar = jnp.split(self.enc_out(h), 2, axis=-1)
    return mu, logvar

  def decode(self, z):
    """``[B, latent]`` -> pixel logits ``[B, dim]``."""
    return self.dec_out(jax.nn.gelu(self.dec2(jax.nn.gelu(self.dec1(z)))))


def _build(cfg, dim, seed=0):
  return VAE(dim, cfg.hidden, cfg.latent, rngs=nnx.Rngs(seed))


def _step(carry, data, key, static):
  graphdef, cfg = static
  params, opt_state = carry
  k_idx, k_eps = jax.random.split(key)
  x = data[jax.random.randint(k_idx, (cfg.batch_size,), 0, data.shape[0])]

  def loss_fn(p):
    model = nnx.merge(graphdef, p)
    mu, logvar = model.encode(x)
    z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(k_eps, mu.shape)
    rec = optax.sigmoid_binary_cross_entropy(model.decode(z), x).sum(-1)
    kl = 0.5 * jnp.sum(jnp.exp(logvar) + mu**2 - 1.0 - logvar, axis=-1)
    return jnp.mean(rec + cfg.beta * kl)

  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = optax.adam(cfg.learning_rate).update(
    grads, opt_state, params
  )
  return (optax.apply_updates(params, updates), opt_state), loss


def train(images, seed=0, progress=True, **hparams):
  """Trains a VAE on uint8 ``[N, H, W(, C)]`` images."""
  cfg = common.make_config(Config, hparams)
  images = common.check_images(images)
  data = common.to_unit(images)
  graphdef, params = nnx.split(_build(cfg, data.shape[1], seed), nnx.Param)
  opt_state = optax.adam(cfg.learning_rate).init(params)
  (params, _), _ = common.train_loop(
    _step,
    (graphdef, cfg),
    (params, opt_state),
    data,
    jax.random.PRNGKey(seed + 1),
    cfg.num_steps,
    desc=f"vae seed {seed}",
    progress=progress,
  )
  return common.GeneratorModel(
    "vae",
    images.shape[1:],
    int(seed),
    common.hparams_dict(cfg),
    common.flatten_params(params),
  )


def restore(model):
  """GeneratorModel -> (graphdef, params State, Config)."""
  cfg = common.make_config(Config, model.hparams)
  abstract = nnx.eval_shape(lambda: _build(cfg, model.dim))
  graphdef, template = nnx.split(abstract, nnx.Param)
  return (
    graphdef,
    common.unflatten_params(template, model.params, "vae parameters"),
    cfg,
  )


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg"))
def _draw(params, key, *, graphdef, cfg):
  z = jax.random.normal(key, (cfg.sample_batch, cfg.latent))
  return jax.nn.sigmoid(nnx.merge(graphdef, params).decode(z))


def sample(model, n, seed):
  """Draws ``n`` images: uint8 ``[n, *model.image_shape]``."""
  graphdef, params, cfg = restore(model)
  x = common.sample_in_batches(
    lambda k: _draw(params, k, graphdef=graphdef, cfg=cfg),
    seed,
    n,
    cfg.sample_batch,
  )
  return common.from_unit(x.reshape(n, -1), model.image_shape)
