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
#include <cstdint>
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
// Fused decode: how far (in 64-byte lines of the block stream, see block_prefetcher) software
// prefetch runs ahead of the kernel. Measured at the Llama shape (d = 128, N = 32k, 1 thread,
// interleaved): 160-192 lines (10-12 KB) read dense, k = 32 and k = 96 tiles at 0.80-0.88 of the
// machine's read bandwidth; 64 lines 0.50-0.60, 256 lines 0.65-0.75 (L1 thrash). Fixed
// per-phase schemes (values during the score loop, keys a few blocks ahead) left DRAM idle
// during one of the two phases (0.55-0.75); prefetching every other line only, 0.60-0.65.
constexpr index_t decode_prefetch_lead_lines = 192;
// Chunked decode path: value rows are prefetched this many tokens ahead in the value pass.
constexpr index_t decode_value_prefetch_tokens = 16;
// Prefill: key blocks (of 16 tokens) per chunk that every query of a 64-row block reads while
// the chunk's tiles sit in L1/L2 (4-8 measured best at d = 128).
constexpr index_t prefill_key_blocks = 8;
// Prefill: 4 consecutive queries are scored together over the union of their selected dims when
// 4 x union <= num / den x (their selected dims together). Measured at M = N = 4096, k = 32
// (score phase against the AVX-512 GEMM): ratio 1 (groups only queries whose selections
// coincide, common with tiles) takes tile selection from 2.6x to 3.0x and leaves per-dim selection
// at 2.0x; ratios 1.25 / 1.75 / 2.5 / always took per-dim selection to 1.95x / 1.75x / 1.58x /
// 1.58x (the multiply-adds on zero weights cost more than the row reads they share).
constexpr index_t prefill_union_ratio_num = 4, prefill_union_ratio_den = 4;
/// Test / measurement hook: a ratio numerator to use instead (0: the constant; 1: never group).
inline index_t& prefill_union_test_ratio() {
  static index_t ratio = 0;
  return ratio;
}

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
  // Key rows of block 0: one shared list, or per-head lists interleaved (see fused_decode_avx2).
  const float* const* rows = nullptr;
  index_t ns = 0;
  // The selected, scaled queries of the HB heads interleaved: head h at its s-th row is
  // q[s * HB + h] (one pointer walks all heads' broadcasts, which leaves registers free).
  const float* q = nullptr;
  index_t block_stride = 0;
  const float* values = nullptr;  // token-major [n, d]
  index_t d = 0;
  index_t valid_end = 0;    // tokens at or past this index are masked (last, partial block)
  float* logits = nullptr;  // optional raw scores: logits + h * logits_stride + token
  index_t logits_stride = 0;
  // Fused decode, per-head lists: the distinct rows of the HB lists (block 0), which software
  // prefetch requests once each; unset, the prefetch follows the (shared) list itself.
  const float* const* prefetch_rows = nullptr;
  index_t prefetch_count = 0;
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

/// score_avx2 in 512-bit vectors: a block row of 16 tokens is one vector, so each row read costs
/// one load and HB FMAs instead of two and 2 HB. Same lanes, same FMA order: identical scores.
template <int HB, int NB, bool Prefetch>
AQUA_TARGET_AVX512 void score_avx512(const float* const* rows, index_t ns, const float* q, index_t q_stride,
                                     index_t block_stride, index_t b0, index_t nb, float* scores,
                                     index_t score_stride, side_prefetch side = {}) {
  const index_t ahead = decode_key_prefetch_blocks * block_stride;
  const index_t per_s = side.base ? (side.step / 64 + ns - 1) / ns : 0;
  index_t b = 0;
  for (; b + NB <= nb; b += NB) {
    __m512 acc[HB][NB];
#pragma GCC unroll 16
    for (int h = 0; h < HB; ++h)
#pragma GCC unroll 16
      for (int u = 0; u < NB; ++u) acc[h][u] = _mm512_setzero_ps();
    const index_t off = (b0 + b) * block_stride;
    const char* sp = Prefetch && side.base ? side.base + b * side.step : nullptr;
    const char* send = Prefetch && side.base ? sp + NB * side.step : nullptr;
    for (index_t s = 0; s < ns; ++s) {
      const float* r = rows[s] + off;
      if (Prefetch) {
        _mm_prefetch(reinterpret_cast<const char*>(r + ahead), _MM_HINT_T0);
        for (index_t u = 0; u < NB * per_s && sp < send; ++u, sp += 64) _mm_prefetch(sp, _MM_HINT_T0);
      }
      __m512 kr[NB];
#pragma GCC unroll 16
      for (int u = 0; u < NB; ++u) kr[u] = _mm512_load_ps(r + u * block_stride);
#pragma GCC unroll 16
      for (int h = 0; h < HB; ++h) {
        const __m512 qb = _mm512_set1_ps(q[h * q_stride + s]);
#pragma GCC unroll 16
        for (int u = 0; u < NB; ++u) acc[h][u] = _mm512_fmadd_ps(qb, kr[u], acc[h][u]);
      }
    }
#pragma GCC unroll 16
    for (int h = 0; h < HB; ++h)
#pragma GCC unroll 16
      for (int u = 0; u < NB; ++u)
        _mm512_storeu_ps(scores + h * score_stride + (b + u) * kv_block, acc[h][u]);
  }
  // The remaining blocks with half as many at once (down to 1), so a short tail keeps several
  // independent FMA chains.
  if (NB > 1 && b < nb)
    score_avx512<HB, (NB > 1 ? NB / 2 : 1), Prefetch>(
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

/// Prefetch policy of the chunked value pass: one line of the row `ahead` floats later per line
/// consumed, so the stream stays ahead without bursts that would fill the miss buffers.
struct row_ahead_prefetch {
  index_t ahead = 0;
  template <int NV>
  AQUA_TARGET_AVX2 AQUA_ALWAYS_INLINE void token(const float* row, index_t) const {
#pragma GCC unroll 4
    for (int u = 0; u < NV; u += 2)
      _mm_prefetch(reinterpret_cast<const char*>(row + ahead + 8 * u), _MM_HINT_T0);
  }
};

/// Software prefetch for the fused decode. The lines a 16-token block consumes form one stream:
/// its selected key rows (one 64-byte line per distinct row), then its value rows (d lines at d
/// floats per token). The prefetcher walks that stream a fixed number of lines ahead of the
/// kernel and issues one line for every line consumed, in both the score and the value loop, so
/// DRAM sees a steady request rate whatever the split between key and value bytes (k = 32 reads
/// 32 key lines and 128 value lines per block, dense 128 + 128). Addresses are formed as integers:
/// lines past the end of the cache are requested but never read (a prefetch does not fault).
struct block_prefetcher {
  const float* const* rows = nullptr;  // the key rows of block 0
  index_t key_lines = 0;
  std::uintptr_t key_block_bytes = 0;
  index_t lines = 0;         // per block: key_lines + the value lines
  index_t pos = 0;           // line within the current block's stream
  std::uintptr_t koff = 0;   // bytes from block 0's key rows to the current block's
  std::uintptr_t vnext = 0;  // next value line (the value rows of all blocks are contiguous)

  /// The stream of a fused decode (fused_args a) over blocks from first_block on.
  AQUA_TARGET_AVX2 AQUA_ALWAYS_INLINE void start_decode(const fused_args& a, index_t first_block) {
    rows = a.prefetch_rows ? a.prefetch_rows : a.rows;
    key_lines = a.prefetch_rows ? a.prefetch_count : a.ns;
    key_block_bytes = static_cast<std::uintptr_t>(a.block_stride) * sizeof(float);
    start(a.values, kv_block * a.d, first_block, decode_prefetch_lead_lines);
  }
  /// Positions the prefetcher `lead` lines past the start of block first_block.
  AQUA_TARGET_AVX2 AQUA_ALWAYS_INLINE void start(const float* values, index_t value_block_floats,
                                                 index_t first_block, index_t lead) {
    lines = key_lines + value_block_floats / 16;
    const index_t block = first_block + lead / lines;
    pos = lead % lines;
    koff = static_cast<std::uintptr_t>(block) * key_block_bytes;
    vnext = reinterpret_cast<std::uintptr_t>(values) +
            static_cast<std::uintptr_t>(block * value_block_floats) * sizeof(float) +
            static_cast<std::uintptr_t>(pos > key_lines ? pos - key_lines : 0) * 64;
  }
  /// The value pass consumed token j's NV vectors of 8 floats (NV / 2 lines; an odd NV steps
  /// once more on odd tokens).
  template <int NV>
  AQUA_TARGET_AVX2 AQUA_ALWAYS_INLINE void token(const float*, index_t j) {
#pragma GCC unroll 4
    for (int u = 0; u + 1 < NV; u += 2) step();
    if ((NV & 1) && (j & 1)) step();
  }
  AQUA_TARGET_AVX2 AQUA_ALWAYS_INLINE void step() {
    if (pos < key_lines) {
      _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<std::uintptr_t>(rows[pos]) + koff),
                   _MM_HINT_T0);
    } else {
      _mm_prefetch(reinterpret_cast<const char*>(vnext), _MM_HINT_T0);
      vnext += 64;
    }
    if (++pos == lines) {
      pos = 0;
      koff += key_block_bytes;
    }
  }
};

/// acc[h][c..c+8 NV) += sum_j p[h][j] v[j][c..c+8 NV) for HB heads: 8 NV columns of the HB heads
/// in registers while the cnt rows stream by; `pf.token<NV>(row, j)` issues the prefetch for
/// each row consumed.
template <int HB, int NV, class Prefetch>
AQUA_TARGET_AVX2 AQUA_ALWAYS_INLINE void value_slice_avx2(const float* v, index_t d, index_t cnt,
                                                          const float* p, index_t p_stride, float* acc,
                                                          index_t acc_stride, Prefetch& pf) {
  __m256 a[HB][NV];
#pragma GCC unroll 16
  for (int h = 0; h < HB; ++h)
#pragma GCC unroll 16
    for (int u = 0; u < NV; ++u) a[h][u] = _mm256_loadu_ps(acc + h * acc_stride + 8 * u);
  for (index_t j = 0; j < cnt; ++j) {
    const float* row = v + j * d;
    pf.template token<NV>(row, j);
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
  row_ahead_prefetch pf{decode_value_prefetch_tokens * d};
  for (index_t j0 = 0; j0 < cnt; j0 += group) {
    const index_t jn = std::min(group, cnt - j0);
    const float* vg = v + j0 * d;
    const float* pg = p + j0;
    index_t c = 0;
    for (; c + 8 * NV <= d; c += 8 * NV)
      value_slice_avx2<HB, NV>(vg + c, d, jn, pg, p_stride, acc + c, acc_stride, pf);
    for (; c < d; c += 8) value_slice_avx2<HB, 1>(vg + c, d, jn, pg, p_stride, acc + c, acc_stride, pf);
  }
}

/// A head's running max rises to bm: its normaliser (with the block sums not yet folded in) and
/// its unnormalised output are rescaled by e^(m - bm).
AQUA_TARGET_AVX2 AQUA_ALWAYS_INLINE void raise_max(float& m, double& l, __m256d& lsum, float bm, float* acc,
                                                   index_t d) {
  const float alpha = m == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(m - bm);
  l = (l + hsum256_pd(lsum)) * alpha;
  lsum = _mm256_setzero_pd();
  const __m256 al = _mm256_set1_ps(alpha);
  for (index_t c = 0; c < d; c += 8) _mm256_storeu_ps(acc + c, _mm256_mul_ps(al, _mm256_loadu_ps(acc + c)));
  m = bm;
}

/// lsum += the 8 floats of ps (a block's probabilities folded from 16 lanes), widened to double.
AQUA_TARGET_AVX2 AQUA_ALWAYS_INLINE void add_block_sum(__m256d& lsum, __m256 ps) {
  lsum = _mm256_add_pd(lsum, _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(ps)),
                                           _mm256_cvtps_pd(_mm256_extractf128_ps(ps, 1))));
}

/// Fused decode over whole 16-token blocks [b_begin, b_end) of one KV head, for HB query heads:
/// per block the HB x 16 scores stay in registers, the online softmax updates in place, and the
/// value rows of the same 16 tokens are accumulated at once, so keys and values are consumed as
/// one stream that block_prefetcher keeps decode_prefetch_lead_lines ahead of the kernel.
/// Lists: head h reads its own rows, interleaved like q (row s of head h at rows[s * HB + h]),
/// else all HB heads share one list.
/// State per head: running max m, normaliser l (double) and unnormalised output acc (d floats).
/// Softmax per block: a head is rescaled only when a score exceeds its running max (a compare and
/// a mask test in the common case), and the block's probabilities are summed into per-head double
/// vectors that reach l at the next rescale or at the end.
template <int HB, bool Lists>
AQUA_TARGET_AVX2 void fused_decode_avx2(const fused_args& a, index_t b_begin, index_t b_end, float* m,
                                        double* l, float* acc, index_t acc_stride) {
  constexpr int NV = HB == 1 ? 8 : HB == 2 ? 4 : 2;  // value columns per slice, in vectors of 8
  const index_t d = a.d, ns = a.ns, bs = a.block_stride;
  block_prefetcher pf;
  pf.start_decode(a, b_begin);
  index_t spread = 0;  // per-head lists: the distinct rows' steps spread over the ns iterations
  alignas(32) float pbuf[HB][kv_block];
  __m256d lsum[HB];
#pragma GCC unroll 4
  for (int h = 0; h < HB; ++h) lsum[h] = _mm256_setzero_pd();
  for (index_t b = b_begin; b < b_end; ++b) {
    const index_t off = b * bs, t0 = b * kv_block;
    __m256 sc[HB][2];
#pragma GCC unroll 4
    for (int h = 0; h < HB; ++h) sc[h][0] = sc[h][1] = _mm256_setzero_ps();
    for (index_t s = 0; s < ns; ++s) {
      const float* qs = a.q + s * HB;
      if (Lists) {
        const float* const* rs = a.rows + s * HB;
        for (spread += pf.key_lines; spread >= ns; spread -= ns) pf.step();
#pragma GCC unroll 4
        for (int h = 0; h < HB; ++h) {
          const float* r = rs[h] + off;
          const __m256 qb = _mm256_broadcast_ss(qs + h);
          sc[h][0] = _mm256_fmadd_ps(qb, _mm256_load_ps(r), sc[h][0]);
          sc[h][1] = _mm256_fmadd_ps(qb, _mm256_load_ps(r + 8), sc[h][1]);
        }
      } else {
        pf.step();
        const float* r = a.rows[s] + off;
        const __m256 k0 = _mm256_load_ps(r), k1 = _mm256_load_ps(r + 8);
#pragma GCC unroll 4
        for (int h = 0; h < HB; ++h) {
          const __m256 qb = _mm256_broadcast_ss(qs + h);
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
      __m256 mv = _mm256_set1_ps(m[h]);
      const __m256 bmax = _mm256_max_ps(sc[h][0], sc[h][1]);
      if (AQUA_UNLIKELY(_mm256_movemask_ps(_mm256_cmp_ps(bmax, mv, _CMP_GT_OQ)) != 0)) {
        // The running max rises (often in the first blocks, rarely later): rescale this head.
        raise_max(m[h], l[h], lsum[h], hmax256(bmax), acc + h * acc_stride, d);
        mv = _mm256_set1_ps(m[h]);
      }
      const __m256 p0 = exp256(_mm256_sub_ps(sc[h][0], mv)), p1 = exp256(_mm256_sub_ps(sc[h][1], mv));
      _mm256_store_ps(pbuf[h], p0);
      _mm256_store_ps(pbuf[h] + 8, p1);
      add_block_sum(lsum[h], _mm256_add_ps(p0, p1));
    }
    const float* vb = a.values + t0 * d;
    index_t c = 0;
    for (; c + 8 * NV <= d; c += 8 * NV)
      value_slice_avx2<HB, NV>(vb + c, d, jn, &pbuf[0][0], kv_block, acc + c, acc_stride, pf);
    for (; c < d; c += 8)
      value_slice_avx2<HB, 1>(vb + c, d, jn, &pbuf[0][0], kv_block, acc + c, acc_stride, pf);
  }
#pragma GCC unroll 4
  for (int h = 0; h < HB; ++h) l[h] += hsum256_pd(lsum[h]);
}

/// value_slice_avx2 in 512-bit vectors (16 columns each), prefetching one line per vector read.
template <int HB, int NV>
AQUA_TARGET_AVX512 AQUA_ALWAYS_INLINE void value_slice_avx512(const float* v, index_t d, index_t cnt,
                                                              const float* p, index_t p_stride, float* acc,
                                                              index_t acc_stride, block_prefetcher& pf) {
  __m512 a[HB][NV];
#pragma GCC unroll 16
  for (int h = 0; h < HB; ++h)
#pragma GCC unroll 16
    for (int u = 0; u < NV; ++u) a[h][u] = _mm512_loadu_ps(acc + h * acc_stride + 16 * u);
  for (index_t j = 0; j < cnt; ++j) {
    const float* row = v + j * d;
    __m512 vr[NV];
#pragma GCC unroll 16
    for (int u = 0; u < NV; ++u) {
      pf.step();
      vr[u] = _mm512_loadu_ps(row + 16 * u);
    }
#pragma GCC unroll 16
    for (int h = 0; h < HB; ++h) {
      const __m512 pb = _mm512_set1_ps(p[h * p_stride + j]);
#pragma GCC unroll 16
      for (int u = 0; u < NV; ++u) a[h][u] = _mm512_fmadd_ps(pb, vr[u], a[h][u]);
    }
  }
#pragma GCC unroll 16
  for (int h = 0; h < HB; ++h)
#pragma GCC unroll 16
    for (int u = 0; u < NV; ++u) _mm512_storeu_ps(acc + h * acc_stride + 16 * u, a[h][u]);
}

/// fused_decode_avx2 with 512-bit vectors: a 16-token key block row is one vector, so the score
/// loop issues half the loads and FMAs, and the value pass keeps up to 128 columns of a head in
/// registers. Every float operation is the AVX2 kernel's, lane for lane and in the same order (the
/// block sums are folded to 8 lanes before they reach double), so the two paths agree bit for bit.
/// d must be a multiple of 16.
template <int HB, bool Lists>
AQUA_TARGET_AVX512 void fused_decode_avx512(const fused_args& a, index_t b_begin, index_t b_end, float* m,
                                            double* l, float* acc, index_t acc_stride) {
  constexpr int NV = HB <= 2 ? 8 : 4;  // value columns per slice, in vectors of 16
  const index_t d = a.d, ns = a.ns, bs = a.block_stride;
  block_prefetcher pf;
  pf.start_decode(a, b_begin);
  index_t spread = 0;  // per-head lists: the distinct rows' steps spread over the ns iterations
  alignas(64) float pbuf[HB][kv_block];
  __m256d lsum[HB];
#pragma GCC unroll 4
  for (int h = 0; h < HB; ++h) lsum[h] = _mm256_setzero_pd();
  for (index_t b = b_begin; b < b_end; ++b) {
    const index_t off = b * bs, t0 = b * kv_block;
    __m512 sc[HB];
#pragma GCC unroll 4
    for (int h = 0; h < HB; ++h) sc[h] = _mm512_setzero_ps();
    for (index_t s = 0; s < ns; ++s) {
      const float* qs = a.q + s * HB;
      if (Lists) {
        const float* const* rs = a.rows + s * HB;
        for (spread += pf.key_lines; spread >= ns; spread -= ns) pf.step();
#pragma GCC unroll 4
        for (int h = 0; h < HB; ++h)
          sc[h] = _mm512_fmadd_ps(_mm512_set1_ps(qs[h]), _mm512_load_ps(rs[h] + off), sc[h]);
      } else {
        pf.step();
        const __m512 kr = _mm512_load_ps(a.rows[s] + off);
#pragma GCC unroll 4
        for (int h = 0; h < HB; ++h) sc[h] = _mm512_fmadd_ps(_mm512_set1_ps(qs[h]), kr, sc[h]);
      }
    }
    const index_t jn = std::min<index_t>(kv_block, a.valid_end - t0);
    const auto valid = static_cast<__mmask16>((1u << jn) - 1u);
    if (a.logits) {
#pragma GCC unroll 4
      for (int h = 0; h < HB; ++h) _mm512_mask_storeu_ps(a.logits + h * a.logits_stride + t0, valid, sc[h]);
    }
    if (jn < kv_block) {
      const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
#pragma GCC unroll 4
      for (int h = 0; h < HB; ++h) sc[h] = _mm512_mask_mov_ps(ninf, valid, sc[h]);
    }
#pragma GCC unroll 4
    for (int h = 0; h < HB; ++h) {
      __m512 mv = _mm512_set1_ps(m[h]);
      if (AQUA_UNLIKELY(_mm512_cmp_ps_mask(sc[h], mv, _CMP_GT_OQ) != 0)) {
        raise_max(m[h], l[h], lsum[h], hmax256(_mm256_max_ps(low_half(sc[h]), high_half(sc[h]))),
                  acc + h * acc_stride, d);
        mv = _mm512_set1_ps(m[h]);
      }
      const __m512 p = exp512(_mm512_sub_ps(sc[h], mv));
      _mm512_store_ps(pbuf[h], p);
      add_block_sum(lsum[h], _mm256_add_ps(low_half(p), high_half(p)));
    }
    const float* vb = a.values + t0 * d;
    index_t c = 0;
    for (; c + 16 * NV <= d; c += 16 * NV)
      value_slice_avx512<HB, NV>(vb + c, d, jn, &pbuf[0][0], kv_block, acc + c, acc_stride, pf);
    for (; c < d; c += 16)
      value_slice_avx512<HB, 1>(vb + c, d, jn, &pbuf[0][0], kv_block, acc + c, acc_stride, pf);
  }
#pragma GCC unroll 4
  for (int h = 0; h < HB; ++h) l[h] += hsum256_pd(lsum[h]);
}

template <bool Wide>
inline void fused_decode_heads(int heads, bool lists, const fused_args& a, index_t b_begin, index_t b_end,
                               float* m, double* l, float* acc, index_t acc_stride) {
#define AQUA_FUSED_CASE(HB, LISTS)                                              \
  case HB * 2 + LISTS:                                                          \
    if constexpr (Wide)                                                         \
      fused_decode_avx512<HB, LISTS>(a, b_begin, b_end, m, l, acc, acc_stride); \
    else                                                                        \
      fused_decode_avx2<HB, LISTS>(a, b_begin, b_end, m, l, acc, acc_stride);   \
    return;
  switch (heads * 2 + (lists ? 1 : 0)) {
    AQUA_FUSED_CASE(1, false)
    AQUA_FUSED_CASE(1, true)
    AQUA_FUSED_CASE(2, false)
    AQUA_FUSED_CASE(2, true)
    AQUA_FUSED_CASE(3, false)
    AQUA_FUSED_CASE(3, true)
    AQUA_FUSED_CASE(4, false)
    default:
      AQUA_FUSED_CASE(4, true)
  }
#undef AQUA_FUSED_CASE
}

/// Fused decode for `heads` (1..4) heads; false when only the portable chunked path applies.
inline bool fused_decode(int heads, bool lists, const fused_args& a, index_t b_begin, index_t b_end, float* m,
                         double* l, float* acc, index_t acc_stride) {
  if (!has_avx2_fma() || a.d % 8 != 0) return false;
  if (has_avx512f() && a.d % 16 == 0)
    fused_decode_heads<true>(heads, lists, a, b_begin, b_end, m, l, acc, acc_stride);
  else
    fused_decode_heads<false>(heads, lists, a, b_begin, b_end, m, l, acc, acc_stride);
  return true;
}
#else
inline bool fused_decode(int, bool, const fused_args&, index_t, index_t, float*, double*, float*, index_t) {
  return false;
}
#endif

#if AQUA_HAS_X86_SIMD
/// score_avx512 (Wide) or score_avx2 for HB heads, NB blocks at once. Without streaming (prefill)
/// the 512-bit kernel takes twice the blocks per row read: as many accumulators, half the vectors.
template <bool Wide, int HB, int NB, bool Prefetch>
void score_simd(const float* const* rows, index_t ns, const float* q, index_t q_stride, index_t block_stride,
                index_t b0, index_t nb, float* scores, index_t score_stride, side_prefetch side) {
  constexpr int blocks = Wide && !Prefetch ? 2 * NB : NB;
  if constexpr (Wide)
    score_avx512<HB, blocks, Prefetch>(rows, ns, q, q_stride, block_stride, b0, nb, scores, score_stride,
                                       side);
  else
    score_avx2<HB, NB, Prefetch>(rows, ns, q, q_stride, block_stride, b0, nb, scores, score_stride, side);
}

template <bool Wide>
void score_heads(int heads, bool stream, const float* const* rows, index_t ns, const float* q,
                 index_t q_stride, index_t block_stride, index_t b0, index_t nb, float* scores,
                 index_t score_stride, side_prefetch side) {
  // Prefetching past the end of a tile is harmless: a prefetch never faults.
#define AQUA_SCORE_CASE(HB, NB)                                                                        \
  return stream ? score_simd<Wide, HB, NB, true>(rows, ns, q, q_stride, block_stride, b0, nb, scores,  \
                                                 score_stride, side)                                   \
                : score_simd<Wide, HB, NB, false>(rows, ns, q, q_stride, block_stride, b0, nb, scores, \
                                                  score_stride, side);
  switch (heads) {
    case 1:
      AQUA_SCORE_CASE(1, 4)
    case 2:
      AQUA_SCORE_CASE(2, 2)
    case 3:
      AQUA_SCORE_CASE(3, 1)
    default:
      AQUA_SCORE_CASE(4, 1)
  }
#undef AQUA_SCORE_CASE
}
#endif

/// Scores for `heads` (<= 4) heads sharing one row list. `stream` (decode: keys come from DRAM)
/// adds software prefetch of the rows a few blocks ahead; prefill's keys sit in cache.
inline void score_dispatch(int heads, const float* const* rows, index_t ns, const float* q, index_t q_stride,
                           index_t block_stride, index_t b0, index_t nb, float* scores, index_t score_stride,
                           bool stream = false, side_prefetch side = {}) {
#if AQUA_HAS_X86_SIMD
  if (has_avx512f())
    return score_heads<true>(heads, stream, rows, ns, q, q_stride, block_stride, b0, nb, scores, score_stride,
                             side);
  if (has_avx2_fma())
    return score_heads<false>(heads, stream, rows, ns, q, q_stride, block_stride, b0, nb, scores,
                              score_stride, side);
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
