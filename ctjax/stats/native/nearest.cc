// Same-cell nearest training point on a CPU, as one XLA FFI call.
//
// ctjax.stats.native compiles this file on the user's machine (the host's
// C++ compiler, -O3 -march=native) the first time it is needed, and
// ctjax.stats.neighbors calls it through jax.ffi for search="native". It
// computes what neighbors._tiled + neighbors._block_winner compute: for each
// query, the sorted row of its own cell with the lowest ranking score
//   l2:     aux[r] - 2 <t_r, q>      (aux = |t_r|^2)
//   cosine: -|<t_r, q>| * aux[r]     (aux = 1 / |t_r|)
// ties going to the lowest row. XLA:CPU writes a product's [rows, queries]
// block to memory and reads it back for the minimum; here the products of a
// few rows with a block of queries stay in registers and are reduced there.
//
// Inputs:  points [R, d] f32 (every layer's rows may be stacked: this layer
//          starts at row_base), row_base [] s32, aux [N] f32, starts [k + 2]
//          s32 (cell c is rows starts[c]:starts[c+1]), queries [m, d] f32,
//          q_cells [m] s32 (a value outside [0, k) marks a padding row).
// Attr:    metric (0: l2, 1: cosine).
// Outputs: score [m] f32 (inf where the cell has no training row or the row
//          is padding), row [m] s32 (the winning sorted row, -1 there).
//
// Work items (a cell and a block of its queries) run on this library's
// helper threads (pool.h; XLA's intra-op pool was measured to start them only
// after the calling program had finished).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Register tile: kRows training rows times kVecs vectors of kLanes queries.
// Measured on an AVX-512 CPU (one thread, d = 64): 181 GFLOP/s with 16 lanes,
// 2 vectors and 5 rows; wider tiles spilled registers (30-55 GFLOP/s).
#if defined(__AVX512F__)
constexpr int kLanes = 16;
constexpr int kRows = 5;
#else
constexpr int kLanes = 8;
constexpr int kRows = 4;
#endif
constexpr int kVecs = 2;
constexpr int kBlock = kLanes * kVecs;  // queries per block

typedef float VecF __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t VecI __attribute__((vector_size(kLanes * sizeof(int32_t))));

template <int kMetric>
inline VecF Score(VecF dot, float aux) {
  if (kMetric == 0) return aux - 2.0f * dot;
  VecF mag = dot < 0 ? -dot : dot;
  return -(mag * aux);
}

// Best rows in [r0, r1) for the kBlock queries of ``qt`` ([d][kBlock],
// transposed). ``best``/``arg`` hold the running minimum and its row.
template <int kMetric>
void ScanBlock(const float* qt, const float* rows, const float* aux,
               int64_t r0, int64_t r1, int64_t d, float* best, int32_t* arg) {
  VecF b[kVecs];
  VecI a[kVecs];
  for (int v = 0; v < kVecs; ++v) {
    std::memcpy(&b[v], best + v * kLanes, sizeof(VecF));
    std::memcpy(&a[v], arg + v * kLanes, sizeof(VecI));
  }
  int64_t r = r0;
  for (; r + kRows <= r1; r += kRows) {
    VecF acc[kRows][kVecs] = {};
    const float* t = rows + r * d;
    for (int64_t k = 0; k < d; ++k) {
      VecF q[kVecs];
      for (int v = 0; v < kVecs; ++v) {
        std::memcpy(&q[v], qt + k * kBlock + v * kLanes, sizeof(VecF));
      }
      for (int i = 0; i < kRows; ++i) {
        const float tk = t[i * d + k];
        for (int v = 0; v < kVecs; ++v) acc[i][v] += q[v] * tk;
      }
    }
    for (int i = 0; i < kRows; ++i) {  // rows in order: ties keep the first
      for (int v = 0; v < kVecs; ++v) {
        VecF s = Score<kMetric>(acc[i][v], aux[r + i]);
        VecI better = s < b[v];
        b[v] = better ? s : b[v];
        a[v] = better ? (VecI{} + static_cast<int32_t>(r + i)) : a[v];
      }
    }
  }
  for (; r < r1; ++r) {
    VecF acc[kVecs] = {};
    const float* t = rows + r * d;
    for (int64_t k = 0; k < d; ++k) {
      for (int v = 0; v < kVecs; ++v) {
        VecF q;
        std::memcpy(&q, qt + k * kBlock + v * kLanes, sizeof(VecF));
        acc[v] += q * t[k];
      }
    }
    for (int v = 0; v < kVecs; ++v) {
      VecF s = Score<kMetric>(acc[v], aux[r]);
      VecI better = s < b[v];
      b[v] = better ? s : b[v];
      a[v] = better ? (VecI{} + static_cast<int32_t>(r)) : a[v];
    }
  }
  for (int v = 0; v < kVecs; ++v) {
    std::memcpy(best + v * kLanes, &b[v], sizeof(VecF));
    std::memcpy(arg + v * kLanes, &a[v], sizeof(VecI));
  }
}

struct Problem {
  const float* rows;     // this layer's row 0
  const float* aux;
  const int32_t* starts;
  const float* queries;
  int64_t d;
  int metric;
  std::vector<int32_t> order;  // queries grouped by cell
  std::vector<int64_t> item_cell, item_first, item_count;  // into ``order``
  float* score;
  int32_t* row;
};

void RunItem(const Problem& p, int64_t item, std::vector<float>& qt) {
  const int64_t c = p.item_cell[item], first = p.item_first[item];
  const int64_t count = p.item_count[item], d = p.d;
  std::fill(qt.begin(), qt.end(), 0.0f);
  for (int64_t j = 0; j < count; ++j) {
    const float* q = p.queries + int64_t{p.order[first + j]} * d;
    for (int64_t k = 0; k < d; ++k) qt[k * kBlock + j] = q[k];
  }
  float best[kBlock];
  int32_t arg[kBlock];
  std::fill(best, best + kBlock, INFINITY);
  std::fill(arg, arg + kBlock, -1);
  const int64_t r0 = p.starts[c], r1 = p.starts[c + 1];
  if (p.metric == 0) {
    ScanBlock<0>(qt.data(), p.rows, p.aux, r0, r1, d, best, arg);
  } else {
    ScanBlock<1>(qt.data(), p.rows, p.aux, r0, r1, d, best, arg);
  }
  for (int64_t j = 0; j < count; ++j) {
    const int32_t i = p.order[first + j];
    p.score[i] = best[j];
    p.row[i] = arg[j];
  }
}

ffi::Error NearestImpl(ffi::Buffer<ffi::F32> points,
                       ffi::Buffer<ffi::S32> row_base,
                       ffi::Buffer<ffi::F32> aux, ffi::Buffer<ffi::S32> starts,
                       ffi::Buffer<ffi::F32> queries,
                       ffi::Buffer<ffi::S32> q_cells, int32_t metric,
                       ffi::ResultBuffer<ffi::F32> score,
                       ffi::ResultBuffer<ffi::S32> row) {
  auto pd = points.dimensions();
  auto qd = queries.dimensions();
  if (pd.size() != 2 || qd.size() != 2 || pd[1] != qd[1]) {
    return ffi::Error::InvalidArgument(
        "ctjax nearest: points [R, d] and queries [m, d] must share d");
  }
  if (metric != 0 && metric != 1) {
    return ffi::Error::InvalidArgument("ctjax nearest: metric must be 0 or 1");
  }
  const int64_t n = static_cast<int64_t>(aux.element_count());
  const int64_t m = qd[0], d = qd[1];
  const int64_t base = row_base.typed_data()[0];
  const int64_t n_starts = static_cast<int64_t>(starts.element_count());
  if (base < 0 || base + n > pd[0] || n_starts < 2 ||
      static_cast<int64_t>(q_cells.element_count()) != m) {
    return ffi::Error::InvalidArgument(
        "ctjax nearest: row_base, aux, starts or q_cells out of shape");
  }
  const int64_t k = n_starts - 2;
  const int32_t* st = starts.typed_data();
  for (int64_t c = 0; c <= k; ++c) {
    if (st[c] < 0 || st[c] > st[c + 1] || st[c + 1] > n) {
      return ffi::Error::InvalidArgument(
          "ctjax nearest: starts must be non-decreasing within [0, N]");
    }
  }
  float* out_score = score->typed_data();
  int32_t* out_row = row->typed_data();
  const int32_t* qc = q_cells.typed_data();

  Problem p;
  p.rows = points.typed_data() + base * d;
  p.aux = aux.typed_data();
  p.starts = st;
  p.queries = queries.typed_data();
  p.d = d;
  p.metric = metric;
  p.score = out_score;
  p.row = out_row;
  // Queries grouped by cell (a counting sort, stable); padding rows and cells
  // without training rows get no item.
  std::vector<int64_t> count(k + 1, 0);
  for (int64_t i = 0; i < m; ++i) {
    out_score[i] = INFINITY;
    out_row[i] = -1;
    const int32_t c = qc[i];
    if (c >= 0 && c < k && st[c] < st[c + 1]) ++count[c];
  }
  std::vector<int64_t> first(k + 1, 0);
  for (int64_t c = 0; c < k; ++c) first[c + 1] = first[c] + count[c];
  p.order.resize(first[k]);
  std::vector<int64_t> fill(first.begin(), first.end());
  for (int64_t i = 0; i < m; ++i) {
    const int32_t c = qc[i];
    if (c >= 0 && c < k && st[c] < st[c + 1]) {
      p.order[fill[c]++] = static_cast<int32_t>(i);
    }
  }
  // Items of the largest cells first, so that the threads finish together
  // (the cost of an item is its cell's row count).
  std::vector<int64_t> by_size(k);
  for (int64_t c = 0; c < k; ++c) by_size[c] = c;
  std::stable_sort(by_size.begin(), by_size.end(), [&](int64_t a, int64_t b) {
    return st[a + 1] - st[a] > st[b + 1] - st[b];
  });
  for (int64_t c : by_size) {
    for (int64_t j = 0; j < count[c]; j += kBlock) {
      p.item_cell.push_back(c);
      p.item_first.push_back(first[c] + j);
      p.item_count.push_back(std::min<int64_t>(kBlock, count[c] - j));
    }
  }
  const Problem& problem = p;
  ctjax_native::RunItems(
      static_cast<int64_t>(problem.item_cell.size()), [&problem](int64_t i) {
        thread_local std::vector<float> qt;
        qt.resize(problem.d * kBlock);
        RunItem(problem, i, qt);
      });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CtjaxNearestInCell, NearestImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Attr<int32_t>("metric")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());
