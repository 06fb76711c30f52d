// Numerically stable softmax over a row of logits, with -inf entries as masked positions.
#pragma once

#include <cmath>
#include <limits>
#include <type_traits>

#include "aqua/tensor_view.hpp"

namespace aqua {
namespace detail {

/// Accumulation type: sums of float terms are carried in double.
template <class T>
using accum_t = std::conditional_t<std::is_same<T, float>::value, double, T>;

/// The log-sum-exp of a row whose largest logit is `row_max` and whose exponentials, shifted by
/// it, sum to `sum`: -inf when the sum is 0 (every logit -inf), NaN when it is NaN.
inline float log_sum_exp(double row_max, double sum) {
  if (!(sum > 0))
    return std::isnan(sum) ? std::numeric_limits<float>::quiet_NaN()
                           : -std::numeric_limits<float>::infinity();
  return static_cast<float>(row_max + std::log(sum));
}

/// Replaces logits[0..n) by softmax probabilities, subtracting the row maximum first so that
/// logits of any finite magnitude give finite results. A row whose logits are all -inf (fully
/// masked) becomes all zeros: the attention output of such a row is defined as the zero vector.
/// Returns the normaliser (0 for a fully masked row).
template <class T>
accum_t<T> softmax_inplace(T* logits, index_t n) {
  T row_max = -std::numeric_limits<T>::infinity();
  for (index_t j = 0; j < n; ++j) row_max = logits[j] > row_max ? logits[j] : row_max;
  if (!(row_max > -std::numeric_limits<T>::infinity())) {
    // All -inf, or all NaN: NaN (from NaN keys) must propagate, never turn into a silent zero.
    bool any_nan = false;
    for (index_t j = 0; j < n; ++j) any_nan |= std::isnan(logits[j]);
    const T fill = any_nan ? std::numeric_limits<T>::quiet_NaN() : T(0);
    for (index_t j = 0; j < n; ++j) logits[j] = fill;
    return any_nan ? std::numeric_limits<accum_t<T>>::quiet_NaN() : accum_t<T>(0);
  }
  accum_t<T> sum = 0;
  for (index_t j = 0; j < n; ++j) {
    const T p = std::exp(logits[j] - row_max);
    logits[j] = p;
    sum += p;
  }
  const T inv = static_cast<T>(accum_t<T>(1) / sum);
  for (index_t j = 0; j < n; ++j) logits[j] *= inv;
  return sum;
}

}  // namespace detail
}  // namespace aqua
