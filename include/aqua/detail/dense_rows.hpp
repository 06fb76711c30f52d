// Exact dense decode over token-major engine buffers: k, v [Hkv, N, d] with unit inner stride
// and any token stride, in f32, bf16 or f16, read in place (the views path of aqua::dense_decode).
// Per KV head, its g query heads go in groups of up to 4 that share every key and value load:
// scores over a chunk of tokens, an online softmax update, then the chunk's values, so keys and
// values stream once, sequentially, with the scores in L1.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "aqua/detail/aqua_kernels.hpp"
#include "aqua/detail/parallel.hpp"
#include "aqua/detail/simd.hpp"
#include "aqua/float16.hpp"
#include "aqua/tensor_view.hpp"

namespace aqua {
namespace detail {

/// Tokens per chunk: 4 heads x 256 scores stay in L1 between the score and the value pass.
constexpr index_t dense_rows_chunk = 256;
/// Tokens per chunk when heads interleave per token: at d = 128 and 8 heads, 32 tokens of keys
/// and values are 256 KB, which stay in L2 from the first head's pass to the last's (32 measured
/// a little ahead of 64 and 128 once each pass brings the next head's rows into L2).
constexpr index_t dense_rows_interleaved_chunk = 32;

/// One query head (scaled query q, d floats) in double, probabilities normalised before the values
/// are summed: the slow path for the rare head whose float value accumulator overflowed.
template <class = void>
inline void dense_rows_head_double(const float* q, index_t d, storage_type key_type,
                                   const unsigned char* keys, index_t k_ld, storage_type value_type,
                                   const unsigned char* values, index_t v_ld, index_t n, const float* mask,
                                   index_t mask_stride, float* out, index_t out_inner) {
  std::vector<double> sc(static_cast<std::size_t>(n));
  double mx = -std::numeric_limits<double>::infinity();
  for (index_t j = 0; j < n; ++j) {
    double dot = 0;
    for (index_t c = 0; c < d; ++c) dot += double(q[c]) * load_element(keys, key_type, j * k_ld + c);
    if (mask) dot += mask[j * mask_stride];
    sc[static_cast<std::size_t>(j)] = dot;
    mx = std::max(mx, dot);
  }
  double total = 0;
  for (double& x : sc) total += (x = std::exp(x - mx));
  std::vector<double> acc(static_cast<std::size_t>(d), 0.0);
  for (index_t j = 0; j < n; ++j) {
    const double p = sc[static_cast<std::size_t>(j)] / total;
    if (p == 0) continue;
    for (index_t c = 0; c < d; ++c)
      acc[static_cast<std::size_t>(c)] += p * load_element(values, value_type, j * v_ld + c);
  }
  for (index_t c = 0; c < d; ++c) out[c * out_inner] = static_cast<float>(acc[static_cast<std::size_t>(c)]);
}

/// Up to 4 query heads of one KV head and their online-softmax state over the chunks seen so far.
struct rows_group {
  index_t kv = 0, h0 = 0;
  int hn = 0;
  std::vector<float> q, acc;  // scaled queries [hn][d]; unnormalised outputs [hn][d]
  float m[4] = {}, alpha[4] = {};
  double l[4] = {};
};

/// The engine buffers of one call, as byte pointers and element strides.
struct rows_source {
  storage_type key_type = storage_type::f32, value_type = storage_type::f32;
  const unsigned char* keys = nullptr;  // token 0 of KV head 0
  const unsigned char* values = nullptr;
  index_t k_head = 0, k_ld = 0, v_head = 0, v_ld = 0;  // elements between heads / between tokens
  index_t n = 0, d = 0;
  const float* mask = nullptr;
  index_t mask_stride = 0;
  const unsigned char* head_keys(index_t kv) const { return keys + kv * k_head * storage_bytes(key_type); }
  const unsigned char* head_values(index_t kv) const {
    return values + kv * v_head * storage_bytes(value_type);
  }
  /// Key (value) rows [t, t + count) of KV head kv, those that exist, as an L2 request.
  rows_l2_prefetch key_rows(index_t kv, index_t t, index_t count) const {
    const index_t b = storage_bytes(key_type);
    return {head_keys(kv) + t * k_ld * b, std::max<index_t>(0, std::min(count, n - t)), k_ld * b, d * b};
  }
  rows_l2_prefetch value_rows(index_t kv, index_t t, index_t count) const {
    const index_t b = storage_bytes(value_type);
    return {head_values(kv) + t * v_ld * b, std::max<index_t>(0, std::min(count, n - t)), v_ld * b, d * b};
  }
};

/// Tokens [t, t + cnt) for one group: scores, the online-softmax update, the values. `scores`
/// holds 4 x dense_rows_chunk floats. The score pass requests `during_scores` into L2 as it goes,
/// the value pass `during_values`: the rows of the stream the next pass reads, so that DRAM keeps
/// serving two streams instead of one per pass with a stall at each change.
template <class = void>
inline void rows_step(rows_group& g, const rows_source& src, index_t t, index_t cnt, float* scores,
                      const rows_l2_prefetch& during_scores, const rows_l2_prefetch& during_values) {
  constexpr index_t C = dense_rows_chunk;
  const index_t d = src.d;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const index_t kb = storage_bytes(src.key_type), vb = storage_bytes(src.value_type);
  const unsigned char* values = src.head_values(g.kv) + t * src.v_ld * vb;
  score_rows_dispatch(g.hn, src.key_type, src.head_keys(g.kv) + t * src.k_ld * kb, src.k_ld, cnt, g.q.data(),
                      d, scores, C, during_scores);
  bool any = false;
  for (int h = 0; h < g.hn; ++h) {
    float* s = scores + h * C;
    if (src.mask)
      for (index_t j = 0; j < cnt; ++j) s[j] += src.mask[(t + j) * src.mask_stride];
    const float mn = std::max(g.m[h], row_max(s, cnt));
    if (!(mn > neg_inf) && !std::isnan(mn)) {
      // Every logit so far is -inf: this chunk adds nothing (zero probabilities).
      std::fill(s, s + cnt, 0.0f);
      g.alpha[h] = 1.0f;
      continue;
    }
    any = true;
    const float alpha = g.m[h] == neg_inf ? 0.0f : std::exp(g.m[h] - mn);
    const double sum = exp_shift_sum(s, cnt, mn);
    g.l[h] = g.l[h] * alpha + sum;
    g.alpha[h] = alpha;
    g.m[h] = mn;
  }
  if (any)
    value_dispatch(g.hn, src.value_type, values, d, cnt, scores, C, g.acc.data(), d, g.alpha, src.v_ld,
                   during_values);
}

/// The group's outputs: acc / l per head (zeros for a fully masked head, NaN carried through).
template <class = void>
inline void rows_finish(const rows_group& g, const rows_source& src, float* out, index_t out_stride,
                        index_t out_inner, const vector_view<float>& lse) {
  const index_t d = src.d;
  for (int h = 0; h < g.hn; ++h) {
    if (lse.size()) lse.data()[(g.h0 + h) * lse.stride(0)] = log_sum_exp(g.m[h], g.l[h]);
    float* o = out + (g.h0 + h) * out_stride;
    const float* a = g.acc.data() + h * d;
    bool finite = true;
    for (index_t c = 0; c < d; ++c) finite = finite && std::isfinite(a[c]);
    if (!finite && std::isfinite(g.m[h]) && std::isfinite(g.l[h])) {
      // Finite logits but a non-finite float accumulator: the unnormalised value sum overflowed
      // (values near FLT_MAX; the exact output is a weighted mean, within range). Redo this
      // head in double, off the hot path.
      dense_rows_head_double(g.q.data() + h * d, d, src.key_type, src.head_keys(g.kv), src.k_ld,
                             src.value_type, src.head_values(g.kv), src.v_ld, src.n, src.mask,
                             src.mask_stride, o, out_inner);
      continue;
    }
    // l = 0: every logit was -inf (zeros out); a NaN l carries a NaN input through.
    const float inv = g.l[h] == 0 ? 0.0f : static_cast<float>(1.0 / g.l[h]);
    for (index_t c = 0; c < d; ++c) o[c * out_inner] = a[c] * inv;
  }
}

/// Dense decode of q [Hq, d] over token-major k, v [Hkv, N, d] (unit inner stride, elements K and
/// V). Workers take whole KV heads (every thread count gives bitwise equal results) and walk the
/// tokens chunk by chunk, all their heads per chunk: where an engine interleaves heads per token
/// ([N][Hkv][d]) the heads of a token share its pages and lines instead of each sweeping the whole
/// buffer at a stride.
template <class K, class V, class Shape>
void dense_decode_rows(const matrix_view<const float>& q, const tensor3_view<const K>& k,
                       const tensor3_view<const V>& v, const matrix_view<float>& out, const Shape& s,
                       executor& exec, const vector_view<const float>& mask,
                       const vector_view<float>& lse = {}) {
  rows_source src;
  src.key_type = storage_of<K>::value;
  src.value_type = storage_of<V>::value;
  src.keys = reinterpret_cast<const unsigned char*>(k.data());
  src.values = reinterpret_cast<const unsigned char*>(v.data());
  src.k_head = k.stride(0);
  src.k_ld = k.stride(1);
  src.v_head = v.stride(0);
  src.v_ld = v.stride(1);
  src.n = s.n;
  src.d = s.d;
  src.mask = mask.size() ? mask.data() : nullptr;
  src.mask_stride = mask.size() ? mask.stride(0) : 0;
  parallel_for(s.hkv, exec, [&](index_t begin, index_t end, int) {
    std::vector<rows_group> groups;
    for (index_t kv = begin; kv < end; ++kv)
      for (index_t hb = 0; hb < s.group; hb += 4) {
        rows_group g;
        g.kv = kv;
        g.h0 = kv * s.group + hb;
        g.hn = static_cast<int>(std::min<index_t>(4, s.group - hb));
        g.q.resize(static_cast<std::size_t>(g.hn * s.d));
        g.acc.assign(static_cast<std::size_t>(g.hn * s.d), 0.0f);
        for (int h = 0; h < g.hn; ++h) {
          for (index_t c = 0; c < s.d; ++c)
            g.q[static_cast<std::size_t>(h * s.d + c)] =
                static_cast<float>(q.data()[(g.h0 + h) * q.stride(0) + c * q.stride(1)] * s.scale);
          g.m[h] = -std::numeric_limits<float>::infinity();
        }
        groups.push_back(std::move(g));
      }
    // Heads interleaved per token (their rows closer than a token's): shorter chunks, so the rows
    // the first head's pass brings in stay in L2 for the other heads' passes.
    const bool interleaved = end - begin > 1 && src.k_head < src.k_ld && src.v_head < src.v_ld;
    const index_t chunk = interleaved ? dense_rows_interleaved_chunk : dense_rows_chunk;
    std::vector<float> scores(static_cast<std::size_t>(4 * dense_rows_chunk));
    if (interleaved) {
      for (index_t t = 0; t < s.n; t += chunk) {
        const index_t cnt = std::min(chunk, s.n - t);
        for (std::size_t i = 0; i < groups.size(); ++i) {
          // While this head reads its strided rows of the chunk, the next KV head's rows of the
          // chunk (or the first head's of the next chunk) come into L2: keys during the scores,
          // values during the value pass.
          std::size_t next = i + 1;
          while (next < groups.size() && groups[next].kv == groups[i].kv) ++next;
          const index_t nkv = next < groups.size() ? groups[next].kv : groups[0].kv;
          const index_t nt = next < groups.size() ? t : t + chunk;
          rows_step(groups[i], src, t, cnt, scores.data(), src.key_rows(nkv, nt, chunk),
                    src.value_rows(nkv, nt, chunk));
        }
      }
    } else {
      // Heads apart: one group's keys and values as two long sequential streams, which the
      // prefetchers (hardware, and the kernels' rows-ahead requests) follow across chunks.
      for (auto& g : groups)
        for (index_t t = 0; t < s.n; t += chunk)
          rows_step(g, src, t, std::min(chunk, s.n - t), scores.data(), src.value_rows(g.kv, t, chunk),
                    src.key_rows(g.kv, t + chunk, chunk));
    }
    for (const auto& g : groups) rows_finish(g, src, out.data(), out.stride(0), out.stride(1), lse);
  });
}

}  // namespace detail
}  // namespace aqua
