"""Cost of resizing on the host with PIL (what embed does for transformers'
recipes, exact) against the jitted on-device emulation, same process.

  python benchmarks/bench_preprocess.py [--n 64]

Prints img/s of each path for CLIP's recipe (shorter side 224, bicubic,
crop 224) on uint8 375x500 images, and their ratio; and, for scale, the
paper's recipe on device (jax.image.resize in float, one 2-D pass).
"""

import argparse
import time

import jax
import numpy as np

from ctjax import embedding
from ctjax import preprocess as pp


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--n", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (args.n, 375, 500, 3), dtype=np.uint8)
  config = pp.from_processor_dict(
    dict(
      image_processor_type="CLIPImageProcessor",
      size={"shortest_edge": 224},
      crop_size={"height": 224, "width": 224},
    )
  )
  source = embedding.HostResized(embedding.ArraySource(images), config)

  def host():
    batch, _ = source.load(0, args.n)
    return pp.preprocess(batch, config, resize=False).block_until_ready()

  def device():
    return pp.preprocess(images, config).block_until_ready()

  paper = pp.PreprocessConfig(224)

  def device_paper():
    return pp.preprocess(images, paper).block_until_ready()

  out = {}
  for name, fn in (
    ("host (PIL)", host),
    ("device (jit)", device),
    ("paper, device", device_paper),
  ):
    fn()  # compile
    best = float("inf")
    for _ in range(args.repeats):
      t = time.perf_counter()
      fn()
      best = min(best, time.perf_counter() - t)
    out[name] = args.n / best
    print(f"{name:14s} {out[name]:8.1f} img/s")
  print(
    f"host / device: {out['host (PIL)'] / out['device (jit)']:.2f}x "
    f"({jax.devices()[0].platform})"
  )


if __name__ == "__main__":
  main()
