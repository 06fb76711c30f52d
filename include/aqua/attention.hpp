// Attention entry points: the exact dense attention that every other kernel is tested against
// (decode: one query token per head; prefill: M query tokens, causal or not), and AQUA attention
// over the projected, tiled kv_cache (see the AQUA section below).
//
// Shapes (all views may be strided; extents are checked, strides are free):
//   decode   q [Hq, d]      k, v [Hkv, N, d]   out [Hq, d]      mask [N]     (optional, additive)
//   prefill  q [Hq, M, d]   k, v [Hkv, N, d]   out [Hq, M, d]   mask [M, N]  (optional, additive)
// Hq must be a multiple of Hkv; query head h reads KV head h / (Hq / Hkv) (GQA; MHA is Hq == Hkv,
// MQA is Hkv == 1). In causal prefill the M queries are the last M of the N positions: query i
// sees keys 0 .. N - M + i.
//
// Numerics: logits are scale * q.k (+ mask); softmax subtracts the row maximum, so logits of any
// finite magnitude are safe; the normaliser is summed in double for float inputs. A row whose
// logits are all -inf (fully masked) outputs zeros. Queries must be finite (checked: aqua::error).
// Keys and values are not scanned (that would double the memory traffic of decode): a NaN there
// propagates to the outputs of the heads that read it. `out` must not overlap the inputs.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <optional>
#include <sstream>
#include <vector>

#include "aqua/config.hpp"
#include "aqua/detail/aqua_engine.hpp"
#include "aqua/detail/dense_rows.hpp"
#include "aqua/detail/parallel.hpp"
#include "aqua/detail/simd.hpp"
#include "aqua/detail/softmax.hpp"
#include "aqua/detail/validate.hpp"
#include "aqua/eigen.hpp"
#include "aqua/executor.hpp"
#include "aqua/kv_cache.hpp"
#include "aqua/select.hpp"
#include "aqua/selection_spec.hpp"
#include "aqua/tensor_view.hpp"

namespace aqua {

/// Optional per-call measurements (filled when a pointer is passed in the options). Seconds are
/// CPU seconds of the worker threads (where the platform reports them), summed over workers.
struct attention_profile {
  double select_seconds = 0, score_seconds = 0, softmax_seconds = 0, value_seconds = 0;
  /// Decode: fraction of the key tiles (bytes) of the cache that the call read.
  double key_fraction_read = 0;
};

namespace detail {
struct workspace_access;
}  // namespace detail

/// Reusable scratch for AQUA calls: pass one in the options to avoid per-call allocation. One
/// workspace serves one call at a time (calls running concurrently need one each). Opaque: what
/// it holds depends on the shapes and kernels of the calls it served.
class aqua_workspace {
private:
  friend struct detail::workspace_access;
  detail::engine_workspace scratch_;
};

namespace detail {

struct workspace_access {
  static engine_workspace& scratch(aqua_workspace& w) noexcept { return w.scratch_; }
};

inline attention_profile public_profile(const phase_times& t) noexcept {
  attention_profile p;
  p.select_seconds = t.select_seconds;
  p.score_seconds = t.score_seconds;
  p.softmax_seconds = t.softmax_seconds;
  p.value_seconds = t.value_seconds;
  p.key_fraction_read = t.key_fraction_read;
  return p;
}

}  // namespace detail

/// Options of every attention entry point (aqua_options adds the selection mode).
struct attention_options {
  /// Multiplies q.k; unset means 1 / sqrt(d).
  std::optional<double> scale;
  /// Prefill only: query i sees keys 0 .. N - M + i. Ignored by decode.
  bool causal = true;
  /// Workers for this call (the calling thread included). Above 1 without `exec`, the call runs
  /// on a process-wide aqua::thread_pool of that size, started by the first such call and reused
  /// (it lives until the process exits; calls on it from several threads take turns).
  int threads = 1;
  /// The engine's own threads (see aqua/executor.hpp); then `threads` must stay 1.
  executor* exec = nullptr;
  /// Reusable scratch for the calls over a kv_cache; without one each such call allocates its own.
  /// Calls over views need none and leave it alone.
  aqua_workspace* workspace = nullptr;
  /// When set, filled with the time of the call's phases and (decode over a cache) the fraction of
  /// key bytes read.
  attention_profile* profile = nullptr;
  /// Decode only, when non-empty: lse[h] receives the log-sum-exp (natural log) of query head h's
  /// scaled scores, log sum_j exp(scale q_h.k_j + mask_j) (AQUA: over the selected dims), -inf
  /// when every key is masked out: the weight of this result in aqua::merge_attention.
  vector_view<float> lse;
  /// Prefill only, when non-empty: prefill_lse(h, i) [Hq, M] receives the log-sum-exp of query
  /// (h, i)'s scaled scores over the keys it sees.
  matrix_view<float> prefill_lse;
  /// Decode over a cache only, when non-empty: logits(h, j) [Hq, N] receives head h's scaled
  /// score of cached token j as the kernel computed it (AQUA: the approximate score over the
  /// selected dims), after the model features below; -inf where masked or outside the window.
  matrix_view<float> logits;

  // Model features of attention over a kv_cache (aqua_decode, dense_decode(cache), aqua_prefill
  // and the batched decode; the entry points over engine buffers take only their mask argument).
  // Applied to each scaled score s in this order: soft-capping, the additive mask, the window;
  // then the sinks join the softmax. AQUA applies them to its approximate scores.

  /// Sliding window (Mistral, Gemma 2 / 3 local layers): W > 0 lets the query at position p
  /// attend to positions p - W + 1 .. p only (decode: the last W cached tokens; the tokens before
  /// the window are not read). 0: every position.
  index_t window = 0;
  /// Logit soft-capping (Gemma 2): cap > 0 replaces s by cap * tanh(s / cap). 0: off.
  double softcap = 0;
  /// Attention sinks (gpt-oss), when non-empty: [Hq], one logit per query head that joins the
  /// head's softmax normaliser without a value, so the head may attend to nothing. -inf: no sink.
  /// The log-sum-exp outputs include it: when merging parts of a context, give it to one part.
  vector_view<const float> sinks;
  /// Decode over a cache, when non-empty: an additive mask [N] over the cached positions (finite
  /// values or -inf). A head whose every position is masked (and has no sink) outputs zeros.
  vector_view<const float> mask;
  /// Prefill over a cache, when non-empty: an additive mask [M, N] (query i, cached position j).
  matrix_view<const float> prefill_mask;
};

namespace detail {

/// Shape facts shared by the attention kernels after validation.
struct attention_shape {
  index_t hq = 0, hkv = 0, group = 0, n = 0, m = 0, d = 0;
  double scale = 0;
};

template <class T>
double resolve_scale(const attention_options& opt, index_t d, const char* fn) {
  if (!opt.scale) return 1.0 / std::sqrt(static_cast<double>(d));
  AQUA_CHECK(std::isfinite(*opt.scale), fn, ": scale must be finite, got ", *opt.scale);
  return *opt.scale;
}

template <class K, class V>
void validate_kv(const tensor3_view<const K>& k, const tensor3_view<const V>& v, index_t hq, index_t d,
                 const char* fn, attention_shape& s) {
  require_data(k, fn, "k");
  require_data(v, fn, "v");
  s.hkv = k.extent(0);
  s.n = k.extent(1);
  AQUA_CHECK(s.hkv >= 1, fn, ": k has shape ", shape_string(k), "; it needs at least one KV head");
  AQUA_CHECK(hq % s.hkv == 0, fn, ": the number of query heads (", hq,
             ") must be a multiple of the number of KV heads (", s.hkv, ")");
  AQUA_CHECK(s.n >= 1, fn, ": the KV cache is empty (k has shape ", shape_string(k),
             "); attention needs at least one key");
  require_extent(k, 2, d, fn, "k", "head dim (must match q)");
  AQUA_CHECK(v.extent(0) == s.hkv && v.extent(1) == s.n && v.extent(2) == d, fn, ": v has shape ",
             shape_string(v), " but k has shape ", shape_string(k), " and q has head dim ", d,
             "; v must be [Hkv, N, d] like k");
  s.group = hq / s.hkv;
}

/// Vectorised for float (same semantics as softmax_inplace), generic otherwise.
/// lse, when not null, receives the row's log-sum-exp.
inline void softmax_row(float* row, index_t n, float* lse) {
  softmax_inplace_fast(row, n, lse);
}
inline void softmax_row(double* row, index_t n, float* lse) {
  double row_max = -std::numeric_limits<double>::infinity();
  if (lse)
    for (index_t j = 0; j < n; ++j) row_max = std::max(row_max, row[j]);
  const double sum = softmax_inplace(row, n);
  if (lse) *lse = log_sum_exp(row_max, sum);
}

/// Output rows = softmax(scale * Q K^T + mask) V for one block of queries against the first
/// `visible` keys of one KV head. `first_query_position` is the sequence position of the block's
/// first row (causal prefill); pass a negative value for no causal mask. With lse, row i's
/// log-sum-exp goes to lse[i * lse_stride].
template <class T, class KeyRows, class ValueRows>
void dense_block(const strided_map<const T>& q_rows, const KeyRows& keys, const ValueRows& values,
                 strided_map<T>& out_rows, index_t visible, double scale, const T* mask,
                 index_t mask_row_stride, index_t mask_col_stride, index_t first_query_position,
                 row_matrix<T>& logits, attention_profile* prof, float* lse, index_t lse_stride) {
  const index_t rows = q_rows.rows();
  auto t_score = prof ? profile_clock::now() : profile_clock::time_point();
  logits.resize(rows, visible);
  logits.noalias() = q_rows * keys.topRows(visible).transpose();
  logits *= static_cast<T>(scale);
  auto t_soft = prof ? profile_clock::now() : profile_clock::time_point();
  const T neg_inf = -std::numeric_limits<T>::infinity();
  for (index_t i = 0; i < rows; ++i) {
    T* row = logits.row(i).data();
    if (mask != nullptr) {
      const T* mrow = mask + i * mask_row_stride;
      for (index_t j = 0; j < visible; ++j) row[j] += mrow[j * mask_col_stride];
    }
    if (first_query_position >= 0) {
      for (index_t j = first_query_position + i + 1; j < visible; ++j) row[j] = neg_inf;
    }
    softmax_row(row, visible, lse ? lse + i * lse_stride : nullptr);
  }
  auto t_value = prof ? profile_clock::now() : profile_clock::time_point();
  out_rows.noalias() = logits * values.topRows(visible);
  if (prof) {
    prof->score_seconds += std::chrono::duration<double>(t_soft - t_score).count();
    prof->softmax_seconds += std::chrono::duration<double>(t_value - t_soft).count();
    prof->value_seconds += seconds_since(t_value);
  }
}

template <class T>
strided_map<const T> head_rows(const tensor3_view<const T>& t, index_t head, index_t first_row,
                               index_t rows) {
  return as_eigen(matrix_view<const T>(t.data() + head * t.stride(0) + first_row * t.stride(1),
                                       {rows, t.extent(2)}, {t.stride(1), t.stride(2)}));
}

template <class T>
using unit_stride_rows = Eigen::Map<const row_matrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

// Calls body(keys, values) with the head's rows of k and v as Eigen maps. When both have unit
// inner stride (the usual engine layout) the maps say so at compile time: Eigen's products then
// read them in place, where a runtime inner stride makes them copy all N x d keys first.
template <class T, class Body>
void with_head_rows(const tensor3_view<const T>& k, const tensor3_view<const T>& v, index_t head,
                    index_t rows, Body&& body) {
  if (k.stride(2) == 1 && v.stride(2) == 1) {
    const index_t d = k.extent(2);
    body(unit_stride_rows<T>(k.data() + head * k.stride(0), rows, d, Eigen::OuterStride<>(k.stride(1))),
         unit_stride_rows<T>(v.data() + head * v.stride(0), rows, d, Eigen::OuterStride<>(v.stride(1))));
  } else {
    body(head_rows(k, head, 0, rows), head_rows(v, head, 0, rows));
  }
}

}  // namespace detail

namespace detail {

/// A decode call writes options.lse and a prefill call options.prefill_lse: the other one set is a
/// mistake (an output that would never be written), not a no-op.
inline void reject_prefill_lse(const attention_options& options, const char* fn) {
  AQUA_CHECK(options.prefill_lse.size() == 0, fn,
             ": options.prefill_lse is a prefill output; decode writes its log-sum-exp to options.lse");
}
inline void reject_decode_lse(const attention_options& options, const char* fn) {
  AQUA_CHECK(options.lse.size() == 0, fn,
             ": options.lse is a decode output; prefill writes its log-sum-exp to options.prefill_lse");
}

/// The entry points over engine buffers take their mask as an argument and none of the cache-path
/// features: set, they would be ignored, so they are an error.
inline void reject_cache_features(const attention_options& options, const char* fn) {
  AQUA_CHECK(options.window == 0 && options.softcap == 0 && options.sinks.size() == 0 &&
                 options.mask.size() == 0 && options.prefill_mask.size() == 0 && options.logits.size() == 0,
             fn,
             ": options.window, softcap, sinks, mask, prefill_mask and logits apply to attention over a "
             "kv_cache; over engine buffers pass the mask as the mask argument");
}

/// The window, softcap and sinks of a call over caches with hq query heads, as the engine's
/// plain descriptor (the masks are added by the caller, which knows the call's shape).
template <class = void>
inline score_features validate_features(const attention_options& options, index_t hq, const char* fn) {
  AQUA_CHECK(options.window >= 0, fn, ": window must be at least 0 (0: no window), got ", options.window);
  AQUA_CHECK(std::isfinite(options.softcap) && options.softcap >= 0 &&
                 options.softcap <= std::numeric_limits<float>::max(),
             fn, ": softcap must be finite and at least 0 (0: off), got ", options.softcap);
  require_data(options.sinks, fn, "sinks");
  AQUA_CHECK(options.sinks.size() == 0 || options.sinks.extent(0) == hq, fn, ": sinks has ",
             options.sinks.extent(0), " elements but q has ", hq, " query heads (one sink logit per head)");
  require_each(
      options.sinks, [](float x) { return std::isnan(x) || x == std::numeric_limits<float>::infinity(); },
      [&](float x, const std::string& pos) {
        AQUA_THROW(fn, ": sinks[", pos, "] = ", x, "; a sink logit is finite or -inf (no sink)");
      });
  score_features f;
  f.window = options.window;
  f.softcap = static_cast<float>(options.softcap);
  f.sinks = options.sinks.size() ? options.sinks.data() : nullptr;
  f.sinks_stride = options.sinks.size() ? options.sinks.stride(0) : 0;
  return f;
}

/// The checks every dense decode entry point makes, and the shape facts they yield.
template <class T, class K, class V>
attention_shape validate_dense_decode(const matrix_view<const T>& q, const tensor3_view<const K>& k,
                                      const tensor3_view<const V>& v, const matrix_view<T>& out,
                                      const attention_options& options, const vector_view<const T>& mask,
                                      const char* fn) {
  require_data(q, fn, "q");
  require_data(out, fn, "out");
  resolve_executor(options.exec, options.threads, fn);
  attention_shape s;
  s.hq = q.extent(0);
  s.d = q.extent(1);
  AQUA_CHECK(s.hq >= 1 && s.d >= 1, fn, ": q has shape ", shape_string(q),
             "; it must be [Hq, d] with Hq >= 1 and d >= 1");
  validate_kv(k, v, s.hq, s.d, fn, s);
  AQUA_CHECK(out.extent(0) == s.hq && out.extent(1) == s.d, fn, ": out has shape ", shape_string(out),
             " but q has shape ", shape_string(q));
  AQUA_CHECK(mask.size() == 0 || (mask.extent(0) == s.n), fn, ": mask has length ", mask.extent(0),
             " but the cache holds N = ", s.n, " keys");
  require_data(mask, fn, "mask");
  require_finite(q, fn, "q");
  require_mask_values(mask, fn, "mask");
  require_lse(options.lse, s.hq, fn);
  reject_prefill_lse(options, fn);
  reject_cache_features(options, fn);
  s.scale = resolve_scale<T>(options, s.d, fn);
  return s;
}

/// The checks every dense prefill entry point makes.
template <class T, class K, class V>
attention_shape validate_dense_prefill(const tensor3_view<const T>& q, const tensor3_view<const K>& k,
                                       const tensor3_view<const V>& v, const tensor3_view<T>& out,
                                       const attention_options& options, const matrix_view<const T>& mask,
                                       const char* fn) {
  require_data(q, fn, "q");
  require_data(out, fn, "out");
  resolve_executor(options.exec, options.threads, fn);
  attention_shape s;
  s.hq = q.extent(0);
  s.m = q.extent(1);
  s.d = q.extent(2);
  AQUA_CHECK(s.hq >= 1 && s.m >= 1 && s.d >= 1, fn, ": q has shape ", shape_string(q),
             "; it must be [Hq, M, d] with every extent >= 1");
  validate_kv(k, v, s.hq, s.d, fn, s);
  AQUA_CHECK(s.m <= s.n, fn, ": M = ", s.m, " queries but only N = ", s.n,
             " keys; prefill needs N >= M (the queries are the last M positions)");
  AQUA_CHECK(out.extent(0) == s.hq && out.extent(1) == s.m && out.extent(2) == s.d, fn, ": out has shape ",
             shape_string(out), " but q has shape ", shape_string(q));
  AQUA_CHECK(mask.size() == 0 || (mask.extent(0) == s.m && mask.extent(1) == s.n), fn, ": mask has shape ",
             shape_string(mask), " but must be [M, N] = [", s.m, ", ", s.n, "]");
  require_data(mask, fn, "mask");
  require_finite(q, fn, "q");
  require_mask_values(mask, fn, "mask");
  require_lse(options.prefill_lse, s.hq, s.m, fn);
  reject_decode_lse(options, fn);
  reject_cache_features(options, fn);
  s.scale = resolve_scale<T>(options, s.d, fn);
  return s;
}

template <class K, class V>
void require_unit_inner_stride(const tensor3_view<const K>& k, const tensor3_view<const V>& v,
                               const char* fn) {
  AQUA_CHECK(k.stride(2) == 1 && v.stride(2) == 1, fn,
             ": 16-bit k and v are read in place and need unit inner ", "stride (k has ", k.stride(2),
             ", v has ", v.stride(2), ")");
}

/// Prefill over engine buffers for every element type: per (query head, block of 64 query rows),
/// Eigen products over the head's keys and values (16-bit ones widened to float once per KV head).
template <class T, class K, class V>
void run_dense_prefill(const tensor3_view<const T>& q, const tensor3_view<const K>& k,
                       const tensor3_view<const V>& v, const tensor3_view<T>& out,
                       const attention_options& options, const matrix_view<const T>& mask,
                       const attention_shape& s) {
  // Query rows go in blocks so the logits scratch stays block x N, not M x N.
  constexpr index_t block_rows = 64;
  const index_t blocks_per_head = (s.m + block_rows - 1) / block_rows;
  const matrix_view<float>& lse = options.prefill_lse;
  executor& exec = resolve_executor(options.exec, options.threads, "aqua::dense_prefill");
  std::vector<attention_profile> profiles(static_cast<std::size_t>(exec.workers()));
  parallel_for(s.hq * blocks_per_head, exec, [&](index_t begin, index_t end, int worker) {
    attention_profile* prof = options.profile ? &profiles[static_cast<std::size_t>(worker)] : nullptr;
    row_matrix<T> logits;
    row_matrix<float> wide_k, wide_v;  // 16-bit inputs: this worker's KV head widened
    index_t wide_head = -1;
    for (index_t item = begin; item < end; ++item) {
      const index_t head = item / blocks_per_head, kv = head / s.group;
      const index_t i0 = (item % blocks_per_head) * block_rows;
      const index_t rows = std::min(block_rows, s.m - i0);
      const index_t first_position = s.n - s.m + i0;
      const index_t visible = options.causal ? first_position + rows : s.n;
      auto q_rows = head_rows(q, head, i0, rows);
      auto out_rows = as_eigen(matrix_view<T>(out.data() + head * out.stride(0) + i0 * out.stride(1),
                                              {rows, s.d}, {out.stride(1), out.stride(2)}));
      const T* mask_rows = mask.size() ? mask.data() + i0 * mask.stride(0) : nullptr;
      auto block = [&](const auto& keys, const auto& values) {
        dense_block<T>(q_rows, keys, values, out_rows, visible, s.scale, mask_rows,
                       mask.size() ? mask.stride(0) : 0, mask.size() ? mask.stride(1) : 0,
                       options.causal ? first_position : -1, logits, prof,
                       lse.size() ? lse.data() + head * lse.stride(0) + i0 * lse.stride(1) : nullptr,
                       lse.size() ? lse.stride(1) : 0);
      };
      if constexpr (std::is_same<K, T>::value && std::is_same<V, T>::value) {
        with_head_rows<T>(k, v, kv, s.n, block);
      } else {
        if (wide_head != kv) {
          wide_k.resize(s.n, s.d);
          wide_v.resize(s.n, s.d);
          for (index_t j = 0; j < s.n; ++j)
            for (index_t c = 0; c < s.d; ++c) {
              wide_k(j, c) = static_cast<float>(k.data()[kv * k.stride(0) + j * k.stride(1) + c]);
              wide_v(j, c) = static_cast<float>(v.data()[kv * v.stride(0) + j * v.stride(1) + c]);
            }
          wide_head = kv;
        }
        block(wide_k, wide_v);
      }
    }
  });
  if (options.profile) {
    *options.profile = attention_profile{};
    for (const auto& p : profiles) {
      options.profile->score_seconds += p.score_seconds;
      options.profile->softmax_seconds += p.softmax_seconds;
      options.profile->value_seconds += p.value_seconds;
    }
  }
}

}  // namespace detail

/// Exact dense decode: one query token per query head against the N cached keys and values.
/// Float views with unit inner strides (every engine layout) stream through the SIMD kernel in
/// place; other strides and double go through Eigen products.
template <class T>
void dense_decode(matrix_view<const detail::identity_t<T>> q, tensor3_view<const detail::identity_t<T>> k,
                  tensor3_view<const detail::identity_t<T>> v, matrix_view<T> out,
                  const attention_options& options = {}, vector_view<const detail::identity_t<T>> mask = {}) {
  static_assert(std::is_floating_point<T>::value, "aqua::dense_decode: T must be float or double");
  const detail::attention_shape s =
      detail::validate_dense_decode<T>(q, k, v, out, options, mask, "aqua::dense_decode");
  if constexpr (std::is_same<T, float>::value) {
    if (k.stride(2) == 1 && v.stride(2) == 1) {
      detail::dense_decode_rows(q, k, v, out, s,
                                detail::resolve_executor(options.exec, options.threads, "aqua::dense_decode"),
                                mask, options.lse);
      return;
    }
  }
  // One work item per KV group reads that head's keys once for all of its query heads. The
  // items do not depend on the thread count, so every thread count gives bitwise equal results.
  executor& exec = detail::resolve_executor(options.exec, options.threads, "aqua::dense_decode");
  detail::parallel_for(s.hkv, exec, [&](index_t begin, index_t end, int) {
    row_matrix<T> logits;
    for (index_t kv = begin; kv < end; ++kv) {
      const index_t first_head = kv * s.group, heads = s.group;
      auto q_rows = as_eigen(matrix_view<const T>(q.data() + first_head * q.stride(0), {heads, s.d},
                                                  {q.stride(0), q.stride(1)}));
      auto out_rows = as_eigen(matrix_view<T>(out.data() + first_head * out.stride(0), {heads, s.d},
                                              {out.stride(0), out.stride(1)}));
      detail::with_head_rows<T>(k, v, kv, s.n, [&](const auto& keys, const auto& values) {
        detail::dense_block<T>(
            q_rows, keys, values, out_rows, s.n, s.scale, mask.size() ? mask.data() : nullptr, 0,
            mask.size() ? mask.stride(0) : 0, -1, logits, nullptr,
            options.lse.size() ? options.lse.data() + first_head * options.lse.stride(0) : nullptr,
            options.lse.stride(0));
      });
    }
  });
}

/// Exact dense decode over 16-bit engine buffers: k and v of aqua::bf16 or aqua::f16 elements (one
/// of them may be float), const views with unit inner stride, read in place; computed in float
/// with the same numerics as the float path.
template <class K, class V,
          std::enable_if_t<detail::is_storage_element<K> && detail::is_storage_element<V> &&
                               (detail::is_storage16<K> || detail::is_storage16<V>),
                           int> = 0>
void dense_decode(matrix_view<const float> q, tensor3_view<const K> k, tensor3_view<const V> v,
                  matrix_view<float> out, const attention_options& options = {},
                  vector_view<const float> mask = {}) {
  constexpr const char* fn = "aqua::dense_decode";
  const detail::attention_shape s = detail::validate_dense_decode<float>(q, k, v, out, options, mask, fn);
  detail::require_unit_inner_stride(k, v, fn);
  detail::dense_decode_rows(q, k, v, out, s,
                            detail::resolve_executor(options.exec, options.threads, "aqua::dense_decode"),
                            mask, options.lse);
}

/// Exact dense prefill: M query tokens per query head against N >= M keys and values.
template <class T>
void dense_prefill(tensor3_view<const detail::identity_t<T>> q, tensor3_view<const detail::identity_t<T>> k,
                   tensor3_view<const detail::identity_t<T>> v, tensor3_view<T> out,
                   const attention_options& options = {},
                   matrix_view<const detail::identity_t<T>> mask = {}) {
  static_assert(std::is_floating_point<T>::value, "aqua::dense_prefill: T must be float or double");
  const detail::attention_shape s =
      detail::validate_dense_prefill<T>(q, k, v, out, options, mask, "aqua::dense_prefill");
  detail::run_dense_prefill<T>(q, k, v, out, options, mask, s);
}

/// Exact dense prefill over 16-bit engine buffers (as the 16-bit dense_decode): each KV head's
/// keys and values are widened to float once per worker, then the float products run.
template <class K, class V,
          std::enable_if_t<detail::is_storage_element<K> && detail::is_storage_element<V> &&
                               (detail::is_storage16<K> || detail::is_storage16<V>),
                           int> = 0>
void dense_prefill(tensor3_view<const float> q, tensor3_view<const K> k, tensor3_view<const V> v,
                   tensor3_view<float> out, const attention_options& options = {},
                   matrix_view<const float> mask = {}) {
  constexpr const char* fn = "aqua::dense_prefill";
  const detail::attention_shape s = detail::validate_dense_prefill<float>(q, k, v, out, options, mask, fn);
  detail::require_unit_inner_stride(k, v, fn);
  detail::run_dense_prefill<float>(q, k, v, out, options, mask, s);
}

// ---------------------------------------------------------------------------------------------
// AQUA attention over a kv_cache (float).
//
// Decode: for each query head, q~ = q P (the cache's basis of its KV head), then the selected dims
// S (selection_spec: fixed k, fraction of r, or energy tau; selection_mode: per head, per KV
// group, or whole tiles), then score_j = scale * sum_{i in S} q~_i k~_{j,i} over the stored
// tokens, stable softmax, out = sum_j p_j v_j into the caller's buffer. Only the key tiles that
// hold selected dims are read, each sequentially. With k = r = d this is exact attention.
// Threads: work items are (KV head, token segment); when the threads do not divide the KV heads,
// each head's tokens are split into segments whose partial softmax results (max, normaliser,
// unnormalised output) are merged exactly; results agree across thread counts to float rounding.
// Queries must be finite (checked: aqua::error); the cache rejected non-finite keys and values on
// append, so kernels never scan. Scores accumulate in float; normalisers in double. A non-finite
// result can then only be float overflow (logits beyond +-3.4e38, or weighted value sums beyond
// it): the entry points check `out` after the kernel (Hq x d values) and throw aqua::error.
//
// Prefill: the cache already holds the M new tokens as its last M; q holds their queries
// [Hq, M, d]. Selection is per query position: per_head per (head, query); group one set per
// (KV group, query), from the group's summed magnitudes at that position as in decode; tile whole
// tiles per (head, query). The causal mask applies (query i sees tokens 0 .. N - M + i), and P V
// runs as an Eigen GEMM.
// ---------------------------------------------------------------------------------------------

/// attention_options plus which projected dims each query head reads.
struct aqua_options : attention_options {
  selection_mode mode = selection_mode::group;
};

namespace detail {

/// "sequence s: " in the messages of a batched call (s >= 0), nothing otherwise.
struct sequence_label {
  index_t sequence = -1;
};
inline std::ostream& operator<<(std::ostream& os, const sequence_label& label) {
  return label.sequence < 0 ? os : os << "sequence " << label.sequence << ": ";
}

template <class = void>
inline void validate_cache_queries(index_t hq, index_t d, const kv_cache& cache, const char* fn,
                                   sequence_label where = {}) {
  AQUA_CHECK(hq >= 1, fn, ": q has no query heads");
  AQUA_CHECK(d == cache.head_dim(), fn, ": ", where, "q has head dim ", d, " but the cache holds head dim ",
             cache.head_dim());
  AQUA_CHECK(hq % cache.kv_heads() == 0, fn, ": ", where, "the number of query heads (", hq,
             ") must be a multiple of the number of KV heads (", cache.kv_heads(), ")");
  AQUA_CHECK(!cache.empty(), fn, ": ", where, "the KV cache is empty; attention needs at least one key");
}

/// The inputs of the cache kernels are finite (q is checked at the call, keys and values on
/// append), so a non-finite result can only be float overflow: a logit scale * q~.k~ beyond
/// +-3.4e38, or a sum of attention-weighted values beyond it. Reported instead of returned.
template <int Rank>
void require_no_overflow(const tensor_view<float, Rank>& out, const char* fn) {
  require_each(
      out, [](float x) { return !std::isfinite(x); },
      [&](float x, const std::string& pos) {
        AQUA_THROW(
            fn, ": float overflow: out[", pos, "] = ", x,
            " although q, keys and values are finite; the logits scale * q.k or the attention-weighted "
            "value sums exceed the float range (3.4e38): scale the inputs down");
      });
}

/// An optional token-probability output (decode and prefill): empty, or [Hkv, N] for the cache.
template <class = void>
inline void require_token_probs(const matrix_view<float>& token_probs, const kv_cache& cache, const char* fn,
                                sequence_label where = {}) {
  require_data(token_probs, fn, "token_probs");
  AQUA_CHECK(token_probs.size() == 0 ||
                 (token_probs.extent(0) == cache.kv_heads() && token_probs.extent(1) == cache.size()),
             fn, ": ", where, "token_probs has shape ", shape_string(token_probs),
             " but must be [Hkv, N] = [", cache.kv_heads(), ", ", cache.size(), "]");
}

template <class = void>
inline double resolve_scale(const std::optional<double>& scale, index_t d, const char* fn) {
  if (!scale) return 1.0 / std::sqrt(static_cast<double>(d));
  AQUA_CHECK(std::isfinite(*scale), fn, ": scale must be finite, got ", *scale);
  return *scale;
}

/// Plans jobs [0, count) (their caches and outputs set; q_of(s) gives sequence s's queries [Hq, d])
/// and runs them, filling `profile` when given: the one path of single and batched decode.
template <class QueryOf>
inline void plan_and_run_decode(planned_decode* jobs, index_t count, QueryOf&& q_of,
                                const selection_spec* select, selection_mode mode,
                                const score_features& features, double scale, executor& exec,
                                engine_workspace& ws, attention_profile* profile) {
  if (static_cast<index_t>(ws.plans.size()) < count) ws.plans.resize(static_cast<std::size_t>(count));
  auto t0 = profile ? profile_clock::now() : profile_clock::time_point();
  for (index_t s = 0; s < count; ++s) {
    planned_decode& job = jobs[s];
    plan_decode(q_of(s), job.cache, select ? *select : selection_spec::top_k(job.cache.rank()), mode,
                select == nullptr, scale, features, ws, ws.plans[static_cast<std::size_t>(s)], job.plan);
  }
  const double select_seconds = profile ? seconds_since(t0) : 0.0;
  phase_times times;
  run_decode(jobs, count, exec, ws, profile ? &times : nullptr);
  if (profile) {
    *profile = public_profile(times);
    profile->select_seconds = select_seconds;
  }
}

template <class = void>
inline void decode_on_cache(matrix_view<const float> q, const kv_cache& cache, const selection_spec* select,
                            selection_mode mode, matrix_view<float> out, const attention_options& options,
                            matrix_view<float> token_probs, const char* fn) {
  aqua_workspace* const workspace = options.workspace;
  attention_profile* const profile = options.profile;
  const vector_view<float>& lse = options.lse;
  require_data(q, fn, "q");
  require_data(out, fn, "out");
  executor& runner = resolve_executor(options.exec, options.threads, fn);
  validate_cache_queries(q.extent(0), q.extent(1), cache, fn);
  AQUA_CHECK(out.extent(0) == q.extent(0) && out.extent(1) == q.extent(1), fn, ": out has shape ",
             shape_string(out), " but q has shape ", shape_string(q));
  if (select) validate_selection(*select, cache.rank(), fn);
  require_token_probs(token_probs, cache, fn);
  require_lse(lse, q.extent(0), fn);
  reject_prefill_lse(options, fn);
  score_features features = validate_features(options, q.extent(0), fn);
  AQUA_CHECK(options.prefill_mask.size() == 0, fn,
             ": options.prefill_mask is a prefill input; decode takes its mask in options.mask");
  require_data(options.mask, fn, "mask");
  AQUA_CHECK(options.mask.size() == 0 || options.mask.extent(0) == cache.size(), fn, ": mask has length ",
             options.mask.extent(0), " but the cache holds N = ", cache.size(), " tokens");
  require_mask_values(options.mask, fn, "mask");
  if (options.mask.size()) {
    features.mask = options.mask.data();
    features.mask_col = options.mask.stride(0);
  }
  require_data(options.logits, fn, "logits");
  AQUA_CHECK(options.logits.size() == 0 ||
                 (options.logits.extent(0) == q.extent(0) && options.logits.extent(1) == cache.size()),
             fn, ": logits has shape ", shape_string(options.logits), " but must be [Hq, N] = [", q.extent(0),
             ", ", cache.size(), "]");
  require_finite(q, fn, "q");
  const double scale = resolve_scale(options.scale, q.extent(1), fn);
  engine_workspace local;
  engine_workspace& ws = workspace ? workspace_access::scratch(*workspace) : local;
  planned_decode job;
  job.cache = cache_access::layout(cache);
  job.out = out;
  job.token_probs = token_probs;
  job.logits = options.logits;
  job.lse = lse;
  plan_and_run_decode(
      &job, 1, [&](index_t) { return q; }, select, mode, features, scale, runner, ws, profile);
  require_no_overflow(out, fn);
}

}  // namespace detail

/// Optional per-sequence outputs of a batched decode (aqua_decode_batch, dense_decode_batch).
struct batch_decode_outputs {
  /// Empty, or one view per sequence: token_probs[s] is empty or [Hkv, N_s] for sequence s's
  /// cache, filled as aqua_decode fills its token_probs (the H2O accumulator input).
  vector_view<const matrix_view<float>> token_probs;
  /// Empty, or [S, Hq]: lse(s, h) receives the log-sum-exp of sequence s's head h, as
  /// attention_options::lse does for one sequence.
  matrix_view<float> lse;
};

namespace detail {

template <class = void>
inline void decode_batch_on_caches(tensor3_view<const float> q, vector_view<const kv_cache* const> caches,
                                   const selection_spec* select, selection_mode mode, tensor3_view<float> out,
                                   const attention_options& options, const batch_decode_outputs& outputs,
                                   const char* fn) {
  require_data(q, fn, "q");
  require_data(out, fn, "out");
  require_data(caches, fn, "caches");
  executor& runner = resolve_executor(options.exec, options.threads, fn);
  const index_t count = q.extent(0), hq = q.extent(1), d = q.extent(2);
  AQUA_CHECK(count >= 1 && hq >= 1 && d >= 1, fn, ": q has shape ", shape_string(q),
             "; it must be [S, Hq, d] with every extent >= 1");
  AQUA_CHECK(caches.extent(0) == count, fn, ": ", caches.extent(0), " caches for ", count,
             " sequences of queries (q has shape ", shape_string(q), "); pass one cache per sequence");
  AQUA_CHECK(out.extent(0) == count && out.extent(1) == hq && out.extent(2) == d, fn, ": out has shape ",
             shape_string(out), " but q has shape ", shape_string(q));
  AQUA_CHECK(options.lse.size() == 0 && options.logits.size() == 0, fn,
             ": options.lse and options.logits are outputs of a single-sequence decode; a batched decode "
             "writes its log-sum-exp to outputs.lse [S, Hq]");
  reject_prefill_lse(options, fn);
  const score_features features = validate_features(options, hq, fn);
  AQUA_CHECK(options.mask.size() == 0 && options.prefill_mask.size() == 0, fn,
             ": a mask over cached positions is per sequence; the batched decode takes none (window, "
             "softcap and sinks apply to every sequence)");
  const vector_view<const matrix_view<float>>& token_probs = outputs.token_probs;
  require_data(token_probs, fn, "outputs.token_probs");
  AQUA_CHECK(token_probs.size() == 0 || token_probs.extent(0) == count, fn, ": outputs.token_probs has ",
             token_probs.extent(0), " views for ", count, " sequences; pass one per sequence (or none)");
  const matrix_view<float>& lse = outputs.lse;
  require_data(lse, fn, "outputs.lse");
  AQUA_CHECK(lse.size() == 0 || (lse.extent(0) == count && lse.extent(1) == hq), fn,
             ": outputs.lse has shape ", shape_string(lse), " but must be [S, Hq] = [", count, ", ", hq, "]");
  for (index_t s = 0; s < count; ++s) {
    const kv_cache* cache = caches(s);
    AQUA_CHECK(cache != nullptr, fn, ": caches[", s, "] is null");
    validate_cache_queries(hq, d, *cache, fn, sequence_label{s});
    if (select) validate_selection(*select, cache->rank(), fn);
    if (token_probs.size()) require_token_probs(token_probs(s), *cache, fn, sequence_label{s});
  }
  require_finite(q, fn, "q");
  const double scale = resolve_scale(options.scale, d, fn);
  engine_workspace local;
  engine_workspace& ws = options.workspace ? workspace_access::scratch(*options.workspace) : local;
  ws.jobs.resize(static_cast<std::size_t>(count));
  for (index_t s = 0; s < count; ++s) {
    planned_decode& job = ws.jobs[static_cast<std::size_t>(s)];
    job.cache = cache_access::layout(*caches(s));
    job.out = matrix_view<float>(out.data() + s * out.stride(0), {hq, d}, {out.stride(1), out.stride(2)});
    job.token_probs = token_probs.size() ? token_probs(s) : matrix_view<float>{};
    job.lse = lse.size() ? vector_view<float>(lse.data() + s * lse.stride(0), {hq}, {lse.stride(1)})
                         : vector_view<float>{};
  }
  auto q_of = [&](index_t s) {
    return matrix_view<const float>(q.data() + s * q.stride(0), {hq, d}, {q.stride(1), q.stride(2)});
  };
  plan_and_run_decode(ws.jobs.data(), count, q_of, select, mode, features, scale, runner, ws,
                      options.profile);
  require_no_overflow(out, fn);
}

}  // namespace detail

/// AQUA decode: q [Hq, d] (unprojected), the cache, the selection, out [Hq, d]. Optionally
/// token_probs [Hkv, N] receives, per KV head, the attention probabilities of its stored tokens
/// summed over the group's query heads (the H2O accumulator input).
template <class = void>
inline void aqua_decode(matrix_view<const float> q, const kv_cache& cache, const selection_spec& select,
                        matrix_view<float> out, const aqua_options& options = {},
                        matrix_view<float> token_probs = {}) {
  detail::decode_on_cache(q, cache, &select, options.mode, out, options, token_probs, "aqua::aqua_decode");
}

/// AQUA decode keeping a fixed k dims per query head (or group, or in whole tiles).
template <class = void>
inline void aqua_decode(matrix_view<const float> q, const kv_cache& cache, index_t k, matrix_view<float> out,
                        const aqua_options& options = {}, matrix_view<float> token_probs = {}) {
  aqua_decode(q, cache, selection_spec::top_k(k), out, options, token_probs);
}

/// Dense decode over the cache: every kept dim of every token (exact attention when r = d).
/// The baseline AQUA decode is measured against: same data, same kernels, all tiles read.
template <class = void>
inline void dense_decode(matrix_view<const float> q, const kv_cache& cache, matrix_view<float> out,
                         const attention_options& options = {}, matrix_view<float> token_probs = {}) {
  detail::decode_on_cache(q, cache, nullptr, selection_mode::group, out, options, token_probs,
                          "aqua::dense_decode(cache)");
}

/// Batched AQUA decode: S sequences in one call, sequence s with its own cache caches[s] (any
/// length; the caches of one layer), queries q[s] [Hq, d] and output out[s] [Hq, d]. Each
/// sequence's result is what aqua_decode gives it; the work, split over (sequence, KV head, token
/// range) so that unequal sequences keep every worker busy, is merged exactly. Token probabilities
/// and log-sum-exps come per sequence through `outputs`; options.lse must stay empty.
template <class = void>
inline void aqua_decode_batch(tensor3_view<const float> q, vector_view<const kv_cache* const> caches,
                              const selection_spec& select, tensor3_view<float> out,
                              const aqua_options& options = {}, const batch_decode_outputs& outputs = {}) {
  detail::decode_batch_on_caches(q, caches, &select, options.mode, out, options, outputs,
                                 "aqua::aqua_decode_batch");
}

/// Batched AQUA decode keeping a fixed k dims per query head (or group, or in whole tiles).
template <class = void>
inline void aqua_decode_batch(tensor3_view<const float> q, vector_view<const kv_cache* const> caches,
                              index_t k, tensor3_view<float> out, const aqua_options& options = {},
                              const batch_decode_outputs& outputs = {}) {
  aqua_decode_batch(q, caches, selection_spec::top_k(k), out, options, outputs);
}

/// Batched dense decode over caches: dense_decode(cache) for each of S sequences in one call.
template <class = void>
inline void dense_decode_batch(tensor3_view<const float> q, vector_view<const kv_cache* const> caches,
                               tensor3_view<float> out, const attention_options& options = {},
                               const batch_decode_outputs& outputs = {}) {
  detail::decode_batch_on_caches(q, caches, nullptr, selection_mode::group, out, options, outputs,
                                 "aqua::dense_decode_batch");
}

/// AQUA prefill: q [Hq, M, d] are the queries of the cache's last M tokens; out [Hq, M, d].
template <class = void>
///
/// token_probs [Hkv, N], when non-empty, receives per KV head the attention probability of each
/// cached token summed over the group's query heads and over the last `last_queries` of the M
/// queries (0: all of them), what H2O accumulates (h2o_policy::prefill), so an engine can evict
/// right after the prompt.
inline void aqua_prefill(tensor3_view<const float> q, const kv_cache& cache, const selection_spec& select,
                         tensor3_view<float> out, const aqua_options& options = {},
                         matrix_view<float> token_probs = {}, index_t last_queries = 0) {
  constexpr const char* fn = "aqua::aqua_prefill";
  detail::require_data(q, fn, "q");
  detail::require_data(out, fn, "out");
  executor& exec = detail::resolve_executor(options.exec, options.threads, fn);
  detail::validate_cache_queries(q.extent(0), q.extent(2), cache, fn);
  AQUA_CHECK(q.extent(1) >= 1 && q.extent(1) <= cache.size(), fn, ": M = ", q.extent(1),
             " queries but the cache holds N = ", cache.size(),
             " tokens; append the M new tokens first (the queries are the last M positions)");
  AQUA_CHECK(out.extent(0) == q.extent(0) && out.extent(1) == q.extent(1) && out.extent(2) == q.extent(2), fn,
             ": out has shape ", detail::shape_string(out), " but q has shape ", detail::shape_string(q));
  detail::validate_selection(select, cache.rank(), fn);
  detail::require_lse(options.prefill_lse, q.extent(0), q.extent(1), fn);
  detail::reject_decode_lse(options, fn);
  detail::score_features features = detail::validate_features(options, q.extent(0), fn);
  AQUA_CHECK(options.mask.size() == 0, fn,
             ": options.mask is a decode input; prefill takes its [M, N] mask in options.prefill_mask");
  AQUA_CHECK(options.logits.size() == 0, fn, ": options.logits is a decode output");
  const matrix_view<const float>& mask = options.prefill_mask;
  detail::require_data(mask, fn, "prefill_mask");
  AQUA_CHECK(mask.size() == 0 || (mask.extent(0) == q.extent(1) && mask.extent(1) == cache.size()), fn,
             ": prefill_mask has shape ", detail::shape_string(mask), " but must be [M, N] = [", q.extent(1),
             ", ", cache.size(), "]");
  detail::require_mask_values(mask, fn, "prefill_mask");
  if (mask.size()) {
    features.mask = mask.data();
    features.mask_row = mask.stride(0);
    features.mask_col = mask.stride(1);
  }
  detail::require_token_probs(token_probs, cache, fn);
  AQUA_CHECK(last_queries >= 0 && last_queries <= q.extent(1), fn, ": last_queries = ", last_queries,
             " must lie in [0, M = ", q.extent(1), "] (0: every query)");
  detail::require_finite(q, fn, "q");
  const double scale = detail::resolve_scale(options.scale, q.extent(2), fn);
  detail::engine_workspace local;
  detail::phase_times times;
  detail::run_prefill(q, detail::cache_access::layout(cache), select, options.mode, options.causal, scale,
                      exec, options.workspace ? detail::workspace_access::scratch(*options.workspace) : local,
                      out, options.profile ? &times : nullptr, options.prefill_lse, token_probs,
                      last_queries == 0 ? 0 : q.extent(1) - last_queries, features);
  if (options.profile) *options.profile = detail::public_profile(times);
  detail::require_no_overflow(out, fn);
}

}  // namespace aqua
