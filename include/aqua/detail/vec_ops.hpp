// The vector vocabulary of the attention kernels, one struct per ISA: avx2_ops (8 floats per
// vector) and avx512_ops (16). The kernels (decode_kernels-inl.hpp) are written once against
// these names and compiled once per ISA, so the two paths cannot drift apart.
//
// Every operation is lane-wise the same float operation on both ISAs (fused multiply-adds, the
// same exp polynomial, the same folds before widening to double), so a kernel gives bit-for-bit
// the same results on AVX2 and AVX-512; the tests pin that. Storage loads widen bf16 (a shift) and
// f16 (F16C / AVX-512F conversion) to float exactly.
//
// A "block" is the 16 tokens of one key block row (kv_cache::block_tokens): BV vectors.
#pragma once

#include <cstdint>

#include "aqua/detail/simd.hpp"
#include "aqua/float16.hpp"

#if AQUA_HAS_X86_SIMD
namespace aqua {
namespace detail {

struct avx2_ops {
  using vec = __m256;
  static constexpr int W = 8;
  static constexpr int BV = 16 / W;

  AQUA_TARGET_AVX2 static AQUA_ALWAYS_INLINE vec zero() { return _mm256_setzero_ps(); }
  AQUA_TARGET_AVX2 static AQUA_ALWAYS_INLINE vec set1(float x) { return _mm256_set1_ps(x); }
  AQUA_TARGET_AVX2 static AQUA_ALWAYS_INLINE vec broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  AQUA_TARGET_AVX2 static AQUA_ALWAYS_INLINE vec load(const float* p) { return _mm256_loadu_ps(p); }
  AQUA_TARGET_AVX2 static AQUA_ALWAYS_INLINE vec load(const bf16* p) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(b), 16));
  }
  AQUA_TARGET_AVX2 static AQUA_ALWAYS_INLINE vec load(const f16* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  AQUA_TARGET_AVX2 static AQUA_ALWAYS_INLINE void store(float* p, vec v) { _mm256_storeu_ps(p, v); }
  AQUA_TARGET_AVX2 static AQUA_ALWAYS_INLINE vec fmadd(vec a, vec b, vec c) {
    return _mm256_fmadd_ps(a, b, c);
  }
  AQUA_TARGET_AVX2 static AQUA_ALWAYS_INLINE vec mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
  AQUA_TARGET_AVX2 static AQUA_ALWAYS_INLINE vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
  AQUA_TARGET_AVX2 static AQUA_ALWAYS_INLINE vec sub(vec a, vec b) { return _mm256_sub_ps(a, b); }
  AQUA_TARGET_AVX2 static AQUA_ALWAYS_INLINE vec max(vec a, vec b) { return _mm256_max_ps(a, b); }
  AQUA_TARGET_AVX2 static AQUA_ALWAYS_INLINE vec exp(vec x) { return exp256(x); }
  /// Whether any lane of a exceeds b (ordered compare: NaN lanes do not).
  AQUA_TARGET_AVX2 static AQUA_ALWAYS_INLINE bool any_greater(vec a, vec b) {
    return _mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ)) != 0;
  }
  AQUA_TARGET_AVX2 static AQUA_ALWAYS_INLINE float hmax(vec v) { return hmax256(v); }
  /// Sum of the 8 lanes, pairwise (lanes i and i + 4, then i and i + 2, then the last two).
  AQUA_TARGET_AVX2 static AQUA_ALWAYS_INLINE float hsum(vec v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
  }
  /// The lane sums of a0..a3 as one vector [sum a0, sum a1, sum a2, sum a3].
  AQUA_TARGET_AVX2 static AQUA_ALWAYS_INLINE __m128 hsum4(vec a0, vec a1, vec a2, vec a3) {
    const __m256 t0 = _mm256_add_ps(_mm256_unpacklo_ps(a0, a1), _mm256_unpackhi_ps(a0, a1));
    const __m256 t1 = _mm256_add_ps(_mm256_unpacklo_ps(a2, a3), _mm256_unpackhi_ps(a2, a3));
    const __m256 u =
        _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t1))),
                      _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t1))));
    return _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
  }
  /// Lanes first + i >= valid become -inf.
  AQUA_TARGET_AVX2 static AQUA_ALWAYS_INLINE vec mask_tail(vec v, int first, int valid) {
    const __m256i lane =
        _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(first));
    const __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(valid), lane));
    return _mm256_blendv_ps(_mm256_set1_ps(-std::numeric_limits<float>::infinity()), v, keep);
  }
  /// The 16 lanes of a block folded to 8 (lane i + lane i + 8), the order both ISAs share.
  AQUA_TARGET_AVX2 static AQUA_ALWAYS_INLINE __m256 fold8(const vec* block) {
    return _mm256_add_ps(block[0], block[1]);
  }
  /// Value columns per slice of the fused kernel, in vectors, for HB heads (registers: HB x NV
  /// accumulators + NV rows of 16).
  static constexpr int value_vectors(int hb) { return hb == 1 ? 8 : hb == 2 ? 4 : 2; }
};

struct avx512_ops {
  static constexpr __mmask8 all8 = static_cast<__mmask8>(0xFF);
  using vec = __m512;
  static constexpr int W = 16;
  static constexpr int BV = 1;

  AQUA_TARGET_AVX512 static AQUA_ALWAYS_INLINE vec zero() { return _mm512_setzero_ps(); }
  AQUA_TARGET_AVX512 static AQUA_ALWAYS_INLINE vec set1(float x) { return _mm512_set1_ps(x); }
  AQUA_TARGET_AVX512 static AQUA_ALWAYS_INLINE vec broadcast(const float* p) { return _mm512_set1_ps(*p); }
  AQUA_TARGET_AVX512 static AQUA_ALWAYS_INLINE vec load(const float* p) { return _mm512_loadu_ps(p); }
  // The masked (all-ones) forms: GCC 12's unmasked ones pass an "undefined" source that
  // -Wmaybe-uninitialized reports in users' builds (GCC PR 105593).
  AQUA_TARGET_AVX512 static AQUA_ALWAYS_INLINE vec load(const bf16* p) {
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    const __m512i w = _mm512_maskz_cvtepu16_epi32(all16, b);
    return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(all16, w, 16));
  }
  AQUA_TARGET_AVX512 static AQUA_ALWAYS_INLINE vec load(const f16* p) {
    return _mm512_maskz_cvtph_ps(all16, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  AQUA_TARGET_AVX512 static AQUA_ALWAYS_INLINE void store(float* p, vec v) { _mm512_storeu_ps(p, v); }
  AQUA_TARGET_AVX512 static AQUA_ALWAYS_INLINE vec fmadd(vec a, vec b, vec c) {
    return _mm512_fmadd_ps(a, b, c);
  }
  AQUA_TARGET_AVX512 static AQUA_ALWAYS_INLINE vec mul(vec a, vec b) { return _mm512_mul_ps(a, b); }
  AQUA_TARGET_AVX512 static AQUA_ALWAYS_INLINE vec add(vec a, vec b) { return _mm512_add_ps(a, b); }
  AQUA_TARGET_AVX512 static AQUA_ALWAYS_INLINE vec sub(vec a, vec b) { return _mm512_sub_ps(a, b); }
  AQUA_TARGET_AVX512 static AQUA_ALWAYS_INLINE vec max(vec a, vec b) {
    return _mm512_mask_max_ps(a, all16, a, b);
  }
  AQUA_TARGET_AVX512 static AQUA_ALWAYS_INLINE vec exp(vec x) { return exp512(x); }
  AQUA_TARGET_AVX512 static AQUA_ALWAYS_INLINE bool any_greater(vec a, vec b) {
    return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ) != 0;
  }
  AQUA_TARGET_AVX512 static AQUA_ALWAYS_INLINE float hmax(vec v) {
    return hmax256(_mm256_max_ps(low_half(v), high_half(v)));
  }
  /// Sum of the 16 lanes: folded to 8 (lane i + lane i + 8), then as avx2_ops::hsum.
  AQUA_TARGET_AVX512 static AQUA_ALWAYS_INLINE float hsum(vec v) {
    return avx2_ops::hsum(_mm256_add_ps(low_half(v), high_half(v)));
  }
  AQUA_TARGET_AVX512 static AQUA_ALWAYS_INLINE __m128 hsum4(vec a0, vec a1, vec a2, vec a3) {
    const __m512 t0 =
        _mm512_add_ps(_mm512_maskz_unpacklo_ps(all16, a0, a1), _mm512_maskz_unpackhi_ps(all16, a0, a1));
    const __m512 t1 =
        _mm512_add_ps(_mm512_maskz_unpacklo_ps(all16, a2, a3), _mm512_maskz_unpackhi_ps(all16, a2, a3));
    const __m512 u = _mm512_add_ps(
        _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(all8, _mm512_castps_pd(t0), _mm512_castps_pd(t1))),
        _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(all8, _mm512_castps_pd(t0), _mm512_castps_pd(t1))));
    const __m256 v = _mm256_add_ps(low_half(u), high_half(u));
    return _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  }
  AQUA_TARGET_AVX512 static AQUA_ALWAYS_INLINE vec mask_tail(vec v, int first, int valid) {
    const int keep = valid - first;
    const auto m = static_cast<__mmask16>(keep >= 16 ? 0xFFFFu : keep <= 0 ? 0u : (1u << keep) - 1u);
    return _mm512_mask_mov_ps(_mm512_set1_ps(-std::numeric_limits<float>::infinity()), m, v);
  }
  AQUA_TARGET_AVX512 static AQUA_ALWAYS_INLINE __m256 fold8(const vec* block) {
    return _mm256_add_ps(low_half(block[0]), high_half(block[0]));
  }
  static constexpr int value_vectors(int hb) { return hb <= 2 ? 8 : 4; }
};

}  // namespace detail
}  // namespace aqua
#endif
