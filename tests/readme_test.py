"""README.md's "## Library" example runs top to bottom as written.

The python block under the heading is read from README.md itself and run
with `exec`, its placeholder arrays defined with tiny synthetic data of the
shapes its comments state, and its two paths (the checkpoint and the image
folder) pointed at a tiny random ViT and a folder of tiny PNG images.
"""

import pathlib
import re

import jax
import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

from tests.models.conftest import save_tiny  # noqa: E402

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
CHECKPOINT = '"path/to/vit-base-patch16-224-in21k"'
IMAGES = '"images/"'
# L layers of width D; T, P, a generated batch, B batches, probe pools,
# and each generator's M samples (two batches of the README's 500).
L, D, N, n, m, B, M_PROBE, M_GEN = 3, 16, 600, 300, 200, 2, 400, 1000


def library_example(text: str) -> str:
  """The first ```python block between "## Library" and the next heading."""
  section = re.search(r"^## Library\n(.*?)(?=^## )", text, re.S | re.M)
  assert section, 'README.md has no "## Library" section'
  block = re.search(r"^```python\n(.*?)^```", section.group(1), re.S | re.M)
  assert block, 'the "## Library" section has no ```python block'
  return block.group(1)


def _placeholders(rng):
  """The arrays the example names, clustered (5 centres) so that every
  k-means cell holds training and test points."""
  centers = rng.normal(size=(5, D)) * 4

  def draw(*shape):
    idx = rng.integers(0, 5, shape[:-1])
    pts = centers[idx][..., : shape[-1]] + rng.normal(size=shape)
    return pts.astype(np.float32)

  train, test = draw(L, N, D), draw(L, n, D)
  gen = draw(L, m, D)
  gen[:, :20] = train[:, :20]  # a few exact copies
  copies = train[:, :M_PROBE].copy()
  noisy = copies + (0.3 * rng.normal(size=copies.shape)).astype(np.float32)
  widths = (8, 8, D)  # mixed widths: two width groups
  return dict(
    train=train,
    test=test,
    gen=gen,
    gens=draw(B, L, m, D),
    train_cells=rng.integers(0, 4, N),
    test_cells=rng.integers(0, 4, n),
    gen_cells=rng.integers(0, 4, m),
    **{f"t{i}": draw(N, w) for i, w in enumerate(widths)},
    **{f"p{i}": draw(n, w) for i, w in enumerate(widths)},
    copies=copies,
    noisy=noisy,
    null=draw(L, M_PROBE, D),
    ddpm=draw(L, M_GEN, D),
    gan=draw(L, M_GEN, D) + 1.0,  # another generator
  )


@pytest.fixture
def vit_folder(tmp_path):
  """A tiny random ViT (2 blocks, width 16) saved by transformers."""
  folder, _ = save_tiny(
    tmp_path,
    tf.ViTModel,
    tf.ViTConfig,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    image_size=32,
    patch_size=16,
  )
  return folder


@pytest.fixture
def image_folder(tmp_path):
  """12 tiny random RGB PNG images."""
  folder = tmp_path / "images"
  folder.mkdir()
  pixels = np.random.default_rng(1).integers(0, 256, (12, 20, 24, 3), np.uint8)
  for i, img in enumerate(pixels):
    Image.fromarray(img).save(folder / f"{i:02d}.png")
  return folder


def test_library_example_runs(tmp_path, monkeypatch, vit_folder, image_folder):
  code = library_example(README.read_text())
  for path, folder in ((CHECKPOINT, vit_folder), (IMAGES, image_folder)):
    assert path in code, f"the README example no longer loads {path}"
    code = code.replace(path, repr(str(folder)))
  # JAX already runs in pytest (one CPU device, tests/conftest.py), so the
  # example's `ctjax.use_cpu_devices()` must keep that count rather than
  # raise: ask for it (the call is not stubbed).
  monkeypatch.setenv("CTJAX_CPU_DEVICES", str(len(jax.devices("cpu"))))
  work = tmp_path / "work"
  work.mkdir()
  monkeypatch.chdir(work)
  ns = _placeholders(np.random.default_rng(0))
  exec(compile(code, f"{README}:## Library", "exec"), ns)  # noqa: S102

  assert np.ndim(ns["res"].ct) == 0 and ns["res"].z.shape == (4,)
  out = ns["out"]
  assert out.ct.shape == (L,) and np.isfinite(out.ct).all()
  assert out.ct_low.shape == out.ct_high.shape == (L,)
  assert out.ct_boot.shape == (1000, L)
  assert ns["many"].ct.shape == (B, L)
  assert ns["scores"].ct.shape == (L,)
  assert ns["batched"].ct.shape == (B, L)
  np.testing.assert_allclose(ns["batched"].ct, ns["many"].ct, rtol=1e-5)
  assert ns["ref_cnn"].widths == (8, 8, D)
  assert ns["emb"].shape == (3, 12, 16)  # 2 blocks + patch embedding
  assert set(ns["sel"].recommended) == {"copy", "noise"}
  assert ns["feats"]["ct"].shape == (M_GEN // 500, L)
  assert ns["lib"].labels == ["ddpm"] * 2 + ["gan"] * 2
  assert ns["lib"].threshold is not None
  ranked = ns["lib"].identify(out.ct, top_k=3)
  assert isinstance(ranked, list) and ranked
  assert {label for label, _ in ranked} <= {"ddpm", "gan", "unknown"}
  for name in ("ref.npz", "lib.json"):
    assert (work / name).is_file(), name
  assert (work / ".cache").is_dir()  # embed's cache_dir
