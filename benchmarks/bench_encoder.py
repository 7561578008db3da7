"""ctjax ViT-B/16 forward (all 13 hidden states) vs transformers' PyTorch ViTModel.

Same random weights in both (a transformers ViTModel converted to ctjax),
224x224 inputs, float32, batch 8, on this machine's CPU; prints images/s for
both, their ratio, ctjax's compile time, and achieved GFLOP/s as a share of a
float32 GEMM peak measured in the same run (jnp.matmul 2048^3). With a GPU
(automatic, or --gpu) it also records ctjax images/s at batch 256 in float32
and bfloat16 (and PyTorch's on the same GPU).

  python benchmarks/bench_encoder.py [--batch 8] [--seconds 20] [--gpu]

With ``--families resnet50,convnext_t,swin_t,clip_b16,inception_v3`` it
instead prints one row per family (random weights saved by transformers and
loaded with ctjax.models.from_pretrained, 224x224, every hidden state of
both; Inception-v3: 299x299, random weights in pytorch-fid's names against
``torch_inception``, a plain torch.nn model of the same layers): ctjax
and PyTorch images/s, their ratio, the largest difference over all hidden
states (relative to each layer's largest magnitude) and ctjax's
compile time, for each ``--dtypes`` entry (bfloat16:
ctjax computes in bfloat16, PyTorch under bfloat16 autocast).

With ``--xla_flags 'default=;eigen=--xla_cpu_experimental_ynn_fusion_type='``
(``NAME=FLAGS`` entries separated by ``;``) and ``--families`` it runs the
family table once per setting and round in a subprocess whose ``XLA_FLAGS``
is that setting (XLA reads it only when jax starts its backend), settings
alternating over ``--rounds``, PyTorch timed in every subprocess as its
baseline, and prints one row per family and setting.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(
  0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
)
from ctjax import environment  # noqa: E402
from ctjax.models import convert, encoder as encoder_lib  # noqa: E402
from ctjax.models.config import from_hf_config  # noqa: E402


def vit_b16_flops(image=224, patch=16, d=768, layers=12, mlp=3072) -> float:
  """Multiply-adds x 2 of one ViT-B/16 forward (patch embedding + blocks)."""
  t = (image // patch) ** 2 + 1
  per_block = 2 * t * d * (4 * d) + 2 * 2 * t * t * d + 2 * 2 * t * d * mlp
  return 2 * (t - 1) * patch * patch * 3 * d + layers * per_block


def gemm_peak(n=2048, reps=10, dtype=jnp.float32) -> float:
  """GFLOP/s of a jitted n^3 matmul (median of reps)."""
  a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), dtype)
  # "highest": true float32 (no TF32 on GPU), as ctjax's float32 path.
  f = jax.jit(lambda x, y: jnp.matmul(x, y, precision="highest"))
  f(a, a).block_until_ready()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    f(a, a).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n**3 / np.median(times) / 1e9


def throughput(run, batch, seconds, min_iters=3) -> float:
  """Images/s over at least ``seconds`` (after one warm-up call)."""
  run()
  iters, start = 0, time.perf_counter()
  while iters < min_iters or time.perf_counter() - start < seconds:
    run()
    iters += 1
  return iters * batch / (time.perf_counter() - start)


def build(torch_device="cpu"):
  import torch
  import transformers as tf

  torch.manual_seed(0)
  model = (
    tf.ViTModel(tf.ViTConfig(), add_pooling_layer=False).eval().to(torch_device)
  )
  tensors = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
  config = from_hf_config(model.config)
  graphdef, state = convert.load_state(
    config, tensors, source="random ViT-B/16"
  )
  return model, encoder_lib.Encoder(
    config, graphdef, state, source="random ViT-B/16"
  )


# name -> (transformers model class, config class, config kwargs); sizes of the
# released checkpoints: ResNet-50 (microsoft/resnet-50), ConvNeXt-T
# (facebook/convnext-tiny-224), Swin-T (microsoft/swin-tiny-patch4-window7-224),
# CLIP ViT-B/16 (openai/clip-vit-base-patch16), ViT-B/16 (google/vit-base-patch16-224).
FAMILIES = {
  "resnet50": ("ResNetModel", "ResNetConfig", {}),
  "convnext_t": ("ConvNextModel", "ConvNextConfig", {}),
  "swin_t": ("SwinModel", "SwinConfig", {}),
  "clip_b16": ("CLIPVisionModel", "CLIPVisionConfig", {"patch_size": 16}),
  "vit_b16": ("ViTModel", "ViTConfig", {}),
}


def torch_inception(state):
  """A plain torch.nn Inception-v3 (FID variant) holding ``state``.

  Written here from ctjax's table of layer shapes (inception.STEM and
  inception.block_convs): the same convolutions, BatchNorm (eps 0.001) and
  ReLU, pools that skip the padding and a max pool in Mixed_7c, as
  pytorch-fid's network (which needs torchvision, which does not load
  here). ``state``: a state dict in torchvision's names. Its forward takes
  ``[B, 3, H, W]`` and returns the 12 hidden states (stem, Mixed_5b ... 7c).
  """
  import torch
  import torch.nn.functional as F

  from ctjax.models import inception
  from ctjax.models.config import INCEPTION_BLOCKS

  class BasicConv(torch.nn.Module):
    def __init__(self, c_in, c_out, kernel, stride, padding):
      super().__init__()
      self.conv = torch.nn.Conv2d(
        c_in, c_out, kernel, stride, padding, bias=False
      )
      self.bn = torch.nn.BatchNorm2d(c_out, eps=1e-3)

    def forward(self, x):
      return F.relu(self.bn(self.conv(x)))

  class Block(torch.nn.Module):
    def __init__(self, kind, c_in, arg, last):
      super().__init__()
      self.kind, self.last = kind, last
      for name, *spec in inception.block_convs(kind, c_in, arg):
        self.add_module(name, BasicConv(*spec))

    def run(self, names, x):
      for name in names:
        x = getattr(self, name)(x)
      return x

    def pool(self, x):
      if self.last:
        return F.max_pool2d(x, 3, 1, 1)
      return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)

    def forward(self, x):
      k = self.kind
      if k == "A":
        outs = [
          self.branch1x1(x),
          self.run(("branch5x5_1", "branch5x5_2"), x),
          self.run(("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"), x),
          self.branch_pool(self.pool(x)),
        ]
      elif k == "B":
        outs = [
          self.branch3x3(x),
          self.run(("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"), x),
          F.max_pool2d(x, 3, 2),
        ]
      elif k == "C":
        outs = [
          self.branch1x1(x),
          self.run([f"branch7x7_{i}" for i in range(1, 4)], x),
          self.run([f"branch7x7dbl_{i}" for i in range(1, 6)], x),
          self.branch_pool(self.pool(x)),
        ]
      elif k == "D":
        outs = [
          self.run(("branch3x3_1", "branch3x3_2"), x),
          self.run([f"branch7x7x3_{i}" for i in range(1, 5)], x),
          F.max_pool2d(x, 3, 2),
        ]
      else:
        h = self.branch3x3_1(x)
        g = self.run(("branch3x3dbl_1", "branch3x3dbl_2"), x)
        outs = [
          self.branch1x1(x),
          self.branch3x3_2a(h),
          self.branch3x3_2b(h),
          self.branch3x3dbl_3a(g),
          self.branch3x3dbl_3b(g),
          self.branch_pool(self.pool(x)),
        ]
      return torch.cat(outs, 1)

  class Inception(torch.nn.Module):
    def __init__(self):
      super().__init__()
      for name, *spec in inception.STEM:
        self.add_module(name, BasicConv(*spec))
      for name in INCEPTION_BLOCKS:
        last = name == INCEPTION_BLOCKS[-1]
        self.add_module(name, Block(*inception.BLOCKS[name], last))

    def forward(self, x):
      for i, (name, *_) in enumerate(inception.STEM):
        x = getattr(self, name)(x)
        if i in (2, 4):
          x = F.max_pool2d(x, 3, 2)
      states = [x]
      for name in INCEPTION_BLOCKS:
        x = getattr(self, name)(x)
        states.append(x)
      return tuple(states)

  model = Inception().eval()
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
  return model


def build_inception(folder):
  """(torch Inception-v3, ctjax Encoder) with the same random weights."""
  from safetensors.numpy import save_file

  from ctjax import models
  from ctjax.models import convert
  from ctjax.models.config import InceptionConfig

  rng = np.random.default_rng(0)
  state = {}
  for name, shape, _ in convert.checkpoint_rules(InceptionConfig()).values():
    if name.endswith("running_var"):
      state[name] = rng.uniform(0.5, 1.5, shape)
    elif name.endswith("running_mean") or name.endswith("bn.bias"):
      state[name] = 0.1 * rng.standard_normal(shape)
    elif name.endswith("bn.weight"):
      state[name] = rng.uniform(0.5, 1.5, shape)
    else:  # He-scaled kernels: activations stay O(1) through 94 layers
      fan_in = np.prod(shape[1:])
      state[name] = rng.normal(0, (2 / fan_in) ** 0.5, shape)
  state = {k: v.astype(np.float32) for k, v in state.items()}
  path = os.path.join(folder, "pt_inception-random.safetensors")
  save_file(state, path)
  return torch_inception(state), models.from_pretrained(path)


def build_family(name, folder, torch_device="cpu"):
  """(torch model, ctjax Encoder) with the same random weights."""
  import torch
  import transformers as tf

  from ctjax import models

  if name == "inception_v3":
    model, enc = build_inception(folder)
    return model.to(torch_device), enc
  model_cls, config_cls, kwargs = FAMILIES[name]
  torch.manual_seed(0)
  model = getattr(tf, model_cls)(getattr(tf, config_cls)(**kwargs)).eval()
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_(0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
  model.save_pretrained(os.path.join(folder, name))
  return model.to(torch_device), models.from_pretrained(
    os.path.join(folder, name)
  )


def _torch_states(model, x, autocast):
  import torch

  with (
    torch.no_grad(),
    torch.autocast(x.device.type, torch.bfloat16, enabled=autocast),
  ):
    if hasattr(model, "config"):  # transformers
      out = model(x, output_hidden_states=True).hidden_states
    else:  # torch_inception
      out = model(x)
  if x.device.type == "cuda":
    torch.cuda.synchronize()
  return out


def family_rows(args):
  """Prints the per-family table (see the module docstring)."""
  import tempfile

  import torch

  on_gpu = jax.default_backend() == "gpu"
  torch_device = "cuda" if on_gpu and torch.cuda.is_available() else "cpu"
  print(
    f"jax {jax.__version__} on {jax.devices()[0].device_kind}; torch "
    f"{torch.__version__} on {torch_device}, {torch.get_num_threads()} threads;"
    f" XLA:CPU runs one thread per core of this process's affinity mask "
    f"({len(os.sched_getaffinity(0))} cores; pin both with taskset); load "
    f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
  )
  print(environment.summary(environment.describe()))
  # ctjax's compiled forward (its XLA:CPU options on a CPU) and the same
  # function under XLA's defaults, timed in the same rounds.
  fwd_defaults = encoder_lib.jit_forward({})
  # The XLA:CPU options do not apply elsewhere: one compile, one timing.
  cpu = jax.default_backend() == "cpu"
  if torch_device == "cuda":
    # ctjax's float32 is true float32 (precision "highest"); so is PyTorch's
    # once TF32 is off for its matrix products and cuDNN convolutions.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print("PyTorch on CUDA: TF32 off (float32 is float32 on both sides)")
  rows = []
  with tempfile.TemporaryDirectory() as folder:
    for name in args.families.split(","):
      model, enc = build_family(name, folder, torch_device)
      # As `Encoder` compiles it (XLA's defaults for Swin).
      fwd = encoder_lib.jit_forward(encoder_lib.cpu_options(enc.config))
      size = enc.image_size  # 224; 299 for Inception-v3
      rng = np.random.default_rng(0)
      pixels = rng.normal(size=(args.batch, size, size, 3)).astype(np.float32)
      x_jax = jnp.asarray(pixels)
      x_torch = torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()).to(
        torch_device
      )
      for dtype in args.dtypes.split(","):
        dt = jnp.dtype(dtype)
        t = time.perf_counter()
        compiled = fwd.lower(enc.graphdef, enc.params, x_jax, dt).compile()
        compile_s = time.perf_counter() - t
        compiled_defaults = (
          fwd_defaults.lower(enc.graphdef, enc.params, x_jax, dt).compile()
          if cpu
          else None
        )
        ours = jax.tree.leaves(compiled(enc.params, x_jax).hidden_states)
        ours = [np.asarray(o, np.float32) for o in ours]
        if len(ours) == 1:  # stacked [L+1, B, T, D]
          ours = list(ours[0])
        theirs = [
          h.float().cpu().numpy()
          for h in _torch_states(model, x_torch, dt == jnp.bfloat16)
        ]
        theirs = [h.transpose(0, 2, 3, 1) if h.ndim == 4 else h for h in theirs]
        # Largest difference relative to each layer's largest magnitude.
        diff = max(
          float(np.abs(a - b).max() / np.abs(b).max())
          for a, b in zip(ours, theirs)
        )

        def run_jax():
          jax.block_until_ready(compiled(enc.params, x_jax).hidden_states)

        def run_defaults():
          jax.block_until_ready(
            compiled_defaults(enc.params, x_jax).hidden_states
          )

        def run_torch():
          _torch_states(model, x_torch, dt == jnp.bfloat16)

        # Interleaved rounds: the best of each side, and the median of the
        # rounds' own ratios (each round times both sides within seconds of
        # each other, so a slow spell of this shared host hits both).
        jax_ips, torch_ips, default_ips = [], [], []
        for _ in range(args.table_rounds):
          per = args.seconds / args.table_rounds
          torch_ips.append(
            throughput(run_torch, args.batch, per, args.min_iters)
          )
          jax_ips.append(throughput(run_jax, args.batch, per, args.min_iters))
          default_ips.append(
            throughput(run_defaults, args.batch, per, args.min_iters)
            if cpu
            else jax_ips[-1]
          )
        j, p, j0 = max(jax_ips), max(torch_ips), max(default_ips)
        paired = [a / b for a, b in zip(jax_ips, torch_ips)]
        rows.append(
          (name, dtype, len(theirs), j, p, diff, compile_s, j0, paired)
        )
        if args.json:
          print(
            "JSON "
            + json.dumps(
              dict(
                family=name,
                dtype=dtype,
                ctjax=j,
                ctjax_xla_defaults=j0,
                torch=p,
                round_ratios=paired,
                diff=diff,
                compile_s=compile_s,
                load=os.getloadavg()[0],
              )
            ),
            flush=True,
          )
        print(
          f"{name} {dtype}: ctjax {j:.2f} img/s, torch {p:.2f} img/s, "
          f"ratio {j / p:.2f}x (median of the rounds' ratios "
          f"{np.median(paired):.2f}x, {min(paired):.2f}-{max(paired):.2f}; "
          f"XLA defaults {j0:.2f} img/s, {j0 / p:.2f}x), "
          f"max diff {diff:.1e}, compile {compile_s:.1f} s",
          flush=True,
        )
  print()
  print(f"load average at the end: {os.getloadavg()[0]:.1f}")
  print(
    f"| encoder, 224px, batch {args.batch}, {jax.devices()[0].device_kind} "
    "| dtype | hidden states | ctjax img/s | PyTorch img/s | ratio "
    "| median round ratio (range) "
    "| max rel diff | ctjax compile s | XLA defaults img/s | ratio |"
  )
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for name, dtype, n, j, p, diff, compile_s, j0, paired in rows:
    print(
      f"| {name} | {dtype} | {n} | {j:.2f} | {p:.2f} | {j / p:.2f}x "
      f"| {np.median(paired):.2f}x ({min(paired):.2f}-{max(paired):.2f}) "
      f"| {diff:.1e} | {compile_s:.1f} | {j0:.2f} | {j0 / p:.2f}x |"
    )


def parse_settings(text):
  """``'name=FLAGS;name2=FLAGS2'`` -> [(name, FLAGS)]; ``default=`` is allowed."""
  settings = []
  for item in filter(None, (t.strip() for t in text.split(";"))):
    name, sep, flags = item.partition("=")
    if not sep or not name:
      raise ValueError(
        f"--xla_flags entry {item!r} is not NAME=FLAGS (FLAGS may be empty)"
      )
    settings.append((name.strip(), flags.strip()))
  if len({n for n, _ in settings}) != len(settings):
    raise ValueError(f"--xla_flags names repeat: {[n for n, _ in settings]}")
  return settings


def flag_rows(args):
  """One row per (family, XLA flag setting), each setting in a subprocess.

  XLA reads ``XLA_FLAGS`` once, when jax initialises its CPU backend, so
  every setting runs in its own process (the inherited ``XLA_FLAGS`` is
  replaced); settings alternate over ``--rounds`` rounds so that a change
  of background load hits them alike. PyTorch is timed in every process as
  that process's baseline; a row keeps the best round of each side.
  """
  settings = parse_settings(args.xla_flags)
  results = {}  # (family, setting) -> list of per-round dicts
  failed = {}  # setting -> its error's last line
  for r in range(args.rounds):
    order = settings if r % 2 == 0 else settings[::-1]
    for name, flags in order:
      env = dict(os.environ, XLA_FLAGS=flags)
      cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--families",
        args.families,
        "--batch",
        str(args.batch),
        "--seconds",
        str(args.seconds),
        "--dtypes",
        args.dtypes,
        "--json",
        "--min_iters",
        "1",
      ]
      out = subprocess.run(cmd, env=env, capture_output=True, text=True)
      for line in out.stdout.splitlines():
        if line.startswith("JSON "):
          row = json.loads(line[5:])
          results.setdefault((row["family"], row["dtype"], name), []).append(
            row
          )
          print(
            f"round {r + 1} {name}: {row['family']} {row['dtype']} ctjax "
            f"{row['ctjax']:.2f} torch {row['torch']:.2f} img/s ratio "
            f"{row['ctjax'] / row['torch']:.2f}x diff {row['diff']:.1e} "
            f"load {row['load']:.1f}",
            flush=True,
          )
      if out.returncode:  # e.g. an experimental fusion that fails to compile
        tail = out.stderr.strip().splitlines()[-1:] or ["(no stderr)"]
        print(
          f"round {r + 1} {name}: failed (exit {out.returncode}): {tail[0]}",
          flush=True,
        )
        failed.setdefault(name, tail[0])
  print()
  print(f"XLA flag settings ({args.rounds} alternating rounds, best of each):")
  for name, flags in settings:
    print(f"- {name}: XLA_FLAGS={flags!r}")
  print()
  print(
    "| encoder | dtype | setting | ctjax img/s | PyTorch img/s | ratio "
    "| ratio per round | max rel diff | compile s |"
  )
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for name, error in failed.items():
    print(f"| (families after the failure) | | {name} | failed: {error} |")
  for (family, dtype, name), rows in results.items():
    j = max(x["ctjax"] for x in rows)
    p = max(x["torch"] for x in rows)
    per = ", ".join(f"{x['ctjax'] / x['torch']:.2f}" for x in rows)
    print(
      f"| {family} | {dtype} | {name} | {j:.2f} | {p:.2f} | {j / p:.2f}x "
      f"| {per} | {max(x['diff'] for x in rows):.1e} "
      f"| {min(x['compile_s'] for x in rows):.1f} |"
    )


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument(
    "--families",
    default="",
    help=f"comma-separated, any of {sorted(FAMILIES) + ['inception_v3']}: "
    "per-family table",
  )
  parser.add_argument("--dtypes", default="float32")
  parser.add_argument("--seconds", type=float, default=20.0)
  parser.add_argument(
    "--gpu", action="store_true", help="also batch 256 f32/bf16 on the GPU"
  )
  parser.add_argument(
    "--xla_flags",
    default="",
    help="with --families: 'NAME=FLAGS;NAME=FLAGS...' (e.g. 'default=;"
    "eigen=--xla_cpu_experimental_ynn_fusion_type='), one subprocess "
    "per setting and round, one row per family and setting",
  )
  parser.add_argument(
    "--rounds", type=int, default=2, help="alternating rounds of --xla_flags"
  )
  parser.add_argument(
    "--table_rounds",
    type=int,
    default=5,
    help="with --families: interleaved rounds per family (--seconds split "
    "between them)",
  )
  parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument(
    "--min_iters", type=int, default=3, help=argparse.SUPPRESS
  )
  args = parser.parse_args()
  if args.xla_flags:
    if not args.families:
      parser.error("--xla_flags needs --families")
    flag_rows(args)
    return
  if args.families:
    family_rows(args)
    return
  import torch

  on_gpu = jax.default_backend() == "gpu"
  torch_device = "cuda" if on_gpu and torch.cuda.is_available() else "cpu"
  print(
    f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()}); "
    f"torch {torch.__version__} on {torch_device}, {torch.get_num_threads()} threads"
  )
  model, enc = build(torch_device)
  rng = np.random.default_rng(0)
  pixels = rng.normal(size=(args.batch, 224, 224, 3)).astype(np.float32)
  x_jax = jnp.asarray(pixels)
  x_torch = torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()).to(
    torch_device
  )

  # ctjax's compiled forward (its XLA:CPU options on a CPU) and the same
  # function under XLA's defaults, timed in the same rounds.
  fwd = encoder_lib.jit_forward()
  t = time.perf_counter()
  compiled = fwd.lower(
    enc.graphdef, enc.params, x_jax, jnp.dtype(jnp.float32)
  ).compile()
  compile_s = time.perf_counter() - t
  ours = np.asarray(compiled(enc.params, x_jax).hidden_states)
  with torch.no_grad():
    ref = (
      torch.stack(model(x_torch, output_hidden_states=True).hidden_states)
      .cpu()
      .numpy()
    )
  print(
    f"max |ctjax - torch| over 13 hidden states: {np.abs(ours - ref).max():.2e}"
  )

  def run_jax():
    compiled(enc.params, x_jax).hidden_states.block_until_ready()

  def run_torch():
    with torch.no_grad():
      out = model(x_torch, output_hidden_states=True).hidden_states
    if torch_device == "cuda":
      torch.cuda.synchronize()
    return out

  # Interleave short rounds so background load hits both alike; report the best round.
  rounds, per = 3, args.seconds / 3
  jax_ips, torch_ips, peaks = [], [], []
  for _ in range(rounds):
    torch_ips.append(throughput(run_torch, args.batch, per))
    jax_ips.append(throughput(run_jax, args.batch, per))
    peaks.append(gemm_peak(reps=5))
  j, p, peak = max(jax_ips), max(torch_ips), max(peaks)
  gflops = vit_b16_flops() * j / 1e9
  print()
  print(
    f"| ViT-B/16, 224px, 13 hidden states, batch {args.batch}, float32 | value |"
  )
  print("| --- | --- |")
  print(f"| ctjax img/s (best of {rounds} rounds) | {j:.2f} |")
  print(f"| PyTorch transformers img/s ({torch_device}) | {p:.2f} |")
  print(f"| ratio ctjax / PyTorch | {j / p:.2f}x |")
  print(f"| ctjax compile time | {compile_s:.1f} s |")
  print(
    f"| ctjax GFLOP/s ({vit_b16_flops() / 1e9:.1f} GFLOP/img) | {gflops:.1f} |"
  )
  print(f"| float32 GEMM peak (jnp 2048^3) GFLOP/s | {peak:.1f} |")
  print(f"| share of GEMM peak | {100 * gflops / peak:.0f}% |")
  print(
    f"rounds: ctjax {[round(v, 2) for v in jax_ips]}, torch {[round(v, 2) for v in torch_ips]}"
  )

  if on_gpu or args.gpu:
    big = jnp.asarray(rng.normal(size=(256, 224, 224, 3)), jnp.float32)
    big_t = torch.from_numpy(np.asarray(big).transpose(0, 3, 1, 2).copy()).to(
      torch_device
    )
    print()
    print("| batch 256 on " + jax.devices()[0].device_kind + " | img/s |")
    print("| --- | --- |")
    for name in ("float32", "bfloat16"):
      dt = jnp.dtype(name)
      f = fwd.lower(enc.graphdef, enc.params, big, dt).compile()
      ips = throughput(
        lambda: f(enc.params, big).hidden_states.block_until_ready(),
        256,
        args.seconds / 4,
      )
      print(f"| ctjax {name} | {ips:.0f} |")
    if torch_device == "cuda":

      def run_big(autocast):
        with (
          torch.no_grad(),
          torch.autocast("cuda", torch.bfloat16, enabled=autocast),
        ):
          model(big_t, output_hidden_states=True)
        torch.cuda.synchronize()

      print(
        f"| PyTorch float32 | {throughput(lambda: run_big(False), 256, args.seconds / 4):.0f} |"
      )
      print(
        f"| PyTorch bf16 autocast | {throughput(lambda: run_big(True), 256, args.seconds / 4):.0f} |"
      )
    print(
      f"| bf16 GEMM peak (jnp 4096^3) GFLOP/s | {gemm_peak(4096, dtype=jnp.bfloat16):.0f} |"
    )
    print(f"| f32 GEMM peak (jnp 2048^3) GFLOP/s | {peak:.0f} |")


if __name__ == "__main__":
  main()
