// LayerNorm over the last axis on a CPU, as one XLA FFI call.
//
//   out[r] = (x[r] - mean) / sqrt(var + eps) * scale + bias
//
// with the biased variance of the centred row (two passes, as torch). XLA:CPU
// ran ctjax's LayerNorm 2.5-4x slower than PyTorch's at the encoders' shapes
// (docs/performance.md); here a row is read from cache three times (sum,
// centred squares, output) with channel vectors, and rows are split across
// pool.h's threads.
//
// Inputs:  x [R, D] f32, scale [D] f32, bias [D] f32.   Attr: eps (f32).
// Output:  out [R, D] f32.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "pool.h"
#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using ctjax_native::kLanes;
using ctjax_native::Load;
using ctjax_native::VecF;

constexpr int64_t kRowsPerItem = 64;

inline float Sum(VecF v) {
  float s = 0.0f;
  for (int l = 0; l < kLanes; ++l) s += v[l];
  return s;
}

void Row(const float* x, const float* scale, const float* bias, int64_t d,
         float eps, float* out) {
  const int64_t whole = d / kLanes * kLanes;
  VecF acc = {};
  for (int64_t j = 0; j < whole; j += kLanes) acc += Load(x + j);
  float s = Sum(acc);
  for (int64_t j = whole; j < d; ++j) s += x[j];
  const float mean = s / static_cast<float>(d);
  acc = VecF{};
  for (int64_t j = 0; j < whole; j += kLanes) {
    const VecF c = Load(x + j) - mean;
    acc += c * c;
  }
  float ss = Sum(acc);
  for (int64_t j = whole; j < d; ++j) ss += (x[j] - mean) * (x[j] - mean);
  const float inv = 1.0f / std::sqrt(ss / static_cast<float>(d) + eps);
  for (int64_t j = 0; j < whole; j += kLanes) {
    const VecF y = (Load(x + j) - mean) * inv * Load(scale + j) + Load(bias + j);
    std::memcpy(out + j, &y, sizeof(VecF));
  }
  for (int64_t j = whole; j < d; ++j) {
    out[j] = (x[j] - mean) * inv * scale[j] + bias[j];
  }
}

ffi::Error LayerNormImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                         ffi::Buffer<ffi::F32> bias,
                         ffi::ResultBuffer<ffi::F32> out, float eps) {
  auto xd = x.dimensions();
  if (xd.size() != 2 || static_cast<int64_t>(scale.element_count()) != xd[1] ||
      static_cast<int64_t>(bias.element_count()) != xd[1]) {
    return ffi::Error::InvalidArgument(
        "ctjax layernorm: x [R, D], scale [D], bias [D]");
  }
  const int64_t r = xd[0], d = xd[1];
  if (r * d == 0) return ffi::Error::Success();
  const float* xp = x.typed_data();
  const float* sp = scale.typed_data();
  const float* bp = bias.typed_data();
  float* op = out->typed_data();
  ctjax_native::RunItems((r + kRowsPerItem - 1) / kRowsPerItem,
                         [&](int64_t item) {
                           const int64_t r0 = item * kRowsPerItem;
                           const int64_t r1 = std::min(r, r0 + kRowsPerItem);
                           for (int64_t i = r0; i < r1; ++i) {
                             Row(xp + i * d, sp, bp, d, eps, op + i * d);
                           }
                         });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CtjaxLayerNorm, LayerNormImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps"));
