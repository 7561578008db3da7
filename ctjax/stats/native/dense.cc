// A dense layer on a CPU, as one XLA FFI call:
//
//   out = act(x @ w + b)      x [M, K], w [K, N], b [N]
//
// act: none, exact GELU or CLIP's quick GELU, x * sigmoid(1.702 x).
//
// Why: on a 2-core Sapphire Rapids, XLA:CPU's float32 products of ViT-B/16's
// shapes ran 184 GFLOP/s on one core but 314-345 on two (1.7x), where
// PyTorch's MKL ran 190-200 and 380-403 (2.0-2.1x); the products are nearly
// all of a ViT forward (docs/performance.md, "Encoder forward passes").
//
// How the work is split: each work item owns a block of at most kBlockCols
// output columns (and all rows, or a share of the rows when there are fewer
// column blocks than threads), so its share of w, packed once per call into
// panels of kKC rows x kNR columns (~1.2 MB), stays in that core's L2 while
// every row of x streams past it. The two cores then do not share the
// weights' traffic, and two threads run ~2x one.
//
// The register tile is kMR rows x kNR columns (AVX-512: 12 x 32, 24
// accumulators; AVX2: 6 x 16, 12). x is read in place: a tile's kMR rows
// (kMR x kKC floats) stay in L1 while the item's panels pass under them.
// The sum starts from the bias; depths above kKC are summed in chunks of at
// most kKC, through the output. The activation acts on the finished sum:
// GELU is simd.h's (exact form, erf within 1.5e-7), the sigmoid uses
// simd.h's exp of -|1.702 x| (within ~2 ulp).
//
// Inputs: x [M, K], w [K, N], b [N], all f32.  Attr: act (i32: 0 none,
// 1 GELU, 2 quick GELU).
// Output: out [M, N] f32.

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "pool.h"
#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using ctjax_native::Exp;
using ctjax_native::Gelu;
using ctjax_native::kLanes;
using ctjax_native::Load;
using ctjax_native::Store;
using ctjax_native::VecF;

constexpr int kVecs = 2;               // vectors per tile row
constexpr int kNR = kVecs * kLanes;    // columns of a panel and a tile
#if defined(__AVX512F__)
constexpr int kMR = 12;                // rows of a tile
#else
constexpr int kMR = 6;                 // AVX2's 16 registers
#endif
constexpr int64_t kKC = 768;           // depth of a packed panel
constexpr int64_t kBlockCols = 384;    // columns of a work item, at most

enum Act : int32_t { kNone = 0, kGelu = 1, kQuickGelu = 2 };

inline VecF Activate(VecF x, int32_t act) {
  if (act == kGelu) return Gelu(x);
  if (act == kQuickGelu) {
    const VecF z = 1.702f * x;
    const VecF e = Exp(z < 0 ? z : -z);  // exp(-|z|), in (0, 1]
    const VecF sig = z < 0 ? e / (1.0f + e) : 1.0f / (1.0f + e);
    return x * sig;
  }
  return x;
}

// A panel: w[k0 .. k0 + kc, j0 .. j0 + kNR) as kc rows of kNR floats,
// columns past n zero.
void PackPanel(const float* w, int64_t n, int64_t k0, int64_t kc, int64_t j0,
               float* out) {
  const int64_t valid = std::min<int64_t>(kNR, n - j0);
  for (int64_t e = 0; e < kc; ++e) {
    const float* src = w + (k0 + e) * n + j0;
    float* dst = out + e * kNR;
    if (valid == kNR) {
      std::memcpy(dst, src, kNR * sizeof(float));
    } else {
      std::memcpy(dst, src, valid * sizeof(float));
      std::fill(dst + valid, dst + kNR, 0.0f);
    }
  }
}

// out[r, j0 ..) for r < R (row stride ldo), from x rows a (stride lda) and
// a packed panel p of depth kc. first: the sum starts from bias (kNR
// floats), else from out; last: the activation, and the stores. valid: the
// panel's real columns (kNR but at the right edge).
template <int R>
inline void Tile(const float* a, int64_t lda, const float* p, int64_t kc,
                 const float* bias, bool first, bool last, int32_t act,
                 int64_t valid, float* out, int64_t ldo) {
  VecF acc[R][kVecs];
  if (first) {
    for (int v = 0; v < kVecs; ++v) {
      const VecF bv = Load(bias + v * kLanes);
      for (int r = 0; r < R; ++r) acc[r][v] = bv;
    }
  } else if (valid == kNR) {
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < kVecs; ++v) acc[r][v] = Load(out + r * ldo + v * kLanes);
  } else {
    float row[kNR] = {};
    for (int r = 0; r < R; ++r) {
      std::memcpy(row, out + r * ldo, valid * sizeof(float));
      for (int v = 0; v < kVecs; ++v) acc[r][v] = Load(row + v * kLanes);
    }
  }
  for (int64_t e = 0; e < kc; ++e) {
    const VecF w0 = Load(p + e * kNR), w1 = Load(p + e * kNR + kLanes);
    __builtin_prefetch(p + (e + 8) * kNR);
    __builtin_prefetch(p + (e + 8) * kNR + kLanes);
    for (int r = 0; r < R; ++r) {
      const float s = a[r * lda + e];
      acc[r][0] += w0 * s;
      acc[r][1] += w1 * s;
    }
  }
  if (last && act != kNone) {
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < kVecs; ++v) acc[r][v] = Activate(acc[r][v], act);
  }
  if (valid == kNR) {
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < kVecs; ++v) Store(out + r * ldo + v * kLanes, acc[r][v]);
  } else {
    float row[kNR];
    for (int r = 0; r < R; ++r) {
      for (int v = 0; v < kVecs; ++v) Store(row + v * kLanes, acc[r][v]);
      std::memcpy(out + r * ldo, row, valid * sizeof(float));
    }
  }
}

using TileFn = void (*)(const float*, int64_t, const float*, int64_t,
                        const float*, bool, bool, int32_t, int64_t, float*,
                        int64_t);

template <int... R>
constexpr std::array<TileFn, sizeof...(R)> MakeTiles(
    std::integer_sequence<int, R...>) {
  return {&Tile<R + 1>...};
}

// TILES[r - 1]: the tile of r rows (the last rows of x).
const auto TILES = MakeTiles(std::make_integer_sequence<int, kMR>{});

ffi::Error DenseImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                     ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> out,
                     int32_t act) {
  auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || wd[0] != xd[1] ||
      static_cast<int64_t>(b.element_count()) != wd[1]) {
    return ffi::Error::InvalidArgument(
        "ctjax dense: x [M, K], w [K, N], b [N]");
  }
  if (act < kNone || act > kQuickGelu) {
    return ffi::Error::InvalidArgument("ctjax dense: act 0, 1 or 2");
  }
  const int64_t m = xd[0], k = xd[1], n = wd[1];
  if (m * n == 0) return ffi::Error::Success();
  const float* xp = x.typed_data();
  const float* wp = w.typed_data();
  const float* bp = b.typed_data();
  float* op = out->typed_data();
  // The bias padded to whole panels (the last panel's columns past n: 0).
  const int64_t panels = (n + kNR - 1) / kNR;
  std::vector<float> bias(panels * kNR, 0.0f);
  std::memcpy(bias.data(), bp, n * sizeof(float));
  if (k == 0) {  // out = act(b) on every row
    for (int64_t j = 0; j < panels * kNR; j += kLanes) {
      Store(bias.data() + j, Activate(Load(bias.data() + j), act));
    }
    for (int64_t i = 0; i < m; ++i) {
      std::memcpy(op + i * n, bias.data(), n * sizeof(float));
    }
    return ffi::Error::Success();
  }

  // Column blocks: as many as the threads (or a multiple of them) with at
  // most kBlockCols columns each; rows split too when there are fewer
  // column blocks than threads.
  const int64_t threads = ctjax_native::Helpers::Get().size() + 1;
  const int64_t max_panels = kBlockCols / kNR;
  int64_t col_blocks = (panels + max_panels - 1) / max_panels;
  col_blocks = std::min(panels, (col_blocks + threads - 1) / threads * threads);
  const int64_t per_block = (panels + col_blocks - 1) / col_blocks;
  col_blocks = (panels + per_block - 1) / per_block;
  int64_t row_blocks = 1;
  if (col_blocks < threads) {
    row_blocks = std::max<int64_t>(
        1, std::min((threads + col_blocks - 1) / col_blocks, m / kMR));
  }
  const int64_t rows_per = (m + row_blocks - 1) / row_blocks;
  const int64_t chunks = (k + kKC - 1) / kKC;
  const int64_t depth = (k + chunks - 1) / chunks;

  ctjax_native::RunItems(col_blocks * row_blocks, [&](int64_t item) {
    thread_local std::vector<float> packed;
    const int64_t p0 = (item % col_blocks) * per_block;
    const int64_t p1 = std::min(panels, p0 + per_block);
    const int64_t r0 = (item / col_blocks) * rows_per;
    const int64_t r1 = std::min(m, r0 + rows_per);
    // A 64-byte aligned start for the panels (VecF loads are unaligned-safe,
    // but aligned ones do not split cache lines).
    packed.resize((p1 - p0) * depth * kNR + 16);
    float* base = reinterpret_cast<float*>(
        (reinterpret_cast<uintptr_t>(packed.data()) + 63) & ~uintptr_t{63});
    for (int64_t k0 = 0; k0 < k; k0 += depth) {
      const int64_t kc = std::min(depth, k - k0);
      for (int64_t p = p0; p < p1; ++p) {
        PackPanel(wp, n, k0, kc, p * kNR, base + (p - p0) * kc * kNR);
      }
      const bool first = k0 == 0, last = k0 + kc >= k;
      for (int64_t i = r0; i < r1; i += kMR) {
        const TileFn tile = TILES[std::min<int64_t>(kMR, r1 - i) - 1];
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t j0 = p * kNR;
          tile(xp + i * k + k0, k, base + (p - p0) * kc * kNR, kc,
               bias.data() + j0, first, last, act,
               std::min<int64_t>(kNR, n - j0), op + i * n + j0, n);
        }
      }
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CtjaxDense, DenseImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("act"));
