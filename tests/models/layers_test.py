"""The CPU fast paths of layers.conv2d and layers.attention against XLA's own
grouped convolution and jax.nn.dot_product_attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ctjax.models import layers


def _lax_conv(x, kernel, stride, padding, groups):
  (ph, pw) = padding
  return jax.lax.conv_general_dilated(
    x,
    kernel,
    (stride, stride),
    ((ph, ph), (pw, pw)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=groups,
  )


@pytest.mark.parametrize(
  "c_in,c_out,kernel,stride,padding,groups",
  [
    (6, 6, (7, 7), 1, (3, 3), 6),  # ConvNeXt's depthwise 7x7
    (6, 6, (3, 5), 2, (1, 2), 6),  # strided, non-square depthwise
    (5, 7, (1, 1), 1, (0, 0), 1),  # 1x1 as a matmul
    (5, 7, (1, 1), 2, (0, 0), 1),  # ResNet's strided 1x1 shortcut
    (4, 6, (3, 3), 2, (1, 1), 2),  # grouped, not depthwise: XLA's conv
    (5, 7, (3, 3), 1, (0, 0), 1),  # unpadded 3x3 (Inception): padded, cropped
    (5, 7, (2, 4), 1, (0, 0), 1),  # unpadded, non-square, even kernel
  ],
)
def test_conv2d_matches_lax(c_in, c_out, kernel, stride, padding, groups):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 11, 9, c_in)).astype(np.float32)
  w = rng.normal(size=kernel + (c_in // groups, c_out)).astype(np.float32)
  b = rng.normal(size=(c_out,)).astype(np.float32)
  got = jax.jit(
    lambda x, w, b: layers.conv2d(x, w, b, stride, padding, groups)
  )(x, w, b)
  want = _lax_conv(x, w, stride, padding, groups) + b
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_depthwise_sums_every_tap():
  # A kernel with one non-zero tap shifts the map: a dropped or misplaced
  # tap would leave zeros or the wrong neighbour.
  x = jnp.arange(2 * 5 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 5, 3)
  for i in range(3):
    for j in range(3):
      k = jnp.zeros((3, 3, 3)).at[i, j].set(1.0)
      y = layers.depthwise_conv2d(x, k, 1, (1, 1))
      xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
      np.testing.assert_array_equal(y, xp[:, i : i + 5, j : j + 5])


@pytest.mark.parametrize("with_bias", [False, True])
def test_attention_matches_dot_product_attention(with_bias):
  rng = np.random.default_rng(1)
  q, k, v = (rng.normal(size=(2, 7, 3, 4)).astype(np.float32) for _ in range(3))
  bias = rng.normal(size=(2, 3, 7, 7)).astype(np.float32) if with_bias else None
  got = layers.attention(q, k, v, 0.3, bias)
  want = jax.nn.dot_product_attention(q, k, v, bias=bias, scale=0.3)
  assert got.shape == (2, 7, 3, 4)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_max_pool_is_differentiable_under_jit():
  # The gradient of sum(max_pool(x)) counts, per input pixel, the windows
  # whose maximum it is; counted here by brute force over the windows.
  x = np.random.default_rng(0).normal(size=(1, 5, 5, 2)).astype(np.float32)
  grad = jax.jit(jax.grad(lambda a: layers.max_pool(a, 3, 2, 1).sum()))(x)
  want = np.zeros_like(x)
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  for i in range(0, 5, 2):
    for j in range(0, 5, 2):
      for c in range(2):
        win = padded[0, i : i + 3, j : j + 3, c]
        r, s = np.unravel_index(np.argmax(win), win.shape)
        want[0, i + r - 1, j + s - 1, c] += 1
  np.testing.assert_array_equal(np.asarray(grad), want)


def test_gelu_is_exact_gelu():
  from scipy.special import erf

  x = np.linspace(-12, 12, 2001).astype(np.float32)
  want = x.astype(np.float64) / 2 * (1 + erf(x.astype(np.float64) / 2**0.5))
  got = np.asarray(jax.jit(layers.gelu)(x), np.float64)
  np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-6)
  # The tanh approximation differs by up to ~5e-4 here: it must not pass.
  approx = np.asarray(jax.nn.gelu(x, approximate=True), np.float64)
  assert np.abs(approx - want).max() > 1e-4


def _native_norm(x, scale, bias):
  from ctjax.stats import native

  return layers.with_xla_derivatives(
    lambda x, s, b: native.layer_norm(x, s, b, 1e-5),
    lambda x, s, b: layers.LayerNorm(16, 1e-5)._xla(x, s, b),
  )(x, scale, bias)


def test_native_kernels_differentiate_as_the_xla_path():
  # LayerNorm, attention (no bias) and the depthwise convolution run ctjax's
  # native kernels on a CPU; their derivatives are the XLA functions'.
  rng = np.random.default_rng(3)
  q, k, v = (rng.normal(size=(2, 9, 2, 16)).astype(np.float32) for _ in "qkv")
  x = rng.normal(size=(2, 6, 10, 16)).astype(np.float32)
  w = rng.normal(size=(7, 7, 1, 16)).astype(np.float32)
  b = rng.normal(size=(16,)).astype(np.float32)
  norm = layers.LayerNorm(16, 1e-5)
  pairs = [
    (
      _native_norm,
      norm._xla,
      (x, w[0, 0, 0], b),
    ),
    (
      lambda q, k, v: layers.attention(q, k, v, 0.25),
      lambda q, k, v: layers._attention_xla(q, k, v, 0.25, None),
      (q, k, v),
    ),
    (
      lambda x, w, b: layers.conv2d(x, w, b, 1, (3, 3), 16),
      lambda x, w, b: layers.depthwise_conv2d(x, w[:, :, 0], 1, (3, 3), b),
      (x, w, b),
    ),
  ]
  for f, ref, args in pairs:
    loss = lambda *a, f=f: jnp.sum(jnp.sin(f(*a)))
    got = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*args)
    want = jax.grad(lambda *a, ref=ref: jnp.sum(jnp.sin(ref(*a))), (0, 1, 2))(
      *args
    )
    for g, h in zip(got, want):
      np.testing.assert_allclose(g, h, rtol=1e-4, atol=1e-5)
    tangents = tuple(np.ones_like(a) for a in args)
    _, got_t = jax.jvp(f, args, tangents)
    _, want_t = jax.jvp(ref, args, tangents)
    np.testing.assert_allclose(got_t, want_t, rtol=1e-4, atol=1e-5)


def test_turned_off_traces_the_xla_forms():
  from ctjax.stats import native

  if native.why_not() is not None:
    pytest.skip(f"no native kernels here: {native.why_not()}")
  q = jnp.ones((1, 4, 2, 16))
  norm = layers.LayerNorm(16, 1e-5)
  f = lambda q: norm(layers.attention(q, q, q, 0.25))
  assert "ffi_call" in str(jax.make_jaxpr(f)(q))
  with native.turned_off():
    assert native.why_not() is not None
    # A new function: JAX reuses the trace of one already traced.
    g = lambda q: norm(layers.attention(q, q, q, 0.25))
    assert "ffi_call" not in str(jax.make_jaxpr(g)(q))
  assert native.why_not() is None


@pytest.mark.parametrize(
  "spec,want",
  [
    ("btd,dhk->bthk", 1),
    ("bthk,hkd->btd", 2),
    ("btf,fd->btd", 1),
    ("btd,df->btf", 1),
    ("btd,hd->bth", None),  # the kernel's last axis contracted
    ("bd,dd->bd", None),  # a repeated letter
    ("btd,dk->bk", None),  # t summed away
  ],
)
def test_matrix_spec(spec, want):
  assert layers._matrix_spec(spec) == want


def _dense_layers(rng):
  """A query projection ([D, H, K] kernel) and an output projection ([H, K,
  D] kernel, two contracted axes), with non-zero biases."""
  q = layers.Dense("btd,dhk->bthk", (24, 2, 12), (2, 12), rngs=nnx.Rngs(0))
  o = layers.Dense("bthk,hkd->btd", (2, 12, 40), (40,), rngs=nnx.Rngs(1))
  for d in (q, o):
    d.bias[...] = jnp.asarray(rng.normal(size=d.bias[...].shape), jnp.float32)
  return q, o


@pytest.fixture
def native_dense(monkeypatch):
  """`layers.dense` gives every product to the kernel (on any CPU with the
  native kernels: the kernel runs on AVX2 too; only the choice is measured
  for AVX-512)."""
  from ctjax.stats import native

  if native.why_not() is not None:
    pytest.skip(f"no native kernels here: {native.why_not()}")
  monkeypatch.setattr(native, "has_avx512", lambda: True)
  monkeypatch.setattr(layers.threads, "host_cores", lambda: 2)
  monkeypatch.setattr(layers, "NATIVE_DENSE_MIN_SHAPE", (1, 1, 1))


@pytest.mark.parametrize("act", [None, "gelu", "quick_gelu"])
def test_dense_layers_equal_their_einsum(native_dense, act):
  rng = np.random.default_rng(5)
  q, o = _dense_layers(rng)
  x = jnp.asarray(rng.normal(size=(3, 7, 24)), jnp.float32)
  f = lambda x: o(layers.dense(x, q, act))
  assert "ffi_call" in str(jax.make_jaxpr(f)(x))
  want = o._xla(layers.activation(act)(q._xla(x)) if act else q._xla(x))
  np.testing.assert_allclose(jax.jit(f)(x), want, rtol=1e-5, atol=1e-5)


def test_dense_layers_differentiate_as_their_einsum(native_dense):
  import types

  rng = np.random.default_rng(6)
  q, _ = _dense_layers(rng)
  x = jnp.asarray(rng.normal(size=(2, 5, 24)), jnp.float32)

  def loss(x, kernel, bias, native_path):
    # `dense` reads only these four attributes of its layer.
    layer = types.SimpleNamespace(spec=q.spec, kernel=kernel, bias=bias)
    layer._xla = lambda x: jnp.einsum(q.spec, x, kernel) + bias
    y = (
      layers.dense(x, layer, "gelu")
      if native_path
      else layers.gelu(layer._xla(x))
    )
    return jnp.sum(jnp.sin(y))

  args = (x, q.kernel[...], q.bias[...])
  assert "ctjax_dense" in str(jax.make_jaxpr(lambda *a: loss(*a, True))(*args))
  got = jax.jit(jax.grad(lambda *a: loss(*a, True), argnums=(0, 1, 2)))(*args)
  want = jax.grad(lambda *a: loss(*a, False), argnums=(0, 1, 2))(*args)
  for g, h in zip(got, want):
    np.testing.assert_allclose(g, h, rtol=1e-4, atol=1e-5)


def test_dense_kernel_is_chosen_for_vit_b16_products_only(monkeypatch):
  # ...on at most 2 CPUs with AVX-512, where it was measured.
  from ctjax.stats import native

  if native.why_not() is not None:
    pytest.skip(f"no native kernels here: {native.why_not()}")
  monkeypatch.setattr(native, "has_avx512", lambda: True)
  monkeypatch.setattr(layers.threads, "host_cores", lambda: 2)
  fc1 = layers.Dense("btd,df->btf", (768, 3072), (3072,), rngs=nnx.Rngs(0))
  traced = lambda batch: str(
    jax.make_jaxpr(lambda x: layers.dense(x, fc1, "gelu"))(
      jax.ShapeDtypeStruct((batch, 197, 768), jnp.float32)
    )
  )
  assert "ctjax_dense" in traced(8)  # 1,576 rows: ViT-B/16 at batch 8
  assert "ctjax_dense" not in traced(4)  # 788 rows: below the gate
  monkeypatch.setattr(layers.threads, "host_cores", lambda: 16)  # not measured
  assert "ctjax_dense" not in traced(8)
  monkeypatch.setattr(layers.threads, "host_cores", lambda: 2)
  monkeypatch.setattr(native, "has_avx512", lambda: False)
  assert "ctjax_dense" not in traced(8)
