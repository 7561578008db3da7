// Multi-head self-attention on a CPU, softmax(scale q k^T) v, as one XLA FFI
// call (the ViT family's attention without a bias).
//
// XLA:CPU runs it as two batched products with the [B, H, T, T] logits and
// their softmax written to memory in between, at ~60 GFLOP/s on ViT-B/16's
// shapes, against ~180 for PyTorch's fused CPU kernel (docs/performance.md).
// Here one work item is one (batch, head): its keys are transposed once into
// a [K][T] buffer, then for each block of query rows the logits of the block
// ([rows][T], in L1), their softmax and the block's output are computed with
// register tiles, without leaving the cache.
//
// Inputs:  q, k, v [B, T, H, K] f32 (the layout of ctjax's projections).
// Attr:    scale (f32).
// Output:  out [B, T, H, K] f32.
//
// The softmax is float32, as in ctjax's XLA path: the row maximum is
// subtracted, exp is a degree-6 polynomial after range reduction (within
// ~2 ulp of expf), the row is summed in float32 and the output divided by
// that sum.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "pool.h"
#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using ctjax_native::Exp;
using ctjax_native::kLanes;
using ctjax_native::Load;
using ctjax_native::Store;
using ctjax_native::VecF;

constexpr int kRowsQk = 5;  // query rows of a logits tile (x 2 vectors)
constexpr int kRowsPv = 4;  // query rows of an output tile (x K / kLanes)
constexpr int kBlock = 20;  // query rows of a block (multiple of both)

struct Dims {
  int64_t b, t, h, k, tp;  // tp: T rounded up to 2 vectors
  float scale;
};

// Logits of query rows [i0, i0 + kR) against all keys, into s ([kBlock][tp]).
template <int kR>
void Logits(const float* q, const float* kt, const Dims& d, int64_t i0,
            int64_t row_stride, float* s, int64_t s_row) {
  for (int64_t j = 0; j < d.tp; j += 2 * kLanes) {
    VecF acc[kR][2] = {};
    for (int64_t e = 0; e < d.k; ++e) {
      const VecF k0 = Load(kt + e * d.tp + j);
      const VecF k1 = Load(kt + e * d.tp + j + kLanes);
      for (int r = 0; r < kR; ++r) {
        const float qe = q[(i0 + r) * row_stride + e];
        acc[r][0] += k0 * qe;
        acc[r][1] += k1 * qe;
      }
    }
    for (int r = 0; r < kR; ++r) {
      Store(s + (s_row + r) * d.tp + j, acc[r][0] * d.scale);
      Store(s + (s_row + r) * d.tp + j + kLanes, acc[r][1] * d.scale);
    }
  }
}

// A row of s (T valid logits, then padding up to tp) -> exp(logit - max)
// in place; returns the row's sum. The padding becomes exp(-87) ~ 1.6e-38,
// nothing beside the maximum's exp(0) = 1, and is never read afterwards.
float Softmax(float* row, const Dims& d) {
  for (int64_t j = d.t; j < d.tp; ++j) row[j] = -INFINITY;
  VecF m = Load(row);
  for (int64_t j = kLanes; j < d.tp; j += kLanes) {
    const VecF x = Load(row + j);
    m = x > m ? x : m;
  }
  float mx = m[0];
  for (int l = 1; l < kLanes; ++l) mx = std::max(mx, m[l]);
  VecF sum = {};
  for (int64_t j = 0; j < d.tp; j += kLanes) {
    const VecF p = Exp(Load(row + j) - mx);
    Store(row + j, p);
    sum += p;
  }
  float total = 0.0f;
  for (int l = 0; l < kLanes; ++l) total += sum[l];
  return total;
}

// Output rows [i0, i0 + kR) = p[rows] @ v / sums, kVecs vectors of K.
template <int kR, int kVecs>
void Output(const float* p, const float* v, const Dims& d, int64_t s_row,
            const float* sums, int64_t row_stride, float* out, int64_t i0) {
  VecF acc[kR][kVecs] = {};
  for (int64_t j = 0; j < d.t; ++j) {
    VecF vv[kVecs];
    for (int c = 0; c < kVecs; ++c) vv[c] = Load(v + j * row_stride + c * kLanes);
    for (int r = 0; r < kR; ++r) {
      const float pj = p[(s_row + r) * d.tp + j];
      for (int c = 0; c < kVecs; ++c) acc[r][c] += vv[c] * pj;
    }
  }
  for (int r = 0; r < kR; ++r) {
    const float inv = 1.0f / sums[s_row + r];
    for (int c = 0; c < kVecs; ++c) {
      Store(out + (i0 + r) * row_stride + c * kLanes, acc[r][c] * inv);
    }
  }
}

// Any K: one output element column block at a time (scalar fallback).
void OutputAny(const float* p, const float* v, const Dims& d, int64_t s_row,
               const float* sums, int64_t row_stride, float* out,
               int64_t i0) {
  for (int64_t e = 0; e < d.k; ++e) {
    float acc = 0.0f;
    for (int64_t j = 0; j < d.t; ++j) {
      acc += p[s_row * d.tp + j] * v[j * row_stride + e];
    }
    out[i0 * row_stride + e] = acc / sums[s_row];
  }
}

template <int kVecs>
void Head(const float* q, const float* k, const float* v, float* out,
          const Dims& d, std::vector<float>& kt, std::vector<float>& s,
          std::vector<float>& sums) {
  const int64_t stride = d.h * d.k;  // between tokens
  kt.assign(d.k * d.tp, 0.0f);
  for (int64_t j = 0; j < d.t; ++j) {
    for (int64_t e = 0; e < d.k; ++e) kt[e * d.tp + j] = k[j * stride + e];
  }
  s.resize(kBlock * d.tp);
  sums.resize(kBlock);
  for (int64_t i0 = 0; i0 < d.t; i0 += kBlock) {
    const int64_t rows = std::min<int64_t>(kBlock, d.t - i0);
    int64_t r = 0;
    for (; r + kRowsQk <= rows; r += kRowsQk) {
      Logits<kRowsQk>(q, kt.data(), d, i0 + r, stride, s.data(), r);
    }
    for (; r < rows; ++r) Logits<1>(q, kt.data(), d, i0 + r, stride, s.data(), r);
    for (r = 0; r < rows; ++r) sums[r] = Softmax(s.data() + r * d.tp, d);
    r = 0;
    if constexpr (kVecs > 0) {
      for (; r + kRowsPv <= rows; r += kRowsPv) {
        Output<kRowsPv, kVecs>(s.data(), v, d, r, sums.data(), stride, out,
                               i0 + r);
      }
      for (; r < rows; ++r) {
        Output<1, kVecs>(s.data(), v, d, r, sums.data(), stride, out, i0 + r);
      }
    } else {
      for (; r < rows; ++r) {
        OutputAny(s.data(), v, d, r, sums.data(), stride, out, i0 + r);
      }
    }
  }
}

ffi::Error AttentionImpl(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                         ffi::Buffer<ffi::F32> v,
                         ffi::ResultBuffer<ffi::F32> out, float scale) {
  auto qd = q.dimensions();
  auto same = [&](auto other) {
    return other.size() == qd.size() &&
           std::equal(other.begin(), other.end(), qd.begin());
  };
  if (qd.size() != 4 || !same(k.dimensions()) || !same(v.dimensions()) ||
      !same(out->dimensions())) {
    return ffi::Error::InvalidArgument(
        "ctjax attention: q, k, v and out must all be [B, T, H, K]");
  }
  Dims d{qd[0], qd[1], qd[2], qd[3], 0, scale};
  d.tp = (d.t + 2 * kLanes - 1) / (2 * kLanes) * (2 * kLanes);
  if (d.b * d.t * d.h * d.k == 0) return ffi::Error::Success();
  const float* qp = q.typed_data();
  const float* kp = k.typed_data();
  const float* vp = v.typed_data();
  float* op = out->typed_data();
  ctjax_native::RunItems(d.b * d.h, [&](int64_t item) {
    thread_local std::vector<float> kt, s, sums;
    const int64_t b = item / d.h, h = item % d.h;
    const int64_t at = (b * d.t * d.h + h) * d.k;  // token 0 of this head
    if (d.k == 4 * kLanes) {
      Head<4>(qp + at, kp + at, vp + at, op + at, d, kt, s, sums);
    } else if (d.k == 8 * kLanes) {
      Head<8>(qp + at, kp + at, vp + at, op + at, d, kt, s, sums);
    } else if (d.k == 2 * kLanes) {
      Head<2>(qp + at, kp + at, vp + at, op + at, d, kt, s, sums);
    } else {
      Head<0>(qp + at, kp + at, vp + at, op + at, d, kt, s, sums);
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CtjaxAttention, AttentionImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));
