// Vector helpers shared by ctjax's native kernels: GCC vector types of one
// machine register (AVX-512: 16 floats, else 8), unaligned loads and stores,
// exp and GELU.

#ifndef CTJAX_NATIVE_SIMD_H_
#define CTJAX_NATIVE_SIMD_H_

#include <cstdint>
#include <cstring>

namespace ctjax_native {

#if defined(__AVX512F__)
constexpr int kLanes = 16;
#else
constexpr int kLanes = 8;
#endif

typedef float VecF __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t VecI __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline VecF Load(const float* p) {
  VecF v;
  std::memcpy(&v, p, sizeof(VecF));
  return v;
}

inline void Store(float* p, VecF v) { std::memcpy(p, &v, sizeof(VecF)); }

// exp(x) for x <= 0, within ~2 ulp of expf (x below -87 gives exp(-87),
// ~1.6e-38): x = n ln 2 + r with |r| <= ln 2 / 2, a degree-6 polynomial for
// exp(r), and 2^n put into the exponent bits.
inline VecF Exp(VecF x) {
  const VecF lo = VecF{} - 87.0f;
  x = x < lo ? lo : x;
  const VecF shifter = VecF{} + 12582912.0f;  // 1.5 * 2^23: round to nearest
  VecF n = x * 1.44269504088896341f + shifter;
  n = n - shifter;
  VecF r = x - n * 0.693145751953125f;  // ln 2, high part
  r = r - n * 1.428606765330187e-06f;   // ln 2, low part
  VecF p = VecF{} + (1.0f / 720.0f);
  p = p * r + (1.0f / 120.0f);
  p = p * r + (1.0f / 24.0f);
  p = p * r + (1.0f / 6.0f);
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const VecI e = (__builtin_convertvector(n, VecI) + 127) << 23;
  VecF two_n;
  std::memcpy(&two_n, &e, sizeof(VecF));
  return p * two_n;
}

// Exact GELU, x / 2 * (1 + erf(x / sqrt 2)), with erf by Abramowitz &
// Stegun 7.1.26 (absolute error <= 1.5e-7) and `Exp`.
inline VecF Gelu(VecF x) {
  const VecF z = x * 0.70710678118654752f;
  const VecF a = z < 0 ? -z : z;
  const VecF t = 1.0f / (1.0f + 0.3275911f * a);
  VecF poly = VecF{} + 1.061405429f;
  poly = poly * t - 1.453152027f;
  poly = poly * t + 1.421413741f;
  poly = poly * t - 0.284496736f;
  poly = poly * t + 0.254829592f;
  const VecF erf_a = 1.0f - poly * t * Exp(-(a * a));
  const VecF erf_z = z < 0 ? -erf_a : erf_a;
  return 0.5f * x * (1.0f + erf_z);
}

}  // namespace ctjax_native

#endif  // CTJAX_NATIVE_SIMD_H_
