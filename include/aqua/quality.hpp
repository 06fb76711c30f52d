// How close AQUA decode is to exact attention, for given queries and cache: relative L2 error of
// the outputs, and whether the most attended tokens agree. Used by tests, benchmarks and examples.
#pragma once

#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>
#include <numeric>
#include <vector>

#include "aqua/attention.hpp"
#include "aqua/eigen.hpp"
#include "aqua/kv_cache.hpp"
#include "aqua/select.hpp"
#include "aqua/tensor_view.hpp"

namespace aqua {

struct attention_quality {
  /// ||out_aqua - out_exact||_2 / ||out_exact||_2 over all query heads.
  double rel_l2_error = 0;
  /// Fraction of query heads whose most attended token is the same.
  double top1_agreement = 0;
  /// Mean over query heads of |top10_aqua ∩ top10_exact| / min(10, N).
  double top10_agreement = 0;
};

namespace detail {

/// Indices of the `count` largest entries (ties: lower index first), in that order.
template <class T>
std::vector<index_t> top_indices(const T* x, index_t n, index_t count) {
  std::vector<index_t> idx(static_cast<std::size_t>(n));
  std::iota(idx.begin(), idx.end(), index_t{0});
  std::partial_sort(idx.begin(), idx.begin() + count, idx.end(),
                    [x](index_t a, index_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); });
  idx.resize(static_cast<std::size_t>(count));
  return idx;
}

/// Exact attention over the cache, written out in double and sharing nothing with the decode
/// kernels: for query head h (KV head h / g), q~ = q P over the r kept dims (the cache's basis, or q
/// itself for an identity cache), logits scale * q~ . k~_j over every stored token, softmax (max
/// subtracted), out = sum_j p_j v_j. With r = d and an orthogonal P this is exact attention on
/// the raw keys. out [hq * d] and logits [hq * n] are resized.
template <class = void>
inline void exact_attention_over_cache(matrix_view<const float> q, const kv_cache& cache, double scale,
                                       std::vector<double>& out, std::vector<double>& logits) {
  const index_t hq = q.extent(0), d = q.extent(1), n = cache.size(), r = cache.rank();
  const index_t g = hq / cache.kv_heads();
  out.assign(static_cast<std::size_t>(hq * d), 0.0);
  logits.assign(static_cast<std::size_t>(hq * n), 0.0);
  std::vector<double> qt(static_cast<std::size_t>(r));
  for (index_t h = 0; h < hq; ++h) {
    const index_t kv = h / g;
    const row_matrix<float>* basis = cache.projection(kv);
    for (index_t c = 0; c < r; ++c) {
      double x = 0;
      if (basis == nullptr) {
        x = double(q(h, c));
      } else {
        for (index_t i = 0; i < d; ++i) x += double(q(h, i)) * double((*basis)(i, c));
      }
      qt[static_cast<std::size_t>(c)] = x;
    }
    double* lg = logits.data() + h * n;
    double mx = -std::numeric_limits<double>::infinity();
    for (index_t j = 0; j < n; ++j) {
      double dot = 0;
      for (index_t c = 0; c < r; ++c) dot += qt[static_cast<std::size_t>(c)] * double(cache.key(kv, j, c));
      lg[j] = scale * dot;
      mx = std::max(mx, lg[j]);
    }
    double sum = 0;
    std::vector<double> p(static_cast<std::size_t>(n));
    for (index_t j = 0; j < n; ++j) sum += (p[static_cast<std::size_t>(j)] = std::exp(lg[j] - mx));
    double* o = out.data() + h * d;
    for (index_t j = 0; j < n; ++j) {
      const double w = p[static_cast<std::size_t>(j)] / sum;
      for (index_t c = 0; c < d; ++c) o[c] += w * double(cache.value(kv, j, c));
    }
  }
}

}  // namespace detail

/// Compares aqua_decode(q, cache, select, options) with exact attention over the same cache,
/// computed in double by detail::exact_attention_over_cache (its own loops, not the decode engine:
/// exact when the cache keeps r = d dims). Attended tokens are ranked per query head by their
/// logits (softmax preserves the order): the exact ones in double, AQUA's as its kernel computed
/// them; ties go to the lower token index.
template <class = void>
inline attention_quality aqua_decode_quality(matrix_view<const float> q, const kv_cache& cache,
                                             const selection_spec& select, const aqua_options& options = {}) {
  constexpr const char* fn = "aqua::aqua_decode_quality";
  detail::require_data(q, fn, "q");
  detail::validate_cache_queries(q.extent(0), q.extent(1), cache, fn);
  const index_t hq = q.extent(0), d = q.extent(1), n = cache.size();
  AQUA_CHECK(
      options.window == 0 && options.softcap == 0 && options.sinks.size() == 0 && options.mask.size() == 0,
      fn, ": the exact reference has no window, softcap, sinks or mask; compare without them");
  std::vector<float> approx(static_cast<std::size_t>(hq * d)), logits(static_cast<std::size_t>(hq * n));
  aqua_options approx_options = options;
  approx_options.profile = nullptr;
  approx_options.lse = {};
  approx_options.prefill_lse = {};
  approx_options.logits = make_view(logits.data(), hq, n);
  aqua_decode(q, cache, select, make_view(approx.data(), hq, d), approx_options);
  std::vector<double> exact, exact_logits;
  detail::exact_attention_over_cache(q, cache, detail::resolve_scale(options.scale, d, fn), exact,
                                     exact_logits);
  attention_quality result;
  double diff = 0, ref = 0;
  for (std::size_t i = 0; i < exact.size(); ++i) {
    diff += (double(approx[i]) - exact[i]) * (double(approx[i]) - exact[i]);
    ref += exact[i] * exact[i];
  }
  result.rel_l2_error = std::sqrt(diff) / std::max(std::sqrt(ref), 1e-300);
  const index_t top = std::min<index_t>(10, n);
  for (index_t h = 0; h < hq; ++h) {
    auto e = detail::top_indices(exact_logits.data() + h * n, n, top);
    auto a = detail::top_indices(logits.data() + h * n, n, top);
    result.top1_agreement += e[0] == a[0] ? 1.0 : 0.0;
    std::sort(e.begin(), e.end());
    std::sort(a.begin(), a.end());
    std::vector<index_t> both;
    std::set_intersection(e.begin(), e.end(), a.begin(), a.end(), std::back_inserter(both));
    result.top10_agreement += double(both.size()) / double(top);
  }
  result.top1_agreement /= double(hq);
  result.top10_agreement /= double(hq);
  return result;
}

}  // namespace aqua
