// Inner kernels of AQUA / dense attention over the tiled key cache (kv_cache.hpp).
//
// Score kernel: for key blocks b (16 tokens each), scores[h][b*16 + lane] =
//   sum_s q[h][s] * rows[s][b * block_stride + lane]
// where rows[s] points at the row of selected dim s in block 0 of its tile, and block_stride is
// tile_dims * 16 floats. HB query heads share one list of rows (group / tile selection: one read of
// a key row serves HB heads); NB blocks go at once so enough independent FMA chains hide latency.
//
// Value kernel: acc[h][c] = alpha[h] * acc[h][c] + sum_j p[h][j] * v[j][c], for HB heads that
// share the value rows (register blocked over a slice of 8 * NV columns).
#pragma once

#include <algorithm>

#include "aqua/detail/simd.hpp"
#include "aqua/tensor_view.hpp"

namespace aqua {
namespace detail {

constexpr index_t kv_block = 16;

/// Kernel knobs, fixed at their measured best; kept adjustable for side-by-side measurements.
struct kernel_tuning {
  index_t value_prefetch_groups = 1;  // value pass: prefetch the rows this many 16-token groups ahead (0: off)
  index_t key_prefetch_blocks = 4;  // decode score pass: prefetch each key row this many blocks ahead (0: off)
  bool value_side_prefetch = true;  // decode score pass: also request the value rows of the block
  // Prefill: key blocks (of 16 tokens) per chunk that every query of a 64-row block reads while
  // the chunk's tiles sit in L1/L2 (4-8 measured best at d = 128).
  index_t prefill_key_blocks = 8;
  // Decode: tokens per online-softmax chunk (a multiple of 16): its scores stay in L1.
  index_t decode_chunk = 128;
};
inline kernel_tuning& tuning() {
  static kernel_tuning t;
  return t;
}

template <int HB>
void score_portable(const float* const* rows, index_t ns, const float* q, index_t q_stride, index_t block_stride,
                    index_t b0, index_t nb, float* scores, index_t score_stride) {
  for (index_t b = 0; b < nb; ++b) {
    const index_t off = (b0 + b) * block_stride;
    for (int h = 0; h < HB; ++h) {
      float acc[kv_block] = {};
      for (index_t s = 0; s < ns; ++s) {
        const float qs = q[h * q_stride + s];
        const float* r = rows[s] + off;
        for (index_t l = 0; l < kv_block; ++l) acc[l] += qs * r[l];
      }
      for (index_t l = 0; l < kv_block; ++l) scores[h * score_stride + b * kv_block + l] = acc[l];
    }
  }
}

template <int HB>
void value_portable(const float* v, index_t d, index_t cnt, const float* p, index_t p_stride, float* acc,
                    index_t acc_stride, const float* alpha) {
  for (int h = 0; h < HB; ++h) {
    float* a = acc + h * acc_stride;
    for (index_t c = 0; c < d; ++c) a[c] *= alpha[h];
    for (index_t j = 0; j < cnt; ++j) {
      const float pj = p[h * p_stride + j];
      const float* row = v + j * d;
      for (index_t c = 0; c < d; ++c) a[c] += pj * row[c];
    }
  }
}

#if AQUA_HAS_X86_SIMD
/// Side prefetch (decode): while the score pass computes block b, the value rows of the same 16
/// tokens (`side`, `side_step` bytes per block) are requested a few lines per key row, so the
/// value pass that follows finds them in cache instead of stalling at every phase change.
struct side_prefetch {
  const char* base = nullptr;
  index_t step = 0;  // bytes per key block
};

template <int HB, int NB, bool Prefetch>
AQUA_TARGET_AVX2 void score_avx2(const float* const* rows, index_t ns, const float* q, index_t q_stride,
                                 index_t block_stride, index_t b0, index_t nb, float* scores, index_t score_stride,
                                 side_prefetch side = {}) {
  const index_t ahead = tuning().key_prefetch_blocks * block_stride;
  const index_t per_s = side.base ? (side.step / 64 + ns - 1) / ns : 0;
  index_t b = 0;
  for (; b + NB <= nb; b += NB) {
    __m256 acc[HB][2 * NB];
#pragma GCC unroll 16
    for (int h = 0; h < HB; ++h)
#pragma GCC unroll 16
      for (int u = 0; u < 2 * NB; ++u) acc[h][u] = _mm256_setzero_ps();
    const index_t off = (b0 + b) * block_stride;
    const char* sp = Prefetch && side.base ? side.base + b * side.step : nullptr;
    const char* send = Prefetch && side.base ? sp + NB * side.step : nullptr;
    for (index_t s = 0; s < ns; ++s) {
      const float* r = rows[s] + off;
      if (Prefetch) {
        _mm_prefetch(reinterpret_cast<const char*>(r + ahead), _MM_HINT_T0);
        for (index_t u = 0; u < NB * per_s && sp < send; ++u, sp += 64) _mm_prefetch(sp, _MM_HINT_T0);
      }
      __m256 kr[2 * NB];
#pragma GCC unroll 16
      for (int u = 0; u < NB; ++u) {
        kr[2 * u] = _mm256_load_ps(r + u * block_stride);
        kr[2 * u + 1] = _mm256_load_ps(r + u * block_stride + 8);
      }
#pragma GCC unroll 16
      for (int h = 0; h < HB; ++h) {
        const __m256 qb = _mm256_broadcast_ss(q + h * q_stride + s);
#pragma GCC unroll 16
        for (int u = 0; u < 2 * NB; ++u) acc[h][u] = _mm256_fmadd_ps(qb, kr[u], acc[h][u]);
      }
    }
#pragma GCC unroll 16
    for (int h = 0; h < HB; ++h)
#pragma GCC unroll 16
      for (int u = 0; u < 2 * NB; ++u) _mm256_storeu_ps(scores + h * score_stride + b * kv_block + u * 8, acc[h][u]);
  }
  if (NB > 1 && b < nb)
    score_avx2<HB, 1, Prefetch>(rows, ns, q, q_stride, block_stride, b0 + b, nb - b, scores + b * kv_block,
                                score_stride,
                                side.base ? side_prefetch{side.base + b * side.step, side.step} : side_prefetch{});
}

/// Per-head selection: HB heads with their own row lists of equal length ns (list h starts at
/// rows + h * list_stride), scored together so 2 * HB independent FMA chains hide latency.
template <int HB, bool Prefetch>
AQUA_TARGET_AVX2 void score_lists_avx2(const float* const* rows, index_t list_stride, index_t ns, const float* q,
                                       index_t q_stride, index_t block_stride, index_t b0, index_t nb, float* scores,
                                       index_t score_stride, side_prefetch side = {}) {
  const index_t ahead = tuning().key_prefetch_blocks * block_stride;
  const index_t per_s = side.base ? (side.step / 64 + ns - 1) / ns : 0;
  for (index_t b = 0; b < nb; ++b) {
    __m256 acc[HB][2];
#pragma GCC unroll 8
    for (int h = 0; h < HB; ++h) acc[h][0] = acc[h][1] = _mm256_setzero_ps();
    const index_t off = (b0 + b) * block_stride;
    const char* sp = Prefetch && side.base ? side.base + b * side.step : nullptr;
    const char* send = Prefetch && side.base ? sp + side.step : nullptr;
    for (index_t s = 0; s < ns; ++s) {
      if (Prefetch)
        for (index_t u = 0; u < per_s && sp < send; ++u, sp += 64) _mm_prefetch(sp, _MM_HINT_T0);
#pragma GCC unroll 8
      for (int h = 0; h < HB; ++h) {
        const float* r = rows[h * list_stride + s] + off;
        if (Prefetch) _mm_prefetch(reinterpret_cast<const char*>(r + ahead), _MM_HINT_T0);
        const __m256 qb = _mm256_broadcast_ss(q + h * q_stride + s);
        acc[h][0] = _mm256_fmadd_ps(qb, _mm256_load_ps(r), acc[h][0]);
        acc[h][1] = _mm256_fmadd_ps(qb, _mm256_load_ps(r + 8), acc[h][1]);
      }
    }
#pragma GCC unroll 8
    for (int h = 0; h < HB; ++h) {
      _mm256_storeu_ps(scores + h * score_stride + b * kv_block, acc[h][0]);
      _mm256_storeu_ps(scores + h * score_stride + b * kv_block + 8, acc[h][1]);
    }
  }
}

template <int HB, int NV>
AQUA_TARGET_AVX2 void value_slice_avx2(const float* v, index_t d, index_t cnt, const float* p, index_t p_stride,
                                       float* acc, index_t acc_stride) {
  __m256 a[HB][NV];
#pragma GCC unroll 16
  for (int h = 0; h < HB; ++h)
#pragma GCC unroll 16
    for (int u = 0; u < NV; ++u) a[h][u] = _mm256_loadu_ps(acc + h * acc_stride + 8 * u);
  for (index_t j = 0; j < cnt; ++j) {
    const float* row = v + j * d;
    __m256 vr[NV];
#pragma GCC unroll 16
    for (int u = 0; u < NV; ++u) vr[u] = _mm256_loadu_ps(row + 8 * u);
#pragma GCC unroll 16
    for (int h = 0; h < HB; ++h) {
      const __m256 pb = _mm256_broadcast_ss(p + h * p_stride + j);
#pragma GCC unroll 16
      for (int u = 0; u < NV; ++u) a[h][u] = _mm256_fmadd_ps(pb, vr[u], a[h][u]);
    }
  }
#pragma GCC unroll 16
  for (int h = 0; h < HB; ++h)
#pragma GCC unroll 16
    for (int u = 0; u < NV; ++u) _mm256_storeu_ps(acc + h * acc_stride + 8 * u, a[h][u]);
}

/// Tokens go in groups of 16 rows (8 KB at d = 128): all column slices of a group are done
/// before the next group, so the value rows stream sequentially through memory instead of being
/// swept once per slice (a 512-byte stride); the accumulators round-trip through L1 per group.
/// d must be a multiple of 8.
template <int HB, int NV>
AQUA_TARGET_AVX2 void value_avx2(const float* v, index_t d, index_t cnt, const float* p, index_t p_stride, float* acc,
                                 index_t acc_stride, const float* alpha) {
#pragma GCC unroll 4
  for (int h = 0; h < HB; ++h) {
    const __m256 al = _mm256_broadcast_ss(alpha + h);
    float* a = acc + h * acc_stride;
    for (index_t c = 0; c < d; c += 8) _mm256_storeu_ps(a + c, _mm256_mul_ps(al, _mm256_loadu_ps(a + c)));
  }
  constexpr index_t group = 16;
  const index_t ahead = tuning().value_prefetch_groups;
  for (index_t j0 = 0; j0 < cnt; j0 += group) {
    const index_t jn = std::min(group, cnt - j0);
    const float* vg = v + j0 * d;
    const float* pg = p + j0;
    // A later group's rows are one contiguous range: ask for it while this group computes. Past
    // the chunk it is the next chunk's rows (past the cache, harmless: prefetches never fault).
    if (ahead > 0) {
      const char* next = reinterpret_cast<const char*>(vg + ahead * group * d);
      const index_t bytes = group * d * index_t(sizeof(float));
      for (index_t b = 0; b < bytes; b += 64) _mm_prefetch(next + b, _MM_HINT_T0);
    }
    index_t c = 0;
    for (; c + 8 * NV <= d; c += 8 * NV) value_slice_avx2<HB, NV>(vg + c, d, jn, pg, p_stride, acc + c, acc_stride);
    for (; c < d; c += 8) value_slice_avx2<HB, 1>(vg + c, d, jn, pg, p_stride, acc + c, acc_stride);
  }
}
#endif

/// Scores for `heads` (<= 4) heads sharing one row list. `stream` (decode: keys come from DRAM)
/// adds software prefetch of the rows a few blocks ahead; prefill's keys sit in cache.
inline void score_dispatch(int heads, const float* const* rows, index_t ns, const float* q, index_t q_stride,
                           index_t block_stride, index_t b0, index_t nb, float* scores, index_t score_stride,
                           bool stream = false, side_prefetch side = {}) {
#if AQUA_HAS_X86_SIMD
  if (has_avx2_fma()) {
    if (stream && tuning().key_prefetch_blocks > 0) {
      // Prefetching past the end of a tile is harmless: a prefetch never faults.
      switch (heads) {
        case 1: return score_avx2<1, 4, true>(rows, ns, q, q_stride, block_stride, b0, nb, scores, score_stride, side);
        case 2: return score_avx2<2, 2, true>(rows, ns, q, q_stride, block_stride, b0, nb, scores, score_stride, side);
        case 3: return score_avx2<3, 1, true>(rows, ns, q, q_stride, block_stride, b0, nb, scores, score_stride, side);
        default: return score_avx2<4, 1, true>(rows, ns, q, q_stride, block_stride, b0, nb, scores, score_stride, side);
      }
    }
    switch (heads) {
      case 1: return score_avx2<1, 4, false>(rows, ns, q, q_stride, block_stride, b0, nb, scores, score_stride);
      case 2: return score_avx2<2, 2, false>(rows, ns, q, q_stride, block_stride, b0, nb, scores, score_stride);
      case 3: return score_avx2<3, 1, false>(rows, ns, q, q_stride, block_stride, b0, nb, scores, score_stride);
      default: return score_avx2<4, 1, false>(rows, ns, q, q_stride, block_stride, b0, nb, scores, score_stride);
    }
  }
#endif
  switch (heads) {
    case 1: return score_portable<1>(rows, ns, q, q_stride, block_stride, b0, nb, scores, score_stride);
    case 2: return score_portable<2>(rows, ns, q, q_stride, block_stride, b0, nb, scores, score_stride);
    case 3: return score_portable<3>(rows, ns, q, q_stride, block_stride, b0, nb, scores, score_stride);
    default: return score_portable<4>(rows, ns, q, q_stride, block_stride, b0, nb, scores, score_stride);
  }
}

/// Scores for `heads` (<= 4) heads, each with its own list of `ns` rows (per-head selection).
inline void score_lists_dispatch(int heads, const float* const* rows, index_t list_stride, index_t ns,
                                 const float* q, index_t q_stride, index_t block_stride, index_t b0, index_t nb,
                                 float* scores, index_t score_stride, side_prefetch side = {}) {
#if AQUA_HAS_X86_SIMD
  if (has_avx2_fma() && heads >= 2) {
    const bool pf = tuning().key_prefetch_blocks > 0;
    switch (heads) {
      case 2:
        return pf ? score_lists_avx2<2, true>(rows, list_stride, ns, q, q_stride, block_stride, b0, nb, scores, score_stride, side)
                  : score_lists_avx2<2, false>(rows, list_stride, ns, q, q_stride, block_stride, b0, nb, scores, score_stride);
      case 3:
        return pf ? score_lists_avx2<3, true>(rows, list_stride, ns, q, q_stride, block_stride, b0, nb, scores, score_stride, side)
                  : score_lists_avx2<3, false>(rows, list_stride, ns, q, q_stride, block_stride, b0, nb, scores, score_stride);
      default:
        return pf ? score_lists_avx2<4, true>(rows, list_stride, ns, q, q_stride, block_stride, b0, nb, scores, score_stride, side)
                  : score_lists_avx2<4, false>(rows, list_stride, ns, q, q_stride, block_stride, b0, nb, scores, score_stride);
    }
  }
#endif
  for (int h = 0; h < heads; ++h)
    score_dispatch(1, rows + h * list_stride, ns, q + h * q_stride, q_stride, block_stride, b0, nb,
                   scores + h * score_stride, score_stride, true);
}

inline void value_dispatch(int heads, const float* v, index_t d, index_t cnt, const float* p, index_t p_stride,
                           float* acc, index_t acc_stride, const float* alpha) {
#if AQUA_HAS_X86_SIMD
  if (has_avx2_fma() && d % 8 == 0) {
    switch (heads) {
      case 1: return value_avx2<1, 8>(v, d, cnt, p, p_stride, acc, acc_stride, alpha);
      case 2: return value_avx2<2, 4>(v, d, cnt, p, p_stride, acc, acc_stride, alpha);
      case 3: return value_avx2<3, 2>(v, d, cnt, p, p_stride, acc, acc_stride, alpha);
      default: return value_avx2<4, 2>(v, d, cnt, p, p_stride, acc, acc_stride, alpha);
    }
  }
#endif
  switch (heads) {
    case 1: return value_portable<1>(v, d, cnt, p, p_stride, acc, acc_stride, alpha);
    case 2: return value_portable<2>(v, d, cnt, p, p_stride, acc, acc_stride, alpha);
    case 3: return value_portable<3>(v, d, cnt, p, p_stride, acc, acc_stride, alpha);
    default: return value_portable<4>(v, d, cnt, p, p_stride, acc, acc_stride, alpha);
  }
}

}  // namespace detail
}  // namespace aqua
