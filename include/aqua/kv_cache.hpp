// Per-layer KV cache for AQUA: keys stored projected (k~ = k P) in dimension tiles, values
// token-major.
//
// Why tiles (DESIGN.md, "KV-cache memory and the memory system"): on these machines reading
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
// Each stored token carries its sequence position (consecutive from 0 on append); retain() keeps a
// subset of tokens (eviction) and their positions; retain_per_head() keeps a different subset per
// KV head (H2O, aqua/h2o.hpp), positions then tracked per head; shrink_to_fit() releases memory. Not
// thread-safe for concurrent mutation; const member functions may run concurrently.
#pragma once

#include <Eigen/Core>

#include <algorithm>
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
#include "aqua/detail/validate.hpp"
#include "aqua/tensor_view.hpp"

namespace aqua {

struct kv_cache_options {
  /// Projected dims per key tile (16 or 32 suit AVX2; any value >= 1 works).
  index_t tile_dims = 32;
  /// Static truncation r: keep the first r projected dims (0 means r = d). r must be a multiple of
  /// tile_dims, or d itself.
  index_t rank = 0;
  /// Tokens to reserve up front (the cache grows on demand anyway).
  index_t capacity = 0;
};

namespace detail {

struct aligned_deleter {
  std::size_t alignment = 64;  // what the array was allocated with (64 bytes, or 2 MB for huge pages)
  void operator()(float* p) const noexcept { ::operator delete[](p, std::align_val_t(alignment)); }
};
using aligned_floats = std::unique_ptr<float[], aligned_deleter>;

/// Test hook: whether large cache arrays ask the OS for transparent huge pages (Linux).
inline bool& use_huge_pages() {
  static bool on = true;
  return on;
}

/// Zeroed, 64-byte aligned floats. On Linux, arrays of 2 MB or more are 2 MB aligned and advised
/// to use transparent huge pages before they are first touched: decode streams through hundreds
/// of MB, and 4 KB pages cost a TLB walk (and a prefetcher restart) every 64 cache lines.
inline aligned_floats allocate_zeroed(index_t count) {
  if (count <= 0) return aligned_floats();
  const std::size_t bytes = static_cast<std::size_t>(count) * sizeof(float);
  std::size_t alignment = 64;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  // Start on a 2 MB boundary, so that every whole 2 MB of the array can be a huge page: with
  // 64-byte alignment a 4 MB key tile got only one (measured: 176 of 256 MB in huge pages, the
  // key tiles half in 4 KB pages).
  constexpr std::size_t huge = std::size_t(1) << 21;
  if (use_huge_pages() && bytes >= huge) alignment = huge;
#endif
  auto* p = static_cast<float*>(::operator new[](bytes, std::align_val_t(alignment)));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (alignment == huge) {
    const auto begin = reinterpret_cast<std::uintptr_t>(p);
    const auto end = (begin + bytes) & ~(huge - 1);
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
  }
#endif
  std::memset(p, 0, bytes);
  return aligned_floats(p, aligned_deleter{alignment});
}

}  // namespace detail

class kv_cache {
public:
  /// Tokens per block inside a tile: one block row (16 floats) is one cache line.
  static constexpr index_t block_tokens = 16;

  /// A cache whose keys arrive already in projected coordinates (identity projection).
  kv_cache(index_t kv_heads, index_t head_dim, const kv_cache_options& options = {}) {
    constexpr const char* fn = "aqua::kv_cache";
    AQUA_CHECK(kv_heads >= 1 && head_dim >= 1, fn, ": kv_heads (", kv_heads, ") and head_dim (", head_dim,
               ") must be at least 1");
    init(kv_heads, head_dim, options, fn);
  }

  /// A cache projecting keys with one orthogonal basis per KV head: projections[h] is [d, d] with
  /// column j the projected dimension j (columns by decreasing importance); k~ = k P. The bases are
  /// copied (only their first r columns).
  explicit kv_cache(const std::vector<matrix_view<const float>>& projections,
                    const kv_cache_options& options = {}) {
    constexpr const char* fn = "aqua::kv_cache";
    AQUA_CHECK(!projections.empty(), fn, ": projections is empty; one [d, d] basis per KV head is needed");
    const index_t d = projections[0].extent(0);
    AQUA_CHECK(d >= 1, fn, ": projections[0] has shape ", detail::shape_string(projections[0]));
    init(static_cast<index_t>(projections.size()), d, options, fn);
    identity_ = false;
    proj_.resize(projections.size());
    for (std::size_t h = 0; h < projections.size(); ++h) {
      const auto& p = projections[h];
      detail::require_data(p, fn, "projections[h]");
      AQUA_CHECK(p.extent(0) == d && p.extent(1) == d, fn, ": projections[", h, "] has shape ",
                 detail::shape_string(p), " but every basis must be [d, d] = [", d, ", ", d, "]");
      detail::require_finite(p, fn, "projections[h]");
      proj_[h] = as_eigen(p).leftCols(rank_);
    }
  }

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

  /// Bytes of key tiles, values and projection bases currently allocated.
  std::size_t bytes() const noexcept {
    const std::size_t per_head = static_cast<std::size_t>(cap_ * (tiles_ * tile_ + d_));
    std::size_t total = per_head * static_cast<std::size_t>(hkv_) * sizeof(float);
    for (const auto& p : proj_) total += static_cast<std::size_t>(p.size()) * sizeof(float);
    return total;
  }
  /// Bytes of projected keys held for the stored tokens (what a dense pass over the keys reads).
  std::size_t key_bytes() const noexcept {
    return static_cast<std::size_t>(hkv_ * padded_tokens() * tiles_ * tile_) * sizeof(float);
  }
  std::size_t value_bytes() const noexcept {
    return static_cast<std::size_t>(hkv_ * n_ * d_) * sizeof(float);
  }

  /// Tile t of KV head h: (capacity / 16) blocks of [tile_dims][16] floats.
  const float* key_tile(index_t head, index_t tile) const noexcept {
    return keys_[static_cast<std::size_t>(head * tiles_ + tile)].get();
  }
  /// Values of KV head h, token-major with row stride head_dim().
  const float* values(index_t head) const noexcept { return values_[static_cast<std::size_t>(head)].get(); }
  /// Projected key element (h, j, c), c < rank().
  float key(index_t head, index_t token, index_t dim) const noexcept {
    const index_t t = dim / tile_, i = dim % tile_;
    return key_tile(head, t)[((token / block_tokens) * tile_ + i) * block_tokens + token % block_tokens];
  }
  float value(index_t head, index_t token, index_t dim) const noexcept {
    return values(head)[token * d_ + dim];
  }
  /// Sequence position of stored token j (of KV head 0; every head agrees unless retain_per_head
  /// kept different tokens per head).
  index_t position(index_t token) const noexcept { return position(0, token); }
  /// Sequence position of stored token j of KV head h.
  index_t position(index_t head, index_t token) const noexcept {
    return positions_[static_cast<std::size_t>(head)][static_cast<std::size_t>(token)];
  }
  /// The position the next appended token receives.
  index_t next_position() const noexcept { return next_position_; }

  /// out[0..r) = (x P)[0..r) for KV head h; x has d elements with stride x_stride.
  template <class S>
  void project(index_t head, const S* x, index_t x_stride, float* out) const {
    if (identity_) {
      for (index_t c = 0; c < rank_; ++c) out[c] = static_cast<float>(x[c * x_stride]);
      return;
    }
    const auto& p = proj_[static_cast<std::size_t>(head)];
    // Eigen's GEMV is vectorised whatever the caller's flags; the plain loop is not at GCC's -O2
    // (out and the basis might alias), which made q P 5-10x slower than the decode it precedes.
    Eigen::Map<Eigen::RowVectorXf> result(out, rank_);
    if constexpr (std::is_same<S, float>::value) {
      if (x_stride == 1) {
        result.noalias() = Eigen::Map<const Eigen::RowVectorXf>(x, d_) * p;
        return;
      }
    }
    constexpr index_t stack_dims = 1024;
    if (d_ <= stack_dims) {
      float copy[stack_dims];
      for (index_t i = 0; i < d_; ++i) copy[i] = static_cast<float>(x[i * x_stride]);
      result.noalias() = Eigen::Map<const Eigen::RowVectorXf>(copy, d_) * p;
      return;
    }
    for (index_t c = 0; c < rank_; ++c) out[c] = 0.0f;
    for (index_t i = 0; i < d_; ++i) {
      const float xi = static_cast<float>(x[i * x_stride]);
      const float* row = p.data() + i * rank_;
      for (index_t c = 0; c < rank_; ++c) out[c] += xi * row[c];
    }
  }
  /// The copied basis of head h, [d, r] row-major (empty for an identity cache).
  const row_matrix<float>* projection(index_t head) const noexcept {
    return identity_ ? nullptr : &proj_[static_cast<std::size_t>(head)];
  }

  /// Makes room for `tokens` tokens in total without losing stored data.
  void reserve(index_t tokens) {
    AQUA_CHECK(tokens >= 0, "aqua::kv_cache::reserve: tokens must be >= 0, got ", tokens);
    if (tokens <= cap_) return;
    reallocate(round_up(tokens));
  }

  /// Appends T tokens for every KV head: keys and values [Hkv, T, d] (any strides). Keys are
  /// projected here. Non-finite keys or values are rejected (aqua::error) before anything is
  /// stored, so kernels never need to scan the cache.
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
    if (n_ + count > cap_) reserve(std::max(n_ + count, 2 * cap_));
    for (index_t h = 0; h < hkv_; ++h) {
      const float* kh = keys.data() + h * keys.stride(0);
      if (identity_) {
        for (index_t j = 0; j < count; ++j)
          for (index_t c = 0; c < rank_; ++c)
            store_key(h, n_ + j, c, kh[j * keys.stride(1) + c * keys.stride(2)]);
      } else {
        auto k_rows = as_eigen(matrix_view<const float>(kh, {count, d_}, {keys.stride(1), keys.stride(2)}));
        scratch_.resize(count, rank_);
        scratch_.noalias() = k_rows * proj_[static_cast<std::size_t>(h)];
        for (index_t j = 0; j < count; ++j)
          for (index_t c = 0; c < rank_; ++c) store_key(h, n_ + j, c, scratch_(j, c));
      }
      float* vh = values_[static_cast<std::size_t>(h)].get();
      const float* src = values.data() + h * values.stride(0);
      for (index_t j = 0; j < count; ++j)
        for (index_t c = 0; c < d_; ++c)
          vh[(n_ + j) * d_ + c] = src[j * values.stride(1) + c * values.stride(2)];
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
      float* vh = values_[static_cast<std::size_t>(h)].get();
      for (index_t i = 0; i < count; ++i) {
        const index_t src = keep(i);
        if (src == i) continue;
        for (index_t c = 0; c < rank_; ++c) store_key(h, i, c, key(h, src, c));
        std::memmove(vh + i * d_, vh + src * d_, static_cast<std::size_t>(d_) * sizeof(float));
      }
      // Padding lanes of the last block stay zero so block kernels read finite numbers there.
      for (index_t j = count; j < padded_tokens(); ++j)
        for (index_t c = 0; c < rank_; ++c) store_key(h, j, c, 0.0f);
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
      float* vh = values_[static_cast<std::size_t>(h)].get();
      auto& pos = positions_[static_cast<std::size_t>(h)];
      for (index_t i = 0; i < count; ++i) {
        const index_t src = keep(h, i);
        pos[static_cast<std::size_t>(i)] = pos[static_cast<std::size_t>(src)];
        if (src == i) continue;
        // Token j of a tile sits at ((j / 16) * T + dim) * 16 + j % 16: one stride-16 walk per tile.
        const index_t from = (src / block_tokens) * tile_ * block_tokens + src % block_tokens;
        const index_t to = (i / block_tokens) * tile_ * block_tokens + i % block_tokens;
        for (index_t t = 0; t < tiles_; ++t) {
          float* tile = keys_[static_cast<std::size_t>(h * tiles_ + t)].get();
          const index_t width = tile_width(t);
          for (index_t c = 0; c < width; ++c) tile[to + c * block_tokens] = tile[from + c * block_tokens];
        }
        std::memmove(vh + i * d_, vh + src * d_, static_cast<std::size_t>(d_) * sizeof(float));
      }
      pos.resize(static_cast<std::size_t>(count));
      for (index_t j = count; j < padded_tokens(); ++j)
        for (index_t c = 0; c < rank_; ++c) store_key(h, j, c, 0.0f);
    }
    n_ = count;
  }

  /// Releases the memory beyond max(size(), tokens): capacity becomes that rounded up to whole
  /// blocks (at least one block), so bytes() falls after an eviction. `tokens` keeps room for the
  /// growth expected before the next eviction (no reallocation, no doubling on the next append).
  void shrink_to_fit(index_t tokens = 0) {
    const index_t new_cap = std::max(round_up(std::max(n_, tokens)), block_tokens);
    if (new_cap < cap_) reallocate(new_cap);
  }

  /// Forgets every token (memory is kept); positions restart at 0.
  void clear() {
    for (auto& tile : keys_)
      std::memset(tile.get(), 0, static_cast<std::size_t>(cap_ * tile_) * sizeof(float));
    n_ = 0;
    next_position_ = 0;
    for (auto& pos : positions_) pos.clear();
  }

private:
  /// Moves the stored tokens (whole used key blocks, n_ value rows) into arrays of `new_cap` tokens.
  void reallocate(index_t new_cap) {
    const index_t used = padded_tokens();
    for (auto& tile : keys_) {
      auto fresh = detail::allocate_zeroed(new_cap * tile_);
      if (used) std::memcpy(fresh.get(), tile.get(), static_cast<std::size_t>(used * tile_) * sizeof(float));
      tile = std::move(fresh);
    }
    for (auto& vals : values_) {
      auto fresh = detail::allocate_zeroed(new_cap * d_);
      if (n_) std::memcpy(fresh.get(), vals.get(), static_cast<std::size_t>(n_ * d_) * sizeof(float));
      vals = std::move(fresh);
    }
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
    tile_ = std::min(o.tile_dims, d);
    rank_ = o.rank == 0 ? d : o.rank;
    AQUA_CHECK(rank_ >= 1 && rank_ <= d, fn, ": rank r = ", o.rank, " must lie in [1, d = ", d,
               "] (0 means d)");
    AQUA_CHECK(rank_ % tile_ == 0 || rank_ == d, fn, ": rank r = ", rank_,
               " must be a multiple of tile_dims = ", tile_, " (whole tiles) or equal d = ", d);
    AQUA_CHECK(o.capacity >= 0, fn, ": capacity must be >= 0, got ", o.capacity);
    tiles_ = (rank_ + tile_ - 1) / tile_;
    keys_.resize(static_cast<std::size_t>(hkv_ * tiles_));
    values_.resize(static_cast<std::size_t>(hkv_));
    positions_.resize(static_cast<std::size_t>(hkv_));
    reserve(std::max<index_t>(o.capacity, block_tokens));
  }

  void store_key(index_t head, index_t token, index_t dim, float x) noexcept {
    const index_t t = dim / tile_, i = dim % tile_;
    keys_[static_cast<std::size_t>(head * tiles_ + t)]
        .get()[((token / block_tokens) * tile_ + i) * block_tokens + token % block_tokens] = x;
  }

  index_t hkv_ = 0, d_ = 0, rank_ = 0, tile_ = 0, tiles_ = 0, n_ = 0, cap_ = 0, next_position_ = 0;
  bool identity_ = true;
  std::vector<detail::aligned_floats> keys_;     // [Hkv * tiles]
  std::vector<detail::aligned_floats> values_;   // [Hkv]
  std::vector<row_matrix<float>> proj_;          // [Hkv] of [d, r]
  std::vector<std::vector<index_t>> positions_;  // [Hkv][n]
  row_matrix<float> scratch_;
};

}  // namespace aqua
