#!/usr/bin/env bash
# What the last accelerator session left unchecked, in one call of under
# 10 minutes, most important first (each step has its own time limit, so a
# slow step cannot eat the next one's time):
#
#   1. tests/stats on the device: k-means' cluster sums became a one-hot
#      product off the CPU (`kmeans.SUMS`) after 3 of 128 tests failed on an
#      H200 with the float scatter-add; never rerun there.      (<= 170 s)
#   2. benchmarks/engine_knobs.py: the warm score's phases (padded on the
#      host or on the device, `reference.PAD_BATCH`), every knob of the pure
#      score, vmap throughput, and score_many's vectorize modes, which decide
#      whether its GPU default should be vmap rather than merge.  (<= 200 s)
#   3. benchmarks/bench_ct.py: cold fit, warm batch and score_many of NumPy
#      batches and of batches already on the device (both new since the last
#      device run), against baseline (b) on the host's cores.   (<= 200 s)
#
#   bash benchmarks/device_owed.sh            # CIFAR-10 scale
#   bash benchmarks/device_owed.sh --quick    # small shapes (checks it runs)
#
# Logs and JSON go to $OUT (or ./device_owed when OUT is unset). Uses the
# packages on the machine and ctjax from this checkout (no network there).
set -uo pipefail
cd "$(dirname "$0")/.."
out_dir="${OUT:-./device_owed}"
PY="$(command -v python || command -v python3)"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Several processes (pytest workers) share the device.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
mkdir -p "$out_dir"
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"

quick=0
[[ "${1:-}" == "--quick" ]] && quick=1

step() {  # step NAME LIMIT COMMAND...: runs it, logs it, reports its status
  local name="$1" limit="$2"
  shift 2
  echo "== $name (limit ${limit} s)"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$out_dir/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: status $rc (124: its time limit) in $((SECONDS - t0)) s"
}

if [[ $quick -eq 1 ]]; then
  tests=(tests/stats/kmeans_test.py)
  knobs=(--shape 2,2000,500,200,32 --reps 1 --batches 2 --many 2)
  bench=(--quick --no-paper --no-two-devices --warm-reps 2 --batches 4)
else
  tests=(tests/stats)
  knobs=(--reps 5 --batches 16,64 --many 64)
  bench=(--no-paper --no-two-devices --warm-reps 20 --batches 64
    --tile-train 16384)
fi
workers=()
"$PY" -c "import xdist" 2>/dev/null && workers=(-n 4)
step tests_stats 170 "$PY" -m pytest -q -x "${workers[@]}" "${tests[@]}"
step engine_knobs 200 "$PY" -u benchmarks/engine_knobs.py "${knobs[@]}" \
  --json "$out_dir/knobs.json"
step bench_ct 200 "$PY" -u benchmarks/bench_ct.py "${bench[@]}" \
  --json "$out_dir/device_ct.json"
