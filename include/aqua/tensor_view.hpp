// Non-owning strided views: how engines hand their own buffers to aqua without copies.
//
// A view is a pointer plus `Rank` extents and `Rank` strides counted in elements (not bytes), the
// same convention as NumPy divided by itemsize, or an mdspan with layout_stride. Views never own
// or allocate; like std::span they are cheap to copy and do not validate the pointer: API entry
// points validate the views they receive and say which argument was wrong.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "aqua/config.hpp"

namespace aqua {

template <class T, int Rank>
class tensor_view {
  static_assert(Rank >= 1, "aqua::tensor_view needs at least one dimension");

public:
  using element_type = T;
  using value_type = std::remove_cv_t<T>;
  using extents_type = std::array<index_t, Rank>;
  static constexpr int rank = Rank;

  /// An empty view: null data, all extents zero.
  tensor_view() noexcept : data_(nullptr), extents_{}, strides_{} {}

  /// Contiguous row-major view (the last index varies fastest).
  tensor_view(T* data, const extents_type& extents) : data_(data), extents_(extents) {
    check_extents();
    index_t stride = 1;
    for (int i = Rank - 1; i >= 0; --i) {
      strides_[static_cast<std::size_t>(i)] = stride;
      stride *= extents_[static_cast<std::size_t>(i)];
    }
  }

  /// Arbitrary strided view; strides are in elements and may be any value, including zero
  /// (broadcast) or negative.
  tensor_view(T* data, const extents_type& extents, const extents_type& strides)
      : data_(data), extents_(extents), strides_(strides) {
    check_extents();
  }

  /// A view of mutable data converts to a view of const data, never the other way round.
  template <class U, class = std::enable_if_t<std::is_same<const U, T>::value && !std::is_same<U, T>::value>>
  tensor_view(const tensor_view<U, Rank>& other) noexcept  // NOLINT(google-explicit-constructor)
      : data_(other.data()), extents_(other.extents()), strides_(other.strides()) {}

  T* data() const noexcept { return data_; }
  const extents_type& extents() const noexcept { return extents_; }
  const extents_type& strides() const noexcept { return strides_; }
  index_t extent(int dim) const noexcept { return extents_[static_cast<std::size_t>(dim)]; }
  index_t stride(int dim) const noexcept { return strides_[static_cast<std::size_t>(dim)]; }

  /// Number of elements (product of the extents).
  index_t size() const noexcept {
    index_t n = 1;
    for (index_t e : extents_) n *= e;
    return n;
  }
  bool empty() const noexcept { return size() == 0; }

  /// True when the elements are laid out densely in row-major order.
  bool is_contiguous() const noexcept {
    index_t expected = 1;
    for (int i = Rank - 1; i >= 0; --i) {
      if (extents_[static_cast<std::size_t>(i)] != 1 && strides_[static_cast<std::size_t>(i)] != expected)
        return false;
      expected *= extents_[static_cast<std::size_t>(i)];
    }
    return true;
  }

  template <class... Indices>
  T& operator()(Indices... indices) const noexcept {
    static_assert(sizeof...(Indices) == Rank, "aqua::tensor_view: wrong number of indices");
    const index_t idx[] = {static_cast<index_t>(indices)...};
    index_t offset = 0;
    for (int i = 0; i < Rank; ++i) offset += idx[i] * strides_[static_cast<std::size_t>(i)];
    return data_[offset];
  }

  /// The view with the first index fixed at `i`: a (Rank-1)-dimensional view into the same data.
  template <int R = Rank, class = std::enable_if_t<(R > 1)>>
  tensor_view<T, Rank - 1> operator[](index_t i) const noexcept {
    std::array<index_t, Rank - 1> e{}, s{};
    for (int d = 1; d < Rank; ++d) {
      e[static_cast<std::size_t>(d - 1)] = extents_[static_cast<std::size_t>(d)];
      s[static_cast<std::size_t>(d - 1)] = strides_[static_cast<std::size_t>(d)];
    }
    return tensor_view<T, Rank - 1>(data_ + i * strides_[0], e, s);
  }

private:
  // The extents other than zero must multiply to a representable count, so that size() and the
  // contiguous strides never overflow, even for an empty view.
  void check_extents() const {
    index_t span = 1;
    for (int i = 0; i < Rank; ++i) {
      const index_t e = extents_[static_cast<std::size_t>(i)];
      AQUA_CHECK(e >= 0, "aqua::tensor_view: extent ", i, " is negative (", e, ")");
      AQUA_CHECK(e <= 1 || span <= std::numeric_limits<index_t>::max() / e, "aqua::tensor_view: extent ", i,
                 " (", e, ") takes the product of the extents past 2^63 - 1");
      if (e > 1) span *= e;
    }
  }

  T* data_;
  extents_type extents_;
  extents_type strides_;
};

template <class T>
using vector_view = tensor_view<T, 1>;
template <class T>
using matrix_view = tensor_view<T, 2>;
template <class T>
using tensor3_view = tensor_view<T, 3>;

/// Contiguous row-major view over `data` with the given extents.
template <class T, class... Extents>
tensor_view<T, static_cast<int>(sizeof...(Extents))> make_view(T* data, Extents... extents) {
  return tensor_view<T, static_cast<int>(sizeof...(Extents))>(data, {static_cast<index_t>(extents)...});
}

}  // namespace aqua
