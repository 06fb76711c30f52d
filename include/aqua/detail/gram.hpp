// C += A^T A for a block of rows A, in double: the calibrator's accumulation kernel.
//
// A is `rows` x ld row-major (ld a multiple of 8, columns d..ld-1 zero), C is ld x ld row-major.
// Only the lower triangle of C's leading d x d block is meaningful afterwards: both kernels update
// every entry on or below the diagonal, and the AVX2 kernel also some entries above it.
//
// Why a hand-written kernel: without -mavx2 -mfma (users compile without -march flags) Eigen's
// double rank update runs on SSE2 at ~0.4 million 128-d vectors per second per core; the AVX2/FMA
// kernel below, picked at run time, reaches ~2 million.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cmath>

#include "aqua/isa.hpp"
#include "aqua/tensor_view.hpp"

#if AQUA_HAS_X86_SIMD
#include <immintrin.h>
#endif

namespace aqua {
namespace detail {

/// Row stride of the padded blocks and of C: d rounded up to a multiple of 8.
inline index_t gram_ld(index_t d) noexcept {
  return (d + 7) / 8 * 8;
}

/// Portable kernel: Eigen's symmetric rank-k update of the lower triangle.
template <class = void>
inline void gram_update_portable(const double* a, index_t rows, index_t d, index_t ld, double* c) {
  using map_t = Eigen::Map<Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>,
                           Eigen::Unaligned, Eigen::OuterStride<>>;
  using cmap_t = Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>,
                            Eigen::Unaligned, Eigen::OuterStride<>>;
  map_t cm(c, d, d, Eigen::OuterStride<>(ld));
  cmap_t am(a, rows, d, Eigen::OuterStride<>(ld));
  cm.selfadjointView<Eigen::Lower>().rankUpdate(am.transpose());
}

#if AQUA_HAS_X86_SIMD
/// 4 x 8 register tiles of C (8 accumulators: enough independent FMAs to cover their latency),
/// only tiles that reach the lower triangle, rows of A taken in chunks of 16 so a chunk stays in L1.
__attribute__((target("avx2,fma"))) inline void gram_update_avx2(const double* a, index_t rows, index_t ld,
                                                                 double* c) {
  constexpr index_t chunk = 16;
  for (index_t r0 = 0; r0 < rows; r0 += chunk) {
    const index_t r1 = std::min(rows, r0 + chunk);
    for (index_t i0 = 0; i0 < ld; i0 += 4) {
      for (index_t j0 = 0; j0 <= i0 + 3 && j0 < ld; j0 += 8) {
        double* ct = c + i0 * ld + j0;
        __m256d c00 = _mm256_loadu_pd(ct), c01 = _mm256_loadu_pd(ct + 4);
        __m256d c10 = _mm256_loadu_pd(ct + ld), c11 = _mm256_loadu_pd(ct + ld + 4);
        __m256d c20 = _mm256_loadu_pd(ct + 2 * ld), c21 = _mm256_loadu_pd(ct + 2 * ld + 4);
        __m256d c30 = _mm256_loadu_pd(ct + 3 * ld), c31 = _mm256_loadu_pd(ct + 3 * ld + 4);
        const double* row = a + r0 * ld;
        for (index_t r = r0; r < r1; ++r, row += ld) {
          const __m256d b0 = _mm256_loadu_pd(row + j0), b1 = _mm256_loadu_pd(row + j0 + 4);
          __m256d x = _mm256_broadcast_sd(row + i0);
          c00 = _mm256_fmadd_pd(x, b0, c00);
          c01 = _mm256_fmadd_pd(x, b1, c01);
          x = _mm256_broadcast_sd(row + i0 + 1);
          c10 = _mm256_fmadd_pd(x, b0, c10);
          c11 = _mm256_fmadd_pd(x, b1, c11);
          x = _mm256_broadcast_sd(row + i0 + 2);
          c20 = _mm256_fmadd_pd(x, b0, c20);
          c21 = _mm256_fmadd_pd(x, b1, c21);
          x = _mm256_broadcast_sd(row + i0 + 3);
          c30 = _mm256_fmadd_pd(x, b0, c30);
          c31 = _mm256_fmadd_pd(x, b1, c31);
        }
        _mm256_storeu_pd(ct, c00);
        _mm256_storeu_pd(ct + 4, c01);
        _mm256_storeu_pd(ct + ld, c10);
        _mm256_storeu_pd(ct + ld + 4, c11);
        _mm256_storeu_pd(ct + 2 * ld, c20);
        _mm256_storeu_pd(ct + 2 * ld + 4, c21);
        _mm256_storeu_pd(ct + 3 * ld, c30);
        _mm256_storeu_pd(ct + 3 * ld + 4, c31);
      }
    }
  }
}

/// True when none of x[0..n) is Inf or NaN (exponent bits all ones).
__attribute__((target("avx2,fma"))) inline bool all_finite_avx2(const float* x, index_t n) {
  const __m256i exponent = _mm256_set1_epi32(0x7F800000);
  __m256i bad = _mm256_setzero_si256();
  index_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i v = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)), exponent);
    bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(v, exponent));
  }
  bool ok = _mm256_testz_si256(bad, bad) != 0;
  for (; i < n; ++i) ok = ok && std::isfinite(x[i]);
  return ok;
}

/// Rows of float (unit column stride) widened to double into ld-strided rows, columns d..ld-1
/// zeroed, and added to the column sums.
__attribute__((target("avx2,fma"))) inline void widen_rows_avx2(const float* x, index_t rows, index_t d,
                                                                index_t rs, index_t ld, double* dst,
                                                                double* sum) {
  for (index_t r = 0; r < rows; ++r) {
    const float* src = x + r * rs;
    double* out = dst + r * ld;
    index_t c = 0;
    for (; c + 4 <= d; c += 4) {
      const __m256d v = _mm256_cvtps_pd(_mm_loadu_ps(src + c));
      _mm256_storeu_pd(out + c, v);
      _mm256_storeu_pd(sum + c, _mm256_add_pd(_mm256_loadu_pd(sum + c), v));
    }
    for (; c < d; ++c) {
      out[c] = static_cast<double>(src[c]);
      sum[c] += out[c];
    }
    for (; c < ld; ++c) out[c] = 0.0;
  }
}

#endif

/// True when gram_update takes the AVX2/FMA kernel (aqua::active_isa(), which the user may cap).
inline bool gram_simd_available() noexcept {
  return AQUA_HAS_X86_SIMD && active_isa() >= isa::avx2;
}

/// C += A^T A (see the top of this file for the layout).
template <class = void>
inline void gram_update(const double* a, index_t rows, index_t d, index_t ld, double* c) {
  if (rows <= 0) return;
#if AQUA_HAS_X86_SIMD
  if (gram_simd_available()) {
    gram_update_avx2(a, rows, ld, c);
    return;
  }
#endif
  gram_update_portable(a, rows, d, ld, c);
}

}  // namespace detail
}  // namespace aqua
