"""Per-program XLA:CPU compiler options.

XLA reads ``XLA_FLAGS`` once, when JAX starts, and applies them to every
program of the process, so a library cannot set them for its users. An
option given to one `jax.jit` (``compiler_options=``) applies to that
program only: ctjax compiles its own hot programs with options measured to
be faster on a CPU (`cpu_jit`), and leaves everything else, including the
user's programs and flags, as it is.
"""

from ctjax.stats.compiling import cpu_jit  # noqa: F401  (re-exported)

# The encoders' forward passes (`ctjax.models.encoder.jit_forward`,
# `ctjax.embed`): matrix products and convolutions without YNNPACK's
# fusions, dots through oneDNN. benchmarks/bench_encoder.py compares them
# with XLA's defaults, family by family, against PyTorch (README, "Encoder").
ENCODER_CPU_OPTIONS = {
  "xla_cpu_experimental_ynn_fusion_type": "",
  "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_DOT",
}
