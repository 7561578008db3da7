// Lloyd iterations of every k-means restart at once, as one XLA FFI call.
//
// ctjax.stats.kmeans seeds R restarts (k-means++) in XLA, then hands their
// centres here. Each iteration is one pass over x for all restarts still
// running: a block of 32 rows (kept transposed, [d][32]) meets each
// restart's centres, 8 at a time, with the products in registers; every row
// goes to its nearest centre (squared distance |x|^2 - 2 x.c + |c|^2,
// clamped at 0; ties to the lowest centre), and its row is added to that
// centre's sum. Rows are summed in float32 in fixed chunks of kChunk rows,
// the chunks in float64 in row order, so the result does not depend on the
// number of threads. A restart stops as in kmeans._lloyd: when the squared
// shift of its centres is <= tol, or after max_iter iterations; an empty
// centre moves onto one of the rows farthest from their centres (scikit-
// learn's rule). XLA ran the restarts one after another, each iteration
// reading x twice; here x is read once per iteration for all of them.
//
// Inputs:  x [N, d] f32, x_sq [N] f32, seeds [R, k, d] f32, tol [] f32.
// Attr:    max_iter.
// Outputs: centers [R, k, d] f32, n_iter [R] s32, inertia [R] f32 (the sum
//          of squared distances to the final centres, summed in float64).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

#include "pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#if defined(__AVX512F__)
constexpr int kLanes = 16;
#else
constexpr int kLanes = 8;
#endif
constexpr int kVecs = 2;
constexpr int kRows = kLanes * kVecs;  // rows of a block
constexpr int kC = 8;                  // centres per register tile
constexpr int64_t kChunk = 4096;       // rows summed in float32

typedef float VecF __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t VecI __attribute__((vector_size(kLanes * sizeof(int32_t))));

struct Problem {
  const float* x;     // [N, d]
  const float* x_sq;  // [N]
  int64_t n, d, k, k_pad, n_blocks;
  std::vector<float> xt;     // [blocks][d][kRows], rows past N are zero
  std::vector<float> xt_sq;  // [blocks][kRows]
  // Per iteration: the running restarts, each one's centres transposed
  // ([d][k_pad]) and |c|^2 ([k_pad]; +inf for the padding centres).
  std::vector<int64_t> running;
  std::vector<float> ct, c_sq;
  // Per chunk and running restart: sums [k][d] and counts [k]; per restart
  // and row: the distance to its centre.
  std::vector<float> sums;
  std::vector<int64_t> counts;
  std::vector<float> min_d2;  // [R][N]
};

// Folds centres [c0, c0 + C) of restart ``ri`` into the running nearest
// centre (``best``, ``arg``) of block ``b``'s rows: squared distances
// computed as XLA's distances.sq_l2 does, max((|x|^2 - 2 x.c) + |c|^2, 0),
// ties to the lowest centre.
template <int C>
void Fold(const Problem& p, int64_t ri, int64_t b, int64_t c0,
          const VecF xsq[kVecs], VecF best[kVecs], VecI arg[kVecs]) {
  const int64_t d = p.d, kp = p.k_pad;
  const float* xtb = p.xt.data() + b * d * kRows;
  const float* ct = p.ct.data() + ri * d * kp;
  const float* csq = p.c_sq.data() + ri * kp;
  VecF acc[C][kVecs] = {};
  for (int64_t j = 0; j < d; ++j) {
    VecF xv[kVecs];
    for (int v = 0; v < kVecs; ++v) {
      std::memcpy(&xv[v], xtb + j * kRows + v * kLanes, sizeof(VecF));
    }
    const float* cj = ct + j * kp + c0;
    for (int c = 0; c < C; ++c) {
      const float w = cj[c];
      for (int v = 0; v < kVecs; ++v) acc[c][v] += xv[v] * w;
    }
  }
  for (int c = 0; c < C; ++c) {
    for (int v = 0; v < kVecs; ++v) {
      VecF d2 = (xsq[v] - 2.0f * acc[c][v]) + csq[c0 + c];
      d2 = d2 > 0.0f ? d2 : VecF{};
      VecI better = d2 < best[v];
      best[v] = better ? d2 : best[v];
      arg[v] = better ? (VecI{} + static_cast<int32_t>(c0 + c)) : arg[v];
    }
  }
}

// The nearest centre of restart ``ri`` (and the squared distance to it) for
// the kRows rows of block ``b``: centres in register tiles of kC, the last
// of kC / 2 where that covers the rest (k_pad is a multiple of kC / 2; the
// padding centres are never nearer, their |c|^2 being +inf).
void Assign(const Problem& p, int64_t ri, int64_t b, VecF best[kVecs],
            VecI arg[kVecs]) {
  VecF xsq[kVecs];
  for (int v = 0; v < kVecs; ++v) {
    std::memcpy(&xsq[v], p.xt_sq.data() + b * kRows + v * kLanes,
                sizeof(VecF));
    best[v] = VecF{} + INFINITY;
    arg[v] = VecI{};
  }
  int64_t c0 = 0;
  for (; c0 + kC <= p.k_pad; c0 += kC) Fold<kC>(p, ri, b, c0, xsq, best, arg);
  if (c0 < p.k_pad) Fold<kC / 2>(p, ri, b, c0, xsq, best, arg);
}

void RunChunk(Problem& p, int64_t chunk) {
  const int64_t d = p.d, k = p.k;
  const int64_t b0 = chunk * (kChunk / kRows);
  const int64_t b1 = std::min(p.n_blocks, b0 + kChunk / kRows);
  const int64_t n_run = static_cast<int64_t>(p.running.size());
  float* sums = p.sums.data() + chunk * n_run * k * d;
  int64_t* counts = p.counts.data() + chunk * n_run * k;
  std::fill(sums, sums + n_run * k * d, 0.0f);
  std::fill(counts, counts + n_run * k, 0);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t rows = std::min<int64_t>(kRows, p.n - b * kRows);
    for (int64_t ri = 0; ri < n_run; ++ri) {
      VecF best[kVecs];
      VecI arg[kVecs];
      Assign(p, ri, b, best, arg);
      float bl[kRows];
      int32_t al[kRows];
      std::memcpy(bl, best, sizeof(bl));
      std::memcpy(al, arg, sizeof(al));
      float* md = p.min_d2.data() + p.running[ri] * p.n + b * kRows;
      float* s = sums + ri * k * d;
      int64_t* cnt = counts + ri * k;
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t row = b * kRows + i;
        md[i] = bl[i];
        const int32_t c = al[i];
        ++cnt[c];
        const float* xr = p.x + row * d;
        float* sc = s + c * d;
        for (int64_t j = 0; j < d; ++j) sc[j] += xr[j];
      }
    }
  }
}

// One pass over x for the restarts in ``p.running`` with the centres in
// ``centres`` ([R, k, d]): their nearest centres, cell sums and counts.
void Pass(Problem& p, const float* centres) {
  const int64_t n_run = static_cast<int64_t>(p.running.size());
  const int64_t d = p.d, k = p.k, kp = p.k_pad;
  p.ct.assign(n_run * d * kp, 0.0f);
  p.c_sq.assign(n_run * kp, INFINITY);
  for (int64_t ri = 0; ri < n_run; ++ri) {
    const float* c = centres + p.running[ri] * k * d;
    for (int64_t ci = 0; ci < k; ++ci) {
      float sq = 0.0f;
      for (int64_t j = 0; j < d; ++j) {
        p.ct[(ri * d + j) * kp + ci] = c[ci * d + j];
        sq += c[ci * d + j] * c[ci * d + j];
      }
      p.c_sq[ri * kp + ci] = sq;
    }
  }
  const int64_t n_chunks = (p.n + kChunk - 1) / kChunk;
  p.sums.resize(n_chunks * n_run * k * d);
  p.counts.resize(n_chunks * n_run * k);
  ctjax_native::RunItems(n_chunks, [&p](int64_t c) { RunChunk(p, c); });
}

ffi::Error LloydImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> x_sq,
                     ffi::Buffer<ffi::F32> seeds, ffi::Buffer<ffi::F32> tol,
                     int32_t max_iter, ffi::ResultBuffer<ffi::F32> centers,
                     ffi::ResultBuffer<ffi::S32> n_iter,
                     ffi::ResultBuffer<ffi::F32> inertia) {
  auto xd = x.dimensions();
  auto sd = seeds.dimensions();
  if (xd.size() != 2 || sd.size() != 3 || sd[2] != xd[1] ||
      static_cast<int64_t>(x_sq.element_count()) != xd[0] || sd[1] < 1) {
    return ffi::Error::InvalidArgument(
        "ctjax lloyd: x [N, d], x_sq [N] and seeds [R, k, d] out of shape");
  }
  Problem p;
  p.x = x.typed_data();
  p.x_sq = x_sq.typed_data();
  p.n = xd[0];
  p.d = xd[1];
  p.k = sd[1];
  p.k_pad = (p.k + kC / 2 - 1) / (kC / 2) * (kC / 2);
  p.n_blocks = (p.n + kRows - 1) / kRows;
  const int64_t n_restarts = sd[0], n = p.n, d = p.d, k = p.k;
  const float tol_abs = tol.typed_data()[0];
  float* out = centers->typed_data();
  int32_t* iters = n_iter->typed_data();
  std::memcpy(out, seeds.typed_data(), n_restarts * k * d * sizeof(float));
  std::fill(iters, iters + n_restarts, 0);
  float* inert = inertia->typed_data();
  std::fill(inert, inert + n_restarts, 0.0f);
  if (n == 0 || n_restarts == 0) return ffi::Error::Success();

  p.xt.assign(p.n_blocks * d * kRows, 0.0f);
  p.xt_sq.assign(p.n_blocks * kRows, 0.0f);
  std::copy(p.x_sq, p.x_sq + n, p.xt_sq.begin());
  for (int64_t r = 0; r < n; ++r) {
    float* dst = p.xt.data() + (r / kRows) * d * kRows + r % kRows;
    for (int64_t j = 0; j < d; ++j) dst[j * kRows] = p.x[r * d + j];
  }
  p.min_d2.assign(n_restarts * n, 0.0f);
  const int64_t n_chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> total(k * d);
  std::vector<int64_t> count(k);
  std::vector<float> fresh(k * d);
  std::vector<int64_t> order;

  for (int32_t it = 0; it < max_iter; ++it) {
    p.running.clear();
    for (int64_t r = 0; r < n_restarts; ++r) {
      if (iters[r] == it) p.running.push_back(r);  // not yet stopped
    }
    const int64_t n_run = static_cast<int64_t>(p.running.size());
    if (n_run == 0) break;
    Pass(p, out);

    for (int64_t ri = 0; ri < n_run; ++ri) {
      const int64_t r = p.running[ri];
      std::fill(total.begin(), total.end(), 0.0);
      std::fill(count.begin(), count.end(), 0);
      for (int64_t ch = 0; ch < n_chunks; ++ch) {
        const float* s = p.sums.data() + (ch * n_run + ri) * k * d;
        const int64_t* cn = p.counts.data() + (ch * n_run + ri) * k;
        for (int64_t i = 0; i < k * d; ++i) total[i] += s[i];
        for (int64_t ci = 0; ci < k; ++ci) count[ci] += cn[ci];
      }
      int64_t n_empty = 0;
      for (int64_t ci = 0; ci < k; ++ci) {
        const double w = 1.0 / std::max<int64_t>(count[ci], 1);
        for (int64_t j = 0; j < d; ++j) {
          fresh[ci * d + j] = static_cast<float>(total[ci * d + j] * w);
        }
        n_empty += count[ci] == 0;
      }
      if (n_empty > 0) {
        // The rows farthest from their centres, farthest first, ties to the
        // lowest row (lax.top_k's order), one per empty centre in order.
        const float* md = p.min_d2.data() + r * n;
        order.resize(n);
        std::iota(order.begin(), order.end(), 0);
        const int64_t take = std::min(n_empty, n);
        std::partial_sort(order.begin(), order.begin() + take, order.end(),
                          [md](int64_t a, int64_t b) {
                            return md[a] > md[b] || (md[a] == md[b] && a < b);
                          });
        int64_t rank = 0;
        for (int64_t ci = 0; ci < k; ++ci) {
          if (count[ci] != 0) continue;
          const int64_t row = order[std::min(rank++, take - 1)];
          std::memcpy(&fresh[ci * d], p.x + row * d, d * sizeof(float));
        }
      }
      float* c = out + r * k * d;
      double shift = 0.0;
      for (int64_t i = 0; i < k * d; ++i) {
        const double delta = double{fresh[i]} - double{c[i]};
        shift += delta * delta;
        c[i] = fresh[i];
      }
      iters[r] = it + 1;
      if (!(shift > tol_abs)) iters[r] = -(it + 1);  // stopped
    }
  }
  for (int64_t r = 0; r < n_restarts; ++r) iters[r] = std::abs(iters[r]);
  // The final inertia of every restart: one more pass, all of them at once.
  p.running.resize(n_restarts);
  std::iota(p.running.begin(), p.running.end(), 0);
  Pass(p, out);
  for (int64_t r = 0; r < n_restarts; ++r) {
    const float* md = p.min_d2.data() + r * n;
    inert[r] = static_cast<float>(std::accumulate(md, md + n, 0.0));
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CtjaxLloyd, LloydImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("max_iter")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
