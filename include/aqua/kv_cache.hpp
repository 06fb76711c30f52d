// Per-layer KV cache for AQUA: keys stored projected (k~ = k P) in dimension tiles, values
// token-major.
//
// Why tiles (docs/design.md, "KV cache layout"): on these machines reading
// scattered runs out of one contiguous block costs the same DRAM time as reading the whole block;
// savings come only from skipping whole, separately allocated arrays. So the projected dims of
// each KV head are grouped into tiles of `tile_dims` consecutive dims (ordered by importance, so
// the leading tiles carry most of the energy); each tile is its own 64-byte aligned array,
// token-blocked inside: for each block of 16 tokens, the tile's dim 0 for those 16 tokens, then
// dim 1, ... A selected dim of one block is one 64-byte cache line; a tile of 32 dims is 2 KB per
// block, read sequentially.
//
//   key (head h, token j, projected dim c):
//     tile t = c / T, i = c % T:  key_tile(h, t)[((j / 16) * T + i) * 16 + j % 16]
//   value (head h, token j, dim c):  values(h)[j * d + c]
//
// Static truncation keeps only the first r projected dims (whole tiles unless r == d), cutting key
// memory to r / d; selection then happens within them. Values keep all d dims.
// Storage: keys and values are each stored as f32, bf16 or f16 (aqua/float16.hpp), chosen
// independently. Keys are projected in float and rounded once on append; kernels widen to float.
// A 16-bit block row of one dim is then 32 bytes (half a line): tile selection reads whole tiles
// either way, single-dim selections read half lines.
// Each stored token carries its sequence position (consecutive from 0 on append); retain() keeps a
// subset of tokens (eviction) and their positions; retain_per_head() keeps a different subset per
// KV head (H2O, aqua/h2o.hpp), positions then tracked per head; shrink_to_fit() releases memory. Not
// thread-safe for concurrent mutation; const member functions may run concurrently.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "aqua/config.hpp"
#include "aqua/detail/cache_layout.hpp"
#include "aqua/detail/orthogonality.hpp"
#include "aqua/detail/validate.hpp"
#include "aqua/eigen.hpp"
#include "aqua/float16.hpp"
#include "aqua/tensor_view.hpp"

namespace aqua {

class projection_set;  // projection.hpp

struct kv_cache_options {
  /// Projected dims per key tile (16 or 32 suit AVX2; any value >= 1 works).
  index_t tile_dims = 32;
  /// Static truncation r: keep the first r projected dims (0 means r = d). r must be a multiple of
  /// tile_dims, or d itself.
  index_t rank = 0;
  /// Tokens to reserve up front (the cache grows on demand anyway).
  index_t capacity = 0;
  /// How projected keys are stored (rounded once on append).
  storage_type key_type = storage_type::f32;
  /// How values are stored.
  storage_type value_type = storage_type::f32;
};

namespace detail {

/// The largest array a cache allocates: 2^46 bytes (64 TiB), below every x86-64 / AArch64 user
/// address space, so size arithmetic in 64 bits never wraps before it is checked.
constexpr std::uint64_t max_cache_array_bytes = std::uint64_t(1) << 46;

/// Zeroed, 64-byte aligned bytes. On Linux, arrays of 2 MB or more are 2 MB aligned and advised
/// to use transparent huge pages before they are first touched: decode streams through hundreds
/// of MB, and 4 KB pages cost a TLB walk (and a prefetcher restart) every 64 cache lines.
/// An allocation the system refuses is an aqua::error naming `what` and the bytes.
inline aligned_bytes allocate_zeroed(std::uint64_t bytes, const char* what) {
  if (bytes == 0) return aligned_bytes();
  AQUA_CHECK(bytes <= max_cache_array_bytes, "aqua::kv_cache: ", what, " would need ", bytes,
             " bytes, beyond the limit of 2^46 bytes per array");
  std::size_t alignment = 64;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  // Start on a 2 MB boundary, so that every whole 2 MB of the array can be a huge page: with
  // 64-byte alignment a 4 MB key tile got only one (measured: 176 of 256 MB in huge pages, the
  // key tiles half in 4 KB pages).
  constexpr std::size_t huge = std::size_t(1) << 21;
  if (bytes >= huge) alignment = huge;
#endif
  unsigned char* p = nullptr;
#if AQUA_HAS_EXCEPTIONS
  try {
    p = static_cast<unsigned char*>(
        ::operator new[](static_cast<std::size_t>(bytes), std::align_val_t(alignment)));
  } catch (const std::bad_alloc&) {
    AQUA_THROW("aqua::kv_cache: cannot allocate ", bytes, " bytes for ", what);
  }
#else
  p = static_cast<unsigned char*>(
      ::operator new[](static_cast<std::size_t>(bytes), std::align_val_t(alignment), std::nothrow));
  AQUA_CHECK(p != nullptr, "aqua::kv_cache: cannot allocate ", bytes, " bytes for ", what);
#endif
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (alignment == huge) {
    const auto begin = reinterpret_cast<std::uintptr_t>(p);
    const auto end = (begin + bytes) & ~(huge - 1);
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
  }
#endif
  std::memset(p, 0, static_cast<std::size_t>(bytes));
  return aligned_bytes(p, aligned_deleter{alignment});
}

}  // namespace detail

class kv_cache {
public:
  /// Tokens per block inside a tile: one f32 block row (16 floats) is one cache line.
  static constexpr index_t block_tokens = detail::cache_block_tokens;

  /// A cache whose keys arrive already in projected coordinates (identity projection).
  kv_cache(index_t kv_heads, index_t head_dim, const kv_cache_options& options = {}) {
    constexpr const char* fn = "aqua::kv_cache";
    AQUA_CHECK(kv_heads >= 1 && head_dim >= 1, fn, ": kv_heads (", kv_heads, ") and head_dim (", head_dim,
               ") must be at least 1");
    init(kv_heads, head_dim, options, fn);
  }

  /// A cache projecting keys with one orthogonal basis per KV head: projections[h] is [d, d] with
  /// column j the projected dimension j (columns by decreasing importance); k~ = k P. The bases are
  /// copied (only their first r columns). A basis that is not orthogonal (max |P^T P - I| above
  /// 1e-3) is an aqua::error: with it, keeping every dimension would not be exact attention.
  template <class = void>
  explicit kv_cache(const std::vector<matrix_view<const float>>& projections,
                    const kv_cache_options& options = {}) {
    constexpr const char* fn = "aqua::kv_cache";
    AQUA_CHECK(!projections.empty(), fn, ": projections is empty; one [d, d] basis per KV head is needed");
    const index_t d = projections[0].extent(0);
    AQUA_CHECK(d >= 1, fn, ": projections[0] has shape ", detail::shape_string(projections[0]));
    for (std::size_t h = 0; h < projections.size(); ++h) {
      const auto& p = projections[h];
      detail::require_data(p, fn, "projections[h]");
      AQUA_CHECK(p.extent(0) == d && p.extent(1) == d, fn, ": projections[", h, "] has shape ",
                 detail::shape_string(p), " but every basis must be [d, d] = [", d, ", ", d, "]");
      detail::require_finite(p, fn, "projections[h]");
      const double dev = detail::orthogonality_error(p);
      AQUA_CHECK(dev <= 1e-3, fn, ": projections[", h, "] is not orthogonal (max |P^T P - I| = ", dev,
                 "); a basis must have orthonormal columns");
    }
    init(static_cast<index_t>(projections.size()), d, options, fn);
    identity_ = false;
    proj_.resize(projections.size());
    for (std::size_t h = 0; h < projections.size(); ++h) proj_[h] = as_eigen(projections[h]).leftCols(rank_);
  }

  /// The cache of one layer of a projection set (projection.hpp): KV head h projects its keys with
  /// set.head(layer, h), as the constructor above. A layer outside the set is an aqua::error.
  template <class Set, std::enable_if_t<std::is_same<Set, projection_set>::value, int> = 0>
  kv_cache(const Set& set, index_t layer, const kv_cache_options& options = {})
      : kv_cache(bases_of(set, layer), options) {}

  // Move-only: a cache owns hundreds of MB, and a copy is never what a decode loop means.
  kv_cache(const kv_cache&) = delete;
  kv_cache& operator=(const kv_cache&) = delete;
  kv_cache(kv_cache&&) noexcept = default;
  kv_cache& operator=(kv_cache&&) noexcept = default;
  ~kv_cache() = default;

  index_t kv_heads() const noexcept { return hkv_; }
  index_t head_dim() const noexcept { return d_; }
  /// Projected dims kept per key (r).
  index_t rank() const noexcept { return rank_; }
  index_t tile_dims() const noexcept { return tile_; }
  index_t tile_count() const noexcept { return tiles_; }
  /// Dims actually held by tile t (the last tile may be narrower when r == d is not a multiple).
  index_t tile_width(index_t t) const noexcept { return std::min(tile_, rank_ - t * tile_); }
  /// Tokens stored.
  index_t size() const noexcept { return n_; }
  bool empty() const noexcept { return n_ == 0; }
  /// Tokens storable without reallocation (a multiple of block_tokens).
  index_t capacity() const noexcept { return cap_; }
  bool identity_projection() const noexcept { return identity_; }
  storage_type key_type() const noexcept { return key_type_; }
  storage_type value_type() const noexcept { return value_type_; }
  /// The most tokens a cache of this shape and storage can hold (arrays stay within 2^46 bytes).
  index_t max_tokens() const noexcept {
    const std::uint64_t per_token =
        std::uint64_t(std::max(tile_ * storage_bytes(key_type_), d_ * storage_bytes(value_type_)));
    return static_cast<index_t>(detail::max_cache_array_bytes / per_token / block_tokens * block_tokens);
  }

  /// Bytes of key tiles, values and projection bases currently allocated.
  std::size_t bytes() const noexcept {
    const std::size_t per_head =
        static_cast<std::size_t>(cap_) *
        static_cast<std::size_t>(tiles_ * tile_ * storage_bytes(key_type_) + d_ * storage_bytes(value_type_));
    std::size_t total = per_head * static_cast<std::size_t>(hkv_);
    for (const auto& p : proj_) total += static_cast<std::size_t>(p.size()) * sizeof(float);
    return total;
  }
  /// Bytes of projected keys held for the stored tokens (what a dense pass over the keys reads).
  std::size_t key_bytes() const noexcept {
    return static_cast<std::size_t>(hkv_ * padded_tokens() * tiles_ * tile_) *
           static_cast<std::size_t>(storage_bytes(key_type_));
  }
  std::size_t value_bytes() const noexcept {
    return static_cast<std::size_t>(hkv_ * n_ * d_) * static_cast<std::size_t>(storage_bytes(value_type_));
  }

  /// Tile t of KV head h, raw: (capacity / 16) blocks of [tile_dims][16] elements of key_type().
  const void* key_tile_data(index_t head, index_t tile) const noexcept {
    AQUA_ASSERT(head >= 0 && head < hkv_ && tile >= 0 && tile < tiles_);
    return keys_[static_cast<std::size_t>(head * tiles_ + tile)].get();
  }
  /// Tile t of KV head h as elements of T, which must be the key storage type (float, bf16, f16).
  template <class T = float>
  const T* key_tile(index_t head, index_t tile) const {
    AQUA_CHECK(detail::storage_of<T>::value == key_type_, "aqua::kv_cache::key_tile: keys are stored as ",
               storage_name(key_type_), ", not ", storage_name(detail::storage_of<T>::value));
    return static_cast<const T*>(key_tile_data(head, tile));
  }
  /// Values of KV head h, raw: token-major with row stride head_dim(), elements of value_type().
  const void* values_data(index_t head) const noexcept {
    AQUA_ASSERT(head >= 0 && head < hkv_);
    return values_[static_cast<std::size_t>(head)].get();
  }
  /// Values of KV head h as elements of T, which must be the value storage type.
  template <class T = float>
  const T* values(index_t head) const {
    AQUA_CHECK(detail::storage_of<T>::value == value_type_, "aqua::kv_cache::values: values are stored as ",
               storage_name(value_type_), ", not ", storage_name(detail::storage_of<T>::value));
    return static_cast<const T*>(values_data(head));
  }
  /// Projected key element (h, j, c) widened to float. Preconditions (asserted when assertions are
  /// on): h < kv_heads(), j < size(), c < rank(). key_at checks them.
  float key(index_t head, index_t token, index_t dim) const noexcept {
    return layout().key(head, token, dim);
  }
  /// Value element (h, j, c) widened to float. Preconditions: h < kv_heads(), j < size(), c < d.
  float value(index_t head, index_t token, index_t dim) const noexcept {
    return layout().value(head, token, dim);
  }
  /// Sequence position of stored token j (of KV head 0; every head agrees unless retain_per_head
  /// kept different tokens per head). Precondition: j < size().
  index_t position(index_t token) const noexcept { return position(0, token); }
  /// Sequence position of stored token j of KV head h. Preconditions: h < kv_heads(), j < size().
  index_t position(index_t head, index_t token) const noexcept {
    AQUA_ASSERT(head >= 0 && head < hkv_ && token >= 0 && token < n_);
    return positions_[static_cast<std::size_t>(head)][static_cast<std::size_t>(token)];
  }
  /// key(), value() and position() with their preconditions checked (aqua::error).
  float key_at(index_t head, index_t token, index_t dim) const {
    check_index("key_at", head, token, dim, rank_);
    return key(head, token, dim);
  }
  float value_at(index_t head, index_t token, index_t dim) const {
    check_index("value_at", head, token, dim, d_);
    return value(head, token, dim);
  }
  index_t position_at(index_t head, index_t token) const {
    check_index("position_at", head, token, 0, 1);
    return position(head, token);
  }
  /// The position the next appended token receives.
  index_t next_position() const noexcept { return next_position_; }

  /// out[0..r) = (x P)[0..r) for KV head h; x has d elements with stride x_stride.
  template <class S>
  void project(index_t head, const S* x, index_t x_stride, float* out) const {
    detail::project_row(projection(head), d_, rank_, x, x_stride, out);
  }
  /// The copied basis of head h, [d, r] row-major (empty for an identity cache).
  const row_matrix<float>* projection(index_t head) const noexcept {
    return identity_ ? nullptr : &proj_[static_cast<std::size_t>(head)];
  }

  /// Makes room for `tokens` tokens in total without losing stored data. More than max_tokens(),
  /// or memory the system refuses, is an aqua::error.
  void reserve(index_t tokens) {
    AQUA_CHECK(tokens >= 0, "aqua::kv_cache::reserve: tokens must be >= 0, got ", tokens);
    if (tokens <= cap_) return;
    AQUA_CHECK(tokens <= max_tokens(), "aqua::kv_cache::reserve: ", tokens, " tokens exceed the limit of ",
               max_tokens(), " for this shape and storage (arrays of at most 2^46 bytes)");
    reallocate(round_up(tokens));
  }

  /// Appends T tokens for every KV head: keys and values [Hkv, T, d] (any strides). Keys are
  /// projected here, in float, then rounded to the key storage type. Non-finite keys or values are
  /// rejected (aqua::error) before anything is stored, so kernels never need to scan the cache;
  /// a finite value beyond the storage range (f16: |x| > 65504) is rejected likewise.
  template <class = void>
  void append(tensor3_view<const float> keys, tensor3_view<const float> values) {
    constexpr const char* fn = "aqua::kv_cache::append";
    detail::require_data(keys, fn, "keys");
    detail::require_data(values, fn, "values");
    AQUA_CHECK(keys.extent(0) == hkv_ && keys.extent(2) == d_, fn, ": keys has shape ",
               detail::shape_string(keys), " but the cache holds Hkv = ", hkv_, " heads of dim d = ", d_,
               " (keys must be [Hkv, T, d])");
    AQUA_CHECK(
        values.extent(0) == keys.extent(0) && values.extent(1) == keys.extent(1) && values.extent(2) == d_,
        fn, ": values has shape ", detail::shape_string(values), " but keys has shape ",
        detail::shape_string(keys));
    const index_t count = keys.extent(1);
    if (count == 0) return;
    detail::require_finite(keys, fn, "keys");
    detail::require_finite(values, fn, "values");
    if (value_type_ == storage_type::f16) require_in_f16_range(values, fn, "values");
    AQUA_CHECK(count <= max_tokens() - n_, fn, ": ", count, " more tokens would exceed the limit of ",
               max_tokens(), " tokens for this shape and storage");
    if (n_ + count > cap_) reserve(std::max(n_ + count, std::min(2 * cap_, max_tokens())));
    // Keys are checked after projection (f16 range) before anything is stored.
    project_keys(keys, count, fn);
    for (index_t h = 0; h < hkv_; ++h) {
      for (index_t j = 0; j < count; ++j)
        for (index_t c = 0; c < rank_; ++c)
          detail::store_element(keys_[static_cast<std::size_t>(h * tiles_ + c / tile_)].get(), key_type_,
                                key_offset(n_ + j, c % tile_), scratch_(h * count + j, c));
      unsigned char* vh = values_[static_cast<std::size_t>(h)].get();
      const float* src = values.data() + h * values.stride(0);
      for (index_t j = 0; j < count; ++j)
        for (index_t c = 0; c < d_; ++c)
          detail::store_element(vh, value_type_, (n_ + j) * d_ + c,
                                src[j * values.stride(1) + c * values.stride(2)]);
    }
    for (auto& pos : positions_)
      for (index_t j = 0; j < count; ++j) pos.push_back(next_position_ + j);
    next_position_ += count;
    n_ += count;
  }

  /// Keeps only the stored tokens listed in `keep` (strictly increasing indices < size()), for every
  /// head, in order; their positions are kept. Capacity is unchanged.
  void retain(vector_view<const index_t> keep) {
    constexpr const char* fn = "aqua::kv_cache::retain";
    detail::require_data(keep, fn, "keep");
    const index_t count = keep.extent(0);
    for (index_t i = 0; i < count; ++i) {
      AQUA_CHECK(keep(i) >= 0 && keep(i) < n_, fn, ": keep[", i, "] = ", keep(i), " is outside [0, ", n_,
                 ")");
      AQUA_CHECK(i == 0 || keep(i) > keep(i - 1), fn, ": keep must be strictly increasing, but keep[", i - 1,
                 "] = ", keep(i - 1), " and keep[", i, "] = ", keep(i));
    }
    for (index_t h = 0; h < hkv_; ++h) {
      for (index_t i = 0; i < count; ++i) {
        const index_t src = keep(i);
        if (src != i) move_token(h, src, i);
      }
      clear_padding(h, count);
    }
    for (auto& pos : positions_) {
      for (index_t i = 0; i < count; ++i)
        pos[static_cast<std::size_t>(i)] = pos[static_cast<std::size_t>(keep(i))];
      pos.resize(static_cast<std::size_t>(count));
    }
    n_ = count;
  }

  /// Per-head eviction (H2O): row h of keep [Hkv, count] lists the stored tokens KV head h keeps
  /// (strictly increasing, < size()); every head keeps the same number of tokens, each head its
  /// own. Keys are moved as stored (already projected, and already rotated when RoPE was applied
  /// before append: nothing is re-projected or re-rotated); positions are kept per head.
  /// Capacity is unchanged (see shrink_to_fit).
  void retain_per_head(matrix_view<const index_t> keep) {
    constexpr const char* fn = "aqua::kv_cache::retain_per_head";
    detail::require_data(keep, fn, "keep");
    AQUA_CHECK(keep.extent(0) == hkv_, fn, ": keep has shape ", detail::shape_string(keep),
               " but must be [Hkv, count] with Hkv = ", hkv_);
    const index_t count = keep.extent(1);
    for (index_t h = 0; h < hkv_; ++h)
      for (index_t i = 0; i < count; ++i) {
        AQUA_CHECK(keep(h, i) >= 0 && keep(h, i) < n_, fn, ": keep[", h, ", ", i, "] = ", keep(h, i),
                   " is outside [0, ", n_, ")");
        AQUA_CHECK(i == 0 || keep(h, i) > keep(h, i - 1), fn,
                   ": keep rows must be strictly increasing, but keep[", h, ", ", i - 1,
                   "] = ", keep(h, i - 1), " and keep[", h, ", ", i, "] = ", keep(h, i));
      }
    for (index_t h = 0; h < hkv_; ++h) {
      auto& pos = positions_[static_cast<std::size_t>(h)];
      for (index_t i = 0; i < count; ++i) {
        const index_t src = keep(h, i);
        pos[static_cast<std::size_t>(i)] = pos[static_cast<std::size_t>(src)];
        if (src != i) move_token(h, src, i);
      }
      pos.resize(static_cast<std::size_t>(count));
      clear_padding(h, count);
    }
    n_ = count;
  }

  /// Releases the memory beyond max(size(), tokens): capacity becomes that rounded up to whole
  /// blocks (at least one block), so bytes() falls after an eviction. `tokens` keeps room for the
  /// growth expected before the next eviction (no reallocation, no doubling on the next append).
  void shrink_to_fit(index_t tokens = 0) {
    AQUA_CHECK(tokens >= 0 && tokens <= max_tokens(), "aqua::kv_cache::shrink_to_fit: tokens = ", tokens,
               " must lie in [0, ", max_tokens(), "]");
    const index_t new_cap = std::max(round_up(std::max(n_, tokens)), block_tokens);
    if (new_cap < cap_) reallocate(new_cap);
  }

  /// Forgets every token (memory is kept); positions restart at 0.
  void clear() {
    for (auto& tile : keys_)
      std::memset(tile.get(), 0, static_cast<std::size_t>(cap_ * tile_ * storage_bytes(key_type_)));
    n_ = 0;
    next_position_ = 0;
    for (auto& pos : positions_) pos.clear();
  }

private:
  friend struct detail::cache_access;

  template <class Set>
  static std::vector<matrix_view<const float>> bases_of(const Set& set, index_t layer) {
    AQUA_CHECK(!set.empty(), "aqua::kv_cache: the projection set is empty");
    AQUA_CHECK(layer >= 0 && layer < set.layers(), "aqua::kv_cache: layer ", layer,
               " is outside the projection set's [0, ", set.layers(), ")");
    std::vector<matrix_view<const float>> bases;
    for (index_t h = 0; h < set.kv_heads(); ++h) bases.push_back(set.head(layer, h).basis_view());
    return bases;
  }

  detail::cache_layout layout() const noexcept {
    return {hkv_,
            d_,
            rank_,
            tile_,
            tiles_,
            n_,
            key_type_,
            value_type_,
            keys_.data(),
            values_.data(),
            identity_ ? nullptr : proj_.data()};
  }

  /// Element offset of (token, dim i within its tile) inside a tile array.
  index_t key_offset(index_t token, index_t i) const noexcept {
    return detail::tiled_key_offset(token, i, tile_);
  }

  void check_index(const char* what, index_t head, index_t token, index_t dim, index_t dims) const {
    AQUA_CHECK(head >= 0 && head < hkv_ && token >= 0 && token < n_ && dim >= 0 && dim < dims,
               "aqua::kv_cache::", what, ": index (head ", head, ", token ", token, ", dim ", dim,
               ") is outside [0, ", hkv_, ") x [0, ", n_, ") x [0, ", dims, ")");
  }

  static void require_in_f16_range(const tensor3_view<const float>& x, const char* fn, const char* name) {
    for (index_t a = 0; a < x.extent(0); ++a)
      for (index_t b = 0; b < x.extent(1); ++b)
        for (index_t c = 0; c < x.extent(2); ++c) {
          const float v = x(a, b, c);
          AQUA_CHECK(std::abs(v) <= 65504.0f, fn, ": ", name, "[", a, ", ", b, ", ", c, "] = ", v,
                     " is beyond the f16 range (65504); store as bf16 or f32");
        }
  }

  /// Projects the keys of every head into scratch_ [Hkv * count, r] (float), checking the f16 range.
  template <class = void>
  void project_keys(const tensor3_view<const float>& keys, index_t count, const char* fn) {
    scratch_.resize(hkv_ * count, rank_);
    for (index_t h = 0; h < hkv_; ++h) {
      const float* kh = keys.data() + h * keys.stride(0);
      auto dst = scratch_.middleRows(h * count, count);
      if (identity_) {
        for (index_t j = 0; j < count; ++j)
          for (index_t c = 0; c < rank_; ++c) dst(j, c) = kh[j * keys.stride(1) + c * keys.stride(2)];
      } else {
        auto k_rows = as_eigen(matrix_view<const float>(kh, {count, d_}, {keys.stride(1), keys.stride(2)}));
        dst.noalias() = k_rows * proj_[static_cast<std::size_t>(h)];
      }
    }
    if (key_type_ == storage_type::f16) {
      for (index_t i = 0; i < scratch_.rows(); ++i)
        for (index_t c = 0; c < rank_; ++c)
          AQUA_CHECK(std::abs(scratch_(i, c)) <= 65504.0f, fn, ": projected key (head ", i / count,
                     ", token ", i % count, ", dim ", c, ") = ", scratch_(i, c),
                     " is beyond the f16 range (65504); store keys as bf16 or f32");
    } else if (!identity_) {
      // A float projection of finite keys can still overflow.
      for (index_t i = 0; i < scratch_.rows(); ++i)
        for (index_t c = 0; c < rank_; ++c)
          AQUA_CHECK(std::isfinite(scratch_(i, c)), fn, ": projected key (head ", i / count, ", token ",
                     i % count, ", dim ", c, ") overflows float; scale the keys down");
    }
  }

  /// Moves stored token src of head h to slot dst (keys in every tile, and the value row).
  void move_token(index_t h, index_t src, index_t dst) noexcept {
    const std::size_t kb = static_cast<std::size_t>(storage_bytes(key_type_));
    const index_t from = key_offset(src, 0), to = key_offset(dst, 0);
    for (index_t t = 0; t < tiles_; ++t) {
      unsigned char* tile = keys_[static_cast<std::size_t>(h * tiles_ + t)].get();
      const index_t width = tile_width(t);
      // Token j of a tile sits at ((j / 16) * T + dim) * 16 + j % 16: one stride-16 walk per tile.
      for (index_t c = 0; c < width; ++c)
        std::memcpy(tile + static_cast<std::size_t>(to + c * block_tokens) * kb,
                    tile + static_cast<std::size_t>(from + c * block_tokens) * kb, kb);
    }
    const std::size_t row = static_cast<std::size_t>(d_ * storage_bytes(value_type_));
    unsigned char* vh = values_[static_cast<std::size_t>(h)].get();
    std::memmove(vh + static_cast<std::size_t>(dst) * row, vh + static_cast<std::size_t>(src) * row, row);
  }
  /// Padding lanes of the last block stay zero so block kernels read finite numbers there.
  void clear_padding(index_t h, index_t count) noexcept {
    for (index_t j = count; j < round_up(count) && j < cap_; ++j)
      for (index_t c = 0; c < rank_; ++c)
        detail::store_element(keys_[static_cast<std::size_t>(h * tiles_ + c / tile_)].get(), key_type_,
                              key_offset(j, c % tile_), 0.0f);
    // Tokens evicted past the new end of the last block leave stale data behind, which no kernel
    // reads (blocks past the last one are never visited).
  }

  /// Moves the stored tokens (whole used key blocks, n_ value rows) into arrays of `new_cap` tokens.
  void reallocate(index_t new_cap) {
    const index_t used = padded_tokens();
    const std::uint64_t kb = static_cast<std::uint64_t>(storage_bytes(key_type_));
    const std::uint64_t vb = static_cast<std::uint64_t>(storage_bytes(value_type_));
    std::vector<detail::aligned_bytes> keys(keys_.size()), values(values_.size());
    for (std::size_t i = 0; i < keys_.size(); ++i) {
      keys[i] = detail::allocate_zeroed(std::uint64_t(new_cap) * std::uint64_t(tile_) * kb, "a key tile");
      if (used) std::memcpy(keys[i].get(), keys_[i].get(), static_cast<std::size_t>(used * tile_ * kb));
    }
    for (std::size_t i = 0; i < values_.size(); ++i) {
      values[i] =
          detail::allocate_zeroed(std::uint64_t(new_cap) * std::uint64_t(d_) * vb, "the values of a head");
      if (n_) std::memcpy(values[i].get(), values_[i].get(), static_cast<std::size_t>(n_ * d_ * vb));
    }
    // Only now that every array exists: a refused allocation leaves the cache as it was.
    keys_ = std::move(keys);
    values_ = std::move(values);
    cap_ = new_cap;
  }
  static index_t round_up(index_t tokens) {
    return (tokens + block_tokens - 1) / block_tokens * block_tokens;
  }
  index_t padded_tokens() const noexcept { return round_up(n_); }

  void init(index_t hkv, index_t d, const kv_cache_options& o, const char* fn) {
    hkv_ = hkv;
    d_ = d;
    AQUA_CHECK(o.tile_dims >= 1, fn, ": tile_dims must be at least 1, got ", o.tile_dims);
    AQUA_CHECK(o.key_type == storage_type::f32 || o.key_type == storage_type::bf16 ||
                   o.key_type == storage_type::f16,
               fn, ": key_type ", int(o.key_type), " is not a storage type");
    AQUA_CHECK(o.value_type == storage_type::f32 || o.value_type == storage_type::bf16 ||
                   o.value_type == storage_type::f16,
               fn, ": value_type ", int(o.value_type), " is not a storage type");
    key_type_ = o.key_type;
    value_type_ = o.value_type;
    tile_ = std::min(o.tile_dims, d);
    rank_ = o.rank == 0 ? d : o.rank;
    AQUA_CHECK(rank_ >= 1 && rank_ <= d, fn, ": rank r = ", o.rank, " must lie in [1, d = ", d,
               "] (0 means d)");
    AQUA_CHECK(rank_ % tile_ == 0 || rank_ == d, fn, ": rank r = ", rank_,
               " must be a multiple of tile_dims = ", tile_, " (whole tiles) or equal d = ", d);
    AQUA_CHECK(o.capacity >= 0, fn, ": capacity must be >= 0, got ", o.capacity);
    AQUA_CHECK(hkv <= (index_t(1) << 20) && d <= (index_t(1) << 20), fn, ": kv_heads (", hkv,
               ") and head_dim (", d, ") must be at most 2^20");
    tiles_ = (rank_ + tile_ - 1) / tile_;
    AQUA_CHECK(o.capacity <= max_tokens(), fn, ": capacity ", o.capacity, " exceeds the limit of ",
               max_tokens(), " tokens for this shape and storage (arrays of at most 2^46 bytes)");
    keys_.resize(static_cast<std::size_t>(hkv_ * tiles_));
    values_.resize(static_cast<std::size_t>(hkv_));
    positions_.resize(static_cast<std::size_t>(hkv_));
    reserve(std::max<index_t>(o.capacity, block_tokens));
  }

  index_t hkv_ = 0, d_ = 0, rank_ = 0, tile_ = 0, tiles_ = 0, n_ = 0, cap_ = 0, next_position_ = 0;
  bool identity_ = true;
  storage_type key_type_ = storage_type::f32, value_type_ = storage_type::f32;
  std::vector<detail::aligned_bytes> keys_;      // [Hkv * tiles] of [cap / 16][tile][16] elements
  std::vector<detail::aligned_bytes> values_;    // [Hkv] of [cap][d] elements
  std::vector<row_matrix<float>> proj_;          // [Hkv] of [d, r]
  std::vector<std::vector<index_t>> positions_;  // [Hkv][n]
  row_matrix<float> scratch_;
};

namespace detail {
struct cache_access {
  static cache_layout layout(const kv_cache& c) noexcept { return c.layout(); }
};
}  // namespace detail

}  // namespace aqua
