// How far a basis is from orthogonal: every place that accepts a basis (the cache, projection
// files, head_projection) holds it to the same measure.
#pragma once

#include <Eigen/Core>

#include "aqua/eigen.hpp"
#include "aqua/tensor_view.hpp"

namespace aqua {
namespace detail {

/// Largest |P^T P - I| entry of a [d, c] basis, computed in double.
template <class = void>
inline double orthogonality_error(const matrix_view<const float>& p) {
  const Eigen::MatrixXd pd = as_eigen(p).template cast<double>();
  const Eigen::MatrixXd gram = pd.transpose() * pd;
  return (gram - Eigen::MatrixXd::Identity(pd.cols(), pd.cols())).cwiseAbs().maxCoeff();
}
template <class = void>
inline double orthogonality_error(const row_matrix<float>& p) {
  return orthogonality_error(matrix_view<const float>(view_of(p)));
}

}  // namespace detail
}  // namespace aqua
