// Exact merging of attention computed over disjoint parts of the keys: how an engine splits a
// long context over workers or hosts (split-KV, ring and sequence parallelism) and combines the
// pieces. Each part brings its normalised output and the log-sum-exp of its scaled scores (the
// `lse` output of aqua_decode and dense_decode); softmax over the union is then
//   out = sum_p exp(lse_p - L) out_p,   L = log sum_p exp(lse_p),
// evaluated with the largest lse_p subtracted, in double.
#pragma once

#include <cmath>
#include <limits>
#include <vector>

#include "aqua/config.hpp"
#include "aqua/detail/validate.hpp"
#include "aqua/tensor_view.hpp"

namespace aqua {

/// Attention over one part of the keys: out [rows, d], normalised over that part, and lse [rows],
/// its log-sum-exp (-inf: the part held no key these rows attend to).
struct attention_part {
  matrix_view<const float> out;
  vector_view<const float> lse;
};

/// Merges parts computed over disjoint key sets into attention over their union: out [rows, d]
/// and, when non-empty, lse [rows] (L above). A row no part attends to (every lse_p = -inf) gets
/// zeros and L = -inf, as attention whose keys are all masked out. A NaN or +inf lse, a non-finite
/// output value, or shapes that disagree are an aqua::error. `out` may alias one part's output
/// only if it is that part's exact view (rows are read before they are written).
template <class = void>
inline void merge_attention(const std::vector<attention_part>& parts, matrix_view<float> out,
                            vector_view<float> lse = {}) {
  constexpr const char* fn = "aqua::merge_attention";
  AQUA_CHECK(!parts.empty(), fn, ": no parts to merge");
  detail::require_data(out, fn, "out");
  const index_t rows = out.extent(0), d = out.extent(1);
  AQUA_CHECK(lse.size() == 0 || lse.extent(0) == rows, fn, ": lse has ", lse.extent(0),
             " elements but out has ", rows, " rows");
  for (std::size_t p = 0; p < parts.size(); ++p) {
    const attention_part& part = parts[p];
    AQUA_CHECK(part.out.extent(0) == rows && part.out.extent(1) == d, fn, ": part ", p, " has out of shape ",
               detail::shape_string(part.out), " but out has shape ", detail::shape_string(out));
    AQUA_CHECK(part.lse.extent(0) == rows, fn, ": part ", p, " has ", part.lse.extent(0), " lse values for ",
               rows, " rows");
    detail::require_data(part.out, fn, "a part's out");
    detail::require_data(part.lse, fn, "a part's lse");
    for (index_t r = 0; r < rows; ++r) {
      const float l = part.lse(r);
      AQUA_CHECK(!std::isnan(l) && l != std::numeric_limits<float>::infinity(), fn, ": part ", p, " has lse[",
                 r, "] = ", l, " (a log-sum-exp is finite, or -inf for no keys)");
    }
    detail::require_finite(part.out, fn, "a part's out");
  }
  const double neg_inf = -std::numeric_limits<double>::infinity();
  std::vector<double> acc(static_cast<std::size_t>(d)), weight(parts.size());
  for (index_t r = 0; r < rows; ++r) {
    double top = neg_inf;
    for (const auto& part : parts) top = std::max(top, double(part.lse(r)));
    if (top == neg_inf) {
      for (index_t c = 0; c < d; ++c) out(r, c) = 0.0f;
      if (lse.size()) lse(r) = -std::numeric_limits<float>::infinity();
      continue;
    }
    double total = 0;
    for (std::size_t p = 0; p < parts.size(); ++p)
      total += (weight[p] = std::exp(double(parts[p].lse(r)) - top));
    std::fill(acc.begin(), acc.end(), 0.0);
    for (std::size_t p = 0; p < parts.size(); ++p) {
      if (weight[p] == 0) continue;
      const double w = weight[p] / total;
      for (index_t c = 0; c < d; ++c) acc[static_cast<std::size_t>(c)] += w * double(parts[p].out(r, c));
    }
    for (index_t c = 0; c < d; ++c) out(r, c) = static_cast<float>(acc[static_cast<std::size_t>(c)]);
    if (lse.size()) lse(r) = static_cast<float>(top + std::log(total));
  }
}

}  // namespace aqua
