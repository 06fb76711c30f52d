// Shared helpers for the aqua tests: seeded random data, an independent double-precision attention
// oracle written with plain loops (no aqua code), and normalized error.
#pragma once

#include <aqua/tensor_view.hpp>

#include <Eigen/Core>
#include <Eigen/QR>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

namespace aqua_test {

using aqua::index_t;

/// Fills `data` with N(0, stddev) values from a fixed seed.
template <class T>
void fill_normal(std::vector<T>& data, std::uint32_t seed, double stddev = 1.0) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> dist(0.0, stddev);
  for (auto& x : data) x = static_cast<T>(dist(rng));
}

/// A random d x d orthogonal matrix (the Q factor of a seeded Gaussian matrix), in float. A
/// template only so that Eigen's QR is instantiated by the test files that call it, not by every
/// file that includes this header (it costs seconds of compile time per file).
template <class Scalar = double>
Eigen::MatrixXf random_orthogonal_basis(index_t d, unsigned seed) {
  using matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  std::vector<Scalar> r(static_cast<std::size_t>(d * d));
  fill_normal(r, seed);
  Eigen::Map<matrix> m(r.data(), d, d);
  matrix q = Eigen::HouseholderQR<matrix>(m).householderQ();
  return q.template cast<float>();
}

/// NaN-safe running maximum for error reductions: std::max(worst, NaN) keeps `worst`, so a NaN
/// output would pass a following CHECK(worst < tol); here a NaN argument makes (and keeps) the
/// result NaN, and every comparison with NaN fails. Every test that reduces an error uses this.
inline double max_or_nan(double worst, double x) {
  if (std::isnan(worst) || std::isnan(x)) return std::numeric_limits<double>::quiet_NaN();
  return x > worst ? x : worst;
}

/// |a - b| <= tol, false when either is NaN (and for an infinite difference): the only form of
/// tolerance check the tests use ("!(diff > tol)" would pass NaN).
inline bool within(double a, double b, double tol) {
  return std::abs(a - b) <= tol;
}

/// max_i |a(i) - b(i)| over count values read through accessors, NaN when any difference is NaN.
template <class A, class B>
double max_abs_difference(index_t count, A a, B b) {
  double worst = 0;
  for (index_t i = 0; i < count; ++i)
    worst = max_or_nan(worst, std::abs(static_cast<double>(a(i)) - static_cast<double>(b(i))));
  return worst;
}

/// ||a - b||_2 / max(||b||_2, tiny) over two equally sized ranges read through accessors (NaN when
/// any value is NaN: the sums propagate it).
template <class A, class B>
double normalized_error(index_t count, A a, B b) {
  double diff = 0, ref = 0;
  for (index_t i = 0; i < count; ++i) {
    const double x = static_cast<double>(a(i)), y = static_cast<double>(b(i));
    diff += (x - y) * (x - y);
    ref += y * y;
  }
  return std::sqrt(diff) / std::max(std::sqrt(ref), 1e-300);
}

/// Naive attention for one query row against keys [0, visible) of one head, all in double.
/// `mask_at(j)` gives the additive mask (0 when there is none).
template <class Q, class K, class V, class M>
std::vector<double> oracle_row(index_t d, index_t visible, double scale, Q q_at, K k_at, V v_at, M mask_at) {
  std::vector<double> logits(static_cast<std::size_t>(visible));
  double row_max = -std::numeric_limits<double>::infinity();
  for (index_t j = 0; j < visible; ++j) {
    double dot = 0;
    for (index_t c = 0; c < d; ++c) dot += static_cast<double>(q_at(c)) * static_cast<double>(k_at(j, c));
    logits[static_cast<std::size_t>(j)] = scale * dot + static_cast<double>(mask_at(j));
    row_max = std::max(row_max, logits[static_cast<std::size_t>(j)]);
  }
  std::vector<double> out(static_cast<std::size_t>(d), 0.0);
  if (row_max == -std::numeric_limits<double>::infinity()) return out;
  double sum = 0;
  for (auto& l : logits) sum += (l = std::exp(l - row_max));
  for (index_t j = 0; j < visible; ++j)
    for (index_t c = 0; c < d; ++c)
      out[static_cast<std::size_t>(c)] +=
          logits[static_cast<std::size_t>(j)] / sum * static_cast<double>(v_at(j, c));
  return out;
}

/// Owned buffer plus a strided 3-D view of it, padded so the view is not contiguous when asked.
/// Logical shape [a, b, c]; storage is [b, a, c + pad] (middle and outer dims swapped) when strided.
template <class T>
struct buffer3 {
  std::vector<T> storage;
  aqua::tensor3_view<T> view;
  buffer3(index_t a, index_t b, index_t c, bool strided, std::uint32_t seed) {
    const index_t pad = strided ? 3 : 0;
    storage.assign(static_cast<std::size_t>(a * b * (c + pad)), T(0));
    fill_normal(storage, seed);
    if (strided)
      view = aqua::tensor3_view<T>(storage.data(), {a, b, c}, {c + pad, a * (c + pad), 1});
    else
      view = aqua::tensor3_view<T>(storage.data(), {a, b, c});
  }
};

}  // namespace aqua_test
