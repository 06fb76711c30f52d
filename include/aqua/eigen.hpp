// Eigen interop for views: a view of an Eigen matrix, an Eigen::Map over a view, and the
// row-major matrix type aqua uses for bases and scratch. Apart from tensor_view.hpp so that the
// views cost nothing to include for a caller that does not use Eigen.
#pragma once

#include <Eigen/Core>

#include <array>
#include <type_traits>

#include "aqua/config.hpp"
#include "aqua/tensor_view.hpp"

namespace aqua {

/// A rows x cols view of any Eigen object with direct access (Matrix, Map, Block of those),
/// row- or column-major, with its inner and outer strides. The view aliases the Eigen storage.
template <class Derived>
auto view_of(Eigen::PlainObjectBase<Derived>& m) {
  using scalar = typename Derived::Scalar;
  const index_t inner = m.innerStride(), outer = m.outerStride();
  return matrix_view<scalar>(
      m.data(), {m.rows(), m.cols()},
      Derived::IsRowMajor ? std::array<index_t, 2>{outer, inner} : std::array<index_t, 2>{inner, outer});
}
template <class Derived>
auto view_of(const Eigen::PlainObjectBase<Derived>& m) {
  using scalar = const typename Derived::Scalar;
  const index_t inner = m.innerStride(), outer = m.outerStride();
  return matrix_view<scalar>(
      m.data(), {m.rows(), m.cols()},
      Derived::IsRowMajor ? std::array<index_t, 2>{outer, inner} : std::array<index_t, 2>{inner, outer});
}
/// Same for Eigen::Map and Blocks with direct access (const-ness follows the Eigen object).
template <class Derived, int Level>
auto view_of(const Eigen::MapBase<Derived, Level>& m) {
  using scalar = std::conditional_t<Level == Eigen::WriteAccessors, typename Derived::Scalar,
                                    const typename Derived::Scalar>;
  const index_t inner = m.innerStride(), outer = m.outerStride();
  auto* data = const_cast<scalar*>(m.data());
  return matrix_view<scalar>(
      data, {m.rows(), m.cols()},
      Derived::IsRowMajor ? std::array<index_t, 2>{outer, inner} : std::array<index_t, 2>{inner, outer});
}

/// A row-major dynamic matrix type and the Eigen::Map type that aliases a strided matrix view.
template <class T>
using row_matrix = Eigen::Matrix<std::remove_cv_t<T>, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using strided_map =
    Eigen::Map<std::conditional_t<std::is_const<T>::value, const row_matrix<T>, row_matrix<T>>,
               Eigen::Unaligned, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>;

/// Eigen::Map over a matrix view (row stride = outer stride, column stride = inner stride), so
/// Eigen expressions run directly on an engine's buffer.
template <class T>
strided_map<T> as_eigen(const matrix_view<T>& v) {
  return strided_map<T>(v.data(), v.extent(0), v.extent(1),
                        Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(v.stride(0), v.stride(1)));
}

}  // namespace aqua
