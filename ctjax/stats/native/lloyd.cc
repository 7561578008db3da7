// Lloyd iterations of every k-means restart at once, as one XLA FFI call.
//
// ctjax.stats.kmeans seeds R restarts (k-means++) in XLA, then hands their
// centres here. Each iteration is one pass over x for all restarts still
// running: a block of 2 vectors of rows (kept transposed) meets each
// restart's centres, kC at a time (8; 6 with AVX2), with the products in
// registers; every row goes to its nearest centre (squared distance |x|^2 -
// 2 x.c + |c|^2, clamped at 0; ties to the lowest centre), and its row is
// added to that centre's sum. Rows are summed in float32 in fixed chunks
// of kChunk rows, the chunks in float64 in row order, so the result does
// not depend on the number of threads. A restart stops as in
// kmeans._lloyd: when the squared shift of its centres is <= tol, or after
// max_iter iterations; an empty centre moves onto one of the rows farthest
// from their centres (scikit-learn's rule). XLA ran the restarts one after
// another, each iteration reading x twice; here x is read once per
// iteration for all of them.
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
#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using ctjax_native::kLanes;
using ctjax_native::VecF;
using ctjax_native::VecI;

constexpr int kVecs = 2;
constexpr int kRows = kLanes * kVecs;  // rows of a block
// Centres per register tile (kC x kVecs sums). With AVX2's 16 registers,
// 8 (16 sums) spilled: assigning 50,000 rows (d = 64) to k = 10 centres, one
// thread, 1.30 ms with 8 against 0.97 with 6, 2-core AMD EPYC; the whole
// k-means of bench_ct's layer (10 restarts) 80-107 against 74-106 ms best
// of 15, six alternating processes, 5 of 6 pairs faster.
#if defined(__AVX512F__)
constexpr int kC = 8;
#else
constexpr int kC = 6;  // 12 sums, 2 row vectors, 1 broadcast: 15 registers
#endif
constexpr int64_t kChunk = 4096;       // rows summed in float32

struct Problem {
  Problem(const float* x, const float* x_sq, int64_t n, int64_t d)
      : x(x), x_sq(x_sq), n(n), d(d) {}
  const float* x;     // [N, d]
  const float* x_sq;  // [N]
  int64_t n, d, k = 0, k_pad = 0, n_blocks = 0;
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

// Squared distances ``d2`` of block ``b``'s rows to centres [c0, c0 + C)
// of restart ``ri``, computed as XLA's distances.sq_l2 does:
// max((|x|^2 - 2 x.c) + |c|^2, 0).
template <int C>
inline void Distances(const Problem& p, int64_t ri, int64_t b, int64_t c0,
                      const VecF xsq[kVecs], VecF d2[C][kVecs]) {
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
      const VecF e = (xsq[v] - 2.0f * acc[c][v]) + csq[c0 + c];
      d2[c][v] = e > 0.0f ? e : VecF{};
    }
  }
}

inline void LoadSq(const Problem& p, int64_t b, VecF xsq[kVecs]) {
  for (int v = 0; v < kVecs; ++v) {
    std::memcpy(&xsq[v], p.xt_sq.data() + b * kRows + v * kLanes,
                sizeof(VecF));
  }
}

// Folds centres [c0, c0 + C) into the running nearest centre (``best``,
// ``arg``) of block ``b``'s rows, ties to the lowest centre.
template <int C>
void Fold(const Problem& p, int64_t ri, int64_t b, int64_t c0,
          const VecF xsq[kVecs], VecF best[kVecs], VecI arg[kVecs]) {
  VecF d2[C][kVecs];
  Distances<C>(p, ri, b, c0, xsq, d2);
  for (int c = 0; c < C; ++c) {
    for (int v = 0; v < kVecs; ++v) {
      VecI better = d2[c][v] < best[v];
      best[v] = better ? d2[c][v] : best[v];
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
  LoadSq(p, b, xsq);
  for (int v = 0; v < kVecs; ++v) {
    best[v] = VecF{} + INFINITY;
    arg[v] = VecI{};
  }
  int64_t c0 = 0;
  for (; c0 + kC <= p.k_pad; c0 += kC) Fold<kC>(p, ri, b, c0, xsq, best, arg);
  if (c0 < p.k_pad) Fold<kC / 2>(p, ri, b, c0, xsq, best, arg);
}

// One chunk of a pass: every row's nearest centre and its distance, and
// (``with_sums``) the cell sums and counts.
void RunChunk(Problem& p, int64_t chunk, bool with_sums) {
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
      if (!with_sums) {
        std::copy(bl, bl + rows, md);
        continue;
      }
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

// x in blocks of kRows rows, transposed, and their |x|^2.
void Transpose(Problem& p) {
  const int64_t n = p.n, d = p.d;
  p.n_blocks = (n + kRows - 1) / kRows;
  p.xt.assign(p.n_blocks * d * kRows, 0.0f);
  p.xt_sq.assign(p.n_blocks * kRows, 0.0f);
  std::copy(p.x_sq, p.x_sq + n, p.xt_sq.begin());
  for (int64_t r = 0; r < n; ++r) {
    float* dst = p.xt.data() + (r / kRows) * d * kRows + r % kRows;
    for (int64_t j = 0; j < d; ++j) dst[j * kRows] = p.x[r * d + j];
  }
}

// The centres ([R, k, d]) of the restarts in ``p.running``, transposed
// into ``p.ct`` with their |c|^2; centres at and past ``k_real`` (and the
// padding to k_pad) get |c|^2 = +inf: no row is ever nearer to them.
void LoadCentres(Problem& p, const float* centres, int64_t k_real) {
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
      p.c_sq[ri * kp + ci] = ci < k_real ? sq : INFINITY;
    }
  }
}

// One pass over x for the restarts in ``p.running`` with the centres in
// ``centres`` ([R, k, d]): their nearest centres (distances in p.min_d2)
// and, ``with_sums``, the cell sums and counts.
void Pass(Problem& p, const float* centres, bool with_sums) {
  LoadCentres(p, centres, p.k);
  const int64_t n_run = static_cast<int64_t>(p.running.size());
  const int64_t d = p.d, k = p.k;
  const int64_t n_chunks = (p.n + kChunk - 1) / kChunk;
  p.sums.resize(n_chunks * n_run * k * d);
  p.counts.resize(n_chunks * n_run * k);
  ctjax_native::RunItems(n_chunks, [&p, with_sums](int64_t c) {
    RunChunk(p, c, with_sums);
  });
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
  Problem p(x.typed_data(), x_sq.typed_data(), xd[0], xd[1]);
  p.k = sd[1];
  p.k_pad = (p.k + kC / 2 - 1) / (kC / 2) * (kC / 2);
  const int64_t n_restarts = sd[0], n = p.n, d = p.d, k = p.k;
  const float tol_abs = tol.typed_data()[0];
  float* out = centers->typed_data();
  int32_t* iters = n_iter->typed_data();
  std::memcpy(out, seeds.typed_data(), n_restarts * k * d * sizeof(float));
  std::fill(iters, iters + n_restarts, 0);
  float* inert = inertia->typed_data();
  std::fill(inert, inert + n_restarts, 0.0f);
  if (n == 0 || n_restarts == 0) return ffi::Error::Success();

  Transpose(p);
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
    Pass(p, out, /*with_sums=*/true);

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
  Pass(p, out, /*with_sums=*/false);
  for (int64_t r = 0; r < n_restarts; ++r) {
    const float* md = p.min_d2.data() + r * n;
    inert[r] = static_cast<float>(std::accumulate(md, md + n, 0.0));
  }
  return ffi::Error::Success();
}

// ---------------------------------------------------------------- seeding
// Greedy k-means++ of every restart at once (kmeans._kmeans_plus_plus): at
// step i each restart draws ``trials`` candidate rows with probability
// proportional to their squared distance to the nearest centre so far
// (with the uniform draws u[r, i - 1] that XLA would use), and keeps the
// candidate that leaves the lowest potential (sum of those distances). One
// pass over x per step serves every restart and candidate.

constexpr int kT = 4;  // candidates per register tile

struct Seeding {
  int64_t tp = 0;  // candidates per restart, padded to kT
  std::vector<float> closest;       // [R][N]
  std::vector<float> fresh;         // [R][tp][N]: min(closest, d2)
  std::vector<double> pot;          // [chunks][R][tp]
  std::vector<double> chunk_total;  // [R][chunks]: sum of closest per chunk
};

void SeedChunk(const Problem& p, Seeding& sd, int64_t chunk) {
  const int64_t b0 = chunk * (kChunk / kRows);
  const int64_t b1 = std::min(p.n_blocks, b0 + kChunk / kRows);
  const int64_t n_run = static_cast<int64_t>(p.running.size()), n = p.n;
  const int64_t tp = sd.tp;
  double* pot = sd.pot.data() + chunk * n_run * tp;
  std::fill(pot, pot + n_run * tp, 0.0);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t rows = std::min<int64_t>(kRows, n - b * kRows);
    VecF xsq[kVecs];
    LoadSq(p, b, xsq);
    for (int64_t ri = 0; ri < n_run; ++ri) {
      const float* cl = sd.closest.data() + ri * n + b * kRows;
      for (int64_t t0 = 0; t0 < tp; t0 += kT) {
        VecF d2[kT][kVecs];
        Distances<kT>(p, ri, b, t0, xsq, d2);
        for (int t = 0; t < kT; ++t) {
          float* fr = sd.fresh.data() + (ri * tp + t0 + t) * n + b * kRows;
          if (rows == kRows) {  // a full block: in vectors
            VecF sum{};
            for (int v = 0; v < kVecs; ++v) {
              VecF c;
              std::memcpy(&c, cl + v * kLanes, sizeof(VecF));
              const VecF m = c < d2[t][v] ? c : d2[t][v];
              std::memcpy(fr + v * kLanes, &m, sizeof(VecF));
              sum += m;
            }
            double s = 0.0;
            for (int i = 0; i < kLanes; ++i) s += sum[i];
            pot[ri * tp + t0 + t] += s;
          } else {  // the last rows of x
            float lane[kRows];
            std::memcpy(lane, d2[t], sizeof(lane));
            double s = 0.0;
            for (int64_t i = 0; i < rows; ++i) {
              fr[i] = std::min(cl[i], lane[i]);
              s += fr[i];
            }
            pot[ri * tp + t0 + t] += s;
          }
        }
      }
    }
  }
}

// The row drawn by ``u`` in [0, 1) with probability proportional to
// ``w [N]`` (>= 0), from its per-chunk totals ``tot``: the first row whose
// running sum exceeds u * total; past the end by rounding, the last row of
// positive weight; all zero, uniform.
int64_t Draw(const float* w, const double* tot, int64_t n, float u) {
  const int64_t n_chunks = (n + kChunk - 1) / kChunk;
  double total = 0.0;
  for (int64_t c = 0; c < n_chunks; ++c) total += tot[c];
  if (!(total > 0.0)) {
    return std::min<int64_t>(static_cast<int64_t>(u * n), n - 1);
  }
  const double target = double{u} * total;
  double acc = 0.0;
  int64_t c = 0;
  while (c + 1 < n_chunks && acc + tot[c] <= target) acc += tot[c++];
  for (int64_t i = c * kChunk; i < n; ++i) {
    acc += w[i];
    if (acc > target && w[i] > 0.0f) return i;
  }
  for (int64_t i = n - 1; i > 0; --i) {
    if (w[i] > 0.0f) return i;
  }
  return 0;
}

ffi::Error SeedImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> x_sq,
                    ffi::Buffer<ffi::S32> first, ffi::Buffer<ffi::F32> draws,
                    ffi::ResultBuffer<ffi::F32> seeds) {
  auto xd = x.dimensions();
  auto ud = draws.dimensions();
  const int64_t n_restarts = static_cast<int64_t>(first.element_count());
  if (xd.size() != 2 || ud.size() != 3 || ud[0] != n_restarts ||
      static_cast<int64_t>(x_sq.element_count()) != xd[0] || xd[0] < 1) {
    return ffi::Error::InvalidArgument(
        "ctjax kmeans++: x [N >= 1, d], x_sq [N], first [R] and draws "
        "[R, k - 1, trials] out of shape");
  }
  Problem p(x.typed_data(), x_sq.typed_data(), xd[0], xd[1]);
  const int64_t n = p.n, d = p.d, k = ud[1] + 1, trials = ud[2];
  const int32_t* fi = first.typed_data();
  const float* u = draws.typed_data();
  float* out = seeds->typed_data();
  for (int64_t r = 0; r < n_restarts; ++r) {
    if (fi[r] < 0 || fi[r] >= n) {
      return ffi::Error::InvalidArgument("ctjax kmeans++: first out of range");
    }
  }
  if (n_restarts == 0) return ffi::Error::Success();
  Transpose(p);
  const int64_t n_chunks = (n + kChunk - 1) / kChunk;
  Seeding sd;
  sd.tp = (std::max<int64_t>(trials, 1) + kT - 1) / kT * kT;
  sd.closest.assign(n_restarts * n, INFINITY);
  sd.fresh.assign(n_restarts * sd.tp * n, 0.0f);
  sd.pot.assign(n_chunks * n_restarts * sd.tp, 0.0);
  sd.chunk_total.assign(n_restarts * n_chunks, 0.0);
  p.running.resize(n_restarts);
  std::iota(p.running.begin(), p.running.end(), 0);
  p.k = sd.tp;
  p.k_pad = sd.tp;
  std::vector<float> cand_rows(n_restarts * sd.tp * d, 0.0f);
  std::vector<int64_t> cand(n_restarts * sd.tp, 0);
  for (int64_t i = 0; i < k; ++i) {
    // Candidates: the first centre, then draws from the current potential.
    const int64_t n_cand = i == 0 ? 1 : trials;
    for (int64_t r = 0; r < n_restarts; ++r) {
      for (int64_t t = 0; t < n_cand; ++t) {
        const int64_t row =
            i == 0 ? fi[r]
                   : Draw(sd.closest.data() + r * n,
                          sd.chunk_total.data() + r * n_chunks, n,
                          u[(r * (k - 1) + i - 1) * trials + t]);
        cand[r * sd.tp + t] = row;
        std::memcpy(&cand_rows[(r * sd.tp + t) * d], p.x + row * d,
                    d * sizeof(float));
      }
    }
    LoadCentres(p, cand_rows.data(), n_cand);
    ctjax_native::RunItems(n_chunks, [&p, &sd](int64_t c) {
      SeedChunk(p, sd, c);
    });
    for (int64_t r = 0; r < n_restarts; ++r) {
      // The candidate of lowest potential, ties to the first drawn.
      int64_t best = 0;
      double best_pot = INFINITY;
      for (int64_t t = 0; t < n_cand; ++t) {
        double s = 0.0;
        for (int64_t c = 0; c < n_chunks; ++c) {
          s += sd.pot[(c * n_restarts + r) * sd.tp + t];
        }
        if (s < best_pot) {
          best_pot = s;
          best = t;
        }
      }
      std::memcpy(sd.closest.data() + r * n,
                  sd.fresh.data() + (r * sd.tp + best) * n, n * sizeof(float));
      for (int64_t c = 0; c < n_chunks; ++c) {
        sd.chunk_total[r * n_chunks + c] =
            sd.pot[(c * n_restarts + r) * sd.tp + best];
      }
      std::memcpy(out + (r * k + i) * d, p.x + cand[r * sd.tp + best] * d,
                  d * sizeof(float));
    }
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(CtjaxKmeansPlusPlus, SeedImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
