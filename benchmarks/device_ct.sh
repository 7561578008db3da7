#!/usr/bin/env bash
# The C_T engine on an accelerator, in one call (about 6 minutes on one
# H200): first whether every scoring path counts the same 2U there
# (benchmarks/consistency.py), then cold fit (compiled), warm batch,
# score_many throughput, the pure jitted score on device-resident input and
# a streamed |T| = 10^6 fit at CIFAR-10 scale (L=13, N=50k, n=10k, m=500,
# D=768), with the NumPy/SciPy baseline (b) on this host's CPU cores in the
# same process. Uses the packages already on the machine and ctjax from this
# checkout; tries JAX's CUDA build only when JAX sees no GPU but one is there.
#
#   bash benchmarks/device_ct.sh            # CIFAR-10 scale
#   bash benchmarks/device_ct.sh --quick    # small shapes (checks it runs)
#
# Numbers are printed as a table and written to $OUT/device_ct.json (or
# ./device_ct.json when OUT is unset).
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir="${OUT:-.}"
# The accelerator image may only have python3.
PY="$(command -v python || command -v python3)"
mkdir -p "$out_dir"

backend() { "$PY" -c "import jax; print(jax.default_backend())" 2>/dev/null; }

# This checkout first (an offline machine cannot `pip install -e .`: its
# build backend would be fetched); the benchmarks import ctjax from here.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())" || true
if [[ "$(backend)" != "gpu" ]] && command -v nvidia-smi >/dev/null 2>&1 \
    && nvidia-smi -L >/dev/null 2>&1; then
  ver="$("$PY" -c 'import jax; print(jax.__version__)')"
  echo "A GPU is present but JAX does not use it: installing jax[cuda12]==$ver"
  { pip install -q "jax[cuda12]==$ver" || pip install -q -U "jax[cuda12]"; } \
    || echo "could not install JAX's CUDA build (offline?): going on"
  "$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"
fi
"$PY" -c "import ctjax" 2>/dev/null || "$PY" -m pip install -q -e .
"$PY" -c "import flax, numpy, sklearn, scipy, transformers as t; print(
  'flax', flax.__version__, 'numpy', numpy.__version__, 'scikit-learn',
  sklearn.__version__, 'scipy', scipy.__version__, 'transformers',
  t.__version__)" || true
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null \
  || true

if [[ "${1:-}" == "--quick" ]]; then
  args=(--quick --warm-reps 5 --stream-n 50000)
else
  # (a), the per-batch refit, takes minutes of CPU and is left out here.
  # Larger search steps: a GPU wants few large products (the dense search).
  # One accelerator: no host-device split (that subprocess is for CPUs).
  args=(--no-paper --no-two-devices --warm-reps 20 --batches 64
    --stream-n 1000000 --tile-train 16384)
fi
rc=0
# First, on an accelerator: do all scoring paths count the same 2U there
# (benchmarks/consistency.py, the two projection settings, 2 layers)?
if [[ "$(backend)" != "cpu" && "${1:-}" != "--quick" ]]; then
  timeout "${CTJAX_CONSISTENCY_LIMIT:-150}" "$PY" benchmarks/consistency.py \
    --shape 2,50000,10000,500,768 --json "$out_dir/consistency.json" \
    || echo "consistency.py stopped with status $? (124: its time limit)"
fi
# The streamed fit runs last, after the table: a time limit only cuts it.
timeout "${CTJAX_BENCH_LIMIT:-280}" "$PY" benchmarks/bench_ct.py "${args[@]}" \
  --json "$out_dir/device_ct.json" || rc=$?
if [[ $rc -ne 0 ]]; then
  echo "bench_ct.py stopped with status $rc (124: the 280 s limit)"
fi
exit $rc
