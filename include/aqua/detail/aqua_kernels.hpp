// Inner kernels of AQUA / dense attention over the tiled key cache (kv_cache.hpp) and their
// runtime dispatch: the SIMD kernels are one source (decode_kernels-inl.hpp) compiled for AVX2 and
// for AVX-512; the portable kernels below serve other CPUs and head dims the SIMD ones do not.
// Every kernel takes keys and values as stored (f32, bf16 or f16) and computes in float.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "aqua/detail/simd.hpp"
#include "aqua/detail/vec_ops.hpp"
#include "aqua/float16.hpp"
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
// Fused decode and token-major rows: how far (in 64-byte lines of the kernel's stream, see
// block_prefetcher) software prefetch runs ahead, and into which cache level: aqua::decode_prefetch
// (isa.hpp) chooses per CPU vendor; docs/performance.md has the measurements behind the values.
constexpr index_t decode_prefetch_lead_lines = 192;
constexpr index_t decode_prefetch_lead_lines_l2 = 768;

struct stream_prefetch {
  index_t lead_lines;
  bool into_l2;
};

inline stream_prefetch decode_stream_prefetch() noexcept {
  if (active_decode_prefetch() == decode_prefetch::l2) return {decode_prefetch_lead_lines_l2, true};
  return {decode_prefetch_lead_lines, false};
}
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
/// Token-major rows (engine buffers): software prefetch runs this many rows ahead of the kernel,
/// about lead_lines lines when rows are contiguous (fewer, at least 2, when rows are far apart, as
/// in [N][Hkv][d] buffers).
inline index_t prefetch_rows_ahead(index_t row_stride_bytes, index_t lead_lines) {
  return std::max<index_t>(2, lead_lines * 64 / std::max<index_t>(row_stride_bytes, 64));
}

template <class T>
inline const T* typed_ptr(const unsigned char* p) {
  return reinterpret_cast<const T*>(p);
}

template <int HB, class K>
void score_portable(const unsigned char* const* rows, index_t ns, const float* q, index_t q_stride,
                    index_t block_bytes, index_t b0, index_t nb, float* scores, index_t score_stride) {
  for (index_t b = 0; b < nb; ++b) {
    const index_t off = (b0 + b) * block_bytes;
    for (int h = 0; h < HB; ++h) {
      float acc[kv_block] = {};
      for (index_t s = 0; s < ns; ++s) {
        const float qs = q[h * q_stride + s];
        const K* r = typed_ptr<K>(rows[s] + off);
        for (index_t l = 0; l < kv_block; ++l) acc[l] += qs * static_cast<float>(r[l]);
      }
      for (index_t l = 0; l < kv_block; ++l) scores[h * score_stride + b * kv_block + l] = acc[l];
    }
  }
}

template <int HB, class V>
void value_portable(const V* v, index_t d, index_t cnt, const float* p, index_t p_stride, float* acc,
                    index_t acc_stride, const float* alpha, index_t ld) {
  for (int h = 0; h < HB; ++h) {
    float* a = acc + h * acc_stride;
    for (index_t c = 0; c < d; ++c) a[c] *= alpha[h];
    for (index_t j = 0; j < cnt; ++j) {
      const float pj = p[h * p_stride + j];
      const V* row = v + j * ld;
      for (index_t c = 0; c < d; ++c) a[c] += pj * static_cast<float>(row[c]);
    }
  }
}

struct fused_args {
  // Key rows of block 0 (byte pointers): one shared list, or per-head lists interleaved (see
  // fused_decode in decode_kernels-inl.hpp).
  const unsigned char* const* rows = nullptr;
  index_t ns = 0;
  // The selected, scaled queries of the HB heads interleaved: head h at its s-th row is
  // q[s * HB + h] (one pointer walks all heads' broadcasts, which leaves registers free).
  const float* q = nullptr;
  index_t block_bytes = 0;                // from one key block to the next within a tile
  const unsigned char* values = nullptr;  // token-major [n, d] elements
  index_t d = 0;
  index_t valid_end = 0;    // tokens at or past this index are masked (last, partial block)
  float* logits = nullptr;  // optional raw scores: logits + h * logits_stride + token
  index_t logits_stride = 0;
  // Fused decode, per-head lists: the distinct rows of the HB lists (block 0), which software
  // prefetch requests once each; unset, the prefetch follows the (shared) list itself.
  const unsigned char* const* prefetch_rows = nullptr;
  index_t prefetch_count = 0;
};

/// Side prefetch (chunked decode): while the score pass computes block b, the value rows of the
/// same 16 tokens (`base`, `step` bytes per key block) are requested a few lines per key row, so
/// the value pass that follows finds them in cache instead of stalling at every phase change.
struct side_prefetch {
  const char* base = nullptr;
  index_t step = 0;  // bytes per key block
};

/// The other stream of a two-pass chunk over token-major rows (engine buffers), requested into L2
/// one row per row consumed: the score pass asks for its chunk's value rows, the value pass for
/// the next chunk's key rows. DRAM then serves two streams throughout, instead of one per pass
/// with a stall at every change of pass (measured on a Xeon: views 0.83 -> 0.92-0.95 of the cache path).
struct rows_l2_prefetch {
  const unsigned char* base = nullptr;  // row 0; null: nothing to request
  index_t rows = 0;                     // rows that exist from base on
  index_t stride = 0;                   // bytes from one row to the next
  index_t bytes = 0;                    // bytes of a row
};

#if AQUA_HAS_X86_SIMD
namespace avx2 {
using ops = avx2_ops;
#define AQUA_KERNEL AQUA_TARGET_AVX2
#include "aqua/detail/decode_kernels-inl.hpp"
#undef AQUA_KERNEL
}  // namespace avx2
namespace avx512 {
using ops = avx512_ops;
#define AQUA_KERNEL AQUA_TARGET_AVX512
#include "aqua/detail/decode_kernels-inl.hpp"
#undef AQUA_KERNEL
}  // namespace avx512

/// The fused kernel of ISA namespace Isa (avx2 / avx512) for `heads` (1..4) heads.
template <bool Wide, class K, class V>
void fused_decode_heads(int heads, bool lists, const fused_args& a, index_t b_begin, index_t b_end, float* m,
                        double* l, float* acc, index_t acc_stride) {
#define AQUA_FUSED_CASE(HB, LISTS)                                                     \
  case HB * 2 + LISTS:                                                                 \
    if constexpr (Wide)                                                                \
      avx512::fused_decode<HB, LISTS, K, V>(a, b_begin, b_end, m, l, acc, acc_stride); \
    else                                                                               \
      avx2::fused_decode<HB, LISTS, K, V>(a, b_begin, b_end, m, l, acc, acc_stride);   \
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
#endif

/// Fused decode for `heads` (1..4) heads; false when only the chunked path applies (no AVX2, a
/// head dim the vectors do not divide, or keys and values stored in different types).
template <class = void>
inline bool fused_decode(int heads, bool lists, const fused_args& a, storage_type key_type,
                         storage_type value_type, index_t b_begin, index_t b_end, float* m, double* l,
                         float* acc, index_t acc_stride) {
#if AQUA_HAS_X86_SIMD
  if (!has_avx2_fma() || a.d % 8 != 0 || key_type != value_type) return false;
  const bool wide = has_avx512f() && a.d % 16 == 0;
  visit_storage(key_type, [&](auto tag) {
    using T = decltype(tag);
    if (wide)
      fused_decode_heads<true, T, T>(heads, lists, a, b_begin, b_end, m, l, acc, acc_stride);
    else
      fused_decode_heads<false, T, T>(heads, lists, a, b_begin, b_end, m, l, acc, acc_stride);
  });
  return true;
#else
  (void)heads, (void)lists, (void)a, (void)key_type, (void)value_type, (void)b_begin, (void)b_end, (void)m,
      (void)l, (void)acc, (void)acc_stride;
  return false;
#endif
}

#if AQUA_HAS_X86_SIMD
/// Score kernel of one ISA for HB heads, NB blocks at once. Without streaming (prefill) the
/// 512-bit kernel takes twice the blocks per row read: as many accumulators, half the vectors.
template <bool Wide, int HB, int NB, class K>
void score_isa(bool stream, const unsigned char* const* rows, index_t ns, const float* q, index_t q_stride,
               index_t block_bytes, index_t b0, index_t nb, float* scores, index_t score_stride,
               side_prefetch side) {
  // Prefetching past the end of a tile is harmless: a prefetch never faults.
  if constexpr (Wide) {
    if (stream)
      avx512::score_blocks<HB, NB, true, K>(rows, ns, q, q_stride, block_bytes, b0, nb, scores, score_stride,
                                            side);
    else
      avx512::score_blocks<HB, 2 * NB, false, K>(rows, ns, q, q_stride, block_bytes, b0, nb, scores,
                                                 score_stride, side);
  } else {
    if (stream)
      avx2::score_blocks<HB, NB, true, K>(rows, ns, q, q_stride, block_bytes, b0, nb, scores, score_stride,
                                          side);
    else
      avx2::score_blocks<HB, NB, false, K>(rows, ns, q, q_stride, block_bytes, b0, nb, scores, score_stride,
                                           side);
  }
}

template <bool Wide, class K>
void score_heads(int heads, bool stream, const unsigned char* const* rows, index_t ns, const float* q,
                 index_t q_stride, index_t block_bytes, index_t b0, index_t nb, float* scores,
                 index_t score_stride, side_prefetch side) {
  switch (heads) {
    case 1:
      return score_isa<Wide, 1, 4, K>(stream, rows, ns, q, q_stride, block_bytes, b0, nb, scores,
                                      score_stride, side);
    case 2:
      return score_isa<Wide, 2, 2, K>(stream, rows, ns, q, q_stride, block_bytes, b0, nb, scores,
                                      score_stride, side);
    case 3:
      return score_isa<Wide, 3, 1, K>(stream, rows, ns, q, q_stride, block_bytes, b0, nb, scores,
                                      score_stride, side);
    default:
      return score_isa<Wide, 4, 1, K>(stream, rows, ns, q, q_stride, block_bytes, b0, nb, scores,
                                      score_stride, side);
  }
}
#endif

/// Scores for `heads` (<= 4) heads sharing one row list. `stream` (decode: keys come from DRAM)
/// adds software prefetch of the rows a few blocks ahead; prefill's keys sit in cache.
template <class = void>
inline void score_dispatch(int heads, storage_type key_type, const unsigned char* const* rows, index_t ns,
                           const float* q, index_t q_stride, index_t block_bytes, index_t b0, index_t nb,
                           float* scores, index_t score_stride, bool stream = false,
                           side_prefetch side = {}) {
  visit_storage(key_type, [&](auto tag) {
    using K = decltype(tag);
#if AQUA_HAS_X86_SIMD
    if (has_avx512f())
      return score_heads<true, K>(heads, stream, rows, ns, q, q_stride, block_bytes, b0, nb, scores,
                                  score_stride, side);
    if (has_avx2_fma())
      return score_heads<false, K>(heads, stream, rows, ns, q, q_stride, block_bytes, b0, nb, scores,
                                   score_stride, side);
#endif
    switch (heads) {
      case 1:
        return score_portable<1, K>(rows, ns, q, q_stride, block_bytes, b0, nb, scores, score_stride);
      case 2:
        return score_portable<2, K>(rows, ns, q, q_stride, block_bytes, b0, nb, scores, score_stride);
      case 3:
        return score_portable<3, K>(rows, ns, q, q_stride, block_bytes, b0, nb, scores, score_stride);
      default:
        return score_portable<4, K>(rows, ns, q, q_stride, block_bytes, b0, nb, scores, score_stride);
    }
  });
}

/// Scores for `heads` (<= 4) heads, each with its own list of `ns` rows (per-head selection).
template <class = void>
inline void score_lists_dispatch(int heads, storage_type key_type, const unsigned char* const* rows,
                                 index_t list_stride, index_t ns, const float* q, index_t q_stride,
                                 index_t block_bytes, index_t b0, index_t nb, float* scores,
                                 index_t score_stride, side_prefetch side = {}) {
#if AQUA_HAS_X86_SIMD
  if (has_avx2_fma() && heads >= 2) {
    visit_storage(key_type, [&](auto tag) {
      using K = decltype(tag);
      const bool wide = has_avx512f();
#define AQUA_LISTS_CASE(HB)                                                                                 \
  return wide ? avx512::score_lists<HB, K>(rows, list_stride, ns, q, q_stride, block_bytes, b0, nb, scores, \
                                           score_stride, side)                                              \
              : avx2::score_lists<HB, K>(rows, list_stride, ns, q, q_stride, block_bytes, b0, nb, scores,   \
                                         score_stride, side);
      switch (heads) {
        case 2:
          AQUA_LISTS_CASE(2)
        case 3:
          AQUA_LISTS_CASE(3)
        default:
          AQUA_LISTS_CASE(4)
      }
#undef AQUA_LISTS_CASE
    });
    return;
  }
#endif
  for (int h = 0; h < heads; ++h)
    score_dispatch(1, key_type, rows + h * list_stride, ns, q + h * q_stride, q_stride, block_bytes, b0, nb,
                   scores + h * score_stride, score_stride, true);
}

/// Scores of `heads` (<= 4) query heads (scaled rows q + h * d) against `count` token-major key
/// rows `ld` elements apart: scores[h * score_stride + j] = q_h . k_j.
template <class = void>
inline void score_rows_dispatch(int heads, storage_type key_type, const unsigned char* keys, index_t ld,
                                index_t count, const float* q, index_t d, float* scores, index_t score_stride,
                                const rows_l2_prefetch& side = {}) {
  visit_storage(key_type, [&](auto tag) {
    using K = decltype(tag);
    const K* rows = typed_ptr<K>(keys);
#if AQUA_HAS_X86_SIMD
#define AQUA_ROWS_CASES(ISA)                                                                 \
  switch (heads) {                                                                           \
    case 1:                                                                                  \
      return ISA::score_token_rows<1, K>(rows, ld, count, q, d, scores, score_stride, side); \
    case 2:                                                                                  \
      return ISA::score_token_rows<2, K>(rows, ld, count, q, d, scores, score_stride, side); \
    case 3:                                                                                  \
      return ISA::score_token_rows<3, K>(rows, ld, count, q, d, scores, score_stride, side); \
    default:                                                                                 \
      return ISA::score_token_rows<4, K>(rows, ld, count, q, d, scores, score_stride, side); \
  }
    if (has_avx512f() && d % 16 == 0) AQUA_ROWS_CASES(avx512)
    if (has_avx2_fma() && d % 8 == 0) AQUA_ROWS_CASES(avx2)
#undef AQUA_ROWS_CASES
#endif
    for (int h = 0; h < heads; ++h)
      for (index_t j = 0; j < count; ++j) {
        float acc = 0;
        for (index_t c = 0; c < d; ++c) acc += q[h * d + c] * static_cast<float>(rows[j * ld + c]);
        scores[h * score_stride + j] = acc;
      }
  });
}

/// acc = alpha * acc + p V for `heads` (<= 4) heads over cnt value rows (elements of value_type,
/// `ld` elements apart; ld < 0 means d).
template <class = void>
inline void value_dispatch(int heads, storage_type value_type, const unsigned char* v, index_t d, index_t cnt,
                           const float* p, index_t p_stride, float* acc, index_t acc_stride,
                           const float* alpha, index_t ld = -1, const rows_l2_prefetch& side = {}) {
  if (ld < 0) ld = d;
  visit_storage(value_type, [&](auto tag) {
    using V = decltype(tag);
    const V* rows = typed_ptr<V>(v);
#if AQUA_HAS_X86_SIMD
    if (has_avx512f() && d % 16 == 0) {
      switch (heads) {
        case 1:
          return avx512::value_chunk<1, avx512_ops::value_vectors(1)>(rows, d, cnt, p, p_stride, acc,
                                                                      acc_stride, alpha, ld, side);
        case 2:
          return avx512::value_chunk<2, avx512_ops::value_vectors(2)>(rows, d, cnt, p, p_stride, acc,
                                                                      acc_stride, alpha, ld, side);
        case 3:
          return avx512::value_chunk<3, avx512_ops::value_vectors(3)>(rows, d, cnt, p, p_stride, acc,
                                                                      acc_stride, alpha, ld, side);
        default:
          return avx512::value_chunk<4, avx512_ops::value_vectors(4)>(rows, d, cnt, p, p_stride, acc,
                                                                      acc_stride, alpha, ld, side);
      }
    }
    if (has_avx2_fma() && d % 8 == 0) {
      switch (heads) {
        case 1:
          return avx2::value_chunk<1, 8>(rows, d, cnt, p, p_stride, acc, acc_stride, alpha, ld, side);
        case 2:
          return avx2::value_chunk<2, 4>(rows, d, cnt, p, p_stride, acc, acc_stride, alpha, ld, side);
        case 3:
          return avx2::value_chunk<3, 2>(rows, d, cnt, p, p_stride, acc, acc_stride, alpha, ld, side);
        default:
          return avx2::value_chunk<4, 2>(rows, d, cnt, p, p_stride, acc, acc_stride, alpha, ld, side);
      }
    }
#endif
    switch (heads) {
      case 1:
        return value_portable<1>(rows, d, cnt, p, p_stride, acc, acc_stride, alpha, ld);
      case 2:
        return value_portable<2>(rows, d, cnt, p, p_stride, acc, acc_stride, alpha, ld);
      case 3:
        return value_portable<3>(rows, d, cnt, p, p_stride, acc, acc_stride, alpha, ld);
      default:
        return value_portable<4>(rows, d, cnt, p, p_stride, acc, acc_stride, alpha, ld);
    }
  });
}

}  // namespace detail
}  // namespace aqua
