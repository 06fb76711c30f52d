// The KV cache as the engines read it: sizes, storage types and the arrays, as a plain descriptor
// (the way ggml's ops and FlashAttention's params struct take pointers and strides), so the
// kernels below the public headers never depend on the kv_cache class. kv_cache.hpp builds one
// per call (detail::cache_access::layout); the layout itself is documented there.
#pragma once

#include <Eigen/Core>

#include <cstddef>
#include <memory>
#include <new>
#include <type_traits>

#include "aqua/config.hpp"
#include "aqua/eigen.hpp"
#include "aqua/float16.hpp"

namespace aqua {
namespace detail {

struct aligned_deleter {
  std::size_t alignment = 64;  // what the array was allocated with (64 bytes, or 2 MB for huge pages)
  void operator()(unsigned char* p) const noexcept { ::operator delete[](p, std::align_val_t(alignment)); }
};
using aligned_bytes = std::unique_ptr<unsigned char[], aligned_deleter>;

/// Tokens per block inside a key tile: one f32 block row (16 floats) is one cache line.
constexpr index_t cache_block_tokens = 16;

/// Element offset of (token, dim i within its tile) inside a tile array of `tile` dims.
constexpr index_t tiled_key_offset(index_t token, index_t i, index_t tile) noexcept {
  return ((token / cache_block_tokens) * tile + i) * cache_block_tokens + token % cache_block_tokens;
}

/// out[0..r) = (x P)[0..r) for a [d, r] row-major basis P (null: x is already projected); x has d
/// elements with stride x_stride.
template <class S>
void project_row(const row_matrix<float>* basis, index_t d, index_t r, const S* x, index_t x_stride,
                 float* out) {
  if (basis == nullptr) {
    for (index_t c = 0; c < r; ++c) out[c] = static_cast<float>(x[c * x_stride]);
    return;
  }
  // Eigen's GEMV is vectorised whatever the caller's flags; the plain loop is not at GCC's -O2
  // (out and the basis might alias), which made q P 5-10x slower than the decode it precedes.
  Eigen::Map<Eigen::RowVectorXf> result(out, r);
  if constexpr (std::is_same<S, float>::value) {
    if (x_stride == 1) {
      result.noalias() = Eigen::Map<const Eigen::RowVectorXf>(x, d) * *basis;
      return;
    }
  }
  constexpr index_t stack_dims = 1024;
  if (d <= stack_dims) {
    float copy[stack_dims];
    for (index_t i = 0; i < d; ++i) copy[i] = static_cast<float>(x[i * x_stride]);
    result.noalias() = Eigen::Map<const Eigen::RowVectorXf>(copy, d) * *basis;
    return;
  }
  for (index_t c = 0; c < r; ++c) out[c] = 0.0f;
  for (index_t i = 0; i < d; ++i) {
    const float xi = static_cast<float>(x[i * x_stride]);
    const float* row = basis->data() + i * r;
    for (index_t c = 0; c < r; ++c) out[c] += xi * row[c];
  }
}

/// A read-only view of one layer's cache. Valid while the cache is not modified. The accessors
/// carry the names of kv_cache's, so engine code reads the same over either.
struct cache_layout {
  index_t hkv = 0, d = 0, r = 0, tile = 0, tiles = 0, n = 0;
  storage_type key_storage = storage_type::f32, value_storage = storage_type::f32;
  const aligned_bytes* key_arrays = nullptr;    // [hkv * tiles]: tile t of head h at h * tiles + t
  const aligned_bytes* value_arrays = nullptr;  // [hkv], token-major [n][d]
  const row_matrix<float>* bases = nullptr;     // [hkv] of [d, r]; null: keys arrive projected

  index_t kv_heads() const noexcept { return hkv; }
  index_t head_dim() const noexcept { return d; }
  index_t rank() const noexcept { return r; }
  index_t tile_dims() const noexcept { return tile; }
  index_t tile_count() const noexcept { return tiles; }
  index_t size() const noexcept { return n; }
  storage_type key_type() const noexcept { return key_storage; }
  storage_type value_type() const noexcept { return value_storage; }
  const void* key_tile_data(index_t head, index_t t) const noexcept {
    AQUA_ASSERT(head >= 0 && head < hkv && t >= 0 && t < tiles);
    return key_arrays[head * tiles + t].get();
  }
  const void* values_data(index_t head) const noexcept {
    AQUA_ASSERT(head >= 0 && head < hkv);
    return value_arrays[head].get();
  }
  float key(index_t head, index_t token, index_t dim) const noexcept {
    AQUA_ASSERT(head >= 0 && head < hkv && token >= 0 && token < n && dim >= 0 && dim < r);
    return load_element(key_arrays[head * tiles + dim / tile].get(), key_storage,
                        tiled_key_offset(token, dim % tile, tile));
  }
  float value(index_t head, index_t token, index_t dim) const noexcept {
    AQUA_ASSERT(head >= 0 && head < hkv && token >= 0 && token < n && dim >= 0 && dim < d);
    return load_element(value_arrays[head].get(), value_storage, token * d + dim);
  }
  /// The [d, r] basis of head h, or null when the cache holds keys as given.
  const row_matrix<float>* projection(index_t head) const noexcept {
    return bases == nullptr ? nullptr : &bases[head];
  }
  template <class S>
  void project(index_t head, const S* x, index_t x_stride, float* out) const {
    project_row(projection(head), d, r, x, x_stride, out);
  }
};

/// Builds the layout of a cache; defined by kv_cache.hpp, a friend of the class.
struct cache_access;

}  // namespace detail
}  // namespace aqua
