// Runtime SIMD dispatch and vector math shared by the float kernels.
//
// Users compile aqua without -march flags: AVX2+FMA code lives in functions marked
// __attribute__((target("avx2,fma"))) and runs only when the CPU reports both features; every
// kernel has a portable fallback with the same semantics.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "aqua/config.hpp"
#include "aqua/detail/softmax.hpp"
#include "aqua/isa.hpp"
#include "aqua/tensor_view.hpp"

#if AQUA_HAS_X86_SIMD
#include <immintrin.h>
#define AQUA_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define AQUA_TARGET_AVX512 __attribute__((target("avx2,fma,f16c,avx512f")))
#else
#define AQUA_TARGET_AVX2
#define AQUA_TARGET_AVX512
#endif

namespace aqua {
namespace detail {

/// Whether the AVX2 + FMA + F16C kernels run (aqua::active_isa(), which the user may cap).
inline bool has_avx2_fma() noexcept {
  return AQUA_HAS_X86_SIMD && active_isa() >= isa::avx2;
}

/// Whether the AVX-512 kernels run: one vector per 16-token key block halves the instructions per
/// byte of a memory-bound pass.
inline bool has_avx512f() noexcept {
  return AQUA_HAS_X86_SIMD && active_isa() == isa::avx512;
}

#if AQUA_HAS_X86_SIMD
/// e^x for 8 floats (Cephes polynomial, ~2 ulp). NaN propagates; x <= -87.3 (and -inf) gives 0.
AQUA_TARGET_AVX2 inline __m256 exp256(__m256 x) {
  const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-88.3762626647949f);
  const __m256 zero_below = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_LT_OQ);
  // Operand order keeps NaN: min/max return their second operand when either is NaN.
  x = _mm256_min_ps(hi, x);
  x = _mm256_max_ps(lo, x);
  __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
  fx = _mm256_floor_ps(fx);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  const __m256 x2 = _mm256_mul_ps(x, x);
  y = _mm256_fmadd_ps(y, x2, _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
  return _mm256_andnot_ps(zero_below, y);
}

// GCC 12.2's unmasked AVX-512 intrinsics (max, min, roundscale, cvtt, slli, extract) pass an
// "undefined" source built as `__m512 y = y;`, which -Wmaybe-uninitialized reports in every user's
// build (GCC PR 105593). The all-ones masked forms run the same instruction without it.
constexpr __mmask16 all16 = static_cast<__mmask16>(0xFFFF);

/// exp256 on 16 floats: the same operations lane for lane, so the two give identical results.
AQUA_TARGET_AVX512 inline __m512 exp512(__m512 x) {
  const __m512 hi = _mm512_set1_ps(88.3762626647949f), lo = _mm512_set1_ps(-88.3762626647949f);
  const __mmask16 zero_below = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_LT_OQ);
  x = _mm512_mask_min_ps(x, all16, hi, x);
  x = _mm512_mask_max_ps(x, all16, lo, x);
  __m512 fx = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f));
  fx = _mm512_mask_roundscale_ps(fx, all16, fx, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
  x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), x);
  __m512 y = _mm512_set1_ps(1.9875691500E-4f);
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507E-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073E-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894E-2f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459E-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201E-1f));
  const __m512 x2 = _mm512_mul_ps(x, x);
  y = _mm512_fmadd_ps(y, x2, _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
  const __m512i bias = _mm512_set1_epi32(127);
  __m512i e = _mm512_mask_cvttps_epi32(bias, all16, fx);
  e = _mm512_add_epi32(e, bias);
  e = _mm512_mask_slli_epi32(e, all16, e, 23);
  y = _mm512_mul_ps(y, _mm512_castsi512_ps(e));
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~zero_below), y);
}

/// Lanes 8 Half .. 8 Half + 8 of v (GCC 12's _mm512_castps512_ps256 is an unmasked extract too).
template <int Half>
AQUA_TARGET_AVX512 inline __m256 half_of(__m512 v) {
  return _mm256_castpd_ps(_mm512_mask_extractf64x4_pd(_mm256_setzero_pd(), static_cast<__mmask8>(0xFF),
                                                      _mm512_castps_pd(v), Half));
}
AQUA_TARGET_AVX512 inline __m256 low_half(__m512 v) {
  return half_of<0>(v);
}
AQUA_TARGET_AVX512 inline __m256 high_half(__m512 v) {
  return half_of<1>(v);
}

AQUA_TARGET_AVX2 inline float hmax256(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

AQUA_TARGET_AVX2 inline double hsum256_pd(__m256d v) {
  __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  s = _mm_add_sd(s, _mm_unpackhi_pd(s, s));
  return _mm_cvtsd_f64(s);
}

/// Maximum of x[0..n) (NaN entries may or may not win; callers check the -inf case).
AQUA_TARGET_AVX2 inline float row_max_avx2(const float* x, index_t n) {
  __m256 m0 = _mm256_set1_ps(-std::numeric_limits<float>::infinity()), m1 = m0;
  index_t j = 0;
  for (; j + 16 <= n; j += 16) {
    m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + j));
    m1 = _mm256_max_ps(m1, _mm256_loadu_ps(x + j + 8));
  }
  float m = hmax256(_mm256_max_ps(m0, m1));
  for (; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

/// x[j] = e^(x[j] - shift) in place; returns the sum (per-lane float partials, added in double).
AQUA_TARGET_AVX2 inline double exp_shift_sum_avx2(float* x, index_t n, float shift) {
  const __m256 s = _mm256_set1_ps(shift);
  __m256d acc = _mm256_setzero_pd();
  index_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 p = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + j), s));
    _mm256_storeu_ps(x + j, p);
    acc = _mm256_add_pd(acc, _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(p)),
                                           _mm256_cvtps_pd(_mm256_extractf128_ps(p, 1))));
  }
  double sum = hsum256_pd(acc);
  for (; j < n; ++j) {
    const float p = std::exp(x[j] - shift);
    x[j] = p;
    sum += p;
  }
  return sum;
}

AQUA_TARGET_AVX2 inline void scale_avx2(float* x, index_t n, float f) {
  const __m256 s = _mm256_set1_ps(f);
  index_t j = 0;
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(x + j, _mm256_mul_ps(_mm256_loadu_ps(x + j), s));
  for (; j < n; ++j) x[j] *= f;
}
#endif

inline float row_max(const float* x, index_t n) {
#if AQUA_HAS_X86_SIMD
  if (has_avx2_fma()) return row_max_avx2(x, n);
#endif
  float m = -std::numeric_limits<float>::infinity();
  for (index_t j = 0; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

/// x[j] = e^(x[j] - shift) in place, returning the sum in double.
inline double exp_shift_sum(float* x, index_t n, float shift) {
#if AQUA_HAS_X86_SIMD
  if (has_avx2_fma()) return exp_shift_sum_avx2(x, n, shift);
#endif
  double sum = 0;
  for (index_t j = 0; j < n; ++j) {
    const float p = std::exp(x[j] - shift);
    x[j] = p;
    sum += p;
  }
  return sum;
}

inline void scale_in_place(float* x, index_t n, float f) {
#if AQUA_HAS_X86_SIMD
  if (has_avx2_fma()) return scale_avx2(x, n, f);
#endif
  for (index_t j = 0; j < n; ++j) x[j] *= f;
}

/// softmax_inplace with vectorised max / exp / scale for float rows; same semantics (all -inf
/// row -> zeros, NaN propagates, normaliser summed in double). With `lse`, also stores the row's
/// log-sum-exp (-inf for an all -inf row, NaN when NaN propagates). A finite `sink` is one more
/// logit in the normaliser, with no probability of its own in the row.
inline double softmax_inplace_fast(float* logits, index_t n, float* lse = nullptr,
                                   float sink = -std::numeric_limits<float>::infinity()) {
  const float m = std::max(row_max(logits, n), sink);
  if (!(m > -std::numeric_limits<float>::infinity())) {
    const double sum = softmax_inplace(logits, n);
    if (lse) *lse = log_sum_exp(m, sum);
    return sum;
  }
  const double sum = exp_shift_sum(logits, n, m) + std::exp(double(sink) - double(m));
  if (lse) *lse = log_sum_exp(m, sum);
  scale_in_place(logits, n, static_cast<float>(1.0 / sum));
  return sum;
}

}  // namespace detail
}  // namespace aqua
