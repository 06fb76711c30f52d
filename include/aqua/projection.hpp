// Per-head orthogonal projections (the calibrated bases of AQUA) and the set of them for a model.
//
// A head projection P is a d x d orthogonal matrix whose column j is projected dimension j; the
// columns are ordered by decreasing singular value of the calibration vectors, so the leading
// projected dimensions carry the most energy. A row vector x projects to x~ = x P
// (x~_j = sum_i x_i P(i, j)); because P is orthogonal, x = x~ P^T and q.k = q~.k~.
//
// A projection set holds one head projection per (layer, KV head), plus what was calibrated: the
// GQA group size, the vector source, whether the vectors were centred, how many vectors were seen,
// and free-form string metadata (model name, dataset, ...).
#pragma once

#include <Eigen/Core>
#include <Eigen/QR>

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "aqua/config.hpp"
#include "aqua/detail/orthogonality.hpp"
#include "aqua/detail/validate.hpp"
#include "aqua/eigen.hpp"
#include "aqua/tensor_view.hpp"

namespace aqua {

/// Which post-RoPE vectors become the rows of X for a head's calibration.
enum class calibration_source {
  queries,           ///< the g query heads of the KV group, stacked (default; what AQUA selects on)
  keys,              ///< the KV head's keys
  queries_and_keys,  ///< both
};

inline const char* to_string(calibration_source s) noexcept {
  switch (s) {
    case calibration_source::queries:
      return "queries";
    case calibration_source::keys:
      return "keys";
    case calibration_source::queries_and_keys:
      return "queries_and_keys";
  }
  return "unknown";
}

/// Parses "queries", "keys" or "queries_and_keys"; anything else throws aqua::error.
inline calibration_source parse_calibration_source(const std::string& text) {
  if (text == "queries") return calibration_source::queries;
  if (text == "keys") return calibration_source::keys;
  if (text == "queries_and_keys") return calibration_source::queries_and_keys;
  AQUA_THROW("aqua::parse_calibration_source: unknown source \"", text,
             "\" (expected queries, keys or queries_and_keys)");
}

namespace detail {

/// Box-Muller on a 64-bit Mersenne Twister: std::normal_distribution differs between standard
/// libraries, and seeded projection sets should be the same everywhere.
class portable_normal {
public:
  explicit portable_normal(std::uint64_t seed) : state_(seed) {}
  double operator()() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    constexpr double two_pi = 6.283185307179586476925286766559;
    const double u1 = (static_cast<double>(next() >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
    const double u2 = static_cast<double>(next() >> 11) * 0x1.0p-53;          // [0, 1)
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = r * std::sin(two_pi * u2);
    has_spare_ = true;
    return r * std::cos(two_pi * u2);
  }

private:
  // splitmix64: a tiny generator whose output is fixed by its definition.
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  std::uint64_t state_;
  double spare_ = 0;
  bool has_spare_ = false;
};

}  // namespace detail

class head_projection;
namespace detail {
head_projection make_head_projection_unchecked(row_matrix<float> basis, Eigen::VectorXd singular_values);
}  // namespace detail

/// A d x d orthogonal basis (column j = projected dimension j, in decreasing singular-value order)
/// with its singular values.
class head_projection {
public:
  /// Largest |P^T P - I| entry a basis may have; float storage rounds a double basis by ~1e-7.
  static constexpr double orthogonality_tolerance = 1e-4;

  head_projection() = default;

  /// Takes a d x d basis and its d singular values. Throws aqua::error unless the basis is square
  /// and orthogonal within orthogonality_tolerance, and the singular values are finite,
  /// non-negative and non-increasing.
  template <class = void>
  head_projection(row_matrix<float> basis, Eigen::VectorXd singular_values)
      : basis_(std::move(basis)), singular_values_(std::move(singular_values)) {
    constexpr const char* fn = "aqua::head_projection";
    AQUA_CHECK(basis_.rows() >= 1 && basis_.rows() == basis_.cols(), fn, ": basis is ", basis_.rows(), " x ",
               basis_.cols(), "; it must be square with d >= 1");
    AQUA_CHECK(singular_values_.size() == basis_.rows(), fn, ": ", singular_values_.size(),
               " singular values for a basis of dimension ", basis_.rows());
    AQUA_CHECK(basis_.allFinite(), fn, ": basis holds a non-finite value");
    for (index_t j = 0; j < singular_values_.size(); ++j) {
      const double s = singular_values_[j];
      AQUA_CHECK(std::isfinite(s) && s >= 0, fn, ": singular value ", j, " is ", s,
                 "; singular values must be finite and non-negative");
      AQUA_CHECK(j == 0 || s <= singular_values_[j - 1], fn,
                 ": singular values must not increase, but value ", j, " (", s, ") exceeds value ", j - 1,
                 " (", singular_values_[j - 1], ")");
    }
    const double err = detail::orthogonality_error(basis_);
    AQUA_CHECK(err <= orthogonality_tolerance, fn, ": basis is not orthogonal: max |P^T P - I| = ", err,
               " exceeds ", orthogonality_tolerance);
  }

  /// The identity projection (projected dimension j is input dimension j), singular values 1.
  static head_projection identity(index_t d) {
    AQUA_CHECK(d >= 1, "aqua::head_projection::identity: d must be at least 1, got ", d);
    return detail::make_head_projection_unchecked(row_matrix<float>::Identity(d, d),
                                                  Eigen::VectorXd::Ones(d));
  }

  /// A random orthogonal basis (the Q factor of a seeded Gaussian matrix, with the signs that make
  /// it Haar-distributed), singular values 1. Same seed, same basis, on every platform.
  // A template only so that Eigen's QR is instantiated where a random basis is made, not in every
  // translation unit that includes this header (seconds of compile time each); call it as usual.
  template <class Scalar = double>
  static head_projection random_orthogonal(index_t d, std::uint64_t seed) {
    AQUA_CHECK(d >= 1, "aqua::head_projection::random_orthogonal: d must be at least 1, got ", d);
    detail::portable_normal normal(seed);
    using matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    matrix g(d, d);
    for (index_t i = 0; i < d; ++i)
      for (index_t j = 0; j < d; ++j) g(i, j) = static_cast<Scalar>(normal());
    Eigen::HouseholderQR<matrix> qr(g);
    matrix q = qr.householderQ() * matrix::Identity(d, d);
    const matrix& r = qr.matrixQR();
    for (index_t j = 0; j < d; ++j)
      if (r(j, j) < 0) q.col(j) = -q.col(j);
    return head_projection(q.template cast<float>(), Eigen::VectorXd::Ones(d));
  }

  index_t d() const noexcept { return basis_.rows(); }
  bool empty() const noexcept { return basis_.size() == 0; }

  /// The basis, row-major float: basis()(i, j) is input dimension i's weight in projected dim j.
  const row_matrix<float>& basis() const noexcept { return basis_; }
  /// The basis as a contiguous [d, d] view.
  matrix_view<const float> basis_view() const noexcept { return view_of(basis_); }
  /// Singular values of the calibration matrix X (square roots of the eigenvalues of X^T X),
  /// non-increasing; entry j belongs to column j of the basis.
  const Eigen::VectorXd& singular_values() const noexcept { return singular_values_; }

  /// Largest |P^T P - I| entry (in double).
  template <class = void>
  double orthogonality_error() const {
    return detail::orthogonality_error(basis_);
  }

  /// out = x P for one vector of length d (contiguous). x and out must not overlap.
  template <class = void>
  void project(const float* x, float* out) const noexcept {
    const index_t n = d();
    Eigen::Map<Eigen::RowVectorXf>(out, n).noalias() = Eigen::Map<const Eigen::RowVectorXf>(x, n) * basis_;
  }

  /// out = x P for one (possibly strided) vector of length d.
  template <class = void>
  void project(vector_view<const float> x, vector_view<float> out) const {
    constexpr const char* fn = "aqua::head_projection::project";
    check_vector(x, "x", fn);
    check_vector(out, "out", fn);
    using stride = Eigen::InnerStride<Eigen::Dynamic>;
    Eigen::Map<Eigen::RowVectorXf, Eigen::Unaligned, stride>(out.data(), d(), stride(out.stride(0)))
        .noalias() =
        Eigen::Map<const Eigen::RowVectorXf, Eigen::Unaligned, stride>(x.data(), d(), stride(x.stride(0))) *
        basis_;
  }

  /// out = X P for a batch of rows X [rows, d] (one Eigen GEMM). Views may be strided; out must
  /// not overlap x.
  template <class = void>
  void project_rows(matrix_view<const float> x, matrix_view<float> out) const {
    constexpr const char* fn = "aqua::head_projection::project_rows";
    check_not_empty(fn);
    detail::require_data(x, fn, "x");
    detail::require_data(out, fn, "out");
    detail::require_extent(x, 1, d(), fn, "x", "row length (the projection's d)");
    AQUA_CHECK(out.extent(0) == x.extent(0) && out.extent(1) == d(), fn, ": out has shape ",
               detail::shape_string(out), " but x has shape ", detail::shape_string(x));
    if (x.extent(0) == 0) return;
    auto o = as_eigen(out);
    o.noalias() = as_eigen(x) * basis_;
  }

  /// Returns X P for a batch of rows X [rows, d].
  template <class = void>
  row_matrix<float> project_rows(matrix_view<const float> x) const {
    row_matrix<float> out(x.extent(0), d());
    project_rows(x, view_of(out));
    return out;
  }

private:
  friend head_projection detail::make_head_projection_unchecked(row_matrix<float>, Eigen::VectorXd);
  struct unchecked_tag {};
  // For bases that are orthogonal by construction or were validated already (eigensolver output,
  // loaded files): the d^3 orthogonality check is a sizeable part of finalizing a head.
  head_projection(row_matrix<float> basis, Eigen::VectorXd singular_values, unchecked_tag)
      : basis_(std::move(basis)), singular_values_(std::move(singular_values)) {}

  void check_not_empty(const char* fn) const {
    AQUA_CHECK(!empty(), fn, ": the projection is empty (default-constructed)");
  }
  template <class T>
  void check_vector(const vector_view<T>& v, const char* name, const char* fn) const {
    check_not_empty(fn);
    detail::require_data(v, fn, name);
    detail::require_extent(v, 0, d(), fn, name, "length (the projection's d)");
  }

  row_matrix<float> basis_;
  Eigen::VectorXd singular_values_;
};

namespace detail {
inline head_projection make_head_projection_unchecked(row_matrix<float> basis,
                                                      Eigen::VectorXd singular_values) {
  AQUA_ASSERT(basis.rows() == basis.cols() && singular_values.size() == basis.rows());
  return head_projection(std::move(basis), std::move(singular_values), head_projection::unchecked_tag{});
}
}  // namespace detail

/// One head projection per (layer, KV head) of a model, with what was calibrated.
class projection_set {
public:
  projection_set() = default;

  /// A set of `layers` x `kv_heads` identity projections of dimension d; fill it with set_head.
  /// group_size is the GQA group size g = Hq / Hkv (1 for MHA).
  projection_set(index_t layers, index_t kv_heads, index_t d, index_t group_size)
      : layers_(layers), kv_heads_(kv_heads), d_(d), group_size_(group_size) {
    constexpr const char* fn = "aqua::projection_set";
    AQUA_CHECK(layers >= 1, fn, ": layers must be at least 1, got ", layers);
    AQUA_CHECK(kv_heads >= 1, fn, ": kv_heads must be at least 1, got ", kv_heads);
    AQUA_CHECK(d >= 1, fn, ": d must be at least 1, got ", d);
    AQUA_CHECK(group_size >= 1, fn, ": group_size must be at least 1, got ", group_size);
    AQUA_CHECK(layers <= std::numeric_limits<index_t>::max() / kv_heads, fn, ": layers (", layers,
               ") x kv_heads (", kv_heads, ") overflows");
    heads_.assign(static_cast<std::size_t>(layers * kv_heads), head_projection::identity(d));
  }

  /// Every head the identity projection: AQUA with k = d is then exactly dense attention on the
  /// original coordinates. Useful for tests and as a neutral default.
  static projection_set identity(index_t layers, index_t kv_heads, index_t d, index_t group_size = 1) {
    return projection_set(layers, kv_heads, d, group_size);
  }

  /// Every head an independent random orthogonal basis from `seed` (see
  /// head_projection::random_orthogonal): a stand-in for calibrated projections in tests.
  template <class Scalar = double>
  static projection_set random_orthogonal(index_t layers, index_t kv_heads, index_t d, index_t group_size,
                                          std::uint64_t seed) {
    projection_set set(layers, kv_heads, d, group_size);
    for (index_t l = 0; l < layers; ++l)
      for (index_t h = 0; h < kv_heads; ++h)
        set.set_head(l, h,
                     head_projection::random_orthogonal<Scalar>(
                         d, seed * 0x9E3779B97F4A7C15ull + static_cast<std::uint64_t>(l * kv_heads + h)));
    return set;
  }

  index_t layers() const noexcept { return layers_; }
  index_t kv_heads() const noexcept { return kv_heads_; }
  index_t query_heads() const noexcept { return kv_heads_ * group_size_; }
  index_t d() const noexcept { return d_; }
  index_t group_size() const noexcept { return group_size_; }
  bool empty() const noexcept { return heads_.empty(); }

  /// The projection of KV head `kv_head` in `layer` (query head h uses kv head h / group_size()).
  const head_projection& head(index_t layer, index_t kv_head) const {
    return heads_[index_of(layer, kv_head, "aqua::projection_set::head")];
  }
  /// The projection used by query head `query_head` of `layer`.
  const head_projection& query_head(index_t layer, index_t query_head) const {
    AQUA_CHECK(query_head >= 0 && query_head < query_heads(), "aqua::projection_set::query_head: query head ",
               query_head, " is outside [0, ", query_heads(), ")");
    return head(layer, query_head / group_size_);
  }
  /// Replaces one head's projection; its d must match the set's.
  void set_head(index_t layer, index_t kv_head, head_projection projection) {
    constexpr const char* fn = "aqua::projection_set::set_head";
    const std::size_t i = index_of(layer, kv_head, fn);
    AQUA_CHECK(projection.d() == d_, fn, ": the projection has d = ", projection.d(),
               " but the set has d = ", d_);
    heads_[i] = std::move(projection);
  }

  calibration_source source() const noexcept { return source_; }
  void set_source(calibration_source s) noexcept { source_ = s; }
  /// True when the calibration subtracted the per-head mean (covariance instead of X^T X).
  bool centered() const noexcept { return centered_; }
  void set_centered(bool c) noexcept { centered_ = c; }
  /// Calibration vectors accumulated over all heads (0 for synthetic sets).
  std::uint64_t vectors_seen() const noexcept { return vectors_seen_; }
  void set_vectors_seen(std::uint64_t n) noexcept { vectors_seen_ = n; }

  /// Free-form metadata (model name, dataset, ...). Keys starting with "aqua." are reserved for the
  /// fields the file format writes itself.
  std::map<std::string, std::string>& metadata() noexcept { return metadata_; }
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }

private:
  std::size_t index_of(index_t layer, index_t kv_head, const char* fn) const {
    AQUA_CHECK(!heads_.empty(), fn, ": the projection set is empty (default-constructed)");
    AQUA_CHECK(layer >= 0 && layer < layers_, fn, ": layer ", layer, " is outside [0, ", layers_, ")");
    AQUA_CHECK(kv_head >= 0 && kv_head < kv_heads_, fn, ": KV head ", kv_head, " is outside [0, ", kv_heads_,
               ")");
    return static_cast<std::size_t>(layer * kv_heads_ + kv_head);
  }

  index_t layers_ = 0, kv_heads_ = 0, d_ = 0, group_size_ = 1;
  std::vector<head_projection> heads_;
  calibration_source source_ = calibration_source::queries;
  bool centered_ = false;
  std::uint64_t vectors_seen_ = 0;
  std::map<std::string, std::string> metadata_;
};

}  // namespace aqua
