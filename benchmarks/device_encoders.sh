#!/usr/bin/env bash
# The encoder table of bench_encoder.py on an accelerator, in one call: every
# family (ViT-B/16, Swin-T, ResNet-50, ConvNeXt-T, CLIP ViT-B/16,
# Inception-v3; random weights, every hidden state, batch 8) in float32 and
# bfloat16, ctjax against transformers' PyTorch models on the same GPU
# (PyTorch's TF32 off, so float32 is float32 on both sides; bfloat16 is
# PyTorch's autocast). Uses the packages already on the machine, ctjax from
# this checkout.
#
#   bash benchmarks/device_encoders.sh [--batch 8] [--seconds 3]
#
# The table is printed; the rows are also written to
# $OUT/device_encoders.jsonl (or ./device_encoders.jsonl when OUT is unset).
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir="${OUT:-.}"
PY="$(command -v python || command -v python3)"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out_dir"
"$PY" -c "import jax, torch; print('jax', jax.__version__, jax.devices(),
  'torch', torch.__version__, torch.cuda.is_available())"
families="${CTJAX_FAMILIES:-vit_b16,swin_t,resnet50,convnext_t,clip_b16,inception_v3}"
rc=0
timeout "${CTJAX_BENCH_LIMIT:-220}" "$PY" -u benchmarks/bench_encoder.py \
  --families "$families" --dtypes float32,bfloat16 --seconds 3 --json "$@" \
  | tee "$out_dir/device_encoders.log" || rc=$?
grep '^JSON ' "$out_dir/device_encoders.log" | cut -c6- \
  >"$out_dir/device_encoders.jsonl" || true
if [[ $rc -ne 0 ]]; then
  echo "bench_encoder.py stopped with status $rc (124: the time limit)"
fi
exit $rc
