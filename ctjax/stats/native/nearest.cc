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
// A cell's queries are split into blocks of 32 (the last one 16 where it
// fits) and its rows into chunks. A work item scans one chunk with every
// block of the cell, a panel of rows at a time, so each row is read from
// memory once per call, however many queries its cell has. Items run on
// this library's helper threads (pool.h; XLA's intra-op pool was measured
// to start them only after the calling program had finished); their
// partial winners are merged in row order.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "pool.h"
#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using ctjax_native::kLanes;
using ctjax_native::VecF;
using ctjax_native::VecI;

// Register tiles: rows of the cell times V vectors of kLanes queries. A
// block of 32 queries (V = 2) takes 5 rows at a time, a block of 16 (V = 1:
// a cell's last few queries) 10 rows, so both keep 10 sums in registers.
// Measured on one thread, d = 64: on an AVX-512 CPU 181 GFLOP/s with 2
// vectors and 5 rows (wider tiles spilled registers: 30-55 GFLOP/s); on an
// AVX2 CPU (16 registers) 88 GFLOP/s with 2 vectors and 5 rows against 66
// with 4 rows, 83 with 6 and 74 with 7, and 81 with 1 vector and 8 or 10
// rows (66 with 9 or 12).
constexpr int kRowsOf2 = 5;
constexpr int kRowsOf1 = 10;
constexpr int kBlock = kLanes * 2;  // queries of a full block
// Rows of a work item (a cell's rows are split into chunks of this many,
// and an item scans its chunk with all the cell's query blocks), and rows
// scanned by every block before the next panel (they stay in L1).
constexpr int64_t kChunk = 1000;
constexpr int64_t kPanel = 40;

template <int kMetric>
inline VecF Score(VecF dot, float aux) {
  if (kMetric == 0) return aux - 2.0f * dot;
  VecF mag = dot < 0 ? -dot : dot;
  return -(mag * aux);
}

// Best rows in [r0, r1) for the V * kLanes queries of ``qt`` ([d][V *
// kLanes], transposed), kR rows at a time. ``best``/``arg`` hold the running
// minimum and its row; a later row replaces them only when strictly better.
template <int kMetric, int V, int kR>
void ScanBlock(const float* qt, const float* rows, const float* aux,
               int64_t r0, int64_t r1, int64_t d, float* best, int32_t* arg) {
  constexpr int kW = V * kLanes;
  VecF b[V];
  VecI a[V];
  for (int v = 0; v < V; ++v) {
    std::memcpy(&b[v], best + v * kLanes, sizeof(VecF));
    std::memcpy(&a[v], arg + v * kLanes, sizeof(VecI));
  }
  int64_t r = r0;
  for (; r + kR <= r1; r += kR) {
    VecF acc[kR][V] = {};
    const float* t = rows + r * d;
    for (int64_t k = 0; k < d; ++k) {
      VecF q[V];
      for (int v = 0; v < V; ++v) {
        std::memcpy(&q[v], qt + k * kW + v * kLanes, sizeof(VecF));
      }
      for (int i = 0; i < kR; ++i) {
        const float tk = t[i * d + k];
        for (int v = 0; v < V; ++v) acc[i][v] += q[v] * tk;
      }
    }
    for (int i = 0; i < kR; ++i) {  // rows in order: ties keep the first
      for (int v = 0; v < V; ++v) {
        VecF s = Score<kMetric>(acc[i][v], aux[r + i]);
        VecI better = s < b[v];
        b[v] = better ? s : b[v];
        a[v] = better ? (VecI{} + static_cast<int32_t>(r + i)) : a[v];
      }
    }
  }
  for (; r < r1; ++r) {
    VecF acc[V] = {};
    const float* t = rows + r * d;
    for (int64_t k = 0; k < d; ++k) {
      for (int v = 0; v < V; ++v) {
        VecF q;
        std::memcpy(&q, qt + k * kW + v * kLanes, sizeof(VecF));
        acc[v] += q * t[k];
      }
    }
    for (int v = 0; v < V; ++v) {
      VecF s = Score<kMetric>(acc[v], aux[r]);
      VecI better = s < b[v];
      b[v] = better ? s : b[v];
      a[v] = better ? (VecI{} + static_cast<int32_t>(r)) : a[v];
    }
  }
  for (int v = 0; v < V; ++v) {
    std::memcpy(best + v * kLanes, &b[v], sizeof(VecF));
    std::memcpy(arg + v * kLanes, &a[v], sizeof(VecI));
  }
}

// A block of a cell's queries: ``count`` of them from ``order[first]``,
// in ``vecs`` vectors; its transposed queries start at ``qt[slot * d]`` and
// its partial results at ``slot`` within each item's results.
struct Block {
  int64_t first, count, slot;
  int vecs;
};

// Rows [r0, r1) of a cell, scanned with all of that cell's blocks; its
// partial results (one per query slot of the cell) start at ``out``.
struct Item {
  int64_t cell, r0, r1, out;
};

struct Problem {
  const float* rows;  // this layer's row 0
  const float* aux;
  const float* queries;
  int64_t d;
  int metric;
  std::vector<int32_t> order;  // queries grouped by cell
  std::vector<Block> blocks;
  std::vector<int64_t> cell_blocks;  // cell c: blocks [cb[c], cb[c + 1])
  std::vector<int64_t> cell_slots;   // cell c: query slots from cs[c]
  std::vector<float> qt;             // [slots][d] blocks, transposed
  std::vector<Item> items;           // by cell, then by rows
  std::vector<float> part_score;     // per item: its cell's slots
  std::vector<int32_t> part_row;
};

template <int kMetric>
void RunItem(const Problem& p, const Item& it, float* best, int32_t* arg) {
  const int64_t b0 = p.cell_blocks[it.cell], b1 = p.cell_blocks[it.cell + 1];
  const int64_t base = p.cell_slots[it.cell], d = p.d;
  for (int64_t r = it.r0; r < it.r1; r += kPanel) {
    const int64_t re = std::min(r + kPanel, it.r1);
    // The next panel from memory while this one is scanned.
    const char* next = reinterpret_cast<const char*>(p.rows + re * d);
    const int64_t ahead = (std::min(re + kPanel, it.r1) - re) * d * 4;
    for (int64_t o = 0; o < ahead; o += 64) __builtin_prefetch(next + o);
    for (int64_t b = b0; b < b1; ++b) {
      const Block& bl = p.blocks[b];
      const float* qt = p.qt.data() + bl.slot * d;
      const int64_t o = bl.slot - base;
      if (bl.vecs == 2) {
        ScanBlock<kMetric, 2, kRowsOf2>(qt, p.rows, p.aux, r, re, d,
                                        best + o, arg + o);
      } else {
        ScanBlock<kMetric, 1, kRowsOf1>(qt, p.rows, p.aux, r, re, d,
                                        best + o, arg + o);
      }
    }
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
  p.queries = queries.typed_data();
  p.d = d;
  p.metric = metric;
  // Queries grouped by cell (a counting sort, stable); padding rows and cells
  // without training rows get no block.
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
  // Each cell's queries in blocks of kBlock; a last block of at most kLanes
  // queries takes one vector.
  p.cell_blocks.assign(k + 1, 0);
  p.cell_slots.assign(k + 1, 0);
  int64_t slots = 0;
  for (int64_t c = 0; c < k; ++c) {
    p.cell_blocks[c] = static_cast<int64_t>(p.blocks.size());
    p.cell_slots[c] = slots;
    for (int64_t j = 0; j < count[c]; j += kBlock) {
      const int64_t n_q = std::min<int64_t>(kBlock, count[c] - j);
      const int vecs = n_q <= kLanes ? 1 : 2;
      p.blocks.push_back(Block{first[c] + j, n_q, slots, vecs});
      slots += vecs * kLanes;
    }
  }
  p.cell_blocks[k] = static_cast<int64_t>(p.blocks.size());
  p.cell_slots[k] = slots;
  p.qt.assign(slots * d, 0.0f);
  for (const Block& bl : p.blocks) {
    const int64_t w = bl.vecs * kLanes;
    float* qt = p.qt.data() + bl.slot * d;
    for (int64_t j = 0; j < bl.count; ++j) {
      const float* q = p.queries + int64_t{p.order[bl.first + j]} * d;
      for (int64_t e = 0; e < d; ++e) qt[e * w + j] = q[e];
    }
  }
  // Items: chunks of kChunk rows of each cell that has queries.
  int64_t out = 0;
  for (int64_t c = 0; c < k; ++c) {
    const int64_t n_slots = p.cell_slots[c + 1] - p.cell_slots[c];
    if (n_slots == 0) continue;
    for (int64_t r = st[c]; r < st[c + 1]; r += kChunk) {
      p.items.push_back(
          Item{c, r, std::min<int64_t>(r + kChunk, st[c + 1]), out});
      out += n_slots;
    }
  }
  p.part_score.assign(out, INFINITY);
  p.part_row.assign(out, -1);
  // The most work first, so that the threads finish together.
  std::vector<int64_t> schedule(p.items.size());
  std::vector<int64_t> work(p.items.size());
  for (size_t i = 0; i < p.items.size(); ++i) {
    const Item& it = p.items[i];
    schedule[i] = static_cast<int64_t>(i);
    work[i] = (it.r1 - it.r0) *
              (p.cell_slots[it.cell + 1] - p.cell_slots[it.cell]);
  }
  std::stable_sort(schedule.begin(), schedule.end(),
                   [&](int64_t a, int64_t b) { return work[a] > work[b]; });
  Problem& problem = p;
  ctjax_native::RunItems(
      static_cast<int64_t>(schedule.size()), [&problem, &schedule](int64_t i) {
        const Item& it = problem.items[schedule[i]];
        float* best = problem.part_score.data() + it.out;
        int32_t* arg = problem.part_row.data() + it.out;
        if (problem.metric == 0) {
          RunItem<0>(problem, it, best, arg);
        } else {
          RunItem<1>(problem, it, best, arg);
        }
      });
  // Each cell's chunks in row order: a later chunk wins only when strictly
  // better, so ties keep the lowest row.
  for (const Item& it : p.items) {
    const int64_t b0 = p.cell_blocks[it.cell], b1 = p.cell_blocks[it.cell + 1];
    const int64_t base = p.cell_slots[it.cell];
    for (int64_t b = b0; b < b1; ++b) {
      const Block& bl = p.blocks[b];
      for (int64_t j = 0; j < bl.count; ++j) {
        const int64_t o = it.out + bl.slot - base + j;
        const int32_t q = p.order[bl.first + j];
        if (p.part_score[o] < out_score[q]) {
          out_score[q] = p.part_score[o];
          out_row[q] = p.part_row[o];
        }
      }
    }
  }
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
