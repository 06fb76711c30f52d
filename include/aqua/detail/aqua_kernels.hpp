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
#include <cmath>
#include <cstring>
#include <limits>

#include "aqua/detail/simd.hpp"
#include "aqua/tensor_view.hpp"

namespace aqua {
namespace detail {

constexpr index_t kv_block = 16;

// Kernel constants, fixed at their measured best on the project's machines (Zen 3, 1 MB L2).
// Decode: tokens per online-softmax chunk of the chunked (portable / unequal-count) path, and the
// granularity of token segments across threads (a multiple of 16).
constexpr index_t decode_chunk = 128;
// Decode: each key row is prefetched this many 16-token blocks ahead. Shorter and longer (1-16)
// measured no better; without it decode ran 1.5x slower at N = 32k.
constexpr index_t decode_key_prefetch_blocks = 4;
// Chunked decode path: value rows are prefetched this many tokens ahead in the value pass.
constexpr index_t decode_value_prefetch_tokens = 16;
// Prefill: key blocks (of 16 tokens) per chunk that every query of a 64-row block reads while
// the chunk's tiles sit in L1/L2 (4-8 measured best at d = 128).
constexpr index_t prefill_key_blocks = 8;

template <int HB>
void score_portable(const float* const* rows, index_t ns, const float* q, index_t q_stride,
                    index_t block_stride, index_t b0, index_t nb, float* scores, index_t score_stride) {
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

struct fused_args {
  const float* const* rows = nullptr;
  index_t list_stride = 0, ns = 0;
  const float* q = nullptr;  // head h's selected, scaled query: q + h * q_stride
  index_t q_stride = 0, block_stride = 0;
  const float* values = nullptr;  // token-major [n, d]
  index_t d = 0;
  index_t valid_end = 0;    // tokens at or past this index are masked (last, partial block)
  float* logits = nullptr;  // optional raw scores: logits + h * logits_stride + token
  index_t logits_stride = 0;
};

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
                                 index_t block_stride, index_t b0, index_t nb, float* scores,
                                 index_t score_stride, side_prefetch side = {}) {
  const index_t ahead = decode_key_prefetch_blocks * block_stride;
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
      for (int u = 0; u < 2 * NB; ++u)
        _mm256_storeu_ps(scores + h * score_stride + b * kv_block + u * 8, acc[h][u]);
  }
  if (NB > 1 && b < nb)
    score_avx2<HB, 1, Prefetch>(
        rows, ns, q, q_stride, block_stride, b0 + b, nb - b, scores + b * kv_block, score_stride,
        side.base ? side_prefetch{side.base + b * side.step, side.step} : side_prefetch{});
}

/// Per-head selection: HB heads with their own row lists of equal length ns (list h starts at
/// rows + h * list_stride), scored together so 2 * HB independent FMA chains hide latency.
template <int HB, bool Prefetch>
AQUA_TARGET_AVX2 void score_lists_avx2(const float* const* rows, index_t list_stride, index_t ns,
                                       const float* q, index_t q_stride, index_t block_stride, index_t b0,
                                       index_t nb, float* scores, index_t score_stride,
                                       side_prefetch side = {}) {
  const index_t ahead = decode_key_prefetch_blocks * block_stride;
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

template <int HB, int NV, bool Prefetch>
AQUA_TARGET_AVX2 void value_slice_avx2(const float* v, index_t d, index_t cnt, const float* p,
                                       index_t p_stride, float* acc, index_t acc_stride, index_t ahead) {
  __m256 a[HB][NV];
#pragma GCC unroll 16
  for (int h = 0; h < HB; ++h)
#pragma GCC unroll 16
    for (int u = 0; u < NV; ++u) a[h][u] = _mm256_loadu_ps(acc + h * acc_stride + 8 * u);
  for (index_t j = 0; j < cnt; ++j) {
    const float* row = v + j * d;
    // One line of a later row per line consumed: the stream stays ahead without bursts that
    // would fill the miss buffers.
    if (Prefetch) {
#pragma GCC unroll 4
      for (int u = 0; u < NV; u += 2)
        _mm_prefetch(reinterpret_cast<const char*>(row + ahead + 8 * u), _MM_HINT_T0);
    }
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
AQUA_TARGET_AVX2 void value_avx2(const float* v, index_t d, index_t cnt, const float* p, index_t p_stride,
                                 float* acc, index_t acc_stride, const float* alpha) {
#pragma GCC unroll 4
  for (int h = 0; h < HB; ++h) {
    const __m256 al = _mm256_broadcast_ss(alpha + h);
    float* a = acc + h * acc_stride;
    for (index_t c = 0; c < d; c += 8) _mm256_storeu_ps(a + c, _mm256_mul_ps(al, _mm256_loadu_ps(a + c)));
  }
  constexpr index_t group = 16;
  const index_t ahead = decode_value_prefetch_tokens * d;  // floats
  for (index_t j0 = 0; j0 < cnt; j0 += group) {
    const index_t jn = std::min(group, cnt - j0);
    const float* vg = v + j0 * d;
    const float* pg = p + j0;
    index_t c = 0;
    if (ahead > 0) {
      for (; c + 8 * NV <= d; c += 8 * NV) {
        value_slice_avx2<HB, NV, true>(vg + c, d, jn, pg, p_stride, acc + c, acc_stride, ahead);
      }
      for (; c < d; c += 8)
        value_slice_avx2<HB, 1, true>(vg + c, d, jn, pg, p_stride, acc + c, acc_stride, ahead);
    } else {
      for (; c + 8 * NV <= d; c += 8 * NV)
        value_slice_avx2<HB, NV, false>(vg + c, d, jn, pg, p_stride, acc + c, acc_stride, 0);
      for (; c < d; c += 8)
        value_slice_avx2<HB, 1, false>(vg + c, d, jn, pg, p_stride, acc + c, acc_stride, 0);
    }
  }
}

/// Fused decode over whole 16-token blocks [b_begin, b_end) of one KV head, for HB query heads:
/// per block the HB x 16 scores stay in registers, the online softmax updates in place, and the
/// value rows of the same 16 tokens are accumulated at once. Keys and values are then consumed
/// as one interleaved stream (8 KB of each per block at d = 128, dense): key rows are prefetched a
/// few blocks ahead, the block's value rows while its scores are computed, and nothing waits for
/// a long key-only or value-only phase. The scores never leave registers and L1.
/// Lists: head h reads its own rows (rows + h * list_stride), else all HB heads share one list.
/// State per head: running max m, normaliser l (double) and unnormalised output acc (d floats).
template <int HB, bool Lists>
AQUA_TARGET_AVX2 void fused_decode_avx2(const fused_args& a, index_t b_begin, index_t b_end, float* m,
                                        double* l, float* acc, index_t acc_stride) {
  constexpr int NV = HB == 1 ? 8 : HB == 2 ? 4 : 2;  // value columns per slice, in vectors of 8
  const index_t d = a.d, ns = a.ns, bs = a.block_stride;
  const index_t key_ahead = decode_key_prefetch_blocks * bs;
  // The block's value rows (16 * d floats) are requested during its score loop, spread over
  // the rows read: a few lines per key row, never a burst that would fill the miss buffers.
  const index_t value_lines = (kv_block * d * index_t(sizeof(float)) + 63) / 64;
  const index_t per_s = ns > 0 ? (value_lines + ns - 1) / ns : 0;
  alignas(32) float pbuf[HB][kv_block];
  for (index_t b = b_begin; b < b_end; ++b) {
    const index_t off = b * bs, t0 = b * kv_block;
    const char* vp = reinterpret_cast<const char*>(a.values + t0 * d);
    const char* vend = vp + 64 * value_lines;
    __m256 sc[HB][2];
#pragma GCC unroll 4
    for (int h = 0; h < HB; ++h) sc[h][0] = sc[h][1] = _mm256_setzero_ps();
    for (index_t s = 0; s < ns; ++s) {
      for (index_t u = 0; u < per_s && vp < vend; ++u, vp += 64) _mm_prefetch(vp, _MM_HINT_T0);
      if (Lists) {
#pragma GCC unroll 4
        for (int h = 0; h < HB; ++h) {
          const float* r = a.rows[h * a.list_stride + s] + off;
          _mm_prefetch(reinterpret_cast<const char*>(r + key_ahead), _MM_HINT_T0);
          const __m256 qb = _mm256_broadcast_ss(a.q + h * a.q_stride + s);
          sc[h][0] = _mm256_fmadd_ps(qb, _mm256_load_ps(r), sc[h][0]);
          sc[h][1] = _mm256_fmadd_ps(qb, _mm256_load_ps(r + 8), sc[h][1]);
        }
      } else {
        const float* r = a.rows[s] + off;
        _mm_prefetch(reinterpret_cast<const char*>(r + key_ahead), _MM_HINT_T0);
        const __m256 k0 = _mm256_load_ps(r), k1 = _mm256_load_ps(r + 8);
#pragma GCC unroll 4
        for (int h = 0; h < HB; ++h) {
          const __m256 qb = _mm256_broadcast_ss(a.q + h * a.q_stride + s);
          sc[h][0] = _mm256_fmadd_ps(qb, k0, sc[h][0]);
          sc[h][1] = _mm256_fmadd_ps(qb, k1, sc[h][1]);
        }
      }
    }
    const index_t jn = std::min<index_t>(kv_block, a.valid_end - t0);
    if (a.logits) {
#pragma GCC unroll 4
      for (int h = 0; h < HB; ++h) {
        alignas(32) float tmp[kv_block];
        _mm256_store_ps(tmp, sc[h][0]);
        _mm256_store_ps(tmp + 8, sc[h][1]);
        std::memcpy(a.logits + h * a.logits_stride + t0, tmp, static_cast<std::size_t>(jn) * sizeof(float));
      }
    }
    if (jn < kv_block) {
      // Lanes past the last token: -inf scores, zero probabilities.
      const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
      const __m256i lim = _mm256_set1_epi32(static_cast<int>(jn));
      const __m256 keep0 = _mm256_castsi256_ps(_mm256_cmpgt_epi32(lim, lane));
      const __m256 keep1 =
          _mm256_castsi256_ps(_mm256_cmpgt_epi32(lim, _mm256_add_epi32(lane, _mm256_set1_epi32(8))));
      const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
#pragma GCC unroll 4
      for (int h = 0; h < HB; ++h) {
        sc[h][0] = _mm256_blendv_ps(ninf, sc[h][0], keep0);
        sc[h][1] = _mm256_blendv_ps(ninf, sc[h][1], keep1);
      }
    }
#pragma GCC unroll 4
    for (int h = 0; h < HB; ++h) {
      const float bm = hmax256(_mm256_max_ps(sc[h][0], sc[h][1]));
      if (bm > m[h]) {
        // The running max rises (often in the first blocks, rarely later): rescale this head.
        const float alpha = m[h] == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(m[h] - bm);
        l[h] *= alpha;
        const __m256 al = _mm256_set1_ps(alpha);
        float* ah = acc + h * acc_stride;
        for (index_t c = 0; c < d; c += 8)
          _mm256_storeu_ps(ah + c, _mm256_mul_ps(al, _mm256_loadu_ps(ah + c)));
        m[h] = bm;
      }
      const __m256 mv = _mm256_set1_ps(m[h]);
      const __m256 p0 = exp256(_mm256_sub_ps(sc[h][0], mv)), p1 = exp256(_mm256_sub_ps(sc[h][1], mv));
      _mm256_store_ps(pbuf[h], p0);
      _mm256_store_ps(pbuf[h] + 8, p1);
      const __m256 ps = _mm256_add_ps(p0, p1);
      __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(ps), _mm256_extractf128_ps(ps, 1));
      s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
      s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
      l[h] += double(_mm_cvtss_f32(s4));
    }
    const float* vb = a.values + t0 * d;
    index_t c = 0;
    for (; c + 8 * NV <= d; c += 8 * NV)
      value_slice_avx2<HB, NV, false>(vb + c, d, jn, &pbuf[0][0], kv_block, acc + c, acc_stride, 0);
    for (; c < d; c += 8)
      value_slice_avx2<HB, 1, false>(vb + c, d, jn, &pbuf[0][0], kv_block, acc + c, acc_stride, 0);
  }
}

/// Fused decode for `heads` (1..4) heads; false when only the portable chunked path applies.
inline bool fused_decode(int heads, bool lists, const fused_args& a, index_t b_begin, index_t b_end, float* m,
                         double* l, float* acc, index_t acc_stride) {
  if (!has_avx2_fma() || a.d % 8 != 0) return false;
  switch (heads * 2 + (lists ? 1 : 0)) {
    case 2:
      fused_decode_avx2<1, false>(a, b_begin, b_end, m, l, acc, acc_stride);
      return true;
    case 3:
      fused_decode_avx2<1, true>(a, b_begin, b_end, m, l, acc, acc_stride);
      return true;
    case 4:
      fused_decode_avx2<2, false>(a, b_begin, b_end, m, l, acc, acc_stride);
      return true;
    case 5:
      fused_decode_avx2<2, true>(a, b_begin, b_end, m, l, acc, acc_stride);
      return true;
    case 6:
      fused_decode_avx2<3, false>(a, b_begin, b_end, m, l, acc, acc_stride);
      return true;
    case 7:
      fused_decode_avx2<3, true>(a, b_begin, b_end, m, l, acc, acc_stride);
      return true;
    case 8:
      fused_decode_avx2<4, false>(a, b_begin, b_end, m, l, acc, acc_stride);
      return true;
    default:
      fused_decode_avx2<4, true>(a, b_begin, b_end, m, l, acc, acc_stride);
      return true;
  }
}
#else
inline bool fused_decode(int, bool, const fused_args&, index_t, index_t, float*, double*, float*, index_t) {
  return false;
}
#endif

/// Scores for `heads` (<= 4) heads sharing one row list. `stream` (decode: keys come from DRAM)
/// adds software prefetch of the rows a few blocks ahead; prefill's keys sit in cache.
inline void score_dispatch(int heads, const float* const* rows, index_t ns, const float* q, index_t q_stride,
                           index_t block_stride, index_t b0, index_t nb, float* scores, index_t score_stride,
                           bool stream = false, side_prefetch side = {}) {
#if AQUA_HAS_X86_SIMD
  if (has_avx2_fma()) {
    if (stream) {
      // Prefetching past the end of a tile is harmless: a prefetch never faults.
      switch (heads) {
        case 1:
          return score_avx2<1, 4, true>(rows, ns, q, q_stride, block_stride, b0, nb, scores, score_stride,
                                        side);
        case 2:
          return score_avx2<2, 2, true>(rows, ns, q, q_stride, block_stride, b0, nb, scores, score_stride,
                                        side);
        case 3:
          return score_avx2<3, 1, true>(rows, ns, q, q_stride, block_stride, b0, nb, scores, score_stride,
                                        side);
        default:
          return score_avx2<4, 1, true>(rows, ns, q, q_stride, block_stride, b0, nb, scores, score_stride,
                                        side);
      }
    }
    switch (heads) {
      case 1:
        return score_avx2<1, 4, false>(rows, ns, q, q_stride, block_stride, b0, nb, scores, score_stride);
      case 2:
        return score_avx2<2, 2, false>(rows, ns, q, q_stride, block_stride, b0, nb, scores, score_stride);
      case 3:
        return score_avx2<3, 1, false>(rows, ns, q, q_stride, block_stride, b0, nb, scores, score_stride);
      default:
        return score_avx2<4, 1, false>(rows, ns, q, q_stride, block_stride, b0, nb, scores, score_stride);
    }
  }
#endif
  switch (heads) {
    case 1:
      return score_portable<1>(rows, ns, q, q_stride, block_stride, b0, nb, scores, score_stride);
    case 2:
      return score_portable<2>(rows, ns, q, q_stride, block_stride, b0, nb, scores, score_stride);
    case 3:
      return score_portable<3>(rows, ns, q, q_stride, block_stride, b0, nb, scores, score_stride);
    default:
      return score_portable<4>(rows, ns, q, q_stride, block_stride, b0, nb, scores, score_stride);
  }
}

/// Scores for `heads` (<= 4) heads, each with its own list of `ns` rows (per-head selection).
inline void score_lists_dispatch(int heads, const float* const* rows, index_t list_stride, index_t ns,
                                 const float* q, index_t q_stride, index_t block_stride, index_t b0,
                                 index_t nb, float* scores, index_t score_stride, side_prefetch side = {}) {
#if AQUA_HAS_X86_SIMD
  if (has_avx2_fma() && heads >= 2) {
    constexpr bool pf = true;
    switch (heads) {
      case 2:
        return pf ? score_lists_avx2<2, true>(rows, list_stride, ns, q, q_stride, block_stride, b0, nb,
                                              scores, score_stride, side)
                  : score_lists_avx2<2, false>(rows, list_stride, ns, q, q_stride, block_stride, b0, nb,
                                               scores, score_stride);
      case 3:
        return pf ? score_lists_avx2<3, true>(rows, list_stride, ns, q, q_stride, block_stride, b0, nb,
                                              scores, score_stride, side)
                  : score_lists_avx2<3, false>(rows, list_stride, ns, q, q_stride, block_stride, b0, nb,
                                               scores, score_stride);
      default:
        return pf ? score_lists_avx2<4, true>(rows, list_stride, ns, q, q_stride, block_stride, b0, nb,
                                              scores, score_stride, side)
                  : score_lists_avx2<4, false>(rows, list_stride, ns, q, q_stride, block_stride, b0, nb,
                                               scores, score_stride);
    }
  }
#endif
  for (int h = 0; h < heads; ++h)
    score_dispatch(1, rows + h * list_stride, ns, q + h * q_stride, q_stride, block_stride, b0, nb,
                   scores + h * score_stride, score_stride, true);
}

inline void value_dispatch(int heads, const float* v, index_t d, index_t cnt, const float* p,
                           index_t p_stride, float* acc, index_t acc_stride, const float* alpha) {
#if AQUA_HAS_X86_SIMD
  if (has_avx2_fma() && d % 8 == 0) {
    switch (heads) {
      case 1:
        return value_avx2<1, 8>(v, d, cnt, p, p_stride, acc, acc_stride, alpha);
      case 2:
        return value_avx2<2, 4>(v, d, cnt, p, p_stride, acc, acc_stride, alpha);
      case 3:
        return value_avx2<3, 2>(v, d, cnt, p, p_stride, acc, acc_stride, alpha);
      default:
        return value_avx2<4, 2>(v, d, cnt, p, p_stride, acc, acc_stride, alpha);
    }
  }
#endif
  switch (heads) {
    case 1:
      return value_portable<1>(v, d, cnt, p, p_stride, acc, acc_stride, alpha);
    case 2:
      return value_portable<2>(v, d, cnt, p, p_stride, acc, acc_stride, alpha);
    case 3:
      return value_portable<3>(v, d, cnt, p, p_stride, acc, acc_stride, alpha);
    default:
      return value_portable<4>(v, d, cnt, p, p_stride, acc, acc_stride, alpha);
  }
}

}  // namespace detail
}  // namespace aqua
