// Scatter matrix of centred rows on a CPU, as one XLA FFI call.
//
//   out = sum_n (x_n - mean)(x_n - mean)^T        x [N, D], mean [D]
//
// The result is symmetric, so only the register tiles that touch its upper
// triangle are multiplied (about D^2/2 + 16 D products per row instead of
// XLA's D^2). The rows are split into one contiguous range per thread, so x
// is read from memory once. A thread takes kPanel rows at a time and packs
// them, centred, twice into its own cache-sized buffers: as kJ-column tiles
// ([kPanel][kJ] each, the vector operand) and as kI-column groups
// ([kPanel][kI] each, the broadcast operand). The kI x kJ products of a group
// and a tile over the panel's rows are kept in registers, then added into
// the thread's float32 sums, which are added into float64 every kFlush
// panels, so the float32 rounding error does not grow with N. The threads'
// float64 sums are added at the end and rounded to float32 once.
//
// Inputs:  x [N, D] f32, mean [D] f32.  Output: out [D, D] f32 (symmetric).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "pool.h"
#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using ctjax_native::kLanes;
using ctjax_native::VecF;

#if defined(__AVX512F__)
constexpr int kI = 8;  // rows of a register tile (broadcast operand)
constexpr int kVecs = 2;
#else
// AVX2's 16 registers: 12 sums, two tile vectors and a broadcast (8 rows
// would spill; 4 rows ran 1.6x slower on a Zen 3).
constexpr int kI = 6;
constexpr int kVecs = 2;
#endif
constexpr int kJ = kLanes * kVecs;  // columns of a register tile (vectors)
constexpr int64_t kPanel = 256;    // rows packed at a time
constexpr int64_t kFlush = 16;     // panels summed in float32

inline int64_t RoundUp(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// One thread's share: rows [r0, r1) of x into ``acc`` ([gi][tj], row-major;
// gi = D rounded up to kI, tj = D rounded up to kJ).
struct Lane {
  std::vector<float> tiles, groups, sums;
  std::vector<double> acc;
};

// sums[i0 + i][j0 + j] += sum_r g[r][i] * t[r][j] over kPanel rows.
inline void Kernel(const float* g, const float* t, float* sums, int64_t tj) {
  VecF s[kI][kVecs] = {};
  for (int64_t r = 0; r < kPanel; ++r) {
    VecF tv[kVecs];
    for (int v = 0; v < kVecs; ++v) {
      std::memcpy(&tv[v], t + r * kJ + v * kLanes, sizeof(VecF));
    }
    for (int i = 0; i < kI; ++i) {
      const float gi = g[r * kI + i];
      for (int v = 0; v < kVecs; ++v) s[i][v] += tv[v] * gi;
    }
  }
  for (int i = 0; i < kI; ++i) {
    for (int v = 0; v < kVecs; ++v) {
      VecF o;
      std::memcpy(&o, sums + i * tj + v * kLanes, sizeof(VecF));
      o += s[i][v];
      std::memcpy(sums + i * tj + v * kLanes, &o, sizeof(VecF));
    }
  }
}

void RunLane(const float* x, const float* mean, int64_t d, int64_t r0,
             int64_t r1, Lane& lane) {
  const int64_t gi = RoundUp(d, kI), tj = RoundUp(d, kJ);
  const int64_t n_groups = gi / kI, n_tiles = tj / kJ;
  lane.tiles.assign(n_tiles * kPanel * kJ, 0.0f);
  lane.groups.assign(n_groups * kPanel * kI, 0.0f);
  lane.sums.assign(gi * tj, 0.0f);
  lane.acc.assign(gi * tj, 0.0);
  std::vector<float> row(tj + gi, 0.0f);  // one centred row, zero-padded
  int64_t panels = 0;
  for (int64_t n0 = r0; n0 < r1; n0 += kPanel) {
    const int64_t rows = std::min(kPanel, r1 - n0);
    for (int64_t r = 0; r < kPanel; ++r) {
      if (r < rows) {
        const float* src = x + (n0 + r) * d;
        for (int64_t c = 0; c < d; ++c) row[c] = src[c] - mean[c];
      } else {
        std::fill(row.begin(), row.begin() + d, 0.0f);  // adds nothing
      }
      for (int64_t t = 0; t < n_tiles; ++t) {
        std::memcpy(&lane.tiles[(t * kPanel + r) * kJ], &row[t * kJ],
                    kJ * sizeof(float));
      }
      for (int64_t g = 0; g < n_groups; ++g) {
        std::memcpy(&lane.groups[(g * kPanel + r) * kI], &row[g * kI],
                    kI * sizeof(float));
      }
    }
    // Tile t (columns [t kJ, (t + 1) kJ)) meets the groups whose first row
    // is left of its last column: the upper triangle and a thin band below.
    for (int64_t t = 0; t < n_tiles; ++t) {
      const float* tile = &lane.tiles[t * kPanel * kJ];
      const int64_t g_end = std::min(n_groups, ((t + 1) * kJ + kI - 1) / kI);
      for (int64_t g = 0; g < g_end; ++g) {
        Kernel(&lane.groups[g * kPanel * kI], tile,
               &lane.sums[g * kI * tj + t * kJ], tj);
      }
    }
    if (++panels % kFlush == 0 || n0 + kPanel >= r1) {
      for (int64_t i = 0; i < gi * tj; ++i) {
        lane.acc[i] += lane.sums[i];
        lane.sums[i] = 0.0f;
      }
    }
  }
}

ffi::Error ScatterImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> mean,
                       ffi::ResultBuffer<ffi::F32> out) {
  auto xd = x.dimensions();
  if (xd.size() != 2 || static_cast<int64_t>(mean.element_count()) != xd[1]) {
    return ffi::Error::InvalidArgument(
        "ctjax scatter: x must be [N, D] and mean [D]");
  }
  const int64_t n = xd[0], d = xd[1];
  const int64_t tj = RoundUp(d, kJ);
  // One lane per CPU, each with ~12 D^2 bytes of sums, at most 1 GB in all.
  const int64_t per_lane = 12 * RoundUp(d, kI) * tj + 1;
  int64_t n_lanes = ctjax_native::Helpers::Get().size() + 1;
  n_lanes = std::max<int64_t>(
      1, std::min({n_lanes, (int64_t{1} << 30) / per_lane,
                   (n + kPanel - 1) / kPanel}));
  std::vector<Lane> lanes(n_lanes);
  // Whole panels per lane, the remainder in the last.
  const int64_t panels = (n + kPanel - 1) / kPanel;
  const float* xp = x.typed_data();
  const float* mp = mean.typed_data();
  ctjax_native::RunItems(n_lanes, [&](int64_t l) {
    const int64_t r0 = std::min(n, panels * l / n_lanes * kPanel);
    const int64_t r1 = std::min(n, panels * (l + 1) / n_lanes * kPanel);
    RunLane(xp, mp, d, r0, r1, lanes[l]);
  });
  float* o = out->typed_data();
  for (int64_t r = 0; r < d; ++r) {
    for (int64_t c = r; c < d; ++c) {
      double s = 0.0;
      for (const Lane& lane : lanes) {
        if (!lane.acc.empty()) s += lane.acc[r * tj + c];
      }
      o[r * d + c] = o[c * d + r] = static_cast<float>(s);
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CtjaxScatter, ScatterImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
