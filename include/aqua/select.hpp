// Top-k selection of projected query dimensions by magnitude (the "S = argtop_k |q~_i|" step).
//
// Three ways to say how many dimensions to keep (selection_spec):
//   top_k(k)        exactly k dimensions;
//   fraction(f)     ceil(f * n) dimensions, f in (0, 1];
//   energy(tau)     the smallest set S, taken in order of decreasing magnitude, with
//                   sum_{i in S} x_i^2 >= tau * sum_i x_i^2, tau in (0, 1].
// Order and tie-break are deterministic: decreasing magnitude, equal magnitudes by lower index
// first. The selected indices come out in that order (most important first).
//
// No allocation: the caller's index buffer must hold n entries (the whole candidate set is ranked
// in it); the first `count` entries are the selection. Built for n <= 256 (head dims): a
// partial sort over an index array, O(n log k).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "aqua/config.hpp"
#include "aqua/detail/validate.hpp"
#include "aqua/tensor_view.hpp"

namespace aqua {

/// How many projected dimensions a query keeps.
struct selection_spec {
  enum class kind { top_k, fraction, energy };
  kind type = kind::top_k;
  index_t k = 0;       // top_k
  double value = 0.0;  // fraction f or energy tau

  static selection_spec top_k(index_t k) { return {kind::top_k, k, 0.0}; }
  static selection_spec fraction(double f) { return {kind::fraction, 0, f}; }
  static selection_spec energy(double tau) { return {kind::energy, 0, tau}; }
};

namespace detail {

/// Validates `spec` for `n` candidates (fixed k must lie in [1, n]).
inline void validate_selection(const selection_spec& spec, index_t n, const char* fn) {
  switch (spec.type) {
    case selection_spec::kind::top_k:
      AQUA_CHECK(spec.k >= 1 && spec.k <= n, fn, ": k = ", spec.k, " must lie in [1, ", n,
                 "] (the number of selectable projected dimensions)");
      break;
    case selection_spec::kind::fraction:
      AQUA_CHECK(spec.value > 0.0 && spec.value <= 1.0, fn, ": selection fraction ", spec.value,
                 " must lie in (0, 1]");
      break;
    case selection_spec::kind::energy:
      AQUA_CHECK(spec.value > 0.0 && spec.value <= 1.0, fn, ": energy threshold tau = ", spec.value,
                 " must lie in (0, 1]");
      break;
  }
}

/// The number of dimensions a fixed-size spec keeps out of n (energy specs: n, an upper bound).
inline index_t selection_count(const selection_spec& spec, index_t n) {
  switch (spec.type) {
    case selection_spec::kind::top_k:
      return std::min(spec.k, n);
    case selection_spec::kind::fraction:
      return std::max<index_t>(
          1, std::min<index_t>(n, static_cast<index_t>(std::ceil(spec.value * double(n) - 1e-9))));
    case selection_spec::kind::energy:
      return n;
  }
  return n;
}

/// Ranks candidates 0..n-1 by `weight` (descending, ties by lower index) into `idx` and returns how
/// many the spec keeps. For energy specs `energy[i]` (>= 0) is what the threshold sums; the order
/// still follows `weight`. No checks: callers validate.
template <class W, class E, class I>
index_t select_ranked(const W* weight, const E* energy, index_t n, const selection_spec& spec, I* idx) {
  for (index_t i = 0; i < n; ++i) idx[i] = static_cast<I>(i);
  auto before = [weight](I a, I b) { return weight[a] > weight[b] || (weight[a] == weight[b] && a < b); };
  if (spec.type != selection_spec::kind::energy) {
    const index_t count = selection_count(spec, n);
    if (count < n)
      std::partial_sort(idx, idx + count, idx + n, before);
    else
      std::sort(idx, idx + n, before);
    return count;
  }
  std::sort(idx, idx + n, before);
  double total = 0;
  for (index_t i = 0; i < n; ++i) total += static_cast<double>(energy[i]);
  const double target = spec.value * total;
  double acc = 0;
  for (index_t c = 0; c < n; ++c) {
    acc += static_cast<double>(energy[idx[c]]);
    // Relative slack so tau = 1 stops at the last non-zero dimension despite rounding.
    if (acc >= target * (1.0 - 1e-12)) return c + 1;
  }
  return n;
}

}  // namespace detail

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
  detail::require_finite(values, fn, "values");
  // Magnitudes and energies go through small stack buffers for the common head dims.
  constexpr index_t stack = 512;
  if (n <= stack) {
    T mag[stack], sq[stack];
    for (index_t i = 0; i < n; ++i) {
      const T x = values(i);
      mag[i] = std::abs(x);
      sq[i] = x * x;
    }
    return detail::select_ranked(mag, sq, n, spec, indices.data());
  }
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
  double total = 0;
  for (index_t i = 0; i < n; ++i) total += double(vv(i)) * double(vv(i));
  double acc = 0;
  for (index_t c = 0; c < n; ++c) {
    acc += double(vv(idx[c])) * double(vv(idx[c]));
    if (acc >= spec.value * total * (1.0 - 1e-12)) return c + 1;
  }
  return n;
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
  // sorting the energies themselves gives the same prefix sums as the ranking.
  std::vector<double> sq(static_cast<std::size_t>(n));
  double total = 0;
  for (index_t i = 0; i < n; ++i) {
    sq[static_cast<std::size_t>(i)] = double(values(i)) * double(values(i));
    total += sq[static_cast<std::size_t>(i)];
  }
  std::sort(sq.begin(), sq.end(), [](double a, double b) { return a > b; });
  const double target = spec.value * total;
  double acc = 0;
  for (index_t c = 0; c < n; ++c) {
    acc += sq[static_cast<std::size_t>(c)];
    if (acc >= target * (1.0 - 1e-12)) return c + 1;
  }
  return n;
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
  std::vector<T> w(static_cast<std::size_t>(n)), e(w.size());
  std::vector<index_t> idx(w.size());
  for (index_t i = 0; i < n; ++i) {
    w[static_cast<std::size_t>(i)] = weight(i);
    e[static_cast<std::size_t>(i)] = energy(i);
  }
  return detail::select_ranked(w.data(), e.data(), n, spec, idx.data());
}

}  // namespace aqua
