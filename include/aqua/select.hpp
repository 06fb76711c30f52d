// Top-k selection of projected query dimensions by magnitude (the "S = argtop_k |q~_i|" step).
//
// Three ways to say how many dimensions to keep (selection_spec):
//   top_k(k)        exactly k dimensions;
//   fraction(f)     ceil(f * n) dimensions, f in (0, 1];
//   energy(tau)     the smallest set S, taken in order of decreasing magnitude, with
//                   sum_{i in S} x_i^2 >= tau * sum_i x_i^2, tau in (0, 1].
// Order and tie-break are deterministic: decreasing magnitude, equal magnitudes by lower index
// first. The selected indices come out in that order (most important first). No allocation; the
// ranking itself (integer keys, bisection, branch-free counts) is in detail/ranking.hpp.
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include "aqua/config.hpp"
#include "aqua/detail/ranking.hpp"
#include "aqua/detail/validate.hpp"
#include "aqua/selection_spec.hpp"
#include "aqua/tensor_view.hpp"

namespace aqua {

/// Selects dimensions of `values` by magnitude as `spec` says; writes the ranking into `indices`
/// (extent >= values' extent; the first `count` entries are the selection, most important first)
/// and returns `count`. values must be finite (checked: aqua::error).
template <class T, class I>
index_t select_top(vector_view<const detail::identity_t<T>> values, const selection_spec& spec,
                   vector_view<I> indices) {
  static_assert(std::is_integral<I>::value, "aqua::select_top: indices must be an integer type");
  constexpr const char* fn = "aqua::select_top";
  const index_t n = values.extent(0);
  AQUA_CHECK(n >= 1, fn, ": values is empty");
  detail::require_data(values, fn, "values");
  detail::require_data(indices, fn, "indices");
  AQUA_CHECK(indices.extent(0) >= n, fn, ": indices has room for ", indices.extent(0),
             " entries but the ranking needs ", n, " (the length of values)");
  AQUA_CHECK(indices.stride(0) == 1 || n == 1, fn, ": indices must be contiguous (stride 1), got stride ",
             indices.stride(0));
  detail::validate_selection(spec, n, fn);
  // Magnitudes and energies go through small stack buffers for the common head dims. The finite
  // check rides along; require_finite then names the culprit.
  constexpr index_t stack = 512;
  if (n <= stack) {
    T mag[stack];
    double sq[stack];
    if (!detail::magnitudes(values.data(), values.stride(0), n, mag, sq))
      detail::require_finite(values, fn, "values");
    return detail::select_ranked(mag, sq, n, spec, indices.data());
  }
  detail::require_finite(values, fn, "values");
  // Rare wide inputs: rank on the fly (a comparator over the strided values).
  I* idx = indices.data();
  for (index_t i = 0; i < n; ++i) idx[i] = static_cast<I>(i);
  const vector_view<const T>& vv = values;
  auto before = [&vv](I a, I b) {
    const T ma = std::abs(vv(a)), mb = std::abs(vv(b));
    return ma > mb || (ma == mb && a < b);
  };
  if (spec.type != selection_spec::kind::energy) {
    const index_t count = detail::selection_count(spec, n);
    std::partial_sort(idx, idx + count, idx + n, before);
    return count;
  }
  std::sort(idx, idx + n, before);
  double total = 0, acc = 0;
  for (index_t i = 0; i < n; ++i) total += double(vv(i)) * double(vv(i));
  const index_t count = detail::energy_cut(
      spec.value, total, 0, n, acc, [&](index_t c) { return double(vv(idx[c])) * double(vv(idx[c])); });
  return count ? count : n;
}

/// How many dimensions `spec` selects for `values` (what select_top returns), without ranking
/// them: k or ceil(f * n) for fixed-size specs; for energy specs the smallest prefix, in order of
/// decreasing magnitude, holding tau of sum values_i^2. For counting dims actually used (mean k
/// under energy selection). values must be finite (checked: aqua::error).
template <class T>
index_t select_count(vector_view<const detail::identity_t<T>> values, const selection_spec& spec) {
  constexpr const char* fn = "aqua::select_count";
  const index_t n = values.extent(0);
  AQUA_CHECK(n >= 1, fn, ": values is empty");
  detail::require_data(values, fn, "values");
  detail::validate_selection(spec, n, fn);
  detail::require_finite(values, fn, "values");
  if (spec.type != selection_spec::kind::energy) return detail::selection_count(spec, n);
  // Equal magnitudes carry equal energies, so the count does not depend on how ties are ordered:
  // ranking by magnitude, or sorting the energies themselves, sums the same sequence.
  if (n <= detail::ranked_fast_max) {
    T mag[detail::ranked_fast_max];
    double sq[detail::ranked_fast_max];
    std::int32_t idx[detail::ranked_fast_max];
    for (index_t i = 0; i < n; ++i) {
      mag[i] = std::abs(values(i));
      sq[i] = double(values(i)) * double(values(i));
    }
    return detail::select_ranked(mag, sq, n, spec, idx);
  }
  std::vector<double> sq(static_cast<std::size_t>(n));
  double total = 0;
  for (index_t i = 0; i < n; ++i) {
    sq[static_cast<std::size_t>(i)] = double(values(i)) * double(values(i));
    total += sq[static_cast<std::size_t>(i)];
  }
  std::sort(sq.begin(), sq.end(), [](double a, double b) { return a > b; });
  double acc = 0;
  const index_t count = detail::energy_cut(spec.value, total, 0, n, acc,
                                           [&](index_t c) { return sq[static_cast<std::size_t>(c)]; });
  return count ? count : n;
}

/// The same count for a ranking weight that is not the magnitude itself: candidates ranked by
/// decreasing `weight` (ties by lower index), the energy threshold summing `energy` (>= 0). This
/// is the rule of group-shared selection (summed magnitudes ranked, summed energies thresholded)
/// and of weighted scores. weight and energy must have the same extent and be finite, energy >= 0.
template <class T>
index_t select_count(vector_view<const detail::identity_t<T>> weight,
                     vector_view<const detail::identity_t<T>> energy, const selection_spec& spec) {
  constexpr const char* fn = "aqua::select_count";
  const index_t n = weight.extent(0);
  AQUA_CHECK(n >= 1, fn, ": weight is empty");
  AQUA_CHECK(energy.extent(0) == n, fn, ": energy has ", energy.extent(0), " entries but weight has ", n);
  detail::require_data(weight, fn, "weight");
  detail::require_data(energy, fn, "energy");
  detail::validate_selection(spec, n, fn);
  detail::require_finite(weight, fn, "weight");
  detail::require_finite(energy, fn, "energy");
  for (index_t i = 0; i < n; ++i)
    AQUA_CHECK(energy(i) >= 0, fn, ": energy[", i, "] = ", energy(i), " is negative");
  if (spec.type != selection_spec::kind::energy) return detail::selection_count(spec, n);
  if (n <= detail::ranked_fast_max) {
    T w[detail::ranked_fast_max], e[detail::ranked_fast_max];
    std::int32_t idx[detail::ranked_fast_max];
    for (index_t i = 0; i < n; ++i) {
      w[i] = weight(i);
      e[i] = energy(i);
    }
    return detail::select_ranked(w, e, n, spec, idx);
  }
  std::vector<T> w(static_cast<std::size_t>(n)), e(w.size());
  std::vector<index_t> idx(w.size());
  for (index_t i = 0; i < n; ++i) {
    w[static_cast<std::size_t>(i)] = weight(i);
    e[static_cast<std::size_t>(i)] = energy(i);
  }
  return detail::select_ranked(w.data(), e.data(), n, spec, idx.data());
}

}  // namespace aqua
