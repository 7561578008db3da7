// Depthwise 2-D convolution of channels-last maps on a CPU, stride 1, as one
// XLA FFI call (ConvNeXt's 7x7 convolution).
//
//   out[b, i, j, c] = bias[c] + sum_{p, q} x[b, i + p - ph, j + q - pw, c]
//                                         * w[p, q, c]
//
// with zeros outside x. XLA:CPU computes it as one fused loop of kh * kw
// shifted multiply-adds, about 3x slower than PyTorch's channels-last kernel
// (docs/performance.md). Here the channels are the vector lanes and a tile
// of up to 8 output columns is kept in registers: for each kernel row, the
// kw weights of a channel vector are loaded once and each input vector of
// the row is loaded once and multiplied into every output column it
// touches. Kernels other than 7 and 3 wide check every tap (still a channel
// vector at a time); channels beyond the last whole vector take a scalar
// loop.
//
// Inputs:  x [B, H, W, C] f32, w [kh, kw, C] f32, bias [C] f32.
// Attrs:   pad_h, pad_w (zeros on both sides).
// Output:  out [B, H + 2 pad_h - kh + 1, W + 2 pad_w - kw + 1, C] f32.
//
// Work items are output rows (b, i), run on pool.h's threads.

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "pool.h"
#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using ctjax_native::kLanes;
using ctjax_native::Load;
using ctjax_native::Store;
using ctjax_native::VecF;

struct Shape {
  int64_t h, w, c, kh, kw, ph, pw, ho, wo;
};

// One value (float) or kLanes channels (VecF) at p.
template <typename T>
inline T Get(const float* p);
template <>
inline float Get<float>(const float* p) {
  return *p;
}
template <>
inline VecF Get<VecF>(const float* p) {
  return Load(p);
}

// Output column j of channel c (T = float) or of channels c .. c + kLanes - 1
// (T = VecF), starting from acc (the bias), every tap checked against the
// map's edges (the taps are summed in the same order as Tile's).
template <typename T>
inline T Checked(const float* xb, const float* wt, T acc, const Shape& s,
                 int64_t i, int64_t j, int64_t c) {
  for (int64_t p = 0; p < s.kh; ++p) {
    const int64_t hi = i + p - s.ph;
    if (hi < 0 || hi >= s.h) continue;
    for (int64_t q = 0; q < s.kw; ++q) {
      const int64_t wi = j + q - s.pw;
      if (wi < 0 || wi >= s.w) continue;
      acc += Get<T>(xb + (hi * s.w + wi) * s.c + c) *
             Get<T>(wt + (p * s.kw + q) * s.c + c);
    }
  }
  return acc;
}

// kT output columns j0 .. j0 + kT - 1 of channels c0 .. c0 + kLanes - 1.
// With kEdge, input columns outside the map are skipped (a branch per input
// column, not per product); without, all of them must lie inside.
template <int kKw, int kT, bool kEdge>
inline void Tile(const float* xb, const float* wt, const float* bias,
                 const Shape& s, int64_t i, int64_t j0, int64_t c0,
                 float* out) {
  VecF acc[kT];
  const VecF b = Load(bias + c0);
  for (int t = 0; t < kT; ++t) acc[t] = b;
  for (int64_t p = 0; p < s.kh; ++p) {
    const int64_t hi = i + p - s.ph;
    if (hi < 0 || hi >= s.h) continue;
    VecF wv[kKw];
    for (int q = 0; q < kKw; ++q) wv[q] = Load(wt + (p * kKw + q) * s.c + c0);
    const int64_t w0 = j0 - s.pw;  // input column of u = 0
    const float* row = xb + hi * s.w * s.c + c0;
#pragma GCC unroll 16
    for (int u = 0; u < kT + kKw - 1; ++u) {
      if (kEdge && (w0 + u < 0 || w0 + u >= s.w)) continue;
      const VecF xv = Load(row + (w0 + u) * s.c);
#pragma GCC unroll 16
      for (int t = 0; t < kT; ++t) {
        const int q = u - t;
        if (q >= 0 && q < kKw) acc[t] += xv * wv[q];
      }
    }
  }
  for (int t = 0; t < kT; ++t) {
    Store(out + (j0 + t) * s.c + c0, acc[t]);
  }
}

// Output row i of map b: whole channel vectors in tiles of 8, 4, 2 and 1
// columns (kKw = 0: any kernel width, every tap checked), then the channels
// beyond the last whole vector.
template <int kKw>
void Row(const float* xb, const float* wt, const float* bias, const Shape& s,
         int64_t i, float* out_row) {
  const int64_t whole = s.c / kLanes * kLanes;
  if constexpr (kKw > 0) {
    // Column tiles outside, channel vectors inside: a tile's input columns
    // stay in L1 while every channel vector uses them.
    // Columns [lo, hi) have all their taps inside the row.
    const int64_t lo = std::min(s.pw, s.wo);
    const int64_t hi = std::max(lo, std::min(s.wo, s.w - kKw + 1 + s.pw));
    auto run = [&](auto tile, int64_t j) {
      for (int64_t c0 = 0; c0 < whole; c0 += kLanes) {
        tile(xb, wt, bias, s, i, j, c0, out_row);
      }
    };
    auto step = [&](auto inside, auto edge, int64_t width, int64_t& j) {
      for (; j + width <= s.wo; j += width) {
        if (j >= lo && j + width <= hi) {
          run(inside, j);
        } else {
          run(edge, j);
        }
      }
    };
    int64_t j = 0;
    step(Tile<kKw, 8, false>, Tile<kKw, 8, true>, 8, j);
    step(Tile<kKw, 4, false>, Tile<kKw, 4, true>, 4, j);
    step(Tile<kKw, 2, false>, Tile<kKw, 2, true>, 2, j);
    step(Tile<kKw, 1, false>, Tile<kKw, 1, true>, 1, j);
  } else {
    for (int64_t j = 0; j < s.wo; ++j) {
      for (int64_t c0 = 0; c0 < whole; c0 += kLanes) {
        Store(out_row + j * s.c + c0,
              Checked<VecF>(xb, wt, Load(bias + c0), s, i, j, c0));
      }
    }
  }
  for (int64_t j = 0; j < s.wo; ++j) {
    for (int64_t c = whole; c < s.c; ++c) {
      out_row[j * s.c + c] = Checked<float>(xb, wt, bias[c], s, i, j, c);
    }
  }
}

ffi::Error DepthwiseImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                         ffi::Buffer<ffi::F32> bias,
                         ffi::ResultBuffer<ffi::F32> out, int32_t pad_h,
                         int32_t pad_w) {
  auto xd = x.dimensions(), wd = w.dimensions(), od = out->dimensions();
  if (xd.size() != 4 || wd.size() != 3 || wd[2] != xd[3] ||
      static_cast<int64_t>(bias.element_count()) != xd[3] || pad_h < 0 ||
      pad_w < 0) {
    return ffi::Error::InvalidArgument(
        "ctjax depthwise: x [B, H, W, C], w [kh, kw, C], bias [C], pads >= 0");
  }
  Shape s{xd[1], xd[2], xd[3], wd[0], wd[1], pad_h, pad_w, 0, 0};
  s.ho = s.h + 2 * s.ph - s.kh + 1;
  s.wo = s.w + 2 * s.pw - s.kw + 1;
  if (od.size() != 4 || od[0] != xd[0] || od[1] != s.ho || od[2] != s.wo ||
      od[3] != s.c) {
    return ffi::Error::InvalidArgument("ctjax depthwise: output shape");
  }
  const int64_t nb = xd[0];
  if (nb * s.ho * s.wo * s.c == 0) return ffi::Error::Success();
  const float* xp = x.typed_data();
  const float* wp = w.typed_data();
  const float* bp = bias.typed_data();
  float* op = out->typed_data();
  ctjax_native::RunItems(nb * s.ho, [&](int64_t item) {
    const int64_t b = item / s.ho, i = item % s.ho;
    const float* xb = xp + b * s.h * s.w * s.c;
    float* row = op + (b * s.ho + i) * s.wo * s.c;
    if (s.kw == 7) {
      Row<7>(xb, wp, bp, s, i, row);
    } else if (s.kw == 3) {
      Row<3>(xb, wp, bp, s, i, row);
    } else {
      Row<0>(xb, wp, bp, s, i, row);  // every tap checked
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CtjaxDepthwise, DepthwiseImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("pad_h")
                                  .Attr<int32_t>("pad_w"));
