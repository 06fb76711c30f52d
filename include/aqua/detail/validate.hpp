// Argument checks shared by the public entry points. Every failure names the function, the
// argument and the offending values.
#pragma once

#include <cmath>
#include <sstream>
#include <string>

#include "aqua/config.hpp"
#include "aqua/tensor_view.hpp"

namespace aqua {
namespace detail {

template <class T>
struct type_identity {
  using type = T;
};
/// Blocks template argument deduction, so views of mutable data convert to views of const data.
template <class T>
using identity_t = typename type_identity<T>::type;

template <class T, int Rank>
std::string shape_string(const tensor_view<T, Rank>& v) {
  std::ostringstream os;
  os << '[';
  for (int i = 0; i < Rank; ++i) os << (i ? ", " : "") << v.extent(i);
  os << ']';
  return os.str();
}

/// A view with elements must point somewhere.
template <class T, int Rank>
void require_data(const tensor_view<T, Rank>& v, const char* fn, const char* name) {
  AQUA_CHECK(v.data() != nullptr || v.size() == 0, fn, ": ", name, " has null data but shape ",
             shape_string(v));
}

/// Extent `dim` of `v` must equal `expected`.
template <class T, int Rank>
void require_extent(const tensor_view<T, Rank>& v, int dim, index_t expected, const char* fn,
                    const char* name, const char* what) {
  AQUA_CHECK(v.extent(dim) == expected, fn, ": ", name, " has shape ", shape_string(v), " but its ", what,
             " (dimension ", dim, ") must be ", expected);
}

/// Calls reject(x, "i, j, ...") at the first element x of `v` (in row-major index order) for
/// which bad(x) holds; the position string is built only then.
template <class T, int Rank, class Bad, class Reject>
void require_each(const tensor_view<T, Rank>& v, Bad bad, Reject reject) {
  if (v.size() == 0) return;
  std::array<index_t, Rank> idx{};
  for (;;) {
    index_t offset = 0;
    for (int i = 0; i < Rank; ++i) offset += idx[static_cast<std::size_t>(i)] * v.stride(i);
    const auto x = v.data()[offset];
    if (AQUA_UNLIKELY(bad(x))) {
      std::ostringstream pos;
      for (int i = 0; i < Rank; ++i) pos << (i ? ", " : "") << idx[static_cast<std::size_t>(i)];
      reject(x, pos.str());
    }
    int d = Rank - 1;
    while (d >= 0 && ++idx[static_cast<std::size_t>(d)] == v.extent(d))
      idx[static_cast<std::size_t>(d--)] = 0;
    if (d < 0) return;
  }
}

/// Every element of `v` must be finite (NaN and +-Inf are rejected with their position).
template <class T, int Rank>
void require_finite(const tensor_view<T, Rank>& v, const char* fn, const char* name) {
  require_each(
      v, [](auto x) { return !std::isfinite(x); },
      [&](auto x, const std::string& pos) {
        AQUA_THROW(fn, ": ", name, " holds a non-finite value (", x, ") at index [", pos, "]");
      });
}

/// An additive mask may hold finite values and -inf; +inf and NaN have no meaning.
template <class T, int Rank>
void require_mask_values(const tensor_view<T, Rank>& v, const char* fn, const char* name) {
  require_each(
      v, [](auto x) { return std::isnan(x) || (std::isinf(x) && x > 0); },
      [&](auto x, const std::string& pos) {
        AQUA_THROW(fn, ": ", name, " holds ", x, " at index [", pos,
                   "]; an additive mask takes finite values or -inf");
      });
}

/// An optional log-sum-exp output: empty (not asked for), or one float per query head.
inline void require_lse(const vector_view<float>& lse, index_t hq, const char* fn) {
  if (lse.size() == 0) return;
  AQUA_CHECK(lse.data() != nullptr, fn, ": lse has ", lse.extent(0), " elements but no data");
  AQUA_CHECK(lse.extent(0) == hq, fn, ": lse has ", lse.extent(0), " elements but q has ", hq,
             " query heads (one log-sum-exp per query head)");
}
/// The prefill form: empty, or [Hq, M], one per query.
inline void require_lse(const matrix_view<float>& lse, index_t hq, index_t m, const char* fn) {
  if (lse.size() == 0) return;
  require_data(lse, fn, "prefill_lse");
  AQUA_CHECK(lse.extent(0) == hq && lse.extent(1) == m, fn, ": prefill_lse has shape ", shape_string(lse),
             " but must be [Hq, M] = [", hq, ", ", m, "]");
}

}  // namespace detail
}  // namespace aqua
