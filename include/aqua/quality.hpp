// How close AQUA decode is to exact attention, for given queries and cache: relative L2 error of
// the outputs, and whether the most attended tokens agree. Used by tests, benchmarks and examples.
#pragma once

#include <algorithm>
#include <cmath>
#include <iterator>
#include <numeric>
#include <vector>

#include "aqua/attention.hpp"
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
inline std::vector<index_t> top_indices(const float* x, index_t n, index_t count) {
  std::vector<index_t> idx(static_cast<std::size_t>(n));
  std::iota(idx.begin(), idx.end(), index_t{0});
  std::partial_sort(idx.begin(), idx.begin() + count, idx.end(),
                    [x](index_t a, index_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); });
  idx.resize(static_cast<std::size_t>(count));
  return idx;
}

}  // namespace detail

/// Compares aqua_decode(q, cache, select, options) with exact attention over the same cache (dense
/// over every kept dim: exact when the cache keeps r = d dims). Attended tokens are ranked per
/// query head by their logits (softmax preserves the order).
inline attention_quality aqua_decode_quality(matrix_view<const float> q, const kv_cache& cache,
                                             const selection_spec& select, const aqua_options& options = {}) {
  constexpr const char* fn = "aqua::aqua_decode_quality";
  detail::require_data(q, fn, "q");
  detail::validate_cache_queries(q.extent(0), q.extent(1), cache, fn);
  const index_t hq = q.extent(0), d = q.extent(1), n = cache.size();
  std::vector<float> exact(static_cast<std::size_t>(hq * d)), approx(exact.size());
  aqua_workspace ws_exact, ws_approx;
  std::vector<float> probs(static_cast<std::size_t>(cache.kv_heads() * n));
  auto probs_view = make_view(probs.data(), cache.kv_heads(), n);
  // The probability hook makes each call keep its per-head logits in the workspace.
  detail::decode_on_cache(q, cache, nullptr, selection_mode::group, make_view(exact.data(), hq, d),
                          options.scale, options.threads, &ws_exact, nullptr, probs_view, fn);
  detail::decode_on_cache(q, cache, &select, options.mode, make_view(approx.data(), hq, d), options.scale,
                          options.threads, &ws_approx, nullptr, probs_view, fn);
  attention_quality result;
  double diff = 0, ref = 0;
  for (std::size_t i = 0; i < exact.size(); ++i) {
    diff += double(approx[i] - exact[i]) * double(approx[i] - exact[i]);
    ref += double(exact[i]) * double(exact[i]);
  }
  result.rel_l2_error = std::sqrt(diff) / std::max(std::sqrt(ref), 1e-300);
  const index_t top = std::min<index_t>(10, n);
  for (index_t h = 0; h < hq; ++h) {
    auto e = detail::top_indices(ws_exact.logits.data() + h * n, n, top);
    auto a = detail::top_indices(ws_approx.logits.data() + h * n, n, top);
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
