// A two-layer MLP with exact GELU on a CPU, as one XLA FFI call:
//
//   out = gelu(x @ w1 + b1) @ w2 + b2      x [R, C], w1 [C, F], w2 [F, E]
//
// ConvNeXt's pointwise convolutions at its first stage (C = 96, F = 384) are
// bound by memory in XLA: the [R, F] hidden layer (38.5 MB at batch 8) is
// written by the first product, read and written by the GELU, and read by the
// second. Here a work item takes kPanel rows, keeps their hidden layer in
// cache ([kPanel][F]) and writes only the output. Products use 8-row x
// 32-column register tiles; the weights are read in their [in, out] layout
// (32 consecutive floats per input channel) and stay in L2 for small C.
//
// GELU: simd.h's (exact form, erf within 1.5e-7).
//
// Inputs: x [R, C], w1 [C, F], b1 [F], w2 [F, E], b2 [E], all f32; F and E
// multiples of 32. Output: out [R, E] f32.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "pool.h"
#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using ctjax_native::Gelu;
using ctjax_native::kLanes;
using ctjax_native::Load;
using ctjax_native::Store;
using ctjax_native::VecF;

constexpr int kVecs = 32 / kLanes;  // a tile is 32 columns
#if defined(__AVX512F__)
constexpr int kRows = 8;  // rows of a register tile
#else
// AVX2's 16 registers: 8 rows x 4 vectors spilled; 4 rows ran 1.3-1.5x
// faster than 8 (and than 2) on a Zen 3.
constexpr int kRows = 4;
#endif
constexpr int64_t kPanel = 32;     // rows of a work item

// out[r][j0 .. j0 + 32) (row stride ldo) = in[r] @ w[:, j0 ..] + b, r < 8,
// then GELU when kGelu.
template <bool kGelu>
inline void TileRows(const float* in, int64_t ldi, int64_t k, const float* w,
                     int64_t ldw, const float* b, int64_t j0, float* out,
                     int64_t ldo) {
  VecF acc[kRows][kVecs];
  for (int v = 0; v < kVecs; ++v) {
    const VecF bv = Load(b + j0 + v * kLanes);
    for (int r = 0; r < kRows; ++r) acc[r][v] = bv;
  }
  for (int64_t e = 0; e < k; ++e) {
    VecF wv[kVecs];
    for (int v = 0; v < kVecs; ++v) wv[v] = Load(w + e * ldw + j0 + v * kLanes);
    for (int r = 0; r < kRows; ++r) {
      const float a = in[r * ldi + e];
      for (int v = 0; v < kVecs; ++v) acc[r][v] += wv[v] * a;
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < kVecs; ++v) {
      Store(out + r * ldo + j0 + v * kLanes, kGelu ? Gelu(acc[r][v]) : acc[r][v]);
    }
  }
}

ffi::Error MlpImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w1,
                   ffi::Buffer<ffi::F32> b1, ffi::Buffer<ffi::F32> w2,
                   ffi::Buffer<ffi::F32> b2, ffi::ResultBuffer<ffi::F32> out) {
  auto xd = x.dimensions(), w1d = w1.dimensions(), w2d = w2.dimensions();
  if (xd.size() != 2 || w1d.size() != 2 || w2d.size() != 2 ||
      w1d[0] != xd[1] || w2d[0] != w1d[1] ||
      static_cast<int64_t>(b1.element_count()) != w1d[1] ||
      static_cast<int64_t>(b2.element_count()) != w2d[1] || w1d[1] % 32 ||
      w2d[1] % 32) {
    return ffi::Error::InvalidArgument(
        "ctjax mlp: x [R, C], w1 [C, F], b1 [F], w2 [F, E], b2 [E], F and E "
        "multiples of 32");
  }
  const int64_t r = xd[0], c = xd[1], f = w1d[1], e = w2d[1];
  if (r == 0) return ffi::Error::Success();
  const float* xp = x.typed_data();
  const float* w1p = w1.typed_data();
  const float* b1p = b1.typed_data();
  const float* w2p = w2.typed_data();
  const float* b2p = b2.typed_data();
  float* op = out->typed_data();
  ctjax_native::RunItems((r + kPanel - 1) / kPanel, [&](int64_t item) {
    thread_local std::vector<float> xin, hidden, res;
    const int64_t r0 = item * kPanel;
    const int64_t rows = std::min(kPanel, r - r0);
    const int64_t padded = (rows + kRows - 1) / kRows * kRows;
    const float* in = xp + r0 * c;
    float* dst = op + r0 * e;
    if (padded != rows) {  // the last panel: rows copied, zeros after
      xin.assign(padded * c, 0.0f);
      std::memcpy(xin.data(), in, rows * c * sizeof(float));
      in = xin.data();
      res.resize(padded * e);
      dst = res.data();
    }
    hidden.resize(padded * f);
    for (int64_t j0 = 0; j0 < f; j0 += 32) {
      for (int64_t i = 0; i < padded; i += kRows) {
        TileRows<true>(in + i * c, c, c, w1p, f, b1p, j0,
                       hidden.data() + i * f, f);
      }
    }
    for (int64_t j0 = 0; j0 < e; j0 += 32) {
      for (int64_t i = 0; i < padded; i += kRows) {
        TileRows<false>(hidden.data() + i * f, f, f, w2p, e, b2p, j0,
                        dst + i * e, e);
      }
    }
    if (padded != rows) {
      std::memcpy(op + r0 * e, res.data(), rows * e * sizeof(float));
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CtjaxMlp, MlpImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
